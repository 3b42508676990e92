// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {Test, Vm} from "./Test.sol";
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
    /// @dev What the caller of a timeout gets from each silent seat's slash; `NET` is the rest.
    uint256 internal constant BOUNTY = SLASH * 1_000 / 10_000;
    uint256 internal constant NET = SLASH - BOUNTY;
    bytes32 internal constant CLASS = keccak256("inferd-ec1;test");

    bytes32 internal m1; // redundancy 1, audited
    bytes32 internal m3; // redundancy 3

    address internal alice = makeAddr("alice"); // requester
    address[] internal miners;
    mapping(address => uint256) internal keyOf; // miners' private keys (EIP-712 signatures)

    bytes32 internal constant IN = keccak256("input");
    bytes32 internal constant OUT = keccak256("output");
    bytes32 internal constant BAD = keccak256("bad");

    function setUp() public virtual {
        vm.roll(1_000); // reassignment cut-offs look back up to 2 * TIMEOUT blocks
        hub = new InferenceHub();
        court = HubDisputes(address(hub));
        m1 = hub.registerModel("m1", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 1, AUDIT_BPS);
        m3 = hub.registerModel("m3", CLASS, MIN_STAKE, BASE_FEE, PER_TOKEN, TIMEOUT, 3, 0);
        vm.deal(alice, 1_000 ether);
        for (uint256 i; i < 16; ++i) {
            string memory name = string(abi.encodePacked("miner", bytes1(uint8(48 + i))));
            address a = makeAddr(name);
            keyOf[a] = uint256(keccak256(bytes(name)));
            vm.deal(a, 100 ether);
            miners.push(a);
        }
    }

    /// @dev What a requester gets when its r = 1 assignee's fraud is proven: its fee back plus
    ///      fee * (1 - p) / p, one credit of fee / p (reason 8).
    function _comp() internal pure returns (uint256) {
        return _fee() * 10_000 / AUDIT_BPS;
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
        // Miners must be active before a request's seed block; reassignment looks back further.
        vm.roll(block.number + 2 * TIMEOUT);
    }

    /// @dev Register miners[from .. from + n) for `modelId`, then roll like `_registerN`.
    function _registerFrom(bytes32 modelId, uint256 from, uint256 n) internal {
        for (uint256 i = from; i < from + n; ++i) {
            _register(miners[i], modelId);
        }
        vm.roll(block.number + 2 * TIMEOUT);
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

    function _roll(uint256 n) internal {
        vm.roll(block.number + n);
    }

    function _phase(uint256 id) internal view returns (uint8) {
        return uint8(hub.getRequest(id).phase);
    }

    /// @dev Fix the audit draw of r = 1 request `id` committed in `commitBlock` (a past block) to
    ///      `drawn`, by choosing that block's hash (the draw is `keccak(blockhash, id, "audit")`).
    function _setDraw(uint256 id, uint256 commitBlock, bool drawn) internal {
        uint16 bps = hub.getModel(hub.getRequest(id).modelId).auditBps;
        for (uint256 i; i < 100_000; ++i) {
            bytes32 h = keccak256(abi.encode("blockhash", commitBlock, i));
            if ((uint256(keccak256(abi.encode(h, id, "audit"))) % 10_000 < bps) == drawn) {
                vm.setBlockhash(commitBlock, h);
                return;
            }
        }
        revert("no such block hash");
    }

    /// @dev The assignee of r = 1 request `id` commits `digest`; one block later, with the draw fixed.
    function _commitR1(uint256 id, bytes32 digest, bool drawn) internal returns (address a) {
        a = _seats(id)[0];
        _commit(a, id, digest);
        uint256 commitBlock = block.number;
        _roll(1);
        _setDraw(id, commitBlock, drawn);
    }

    /// @dev Sum of `Credited` amounts to `account` (any id) for `reason` (0 = every reason) in `logs`.
    function _credited(Vm.Log[] memory logs, address account, uint8 reason) internal view returns (uint256 sum) {
        bytes32 sig = keccak256("Credited(address,uint256,uint256,uint8)");
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory l = logs[i];
            if (l.emitter != address(hub) || l.topics[0] != sig || address(uint160(uint256(l.topics[1]))) != account) {
                continue;
            }
            (uint256 amount, uint8 r) = abi.decode(l.data, (uint256, uint8));
            if (reason == 0 || r == reason) sum += amount;
        }
    }

    /// @dev Sum of `Slashed` amounts of `miner` (address(0) = anyone) in `logs`.
    function _slashed(Vm.Log[] memory logs, address miner) internal view returns (uint256 sum) {
        bytes32 sig = keccak256("Slashed(uint256,address,uint256,uint8)");
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory l = logs[i];
            if (l.emitter != address(hub) || l.topics[0] != sig) continue;
            if (miner != address(0) && address(uint160(uint256(l.topics[2]))) != miner) continue;
            (uint256 amount,) = abi.decode(l.data, (uint256, uint8));
            sum += amount;
        }
    }

    /// @dev Sum of `Burned` amounts in `logs`.
    function _burnedIn(Vm.Log[] memory logs) internal view returns (uint256 sum) {
        bytes32 sig = keccak256("Burned(uint256,uint256)");
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(hub) && logs[i].topics[0] == sig) sum += abi.decode(logs[i].data, (uint256));
        }
    }

    /// @dev An EIP-712 InferenceResult signature by `miner` (raw r, s, v).
    function _signResult(address miner, uint256 id, bytes32 inputDigest, bytes32 outputDigest)
        internal
        view
        returns (bytes memory)
    {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("inferd"),
                keccak256("2"),
                block.chainid,
                address(hub)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("InferenceResult(uint256 requestId,bytes32 inputDigest,bytes32 outputDigest)"),
                id,
                inputDigest,
                outputDigest
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(keyOf[miner], keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
        return abi.encodePacked(r, s, v);
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
