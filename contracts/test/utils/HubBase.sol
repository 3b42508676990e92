// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./Test.sol";
import {InferenceHub} from "../../src/InferenceHub.sol";
import {HubDisputes} from "../../src/HubDisputes.sol";

/// @dev Shared fixture: a hub with a redundancy-1 (audited) and a redundancy-3 model, funded actors,
///      and helpers that drive requests through assignment, commit and reveal.
abstract contract HubBase is Test {
    InferenceHub internal hub;
    /// @dev The same address seen through the dispute module's ABI (the hub delegates to it).
    HubDisputes internal court;

    uint256 internal constant MIN_STAKE = 1 ether;
    uint256 internal constant BASE_FEE = 0.001 ether;
    uint256 internal constant PER_TOKEN = 1 gwei;
    uint32 internal constant MAX_TOKENS = 256;
    uint32 internal constant TIMEOUT = 20;
    uint16 internal constant AUDIT_BPS = 500;
    uint256 internal constant SLASH = MIN_STAKE * 1_000 / 10_000;
    bytes32 internal constant CLASS = keccak256("inferd-ec1;test");

    bytes32 internal m1; // redundancy 1, audited
    bytes32 internal m3; // redundancy 3

    address internal alice = makeAddr("alice"); // requester
    address[] internal miners;

    bytes32 internal constant IN = keccak256("input");
    bytes32 internal constant OUT = keccak256("output");
    bytes32 internal constant BAD = keccak256("bad");

    function setUp() public virtual {
        hub = new InferenceHub();
        court = HubDisputes(address(hub));
        m1 = hub.registerModel("m1", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 1, AUDIT_BPS);
        m3 = hub.registerModel("m3", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 3, 0);
        vm.deal(alice, 1_000 ether);
        for (uint256 i; i < 10; ++i) {
            address a = makeAddr(string(abi.encodePacked("miner", bytes1(uint8(48 + i)))));
            vm.deal(a, 100 ether);
            miners.push(a);
        }
    }

    function _fee() internal pure returns (uint256) {
        return BASE_FEE + PER_TOKEN * MAX_TOKENS;
    }

    function _register(address miner, bytes32 modelId) internal {
        vm.prank(miner);
        hub.registerMiner{value: MIN_STAKE}(modelId, CLASS);
    }

    function _registerN(bytes32 modelId, uint256 n) internal {
        for (uint256 i; i < n; ++i) {
            _register(miners[i], modelId);
        }
        vm.roll(block.number + 1); // miners must be active before a request's seed block
    }

    /// @dev Request and materialise the assignment in the next block.
    function _request(bytes32 modelId) internal returns (uint256 id) {
        vm.prank(alice);
        id = hub.requestInference{value: _fee()}(modelId, IN, MAX_TOKENS);
        vm.roll(block.number + 1);
        hub.assign(64);
    }

    function _seats(uint256 id) internal view returns (address[] memory) {
        return hub.getRequest(id).seats;
    }

    function _commitment(bytes32 digest, address miner, uint256 id) internal pure returns (bytes32) {
        return keccak256(abi.encode(digest, miner, id));
    }

    function _commit(address miner, uint256 id, bytes32 digest) internal {
        vm.prank(miner);
        hub.commit(id, _commitment(digest, miner, id));
    }

    function _reveal(address miner, uint256 id, bytes32 digest) internal {
        vm.prank(miner);
        hub.reveal(id, digest);
    }

    function _stake(address miner) internal view returns (uint256) {
        return hub.getMiner(miner).stake;
    }

    function _isSeat(uint256 id, address who) internal view returns (bool) {
        address[] memory a = _seats(id);
        for (uint256 i; i < a.length; ++i) {
            if (a[i] == who) return true;
        }
        return false;
    }
}

/// @dev Refuses ETH, or re-enters the hub when paid.
contract Rejecter {
    InferenceHub internal immutable hub;
    bool public reenter;

    constructor(InferenceHub h) {
        hub = h;
    }

    function setReenter(bool r) external {
        reenter = r;
    }

    function register(bytes32 modelId, bytes32 engineClass) external payable {
        hub.registerMiner{value: msg.value}(modelId, engineClass);
    }

    function request(bytes32 modelId, bytes32 digest, uint32 maxTokens) external payable returns (uint256) {
        return hub.requestInference{value: msg.value}(modelId, digest, maxTokens);
    }

    function exit() external {
        hub.requestExit();
    }

    function withdrawStake() external {
        hub.withdrawStake();
    }

    function withdraw() external {
        hub.withdraw();
    }

    receive() external payable {
        if (!reenter) revert("no thanks");
        hub.withdraw();
    }
}
