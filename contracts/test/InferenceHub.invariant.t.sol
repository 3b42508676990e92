// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./utils/Test.sol";
import {InferenceHub} from "../src/InferenceHub.sol";

/// @dev Drives the hub with bounded random actions by a fixed cast of actors, keeping ghost state.
contract Handler is Test {
    InferenceHub public immutable hub;
    bytes32[2] public models;
    address[] public actors; // miners and requesters alike
    uint256[] public ids;

    uint256 public constant MIN_STAKE = 1 ether;
    uint32 public constant TIMEOUT = 5;

    /// @dev times a request went from Open to Finalized or Refunded (must stay <= 1)
    mapping(uint256 => uint256) public payouts;
    /// @dev set when a reassignment handed a request to one of its previous assignees
    bool public reassignedToOld;
    uint256 public calls;

    constructor(InferenceHub h, bytes32 a, bytes32 b) {
        hub = h;
        models[0] = a;
        models[1] = b;
        for (uint256 i; i < 8; ++i) {
            address x = address(uint160(0x1000 + i));
            actors.push(x);
            vm.deal(x, 1_000 ether);
        }
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function idCount() external view returns (uint256) {
        return ids.length;
    }

    function _actor(uint256 seed) internal view returns (address) {
        return actors[seed % actors.length];
    }

    function _status(uint256 id) internal view returns (InferenceHub.Status) {
        return hub.getRequest(id).status;
    }

    function _track(uint256 id, InferenceHub.Status before) internal {
        InferenceHub.Status s = _status(id);
        if (before == InferenceHub.Status.Open && s != InferenceHub.Status.Open) payouts[id] += 1;
    }

    function registerMiner(uint256 who, uint256 model, uint256 amount) external {
        ++calls;
        address a = _actor(who);
        amount = bound(amount, MIN_STAKE, 3 ether);
        vm.prank(a);
        hub.registerMiner{value: amount}(models[model % 2]);
    }

    function addStake(uint256 who, uint256 amount) external {
        ++calls;
        amount = bound(amount, 1, 1 ether);
        vm.prank(_actor(who));
        hub.addStake{value: amount}();
    }

    function requestExit(uint256 who) external {
        ++calls;
        vm.prank(_actor(who));
        hub.requestExit();
    }

    function withdrawStake(uint256 who) external {
        ++calls;
        vm.prank(_actor(who));
        hub.withdrawStake();
    }

    function requestInference(uint256 who, uint256 model, uint256 fee, bytes32 digest) external {
        ++calls;
        fee = bound(fee, 0.01 ether, 1 ether);
        if (digest == bytes32(0)) digest = bytes32(uint256(1));
        vm.prevrandao(keccak256(abi.encode(who, fee, block.number)));
        vm.prank(_actor(who));
        uint256 id = hub.requestInference{value: fee}(models[model % 2], digest);
        ids.push(id);
    }

    /// @dev An assignee of some request submits one of two digests (so r=3 requests can dissent).
    function submitResult(uint256 idSeed, uint256 which, bool good) external {
        ++calls;
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        InferenceHub.RequestView memory q = hub.getRequest(id);
        address a = q.assignees[which % q.assignees.length];
        vm.prank(a);
        hub.submitResult(id, good ? bytes32(uint256(0xAA)) : bytes32(uint256(0xBB)));
        _track(id, q.status);
    }

    function submitResults(uint256 who, uint256 start) external {
        ++calls;
        if (ids.length == 0) return;
        address a = _actor(who);
        uint256[] memory batch = new uint256[](ids.length);
        bytes32[] memory ds = new bytes32[](ids.length);
        InferenceHub.Status[] memory before = new InferenceHub.Status[](ids.length);
        uint256 n;
        for (uint256 k; k < ids.length && n < 4; ++k) {
            uint256 id = ids[(start + k) % ids.length];
            InferenceHub.RequestView memory q = hub.getRequest(id);
            if (q.status != InferenceHub.Status.Open || block.number > q.deadline) continue;
            for (uint256 i; i < q.assignees.length; ++i) {
                if (q.assignees[i] == a && q.submitted[i] == bytes32(0)) {
                    batch[n] = id;
                    ds[n] = bytes32(uint256(0xAA));
                    before[n] = q.status;
                    ++n;
                }
            }
        }
        if (n == 0) return;
        assembly {
            mstore(batch, n)
            mstore(ds, n)
        }
        vm.prank(a);
        hub.submitResults(batch, ds);
        for (uint256 k; k < n; ++k) {
            _track(batch[k], before[k]);
        }
    }

    function expire(uint256 idSeed, uint256 caller) external {
        ++calls;
        if (ids.length == 0) return;
        uint256 id = ids[idSeed % ids.length];
        InferenceHub.RequestView memory q = hub.getRequest(id);
        vm.prank(_actor(caller));
        hub.expire(id);
        InferenceHub.RequestView memory after_ = hub.getRequest(id);
        if (after_.reassigned && !q.reassigned) {
            for (uint256 i; i < after_.assignees.length; ++i) {
                for (uint256 j; j < q.assignees.length; ++j) {
                    if (after_.assignees[i] == q.assignees[j]) reassignedToOld = true;
                }
            }
        }
        _track(id, q.status);
    }

    function withdraw(uint256 who) external {
        ++calls;
        vm.prank(_actor(who));
        hub.withdraw();
    }

    function roll(uint256 blocks) external {
        ++calls;
        vm.roll(block.number + bound(blocks, 1, 8));
    }
}

contract InferenceHubInvariantTest is Test {
    InferenceHub internal hub;
    Handler internal handler;

    function setUp() public {
        hub = new InferenceHub();
        bytes32 a = hub.registerModel("r1", 1 ether, 0.01 ether, 5, 1);
        bytes32 b = hub.registerModel("r3", 1 ether, 0.01 ether, 5, 3);
        handler = new Handler(hub, a, b);
        targetContract(address(handler));
    }

    /// @dev ETH held == stakes + unpaid credits + escrowed fees of open requests.
    function invariant_ethAccounting() public view {
        uint256 total;
        uint256 n = handler.actorCount();
        for (uint256 i; i < n; ++i) {
            address a = handler.actors(i);
            total += hub.getMiner(a).stake + hub.creditsOf(a);
        }
        uint256 m = handler.idCount();
        for (uint256 i; i < m; ++i) {
            InferenceHub.RequestView memory q = hub.getRequest(handler.ids(i));
            if (q.status == InferenceHub.Status.Open) total += q.fee;
        }
        assertEq(address(hub).balance, total, "ETH held != stakes + credits + escrow");
    }

    /// @dev Every request is paid out (finalized or refunded) at most once.
    function invariant_paidAtMostOnce() public view {
        uint256 m = handler.idCount();
        for (uint256 i; i < m; ++i) {
            assertLe(handler.payouts(handler.ids(i)), 1, "request paid twice");
        }
    }

    /// @dev No address is assigned twice to one request; reassignment never picks an old assignee.
    function invariant_distinctAssignees() public view {
        uint256 m = handler.idCount();
        for (uint256 i; i < m; ++i) {
            address[] memory a = hub.getRequest(handler.ids(i)).assignees;
            for (uint256 x; x < a.length; ++x) {
                assertTrue(a[x] != address(0), "empty assignee");
                for (uint256 y = x + 1; y < a.length; ++y) {
                    assertTrue(a[x] != a[y], "assignee twice");
                }
            }
        }
        assertTrue(!handler.reassignedToOld(), "reassigned to a previous assignee");
    }
}
