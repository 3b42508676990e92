// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {Vm} from "./utils/Test.sol";
import {HubStorage} from "../src/HubStorage.sol";

/// @dev Property tests: commitments open only for their (digest, miner, id); the audit draw has the
///      model's frequency; an audited cheater facing an honest committee always loses minStake.
contract FuzzTest is HubBase {
    function setUp() public override {
        super.setUp();
        _registerN(m3, 5);
    }

    function testFuzz_commitReveal_onlyMatchingOpens(bytes32 digest, bytes32 other, uint256 seatSeed, uint256 idSkew)
        public
    {
        vm.assume(digest != bytes32(0) && other != bytes32(0) && other != digest);
        vm.pauseGasMetering(); // unmetered: the gas snapshot stays exact whatever the inputs
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        uint256 k = seatSeed % 3;
        address seat = s[k];
        address copier = s[(k + 1) % 3];
        address third = s[(k + 2) % 3];
        uint256 wrongId = id + 1 + (idSkew % 1_000);
        bytes32 c = _commitment(digest, seat, id);
        vm.prank(seat);
        hub.commit(id, c);
        vm.prank(copier);
        hub.commit(id, c); // copied commitment
        vm.prank(third);
        hub.commit(id, _commitment(digest, third, wrongId)); // bound to another request

        vm.prank(seat);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, other);
        vm.prank(copier);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, digest);
        vm.prank(third);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CommitmentMismatch.selector, id));
        hub.reveal(id, digest);

        vm.prank(seat);
        hub.reveal(id, digest);
        HubStorage.RequestView memory v = hub.getRequest(id);
        assertEq(v.digests[k], digest);
        assertEq(uint256(v.revealed), 1 << k);
    }

    function _sqrt(uint256 x) internal pure returns (uint256 y) {
        if (x == 0) return 0;
        uint256 z = (x + 1) / 2;
        y = x;
        while (z < y) {
            y = z;
            z = (x / z + z) / 2;
        }
    }

    function _auditModel(uint16 bps) internal returns (bytes32 m) {
        // maxPrice = 1 wei: any auditBps satisfies the audit inequality against 1 ether of stake
        m = hub.registerModel("fz", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 1, bps);
    }

    /// @dev Over many commit-block hashes the draw hits `auditBps / 10_000` of them (within 6 sigma),
    ///      and the view agrees with what `reveal` enforces.
    function testFuzz_auditDraw_frequency(uint16 bpsSeed, uint256 seed) public {
        vm.pauseGasMetering(); // its gas says nothing; unmetered, the gas snapshot stays exact
        uint16 bps = uint16(bound(bpsSeed, 1, 10_000));
        bytes32 m = _auditModel(bps);
        _registerFrom(m, 5, 2);
        vm.prank(alice);
        uint256 id = hub.requestInference{value: 1}(m, IN, 1);
        _roll(1);
        hub.assign(1);
        address a = _seats(id)[0];
        _commit(a, id, OUT);
        uint256 commitBlock = block.number;
        _roll(1);
        uint256 n = 300;
        uint256 hits;
        bool last;
        for (uint256 k; k < n; ++k) {
            bytes32 h = keccak256(abi.encode(seed, k));
            vm.setBlockhash(commitBlock, h);
            last = hub.auditDrawn(id);
            assertEq(last, uint256(keccak256(abi.encode(h, id, "audit"))) % 10_000 < bps);
            if (last) ++hits;
        }
        uint256 mean = n * bps / 10_000;
        uint256 tol = 6 * (_sqrt(n * bps * (10_000 - bps) / 1e8) + 1) + 3; // s.d. rounded up
        assertTrue(hits + tol >= mean && hits <= mean + tol, "draw frequency off");
        vm.prank(a);
        if (last) vm.expectRevert(abi.encodeWithSelector(HubStorage.AuditDrawn.selector, id));
        hub.reveal(id, OUT);
    }

    /// @dev Whatever the audit rate and seeds, a drawn cheater facing an honest auditor and committee
    ///      loses exactly minStake (fraud), and the requester is compensated from it.
    function testFuzz_auditedCheaterLosesMinStake(uint16 bpsSeed, uint256 seed, bytes32 bad) public {
        vm.pauseGasMetering(); // the draw search costs ~10_000 / auditBps hashes: keep it out of the snapshot
        vm.assume(bad != OUT && uint256(bad) > 1);
        uint16 bps = uint16(bound(bpsSeed, 1, 10_000));
        bytes32 m = _auditModel(bps);
        _registerFrom(m, 5, 6);
        vm.prank(alice);
        uint256 id = hub.requestInference{value: 1}(m, IN, 1);
        _roll(1);
        hub.assign(1);
        address a = _seats(id)[0];
        _commit(a, id, bad);
        uint256 commitBlock = block.number;
        _roll(1 + seed % TIMEOUT);
        for (uint256 k;; ++k) {
            bytes32 h = keccak256(abi.encode(seed, k));
            if (uint256(keccak256(abi.encode(h, id, "audit"))) % 10_000 < bps) {
                vm.setBlockhash(commitBlock, h);
                break;
            }
        }
        court.openAudit(id);
        address[] memory s = _seats(id);
        _commit(s[1], id, OUT);
        _reveal(a, id, bad);
        _reveal(s[1], id, OUT);
        s = _seats(id);
        assertEq(s.length, 5);
        for (uint256 i = 2; i < 5; ++i) _commit(s[i], id, OUT);
        for (uint256 i = 2; i < 5; ++i) _reveal(s[i], id, OUT);
        _roll(TIMEOUT + 1);
        vm.recordLogs();
        hub.timeout(id);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_phase(id), uint8(HubStorage.Phase.Final));
        assertEq(hub.getRequest(id).outputDigest, OUT);
        assertEq(_slashed(logs, a), MIN_STAKE);
        assertEq(_stake(a), 0);
        assertEq(_slashed(logs, address(0)), MIN_STAKE);
        // the committee is paid first, then the requester gets fee / p (its fee back and
        // fee * (1 - p) / p of compensation) as far as the slash goes; the rest is burned
        uint256 work = 1 - 1 * uint256(bps) / 10_000;
        uint256 left = MIN_STAKE - 3 * work;
        uint256 comp = uint256(10_000) / bps;
        assertEq(hub.creditsOf(alice), comp < left ? comp : left);
    }

    /// @dev Batches of any length and any tokens (1 .. 65536, so lanes hold 0 .. 0xffff): every
    ///      request keeps its own fee and digest, pending and assigned, and the hub holds their sum.
    function testFuzz_batch_membersKeepTheirFees(uint256 seed, uint8 lead, uint8 size) public {
        vm.pauseGasMetering();
        uint256 before = address(hub).balance;
        vm.startPrank(alice);
        for (uint256 i; i < lead % 20; ++i) {
            hub.requestInference{value: hub.price(m3, 1)}(m3, IN, 1); // shifts the batch's lanes
        }
        uint256 n = 1 + uint256(size) % 64;
        bytes32[] memory d = new bytes32[](n);
        uint32[] memory t = new uint32[](n);
        uint256 total;
        for (uint256 i; i < n; ++i) {
            d[i] = keccak256(abi.encode(seed, i));
            uint256 r = uint256(keccak256(abi.encode(seed, "tokens", i)));
            t[i] = uint32(r % 4 == 0 ? 65_536 : 1 + (r >> 8) % 65_536);
            total += hub.price(m3, t[i]);
        }
        uint256 first = hub.requestInferences{value: total}(m3, d, t);
        vm.stopPrank();
        assertEq(address(hub).balance - before, total + (lead % 20) * hub.price(m3, 1));
        _checkBatch(first, d, t, HubStorage.Phase.Pending, 0);
        _roll(1);
        hub.assign(1_000);
        _checkBatch(first, d, t, HubStorage.Phase.Assigned, 3);
    }

    function _checkBatch(uint256 first, bytes32[] memory d, uint32[] memory t, HubStorage.Phase phase, uint256 seats)
        internal
        view
    {
        for (uint256 i; i < d.length; ++i) {
            HubStorage.RequestView memory v = hub.getRequest(first + i);
            assertEq(v.fee, hub.price(m3, t[i]));
            assertEq(v.inputDigest, d[i]);
            assertEq(v.requester, alice);
            assertEq(uint8(v.phase), uint8(phase));
            assertEq(v.seats.length, seats);
        }
    }
}
