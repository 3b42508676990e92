// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {Vm} from "./utils/Test.sol";
import {InferenceHub} from "../src/InferenceHub.sol";
import {HubStorage} from "../src/HubStorage.sol";

/// @dev Commit-reveal for r = 1 and r = 3, timeouts (slash, reassign once, refund), UNAVAILABLE.
contract ResultsTest is HubBase {
    bytes32 internal constant UNAVAILABLE = bytes32(uint256(1));

    function _auditPart() internal pure returns (uint256) {
        return _fee() * AUDIT_BPS / 10_000;
    }

    function _other(uint256 id) internal view returns (address) {
        address a = _seats(id)[0];
        return a == miners[0] ? miners[1] : miners[0];
    }

    // ---------------------------------------------------------------------------------------------
    // r = 1
    // ---------------------------------------------------------------------------------------------

    function test_r1_commitThenRevealInALaterBlock() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        bytes32 c = _commitment(OUT, a, id);

        vm.prank(_other(id));
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, id));
        hub.commit(id, c);
        vm.prank(a);
        vm.expectRevert(HubStorage.ZeroDigest.selector);
        hub.commit(id, bytes32(0));

        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.ResultCommitted(id, a, c);
        _commit(a, id, OUT);
        uint256 commitBlock = block.number;
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Reveal));
        assertEq(uint256(v.mark), commitBlock);
        assertEq(uint256(v.committed), 1);
        assertEq(v.digests[0], c);
        assertTrue(!hub.auditDrawn(id)); // undecided within the commit block

        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, commitBlock + 1));
        hub.reveal(id, OUT);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Reveal));
        hub.commit(id, c);

        _roll(1);
        _setDraw(id, commitBlock, false);
        assertTrue(!hub.auditDrawn(id));
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, BAD);
        vm.prank(_other(id));
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, id));
        hub.reveal(id, OUT);

        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.ResultRevealed(id, a, OUT);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.InferenceFinalized(id, OUT);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Credited(a, id, _fee() - _auditPart(), 1);
        _reveal(a, id, OUT);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertEq(uint256(v.revealed), 1);
        assertEq(hub.creditsOf(a), _fee() - _auditPart());
        assertEq(hub.getModel(m1).auditPool, _auditPart());
        assertEq(_credited(logs, alice, 0), 0);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Final));
        hub.reveal(id, OUT);
    }

    function test_r1_auditDrawn_revealRefused() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _commitR1(id, OUT, true);
        assertTrue(hub.auditDrawn(id));
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AuditDrawn.selector, id));
        hub.reveal(id, OUT);
    }

    function test_r1_commitDeadline() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _roll(TIMEOUT + 1);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        hub.commit(id, _commitment(OUT, a, id));
    }

    function test_r1_revealDeadline_thenSilentSlash() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _commit(a, id, OUT);
        uint256 commitBlock = block.number;
        vm.roll(commitBlock + TIMEOUT + 1);
        _setDraw(id, commitBlock, false);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        hub.reveal(id, OUT);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Slashed(id, a, SLASH, 1);
        hub.timeout(id);
        assertEq(_stake(a), MIN_STAKE - SLASH);
        assertTrue(_seats(id)[0] != a);
        assertEq(uint256(hub.getRequest(id).flags & 1), 1);
    }

    /// @dev Nobody commits: slashed and reassigned once to a miner not seated before, then refunded.
    function test_r1_timeout_reassignOnceThenRefund() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, block.number + TIMEOUT + 1));
        hub.timeout(id);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_slashed(logs, a), SLASH);
        assertEq(_burnedIn(logs), NET);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        address b = v.seats[0];
        assertTrue(b != a, "reassigned to the same miner");
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
        assertEq(uint256(v.flags & 1), 1);
        assertEq(uint256(v.mark), block.number + TIMEOUT);

        _roll(TIMEOUT + 1);
        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Credited(alice, id, _fee(), 2);
        vm.expectEmit(true, false, false, false, address(hub));
        emit HubStorage.InferenceRefunded(id);
        hub.timeout(id);
        logs = vm.getRecordedLogs();
        assertEq(_slashed(logs, b), SLASH);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
        assertEq(hub.burned(), 2 * NET);
        assertEq(hub.creditsOf(address(this)), 2 * BOUNTY);
        assertEq(address(hub).balance, 3 * MIN_STAKE + _fee());
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Refunded));
        hub.timeout(id);
    }

    function test_r1_reassigned_seatFinishes() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        _roll(TIMEOUT + 1);
        hub.timeout(id);
        address b = _commitR1(id, OUT, false);
        _reveal(b, id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.creditsOf(b), _fee() - _auditPart());
        assertEq(hub.creditsOf(alice), 0);
    }

    function test_r1_tooFewToReassign_refund() public {
        _registerN(m1, 1);
        uint256 id = _request(m1);
        _roll(TIMEOUT + 1);
        hub.timeout(id);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
    }

    function test_timeout_guards() public {
        vm.expectRevert(abi.encodeWithSelector(HubStorage.UnknownRequest.selector, 9));
        hub.timeout(9);
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.timeoutMany(new uint256[](0));
    }

    // ---------------------------------------------------------------------------------------------
    // UNAVAILABLE
    // ---------------------------------------------------------------------------------------------

    /// @dev Not fraud, not audited (even when drawn): the base fee to the miner, the rest refunded.
    function test_r1_unavailable() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _commitR1(id, UNAVAILABLE, true);
        vm.recordLogs();
        _reveal(a, id, UNAVAILABLE);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.getRequest(id).outputDigest, UNAVAILABLE);
        assertEq(hub.creditsOf(a), BASE_FEE);
        assertEq(_credited(logs, a, 1), BASE_FEE);
        assertEq(hub.creditsOf(alice), _fee() - BASE_FEE);
        assertEq(_credited(logs, alice, 2), _fee() - BASE_FEE);
        assertEq(_slashed(logs, address(0)), 0);
        assertEq(_stake(a), MIN_STAKE);
        assertEq(hub.getModel(m1).auditPool, 0);
    }

    function test_r3_allUnavailable_baseFeeShared() public {
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        for (uint256 i; i < 3; ++i) _commit(s[i], id, UNAVAILABLE);
        for (uint256 i; i < 3; ++i) _reveal(s[i], id, UNAVAILABLE);
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        uint256 share = BASE_FEE / 3;
        for (uint256 i; i < 3; ++i) {
            assertEq(hub.creditsOf(s[i]), share);
            assertEq(_stake(s[i]), MIN_STAKE);
        }
        assertEq(hub.creditsOf(alice), _fee() - 3 * share);
    }

    function test_r3_unavailableSeatNotADissenter() public {
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        _commit(s[1], id, UNAVAILABLE);
        _commit(s[2], id, OUT);
        _reveal(s[0], id, OUT);
        _reveal(s[1], id, UNAVAILABLE);
        _reveal(s[2], id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Final)); // no escalation window
        assertEq(hub.creditsOf(s[0]) + hub.creditsOf(s[2]), _fee());
        assertEq(hub.creditsOf(s[1]), 0);
        assertEq(_stake(s[1]), MIN_STAKE);
    }

    // ---------------------------------------------------------------------------------------------
    // r = 3
    // ---------------------------------------------------------------------------------------------

    function test_r3_commitRevealQuorum() public {
        _registerN(m3, 5);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        address outsider;
        for (uint256 i; i < 5; ++i) {
            if (!_isSeat(id, miners[i])) outsider = miners[i];
        }
        vm.prank(outsider);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, 0));
        hub.commit(id, _commitment(OUT, outsider, id));

        _commit(s[0], id, OUT);
        vm.prank(s[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AlreadyCommitted.selector, id));
        hub.commit(id, _commitment(OUT, s[0], id));
        vm.prank(s[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Assigned));
        hub.reveal(id, OUT);
        _commit(s[1], id, OUT);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.RevealOpened(id, uint64(block.number + TIMEOUT));
        _commit(s[2], id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Reveal));
        assertEq(uint256(hub.getRequest(id).committed), 7);

        _reveal(s[0], id, OUT);
        vm.prank(s[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AlreadyRevealed.selector, id));
        hub.reveal(id, OUT);
        _reveal(s[1], id, OUT);
        vm.recordLogs();
        _reveal(s[2], id, OUT);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        uint256 share = _fee() / 3;
        assertEq(hub.creditsOf(s[0]), share + (_fee() - 3 * share));
        assertEq(hub.creditsOf(s[1]), share);
        assertEq(hub.creditsOf(s[2]), share);
        assertEq(_credited(logs, s[1], 1), share);
    }

    /// @dev A copier cannot use another seat's commitment (it is bound to the miner) and committed
    ///      nothing it can open: it stays silent and is slashed; the honest seats are paid.
    function test_r3_copierSlashed() public {
        _registerN(m3, 5);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        vm.prank(s[1]);
        hub.commit(id, _commitment(OUT, s[0], id)); // copied
        _commit(s[2], id, OUT);
        _reveal(s[0], id, OUT);
        vm.prank(s[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, OUT);
        _reveal(s[2], id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Reveal));

        _roll(TIMEOUT + 1);
        vm.prank(s[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        hub.reveal(id, OUT);
        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Slashed(id, s[1], SLASH, 1);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.Burned(id, NET);
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.creditsOf(s[0]) + hub.creditsOf(s[2]), _fee());
        assertEq(hub.creditsOf(s[1]), 0);
        assertEq(_stake(s[1]), MIN_STAKE - SLASH);
        assertEq(_credited(logs, alice, 0), 0);
    }

    /// @dev A revealed minority: provisional outcome, escalation window, then final; the minority is
    ///      slashed and the slash burned.
    function test_r3_minority_provisionalThenFinal() public {
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        _commit(s[1], id, BAD);
        _commit(s[2], id, OUT);
        _reveal(s[0], id, OUT);
        _reveal(s[1], id, BAD);
        uint64 end = uint64(block.number + TIMEOUT);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.InferenceResolved(id, OUT, end);
        _reveal(s[2], id, OUT);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Resolved));
        assertEq(v.outputDigest, OUT);
        assertEq(hub.creditsOf(s[0]), 0); // nothing paid while provisional
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, end + 1));
        hub.timeout(id);
        vm.roll(end + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(_slashed(logs, s[1]), SLASH);
        assertEq(_burnedIn(logs), SLASH);
        assertEq(hub.creditsOf(s[0]) + hub.creditsOf(s[2]), _fee());
        assertEq(hub.burned(), SLASH);
    }

    /// @dev One seat withholds its reveal and the others disagree: the silent seat is slashed, the
    ///      seats that revealed share its slash, and the request is reassigned once, then refunded.
    function test_r3_withheldReveal_compensatesAndReassigns() public {
        _registerN(m3, 7);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        _commit(s[1], id, BAD);
        _commit(s[2], id, OUT);
        _reveal(s[0], id, OUT);
        _reveal(s[1], id, BAD);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_slashed(logs, s[2]), SLASH);
        assertEq(_slashed(logs, address(0)), SLASH);
        assertEq(_credited(logs, address(this), 5), BOUNTY);
        assertEq(_credited(logs, s[0], 8), NET / 2);
        assertEq(_credited(logs, s[1], 8), NET / 2);
        assertEq(_burnedIn(logs), 0);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
        assertEq(uint256(v.flags & 1), 1);
        assertEq(uint256(v.committed), 0);
        for (uint256 i; i < 3; ++i) {
            assertEq(v.digests[i], bytes32(0));
            for (uint256 j; j < 3; ++j) assertTrue(v.seats[i] != s[j], "old seat reassigned");
        }

        // the new seats stay silent: all slashed, nobody diligent, burned; refunded
        address[] memory n = v.seats;
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        logs = vm.getRecordedLogs();
        for (uint256 i; i < 3; ++i) assertEq(_slashed(logs, n[i]), SLASH);
        assertEq(_burnedIn(logs), 3 * NET);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
        assertEq(_credited(logs, alice, 2), _fee());
    }

    function test_r3_majorityCommitted_revealOpensAtTimeout() public {
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        _commit(s[1], id, OUT);
        _roll(TIMEOUT + 1);
        vm.prank(s[2]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        hub.commit(id, _commitment(OUT, s[2], id));
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Slashed(id, s[2], SLASH, 1);
        hub.timeout(id);
        assertEq(_phase(id), uint8(HubStorage.Phase.Reveal));
        assertEq(hub.burned(), NET);
        _reveal(s[0], id, OUT);
        _reveal(s[1], id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.creditsOf(s[0]) + hub.creditsOf(s[1]), _fee());
    }

    function test_batch_commitManyRevealMany() public {
        bytes32 mb = hub.registerModel("mb", CLASS, MIN_STAKE, 1e13, 0, TIMEOUT, 1, 1);
        _register(miners[0], mb);
        _roll(1);
        uint256 n = 32;
        bytes32[] memory d = new bytes32[](n);
        uint32[] memory t = new uint32[](n);
        for (uint256 i; i < n; ++i) {
            d[i] = keccak256(abi.encode(i));
            t[i] = 1;
        }
        vm.prank(alice);
        uint256 first = hub.requestInferences{value: n * 1e13}(mb, d, t);
        _roll(1);
        assertEq(hub.assign(64), n);
        uint256[] memory ids = new uint256[](n);
        bytes32[] memory cs = new bytes32[](n);
        bytes32[] memory outs = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            ids[i] = first + i;
            outs[i] = keccak256(abi.encode("out", i));
            cs[i] = _commitment(outs[i], miners[0], ids[i]);
        }
        vm.prank(miners[0]);
        vm.expectRevert(HubStorage.LengthMismatch.selector);
        hub.commitMany(ids, new bytes32[](1));
        vm.prank(miners[0]);
        hub.commitMany(ids, cs);
        _roll(1);
        for (uint256 i; i < n; ++i) assertTrue(!hub.auditDrawn(ids[i])); // 0.01 %: checked, not forced
        vm.prank(miners[0]);
        hub.revealMany(ids, outs);
        for (uint256 i; i < n; ++i) {
            assertEq(_phase(ids[i]), uint8(HubStorage.Phase.Final));
            assertEq(hub.getRequest(ids[i]).outputDigest, outs[i]);
        }
        assertEq(hub.creditsOf(miners[0]), n * (1e13 - 1e13 / 10_000));
    }

    /// @dev A failed r = 3 round is reassigned only to miners active before its assignment: miners
    ///      registered after it (when the reassignment seed is already known) are never drawn.
    function test_r3_reassignment_excludesMinersActivatedAfterAssignment() public {
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _roll(1);
        for (uint256 i = 3; i < 6; ++i) _register(miners[i], m3); // after the assignment
        _roll(1);
        for (uint256 i; i < 3; ++i) _commit(s[i], id, keccak256(abi.encode("digest", i)));
        for (uint256 i; i < 3; ++i) _reveal(s[i], id, keccak256(abi.encode("digest", i)));
        // no majority: the round fails; the only miners not yet seated arrived too late
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
    }
}
