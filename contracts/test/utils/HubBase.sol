// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test} from "./Test.sol";
import {InferenceHub} from "../../src/InferenceHub.sol";

/// @dev Shared fixture: a hub with a redundancy-1 and a redundancy-3 model and funded actors.
abstract contract HubBase is Test {
    InferenceHub internal hub;

    uint256 internal constant MIN_STAKE = 1 ether;
    uint256 internal constant MIN_FEE = 0.01 ether;
    uint32 internal constant TIMEOUT = 20;
    uint256 internal constant SLASH = MIN_STAKE * 1_000 / 10_000;

    bytes32 internal m1; // redundancy 1
    bytes32 internal m3; // redundancy 3

    address internal alice = makeAddr("alice"); // requester
    address[] internal miners;

    bytes32 internal constant IN = keccak256("input");
    bytes32 internal constant OUT = keccak256("output");
    bytes32 internal constant BAD = keccak256("bad");

    function setUp() public virtual {
        hub = new InferenceHub();
        m1 = hub.registerModel("m1", MIN_STAKE, MIN_FEE, TIMEOUT, 1);
        m3 = hub.registerModel("m3", MIN_STAKE, MIN_FEE, TIMEOUT, 3);
        vm.deal(alice, 1_000 ether);
        for (uint256 i; i < 10; ++i) {
            address a = makeAddr(string(abi.encodePacked("miner", bytes1(uint8(48 + i)))));
            vm.deal(a, 100 ether);
            miners.push(a);
        }
    }

    function _register(address miner, bytes32 modelId) internal {
        vm.prank(miner);
        hub.registerMiner{value: MIN_STAKE}(modelId);
    }

    function _registerN(bytes32 modelId, uint256 n) internal {
        for (uint256 i; i < n; ++i) {
            _register(miners[i], modelId);
        }
    }

    function _request(bytes32 modelId, uint256 fee) internal returns (uint256 id) {
        vm.prank(alice);
        id = hub.requestInference{value: fee}(modelId, IN);
    }

    function _assignees(uint256 id) internal view returns (address[] memory) {
        return hub.getRequest(id).assignees;
    }

    function _submit(address miner, uint256 id, bytes32 digest) internal {
        vm.prank(miner);
        hub.submitResult(id, digest);
    }

    function _stake(address miner) internal view returns (uint256) {
        return hub.getMiner(miner).stake;
    }

    function _isAssignee(uint256 id, address who) internal view returns (bool) {
        address[] memory a = _assignees(id);
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

    function register(bytes32 modelId) external payable {
        hub.registerMiner{value: msg.value}(modelId);
    }

    function request(bytes32 modelId, bytes32 digest) external payable returns (uint256) {
        return hub.requestInference{value: msg.value}(modelId, digest);
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
