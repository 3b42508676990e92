// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title InferenceHub
/// @notice On-chain coordination for inferd: model registry, miner stake, fee escrow, pseudo-random
///         assignment, result quorum, timeouts and slashing. Native ETH only; pull payments.
///
/// Economics (all amounts in wei):
///  - A request escrows its fee (msg.value). On quorum the fee is split equally among the `quorum`
///    miners whose digest matched; the division remainder goes to the miner whose result completed
///    the quorum. Each share is credited (pull payment, `withdraw()`).
///  - Slash amount = `minStake * SLASH_BPS / 10_000` of the request's model (10%), capped at the
///    miner's remaining stake. Slashed ETH is credited to the request's requester as compensation.
///    Dissenters (a different digest submitted before quorum) are slashed at finalization; silent
///    assignees are slashed by `expire`.
///  - A miner whose stake falls below `minStake` leaves the active set (no new assignments) until it
///    tops up with `addStake`.
///  - Exit: `requestExit` leaves the active set at once; `withdrawStake` is possible from block
///    `exitBlock + 2 * timeoutBlocks`, which leaves at least one timeout window after the last
///    possible deadline for anyone to `expire` (and slash) a request the miner left unanswered.
///  - Invariant: address(this).balance == sum(stakes) + sum(credits) + sum(fees of open requests).
///
/// A request is assigned once and reassigned at most once: `expire` after the deadline without
/// quorum slashes the silent assignees and hands the request to `redundancy` other active miners
/// with a fresh deadline, or refunds the fee when it was already reassigned or too few other miners
/// are active. Submissions after finalization revert (`AlreadyFinalized`): a late assignee earns
/// nothing and is not slashed.
contract InferenceHub {
    // ----------------------------------------------------------------------------------------------
    // Constants
    // ----------------------------------------------------------------------------------------------

    /// @notice Largest `redundancy` a model may have (assignees are stored in fixed slots).
    uint8 public constant MAX_REDUNDANCY = 7;
    /// @notice Slash per offence, in basis points of the model's `minStake`.
    uint256 public constant SLASH_BPS = 1_000;

    uint8 private constant FLAG_REASSIGNED = 1;
    uint8 private constant FLAG_REFUNDED = 2;

    // ----------------------------------------------------------------------------------------------
    // Types
    // ----------------------------------------------------------------------------------------------

    enum Status {
        None,
        Open,
        Finalized,
        Refunded
    }

    /// @dev One slot: everything `requestInference` reads.
    struct Model {
        uint96 minFee;
        uint96 minStake;
        uint32 timeoutBlocks;
        uint8 redundancy;
        uint24 index; // 1-based position in `_modelIds`; 0 = unknown model
    }

    struct Miner {
        // slot A (touched by submit: credits)
        uint96 stake;
        uint128 credits;
        uint24 modelIndex; // 0 = not registered
        // slot B
        uint32 activePos; // 1-based position in `_active[modelId]`; 0 = not active
        uint64 exitUnlockBlock; // 0 = no exit requested
    }

    struct Request {
        // slot 0
        address requester;
        uint48 deadline;
        uint8 redundancy;
        uint8 flags;
        uint24 modelIndex;
        // slot 1
        address assignee0;
        uint96 fee;
        // slot 2, 3
        bytes32 inputDigest;
        bytes32 outputDigest; // non-zero <=> finalized
        // assignees 1.. and per-assignee submitted digests (only used when redundancy > 1)
        address[6] moreAssignees; // MAX_REDUNDANCY - 1
        bytes32[7] digests; // MAX_REDUNDANCY
    }

    struct ModelView {
        bytes32 modelId;
        string name;
        uint256 minStake;
        uint256 minFee;
        uint32 timeoutBlocks;
        uint8 redundancy;
        uint256 activeMinerCount;
    }

    struct MinerView {
        bytes32 modelId; // 0 when not registered
        uint256 stake;
        uint256 credits; // everything withdraw() would pay now
        bool active;
        uint64 exitUnlockBlock;
    }

    struct RequestView {
        uint256 id;
        Status status;
        address requester;
        bytes32 modelId;
        bytes32 inputDigest;
        bytes32 outputDigest;
        uint256 fee;
        uint64 deadline;
        uint8 redundancy;
        bool reassigned;
        address[] assignees;
        bytes32[] submitted; // per assignee; 0 = not submitted (redundancy 1: the final digest)
    }

    // ----------------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------------

    event ModelRegistered(
        bytes32 indexed modelId, string name, uint256 minStake, uint256 minFee, uint32 timeoutBlocks, uint8 redundancy
    );
    event MinerRegistered(address indexed miner, bytes32 indexed modelId, uint256 stake);
    event StakeAdded(address indexed miner, uint256 amount, uint256 stake);
    event MinerActivated(address indexed miner, bytes32 indexed modelId);
    event MinerDeactivated(address indexed miner, bytes32 indexed modelId);
    event ExitRequested(address indexed miner, uint64 unlockBlock);
    event StakeWithdrawn(address indexed miner, uint256 amount);
    event InferenceRequested(
        uint256 indexed id,
        address indexed requester,
        bytes32 indexed modelId,
        bytes32 inputDigest,
        uint256 fee,
        uint64 deadline,
        address[] assignees
    );
    event ResultSubmitted(uint256 indexed id, address indexed miner, bytes32 outputDigest);
    event InferenceFinalized(uint256 indexed id, bytes32 outputDigest);
    /// @notice The deadline passed without quorum. `reassigned`: a new assignment with `deadline` and
    ///         `assignees` (miners follow this like InferenceRequested); otherwise the fee was refunded
    ///         (`deadline` 0, no assignees).
    event InferenceExpired(
        uint256 indexed id, bool reassigned, bytes32 inputDigest, uint64 deadline, address[] assignees
    );
    event Slashed(uint256 indexed id, address indexed miner, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    // ----------------------------------------------------------------------------------------------
    // Errors
    // ----------------------------------------------------------------------------------------------

    error NotOwner();
    error Reentrancy();
    error InvalidModel();
    error ModelExists();
    error UnknownModel();
    error AlreadyRegistered();
    error NotRegistered();
    error InsufficientStake(uint256 required, uint256 provided);
    error ZeroValue();
    error ValueTooLarge();
    error ExitPending();
    error ExitNotRequested();
    error CooldownActive(uint64 unlockBlock);
    error FeeTooLow(uint256 required, uint256 provided);
    error NotEnoughMiners(uint256 required, uint256 available);
    error ZeroDigest();
    error UnknownRequest(uint256 id);
    error AlreadyFinalized(uint256 id);
    error RequestClosed(uint256 id);
    error DeadlinePassed(uint256 id);
    error NotAssignee(uint256 id);
    error AlreadySubmitted(uint256 id);
    error NotExpired(uint256 id, uint64 deadline);
    error LengthMismatch();
    error EmptyBatch();
    error NothingToWithdraw();
    error TransferFailed();

    // ----------------------------------------------------------------------------------------------
    // Storage
    // ----------------------------------------------------------------------------------------------

    address public immutable owner;

    bool private transient _locked;

    /// @dev Id of the next request; starts at 1 so that the first request pays no zero-to-nonzero
    ///      write for the counter.
    uint256 private _nextId = 1;

    mapping(bytes32 => Model) private _models;
    mapping(bytes32 => string) private _modelNames;
    bytes32[] private _modelIds;
    mapping(bytes32 => address[]) private _active;
    mapping(address => Miner) private _miners;
    mapping(uint256 => Request) private _requests;
    /// @dev Credits of accounts other than miner fees (refunds, slash compensation).
    mapping(address => uint256) private _credits;

    constructor() {
        owner = msg.sender;
    }

    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    // ----------------------------------------------------------------------------------------------
    // Models
    // ----------------------------------------------------------------------------------------------

    /// @notice Register a model (owner only). `modelId = keccak256(bytes(name))`.
    function registerModel(
        string calldata name,
        uint256 minStake,
        uint256 minFee,
        uint32 timeoutBlocks,
        uint8 redundancy
    ) external returns (bytes32 modelId) {
        if (msg.sender != owner) revert NotOwner();
        if (
            bytes(name).length == 0 || minStake == 0 || minStake > type(uint96).max || minFee > type(uint96).max
                || timeoutBlocks == 0 || redundancy == 0 || redundancy > MAX_REDUNDANCY
        ) revert InvalidModel();
        modelId = keccak256(bytes(name));
        if (_models[modelId].index != 0) revert ModelExists();
        if (_modelIds.length >= type(uint24).max) revert InvalidModel();
        _modelIds.push(modelId);
        _models[modelId] = Model({
            minFee: uint96(minFee),
            minStake: uint96(minStake),
            timeoutBlocks: timeoutBlocks,
            redundancy: redundancy,
            index: uint24(_modelIds.length)
        });
        _modelNames[modelId] = name;
        emit ModelRegistered(modelId, name, minStake, minFee, timeoutBlocks, redundancy);
    }

    // ----------------------------------------------------------------------------------------------
    // Miners
    // ----------------------------------------------------------------------------------------------

    /// @notice Register msg.sender as a miner of `modelId` with msg.value as stake (>= minStake).
    function registerMiner(bytes32 modelId) external payable nonReentrant {
        Model memory model = _models[modelId];
        if (model.index == 0) revert UnknownModel();
        Miner storage m = _miners[msg.sender];
        if (m.modelIndex != 0) revert AlreadyRegistered();
        if (msg.value < model.minStake) revert InsufficientStake(model.minStake, msg.value);
        if (msg.value > type(uint96).max) revert ValueTooLarge();
        m.stake = uint96(msg.value);
        m.modelIndex = model.index;
        emit MinerRegistered(msg.sender, modelId, msg.value);
        _activate(msg.sender, m, modelId);
    }

    /// @notice Add msg.value to the caller's stake; re-activates a miner that was slashed below
    ///         minStake once it is back above it.
    function addStake() external payable nonReentrant {
        Miner storage m = _miners[msg.sender];
        if (m.modelIndex == 0) revert NotRegistered();
        if (m.exitUnlockBlock != 0) revert ExitPending();
        if (msg.value == 0) revert ZeroValue();
        uint256 stake = uint256(m.stake) + msg.value;
        if (stake > type(uint96).max) revert ValueTooLarge();
        m.stake = uint96(stake);
        emit StakeAdded(msg.sender, msg.value, stake);
        bytes32 modelId = _modelIds[m.modelIndex - 1];
        if (m.activePos == 0 && stake >= _models[modelId].minStake) _activate(msg.sender, m, modelId);
    }

    /// @notice Leave the active set now; the stake unlocks `2 * timeoutBlocks` blocks later.
    function requestExit() external nonReentrant {
        Miner storage m = _miners[msg.sender];
        if (m.modelIndex == 0) revert NotRegistered();
        if (m.exitUnlockBlock != 0) revert ExitPending();
        bytes32 modelId = _modelIds[m.modelIndex - 1];
        if (m.activePos != 0) _deactivate(msg.sender, m, modelId);
        uint64 unlock = uint64(block.number) + 2 * uint64(_models[modelId].timeoutBlocks);
        m.exitUnlockBlock = unlock;
        emit ExitRequested(msg.sender, unlock);
    }

    /// @notice After the exit cooldown: send the whole stake to the caller and unregister it
    ///         (credits stay withdrawable; the address may register again).
    function withdrawStake() external nonReentrant {
        Miner storage m = _miners[msg.sender];
        if (m.modelIndex == 0) revert NotRegistered();
        uint64 unlock = m.exitUnlockBlock;
        if (unlock == 0) revert ExitNotRequested();
        if (block.number < unlock) revert CooldownActive(unlock);
        uint256 amount = m.stake;
        m.stake = 0;
        m.modelIndex = 0;
        m.exitUnlockBlock = 0;
        emit StakeWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------------
    // Requests
    // ----------------------------------------------------------------------------------------------

    /// @notice Request an inference: msg.value is the fee (>= minFee); `redundancy` distinct active
    ///         miners of the model are assigned pseudo-randomly from (block.prevrandao, id).
    function requestInference(bytes32 modelId, bytes32 inputDigest) external payable nonReentrant returns (uint256 id) {
        Model memory model = _models[modelId];
        if (model.index == 0) revert UnknownModel();
        if (msg.value < model.minFee) revert FeeTooLow(model.minFee, msg.value);
        if (msg.value > type(uint96).max) revert ValueTooLarge();
        if (inputDigest == bytes32(0)) revert ZeroDigest();
        address[] storage pool = _active[modelId];
        uint256 n = pool.length;
        uint256 r = model.redundancy;
        if (n < r) revert NotEnoughMiners(r, n);

        id = _nextId++;
        address[] memory assignees = _pick(pool, n, r, _seed(id), new address[](0));
        uint48 deadline = uint48(block.number + model.timeoutBlocks);

        Request storage q = _requests[id];
        q.requester = msg.sender;
        q.deadline = deadline;
        q.redundancy = uint8(r);
        q.modelIndex = model.index;
        q.assignee0 = assignees[0];
        q.fee = uint96(msg.value);
        q.inputDigest = inputDigest;
        for (uint256 i = 1; i < r; ++i) {
            q.moreAssignees[i - 1] = assignees[i];
        }
        emit InferenceRequested(id, msg.sender, modelId, inputDigest, msg.value, deadline, assignees);
    }

    /// @notice Submit the output digest of request `id` (assignee only, before the deadline, once).
    function submitResult(uint256 id, bytes32 outputDigest) external nonReentrant {
        _submit(id, outputDigest);
    }

    /// @notice Submit many results in one transaction; atomic (any invalid item reverts all).
    function submitResults(uint256[] calldata ids, bytes32[] calldata outputDigests) external nonReentrant {
        uint256 len = ids.length;
        if (len != outputDigests.length) revert LengthMismatch();
        if (len == 0) revert EmptyBatch();
        for (uint256 i; i < len; ++i) {
            _submit(ids[i], outputDigests[i]);
        }
    }

    /// @notice After the deadline without quorum (anyone may call): slash the silent assignees, then
    ///         reassign once to other active miners, or refund the fee to the requester.
    function expire(uint256 id) external nonReentrant {
        Request storage q = _requests[id];
        uint256 r = q.redundancy;
        if (r == 0) revert UnknownRequest(id);
        if (q.outputDigest != bytes32(0)) revert AlreadyFinalized(id);
        uint8 flags = q.flags;
        if (flags & FLAG_REFUNDED != 0) revert RequestClosed(id);
        if (block.number <= q.deadline) revert NotExpired(id, q.deadline);

        bytes32 modelId = _modelIds[q.modelIndex - 1];
        Model memory model = _models[modelId];
        address[] memory old = _assignees(q, r);
        uint256 compensation;
        for (uint256 i; i < r; ++i) {
            if (r == 1 || q.digests[i] == bytes32(0)) {
                compensation += _slash(id, old[i], model, modelId);
            }
        }
        if (compensation != 0) _credits[q.requester] += compensation;

        if (flags & FLAG_REASSIGNED == 0 && _reassign(id, q, model, modelId, old)) return;
        q.flags = flags | FLAG_REFUNDED;
        _credits[q.requester] += q.fee;
        emit InferenceExpired(id, false, q.inputDigest, 0, new address[](0));
    }

    /// @dev Hand request `id` to `redundancy` active miners not in `old`; false when too few exist.
    function _reassign(uint256 id, Request storage q, Model memory model, bytes32 modelId, address[] memory old)
        private
        returns (bool)
    {
        uint256 r = old.length;
        address[] storage pool = _active[modelId];
        uint256 n = pool.length;
        uint256 excludedActive;
        for (uint256 i; i < r; ++i) {
            Miner storage m = _miners[old[i]];
            if (m.activePos != 0 && m.modelIndex == model.index) ++excludedActive;
        }
        if (n - excludedActive < r) return false;
        address[] memory fresh = _pick(pool, n, r, _seed(id), old);
        uint48 deadline = uint48(block.number + model.timeoutBlocks);
        q.deadline = deadline;
        q.flags |= FLAG_REASSIGNED;
        q.assignee0 = fresh[0];
        for (uint256 i = 1; i < r; ++i) {
            q.moreAssignees[i - 1] = fresh[i];
            if (q.digests[i] != bytes32(0)) q.digests[i] = bytes32(0);
        }
        if (q.digests[0] != bytes32(0)) q.digests[0] = bytes32(0);
        emit InferenceExpired(id, true, q.inputDigest, deadline, fresh);
        return true;
    }

    /// @notice Pay out everything credited to the caller (fees, refunds, slash compensation).
    function withdraw() external nonReentrant {
        Miner storage m = _miners[msg.sender];
        uint256 amount = _credits[msg.sender] + m.credits;
        if (amount == 0) revert NothingToWithdraw();
        _credits[msg.sender] = 0;
        if (m.credits != 0) m.credits = 0;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------

    function getModel(bytes32 modelId) external view returns (ModelView memory v) {
        Model memory model = _models[modelId];
        if (model.index == 0) revert UnknownModel();
        v = ModelView({
            modelId: modelId,
            name: _modelNames[modelId],
            minStake: model.minStake,
            minFee: model.minFee,
            timeoutBlocks: model.timeoutBlocks,
            redundancy: model.redundancy,
            activeMinerCount: _active[modelId].length
        });
    }

    /// @notice Number of requests created so far (ids are 1..requestCount).
    function requestCount() external view returns (uint256) {
        return _nextId - 1;
    }

    function modelIds() external view returns (bytes32[] memory) {
        return _modelIds;
    }

    function activeMiners(bytes32 modelId) external view returns (address[] memory) {
        return _active[modelId];
    }

    function getMiner(address miner) external view returns (MinerView memory v) {
        Miner memory m = _miners[miner];
        v = MinerView({
            modelId: m.modelIndex == 0 ? bytes32(0) : _modelIds[m.modelIndex - 1],
            stake: m.stake,
            credits: uint256(m.credits) + _credits[miner],
            active: m.activePos != 0,
            exitUnlockBlock: m.exitUnlockBlock
        });
    }

    /// @notice Everything `withdraw()` would pay `account` now.
    function creditsOf(address account) external view returns (uint256) {
        return uint256(_miners[account].credits) + _credits[account];
    }

    function getRequest(uint256 id) external view returns (RequestView memory v) {
        Request storage q = _requests[id];
        uint256 r = q.redundancy;
        if (r == 0) revert UnknownRequest(id);
        v.id = id;
        v.requester = q.requester;
        v.modelId = _modelIds[q.modelIndex - 1];
        v.inputDigest = q.inputDigest;
        v.outputDigest = q.outputDigest;
        v.fee = q.fee;
        v.deadline = q.deadline;
        v.redundancy = uint8(r);
        v.reassigned = q.flags & FLAG_REASSIGNED != 0;
        if (v.outputDigest != bytes32(0)) v.status = Status.Finalized;
        else if (q.flags & FLAG_REFUNDED != 0) v.status = Status.Refunded;
        else v.status = Status.Open;
        v.assignees = _assignees(q, r);
        v.submitted = new bytes32[](r);
        if (r == 1) {
            v.submitted[0] = v.outputDigest;
        } else {
            for (uint256 i; i < r; ++i) {
                v.submitted[i] = q.digests[i];
            }
        }
    }

    // ----------------------------------------------------------------------------------------------
    // Internals
    // ----------------------------------------------------------------------------------------------

    function _submit(uint256 id, bytes32 digest) private {
        if (digest == bytes32(0)) revert ZeroDigest();
        Request storage q = _requests[id];
        uint256 r = q.redundancy;
        if (r == 0) revert UnknownRequest(id);
        if (q.outputDigest != bytes32(0)) revert AlreadyFinalized(id);
        if (q.flags & FLAG_REFUNDED != 0) revert RequestClosed(id);
        if (block.number > q.deadline) revert DeadlinePassed(id);

        if (r == 1) {
            // Quorum of one: the first (only) valid submission finalizes.
            if (q.assignee0 != msg.sender) revert NotAssignee(id);
            q.outputDigest = digest;
            _miners[msg.sender].credits += q.fee;
            emit ResultSubmitted(id, msg.sender, digest);
            emit InferenceFinalized(id, digest);
            return;
        }

        address[] memory who = _assignees(q, r);
        uint256 me = r;
        for (uint256 i; i < r; ++i) {
            if (who[i] == msg.sender) {
                me = i;
                break;
            }
        }
        if (me == r) revert NotAssignee(id);
        if (q.digests[me] != bytes32(0)) revert AlreadySubmitted(id);
        q.digests[me] = digest;
        emit ResultSubmitted(id, msg.sender, digest);

        bytes32[] memory got = new bytes32[](r);
        uint256 matching;
        for (uint256 i; i < r; ++i) {
            bytes32 d = i == me ? digest : q.digests[i];
            got[i] = d;
            if (d == digest) ++matching;
        }
        if (matching < r / 2 + 1) return;

        q.outputDigest = digest;
        emit InferenceFinalized(id, digest);
        uint256 fee = q.fee;
        uint256 share = fee / matching;
        bytes32 modelId = _modelIds[q.modelIndex - 1];
        Model memory model;
        uint256 compensation;
        for (uint256 i; i < r; ++i) {
            if (got[i] == digest) {
                _miners[who[i]].credits += uint128(i == me ? share + fee % matching : share);
            } else if (got[i] != bytes32(0)) {
                if (model.index == 0) model = _models[modelId];
                compensation += _slash(id, who[i], model, modelId);
            }
        }
        if (compensation != 0) _credits[q.requester] += compensation;
    }

    function _slash(uint256 id, address miner, Model memory model, bytes32 modelId) private returns (uint256 taken) {
        Miner storage m = _miners[miner];
        uint256 stake = m.stake;
        uint256 amount = uint256(model.minStake) * SLASH_BPS / 10_000;
        taken = amount < stake ? amount : stake;
        if (taken == 0) return 0;
        stake -= taken;
        m.stake = uint96(stake);
        emit Slashed(id, miner, taken);
        if (m.activePos != 0 && m.modelIndex == model.index && stake < model.minStake) {
            _deactivate(miner, m, modelId);
        }
    }

    function _activate(address miner, Miner storage m, bytes32 modelId) private {
        address[] storage pool = _active[modelId];
        pool.push(miner);
        m.activePos = uint32(pool.length);
        emit MinerActivated(miner, modelId);
    }

    function _deactivate(address miner, Miner storage m, bytes32 modelId) private {
        address[] storage pool = _active[modelId];
        uint256 pos = m.activePos; // 1-based
        uint256 last = pool.length;
        if (pos != last) {
            address moved = pool[last - 1];
            pool[pos - 1] = moved;
            _miners[moved].activePos = uint32(pos);
        }
        pool.pop();
        m.activePos = 0;
        emit MinerDeactivated(miner, modelId);
    }

    function _seed(uint256 id) private view returns (uint256) {
        return uint256(keccak256(abi.encode(block.prevrandao, id, block.number)));
    }

    /// @dev Choose `r` distinct members of `pool` (length n) that are not in `exclude`, by a partial
    ///      Fisher-Yates shuffle over virtual positions (swaps kept in memory, storage untouched).
    ///      Caller guarantees at least `r` eligible members.
    function _pick(address[] storage pool, uint256 n, uint256 r, uint256 seed, address[] memory exclude)
        private
        view
        returns (address[] memory chosen)
    {
        chosen = new address[](r);
        if (r == 1 && exclude.length == 0) {
            chosen[0] = pool[seed % n];
            return chosen;
        }
        uint256 steps = r + exclude.length;
        uint256[] memory swapPos = new uint256[](steps);
        uint256[] memory swapVal = new uint256[](steps);
        uint256 swaps;
        uint256 count;
        for (uint256 j; j < n && count < r; ++j) {
            uint256 k = j + uint256(keccak256(abi.encode(seed, j))) % (n - j);
            uint256 vk;
            (vk, swaps) = _swap(swapPos, swapVal, swaps, j, k);
            address a = pool[vk];
            if (!_contains(exclude, a)) chosen[count++] = a;
        }
    }

    /// @dev One Fisher-Yates step on the virtual array: returns the value at `k` and stores the
    ///      value at `j` into position `k` (positions < j are never read again).
    function _swap(uint256[] memory swapPos, uint256[] memory swapVal, uint256 swaps, uint256 j, uint256 k)
        private
        pure
        returns (uint256 vk, uint256)
    {
        vk = k;
        uint256 vj = j;
        uint256 slotK = swaps;
        for (uint256 s; s < swaps; ++s) {
            uint256 p = swapPos[s];
            if (p == k) {
                vk = swapVal[s];
                slotK = s;
            }
            if (p == j) vj = swapVal[s];
        }
        if (k != j) {
            swapPos[slotK] = k;
            swapVal[slotK] = vj;
            if (slotK == swaps) ++swaps;
        }
        return (vk, swaps);
    }

    function _contains(address[] memory list, address a) private pure returns (bool) {
        for (uint256 i; i < list.length; ++i) {
            if (list[i] == a) return true;
        }
        return false;
    }

    function _assignees(Request storage q, uint256 r) private view returns (address[] memory a) {
        a = new address[](r);
        a[0] = q.assignee0;
        for (uint256 i = 1; i < r; ++i) {
            a[i] = q.moreAssignees[i - 1];
        }
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
