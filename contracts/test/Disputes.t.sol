// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {Vm} from "./utils/Test.sol";
import {InferenceHub} from "../src/InferenceHub.sol";
import {HubStorage} from "../src/HubStorage.sol";

/// @dev Audits (r = 1), committees, escalation votes and equivocation proofs.
contract DisputesTest is HubBase {
    bytes32 internal constant UNAVAILABLE = bytes32(uint256(1));
    address internal prover = makeAddr("prover");

    function _auditPart() internal pure returns (uint256) {
        return _fee() * AUDIT_BPS / 10_000;
    }

    function _work() internal pure returns (uint256) {
        return _fee() - _auditPart();
    }

    /// @dev A drawn r = 1 request with its auditor seated: (id, assignee, auditor).
    function _audited(bytes32 assigneeDigest) internal returns (uint256 id, address a, address aud) {
        id = _request(m1);
        a = _commitR1(id, assigneeDigest, true);
        court.openAudit(id);
        aud = _seats(id)[1];
    }

    /// @dev Assignee reveals BAD, auditor OUT: the committee is seated. Returns its members.
    function _disputed() internal returns (uint256 id, address a, address aud, address[] memory c) {
        (id, a, aud) = _audited(BAD);
        _commit(aud, id, OUT);
        _reveal(a, id, BAD);
        _reveal(aud, id, OUT);
        address[] memory s = _seats(id);
        c = new address[](s.length - 2);
        for (uint256 i; i < c.length; ++i) c[i] = s[i + 2];
    }

    // ---------------------------------------------------------------------------------------------
    // Audits
    // ---------------------------------------------------------------------------------------------

    function test_audit_agree_auditorPaidFromPool() public {
        _registerN(m1, 5);
        for (uint256 k; k < 3; ++k) {
            uint256 pid = _request(m1);
            _reveal(_commitR1(pid, OUT, false), pid, OUT);
        }
        assertEq(hub.getModel(m1).auditPool, 3 * _auditPart());

        uint256 id = _request(m1);
        address a = _commitR1(id, OUT, true);
        vm.expectEmit(true, false, false, false, address(hub));
        emit HubStorage.AuditOpened(id, address(0), IN, 0);
        court.openAudit(id);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        address aud = v.seats[1];
        assertTrue(aud != a && aud != address(0));
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Audit));
        assertEq(uint256(v.flags & 4), 4);
        assertEq(uint256(v.committed), 1);
        assertEq(uint256(v.mark), block.number + TIMEOUT);
        assertTrue(!hub.auditDrawn(id));

        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Audit));
        hub.reveal(id, OUT);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, id));
        hub.commit(id, _commitment(OUT, a, id));
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.RevealOpened(id, uint64(block.number + TIMEOUT));
        _commit(aud, id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.AuditReveal));

        vm.recordLogs();
        _reveal(a, id, OUT);
        _reveal(aud, id, OUT);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(uint256(v.flags & 4), 4);
        assertEq(v.outputDigest, OUT);
        uint256 pool = 4 * _auditPart(); // smaller than the work: all of it
        assertEq(_credited(logs, a, 0), _work());
        assertEq(_credited(logs, aud, 3), pool);
        assertEq(_credited(logs, aud, 0), pool);
        assertEq(hub.getModel(m1).auditPool, 0);
        assertEq(_slashed(logs, address(0)), 0);
    }

    function test_audit_notDrawn_refused() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Assigned));
        court.openAudit(id);
        _commitR1(id, OUT, false);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotDrawn.selector, id));
        court.openAudit(id);
    }

    /// @dev A drawn audit nobody opened is opened by the reveal timeout (waiting never avoids it).
    function test_audit_openedByTimeout() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _commit(a, id, BAD);
        uint256 commitBlock = block.number;
        vm.roll(commitBlock + TIMEOUT + 1);
        _setDraw(id, commitBlock, true);
        hub.timeout(id);
        assertEq(_phase(id), uint8(HubStorage.Phase.Audit));
        assertEq(_stake(a), MIN_STAKE);
        // beyond 256 blocks the hash is gone: still drawn
        uint256 id2 = _request(m1);
        _commit(_seats(id2)[0], id2, OUT);
        _roll(300);
        assertTrue(hub.auditDrawn(id2));
    }

    /// @dev The auditor stays silent: slashed; the assignee gets a fresh window and is paid.
    function test_audit_auditorSilent() public {
        _registerN(m1, 4);
        (uint256 id, address a, address aud) = _audited(OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Slashed(id, aud, SLASH, 1);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.Burned(id, NET);
        hub.timeout(id);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Reveal));
        assertEq(uint256(v.flags & 2), 2);
        assertEq(uint256(v.mark), block.number);
        assertTrue(!hub.auditDrawn(id));
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, block.number + 1));
        hub.reveal(id, OUT);
        _roll(1);
        _reveal(a, id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.creditsOf(a), _work());
        assertEq(hub.creditsOf(aud), 0);
        assertEq(_stake(aud), MIN_STAKE - SLASH);
        assertEq(hub.getModel(m1).auditPool, _auditPart());
    }

    /// @dev The assignee hides its reveal from the auditor: fraud (minStake), the auditor earns the work.
    function test_audit_assigneeHides_fraud() public {
        _registerN(m1, 4);
        (uint256 id, address a, address aud) = _audited(BAD);
        _commit(aud, id, OUT);
        _reveal(aud, id, OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Slashed(id, a, MIN_STAKE, 3);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.Burned(id, MIN_STAKE);
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertEq(_stake(a), 0);
        assertTrue(!hub.getMiner(a).active);
        assertEq(_credited(logs, aud, 1), _work());
        assertEq(_credited(logs, alice, 0), 0);
        assertEq(hub.burned(), MIN_STAKE);
    }

    function test_audit_auditorRevealsLate_bothSilent_refund() public {
        _registerN(m1, 4);
        (uint256 id, address a, address aud) = _audited(OUT);
        _commit(aud, id, OUT);
        _roll(TIMEOUT + 1);
        vm.prank(aud);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        hub.reveal(id, OUT);
        hub.timeout(id);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(_stake(a), MIN_STAKE - SLASH);
        assertEq(_stake(aud), MIN_STAKE - SLASH);
        assertEq(hub.creditsOf(alice), _fee());
        assertEq(hub.burned(), 2 * NET);
    }

    /// @dev An auditor that could not fetch the input did not audit: it is not paid from the pool.
    function test_audit_unavailableAuditorNotPaid() public {
        _registerN(m1, 4);
        (uint256 id, address a, address aud) = _audited(OUT);
        _commit(aud, id, UNAVAILABLE);
        _reveal(a, id, OUT);
        _reveal(aud, id, UNAVAILABLE);
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.getRequest(id).outputDigest, OUT);
        assertEq(hub.creditsOf(a), _work());
        assertEq(hub.creditsOf(aud), 0);
        assertEq(_stake(aud), MIN_STAKE);
        assertEq(hub.getModel(m1).auditPool, _auditPart());
    }

    /// @dev A reassigned request gets a fresh audit draw even if the first round's audit lapsed.
    function test_audit_reassignedSeatIsAuditedAgain() public {
        _registerN(m1, 6);
        (uint256 id, address a,) = _audited(OUT);
        _roll(TIMEOUT + 1);
        hub.timeout(id); // auditor silent: no audit for this round
        _roll(TIMEOUT + 1);
        hub.timeout(id); // assignee silent too: reassigned
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
        assertEq(uint256(v.flags & 2), 0);
        address b = _commitR1(id, OUT, true);
        assertTrue(b != a);
        assertTrue(hub.auditDrawn(id));
        vm.prank(b);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AuditDrawn.selector, id));
        hub.reveal(id, OUT);
    }

    // ---------------------------------------------------------------------------------------------
    // Committee
    // ---------------------------------------------------------------------------------------------

    /// @dev Disagreement -> committee -> provisional (Resolved) -> escalation window -> final: the
    ///      cheating assignee loses minStake, the auditor earns the work, the committee is paid from the
    ///      forfeit, the rest is burned; nothing reaches the requester.
    function test_committee_provisionalThenFinal() public {
        _registerN(m1, 8);
        (uint256 id, address a, address aud) = _audited(BAD);
        _commit(aud, id, OUT);
        _reveal(a, id, BAD);
        vm.expectEmit(true, false, false, false, address(hub));
        emit HubStorage.CommitteeOpened(id, IN, 0, new address[](0));
        _reveal(aud, id, OUT);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Committee));
        assertEq(v.seats.length, 5);
        assertEq(uint256(v.flags & 8), 8);
        address[] memory c = new address[](3);
        for (uint256 i; i < 3; ++i) {
            c[i] = v.seats[i + 2];
            assertTrue(c[i] != a && c[i] != aud);
        }
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, id));
        hub.commit(id, _commitment(OUT, a, id));
        _commit(c[0], id, OUT);
        _commit(c[1], id, OUT);
        vm.prank(c[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Committee));
        hub.reveal(id, OUT);
        _commit(c[2], id, OUT);
        assertEq(_phase(id), uint8(HubStorage.Phase.CommitteeReveal));
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, id));
        hub.reveal(id, BAD);
        _reveal(c[0], id, OUT);
        _reveal(c[1], id, OUT);
        uint64 end = uint64(block.number + TIMEOUT);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.InferenceResolved(id, OUT, end);
        _reveal(c[2], id, OUT);
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Resolved));
        assertEq(v.outputDigest, OUT);
        assertEq(uint256(v.mark), end);

        vm.prank(aud);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CannotEscalate.selector, id));
        court.escalate{value: MIN_STAKE}(id);
        vm.prank(c[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CannotEscalate.selector, id));
        court.escalate{value: MIN_STAKE}(id);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, end + 1));
        hub.timeout(id);

        vm.roll(end + 1);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        court.escalate{value: MIN_STAKE}(id);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(_slashed(logs, a), MIN_STAKE);
        assertEq(_slashed(logs, address(0)), MIN_STAKE);
        assertEq(_credited(logs, aud, 1), _work());
        for (uint256 i; i < 3; ++i) assertEq(_credited(logs, c[i], 4), _work());
        assertEq(_burnedIn(logs), MIN_STAKE - 3 * _work() - _comp());
        assertEq(hub.burned(), MIN_STAKE - 3 * _work() - _comp());
        // proven fraud: alice's fee back, and fee * (1 - p) / p from the slash
        assertEq(_credited(logs, alice, 2), 0);
        assertEq(_credited(logs, alice, 8), _comp());
        assertEq(hub.creditsOf(alice), _comp());
        assertEq(hub.getModel(m1).auditPool, _auditPart());
        // conservation: 8 stakes + the fee
        assertEq(
            address(hub).balance,
            8 * MIN_STAKE - MIN_STAKE + _work() * 4 + _comp() + _auditPart() + hub.burned()
        );
    }

    function test_committee_minorityMemberSlashed() public {
        _registerN(m1, 8);
        (uint256 id,, address aud, address[] memory c) = _disputed();
        _commit(c[0], id, OUT);
        _commit(c[1], id, BAD);
        _commit(c[2], id, OUT);
        for (uint256 i; i < 3; ++i) _reveal(c[i], id, i == 1 ? BAD : OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_slashed(logs, c[1]), SLASH);
        assertEq(_credited(logs, c[0], 4), _work());
        assertEq(_credited(logs, c[2], 4), _work());
        assertEq(_credited(logs, c[1], 0), 0);
        assertEq(_credited(logs, aud, 1), _work());
        assertEq(_burnedIn(logs), MIN_STAKE - 2 * _work() + SLASH - _comp());
    }

    function test_committee_noMajority_refund() public {
        _registerN(m1, 8);
        (uint256 id, address a, address aud, address[] memory c) = _disputed();
        bytes32[3] memory d = [OUT, BAD, keccak256("third")];
        for (uint256 i; i < 3; ++i) _commit(c[i], id, d[i == 0 ? 2 : (i == 1 ? 0 : 2)]);
        // members: third, OUT, third -> one vote for the auditor, none for the assignee
        _reveal(c[0], id, d[2]);
        _reveal(c[1], id, d[0]);
        _reveal(c[2], id, d[2]);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
        assertEq(_stake(a), MIN_STAKE);
        assertEq(_stake(aud), MIN_STAKE);
    }

    function test_committee_silentMembers() public {
        _registerN(m1, 8);
        (uint256 id,,, address[] memory c) = _disputed();
        _commit(c[0], id, OUT);
        _commit(c[1], id, OUT);
        _roll(TIMEOUT + 1);
        hub.timeout(id); // c[2] never committed
        assertEq(_stake(c[2]), MIN_STAKE - SLASH);
        assertEq(_phase(id), uint8(HubStorage.Phase.CommitteeReveal));
        _reveal(c[0], id, OUT);
        _roll(TIMEOUT + 1);
        hub.timeout(id); // c[1] never revealed: slashed; one of two committed members: no majority of 3
        assertEq(_stake(c[1]), MIN_STAKE - SLASH);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
    }

    // ---------------------------------------------------------------------------------------------
    // Escalation vote
    // ---------------------------------------------------------------------------------------------

    /// @dev r = 3 where two seats reveal the same wrong digest: provisional BAD; `dissent` escalates.
    function _sybilMajority(bytes32 majority, bytes32 minority)
        internal
        returns (uint256 id, address[] memory s, address[] memory voters)
    {
        _registerN(m3, 9);
        id = _request(m3);
        s = _seats(id);
        _commit(s[0], id, majority);
        _commit(s[1], id, majority);
        _commit(s[2], id, minority);
        _reveal(s[0], id, majority);
        _reveal(s[1], id, majority);
        _reveal(s[2], id, minority);
        assertEq(_phase(id), uint8(HubStorage.Phase.Resolved));
        voters = new address[](6);
        uint256 k;
        for (uint256 i; i < 9; ++i) {
            if (!_isSeat(id, miners[i])) voters[k++] = miners[i];
        }
    }

    function _vote(address voter, uint256 id, bytes32 digest) internal {
        vm.prank(voter);
        court.commitVote(id, _commitment(digest, voter, id));
    }

    function _revealVote(address voter, uint256 id, bytes32 digest) internal {
        vm.prank(voter);
        court.revealVote(id, digest);
    }

    function test_escalation_overturnsSybilMajority() public {
        (uint256 id, address[] memory s, address[] memory v) = _sybilMajority(BAD, OUT);
        address honest = s[2];
        vm.prank(honest);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongFee.selector, MIN_STAKE, 1));
        court.escalate{value: 1}(id);
        vm.prank(s[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CannotEscalate.selector, id));
        court.escalate{value: MIN_STAKE}(id);
        uint64 commitEnd = uint64(block.number + TIMEOUT);
        uint64 revealEnd = uint64(block.number + 2 * TIMEOUT);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.EscalationOpened(id, honest, OUT, commitEnd, revealEnd);
        vm.prank(honest);
        court.escalate{value: MIN_STAKE}(id);
        assertEq(_phase(id), uint8(HubStorage.Phase.Vote));
        assertEq(uint256(hub.getRequest(id).flags & 16), 16);
        HubStorage.Escalation memory e = court.getEscalation(id);
        assertEq(e.challenger, honest);
        assertEq(uint256(e.bond), MIN_STAKE);
        vm.prank(honest);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Vote));
        court.escalate{value: MIN_STAKE}(id);

        // seats and miners activated since the escalation do not vote
        vm.prank(s[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotEligible.selector, id));
        court.commitVote(id, _commitment(BAD, s[0], id));
        _register(miners[12], m3);
        vm.prank(miners[12]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotEligible.selector, id));
        court.commitVote(id, _commitment(BAD, miners[12], id));

        for (uint256 i; i < 5; ++i) _vote(v[i], id, i < 3 ? OUT : BAD);
        vm.prank(v[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AlreadyCommitted.selector, id));
        court.commitVote(id, _commitment(OUT, v[0], id));
        vm.prank(v[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, commitEnd + 1));
        court.revealVote(id, OUT);
        vm.roll(commitEnd + 1);
        vm.prank(v[5]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.DeadlinePassed.selector, id));
        court.commitVote(id, _commitment(OUT, v[5], id));
        vm.prank(v[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        court.revealVote(id, BAD);
        for (uint256 i; i < 4; ++i) _revealVote(v[i], id, i < 3 ? OUT : BAD); // v[4] never reveals
        vm.prank(v[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.AlreadyRevealed.selector, id));
        court.revealVote(id, OUT);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotYet.selector, id, revealEnd + 1));
        hub.timeout(id);

        vm.roll(revealEnd + 1);
        _resolveOverturn(id, s, v);
    }

    function _resolveOverturn(uint256 id, address[] memory s, address[] memory v) internal {
        address honest = s[2];
        uint256 burnedBefore = hub.burned();
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        InferenceHub.RequestView memory r = hub.getRequest(id);
        assertEq(uint8(r.phase), uint8(HubStorage.Phase.Final));
        assertEq(r.outputDigest, OUT);
        uint256 taken = 2 * MIN_STAKE;
        uint256 bounty = taken / 10;
        uint256 pot = (taken - bounty) / 2;
        assertEq(_slashed(logs, s[0]), MIN_STAKE);
        assertEq(_slashed(logs, s[1]), MIN_STAKE);
        assertEq(_slashed(logs, address(0)), taken); // not again as a minority
        assertEq(_credited(logs, honest, 7), MIN_STAKE);
        assertEq(_credited(logs, honest, 5), bounty);
        assertEq(_credited(logs, honest, 1), _fee());
        assertEq(hub.burned(), burnedBefore); // the rest of the slash backs later votes instead
        assertEq(hub.getModel(m3).auditPool, taken - bounty - pot);
        HubStorage.Escalation memory e = court.getEscalation(id);
        assertTrue(e.overturned);
        assertEq(uint256(e.voterShare), pot / 3);
        assertEq(_credited(logs, alice, 0), 0);
        _claims(id, s, v, pot);
    }

    function _claims(uint256 id, address[] memory s, address[] memory v, uint256 pot) internal {

        for (uint256 i; i < 3; ++i) {
            vm.expectEmit(true, true, false, true, address(hub));
            emit HubStorage.Credited(v[i], id, pot / 3, 6);
            vm.prank(v[i]);
            court.claimVote(id);
        }
        vm.prank(v[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NothingToClaim.selector, id));
        court.claimVote(id);
        vm.prank(v[3]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NothingToClaim.selector, id));
        court.claimVote(id);
        vm.prank(v[4]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NothingToClaim.selector, id));
        court.claimVote(id);

        // the overturned seats were punished once: their own signature over what they revealed proves nothing
        bytes memory sig = _signResult(s[0], id, IN, BAD);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, s[0], BAD, sig);

        // conservation: stakes + credits + burned + the pool (no open fee or bond)
        uint256 stakes;
        uint256 credits;
        for (uint256 i; i < 13; ++i) {
            stakes += _stake(miners[i]);
            credits += hub.creditsOf(miners[i]);
        }
        assertEq(address(hub).balance, stakes + credits + hub.burned() + hub.getModel(m3).auditPool);
    }

    function test_escalation_fails_bondForfeited() public {
        (uint256 id, address[] memory s, address[] memory v) = _sybilMajority(OUT, BAD);
        address challenger = s[2];
        vm.prank(challenger);
        court.escalate{value: MIN_STAKE}(id);
        HubStorage.Escalation memory e = court.getEscalation(id);
        for (uint256 i; i < 4; ++i) _vote(v[i], id, i < 3 ? OUT : BAD);
        vm.roll(e.commitEnd + 1);
        for (uint256 i; i < 4; ++i) _revealVote(v[i], id, i < 3 ? OUT : BAD);
        vm.prank(v[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NothingToClaim.selector, id));
        court.claimVote(id); // not final yet
        vm.roll(e.revealEnd + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.getRequest(id).outputDigest, OUT);
        e = court.getEscalation(id);
        assertTrue(!e.overturned);
        uint256 pot = MIN_STAKE / 2;
        assertEq(uint256(e.voterShare), pot / 3);
        assertEq(_credited(logs, challenger, 0), 0); // bond forfeited
        assertEq(_slashed(logs, challenger), SLASH); // and slashed as a minority
        assertEq(_burnedIn(logs), MIN_STAKE - pot + (pot - 3 * (pot / 3)) + SLASH);
        assertEq(_credited(logs, s[0], 1) + _credited(logs, s[1], 1), _fee());
        vm.prank(v[1]);
        court.claimVote(id);
        assertEq(hub.creditsOf(v[1]), pot / 3);
        vm.prank(v[3]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NothingToClaim.selector, id));
        court.claimVote(id);
    }

    function test_escalation_nobodyVotes_bondHalfBurned() public {
        (uint256 id, address[] memory s,) = _sybilMajority(OUT, BAD);
        vm.prank(s[2]);
        court.escalate{value: MIN_STAKE}(id);
        _roll(2 * TIMEOUT + 1);
        uint256 before = hub.burned();
        hub.timeout(id);
        assertEq(hub.burned() - before, MIN_STAKE + SLASH);
        assertEq(uint256(court.getEscalation(id).voterShare), 0);
    }

    /// @dev The overturned seats' stake is gone (earlier offences took it): the model's audit pool
    ///      tops the winning voters' pot up to baseFee a voter, and no further than the pool holds.
    function test_escalation_exhaustedStake_votersPaidFromPool() public {
        (uint256 id, address[] memory s, address[] memory v) = _sybilMajority(BAD, OUT);
        for (uint256 i; i < 2; ++i) {
            vm.prank(prover); // their earlier offence: a signature over another digest
            court.proveEquivocation(id, s[i], OUT, _signResult(s[i], id, IN, OUT));
            assertEq(_stake(s[i]), 0);
        }
        hub.fundAuditPool{value: 2 * BASE_FEE + 7}(m3); // less than the 3 winners' floor
        vm.prank(s[2]);
        court.escalate{value: MIN_STAKE}(id);
        HubStorage.Escalation memory e = court.getEscalation(id);
        for (uint256 i; i < 4; ++i) _vote(v[i], id, i < 3 ? OUT : BAD);
        vm.roll(e.commitEnd + 1);
        for (uint256 i; i < 4; ++i) _revealVote(v[i], id, i < 3 ? OUT : BAD);
        vm.roll(e.revealEnd + 1);
        hub.timeout(id);
        e = court.getEscalation(id);
        assertTrue(e.overturned);
        assertEq(hub.getRequest(id).outputDigest, OUT);
        assertEq(uint256(e.voterShare), (2 * BASE_FEE + 7) / 3); // the whole pool, shared
        assertEq(hub.getModel(m3).auditPool, 0);
        vm.prank(v[0]);
        court.claimVote(id);
        assertEq(hub.creditsOf(v[0]), (2 * BASE_FEE + 7) / 3);
    }

    /// @dev A pool that holds more pays exactly baseFee a winning voter and keeps the rest.
    function test_escalation_exhaustedStake_poolPaysFloorOnly() public {
        (uint256 id, address[] memory s, address[] memory v) = _sybilMajority(BAD, OUT);
        for (uint256 i; i < 2; ++i) {
            vm.prank(prover);
            court.proveEquivocation(id, s[i], OUT, _signResult(s[i], id, IN, OUT));
        }
        hub.fundAuditPool{value: 1 ether}(m3);
        vm.prank(s[2]);
        court.escalate{value: MIN_STAKE}(id);
        HubStorage.Escalation memory e = court.getEscalation(id);
        for (uint256 i; i < 2; ++i) _vote(v[i], id, OUT);
        vm.roll(e.commitEnd + 1);
        for (uint256 i; i < 2; ++i) _revealVote(v[i], id, OUT);
        vm.roll(e.revealEnd + 1);
        uint256 burnedBefore = hub.burned();
        hub.timeout(id);
        assertEq(uint256(court.getEscalation(id).voterShare), BASE_FEE);
        assertEq(hub.getModel(m3).auditPool, 1 ether - 2 * BASE_FEE);
        assertEq(hub.burned(), burnedBefore); // nothing was taken, nothing burned
        assertEq(hub.creditsOf(s[2]), MIN_STAKE + _fee()); // bond back, the whole fee; no bounty
    }

    /// @dev Escalate `id` from s[2] and have `n` voters back it; resolve.
    function _overturnBy(uint256 id, address[] memory s, address[] memory v, uint256 n) internal {
        vm.prank(s[2]);
        court.escalate{value: MIN_STAKE}(id);
        HubStorage.Escalation memory e = court.getEscalation(id);
        for (uint256 i; i < n; ++i) _vote(v[i], id, OUT);
        vm.roll(e.commitEnd + 1);
        for (uint256 i; i < n; ++i) _revealVote(v[i], id, OUT);
        vm.roll(e.revealEnd + 1);
        hub.timeout(id);
        assertTrue(court.getEscalation(id).overturned);
    }

    /// @dev The first overturn's slash, past the bounty and the voters, backs the voters of a later
    ///      one whose overturned seats have nothing left.
    function test_escalation_slashRestBacksLaterVotes() public {
        (uint256 id1, address[] memory s1, address[] memory v1) = _sybilMajority(BAD, OUT);
        _overturnBy(id1, s1, v1, 3);
        uint256 rest = 2 * MIN_STAKE * 9 / 10 - 2 * MIN_STAKE * 9 / 10 / 2;
        assertEq(hub.getModel(m3).auditPool, rest);

        vm.prank(alice);
        uint256 id2 = hub.requestInference{value: _fee()}(m3, IN, MAX_TOKENS);
        vm.roll(block.number + 1);
        hub.assign(64);
        address[] memory s2 = _seats(id2);
        for (uint256 i; i < 3; ++i) _commit(s2[i], id2, i < 2 ? BAD : OUT);
        for (uint256 i; i < 3; ++i) _reveal(s2[i], id2, i < 2 ? BAD : OUT);
        address[] memory v2 = new address[](6);
        uint256 k;
        for (uint256 i; i < 9; ++i) {
            if (!_isSeat(id2, miners[i]) && hub.getMiner(miners[i]).active) v2[k++] = miners[i];
        }
        for (uint256 i; i < 2; ++i) {
            if (_stake(s2[i]) == 0) continue;
            vm.prank(prover);
            court.proveEquivocation(id2, s2[i], OUT, _signResult(s2[i], id2, IN, OUT));
        }
        _overturnBy(id2, s2, v2, 2);
        assertEq(uint256(court.getEscalation(id2).voterShare), BASE_FEE);
        assertEq(hub.getModel(m3).auditPool, rest - 2 * BASE_FEE);
    }

    // ---------------------------------------------------------------------------------------------
    // Equivocation
    // ---------------------------------------------------------------------------------------------

    function test_equivocation_committedSeat() public {
        _registerN(m3, 4);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        bytes memory sigBad = _signResult(s[0], id, IN, BAD);

        // a signature over the committed digest is no proof; nor is an uncommitted seat's
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, s[0], OUT, _signResult(s[0], id, IN, OUT));
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, s[1], BAD, _signResult(s[1], id, IN, BAD));
        // someone else's signature, a wrong input, a malformed signature
        vm.expectRevert(HubStorage.BadSignature.selector);
        court.proveEquivocation(id, s[0], BAD, _signResult(s[1], id, IN, BAD));
        vm.expectRevert(HubStorage.BadSignature.selector);
        court.proveEquivocation(id, s[0], BAD, _signResult(s[0], id, keccak256("other input"), BAD));
        vm.expectRevert(HubStorage.BadSignature.selector);
        court.proveEquivocation(id, s[0], BAD, bytes.concat(sigBad, hex"00"));
        address outsider;
        for (uint256 i; i < 4; ++i) {
            if (!_isSeat(id, miners[i])) outsider = miners[i];
        }
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotSeated.selector, 0));
        court.proveEquivocation(id, outsider, BAD, _signResult(outsider, id, IN, BAD));

        vm.recordLogs();
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Slashed(id, s[0], MIN_STAKE, 4);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Credited(prover, id, MIN_STAKE / 10, 5);
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.Burned(id, MIN_STAKE - MIN_STAKE / 10);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.EquivocationProven(id, s[0], BAD, prover);
        vm.prank(prover);
        court.proveEquivocation(id, s[0], BAD, sigBad);
        assertEq(_stake(s[0]), 0);
        assertTrue(!hub.getMiner(s[0]).active);
        assertEq(hub.creditsOf(prover), MIN_STAKE / 10);
        assertEq(_credited(vm.getRecordedLogs(), alice, 0), 0);

        // once per seat
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, s[0], keccak256("third"), _signResult(s[0], id, IN, keccak256("third")));
    }

    /// @dev A seat whose stake earlier proofs took has nothing left: a further proof is refused, so
    ///      the prover's estimate fails instead of paying gas for a zero bounty.
    function test_equivocation_nothingLeft_refused() public {
        _registerN(m3, 3);
        uint256 id1 = _request(m3);
        uint256 id2 = _request(m3);
        address a = _seats(id1)[0];
        _commit(a, id1, OUT);
        _commit(a, id2, OUT);
        vm.prank(prover);
        court.proveEquivocation(id1, a, BAD, _signResult(a, id1, IN, BAD));
        assertEq(_stake(a), 0);
        bytes memory sig = _signResult(a, id2, IN, BAD);
        vm.prank(prover);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NothingToClaim.selector, id2));
        court.proveEquivocation(id2, a, BAD, sig);
        // stake added later is there to take: the proof still stands
        vm.prank(a);
        hub.addStake{value: MIN_STAKE}();
        vm.prank(prover);
        court.proveEquivocation(id2, a, BAD, sig);
        assertEq(hub.creditsOf(prover), 2 * (MIN_STAKE / 10));
    }

    /// @dev r = 1, committed and not yet revealed: a signature over another digest is proof.
    function test_equivocation_committed_r1() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _commitR1(id, OUT, false);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, a, OUT, _signResult(a, id, IN, OUT));
        vm.prank(prover);
        court.proveEquivocation(id, a, BAD, _signResult(a, id, IN, BAD));
        assertEq(_stake(a), 0);
        assertEq(hub.burned(), MIN_STAKE - MIN_STAKE / 10);
    }

    function test_equivocation_afterFinal_r1() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _commitR1(id, OUT, false);
        _reveal(a, id, OUT);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NoEquivocation.selector, id));
        court.proveEquivocation(id, a, OUT, _signResult(a, id, IN, OUT));
        vm.prank(prover);
        court.proveEquivocation(id, a, BAD, _signResult(a, id, IN, BAD));
        assertEq(_stake(a), 0);
        assertEq(hub.creditsOf(prover), MIN_STAKE / 10);
        assertEq(hub.creditsOf(a), _work()); // the fee already earned stays
    }

    /// @dev A high-s twin of a valid signature is refused (malleability).
    function test_equivocation_highSRefused() public {
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        _commit(s[0], id, OUT);
        bytes memory sig = _signResult(s[0], id, IN, BAD);
        bytes32 sLow;
        bytes32 rr;
        assembly {
            rr := mload(add(sig, 32))
            sLow := mload(add(sig, 64))
        }
        uint8 vv = uint8(sig[64]);
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory twin = abi.encodePacked(rr, bytes32(n - uint256(sLow)), vv == 27 ? uint8(28) : uint8(27));
        vm.expectRevert(HubStorage.BadSignature.selector);
        court.proveEquivocation(id, s[0], BAD, twin);
    }
}
