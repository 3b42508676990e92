// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubBase, Rejecter} from "./utils/HubBase.sol";
import {HubStorage} from "../src/HubStorage.sol";
import {HubDisputes} from "../src/HubDisputes.sol";

/// @dev Models, miners, stake, exit and withdrawals; reentrancy through the payout paths.
contract RegistryTest is HubBase {
    function _model(string memory name, uint256 base, uint256 perToken, uint8 r, uint16 bps) internal returns (bytes32) {
        return hub.registerModel(name, CLASS, MIN_STAKE, base, perToken, TIMEOUT, r, bps);
    }

    function test_registerModel_storesAndEmits() public {
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.ModelRegistered(keccak256("x"), "x", CLASS, MIN_STAKE, 7, 3, TIMEOUT, 2, 0);
        bytes32 id = _model("x", 7, 3, 2, 0);
        assertEq(id, keccak256("x"));
        HubStorage.ModelView memory v = hub.getModel(id);
        assertEq(v.engineClass, CLASS);
        assertEq(v.minStake, MIN_STAKE);
        assertEq(v.baseFee, 7);
        assertEq(v.perTokenFee, 3);
        assertEq(v.redundancy, 2);
        assertEq(v.activeMinerCount, 0);
        assertEq(hub.price(id, 10), 37);
        assertEq(hub.modelIds().length, 3);
    }

    function test_registerModel_onlyOwner() public {
        vm.prank(alice);
        vm.expectRevert(HubStorage.NotOwner.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 3, 0);
    }

    function test_registerModel_minFeeZeroRefused() public {
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 0, 1, TIMEOUT, 3, 0);
    }

    function test_registerModel_engineClassZeroRefused() public {
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", bytes32(0), MIN_STAKE, 1, 0, TIMEOUT, 3, 0);
    }

    function test_registerModel_r1RequiresAudits() public {
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 1, 0);
        // r > 1 needs none
        _model("y", 1, 0, 2, 0);
    }

    function test_registerModel_otherBoundsRefused() public {
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 3, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, 0, 1, 0, TIMEOUT, 3, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, 0, 3, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, 201, 3, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 0, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 8, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 1, 10_001);
        vm.expectRevert(HubStorage.ModelExists.selector);
        hub.registerModel("m3", CLASS, MIN_STAKE, 1, 0, TIMEOUT, 3, 0);
    }

    /// @dev Fees are packed as uint80 (1.2M ETH) next to the model's other hot fields.
    function test_registerModel_feeBounds() public {
        uint256 max = type(uint80).max;
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, max + 1, 0, TIMEOUT, 3, 0);
        vm.expectRevert(HubStorage.InvalidModel.selector);
        hub.registerModel("x", CLASS, MIN_STAKE, 1, max + 1, TIMEOUT, 3, 0);
        bytes32 id = hub.registerModel("x", CLASS, MIN_STAKE, max, max, 200, 3, 10_000);
        HubStorage.ModelView memory v = hub.getModel(id);
        assertEq(v.baseFee, max);
        assertEq(v.perTokenFee, max);
        assertEq(uint256(v.timeoutBlocks), 200);
        assertEq(uint256(v.redundancy), 3);
        assertEq(uint256(v.auditBps), 10_000);
        assertEq(v.minStake, MIN_STAKE);
        assertEq(hub.price(id, 65_536), max + max * 65_536);
        bytes32[] memory ids = hub.modelIds();
        assertEq(ids.length, 3);
        assertEq(ids[2], id);
    }

    /// @dev The active pool (swap-and-pop, each entry with its activation block) and its count.
    function test_activePool_swapAndPop() public {
        address a = miners[0];
        address b = miners[1];
        address c = miners[2];
        _register(a, m1);
        _register(b, m1);
        _register(c, m1);
        assertEq(hub.getModel(m1).activeMinerCount, 3);
        vm.prank(a);
        hub.requestExit(); // c moves into a's place
        uint256 cSince = hub.getMiner(c).activeSince;
        HubStorage.PoolEntry[] memory pool = hub.activeMiners(m1);
        assertEq(pool.length, 2);
        assertEq(pool[0].miner, c);
        assertEq(pool[0].since, cSince); // the moved entry keeps its activation block
        assertEq(pool[1].miner, b);
        vm.prank(b);
        hub.requestExit(); // the last entry leaves
        pool = hub.activeMiners(m1);
        assertEq(pool.length, 1);
        assertEq(pool[0].miner, c);
        assertEq(hub.getModel(m1).activeMinerCount, 1);
        assertTrue(hub.getMiner(c).active);
        // the moved miner still leaves cleanly
        vm.prank(c);
        hub.requestExit();
        assertEq(hub.activeMiners(m1).length, 0);
        assertEq(hub.getModel(m1).activeMinerCount, 0);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.NotEnoughMiners.selector, 1, 0));
        hub.requestInference{value: _fee()}(m1, IN, MAX_TOKENS);
    }

    /// @dev auditBps * minStake >= 2 * (10000 - auditBps) * maxPrice, maxPrice = base + perToken * 65536.
    function test_registerModel_auditInequality() public {
        uint16 bps = 1_000; // 9000 * 2 / 1000 = 18: minStake must cover 18 max prices
        uint256 perToken = 1 gwei;
        uint256 base = MIN_STAKE / 18 - perToken * 65_536; // equality: accepted
        hub.registerModel("edge", CLASS, MIN_STAKE, base, perToken, TIMEOUT, 1, bps);
        uint256 maxPrice = base + 1 + perToken * 65_536;
        vm.expectRevert(abi.encodeWithSelector(HubStorage.Underpriced.selector, maxPrice, MIN_STAKE));
        hub.registerModel("over", CLASS, MIN_STAKE, base + 1, perToken, TIMEOUT, 1, bps);
        // the same price with a tenfold stake passes
        hub.registerModel("over", CLASS, 10 * MIN_STAKE, base + 1, perToken, TIMEOUT, 1, bps);
    }

    function test_registerMiner_engineClassMismatch() public {
        bytes32 other = keccak256("inferd-ec1;other");
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.EngineClassMismatch.selector, CLASS, other));
        hub.registerMiner{value: MIN_STAKE}(m1, other);
    }

    function test_registerMiner_guards() public {
        vm.prank(miners[0]);
        vm.expectRevert(HubStorage.UnknownModel.selector);
        hub.registerMiner{value: MIN_STAKE}(keccak256("nope"), CLASS);
        vm.prank(miners[0]);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.InsufficientStake.selector, MIN_STAKE, MIN_STAKE - 1));
        hub.registerMiner{value: MIN_STAKE - 1}(m1, CLASS);
        _register(miners[0], m1);
        vm.prank(miners[0]);
        vm.expectRevert(HubStorage.AlreadyRegistered.selector);
        hub.registerMiner{value: MIN_STAKE}(m3, CLASS);
    }

    function test_registerMiner_activates() public {
        vm.expectEmit(true, true, false, true, address(hub));
        emit HubStorage.MinerRegistered(miners[0], m1, 2 ether);
        vm.expectEmit(true, true, false, false, address(hub));
        emit HubStorage.MinerActivated(miners[0], m1);
        vm.prank(miners[0]);
        hub.registerMiner{value: 2 ether}(m1, CLASS);
        HubStorage.MinerView memory v = hub.getMiner(miners[0]);
        assertEq(v.modelId, m1);
        assertEq(v.stake, 2 ether);
        assertTrue(v.active);
        assertEq(uint256(v.activeSince), block.number);
        assertEq(hub.getModel(m1).activeMinerCount, 1);
        assertEq(address(hub).balance, 2 ether);
    }

    function test_addStake_guardsAndReactivation() public {
        vm.prank(miners[0]);
        vm.expectRevert(HubStorage.NotRegistered.selector);
        hub.addStake{value: 1}();
        _registerN(m1, 3);
        vm.prank(miners[0]);
        vm.expectRevert(HubStorage.ZeroValue.selector);
        hub.addStake{value: 0}();

        // silent assignee: slashed below minStake, so deactivated; a top-up re-activates it
        uint256 id = _request(m1);
        address a = _seats(id)[0];
        _roll(TIMEOUT + 1);
        hub.timeout(id);
        assertEq(_stake(a), MIN_STAKE - SLASH);
        assertTrue(!hub.getMiner(a).active);
        vm.prank(a);
        hub.addStake{value: SLASH - 1}();
        assertTrue(!hub.getMiner(a).active);
        vm.expectEmit(true, true, false, false, address(hub));
        emit HubStorage.MinerActivated(a, m1);
        vm.prank(a);
        hub.addStake{value: 1}();
        HubStorage.MinerView memory v = hub.getMiner(a);
        assertTrue(v.active);
        assertEq(v.stake, MIN_STAKE);
        assertEq(uint256(v.activeSince), block.number);
    }

    function test_exit_cooldown_withdrawStake() public {
        _register(miners[0], m1);
        address m = miners[0];
        vm.prank(m);
        vm.expectRevert(HubStorage.ExitNotRequested.selector);
        hub.withdrawStake();
        uint64 unlock = uint64(block.number) + 12 * TIMEOUT;
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.ExitRequested(m, unlock);
        vm.prank(m);
        hub.requestExit();
        assertTrue(!hub.getMiner(m).active);
        assertEq(hub.getModel(m1).activeMinerCount, 0);
        vm.prank(m);
        vm.expectRevert(HubStorage.ExitPending.selector);
        hub.requestExit();
        vm.prank(m);
        vm.expectRevert(HubStorage.ExitPending.selector);
        hub.addStake{value: 1}();
        vm.roll(unlock - 1);
        vm.prank(m);
        vm.expectRevert(abi.encodeWithSelector(HubStorage.CooldownActive.selector, unlock));
        hub.withdrawStake();
        vm.roll(unlock);
        uint256 before = m.balance;
        vm.prank(m);
        hub.withdrawStake();
        assertEq(m.balance, before + MIN_STAKE);
        assertEq(hub.getMiner(m).modelId, bytes32(0));
        assertEq(address(hub).balance, 0);
        // registered again, for another model
        _register(m, m3);
        assertEq(hub.getMiner(m).modelId, m3);
    }

    function test_withdraw_paysCredits() public {
        vm.prank(alice);
        vm.expectRevert(HubStorage.NothingToWithdraw.selector);
        hub.withdraw();
        _registerN(m3, 3);
        uint256 id = _request(m3);
        address[] memory s = _seats(id);
        for (uint256 i; i < 3; ++i) _commit(s[i], id, OUT);
        for (uint256 i; i < 3; ++i) _reveal(s[i], id, OUT);
        uint256 c = hub.creditsOf(s[0]);
        assertTrue(c > 0);
        uint256 before = s[0].balance;
        vm.expectEmit(true, false, false, true, address(hub));
        emit HubStorage.Withdrawn(s[0], c);
        vm.prank(s[0]);
        hub.withdraw();
        assertEq(s[0].balance, before + c);
        assertEq(hub.creditsOf(s[0]), 0);
    }

    /// @dev A requester contract that refuses ETH, or re-enters `withdraw` when paid: the payout fails
    ///      as a whole and the credit stays.
    function test_withdraw_rejecterAndReentrancy() public {
        _registerN(m1, 1);
        Rejecter r = new Rejecter(hub);
        vm.deal(address(r), 1 ether);
        uint256 id = r.request{value: _fee()}(m1, IN, MAX_TOKENS);
        _roll(300); // the seed block's hash is gone: refunded
        hub.assign(1);
        assertEq(_phase(id), uint8(HubStorage.Phase.Refunded));
        assertEq(hub.creditsOf(address(r)), _fee());

        vm.expectRevert(HubStorage.TransferFailed.selector);
        r.withdraw();
        r.setReenter(true);
        vm.expectRevert(HubStorage.TransferFailed.selector);
        r.withdraw();
        assertEq(hub.creditsOf(address(r)), _fee());
        assertEq(address(hub).balance, MIN_STAKE + _fee());
    }

    function test_withdrawStake_reentrancy() public {
        Rejecter r = new Rejecter(hub);
        vm.deal(address(r), 2 ether);
        r.register{value: MIN_STAKE}(m1, CLASS);
        r.exit();
        _roll(12 * TIMEOUT);
        r.setReenter(true);
        vm.expectRevert(HubStorage.TransferFailed.selector);
        r.withdrawStake();
        assertEq(_stake(address(r)), MIN_STAKE);
    }

    /// @dev The hub's fallback takes the lock: a receiver cannot re-enter the dispute module either.
    function test_fallback_reentrancyLocked() public {
        ReenterCourt rc = new ReenterCourt(address(hub));
        vm.deal(address(rc), 1 ether);
        _registerN(m1, 1);
        uint256 id = rc.request{value: _fee()}(m1, IN, MAX_TOKENS);
        _roll(300);
        hub.assign(1);
        rc.withdraw(id);
        assertEq(rc.lastError(), HubStorage.Reentrancy.selector);
        assertEq(address(rc).balance, 1 ether + _fee());
    }

    /// @dev The module's views answer a STATICCALL (the fallback's lock write would be refused there).
    function test_moduleViews_staticcall() public view {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("inferd"),
                keccak256("2"),
                block.chainid,
                address(hub)
            )
        );
        assertEq(court.domainSeparator(), expected);
        assertEq(court.getEscalation(1).challenger, address(0));
    }

    function test_plainEthRefused() public {
        (bool ok,) = address(hub).call{value: 1}("");
        assertTrue(!ok, "plain ETH accepted");
        (ok,) = address(hub).call{value: 1}(abi.encodeWithSelector(HubDisputes.claimVote.selector, 1));
        assertTrue(!ok, "ETH to a non-payable module function accepted");
    }
}

/// @dev Re-enters the hub through its fallback (the dispute module) when paid, and records the error.
contract ReenterCourt {
    HubDisputes internal immutable court;
    address internal immutable hub;
    uint256 internal target;
    bytes4 public lastError;

    constructor(address h) {
        hub = h;
        court = HubDisputes(h);
    }

    function request(bytes32 modelId, bytes32 digest, uint32 maxTokens) external payable returns (uint256 id) {
        (bool ok, bytes memory ret) = hub.call{value: msg.value}(
            abi.encodeWithSignature("requestInference(bytes32,bytes32,uint32)", modelId, digest, maxTokens)
        );
        require(ok, "request failed");
        id = abi.decode(ret, (uint256));
    }

    function withdraw(uint256 id) external {
        target = id;
        (bool ok,) = hub.call(abi.encodeWithSignature("withdraw()"));
        require(ok, "withdraw failed");
    }

    receive() external payable {
        try court.claimVote(target) {} catch (bytes memory err) {
            lastError = bytes4(err);
        }
    }
}
