// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {InferenceHub} from "../../src/InferenceHub.sol";

/// @title GrindHelper (bench only: tests/bench/adversary.py, attack `grind_assignment`)
/// @notice A requester that wants its own sybils to serve its requests: it requests, tries to force
///         the assignment in the same transaction, looks at the seats, and (when `strict`) reverts
///         unless one of its sybils holds a seat. Protocol v2 draws seats from the hash of the
///         request's own block, which does not exist yet inside the request's transaction, so the
///         helper always sees zero seats: strict tries always revert, and non-strict requests are
///         drawn like anyone else's.
contract GrindHelper {
    event Seen(uint256 indexed id, uint256 seatsVisible, bool mine);

    error NotMine(uint256 id, uint256 seatsVisible);

    InferenceHub public immutable hub;
    address public immutable owner;

    constructor(InferenceHub hub_) {
        hub = hub_;
        owner = msg.sender;
    }

    function tryRequest(bytes32 modelId, bytes32 inputDigest, uint32 maxTokens, address[] calldata sybils, bool strict)
        external
        payable
        returns (uint256 id)
    {
        id = hub.requestInference{value: msg.value}(modelId, inputDigest, maxTokens);
        hub.assign(64); // materialises only requests whose seed block is already mined
        InferenceHub.RequestView memory v = hub.getRequest(id);
        bool mine;
        for (uint256 i; i < v.seats.length; ++i) {
            for (uint256 j; j < sybils.length; ++j) {
                if (v.seats[i] == sybils[j]) mine = true;
            }
        }
        emit Seen(id, v.seats.length, mine);
        if (strict && !mine) revert NotMine(id, v.seats.length);
    }

    receive() external payable {}
}
