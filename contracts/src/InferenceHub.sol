// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubStorage} from "./HubStorage.sol";
import {HubDisputes} from "./HubDisputes.sol";

/// @title InferenceHub (protocol v2)
/// @notice On-chain coordination for inferd: model registry with engine classes and prices, miner
///         stake, fee escrow, assignment from randomness nobody chooses, commit-reveal results,
///         sampled audits with a committee and an escalation vote, equivocation slashing.
///         Native ETH only; pull payments (`withdraw`).
///
/// Why it is shaped like this (protocol v2, see DESIGN "Protocol v2"):
///  - **Randomness.** A request is assigned from `blockhash(requestBlock)`, which nobody knows while
///    the request executes (a helper contract cannot revert unless its own sybils are drawn).
///    Assignment is materialised in a later block by `assign`, by the next requests (up to
///    `AUTO_ASSIGN` each), or by anyone; miners learn it from `InferenceAssigned`. Only miners active
///    before the seed block are eligible. Reassignment, auditor and committee seeds are fixed when
///    the request is assigned or committed, so calling `timeout` at a chosen moment changes nothing.
///  - **Commit-reveal.** Every seat commits `keccak256(abi.encode(outputDigest, miner, id))`, then
///    reveals; copying another seat's digest is impossible before reveals start, and a commitment is
///    bound to its miner. A committed seat that never reveals is silent.
///  - **Audits (r = 1).** After the assignee commits, `blockhash(commitBlock)` decides with probability
///    `auditBps / 10_000` whether an auditor re-executes (the assignee cannot reveal until the auditor
///    has committed, so the auditor cannot copy). Disagreement goes to a committee of three; the
///    losing side loses `minStake` (fraud slash). Cheating pays only if `p * S < (1 - p) * G`;
///    `registerModel` refuses prices where `p * minStake < AUDIT_MARGIN * (1 - p) * maxPrice`.
///  - **Batch roots (r = 1).** An assignee may commit many results as one root
///    `keccak256(abi.encodePacked(ids, leaves))`, each leaf its ordinary commitment (`commitBatch`):
///    one stored word per batch instead of one per result. Ids ascend strictly and the root is
///    stored under (miner, root, hash of the ids), so a root holds one leaf per request: a miner
///    cannot keep two leaves for an id and choose after seeing its audit draw. `revealBatch` opens
///    the root in a later block: entries final and paid (their digests only in the logs), except
///    those drawn for audit, whose leaf is withheld into the request (a single commitment again).
///    `BatchRevealed` carries every leaf so that `proveBatchEquivocation` can rebuild the root.
///  - **Escalation.** A seat outvoted in a committee or a quorum may escalate within `timeoutBlocks`
///    with a bond of `minStake`: every active miner of the model (eligible before the escalation)
///    may vote by commit-reveal, one miner one vote; the challenged digest stands unless the
///    challenger's digest gets more votes. Overturned majorities lose `minStake` each.
///  - **Money.** The fee is exactly `baseFee + perTokenFee * maxTokens` (declared by the requester).
///    Slashed stake never goes to the requester: it is burned (kept in this contract, counted in
///    `burned`, with no path out), minus rewards to whoever proved the fault (committee, voters,
///    escalator, equivocation prover). Every credit movement emits `Credited`.
///  - **Unavailable inputs.** A miner that cannot fetch an input reveals `UNAVAILABLE`; such a
///    result is never fraud, earns the base fee and refunds the rest to the requester.
///  - **Equivocation.** An EIP-712 `InferenceResult` signature by a seat over a digest other than
///    the one it committed or revealed slashes it (`proveEquivocation`): a signed result is a binding
///    promise.
///  - Invariant: balance == stakes + credits + open fees + audit pools + open bonds + burned.
contract InferenceHub is HubStorage {
    address public immutable owner;
    /// @notice The dispute module this hub delegates audits, committees, votes and proofs to.
    address public immutable disputes;

    constructor() {
        owner = msg.sender;
        disputes = address(new HubDisputes());
    }

    /// @notice Everything HubDisputes implements (openAudit, escalate, commitVote, revealVote,
    ///         claimVote, proveEquivocation, domainSeparator, getEscalation, ...), under the lock.
    ///         The module's views (domainSeparator, getEscalation) skip the lock: a lock write is
    ///         refused under STATICCALL, so taking it would make them unreadable to contracts.
    fallback() external payable {
        bool isView = msg.sig == HubDisputes.domainSeparator.selector || msg.sig == HubDisputes.getEscalation.selector;
        if (!isView) {
            if (_locked) revert Reentrancy();
            _locked = true;
        }
        bytes memory ret = _delegate(msg.data);
        if (!isView) _locked = false;
        assembly {
            return(add(ret, 32), mload(ret))
        }
    }

    function _delegate(bytes memory data) private returns (bytes memory ret) {
        bool ok;
        (ok, ret) = disputes.delegatecall(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
    }

    /// @notice Register a model (owner only). `modelId = keccak256(bytes(name))`. An engine upgrade is
    ///         a new model entry. For r = 1 the audit rate must make cheating lose money:
    ///         `auditBps * minStake >= AUDIT_MARGIN * (10_000 - auditBps) * maxPrice`.
    ///         msg.value seeds the model's audit pool (see `fundAuditPool`). Bounds: `baseFee` and
    ///         `perTokenFee` < 2^80 wei (1.2M ETH), `minStake` < 2^96, `timeoutBlocks` <= 200.
    function registerModel(
        string calldata name,
        bytes32 engineClass,
        uint256 minStake,
        uint256 baseFee,
        uint256 perTokenFee,
        uint32 timeoutBlocks,
        uint8 redundancy,
        uint16 auditBps
    ) external payable returns (bytes32 modelId) {
        if (msg.sender != owner) revert NotOwner();
        if (
            bytes(name).length == 0 || engineClass == bytes32(0) || minStake == 0 || minStake > type(uint96).max
                || baseFee == 0 || baseFee > type(uint80).max || perTokenFee > type(uint80).max || timeoutBlocks == 0
                || timeoutBlocks > 200 || redundancy == 0 || redundancy > MAX_REDUNDANCY || auditBps > 10_000
                || (redundancy == 1 && auditBps == 0)
        ) revert InvalidModel();
        uint256 maxPrice = baseFee + perTokenFee * MAX_DECLARED_TOKENS;
        if (redundancy == 1 && uint256(auditBps) * minStake < AUDIT_MARGIN * (10_000 - auditBps) * maxPrice) {
            revert Underpriced(maxPrice, minStake);
        }
        modelId = keccak256(bytes(name));
        if (_models[modelId].index != 0) revert ModelExists();
        uint256 count = _modelCount;
        _modelIds[count] = modelId;
        _modelCount = ++count;
        _models[modelId] = Model({
            baseFee: uint80(baseFee),
            perTokenFee: uint80(perTokenFee),
            timeoutBlocks: uint16(timeoutBlocks),
            redundancy: redundancy,
            index: uint24(count),
            auditBps: auditBps,
            active: 0,
            minStake: uint96(minStake)
        });
        _modelNames[modelId] = name;
        _engineClasses[modelId] = engineClass;
        if (msg.value != 0) _auditPool[uint24(count)] = msg.value;
        emit ModelRegistered(
            modelId, name, engineClass, minStake, baseFee, perTokenFee, timeoutBlocks, redundancy, auditBps
        );
    }

    /// @notice Add msg.value to the audit pool of `modelId` (anyone). An auditor that agrees with the
    ///         assignee is paid the assignee's work share from this pool; each r = 1 fee adds its
    ///         audit share `p * fee` while an audit (probability p) takes `(1 - p) * fee`, so the pool
    ///         drifts up by `p^2 * fee` a request: a seed of a few maximum prices pays every audit.
    function fundAuditPool(bytes32 modelId) external payable nonReentrant {
        uint24 index = _models[modelId].index;
        if (index == 0) revert UnknownModel();
        if (msg.value == 0) revert ZeroValue();
        _auditPool[index] += msg.value;
    }

    /// @notice The exact fee of a request declaring `maxTokens`.
    function price(bytes32 modelId, uint256 maxTokens) public view returns (uint256) {
        Model storage model = _models[modelId];
        if (model.index == 0) revert UnknownModel();
        return uint256(model.baseFee) + uint256(model.perTokenFee) * maxTokens;
    }

    /// @notice Register msg.sender as a miner of `modelId` running `engineClass` (must equal the
    ///         model's) with msg.value as stake (>= minStake).
    function registerMiner(bytes32 modelId, bytes32 engineClass) external payable nonReentrant {
        Model memory model = _models[modelId];
        if (model.index == 0) revert UnknownModel();
        bytes32 required = _engineClasses[modelId];
        if (engineClass != required) revert EngineClassMismatch(required, engineClass);
        Miner storage m = _miners[msg.sender];
        if (m.modelIndex != 0) revert AlreadyRegistered();
        if (msg.value < model.minStake) revert InsufficientStake(model.minStake, msg.value);
        if (msg.value > type(uint96).max) revert ValueTooLarge();
        m.stake = uint96(msg.value);
        m.modelIndex = model.index;
        emit MinerRegistered(msg.sender, modelId, msg.value);
        _activate(msg.sender, m, modelId);
    }

    /// @notice Add msg.value to the caller's stake; re-activates a miner back above minStake.
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

    /// @notice Leave the active set now; the stake unlocks `EXIT_COOLDOWN_TIMEOUTS * timeoutBlocks`
    ///         later, after every audit, committee and escalation the miner could sit in.
    function requestExit() external nonReentrant {
        Miner storage m = _miners[msg.sender];
        if (m.modelIndex == 0) revert NotRegistered();
        if (m.exitUnlockBlock != 0) revert ExitPending();
        bytes32 modelId = _modelIds[m.modelIndex - 1];
        if (m.activePos != 0) _deactivate(msg.sender, m, modelId);
        uint64 unlock = uint64(block.number) + EXIT_COOLDOWN_TIMEOUTS * uint64(_models[modelId].timeoutBlocks);
        m.exitUnlockBlock = uint48(unlock);
        emit ExitRequested(msg.sender, unlock);
    }

    /// @notice After the exit cooldown: send the whole stake to the caller and unregister it.
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

    /// @notice Request an inference: msg.value must equal `price(modelId, maxTokens)`. Seats are drawn
    ///         later from this block's hash (see `assign`).
    function requestInference(bytes32 modelId, bytes32 inputDigest, uint32 maxTokens)
        external
        payable
        nonReentrant
        returns (uint256 id)
    {
        Model memory model = _hotModel(modelId);
        if (model.index == 0) revert UnknownModel();
        _checkPool(model);
        id = _nextId;
        _nextId = uint64(id + 1);
        _newRequest(model, modelId, id, inputDigest, maxTokens, msg.value);
        _assignDue(AUTO_ASSIGN);
    }

    /// @notice Many requests of one model in one transaction; msg.value = the sum of their prices.
    ///         The first is written as a lone request; the others are its batch's members (one
    ///         fresh slot each, see `Request`).
    function requestInferences(bytes32 modelId, bytes32[] calldata inputDigests, uint32[] calldata maxTokens)
        external
        payable
        nonReentrant
        returns (uint256 firstId)
    {
        uint256 len = inputDigests.length;
        if (len != maxTokens.length) revert LengthMismatch();
        if (len == 0 || len > MAX_BATCH) revert BadBatch();
        Model memory model = _hotModel(modelId);
        if (model.index == 0) revert UnknownModel();
        _checkPool(model);
        firstId = _nextId;
        _nextId = uint64(firstId + len); // the ids firstId .. firstId + len - 1, written once
        uint256 total = uint256(model.baseFee) + uint256(model.perTokenFee) * maxTokens[0];
        _newRequest(model, modelId, firstId, inputDigests[0], maxTokens[0], total);
        uint256 bucket = (firstId + 1) >> 4;
        uint256 word; // the members' `maxTokens - 1` of `bucket`, written once per 16 ids
        for (uint256 i = 1; i < len; ++i) {
            uint256 id = firstId + i;
            if (id >> 4 != bucket) {
                _memberTokens[bucket] |= word;
                (bucket, word) = (id >> 4, 0);
            }
            bytes32 d = inputDigests[i];
            uint32 t = maxTokens[i];
            if (d == bytes32(0)) revert ZeroDigest();
            if (t == 0 || t > MAX_DECLARED_TOKENS) revert BadMaxTokens(t);
            uint256 p = uint256(model.baseFee) + uint256(model.perTokenFee) * t;
            total += p;
            word |= uint256(t - 1) << ((id & 15) << 4);
            _requests[id].inputDigest = d;
            emit InferenceRequested(id, msg.sender, modelId, d, p, t);
        }
        if (len > 1) _memberTokens[bucket] |= word;
        if (total != msg.value) revert WrongFee(total, msg.value);
        _assignDue(AUTO_ASSIGN);
    }

    /// @notice Materialise up to `maxCount` requests whose seed block has been mined (anyone).
    function assign(uint256 maxCount) external nonReentrant returns (uint256 done) {
        done = _assignDue(maxCount);
    }

    /// @notice Commit `keccak256(abi.encode(outputDigest, msg.sender, id))` for a seat of request `id`.
    function commit(uint256 id, bytes32 commitment) external nonReentrant {
        _commit(id, commitment);
    }

    function commitMany(uint256[] calldata ids, bytes32[] calldata commitments) external nonReentrant {
        uint256 len = ids.length;
        if (len != commitments.length) revert LengthMismatch();
        if (len == 0 || len > MAX_BATCH) revert BadBatch();
        for (uint256 i; i < len; ++i) {
            _commit(ids[i], commitments[i]);
        }
    }

    /// @notice Reveal the digest behind the caller's commitment. For r = 1 this finalizes and pays
    ///         unless the audit was drawn (then `openAudit` first; the reveal waits for the auditor).
    function reveal(uint256 id, bytes32 outputDigest) external nonReentrant {
        _reveal(id, outputDigest);
    }

    function revealMany(uint256[] calldata ids, bytes32[] calldata outputDigests) external nonReentrant {
        uint256 len = ids.length;
        if (len != outputDigests.length) revert LengthMismatch();
        if (len == 0 || len > MAX_BATCH) revert BadBatch();
        for (uint256 i; i < len; ++i) {
            _reveal(ids[i], outputDigests[i]);
        }
    }

    /// @notice Commit the results of many r = 1 assignee seats at once, as one root
    ///         `keccak256(abi.encodePacked(ids, leaves))` where `leaves[i]` is the commitment
    ///         `keccak256(abi.encode(outputDigest, msg.sender, ids[i]))` (the same as `commit`'s).
    ///         `ids` strictly ascending (one leaf per id), one model, every seat the caller's and
    ///         still in its commit window; all or nothing. Reveal with `revealBatch`.
    function commitBatch(uint256[] calldata ids, bytes32 root) external nonReentrant {
        uint256 len = ids.length;
        if (len == 0 || len > MAX_BATCH) revert BadBatch();
        if (root == bytes32(0)) revert ZeroDigest();
        uint256 prev;
        uint256 modelBits;
        // phase Reveal, mark = this block (seeds each audit draw), FLAG_BATCH: one head write per id
        uint256 set = uint256(uint40(block.number)) << HEAD_MARK | uint256(uint8(Phase.Reveal)) << HEAD_PHASE
            | uint256(FLAG_BATCH) << HEAD_FLAGS;
        uint256 clear = ~(uint256(type(uint40).max) << HEAD_MARK | uint256(0xff) << HEAD_PHASE);
        for (uint256 i; i < len; ++i) {
            uint256 id = ids[i];
            if (id <= prev) revert BadBatch();
            prev = id;
            Request storage q = _requests[id];
            uint256 w = _head(q);
            Phase ph = Phase(uint8(w >> HEAD_PHASE));
            if (ph != Phase.Assigned || uint8(w >> HEAD_R) != 1) revert WrongPhase(id, ph);
            if (address(uint160(w)) != msg.sender) revert NotSeated(id);
            if (block.number > uint40(w >> HEAD_MARK)) revert DeadlinePassed(id);
            uint256 m = w & uint256(type(uint24).max) << HEAD_MODEL;
            if (i == 0) modelBits = m;
            else if (m != modelBits) revert BadBatch();
            _setHead(q, w & clear | set);
            emit ResultCommitted(id, msg.sender, root);
        }
        bytes32 key = _batchKey(msg.sender, root, ids);
        if (_batchRoots[key] != 0) revert AlreadyCommitted(ids[0]);
        _batchRoots[key] = block.number;
    }

    /// @notice Open a committed root in a later block (within `timeoutBlocks` of the commit): bit i
    ///         of `withheld` set means `items[i]` is that entry's leaf, kept hidden because its audit
    ///         was drawn (`auditDrawn`): it becomes a single commitment (`openAudit`, then `reveal`).
    ///         Otherwise `items[i]` is the output digest: the request finalizes and pays as `reveal`
    ///         does (a drawn entry reverts `AuditDrawn`). The digest is not stored: read it from
    ///         `ResultRevealed`/`InferenceFinalized`. Emits `BatchRevealed` with every leaf.
    function revealBatch(uint256[] calldata ids, bytes32[] calldata items, uint256 withheld) external nonReentrant {
        uint256 len = ids.length;
        if (len != items.length) revert LengthMismatch();
        if (len == 0 || len > MAX_BATCH) revert BadBatch();
        (bytes32 root, bytes32[] memory leaves, uint256 commitBlock, Model memory model) =
            _openRoot(ids, items, withheld);
        for (uint256 i; i < len; ++i) {
            _revealEntry(ids[i], items[i], leaves[i], (withheld >> i) & 1 != 0, commitBlock, model);
        }
        emit BatchRevealed(msg.sender, root, ids, leaves);
    }

    /// @notice Move request `id` past a deadline that has passed (anyone): slash the silent seats and
    ///         reassign, resolve or refund as the phase requires.
    function timeout(uint256 id) external nonReentrant {
        _timeout(id);
    }

    function timeoutMany(uint256[] calldata ids) external nonReentrant {
        uint256 len = ids.length;
        if (len == 0 || len > MAX_BATCH) revert BadBatch();
        for (uint256 i; i < len; ++i) {
            _timeout(ids[i]);
        }
    }

    /// @notice Pay out everything credited to the caller.
    function withdraw() external nonReentrant {
        uint256 amount = _credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        _credits[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    function getModel(bytes32 modelId) external view returns (ModelView memory v) {
        Model memory model = _models[modelId];
        if (model.index == 0) revert UnknownModel();
        v = ModelView({
            modelId: modelId,
            name: _modelNames[modelId],
            engineClass: _engineClasses[modelId],
            minStake: model.minStake,
            baseFee: model.baseFee,
            perTokenFee: model.perTokenFee,
            timeoutBlocks: model.timeoutBlocks,
            redundancy: model.redundancy,
            auditBps: model.auditBps,
            activeMinerCount: model.active,
            auditPool: _auditPool[model.index]
        });
    }

    function requestCount() external view returns (uint256) {
        return _nextId - 1;
    }

    /// @notice The lowest request id not yet materialised.
    function nextAssign() external view returns (uint256) {
        return _nextAssign;
    }

    function modelIds() external view returns (bytes32[] memory ids) {
        ids = new bytes32[](_modelCount);
        for (uint256 i; i < ids.length; ++i) {
            ids[i] = _modelIds[i];
        }
    }

    /// @notice The model's active pool in draw order, each miner with the block it was activated in
    ///         (a draw skips entries activated in or after the request's block): one read gives
    ///         off-chain drawers (`node.chain.draw`) everything `_pick` uses.
    function activeMiners(bytes32 modelId) external view returns (PoolEntry[] memory entries) {
        mapping(uint256 => PoolEntry) storage pool = _pool[modelId];
        entries = new PoolEntry[](_models[modelId].active);
        for (uint256 i; i < entries.length; ++i) {
            entries[i] = pool[i];
        }
    }

    function getMiner(address miner) external view returns (MinerView memory v) {
        Miner memory m = _miners[miner];
        v = MinerView({
            modelId: m.modelIndex == 0 ? bytes32(0) : _modelIds[m.modelIndex - 1],
            stake: m.stake,
            credits: _credits[miner],
            active: m.activePos != 0,
            exitUnlockBlock: m.exitUnlockBlock,
            activeSince: m.activeSince
        });
    }

    function creditsOf(address account) external view returns (uint256) {
        return _credits[account];
    }

    /// @notice A request's state. A batch-committed r = 1 seat (flag 32) counts as committed; once
    ///         `revealBatch` finalized it, `outputDigest` is 0 (the hub stores no digest for it):
    ///         read it from the request's `InferenceFinalized` (or `ResultRevealed`) log.
    function getRequest(uint256 id) external view returns (RequestView memory v) {
        Request storage q = _requests[id];
        v.id = id;
        v.inputDigest = q.inputDigest;
        if (q.phase == Phase.None) {
            if (v.inputDigest == bytes32(0)) revert UnknownRequest(id);
            // A batch member not yet assigned: Pending, with its first's (the last id before it
            // with a requester) block, model and requester; once the first is assigned, the block
            // is the cursor's (`assign` stopped inside this batch).
            uint256 first = id - 1;
            while (_requests[first].requester == address(0)) --first;
            Request storage f = _requests[first];
            v.phase = Phase.Pending;
            v.requester = f.requester;
            v.modelId = _modelIds[f.modelIndex - 1];
            v.fee = price(v.modelId, _memberTokensOf(id));
            v.mark = f.phase == Phase.Pending ? f.mark : _batchBlock;
            v.redundancy = f.redundancy;
            return v;
        }
        v.phase = q.phase;
        v.requester = _requesterOf(id, q);
        v.modelId = _modelIds[q.modelIndex - 1];
        v.fee = _feeOf(id, q);
        v.mark = q.mark;
        v.redundancy = q.redundancy;
        v.flags = q.flags;
        v.committed = q.committed;
        v.revealed = q.revealed;
        uint256 n = _seatCount(q);
        v.seats = new address[](n);
        v.digests = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            v.seats[i] = _seat(q, i);
            v.digests[i] = q.digests[i];
        }
        if (q.phase == Phase.Pending) {
            v.seats = new address[](0);
            v.digests = new bytes32[](0);
        }
        if (q.winner != 0) v.outputDigest = q.digests[q.winner - 1];
        else if (q.phase == Phase.Final && q.redundancy == 1) v.outputDigest = q.digests[0];
        if (q.phase == Phase.Final && q.redundancy == 1 && q.flags & FLAG_AUDIT == 0) v.revealed = 1;
        if (q.redundancy == 1 && q.flags & FLAG_AUDIT == 0 && (q.digests[0] != bytes32(0) || q.flags & FLAG_BATCH != 0)) {
            v.committed = 1;
        }
    }

    function _checkPool(Model memory model) private pure {
        if (model.active < model.redundancy) revert NotEnoughMiners(model.redundancy, model.active);
    }

    /// @dev Write request `id` (the caller advanced `_nextId`) and emit `InferenceRequested`.
    function _newRequest(
        Model memory model,
        bytes32 modelId,
        uint256 id,
        bytes32 inputDigest,
        uint32 maxTokens,
        uint256 fee
    ) private {
        if (inputDigest == bytes32(0)) revert ZeroDigest();
        if (maxTokens == 0 || maxTokens > MAX_DECLARED_TOKENS) revert BadMaxTokens(maxTokens);
        uint256 p = uint256(model.baseFee) + uint256(model.perTokenFee) * maxTokens;
        if (fee != p) revert WrongFee(p, fee);
        Request storage q = _requests[id];
        q.inputDigest = inputDigest;
        // Slot 0 (requester, fee) and the head (mark = this block, modelIndex, redundancy, Pending):
        // one write each.
        uint256 word0 = uint256(uint160(msg.sender)) | uint256(uint96(fee)) << 160;
        assembly {
            sstore(q.slot, word0)
        }
        _setHead(
            q,
            uint256(uint40(block.number)) << HEAD_MARK | uint256(model.index) << HEAD_MODEL
                | uint256(model.redundancy) << HEAD_R | uint256(uint8(Phase.Pending)) << HEAD_PHASE
        );
        emit InferenceRequested(id, msg.sender, modelId, inputDigest, fee, maxTokens);
    }

    function _commit(uint256 id, bytes32 c) private {
        if (c == bytes32(0)) revert ZeroDigest();
        Request storage q = _requests[id];
        uint256 w = _head(q);
        Phase ph = Phase(uint8(w >> HEAD_PHASE));
        if (ph == Phase.Assigned) {
            if (block.number > uint40(w >> HEAD_MARK)) revert DeadlinePassed(id);
            uint256 r = uint8(w >> HEAD_R);
            if (r == 1) {
                if (address(uint160(w)) != msg.sender) revert NotSeated(id);
                q.digests[0] = c;
                // phase Reveal, mark = the commit block (seeds the audit draw): one write
                w &= ~(uint256(type(uint40).max) << HEAD_MARK | uint256(0xff) << HEAD_PHASE);
                _setHead(q, w | uint256(uint40(block.number)) << HEAD_MARK | uint256(uint8(Phase.Reveal)) << HEAD_PHASE);
                emit ResultCommitted(id, msg.sender, c);
                return;
            }
            uint256 seat = _seatOf(q, msg.sender);
            _commitSeat(q, id, seat, c);
            if (q.committed == (1 << r) - 1) _openReveal(id, q, Phase.Reveal);
        } else if (ph == Phase.Audit || ph == Phase.Committee) {
            _delegate(abi.encodeCall(HubDisputes.disputeCommit, (id, c)));
        } else {
            revert WrongPhase(id, ph);
        }
    }

    function _reveal(uint256 id, bytes32 d) private {
        if (d == bytes32(0)) revert ZeroDigest();
        Request storage q = _requests[id];
        uint256 w = _head(q);
        if (
            uint8(w >> HEAD_PHASE) == uint8(Phase.Reveal) && uint8(w >> HEAD_R) == 1
                && uint8(w >> HEAD_FLAGS) & FLAG_AUDIT == 0
        ) {
            _revealSingle(id, q, d, w);
            return;
        }
        _delegate(abi.encodeCall(HubDisputes.disputeReveal, (id, d)));
    }

    /// @dev The r = 1 happy path: reveal, check the draw, finalize and pay.
    ///      `w`: its head (Reveal: `mark` is the commit block).
    function _revealSingle(uint256 id, Request storage q, bytes32 d, uint256 w) private {
        if (address(uint160(w)) != msg.sender) revert NotSeated(id);
        if (keccak256(abi.encode(d, msg.sender, id)) != q.digests[0]) revert CommitmentMismatch(id);
        uint256 commitBlock = uint40(w >> HEAD_MARK);
        if (block.number <= commitBlock) revert NotYet(id, uint64(commitBlock + 1));
        Model memory model = _hotModel(_modelIds[uint24(w >> HEAD_MODEL) - 1]);
        if (block.number > commitBlock + model.timeoutBlocks) revert DeadlinePassed(id);
        if (d != UNAVAILABLE && uint8(w >> HEAD_FLAGS) & FLAG_NO_AUDIT == 0 && _drawn(id, commitBlock, model.auditBps))
        {
            revert AuditDrawn(id);
        }
        q.digests[0] = d;
        _setHead(q, w & ~(uint256(0xff) << HEAD_PHASE) | uint256(uint8(Phase.Final)) << HEAD_PHASE);
        emit ResultRevealed(id, msg.sender, d);
        _payFinal(id, q, model, d);
    }

    /// @dev The leaves of a `revealBatch`, its root, the root's commit block (checked against the
    ///      reveal window) and the model of its requests (one per root, see `commitBatch`).
    function _openRoot(uint256[] calldata ids, bytes32[] calldata items, uint256 withheld)
        private
        view
        returns (bytes32 root, bytes32[] memory leaves, uint256 commitBlock, Model memory model)
    {
        uint256 len = ids.length;
        leaves = new bytes32[](len);
        for (uint256 i; i < len; ++i) {
            bytes32 x = items[i];
            if (x == bytes32(0)) revert ZeroDigest();
            leaves[i] = (withheld >> i) & 1 != 0 ? x : keccak256(abi.encode(x, msg.sender, ids[i]));
        }
        root = keccak256(abi.encodePacked(ids, leaves));
        uint256 first = ids[0];
        commitBlock = _batchRoots[_batchKey(msg.sender, root, ids)];
        if (commitBlock == 0) revert CommitmentMismatch(first);
        if (block.number <= commitBlock) revert NotYet(first, uint64(commitBlock + 1));
        model = _hotModel(_modelIds[uint24(_head(_requests[first]) >> HEAD_MODEL) - 1]);
        if (block.number > commitBlock + model.timeoutBlocks) revert DeadlinePassed(first);
    }

    /// @dev One entry of a `revealBatch`: withheld (its leaf becomes a single commitment) or revealed
    ///      (the r = 1 happy path of `_revealSingle`, without storing the digest).
    function _revealEntry(uint256 id, bytes32 item, bytes32 leaf, bool withheld, uint256 commitBlock, Model memory model)
        private
    {
        Request storage q = _requests[id];
        uint256 w = _head(q);
        Phase ph = Phase(uint8(w >> HEAD_PHASE));
        if (
            ph != Phase.Reveal || uint8(w >> HEAD_R) != 1
                || uint8(w >> HEAD_FLAGS) & (FLAG_BATCH | FLAG_AUDIT) != FLAG_BATCH || uint40(w >> HEAD_MARK) != commitBlock
        ) revert WrongPhase(id, ph);
        if (address(uint160(w)) != msg.sender) revert NotSeated(id);
        if (withheld) {
            q.digests[0] = leaf;
            _setHead(q, w & ~(uint256(FLAG_BATCH) << HEAD_FLAGS));
            return;
        }
        if (
            item != UNAVAILABLE && uint8(w >> HEAD_FLAGS) & FLAG_NO_AUDIT == 0
                && _drawn(id, commitBlock, model.auditBps)
        ) revert AuditDrawn(id);
        _setHead(q, w & ~(uint256(0xff) << HEAD_PHASE) | uint256(uint8(Phase.Final)) << HEAD_PHASE);
        emit ResultRevealed(id, msg.sender, item);
        _payFinal(id, q, model, item);
    }

    function _payFinal(uint256 id, Request storage q, Model memory model, bytes32 d) private {
        emit InferenceFinalized(id, d);
        uint256 fee = _feeOf(id, q);
        if (d == UNAVAILABLE) {
            uint256 base = model.baseFee < fee ? model.baseFee : fee;
            _credit(msg.sender, id, base, CREDIT_FEE);
            if (fee != base) _credit(_requesterOf(id, q), id, fee - base, CREDIT_REFUND);
            return;
        }
        uint256 auditPart = fee * model.auditBps / 10_000;
        _credit(msg.sender, id, fee - auditPart, CREDIT_FEE);
        if (auditPart != 0) _auditPool[model.index] += auditPart;
    }

    /// @dev r > 1: every committed seat revealed, or the reveal deadline passed.

    function _timeout(uint256 id) private {
        _delegate(abi.encodeCall(HubDisputes.disputeTimeout, (id)));
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
