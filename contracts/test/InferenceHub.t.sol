// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase, Rejecter} from "./utils/HubBase.sol";
import {InferenceHub} from "../src/InferenceHub.sol";

contract RegisterModelTest is HubBase {
    function test_registerModel_storesAndEmits() public {
        bytes32 id = keccak256("llama");
        vm.expectEmit();
        emit InferenceHub.ModelRegistered(id, "llama", 2 ether, 5, 7, 5);
        bytes32 got = hub.registerModel("llama", 2 ether, 5, 7, 5);
        assertEq(got, id);
        InferenceHub.ModelView memory m = hub.getModel(id);
        assertEq(m.modelId, id);
        assertEq(keccak256(bytes(m.name)), keccak256("llama"));
        assertEq(m.minStake, 2 ether);
        assertEq(m.minFee, 5);
        assertEq(m.timeoutBlocks, 7);
        assertEq(m.redundancy, 5);
        assertEq(m.activeMinerCount, 0);
        assertEq(hub.modelIds().length, 3);
        assertEq(hub.modelIds()[2], id);
    }

    function test_registerModel_revertsNotOwner() public {
        vm.prank(alice);
        vm.expectRevert(InferenceHub.NotOwner.selector);
        hub.registerModel("x", 1, 1, 1, 1);
    }

    function test_registerModel_revertsModelExists() public {
        vm.expectRevert(InferenceHub.ModelExists.selector);
        hub.registerModel("m1", 1, 1, 1, 1);
    }

    function test_registerModel_revertsInvalid() public {
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("", 1, 1, 1, 1);
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("x", 0, 1, 1, 1);
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("x", uint256(type(uint96).max) + 1, 1, 1, 1);
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("x", 1, uint256(type(uint96).max) + 1, 1, 1);
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("x", 1, 1, 0, 1);
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("x", 1, 1, 1, 0);
        vm.expectRevert(InferenceHub.InvalidModel.selector);
        hub.registerModel("x", 1, 1, 1, 8);
    }

    function test_getModel_revertsUnknown() public {
        vm.expectRevert(InferenceHub.UnknownModel.selector);
        hub.getModel(keccak256("nope"));
    }

    function test_owner() public view {
        assertEq(hub.owner(), address(this));
    }
}

contract MinerTest is HubBase {
    function test_registerMiner_activates() public {
        address a = miners[0];
        vm.expectEmit();
        emit InferenceHub.MinerRegistered(a, m1, 2 ether);
        vm.prank(a);
        hub.registerMiner{value: 2 ether}(m1);
        InferenceHub.MinerView memory v = hub.getMiner(a);
        assertEq(v.modelId, m1);
        assertEq(v.stake, 2 ether);
        assertEq(v.credits, 0);
        assertEq(v.active, true);
        assertEq(v.exitUnlockBlock, 0);
        assertEq(hub.activeMiners(m1).length, 1);
        assertEq(hub.activeMiners(m1)[0], a);
        assertEq(hub.getModel(m1).activeMinerCount, 1);
        assertEq(address(hub).balance, 2 ether);
    }

    function test_registerMiner_revertsUnknownModel() public {
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.UnknownModel.selector);
        hub.registerMiner{value: MIN_STAKE}(keccak256("nope"));
    }

    function test_registerMiner_revertsAlreadyRegistered() public {
        _register(miners[0], m1);
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.AlreadyRegistered.selector);
        hub.registerMiner{value: MIN_STAKE}(m3);
    }

    function test_registerMiner_revertsInsufficientStake() public {
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.InsufficientStake.selector, MIN_STAKE, MIN_STAKE - 1));
        hub.registerMiner{value: MIN_STAKE - 1}(m1);
    }

    function test_registerMiner_revertsValueTooLarge() public {
        uint256 big = uint256(type(uint96).max) + 1;
        vm.deal(miners[0], big);
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.ValueTooLarge.selector);
        hub.registerMiner{value: big}(m1);
    }

    function test_addStake() public {
        _register(miners[0], m1);
        vm.expectEmit();
        emit InferenceHub.StakeAdded(miners[0], 1 ether, 2 ether);
        vm.prank(miners[0]);
        hub.addStake{value: 1 ether}();
        assertEq(_stake(miners[0]), 2 ether);
    }

    function test_addStake_reverts() public {
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.NotRegistered.selector);
        hub.addStake{value: 1}();

        _register(miners[0], m1);
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.ZeroValue.selector);
        hub.addStake();

        uint256 big = uint256(type(uint96).max);
        vm.deal(miners[0], big);
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.ValueTooLarge.selector);
        hub.addStake{value: big}();

        vm.prank(miners[0]);
        hub.requestExit();
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.ExitPending.selector);
        hub.addStake{value: 1}();
    }

    function test_addStake_reactivatesAfterSlash() public {
        _register(miners[0], m1); // exactly MIN_STAKE
        uint256 id = _request(m1, MIN_FEE);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id); // slashed below min -> inactive; no other miner -> refund
        assertEq(hub.getMiner(miners[0]).active, false);
        assertEq(hub.activeMiners(m1).length, 0);
        vm.prank(miners[0]);
        hub.addStake{value: SLASH - 1}();
        assertEq(hub.getMiner(miners[0]).active, false);
        vm.expectEmit();
        emit InferenceHub.MinerActivated(miners[0], m1);
        vm.prank(miners[0]);
        hub.addStake{value: 1}();
        assertEq(hub.getMiner(miners[0]).active, true);
    }

    function test_requestExit_and_withdrawStake() public {
        _registerN(m1, 3);
        address a = miners[0];
        uint64 unlock = uint64(block.number) + 2 * TIMEOUT;
        vm.expectEmit();
        emit InferenceHub.ExitRequested(a, unlock);
        vm.prank(a);
        hub.requestExit();
        assertEq(hub.getMiner(a).active, false);
        assertEq(hub.getMiner(a).exitUnlockBlock, unlock);
        // swap-and-pop kept the others
        address[] memory act = hub.activeMiners(m1);
        assertEq(act.length, 2);
        assertEq(act[0], miners[2]);
        assertEq(act[1], miners[1]);

        vm.prank(a);
        vm.expectRevert(InferenceHub.ExitPending.selector);
        hub.requestExit();

        vm.roll(unlock - 1);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.CooldownActive.selector, unlock));
        hub.withdrawStake();

        vm.roll(unlock);
        uint256 before = a.balance;
        vm.expectEmit();
        emit InferenceHub.StakeWithdrawn(a, MIN_STAKE);
        vm.prank(a);
        hub.withdrawStake();
        assertEq(a.balance, before + MIN_STAKE);
        InferenceHub.MinerView memory v = hub.getMiner(a);
        assertEq(v.stake, 0);
        assertEq(v.modelId, bytes32(0));
        assertEq(v.exitUnlockBlock, 0);
        // may register again, even for another model
        _register(a, m3);
        assertEq(hub.getMiner(a).modelId, m3);
    }

    function test_requestExit_revertsNotRegistered() public {
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.NotRegistered.selector);
        hub.requestExit();
    }

    function test_withdrawStake_reverts() public {
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.NotRegistered.selector);
        hub.withdrawStake();
        _register(miners[0], m1);
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.ExitNotRequested.selector);
        hub.withdrawStake();
    }

    function test_withdrawStake_revertsTransferFailed() public {
        Rejecter r = new Rejecter(hub);
        r.register{value: MIN_STAKE}(m1);
        r.exit();
        vm.roll(block.number + 2 * TIMEOUT);
        vm.expectRevert(InferenceHub.TransferFailed.selector);
        r.withdrawStake();
    }

    function test_getMiner_unregistered() public view {
        InferenceHub.MinerView memory v = hub.getMiner(alice);
        assertEq(v.modelId, bytes32(0));
        assertEq(v.stake, 0);
        assertEq(v.active, false);
    }
}

contract RequestTest is HubBase {
    function test_request_r1() public {
        _registerN(m1, 4);
        vm.prevrandao(bytes32(uint256(42)));
        uint256 id = _request(m1, MIN_FEE);
        assertEq(id, 1);
        assertEq(hub.requestCount(), 1);
        InferenceHub.RequestView memory q = hub.getRequest(id);
        assertEq(uint256(q.status), uint256(InferenceHub.Status.Open));
        assertEq(q.requester, alice);
        assertEq(q.modelId, m1);
        assertEq(q.inputDigest, IN);
        assertEq(q.outputDigest, bytes32(0));
        assertEq(q.fee, MIN_FEE);
        assertEq(q.deadline, block.number + TIMEOUT);
        assertEq(q.redundancy, 1);
        assertEq(q.reassigned, false);
        assertEq(q.assignees.length, 1);
        assertEq(q.submitted.length, 1);
        assertTrue(hub.getMiner(q.assignees[0]).active);
        assertEq(address(hub).balance, 4 * MIN_STAKE + MIN_FEE);
        assertEq(_request(m1, MIN_FEE), 2);
    }

    function test_request_emits() public {
        _registerN(m1, 1);
        address[] memory a = new address[](1);
        a[0] = miners[0];
        vm.expectEmit();
        emit InferenceHub.InferenceRequested(1, alice, m1, IN, MIN_FEE, uint64(block.number + TIMEOUT), a);
        _request(m1, MIN_FEE);
    }

    function test_request_r3_distinct() public {
        _registerN(m3, 3);
        uint256 id = _request(m3, MIN_FEE);
        address[] memory a = _assignees(id);
        assertEq(a.length, 3);
        assertTrue(a[0] != a[1] && a[1] != a[2] && a[0] != a[2], "distinct");
    }

    function test_request_reverts() public {
        vm.prank(alice);
        vm.expectRevert(InferenceHub.UnknownModel.selector);
        hub.requestInference{value: MIN_FEE}(keccak256("nope"), IN);

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.FeeTooLow.selector, MIN_FEE, MIN_FEE - 1));
        hub.requestInference{value: MIN_FEE - 1}(m1, IN);

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotEnoughMiners.selector, 1, 0));
        hub.requestInference{value: MIN_FEE}(m1, IN);

        _registerN(m3, 2);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotEnoughMiners.selector, 3, 2));
        hub.requestInference{value: MIN_FEE}(m3, IN);

        _register(miners[5], m1);
        vm.prank(alice);
        vm.expectRevert(InferenceHub.ZeroDigest.selector);
        hub.requestInference{value: MIN_FEE}(m1, bytes32(0));

        uint256 big = uint256(type(uint96).max) + 1;
        vm.deal(alice, big);
        vm.prank(alice);
        vm.expectRevert(InferenceHub.ValueTooLarge.selector);
        hub.requestInference{value: big}(m1, IN);
    }

    function test_getRequest_revertsUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.UnknownRequest.selector, 1));
        hub.getRequest(1);
    }

    function testFuzz_request_assignsDistinctActiveMiners(uint256 nMiners, uint256 rand, uint8 red) public {
        uint256 r = bound(red, 1, 7);
        uint256 n = bound(nMiners, r, 10);
        bytes32 model = hub.registerModel("fz", MIN_STAKE, 0, TIMEOUT, uint8(r));
        _registerN(model, n);
        vm.prevrandao(bytes32(rand));
        uint256 id = _request(model, 0);
        address[] memory a = _assignees(id);
        assertEq(a.length, r);
        for (uint256 i; i < r; ++i) {
            assertTrue(hub.getMiner(a[i]).active, "assignee active");
            assertEq(hub.getMiner(a[i]).modelId, model);
            for (uint256 j = i + 1; j < r; ++j) {
                assertTrue(a[i] != a[j], "duplicate assignee");
            }
        }
    }
}

contract SubmitTest is HubBase {
    function test_submit_r1_finalizesAndCredits() public {
        _registerN(m1, 3);
        uint256 id = _request(m1, MIN_FEE);
        address a = _assignees(id)[0];
        vm.expectEmit();
        emit InferenceHub.ResultSubmitted(id, a, OUT);
        vm.expectEmit();
        emit InferenceHub.InferenceFinalized(id, OUT);
        _submit(a, id, OUT);
        InferenceHub.RequestView memory q = hub.getRequest(id);
        assertEq(uint256(q.status), uint256(InferenceHub.Status.Finalized));
        assertEq(q.outputDigest, OUT);
        assertEq(q.submitted[0], OUT);
        assertEq(hub.creditsOf(a), MIN_FEE);
        assertEq(hub.getMiner(a).credits, MIN_FEE);

        uint256 before = a.balance;
        vm.expectEmit();
        emit InferenceHub.Withdrawn(a, MIN_FEE);
        vm.prank(a);
        hub.withdraw();
        assertEq(a.balance, before + MIN_FEE);
        assertEq(hub.creditsOf(a), 0);
        assertEq(address(hub).balance, 3 * MIN_STAKE);
    }

    function test_submit_reverts() public {
        _registerN(m1, 2);
        uint256 id = _request(m1, MIN_FEE);
        address a = _assignees(id)[0];
        address other = a == miners[0] ? miners[1] : miners[0];

        vm.prank(a);
        vm.expectRevert(InferenceHub.ZeroDigest.selector);
        hub.submitResult(id, bytes32(0));

        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.UnknownRequest.selector, 99));
        hub.submitResult(99, OUT);

        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotAssignee.selector, id));
        hub.submitResult(id, OUT);

        vm.roll(block.number + TIMEOUT + 1);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.DeadlinePassed.selector, id));
        hub.submitResult(id, OUT);

        uint256 id2 = _request(m1, MIN_FEE);
        address b = _assignees(id2)[0];
        _submit(b, id2, OUT);
        vm.prank(b);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.AlreadyFinalized.selector, id2));
        hub.submitResult(id2, OUT);
    }

    function test_submit_revertsRequestClosed() public {
        _registerN(m1, 1);
        uint256 id = _request(m1, MIN_FEE);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id); // refunded: no other miner
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.RequestClosed.selector, id));
        hub.submitResult(id, OUT);
    }

    function test_submit_r3_quorumSlashesDissenter() public {
        _registerN(m3, 3);
        uint256 fee = MIN_FEE + 1; // odd: remainder goes to the quorum-completing miner
        uint256 id = _request(m3, fee);
        address[] memory a = _assignees(id);
        _submit(a[0], id, BAD); // dissenter
        _submit(a[1], id, OUT);
        assertEq(uint256(hub.getRequest(id).status), uint256(InferenceHub.Status.Open));
        vm.prank(a[1]);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.AlreadySubmitted.selector, id));
        hub.submitResult(id, OUT);

        vm.expectEmit();
        emit InferenceHub.InferenceFinalized(id, OUT);
        vm.expectEmit();
        emit InferenceHub.Slashed(id, a[0], SLASH);
        _submit(a[2], id, OUT);

        InferenceHub.RequestView memory q = hub.getRequest(id);
        assertEq(uint256(q.status), uint256(InferenceHub.Status.Finalized));
        assertEq(q.outputDigest, OUT);
        assertEq(q.submitted[0], BAD);
        assertEq(hub.creditsOf(a[1]), fee / 2);
        assertEq(hub.creditsOf(a[2]), fee / 2 + fee % 2);
        assertEq(hub.creditsOf(a[0]), 0);
        assertEq(_stake(a[0]), MIN_STAKE - SLASH);
        assertEq(hub.getMiner(a[0]).active, false); // below min stake now
        assertEq(hub.creditsOf(alice), SLASH); // compensation
        assertEq(address(hub).balance, 3 * MIN_STAKE + fee);
    }

    function test_submit_r3_noQuorumWhenAllDiffer() public {
        _registerN(m3, 3);
        uint256 id = _request(m3, MIN_FEE);
        address[] memory a = _assignees(id);
        _submit(a[0], id, keccak256("a"));
        _submit(a[1], id, keccak256("b"));
        _submit(a[2], id, keccak256("c"));
        assertEq(uint256(hub.getRequest(id).status), uint256(InferenceHub.Status.Open));
        assertEq(hub.creditsOf(a[0]) + hub.creditsOf(a[1]) + hub.creditsOf(a[2]), 0);
    }

    function test_submitResults_batch() public {
        _register(miners[0], m1);
        uint256[] memory ids = new uint256[](5);
        bytes32[] memory ds = new bytes32[](5);
        for (uint256 i; i < 5; ++i) {
            ids[i] = _request(m1, MIN_FEE);
            ds[i] = keccak256(abi.encode(i));
        }
        vm.prank(miners[0]);
        hub.submitResults(ids, ds);
        for (uint256 i; i < 5; ++i) {
            assertEq(hub.getRequest(ids[i]).outputDigest, ds[i]);
        }
        assertEq(hub.creditsOf(miners[0]), 5 * MIN_FEE);
    }

    function test_submitResults_reverts() public {
        _register(miners[0], m1);
        uint256 id = _request(m1, MIN_FEE);
        uint256[] memory ids = new uint256[](2);
        bytes32[] memory ds = new bytes32[](1);
        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.LengthMismatch.selector);
        hub.submitResults(ids, ds);

        vm.prank(miners[0]);
        vm.expectRevert(InferenceHub.EmptyBatch.selector);
        hub.submitResults(new uint256[](0), new bytes32[](0));

        // atomic: the second item is invalid, the first is rolled back
        ids[0] = id;
        ids[1] = 77;
        ds = new bytes32[](2);
        ds[0] = OUT;
        ds[1] = OUT;
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.UnknownRequest.selector, 77));
        hub.submitResults(ids, ds);
        assertEq(hub.getRequest(id).outputDigest, bytes32(0));
    }

    function testFuzz_r3_feeSplitConserves(uint96 feeSeed, uint256 rand) public {
        uint256 fee = bound(feeSeed, MIN_FEE, 50 ether);
        _registerN(m3, 5);
        vm.prevrandao(bytes32(rand));
        uint256 id = _request(m3, fee);
        address[] memory a = _assignees(id);
        _submit(a[2], id, OUT);
        _submit(a[0], id, OUT);
        assertEq(hub.creditsOf(a[0]) + hub.creditsOf(a[2]), fee);
        assertEq(hub.creditsOf(a[1]), 0);
        assertEq(address(hub).balance, 5 * MIN_STAKE + fee);
    }
}

contract ExpireTest is HubBase {
    function test_expire_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.UnknownRequest.selector, 1));
        hub.expire(1);

        _registerN(m1, 1);
        uint256 id = _request(m1, MIN_FEE);
        uint64 deadline = uint64(block.number + TIMEOUT);
        vm.roll(deadline);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotExpired.selector, id, deadline));
        hub.expire(id);

        uint256 id2 = _request(m1, MIN_FEE);
        _submit(miners[0], id2, OUT);
        vm.roll(block.number + TIMEOUT + 1);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.AlreadyFinalized.selector, id2));
        hub.expire(id2);

        hub.expire(id); // refund (no other miner)
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.RequestClosed.selector, id));
        hub.expire(id);
    }

    function test_expire_r1_slashReassignThenRefund() public {
        _registerN(m1, 2);
        uint256 id = _request(m1, MIN_FEE);
        address first = _assignees(id)[0];
        address second = first == miners[0] ? miners[1] : miners[0];
        vm.roll(block.number + TIMEOUT + 1);

        address[] memory fresh = new address[](1);
        fresh[0] = second;
        vm.expectEmit();
        emit InferenceHub.Slashed(id, first, SLASH);
        vm.expectEmit();
        emit InferenceHub.InferenceExpired(id, true, IN, uint64(block.number + TIMEOUT), fresh);
        vm.prank(miners[9]); // anyone
        hub.expire(id);

        InferenceHub.RequestView memory q = hub.getRequest(id);
        assertEq(uint256(q.status), uint256(InferenceHub.Status.Open));
        assertEq(q.reassigned, true);
        assertEq(q.assignees[0], second);
        assertEq(q.deadline, block.number + TIMEOUT);
        assertEq(_stake(first), MIN_STAKE - SLASH);
        assertEq(hub.creditsOf(alice), SLASH);

        // the old assignee can no longer submit
        vm.prank(first);
        vm.expectRevert(abi.encodeWithSelector(InferenceHub.NotAssignee.selector, id));
        hub.submitResult(id, OUT);

        vm.roll(block.number + TIMEOUT + 1);
        address[] memory none = new address[](0);
        vm.expectEmit();
        emit InferenceHub.InferenceExpired(id, false, IN, 0, none);
        hub.expire(id);
        q = hub.getRequest(id);
        assertEq(uint256(q.status), uint256(InferenceHub.Status.Refunded));
        assertEq(_stake(second), MIN_STAKE - SLASH);
        assertEq(hub.creditsOf(alice), 2 * SLASH + MIN_FEE);

        uint256 before = alice.balance;
        vm.prank(alice);
        hub.withdraw();
        assertEq(alice.balance, before + 2 * SLASH + MIN_FEE);
        assertEq(address(hub).balance, 2 * (MIN_STAKE - SLASH));
    }

    function test_expire_reassignedWorkerCanFinalize() public {
        _registerN(m1, 2);
        uint256 id = _request(m1, MIN_FEE);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id);
        address second = _assignees(id)[0];
        _submit(second, id, OUT);
        assertEq(hub.creditsOf(second), MIN_FEE);
        assertEq(uint256(hub.getRequest(id).status), uint256(InferenceHub.Status.Finalized));
    }

    function test_expire_r3_slashesOnlySilentAndClearsDigests() public {
        _registerN(m3, 6);
        uint256 id = _request(m3, MIN_FEE);
        address[] memory a = _assignees(id);
        _submit(a[0], id, keccak256("x"));
        _submit(a[1], id, keccak256("y"));
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id);
        assertEq(_stake(a[0]), MIN_STAKE);
        assertEq(_stake(a[1]), MIN_STAKE);
        assertEq(_stake(a[2]), MIN_STAKE - SLASH);
        InferenceHub.RequestView memory q = hub.getRequest(id);
        assertEq(q.reassigned, true);
        for (uint256 i; i < 3; ++i) {
            assertEq(q.submitted[i], bytes32(0));
            for (uint256 j; j < 3; ++j) {
                assertTrue(q.assignees[i] != a[j], "reassigned to an old assignee");
            }
        }
    }

    function test_expire_refundsWhenTooFewOtherMiners() public {
        _registerN(m3, 5); // 3 assigned, only 2 others
        uint256 id = _request(m3, MIN_FEE);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id);
        assertEq(uint256(hub.getRequest(id).status), uint256(InferenceHub.Status.Refunded));
        assertEq(hub.creditsOf(alice), MIN_FEE + 3 * SLASH);
    }

    function test_slash_cappedAtStake() public {
        // a model whose slash exceeds what a previously slashed miner still has
        bytes32 big = hub.registerModel("big", 10 ether, 0, TIMEOUT, 1);
        vm.prank(miners[0]);
        hub.registerMiner{value: 10 ether}(big);
        uint256 id = _request(big, 0);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id);
        assertEq(_stake(miners[0]), 9 ether);
        vm.prank(miners[0]);
        hub.requestExit();
        assertEq(hub.creditsOf(alice), 1 ether);
    }

    function testFuzz_expire_conservesEth(uint256 rand, uint8 nSeed, uint96 feeSeed) public {
        uint256 n = bound(nSeed, 3, 10);
        uint256 fee = bound(feeSeed, MIN_FEE, 10 ether);
        _registerN(m3, n);
        vm.prevrandao(bytes32(rand));
        uint256 id = _request(m3, fee);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id);
        uint256 stakes;
        uint256 credits;
        for (uint256 i; i < n; ++i) {
            stakes += _stake(miners[i]);
            credits += hub.creditsOf(miners[i]);
        }
        credits += hub.creditsOf(alice);
        InferenceHub.RequestView memory q = hub.getRequest(id);
        uint256 escrow = q.status == InferenceHub.Status.Open ? q.fee : 0;
        assertEq(address(hub).balance, stakes + credits + escrow, "conservation");
        assertEq(stakes, n * MIN_STAKE - 3 * SLASH);
        assertEq(q.reassigned, n >= 6);
    }
}

contract WithdrawTest is HubBase {
    function test_withdraw_revertsNothing() public {
        vm.prank(alice);
        vm.expectRevert(InferenceHub.NothingToWithdraw.selector);
        hub.withdraw();
    }

    function test_withdraw_revertsTransferFailed_and_reentrancy() public {
        Rejecter r = new Rejecter(hub);
        r.register{value: MIN_STAKE}(m1);
        vm.deal(address(r), 1 ether);
        uint256 id = r.request{value: MIN_FEE}(m1, IN);
        vm.roll(block.number + TIMEOUT + 1);
        hub.expire(id); // r is both requester and slashed miner: refund + compensation to r
        uint256 owed = hub.creditsOf(address(r));
        assertEq(owed, MIN_FEE + SLASH);

        vm.expectRevert(InferenceHub.TransferFailed.selector);
        r.withdraw();

        // re-entering withdraw from receive() hits the guard; the outer send then fails
        r.setReenter(true);
        vm.expectRevert(InferenceHub.TransferFailed.selector);
        r.withdraw();
        assertEq(hub.creditsOf(address(r)), owed);
    }

    function test_withdraw_paysMinerAndRequesterCredits() public {
        // an address that is both a miner (fee credits) and a requester (refund credits)
        _register(alice, m1);
        _register(miners[0], m1);
        vm.prevrandao(bytes32(0));
        uint256 paid;
        uint256 n;
        for (uint256 i; i < 20; ++i) {
            vm.prevrandao(bytes32(i));
            uint256 id = _request(m1, MIN_FEE);
            address a = _assignees(id)[0];
            _submit(a, id, OUT);
            if (a == alice) {
                paid += MIN_FEE;
                ++n;
            }
        }
        assertTrue(n > 3 && n < 17, "assignment looks biased");
        assertTrue(paid > 0, "alice never assigned");
        uint256 before = alice.balance;
        vm.prank(alice);
        hub.withdraw();
        assertEq(alice.balance, before + paid);
    }
}
