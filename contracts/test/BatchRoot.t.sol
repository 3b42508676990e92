// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {Vm} from "./utils/Test.sol";
import {InferenceHub} from "../src/InferenceHub.sol";
import {HubStorage} from "../src/HubStorage.sol";

/// @dev One commitment root per r = 1 batch: `commitBatch` / `revealBatch` / `proveBatchEquivocation`.
///      Every path and revert; a drawn entry withheld and audited to the end (agreement and
///      disagreement); timeouts of a batch seat (silent: reassigned; drawn: audited); equivocation
///      proofs (never against the true signature, never with another root's or id's leaves); one id
///      never gets two leaves, even across two roots of one block; a fuzz over sizes, masks, digests.
contract BatchRootTest is HubBase {
    bytes32 internal constant UNAVAILABLE = bytes32(uint256(1));
    uint8 internal constant FLAG_BATCH = 32;

    address internal A; // the sole miner of m1 unless a test registers more

    function setUp() public override {
        super.setUp();
        A = miners[0];
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------

    /// @dev `n` m1 requests (one transaction), materialised in the next block.
    function _requests(uint256 n) internal returns (uint256[] memory ids) {
        bytes32[] memory d = new bytes32[](n);
        uint32[] memory t = new uint32[](n);
        for (uint256 i; i < n; ++i) {
            d[i] = keccak256(abi.encode(IN, i));
            t[i] = MAX_TOKENS;
        }
        vm.prank(alice);
        uint256 first = hub.requestInferences{value: _fee() * n}(m1, d, t);
        _roll(1);
        hub.assign(64);
        ids = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            ids[i] = first + i;
        }
    }

    function _outs(uint256 n, bytes32 salt) internal pure returns (bytes32[] memory ds) {
        ds = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            ds[i] = keccak256(abi.encode(salt, i));
        }
    }

    function _leaves(address miner, uint256[] memory ids, bytes32[] memory ds) internal pure returns (bytes32[] memory l) {
        l = new bytes32[](ids.length);
        for (uint256 i; i < ids.length; ++i) {
            l[i] = _commitment(ds[i], miner, ids[i]);
        }
    }

    function _root(uint256[] memory ids, bytes32[] memory leaves) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(ids, leaves));
    }

    function _commitBatch(address miner, uint256[] memory ids, bytes32[] memory ds) internal returns (bytes32 root) {
        root = _root(ids, _leaves(miner, ids, ds));
        vm.prank(miner);
        hub.commitBatch(ids, root);
    }

    /// @dev Items of a `revealBatch`: the leaf where `withheld` has the bit, else the digest.
    function _items(address miner, uint256[] memory ids, bytes32[] memory ds, uint256 withheld)
        internal
        pure
        returns (bytes32[] memory items)
    {
        items = new bytes32[](ids.length);
        for (uint256 i; i < ids.length; ++i) {
            items[i] = (withheld >> i) & 1 != 0 ? _commitment(ds[i], miner, ids[i]) : ds[i];
        }
    }

    function _revealBatch(address miner, uint256[] memory ids, bytes32[] memory ds, uint256 withheld) internal {
        bytes32[] memory items = _items(miner, ids, ds, withheld);
        vm.prank(miner);
        hub.revealBatch(ids, items, withheld);
    }

    /// @dev Choose the hash of `commitBlock` so that exactly the ids of `drawnMask` are drawn.
    function _setDraws(uint256[] memory ids, uint256 commitBlock, uint256 drawnMask) internal {
        for (uint256 k; k < 1_000_000; ++k) {
            bytes32 h = keccak256(abi.encode("batch blockhash", commitBlock, k));
            bool fits = true;
            for (uint256 i; i < ids.length && fits; ++i) {
                bool drawn = uint256(keccak256(abi.encode(h, ids[i], "audit"))) % 10_000 < AUDIT_BPS;
                fits = drawn == ((drawnMask >> i) & 1 != 0);
            }
            if (fits) {
                vm.setBlockhash(commitBlock, h);
                return;
            }
        }
        revert("no such block hash");
    }

    /// @dev Commit `ids` (A's) with `ds`, roll one block and fix the draws to `drawnMask`.
    function _committed(uint256[] memory ids, bytes32[] memory ds, uint256 drawnMask)
        internal
        returns (bytes32 root, uint256 commitBlock)
    {
        root = _commitBatch(A, ids, ds);
        commitBlock = block.number;
        _roll(1);
        _setDraws(ids, commitBlock, drawnMask);
    }

    function _one(uint256 id) internal pure returns (uint256[] memory a) {
        a = new uint256[](1);
        a[0] = id;
    }

    function _oneD(bytes32 d) internal pure returns (bytes32[] memory a) {
        a = new bytes32[](1);
        a[0] = d;
    }

    function _input(uint256 id) internal view returns (bytes32) {
        return hub.getRequest(id).inputDigest;
    }

    function _auditPart() internal pure returns (uint256) {
        return _fee() * AUDIT_BPS / 10_000;
    }

    // ---------------------------------------------------------------------------------------------
    // commitBatch
    // ---------------------------------------------------------------------------------------------

    function test_commitBatch_revealBatch_finalizesAndPays() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(4);
        bytes32[] memory ds = _outs(4, OUT);
        bytes32[] memory leaves = _leaves(A, ids, ds);
        bytes32 root = _root(ids, leaves);
        for (uint256 i; i < 4; ++i) {
            vm.expectEmit(true, true, false, true, address(hub));
            emit HubStorage.ResultCommitted(ids[i], A, root);
        }
        vm.prank(A);
        hub.commitBatch(ids, root);
        uint256 commitBlock = block.number;
        for (uint256 i; i < 4; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(ids[i]);
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Reveal));
            assertEq(uint256(v.mark), commitBlock);
            assertEq(uint256(v.flags), FLAG_BATCH);
            assertEq(uint256(v.committed), 1);
            assertEq(uint256(v.revealed), 0);
            assertEq(v.digests[0], bytes32(0)); // the leaf lives in the root only
        }
        _roll(1);
        _setDraws(ids, commitBlock, 0);
        uint256 pool = hub.getModel(m1).auditPool;
        vm.recordLogs();
        for (uint256 i; i < 4; ++i) {
            vm.expectEmit(true, true, false, true, address(hub));
            emit HubStorage.ResultRevealed(ids[i], A, ds[i]);
            vm.expectEmit(true, false, false, true, address(hub));
            emit HubStorage.InferenceFinalized(ids[i], ds[i]);
            vm.expectEmit(true, true, false, true, address(hub));
            emit HubStorage.Credited(A, ids[i], _fee() - _auditPart(), 1);
        }
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.BatchRevealed(A, root, ids, leaves);
        _revealBatch(A, ids, ds, 0);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_credited(logs, A, 0), 4 * (_fee() - _auditPart()));
        assertEq(hub.creditsOf(A), 4 * (_fee() - _auditPart()));
        assertEq(hub.getModel(m1).auditPool, pool + 4 * _auditPart());
        for (uint256 i; i < 4; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(ids[i]);
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
            assertEq(uint256(v.flags), FLAG_BATCH);
            assertEq(uint256(v.committed), 1);
            assertEq(uint256(v.revealed), 1);
            assertEq(v.outputDigest, bytes32(0)); // not stored: read from the logs
        }
    }

    function test_commitBatch_reverts() public {
        _registerFrom(m3, 5, 3);
        _registerN(m1, 1);
        uint256[] memory ids = _requests(3);
        bytes32 root = keccak256("root");
        vm.startPrank(A);
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.commitBatch(new uint256[](0), root);
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.commitBatch(new uint256[](65), root);
        vm.expectRevert(HubStorage.ZeroDigest.selector);
        hub.commitBatch(ids, bytes32(0));
        uint256[] memory bad = new uint256[](3);
        (bad[0], bad[1], bad[2]) = (ids[0], ids[2], ids[1]); // not ascending
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.commitBatch(bad, root);
        (bad[0], bad[1], bad[2]) = (ids[0], ids[1], ids[1]); // one id twice
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.commitBatch(bad, root);
        vm.stopPrank();

        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, ids[0]));
        hub.commitBatch(ids, root);

        // an r = 3 request in the batch: atomic, nothing of the batch is committed
        vm.prank(alice);
        uint256 r3 = hub.requestInference{value: _fee()}(m3, IN, MAX_TOKENS);
        _roll(1);
        hub.assign(64);
        uint256[] memory mixed = new uint256[](4);
        (mixed[0], mixed[1], mixed[2], mixed[3]) = (ids[0], ids[1], ids[2], r3);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, r3, HubStorage.Phase.Assigned));
        hub.commitBatch(mixed, root);
        assertEq(_phase(ids[0]), uint8(HubStorage.Phase.Assigned));

        // committed once (singly or in a root): never again
        _commit(A, ids[0], OUT);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, ids[0], HubStorage.Phase.Reveal));
        hub.commitBatch(ids, root);
        uint256[] memory rest = new uint256[](2);
        (rest[0], rest[1]) = (ids[1], ids[2]);
        vm.prank(A);
        hub.commitBatch(rest, root);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, ids[1], HubStorage.Phase.Reveal));
        hub.commitBatch(rest, root);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, ids[1], HubStorage.Phase.Reveal));
        hub.commit(ids[1], root); // a batch seat cannot commit singly either

        // the commit window
        uint256[] memory late = _requests(1);
        _roll(TIMEOUT + 1);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, late[0]));
        hub.commitBatch(late, root);
    }

    // ---------------------------------------------------------------------------------------------
    // revealBatch
    // ---------------------------------------------------------------------------------------------

    function test_revealBatch_reverts() public {
        _registerN(m1, 2);
        uint256[] memory all = _requests(8);
        uint256 n;
        for (uint256 i; i < all.length; ++i) {
            if (_seats(all[i])[0] == A) ++n;
        }
        require(n >= 3, "fixture: A holds fewer than 3 seats");
        uint256[] memory ids = new uint256[](3);
        n = 0;
        for (uint256 i; i < all.length && n < 3; ++i) {
            if (_seats(all[i])[0] == A) ids[n++] = all[i];
        }
        bytes32[] memory ds = _outs(3, OUT);
        _commitBatch(A, ids, ds);
        uint256 commitBlock = block.number;
        bytes32[] memory items = _items(A, ids, ds, 0);

        vm.startPrank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, ids[0], commitBlock + 1));
        hub.revealBatch(ids, items, 0);
        _roll(1);
        _setDraws(ids, commitBlock, 2); // ids[1] drawn
        vm.expectRevert(HubStorage.LengthMismatch.selector);
        hub.revealBatch(ids, new bytes32[](2), 0);
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.revealBatch(new uint256[](0), new bytes32[](0), 0);
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.revealBatch(new uint256[](65), new bytes32[](65), 0);
        bytes32[] memory wrong = _items(A, ids, ds, 0);
        wrong[2] = bytes32(0);
        vm.expectRevert(HubStorage.ZeroDigest.selector);
        hub.revealBatch(ids, wrong, 0);
        wrong[2] = BAD; // another digest: another root
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, ids[0]));
        hub.revealBatch(ids, wrong, 0);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, ids[0]));
        hub.revealBatch(ids, items, 1); // the digest passed as a leaf
        uint256[] memory two = new uint256[](2);
        (two[0], two[1]) = (ids[0], ids[1]);
        bytes32[] memory twoD = new bytes32[](2);
        (twoD[0], twoD[1]) = (ds[0], ds[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, ids[0]));
        hub.revealBatch(two, twoD, 0); // a part of the root
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AuditDrawn.selector, ids[1]));
        hub.revealBatch(ids, items, 0);
        vm.stopPrank();
        // another miner's reveal of the same items: its leaves, not A's
        vm.prank(miners[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, ids[0]));
        hub.revealBatch(ids, items, 0);
        // withholding the drawn entry opens the rest
        _revealBatch(A, ids, ds, 2);
        assertEq(_phase(ids[0]), uint8(HubStorage.Phase.Final));
        assertEq(_phase(ids[1]), uint8(HubStorage.Phase.Reveal));
        assertEq(_phase(ids[2]), uint8(HubStorage.Phase.Final));
        // once opened, never again
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, ids[0], HubStorage.Phase.Final));
        hub.revealBatch(ids, _items(A, ids, ds, 2), 2);
    }

    function test_revealBatch_afterTheWindow_deadlinePassed() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(2);
        bytes32[] memory ds = _outs(2, OUT);
        (, uint256 commitBlock) = _committed(ids, ds, 0);
        vm.roll(commitBlock + TIMEOUT + 1);
        bytes32[] memory items = _items(A, ids, ds, 0);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, ids[0]));
        hub.revealBatch(ids, items, 0);
        vm.roll(commitBlock + TIMEOUT); // the last block of the window
        _revealBatch(A, ids, ds, 0);
        assertEq(_phase(ids[1]), uint8(HubStorage.Phase.Final));
    }

    function test_revealBatch_withheldEntryIsASingleCommitment() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(3);
        bytes32[] memory ds = _outs(3, OUT);
        (bytes32 root,) = _committed(ids, ds, 0);
        bytes32[] memory leaves = _leaves(A, ids, ds);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.BatchRevealed(A, root, ids, leaves); // withheld leaves included
        _revealBatch(A, ids, ds, 4); // ids[2] withheld (not drawn: allowed)
        InferenceHub.RequestView memory v = hub.getRequest(ids[2]);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Reveal));
        assertEq(uint256(v.flags), 0);
        assertEq(v.digests[0], leaves[2]);
        assertEq(hub.creditsOf(A), 2 * (_fee() - _auditPart()));
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, ids[2]));
        hub.reveal(ids[2], BAD);
        _reveal(A, ids[2], ds[2]);
        v = hub.getRequest(ids[2]);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, ds[2]);
        assertEq(hub.creditsOf(A), 3 * (_fee() - _auditPart()));
    }

    function test_revealBatch_unavailableEarnsTheBaseFee() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(2);
        bytes32[] memory ds = new bytes32[](2);
        (ds[0], ds[1]) = (UNAVAILABLE, OUT);
        _committed(ids, ds, 1); // a drawn UNAVAILABLE is not audited (as `reveal`)
        uint256 pool = hub.getModel(m1).auditPool;
        _revealBatch(A, ids, ds, 0);
        assertEq(hub.creditsOf(A), BASE_FEE + _fee() - _auditPart());
        assertEq(hub.creditsOf(alice), _fee() - BASE_FEE);
        assertEq(hub.getModel(m1).auditPool, pool + _auditPart());
    }

    function test_batchSeat_openAuditAndSingleRevealRefused() public {
        _registerN(m1, 2);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        vm.prank(a);
        hub.commitBatch(_one(id), _root(_one(id), _oneD(_commitment(OUT, a, id))));
        uint256 commitBlock = block.number;
        _roll(1);
        _setDraw(id, commitBlock, true);
        assertTrue(hub.auditDrawn(id));
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Reveal));
        court.openAudit(id); // the leaf is not on chain yet
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, OUT);
    }

    // ---------------------------------------------------------------------------------------------
    // A drawn entry, withheld, audited to the end
    // ---------------------------------------------------------------------------------------------

    /// @dev A's batch of 3 with ids[1] drawn and withheld; four more miners (eligible auditors and
    ///      committee: active before the commit block) join after the assignment.
    function _drawnWithheld(bytes32 assigneeDigest) internal returns (uint256 id) {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(3);
        for (uint256 i = 1; i < 5; ++i) {
            _register(miners[i], m1);
        }
        _roll(1);
        bytes32[] memory ds = _outs(3, OUT);
        ds[1] = assigneeDigest;
        _committed(ids, ds, 2);
        _revealBatch(A, ids, ds, 2);
        id = ids[1];
        assertEq(uint256(hub.getRequest(id).flags), 0);
        court.openAudit(id);
        assertEq(_phase(id), uint8(HubStorage.Phase.Audit));
    }

    function test_batch_drawnWithheld_auditAgrees() public {
        uint256 id = _drawnWithheld(OUT);
        address auditor = _seats(id)[1];
        uint256 paid = hub.creditsOf(A);
        uint256 pool = hub.getModel(m1).auditPool + _auditPart(); // the fee's audit part joins first
        uint256 work = _fee() - _auditPart();
        _commit(auditor, id, OUT);
        _reveal(A, id, OUT);
        _reveal(auditor, id, OUT);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertEq(uint256(v.flags), 4); // audited
        assertEq(hub.creditsOf(A) - paid, _fee() - _auditPart());
        assertEq(hub.creditsOf(auditor), work < pool ? work : pool); // from the pool
        assertEq(hub.getModel(m1).auditPool, work < pool ? pool - work : 0);
    }

    function test_batch_drawnWithheld_auditDisagrees_committeeSlashesTheAssignee() public {
        uint256 id = _drawnWithheld(BAD);
        address auditor = _seats(id)[1];
        _commit(auditor, id, OUT);
        _reveal(A, id, BAD);
        _reveal(auditor, id, OUT);
        address[] memory s = _seats(id);
        assertEq(s.length, 5);
        for (uint256 i = 2; i < 5; ++i) _commit(s[i], id, OUT);
        for (uint256 i = 2; i < 5; ++i) _reveal(s[i], id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Resolved));
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertEq(_slashed(logs, A), MIN_STAKE);
        assertEq(hub.creditsOf(auditor), _fee() - _auditPart());
        assertEq(_credited(logs, alice, 8), _comp());
    }

    // ---------------------------------------------------------------------------------------------
    // Timeouts of a batch seat
    // ---------------------------------------------------------------------------------------------

    /// @dev Two miners: the ids of A among 8 requests, committed as one root (not drawn unless asked).
    function _pairBatch(uint256 drawnMask) internal returns (uint256[] memory ids, bytes32[] memory ds) {
        _registerN(m1, 2);
        uint256[] memory all = _requests(8);
        uint256 n;
        for (uint256 i; i < all.length; ++i) {
            if (_seats(all[i])[0] == A) ++n;
        }
        require(n >= 2, "fixture: A holds fewer than 2 seats");
        ids = new uint256[](n);
        n = 0;
        for (uint256 i; i < all.length; ++i) {
            if (_seats(all[i])[0] == A) ids[n++] = all[i];
        }
        ds = _outs(ids.length, OUT);
        _committed(ids, ds, drawnMask);
    }

    function test_batch_timeout_silentSeatSlashedAndReassigned() public {
        (uint256[] memory ids,) = _pairBatch(0);
        uint256 id = ids[0];
        uint256 commitBlock = hub.getRequest(id).mark;
        vm.roll(commitBlock + TIMEOUT);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, commitBlock + TIMEOUT + 1));
        hub.timeout(id);
        _roll(1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_slashed(logs, A), SLASH);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        address b = miners[1];
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
        assertEq(v.seats[0], b);
        assertEq(uint256(v.flags), 1); // reassigned; FLAG_BATCH cleared
        assertEq(uint256(v.committed), 0);
        _commit(b, id, OUT);
        uint256 cb = block.number;
        _roll(1);
        _setDraw(id, cb, false);
        _reveal(b, id, OUT);
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertEq(hub.creditsOf(b), _fee() - _auditPart());
    }

    /// @dev A root never opened while an entry is drawn: the audit opens at the timeout, the assignee
    ///      (no leaf on chain) cannot reveal, the auditor's digest stands and the assignee is slashed
    ///      as hiding its result: keeping a drawn batch closed costs what an unrevealed drawn single
    ///      commit costs, never only a silent slash.
    function test_batch_timeout_drawnOpensTheAudit_hiderSlashed() public {
        (uint256[] memory ids,) = _pairBatch(1);
        uint256 id = ids[0];
        uint256 commitBlock = hub.getRequest(id).mark;
        vm.roll(commitBlock + TIMEOUT + 1);
        hub.timeout(id);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Audit));
        assertEq(uint256(v.flags), 4);
        address auditor = v.seats[1];
        _commit(auditor, id, OUT);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, OUT);
        // the assignee's true signature is no equivocation: nothing of its was on chain
        bytes memory sig = _signResult(A, id, _input(id), OUT);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, A, OUT, sig);
        _reveal(auditor, id, OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertEq(_slashed(logs, A), MIN_STAKE);
        assertEq(hub.creditsOf(auditor), _fee() - _auditPart());
    }

    // ---------------------------------------------------------------------------------------------
    // Equivocation
    // ---------------------------------------------------------------------------------------------

    function test_proveBatchEquivocation_afterTheReveal() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(3);
        bytes32[] memory ds = _outs(3, OUT);
        _committed(ids, ds, 0);
        _revealBatch(A, ids, ds, 0);
        bytes32[] memory leaves = _leaves(A, ids, ds);
        uint256 id = ids[1];
        bytes memory lie = _signResult(A, id, _input(id), BAD);
        address prover = makeAddr("prover");
        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.EquivocationProven(id, A, BAD, prover);
        vm.prank(prover);
        court.proveBatchEquivocation(id, A, BAD, lie, ids, leaves);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_slashed(logs, A), MIN_STAKE);
        assertEq(hub.creditsOf(prover), MIN_STAKE / 10);
        assertEq(_burnedIn(logs), MIN_STAKE - MIN_STAKE / 10);
        vm.prank(prover);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveBatchEquivocation(id, A, BAD, lie, ids, leaves); // once per seat
    }

    function test_proveBatchEquivocation_beforeTheReveal() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(2);
        bytes32[] memory ds = _outs(2, OUT);
        _committed(ids, ds, 0);
        uint256 id = ids[0];
        bytes memory lie = _signResult(A, id, _input(id), BAD);
        court.proveBatchEquivocation(id, A, BAD, lie, ids, _leaves(A, ids, ds));
        assertEq(_stake(A), 0);
    }

    struct TwoRoots {
        uint256[] first;
        uint256[] second;
        bytes32[] leaves; // the first root's
        bytes32[] leaves2; // the second root's
        uint256 id; // first[0]
        bytes32 input;
        bytes lie; // A's signature over BAD for `id`
    }

    /// @dev Two roots of A committed in one block (ids 0-1 with OUT-digests, 2-3 with BAD-digests);
    ///      the first opened.
    function _twoRoots() internal returns (TwoRoots memory t) {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(4);
        t.first = new uint256[](2);
        t.second = new uint256[](2);
        (t.first[0], t.first[1], t.second[0], t.second[1]) = (ids[0], ids[1], ids[2], ids[3]);
        bytes32[] memory ds = _outs(2, OUT);
        _commitBatch(A, t.first, ds);
        _commitBatch(A, t.second, _outs(2, BAD));
        _roll(1);
        _setDraws(ids, block.number - 1, 0);
        _revealBatch(A, t.first, ds, 0);
        t.leaves = _leaves(A, t.first, ds);
        t.leaves2 = _leaves(A, t.second, _outs(2, BAD));
        t.id = t.first[0];
        t.input = _input(t.id);
        t.lie = _signResult(A, t.id, t.input, BAD);
    }

    function test_proveBatchEquivocation_refusals() public {
        TwoRoots memory t = _twoRoots();
        uint256 id = t.id;
        // the miner's true signature
        bytes32 truth = keccak256(abi.encode(OUT, uint256(0)));
        bytes memory honest = _signResult(A, id, t.input, truth);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveBatchEquivocation(id, A, truth, honest, t.first, t.leaves);
        // a lie, but with the leaves of another root of the same block (the id is not in it)
        vm.expectRevert(HubStorage.BadBatch.selector);
        court.proveBatchEquivocation(id, A, BAD, t.lie, t.second, t.leaves2);
        // leaves of no committed root (another id's leaf in place of this one's)
        bytes32[] memory forged = new bytes32[](2);
        (forged[0], forged[1]) = (t.leaves[1], t.leaves[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        court.proveBatchEquivocation(id, A, BAD, t.lie, t.first, forged);
        // a signature for another id, with the root's true leaves
        vm.expectRevert(HubStorage.BadSignature.selector);
        court.proveBatchEquivocation(id, A, BAD, _signResult(A, t.first[1], t.input, BAD), t.first, t.leaves);
        // a signature by someone else, or against someone else
        bytes memory stranger = _signResult(miners[3], id, t.input, BAD);
        vm.expectRevert(HubStorage.BadSignature.selector);
        court.proveBatchEquivocation(id, A, BAD, stranger, t.first, t.leaves);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveBatchEquivocation(id, miners[3], BAD, stranger, t.first, t.leaves);
        vm.expectRevert(HubStorage.LengthMismatch.selector);
        court.proveBatchEquivocation(id, A, BAD, t.lie, t.first, new bytes32[](1));
        // the single-commit proof refuses a batch seat, even a true lie (Final and Reveal)
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, A, BAD, t.lie);
        uint256 open = t.second[0];
        bytes memory lie2 = _signResult(A, open, _input(open), OUT);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, open));
        court.proveEquivocation(open, A, OUT, lie2);
        // a lie with the right root: proven
        court.proveBatchEquivocation(id, A, BAD, t.lie, t.first, t.leaves);
        assertEq(_stake(A), 0);
    }

    function test_withheldEntry_provenAsASingleCommitment() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(2);
        bytes32[] memory ds = _outs(2, OUT);
        _committed(ids, ds, 0);
        _revealBatch(A, ids, ds, 2);
        uint256 id = ids[1];
        bytes memory lie = _signResult(A, id, _input(id), BAD);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveBatchEquivocation(id, A, BAD, lie, ids, _leaves(A, ids, ds)); // not a batch seat now
        bytes memory honest = _signResult(A, id, _input(id), ds[1]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, A, ds[1], honest);
        court.proveEquivocation(id, A, BAD, lie);
        assertEq(_stake(A), 0);
    }

    /// @dev The ids hash in a root's key: a miner that commits two roots in one block with one id in
    ///      both leaf lists (ids 1, 3 in the first root's leaves while committing ids 1, 2) cannot
    ///      open the id with the leaf it chooses after seeing the draw.
    function test_twoRootsInOneBlock_oneLeafPerId() public {
        _registerN(m1, 1);
        uint256[] memory ids = _requests(4);
        uint256[] memory declared = new uint256[](2);
        uint256[] memory hidden = new uint256[](2);
        (declared[0], declared[1]) = (ids[0], ids[1]);
        (hidden[0], hidden[1]) = (ids[0], ids[2]); // the leaves it really hashed: ids[2] twice
        bytes32[] memory ds = _outs(2, OUT);
        bytes32 rootA = _root(hidden, _leaves(A, hidden, ds));
        vm.prank(A);
        hub.commitBatch(declared, rootA);
        uint256[] memory rest = new uint256[](2);
        (rest[0], rest[1]) = (ids[2], ids[3]);
        _commitBatch(A, rest, _outs(2, BAD));
        _roll(1);
        _setDraws(ids, block.number - 1, 0);
        bytes32[] memory items = _items(A, hidden, ds, 0);
        vm.prank(A);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, hidden[0]));
        hub.revealBatch(hidden, items, 0);
    }

    // ---------------------------------------------------------------------------------------------
    // Fuzz
    // ---------------------------------------------------------------------------------------------

    function _checkRevealed(uint256[] memory ids, bytes32[] memory ds, uint256 withheld, uint256 pool) internal view {
        uint256 toMiner;
        uint256 toAlice;
        uint256 toPool;
        for (uint256 i; i < ids.length; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(ids[i]);
            if ((withheld >> i) & 1 != 0) {
                assertEq(uint8(v.phase), uint8(HubStorage.Phase.Reveal));
                assertEq(uint256(v.flags), 0);
                assertEq(v.digests[0], _commitment(ds[i], A, ids[i]));
                continue;
            }
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
            assertEq(uint256(v.flags), FLAG_BATCH);
            if (ds[i] == UNAVAILABLE) {
                toMiner += BASE_FEE;
                toAlice += _fee() - BASE_FEE;
            } else {
                toMiner += _fee() - _auditPart();
                toPool += _auditPart();
            }
        }
        assertEq(hub.creditsOf(A), toMiner);
        assertEq(hub.creditsOf(alice), toAlice);
        assertEq(hub.getModel(m1).auditPool, pool + toPool);
    }

    /// @dev Every leaf left in the root stays provable: a lie about the first revealed entry slashes.
    function _proveAnyRevealed(uint256[] memory ids, bytes32[] memory ds, uint256 withheld) internal {
        bytes32[] memory leaves = _leaves(A, ids, ds);
        bytes32 other = keccak256("lie");
        for (uint256 i; i < ids.length; ++i) {
            if ((withheld >> i) & 1 != 0) continue;
            court.proveBatchEquivocation(ids[i], A, other, _signResult(A, ids[i], _input(ids[i]), other), ids, leaves);
            assertEq(_stake(A), 0);
            return;
        }
    }

    /// @dev Any batch size 1..64, withheld mask, digests (UNAVAILABLE among them) and commit-block
    ///      hash: the drawn entries must be withheld; revealed entries are final and paid exactly
    ///      (fee less the audit part, or the base fee and a refund), withheld ones hold their leaf.
    function testFuzz_batch_paymentsAndStates(uint8 nSeed, uint64 withheldSeed, uint256 digestSeed, bytes32 hashSeed)
        public
    {
        vm.pauseGasMetering();
        uint256 n = bound(nSeed, 1, 64);
        _registerN(m1, 1);
        uint256[] memory ids = _requests(n);
        bytes32[] memory ds = _outs(n, bytes32(digestSeed));
        for (uint256 i; i < n; ++i) {
            if (uint256(keccak256(abi.encode(digestSeed, "unavailable", i))) % 8 == 0) ds[i] = UNAVAILABLE;
        }
        _commitBatch(A, ids, ds);
        uint256 commitBlock = block.number;
        _roll(1 + uint256(hashSeed) % TIMEOUT);
        vm.setBlockhash(commitBlock, hashSeed);
        uint256 withheld = uint256(withheldSeed) & ((1 << n) - 1);
        uint256 drawn;
        for (uint256 i; i < n; ++i) {
            if (hub.auditDrawn(ids[i])) drawn |= 1 << i;
        }
        uint256 mustHold = 0;
        for (uint256 i; i < n; ++i) {
            if ((drawn >> i) & 1 != 0 && ds[i] != UNAVAILABLE) mustHold |= 1 << i;
        }
        if (mustHold & ~withheld != 0) {
            bytes32[] memory bad = _items(A, ids, ds, withheld);
            vm.prank(A);
            vm.expectRevert();
            hub.revealBatch(ids, bad, withheld);
            withheld |= mustHold;
        }
        uint256 pool = hub.getModel(m1).auditPool;
        _revealBatch(A, ids, ds, withheld);
        _checkRevealed(ids, ds, withheld, pool);
        _proveAnyRevealed(ids, ds, withheld);
    }
}
