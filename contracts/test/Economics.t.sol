// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {Vm} from "./utils/Test.sol";
import {HubStorage} from "../src/HubStorage.sol";

/// @dev Issue 12, the economics of protocol v2: whoever moves a stalled request on is paid for it,
///      auditors are paid from a seeded pool, a proven cheat pays the requester back, and a pool
///      change cannot move a draw whose seed is already known.
contract EconomicsTest is HubBase {
    address internal keeper = makeAddr("keeper");

    /// @dev The caller of a timeout that slashes a silent seat gets BOUNTY_BPS of the slash.
    function test_timeout_paysCallerFromSilentSlash() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        vm.prank(keeper);
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 bounty = SLASH * 1_000 / 10_000;
        assertEq(_slashed(logs, a), SLASH);
        assertEq(_credited(logs, keeper, 5), bounty);
        assertEq(hub.creditsOf(keeper), bounty);
        assertEq(_burnedIn(logs), SLASH - bounty);
        assertEq(hub.burned(), SLASH - bounty);
    }

    /// @dev A silent seat that times itself out gets no bounty from its own slash.
    function test_timeout_noBountyFromOwnSlash() public {
        _registerN(m1, 3);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _roll(TIMEOUT + 1);
        vm.prank(a);
        hub.timeout(id);
        assertEq(hub.creditsOf(a), 0);
        assertEq(hub.burned(), SLASH);
    }

    /// @dev r = 3: a withheld reveal's slash pays the caller's bounty, the rest compensates the
    ///      seats that revealed.
    function test_timeout_r3_withheld_bountyThenCompensation() public {
        _registerN(m3, 6);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        for (uint256 i; i < 3; ++i) _commit(s[i], id, OUT);
        _reveal(s[0], id, OUT);
        _reveal(s[1], id, OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        vm.prank(keeper);
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 bounty = SLASH * 1_000 / 10_000;
        assertEq(_slashed(logs, s[2]), SLASH);
        assertEq(_credited(logs, keeper, 5), bounty);
    }

    /// @dev registerModel's msg.value and fundAuditPool seed the pool an agreeing auditor is paid from.
    function test_auditPool_seededAndFunded() public {
        bytes32 m = hub.registerModel{value: 3 ether}("seeded", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 1, 500);
        assertEq(hub.getModel(m).auditPool, 3 ether);
        vm.prank(alice);
        hub.fundAuditPool{value: 1 ether}(m);
        assertEq(hub.getModel(m).auditPool, 4 ether);
        vm.expectRevert(HubStorage.ZeroValue.selector);
        hub.fundAuditPool(m);
        vm.expectRevert(HubStorage.UnknownModel.selector);
        hub.fundAuditPool{value: 1}(keccak256("nope"));

        _registerN(m, 4);
        uint256 id = _request(m);
        address a = _commitR1(id, OUT, true);
        court.openAudit(id);
        address aud = _seats(id)[1];
        _commit(aud, id, OUT);
        _reveal(a, id, OUT);
        vm.recordLogs();
        _reveal(aud, id, OUT);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 part = _fee() * 500 / 10_000;
        // the first audit of a fresh model is paid in full: the seed covers it
        assertEq(_credited(logs, aud, 3), _fee() - part);
        assertEq(hub.getModel(m).auditPool, 4 ether + part - (_fee() - part));
    }

    /// @dev Proven fraud (committee against the assignee): the requester's fee comes back with
    ///      fee * (1 - p) / p of compensation, paid from the fraud slash after the committee.
    function test_fraud_refundsAndCompensatesRequester() public {
        _registerN(m1, 8);
        uint256 id = _request(m1);
        address a = _commitR1(id, BAD, true);
        court.openAudit(id);
        address aud = _seats(id)[1];
        _commit(aud, id, OUT);
        _reveal(a, id, BAD);
        _reveal(aud, id, OUT);
        address[] memory s = _seats(id);
        for (uint256 i = 2; i < 5; ++i) _commit(s[i], id, OUT);
        for (uint256 i = 2; i < 5; ++i) _reveal(s[i], id, OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 fee = _fee();
        uint256 work = fee - fee * AUDIT_BPS / 10_000;
        uint256 comp = fee + fee * (10_000 - AUDIT_BPS) / AUDIT_BPS; // = fee / p
        assertEq(comp, _comp());
        assertEq(_slashed(logs, a), MIN_STAKE);
        assertEq(_credited(logs, alice, 2), 0);
        assertEq(_credited(logs, alice, 8), comp);
        assertEq(_credited(logs, aud, 1), work);
        assertEq(hub.burned(), MIN_STAKE - 3 * work - comp);
    }

    /// @dev A registration or an exit after the seed block is known materialises the due request
    ///      first: the drawn seat is the one the untouched pool gives.
    function test_poolChange_cannotMoveADueDraw() public {
        _registerN(m1, 6);
        vm.prank(alice);
        uint256 id = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        _roll(1);
        uint256 snap = vm.snapshotState();
        hub.assign(8);
        address base = _seats(id)[0];
        for (uint256 k; k < 6; ++k) {
            vm.revertToState(snap);
            snap = vm.snapshotState();
            address who = miners[k];
            if (who == base) continue;
            vm.prank(who);
            hub.requestExit(); // swap-and-pop would move the last miner into its slot
            hub.assign(8);
            assertEq(_seats(id)[0], base);
        }
        vm.revertToState(snap);
        _register(miners[10], m1); // the pool grows
        assertEq(_seats(id)[0], base);
    }
}
