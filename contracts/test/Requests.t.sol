// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase} from "./utils/HubBase.sol";
import {InferenceHub} from "../src/InferenceHub.sol";
import {HubStorage} from "../src/HubStorage.sol";

/// @dev Exact prices, batches, and assignment from the seed block's hash in a later block.
contract RequestsTest is HubBase {
    function setUp() public override {
        super.setUp();
        _registerN(m1, 4);
    }

    function test_price_exactFeeOnly() public {
        uint256 p = hub.price(m1, 100);
        assertEq(p, BASE_FEE + 100 * PER_TOKEN);
        vm.startPrank(alice);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongFee.selector, p, p + 1));
        hub.requestInference{value: p + 1}(m1, IN, 100);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongFee.selector, p, p - 1));
        hub.requestInference{value: p - 1}(m1, IN, 100);
        vm.expectEmit(true, true, true, true, address(hub));
        emit HubStorage.InferenceRequested(1, alice, m1, IN, p, 100);
        uint256 id = hub.requestInference{value: p}(m1, IN, 100);
        vm.stopPrank();
        assertEq(id, 1);
        assertEq(hub.getRequest(id).fee, p);
        assertEq(address(hub).balance, 4 * MIN_STAKE + p);
    }

    function test_maxTokens_bounds() public {
        vm.startPrank(alice);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.BadMaxTokens.selector, 0));
        hub.requestInference{value: BASE_FEE}(m1, IN, 0);
        uint256 over = BASE_FEE + 65_537 * PER_TOKEN;
        vm.expectRevert(abi.encodeWithSelector(HubStorage.BadMaxTokens.selector, 65_537));
        hub.requestInference{value: over}(m1, IN, 65_537);
        hub.requestInference{value: BASE_FEE + PER_TOKEN}(m1, IN, 1);
        hub.requestInference{value: BASE_FEE + 65_536 * PER_TOKEN}(m1, IN, 65_536);
        vm.stopPrank();
        assertEq(hub.requestCount(), 2);
    }

    function test_request_guards() public {
        vm.startPrank(alice);
        vm.expectRevert(HubStorage.UnknownModel.selector);
        hub.requestInference{value: _fee()}(keccak256("nope"), IN, MAX_TOKENS);
        vm.expectRevert(HubStorage.ZeroDigest.selector);
        hub.requestInference{value: _fee()}(m1, bytes32(0), MAX_TOKENS);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotEnoughMiners.selector, 3, 0));
        hub.requestInference{value: _fee()}(m3, IN, MAX_TOKENS);
        vm.stopPrank();
    }

    /// @dev Every field of a request through request, assignment, commit and reveal (the hot paths
    ///      write the head slot as one packed word).
    function test_requestFields_throughTheHotPaths() public {
        uint256 requestBlock = block.number;
        vm.prank(alice);
        uint256 id = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Pending));
        assertEq(v.requester, alice);
        assertEq(v.modelId, m1);
        assertEq(v.inputDigest, IN);
        assertEq(v.fee, _fee());
        assertEq(uint256(v.mark), requestBlock);
        assertEq(uint256(v.redundancy), 1);
        assertEq(uint256(v.flags), 0);
        assertEq(v.seats.length, 0);

        _roll(1);
        hub.assign(1);
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
        assertEq(uint256(v.mark), block.number + TIMEOUT);
        assertEq(v.modelId, m1);
        assertEq(uint256(v.redundancy), 1);
        assertEq(uint256(v.flags), 0);
        assertEq(v.requester, alice);
        assertEq(v.fee, _fee());
        assertEq(v.seats.length, 1);
        address a = v.seats[0];
        assertTrue(hub.getMiner(a).active);

        _commit(a, id, OUT);
        uint256 commitBlock = block.number;
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Reveal));
        assertEq(uint256(v.mark), commitBlock);
        assertEq(v.seats[0], a);
        assertEq(v.modelId, m1);
        assertEq(uint256(v.redundancy), 1);

        _roll(1);
        _setDraw(id, commitBlock, false);
        _reveal(a, id, OUT);
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Final));
        assertEq(uint256(v.mark), commitBlock);
        assertEq(v.outputDigest, OUT);
        assertEq(v.seats[0], a);
        assertEq(v.modelId, m1);
        assertEq(uint256(v.redundancy), 1);
        assertEq(uint256(v.flags), 0);
        assertEq(v.requester, alice);
    }

    function test_requestInferences_batch() public {
        bytes32[] memory d = new bytes32[](3);
        uint32[] memory t = new uint32[](3);
        uint256 total;
        for (uint256 i; i < 3; ++i) {
            d[i] = keccak256(abi.encode("in", i));
            t[i] = uint32(10 + i);
            total += hub.price(m1, t[i]);
        }
        vm.startPrank(alice);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongFee.selector, total, total + 1));
        hub.requestInferences{value: total + 1}(m1, d, t);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongFee.selector, total, total - 1));
        hub.requestInferences{value: total - 1}(m1, d, t);
        vm.expectRevert(HubStorage.LengthMismatch.selector);
        hub.requestInferences{value: total}(m1, d, new uint32[](2));
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.requestInferences{value: 0}(m1, new bytes32[](0), new uint32[](0));
        vm.expectRevert(HubStorage.BadBatch.selector);
        hub.requestInferences{value: 0}(m1, new bytes32[](65), new uint32[](65));
        vm.expectEmit(true, true, true, true, address(hub));
        emit HubStorage.InferenceRequested(2, alice, m1, d[1], hub.price(m1, 11), 11);
        uint256 first = hub.requestInferences{value: total}(m1, d, t);
        vm.stopPrank();
        assertEq(first, 1);
        assertEq(hub.requestCount(), 3);
        for (uint256 i; i < 3; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(first + i);
            assertEq(v.inputDigest, d[i]);
            assertEq(v.fee, hub.price(m1, t[i]));
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Pending));
        }
        _roll(1);
        assertEq(hub.assign(64), 3);
        for (uint256 i; i < 3; ++i) assertEq(_phase(first + i), uint8(HubStorage.Phase.Assigned));
    }

    /// @dev Batch members (every request of a batch but its first) share their first's requester and
    ///      block and keep their own digest and fee, through request, assignment (calls that end and
    ///      resume inside a batch), payment and refund; their tokens straddle and share
    ///      `_memberTokens` words.
    function test_batchMembers_shareTheirFirstsFields() public {
        address bob = makeAddr("bob");
        vm.deal(bob, 10 ether);
        // ids 1..13 (lone), assigned, so that batch A (14..17) straddles the word of ids 0..15
        vm.startPrank(alice);
        for (uint256 i; i < 13; ++i) {
            hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        }
        vm.stopPrank();
        _roll(1);
        assertEq(hub.assign(64), 13);
        uint256 requestBlock = block.number;
        (bytes32[] memory da, uint32[] memory ta, uint256 totalA) = _batch("a", 4, 10);
        (bytes32[] memory db, uint32[] memory tb, uint256 totalB) = _batch("b", 3, 50);
        vm.prank(alice);
        assertEq(hub.requestInferences{value: totalA}(m1, da, ta), 14);
        vm.prank(bob);
        assertEq(hub.requestInferences{value: totalB}(m1, db, tb), 18); // 19, 20 share the word of 16, 17
        for (uint256 i; i < 7; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(14 + i);
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Pending));
            assertEq(v.requester, i < 4 ? alice : bob);
            assertEq(v.inputDigest, i < 4 ? da[i] : db[i - 4]);
            assertEq(v.fee, hub.price(m1, i < 4 ? ta[i] : tb[i - 4]));
            assertEq(uint256(v.mark), requestBlock);
            assertEq(v.modelId, m1);
            assertEq(uint256(v.redundancy), 1);
            assertEq(v.seats.length, 0);
        }
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, 16, HubStorage.Phase.Pending));
        hub.timeout(16);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.UnknownRequest.selector, 21));
        hub.getRequest(21);

        _roll(1);
        // assign's count bounds its work, batches or not: calls end inside batch A and resume there
        assertEq(hub.assign(1), 1);
        assertEq(hub.nextAssign(), 15);
        for (uint256 id = 15; id < 18; ++id) {
            InferenceHub.RequestView memory v = hub.getRequest(id);
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Pending));
            assertEq(uint256(v.mark), requestBlock); // not its assigned first's deadline
            assertEq(uint256(v.flags), 0);
            assertEq(v.requester, alice);
        }
        assertEq(hub.assign(2), 2);
        assertEq(hub.nextAssign(), 17);
        _roll(5); // a later block: the resumed members still use batch A's block, not this one
        assertEq(hub.assign(2), 2); // 17 (A's last member), 18 (B's first)
        assertEq(hub.nextAssign(), 19);
        assertEq(_phase(19), uint8(HubStorage.Phase.Pending));
        for (uint256 i; i < 4; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(14 + i);
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
            assertEq(v.requester, alice);
            assertEq(v.fee, hub.price(m1, ta[i]));
            assertEq(v.inputDigest, da[i]);
            assertEq(v.seats.length, 1);
            assertEq(v.modelId, m1);
        }
        assertEq(uint256(hub.getRequest(14).mark), block.number - 5 + TIMEOUT);
        assertEq(uint256(hub.getRequest(17).mark), block.number + TIMEOUT);
        assertEq(hub.assign(1), 1);
        assertEq(hub.assign(1), 1);
        assertEq(hub.assign(1), 0);
        assertEq(_phase(20), uint8(HubStorage.Phase.Assigned));

        // A member is paid its own fee (less the audit share), not its first's.
        vm.recordLogs();
        address a = _commitR1(16, OUT, false);
        _reveal(a, 16, OUT);
        uint256 fee = hub.price(m1, ta[2]);
        assertEq(_credited(vm.getRecordedLogs(), a, 0), fee - fee * AUDIT_BPS / 10_000);

        // A member whose seed block's hash is gone is refunded its fee, to its first's requester.
        (db, tb, totalB) = _batch("c", 3, 90);
        vm.prank(bob);
        uint256 first = hub.requestInferences{value: totalB}(m1, db, tb);
        _roll(300);
        vm.recordLogs();
        assertEq(hub.assign(64), 3);
        assertEq(_credited(vm.getRecordedLogs(), bob, 0), totalB);
        assertEq(hub.creditsOf(bob), totalB);
        for (uint256 i; i < 3; ++i) {
            InferenceHub.RequestView memory v = hub.getRequest(first + i);
            assertEq(uint8(v.phase), uint8(HubStorage.Phase.Refunded));
            assertEq(v.requester, bob);
            assertEq(v.fee, hub.price(m1, tb[i]));
        }
    }

    /// @dev Another requester's transaction materialises at most `AUTO_ASSIGN` (2) due requests, a
    ///      batch's members included: a big batch never makes the next requester pay for its seats.
    function test_autoAssign_boundedInsideABatch() public {
        (bytes32[] memory d, uint32[] memory t, uint256 total) = _batch("big", 64, 5);
        vm.prank(alice);
        uint256 first = hub.requestInferences{value: total}(m1, d, t);
        _roll(1);
        vm.prank(alice);
        hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        assertEq(hub.nextAssign(), first + 2);
        assertEq(_phase(first + 1), uint8(HubStorage.Phase.Assigned));
        assertEq(_phase(first + 2), uint8(HubStorage.Phase.Pending));
        assertEq(hub.assign(1_000), 62); // the members left; the lone request waits for its block
        assertEq(hub.nextAssign(), first + 64);
    }

    /// @dev A member's 16-bit lane holds maxTokens - 1 over the whole range 1 .. 65536 (65536 fills
    ///      the lane; its neighbours keep theirs) through the view, assignment and payment.
    function test_batchMembers_tokenBounds() public {
        bytes32[] memory d = new bytes32[](4);
        uint32[] memory t = new uint32[](4);
        t[0] = 65_536;
        t[1] = 65_536;
        t[2] = 1;
        t[3] = 65_536;
        uint256 total;
        for (uint256 i; i < 4; ++i) {
            d[i] = keccak256(abi.encode("bounds", i));
            total += hub.price(m1, t[i]);
        }
        vm.prank(alice);
        uint256 first = hub.requestInferences{value: total}(m1, d, t);
        for (uint256 i; i < 4; ++i) {
            assertEq(hub.getRequest(first + i).fee, hub.price(m1, t[i]));
        }
        _roll(1);
        assertEq(hub.assign(64), 4);
        for (uint256 i; i < 4; ++i) {
            assertEq(hub.getRequest(first + i).fee, hub.price(m1, t[i]));
        }
        vm.recordLogs();
        address a = _commitR1(first + 1, OUT, false);
        _reveal(a, first + 1, OUT);
        uint256 fee = hub.price(m1, 65_536);
        assertEq(_credited(vm.getRecordedLogs(), a, 0), fee - fee * AUDIT_BPS / 10_000);
    }

    function _batch(string memory tag, uint256 n, uint32 tokens)
        internal
        view
        returns (bytes32[] memory d, uint32[] memory t, uint256 total)
    {
        d = new bytes32[](n);
        t = new uint32[](n);
        for (uint256 i; i < n; ++i) {
            d[i] = keccak256(abi.encode(tag, i));
            t[i] = uint32(tokens + 7 * i);
            total += hub.price(m1, t[i]);
        }
    }

    /// @dev In the request's own block its seed does not exist: nothing is assigned, nobody is seated.
    function test_assign_onlyInALaterBlock() public {
        vm.prank(alice);
        uint256 id = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        assertEq(hub.assign(64), 0);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Pending));
        assertEq(v.seats.length, 0);
        assertEq(hub.nextAssign(), 1);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.WrongPhase.selector, id, HubStorage.Phase.Pending));
        hub.timeout(id);

        _roll(1);
        vm.expectEmit(true, true, false, false, address(hub));
        emit HubStorage.InferenceAssigned(id, m1, IN, 0, new address[](0));
        assertEq(hub.assign(64), 1);
        v = hub.getRequest(id);
        assertEq(uint8(v.phase), uint8(HubStorage.Phase.Assigned));
        assertEq(v.seats.length, 1);
        assertEq(uint256(v.mark), block.number + TIMEOUT);
        assertEq(hub.nextAssign(), 2);
        assertEq(hub.assign(64), 0);
    }

    /// @dev Every request materialises up to AUTO_ASSIGN due requests of any model.
    function test_assign_byLaterRequests() public {
        _registerFrom(m3, 4, 3);
        vm.startPrank(alice);
        uint256 a = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        uint256 b = hub.requestInference{value: _fee()}(m3, IN, MAX_TOKENS);
        uint256 c = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        _roll(1);
        uint256 d = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        vm.stopPrank();
        assertEq(_phase(a), uint8(HubStorage.Phase.Assigned));
        assertEq(_phase(b), uint8(HubStorage.Phase.Assigned));
        assertEq(_seats(b).length, 3);
        assertEq(_phase(c), uint8(HubStorage.Phase.Pending)); // only two per request
        assertEq(_phase(d), uint8(HubStorage.Phase.Pending)); // its own block
        vm.prank(alice);
        hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS); // same block: c is due, d is not
        assertEq(_phase(c), uint8(HubStorage.Phase.Assigned));
        assertEq(_phase(d), uint8(HubStorage.Phase.Pending));
        assertEq(hub.nextAssign(), d);
    }

    /// @dev A contract that requests cannot see (and so cannot revert on) its assignees: inside its
    ///      transaction the request is Pending with no seats, even after calling `assign` itself.
    function test_helperContract_cannotKnowAssignees() public {
        Grinder g = new Grinder(hub);
        vm.deal(address(g), 1 ether);
        (uint256 id, uint256 seatsSeen, uint8 phaseSeen) = g.requestAndLook{value: _fee()}(m1, IN, MAX_TOKENS);
        assertEq(seatsSeen, 0);
        assertEq(phaseSeen, uint8(HubStorage.Phase.Pending));
        _roll(1);
        hub.assign(1);
        assertEq(_seats(id).length, 1);
    }

    /// @dev Miners activated in (or after) the seed block are never drawn.
    function test_lateMiners_neverDrawn() public {
        bytes32 mx = hub.registerModel("mx", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 1, AUDIT_BPS);
        _register(miners[4], mx);
        _roll(1);
        bytes32[] memory d = new bytes32[](32);
        uint32[] memory t = new uint32[](32);
        for (uint256 i; i < 32; ++i) {
            d[i] = keccak256(abi.encode(i));
            t[i] = MAX_TOKENS;
        }
        for (uint256 i = 5; i < 10; ++i) _register(miners[i], mx); // same block as the requests
        vm.prank(alice);
        uint256 first = hub.requestInferences{value: 32 * _fee()}(mx, d, t);
        _roll(1);
        for (uint256 i = 10; i < 15; ++i) {
            address late = makeAddr(string(abi.encode("late", i)));
            vm.deal(late, 10 ether);
            _register(late, mx); // after the seed block
        }
        hub.assign(64);
        for (uint256 i; i < 32; ++i) assertEq(_seats(first + i)[0], miners[4]);

        // r = 3 with one eligible miner: refunded, not drawn from the late ones
        bytes32 my = hub.registerModel("my", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 3, 0);
        address[] memory ms = new address[](3);
        for (uint256 i; i < 3; ++i) {
            ms[i] = makeAddr(string(abi.encode("y", i)));
            vm.deal(ms[i], 10 ether);
        }
        _register(ms[0], my);
        _roll(1);
        _register(ms[1], my);
        _register(ms[2], my);
        vm.prank(alice);
        uint256 id = hub.requestInference{value: _fee()}(my, IN, MAX_TOKENS);
        _roll(1);
        vm.expectEmit(true, false, false, false, address(hub));
        emit HubStorage.InferenceRefunded(id);
        hub.assign(1);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
    }

    /// @dev Materialised more than 256 blocks after its seed block: the hash is gone, the fee is refunded.
    function test_blockhashExpired_refund() public {
        vm.prank(alice);
        uint256 id = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
        _roll(256);
        vm.prank(alice);
        uint256 id2 = hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS); // 256 back: still known
        assertEq(_phase(id), uint8(HubStorage.Phase.Assigned));
        _roll(257);
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.Credited(alice, id2, _fee(), 2);
        vm.expectEmit(true, false, false, false, address(hub));
        emit HubStorage.InferenceRefunded(id2);
        hub.assign(64);
        assertEq(_phase(id2), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(alice), _fee());
        assertEq(address(hub).balance, 4 * MIN_STAKE + 2 * _fee());
    }

    function test_assignment_distinctAndReproducible() public {
        _registerFrom(m3, 4, 10);
        vm.prank(alice);
        uint256 id = hub.requestInference{value: _fee()}(m3, IN, MAX_TOKENS);
        uint256 seedBlock = block.number;
        _roll(1);
        hub.assign(1);
        address[] memory s = _seats(id);
        assertEq(s.length, 3);
        assertTrue(s[0] != s[1] && s[1] != s[2] && s[0] != s[2], "seats not distinct");
        assertTrue(blockhash(seedBlock) != bytes32(0));
    }
}

/// @dev Requests, forces assignment in the same transaction and looks at the seats.
contract Grinder {
    InferenceHub internal immutable hub;

    constructor(InferenceHub h) {
        hub = h;
    }

    function requestAndLook(bytes32 modelId, bytes32 digest, uint32 maxTokens)
        external
        payable
        returns (uint256 id, uint256 seats, uint8 phase)
    {
        id = hub.requestInference{value: msg.value}(modelId, digest, maxTokens);
        hub.assign(64);
        InferenceHub.RequestView memory v = hub.getRequest(id);
        return (id, v.seats.length, uint8(v.phase));
    }
}
