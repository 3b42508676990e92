// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {InferenceHub} from "../src/InferenceHub.sol";
import {HubStorage} from "../src/HubStorage.sol";

contract SmokeTest is HubBase {
    function test_r1_happy_or_audit() public {
        _registerN(m1, 5);
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _commit(a, id, OUT);
        vm.roll(block.number + 1);
        if (hub.auditDrawn(id)) {
            court.openAudit(id);
            address aud = _seats(id)[1];
            _commit(aud, id, OUT);
            _reveal(a, id, OUT);
            _reveal(aud, id, OUT);
        } else {
            _reveal(a, id, OUT);
        }
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
    }

    function test_r1_audit_dispute_committee() public {
        bytes32 ma = hub.registerModel("ma", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 1, 5_000);
        _registerN(ma, 6);
        uint256 id;
        address a;
        for (uint256 k;; ++k) {
            id = _request(ma);
            a = _seats(id)[0];
            _commit(a, id, BAD);
            vm.roll(block.number + 1);
            if (hub.auditDrawn(id)) break;
            _reveal(a, id, BAD);
        }
        court.openAudit(id);
        address aud = _seats(id)[1];
        _commit(aud, id, OUT);
        _reveal(a, id, BAD);
        _reveal(aud, id, OUT);
        address[] memory s = _seats(id);
        assertEq(s.length, 5);
        for (uint256 i = 2; i < 5; ++i) _commit(s[i], id, OUT);
        for (uint256 i = 2; i < 5; ++i) _reveal(s[i], id, OUT);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Resolved));
        vm.roll(block.number + TIMEOUT + 1);
        hub.timeout(id);
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(v.outputDigest, OUT);
        assertTrue(_stake(a) < MIN_STAKE);
        assertTrue(hub.creditsOf(aud) > 0);
    }

    function test_r3_quorum() public {
        _registerN(m3, 5);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        for (uint256 i; i < 3; ++i) _commit(s[i], id, OUT);
        for (uint256 i; i < 3; ++i) _reveal(s[i], id, OUT);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(hub.creditsOf(s[0]) + hub.creditsOf(s[1]) + hub.creditsOf(s[2]), _fee());
    }
}
