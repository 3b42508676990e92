// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/// @title HubStorage
/// @notice The state, types, events and shared rules of InferenceHub (protocol v2). The hub's core
///         (`InferenceHub`) and its dispute module (`HubDisputes`, run by delegatecall from the hub)
///         both inherit it, so they share one storage layout; splitting keeps each under the 24 KB
///         code-size limit (EIP-170). See InferenceHub.sol for the protocol.
abstract contract HubStorage {
    // ----------------------------------------------------------------------------------------------
    // Constants (internal: public getters would be compiled into both the hub and its module, and
    // the module has no room for them under EIP-170; their values are documented here)
    // ----------------------------------------------------------------------------------------------

    uint8 internal constant MAX_REDUNDANCY = 7;
    uint32 internal constant MAX_DECLARED_TOKENS = 65_536;
    /// @notice Slash of a silent or outvoted seat, in basis points of the model's `minStake`.
    uint256 internal constant SLASH_BPS = 1_000;
    /// @notice Share of a fraud slash paid to the escalator / equivocation prover.
    uint256 internal constant BOUNTY_BPS = 1_000;
    /// @notice Share of the losing side's forfeit paid to the winning voters of an escalation.
    uint256 internal constant VOTER_BPS = 5_000;
    uint256 internal constant AUDIT_MARGIN = 2;
    uint256 internal constant COMMITTEE_SIZE = 3;
    uint256 internal constant AUTO_ASSIGN = 2;
    uint256 internal constant MAX_BATCH = 64;
    uint64 internal constant EXIT_COOLDOWN_TIMEOUTS = 12;
    /// @notice Revealed by a miner that could not fetch the input before its deadline.
    bytes32 internal constant UNAVAILABLE = bytes32(uint256(1));

    bytes32 internal constant RESULT_TYPEHASH =
        keccak256("InferenceResult(uint256 requestId,bytes32 inputDigest,bytes32 outputDigest)");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 internal constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    uint8 internal constant FLAG_REASSIGNED = 1;
    uint8 internal constant FLAG_NO_AUDIT = 2; // the draw no longer applies (auditor silent / none)
    uint8 internal constant FLAG_AUDIT = 4; // an auditor was seated: masks are authoritative
    uint8 internal constant FLAG_DISPUTE = 8; // a committee was seated
    uint8 internal constant FLAG_ESCALATED = 16;
    /// @dev An r = 1 assignee seat committed inside a batch root (`commitBatch`): `digests[0]` is
    ///      empty; the leaf is bound by `_batchRoots`. Cleared when the leaf is withheld into
    ///      `digests[0]` (`revealBatch`) or the seat is reassigned.
    uint8 internal constant FLAG_BATCH = 32;

    // A request's slot 2, its "head" (`assignee0`, `mark`, `offset`, `modelIndex`, `redundancy`,
    // `phase`, `flags`; see `Request`): the hot paths (request, assign, r = 1 commit and reveal) read
    // it once and write it once as a word (`_head`, `_setHead`) instead of once per field. Bit offsets:
    uint256 internal constant HEAD_MARK = 160; // 40 bits
    uint256 internal constant HEAD_OFFSET = 200; // 8 bits
    uint256 internal constant HEAD_MODEL = 208;
    uint256 internal constant HEAD_R = 232;
    uint256 internal constant HEAD_PHASE = 240;
    uint256 internal constant HEAD_FLAGS = 248;
    /// @dev The head's `offset`, `modelIndex`, `redundancy` and `flags` bits (what a (re)assignment
    ///      keeps).
    uint256 internal constant HEAD_KEEP_MODEL = uint256(0xff) << HEAD_OFFSET | uint256(type(uint24).max) << HEAD_MODEL
        | uint256(0xff) << HEAD_R | uint256(0xff) << HEAD_FLAGS;

    // Slash reasons (event field)
    uint8 internal constant SLASH_SILENT = 1;
    uint8 internal constant SLASH_MINORITY = 2;
    uint8 internal constant SLASH_FRAUD = 3;
    uint8 internal constant SLASH_EQUIVOCATION = 4;
    // Credit reasons (event field)
    uint8 internal constant CREDIT_FEE = 1;
    uint8 internal constant CREDIT_REFUND = 2;
    uint8 internal constant CREDIT_AUDIT = 3;
    uint8 internal constant CREDIT_COMMITTEE = 4;
    uint8 internal constant CREDIT_BOUNTY = 5;
    uint8 internal constant CREDIT_VOTE = 6;
    uint8 internal constant CREDIT_BOND = 7;
    uint8 internal constant CREDIT_COMPENSATION = 8;

    // ----------------------------------------------------------------------------------------------
    // Types
    // ----------------------------------------------------------------------------------------------

    enum Phase {
        None,
        Pending, // waiting for its seed block; `mark` = request block
        Assigned, // commit window; `mark` = deadline
        Reveal, // r = 1: `mark` = commit block; r > 1: `mark` = reveal deadline
        Audit, // auditor commit window; `mark` = deadline
        AuditReveal, // assignee and auditor reveal; `mark` = deadline
        Committee, // committee commit window; `mark` = deadline
        CommitteeReveal, // `mark` = deadline
        Resolved, // provisional outcome, escalation window; `mark` = window end
        Vote, // escalation vote (see `_escalations`)
        Final,
        Refunded
    }

    /// @dev Slot 0 holds everything a request, an assignment and an r = 1 reveal read (one cold
    ///      SLOAD each, see `_hotModel`); `minStake` (disputes, registration) sits alone in slot 1.
    struct Model {
        uint80 baseFee;
        uint80 perTokenFee;
        uint16 timeoutBlocks; // <= 200 (registerModel)
        uint8 redundancy;
        uint24 index; // 1-based: `_modelIds[index - 1]`
        uint16 auditBps;
        uint32 active; // miners in the active pool: `_pool[modelId][0 .. active)`
        // slot 1
        uint96 minStake;
    }

    struct Miner {
        uint96 stake;
        uint24 modelIndex; // 0 = not registered
        uint32 activePos; // 1-based position in `_pool[modelId]`; 0 = not active
        uint48 exitUnlockBlock; // 0 = no exit requested
        uint48 activeSince; // block of the latest activation
    }

    /// @dev An entry of a model's active pool: the miner and its `activeSince`, in one slot, so a
    ///      draw checks eligibility without reading the miner's record.
    struct PoolEntry {
        address miner;
        uint48 since;
    }

    /// @dev Requests 2.. of one `requestInferences` are its batch's *members*: their requester and
    ///      block are the first's, so a member's request writes one fresh slot (`inputDigest`) and
    ///      16 bits of `_memberTokens` instead of three slots. Until assigned a member's head is 0
    ///      (read as Pending, see `_assignDue` and `getRequest`); slot 0 stays empty for good: its
    ///      requester is the first's (`offset` back) and its fee the model's price of its tokens
    ///      (prices never change), see `_requesterOf` and `_feeOf`.
    struct Request {
        // slot 0 (empty for a batch member)
        address requester;
        uint96 fee;
        // slot 1
        bytes32 inputDigest;
        // slot 2
        address assignee0;
        uint40 mark;
        uint8 offset; // a batch member's distance to its batch's first request (0 = not a member)
        uint24 modelIndex;
        uint8 redundancy;
        Phase phase;
        uint8 flags;
        // slot 3 (only off the r = 1 happy path)
        uint8 committed; // bit per seat
        uint8 revealed; // bit per seat
        uint8 seats; // seats in use
        uint8 winner; // seat + 1 of the provisional/final digest; 0 = none
        uint48 base; // eligibility cut-off block for auditor/committee/voters
        // seats 1..7 and their commitments, then revealed digests
        address[7] more;
        bytes32[8] digests;
        bytes32 seed; // audit path: the draw's seed, reused for the committee
    }

    struct Escalation {
        address challenger;
        uint48 commitEnd;
        uint48 revealEnd;
        uint32 votesFor; // for the challenged (provisional) digest
        uint32 votesAgainst; // for the challenger's digest
        bytes32 challengerDigest;
        uint96 bond;
        uint96 voterShare; // per winning voter, set at resolution
        bool overturned;
    }

    struct ModelView {
        bytes32 modelId;
        string name;
        bytes32 engineClass;
        uint256 minStake;
        uint256 baseFee;
        uint256 perTokenFee;
        uint32 timeoutBlocks;
        uint8 redundancy;
        uint16 auditBps;
        uint256 activeMinerCount;
        uint256 auditPool;
    }

    struct MinerView {
        bytes32 modelId; // 0 when not registered
        uint256 stake;
        uint256 credits;
        bool active;
        uint64 exitUnlockBlock;
        uint64 activeSince;
    }

    struct RequestView {
        uint256 id;
        Phase phase;
        address requester;
        bytes32 modelId;
        bytes32 inputDigest;
        bytes32 outputDigest; // final or provisional digest; 0 = none yet
        uint256 fee;
        uint64 mark;
        uint8 redundancy;
        uint8 flags;
        uint8 committed;
        uint8 revealed;
        address[] seats; // assignees first; r = 1: [assignee, auditor, committee...]
        bytes32[] digests; // commitment until revealed, then the revealed digest
    }

    // ----------------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------------

    event ModelRegistered(
        bytes32 indexed modelId,
        string name,
        bytes32 engineClass,
        uint256 minStake,
        uint256 baseFee,
        uint256 perTokenFee,
        uint32 timeoutBlocks,
        uint8 redundancy,
        uint16 auditBps
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
        uint32 maxTokens
    );
    /// @notice Seats to work on `id` (assignment or reassignment); `deadline` ends the commit window.
    event InferenceAssigned(
        uint256 indexed id, bytes32 indexed modelId, bytes32 inputDigest, uint64 deadline, address[] assignees
    );
    /// @notice `commitment` is the seat's commitment, or for a `commitBatch` entry the batch root.
    event ResultCommitted(uint256 indexed id, address indexed miner, bytes32 commitment);
    /// @notice Commit window over: seats reveal until `deadline`.
    event RevealOpened(uint256 indexed id, uint64 deadline);
    event ResultRevealed(uint256 indexed id, address indexed miner, bytes32 outputDigest);
    event AuditOpened(uint256 indexed id, address indexed auditor, bytes32 inputDigest, uint64 deadline);
    event CommitteeOpened(uint256 indexed id, bytes32 inputDigest, uint64 deadline, address[] members);
    /// @notice A provisional outcome that a dissenting seat may escalate until `escalationEnd`.
    event InferenceResolved(uint256 indexed id, bytes32 outputDigest, uint64 escalationEnd);
    event EscalationOpened(
        uint256 indexed id, address indexed challenger, bytes32 challengerDigest, uint64 commitEnd, uint64 revealEnd
    );
    event VoteCommitted(uint256 indexed id, address indexed voter);
    event VoteRevealed(uint256 indexed id, address indexed voter, bytes32 digest);
    event InferenceFinalized(uint256 indexed id, bytes32 outputDigest);
    event InferenceRefunded(uint256 indexed id);
    event Slashed(uint256 indexed id, address indexed miner, uint256 amount, uint8 reason);
    event Credited(address indexed account, uint256 indexed id, uint256 amount, uint8 reason);
    event Burned(uint256 indexed id, uint256 amount);
    /// @notice The leaves behind `root` (withheld entries included), in the committed id order, so
    ///         that anyone can rebuild the root from this one log (`proveBatchEquivocation`).
    event BatchRevealed(address indexed miner, bytes32 indexed root, uint256[] ids, bytes32[] leaves);
    event EquivocationProven(uint256 indexed id, address indexed miner, bytes32 signedDigest, address prover);
    event Withdrawn(address indexed account, uint256 amount);

    // ----------------------------------------------------------------------------------------------
    // Errors
    // ----------------------------------------------------------------------------------------------

    error NotOwner();
    error Reentrancy();
    error InvalidModel();
    error ModelExists();
    error UnknownModel();
    error EngineClassMismatch(bytes32 required, bytes32 provided);
    error Underpriced(uint256 maxPrice, uint256 minStake);
    error AlreadyRegistered();
    error NotRegistered();
    error InsufficientStake(uint256 required, uint256 provided);
    error ZeroValue();
    error ValueTooLarge();
    error ExitPending();
    error ExitNotRequested();
    error CooldownActive(uint64 unlockBlock);
    error WrongFee(uint256 required, uint256 provided);
    error BadMaxTokens(uint256 maxTokens);
    error NotEnoughMiners(uint256 required, uint256 available);
    error ZeroDigest();
    error UnknownRequest(uint256 id);
    error WrongPhase(uint256 id, Phase phase);
    error DeadlinePassed(uint256 id);
    error NotYet(uint256 id, uint64 at);
    error NotSeated(uint256 id);
    error AlreadyCommitted(uint256 id);
    error AlreadyRevealed(uint256 id);
    error CommitmentMismatch(uint256 id);
    error AuditDrawn(uint256 id);
    error NotDrawn(uint256 id);
    error CannotEscalate(uint256 id);
    error NotEligible(uint256 id);
    error BadSignature();
    error NoEquivocation(uint256 id);
    error NothingToClaim(uint256 id);
    error LengthMismatch();
    error BadBatch();
    error NothingToWithdraw();
    error TransferFailed();

    // ----------------------------------------------------------------------------------------------
    // Storage
    // ----------------------------------------------------------------------------------------------

    bool internal transient _locked;
    /// @dev The caller of the running `timeout` (set by the dispute module): each silent seat it
    ///      slashes pays it `BOUNTY_BPS` of the slash, so moving a stalled request on costs nobody.
    address internal transient _bountyTo;

    /// @dev Next request id, next id to materialise, and the batch that id may be a member of (its
    ///      first id and request block, see `_assignDue`), in one slot.
    uint64 internal _nextId = 1;
    uint64 internal _nextAssign = 1;
    uint64 internal _batchFirst;
    uint64 internal _batchBlock;
    /// @notice Slashed wei that left every account for good.
    uint256 public burned;

    mapping(bytes32 => Model) internal _models;
    mapping(bytes32 => string) internal _modelNames;
    mapping(bytes32 => bytes32) internal _engineClasses;
    /// @dev Position (0-based) => model id; a mapping, not an array: no length read per lookup.
    mapping(uint256 => bytes32) internal _modelIds;
    uint256 internal _modelCount;
    /// @dev modelId => position => entry; the size is `Model.active` (a mapping, not an array, so a
    ///      draw reads no separate length slot).
    mapping(bytes32 => mapping(uint256 => PoolEntry)) internal _pool;
    mapping(address => Miner) internal _miners;
    mapping(uint256 => Request) internal _requests;
    mapping(address => uint256) internal _credits;
    mapping(uint24 => uint256) internal _auditPool;
    mapping(uint256 => Escalation) internal _escalations;
    /// @dev id => voter => commitment (then keccak of the revealed digest's side marker)
    mapping(uint256 => mapping(address => bytes32)) internal _votes;
    /// @dev id => voter => 1 for, 2 against, 3 other (revealed); 4 claimed
    mapping(uint256 => mapping(address => uint8)) internal _voteSide;
    mapping(bytes32 => bool) internal _equivocations;
    /// @dev `_batchKey(miner, root, ids)` => the block of its `commitBatch` (0 = none). Appended
    ///      last: the layout before it is shared with HubDisputes.
    mapping(bytes32 => uint256) internal _batchRoots;
    /// @dev A batch member's `maxTokens - 1`, 16 bits each: id => word `id >> 4`, lane `id & 15`.
    mapping(uint256 => uint256) internal _memberTokens;


    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    /// @dev The model's first slot (everything but `minStake`, which stays 0): what requests,
    ///      assignments and r = 1 reveals read, in one SLOAD (offsets follow `Model`'s fields).
    function _hotModel(bytes32 modelId) internal view returns (Model memory m) {
        Model storage s = _models[modelId];
        uint256 w;
        assembly {
            w := sload(s.slot)
        }
        m.baseFee = uint80(w);
        m.perTokenFee = uint80(w >> 80);
        m.timeoutBlocks = uint16(w >> 160);
        m.redundancy = uint8(w >> 176);
        m.index = uint24(w >> 184);
        m.auditBps = uint16(w >> 208);
        m.active = uint32(w >> 224);
    }

    /// @dev A committed batch root is keyed by its miner, the root and the committed ids: a root is
    ///      revealable (and provable) only with the ids it was committed for, so one id never has
    ///      two leaves even across batches committed in one block.
    function _batchKey(address miner, bytes32 root, uint256[] calldata ids) internal pure returns (bytes32) {
        return keccak256(abi.encode(miner, root, keccak256(abi.encodePacked(ids))));
    }

    /// @dev Who paid for request `id` (a batch member's is its first's).
    function _requesterOf(uint256 id, Request storage q) internal view returns (address) {
        uint256 off = q.offset;
        return off == 0 ? q.requester : _requests[id - off].requester;
    }

    /// @dev What request `id` escrowed: a batch member's is its model's price of its tokens.
    function _feeOf(uint256 id, Request storage q) internal view returns (uint256) {
        if (q.offset == 0) return q.fee;
        Model memory model = _hotModel(_modelIds[q.modelIndex - 1]);
        return uint256(model.baseFee) + uint256(model.perTokenFee) * _memberTokensOf(id);
    }

    /// @dev A batch member's declared maxTokens (1 .. 65536) from its 16-bit lane.
    function _memberTokensOf(uint256 id) internal view returns (uint256) {
        return uint256(uint16(_memberTokens[id >> 4] >> ((id & 15) << 4))) + 1;
    }

    function _head(Request storage q) internal view returns (uint256 w) {
        assembly {
            w := sload(add(q.slot, 2))
        }
    }

    function _setHead(Request storage q, uint256 w) internal {
        assembly {
            sstore(add(q.slot, 2), w)
        }
    }

    /// @notice Whether the committed r = 1 result of `id` is audited (blockhash of its commit block;
    ///         a hash no longer available counts as drawn, so waiting never avoids an audit).
    function auditDrawn(uint256 id) public view returns (bool) {
        Request storage q = _requests[id];
        if (q.phase != Phase.Reveal || q.redundancy != 1 || q.flags & FLAG_NO_AUDIT != 0) return false;
        if (block.number <= q.mark) return false;
        return _drawn(id, q.mark, _models[_modelIds[q.modelIndex - 1]].auditBps);
    }

    function _seatAssignees(uint256 id, Request storage q, bytes32 modelId, uint256 timeoutBlocks, address[] memory who)
        internal
    {
        uint256 r = who.length;
        uint40 deadline = uint40(block.number + timeoutBlocks);
        // assignee0, mark = deadline, phase Assigned; offset, modelIndex, redundancy and flags kept
        _setHead(
            q,
            (_head(q) & HEAD_KEEP_MODEL) | uint256(uint160(who[0])) | uint256(deadline) << HEAD_MARK
                | uint256(uint8(Phase.Assigned)) << HEAD_PHASE
        );
        for (uint256 i = 1; i < r; ++i) {
            q.more[i - 1] = who[i];
        }
        emit InferenceAssigned(id, modelId, q.inputDigest, deadline, who);
    }

    function _commitSeat(Request storage q, uint256 id, uint256 seat, bytes32 c) internal {
        uint8 bit = uint8(1 << seat);
        if (q.committed & bit != 0) revert AlreadyCommitted(id);
        q.committed |= bit;
        q.digests[seat] = c;
        emit ResultCommitted(id, msg.sender, c);
    }

    function _openReveal(uint256 id, Request storage q, Phase next) internal {
        uint40 deadline = uint40(block.number + _models[_modelIds[q.modelIndex - 1]].timeoutBlocks);
        q.phase = next;
        q.mark = deadline;
        emit RevealOpened(id, deadline);
    }

    function _drawn(uint256 id, uint256 commitBlock, uint16 auditBps) internal view returns (bool) {
        bytes32 h = blockhash(commitBlock);
        if (h == bytes32(0)) return true;
        return uint256(keccak256(abi.encode(h, id, "audit"))) % 10_000 < auditBps;
    }

    function _provisional(uint256 id, Request storage q, Model memory model, bytes32 win) internal {
        uint40 end = uint40(block.number + model.timeoutBlocks);
        q.phase = Phase.Resolved;
        q.mark = end;
        emit InferenceResolved(id, win, end);
    }

    /// @dev Settle a request with a winner seat: pay the fee, slash losers, pay the committee.
    function _finish(uint256 id, Request storage q, Model memory model) internal {
        bytes32 win = q.digests[q.winner - 1];
        uint256 fee = _feeOf(id, q);
        q.phase = Phase.Final;
        emit InferenceFinalized(id, win);
        if (win == UNAVAILABLE) {
            _payUnavailable(id, q, model);
            return;
        }
        if (q.redundancy == 1) {
            uint256 auditPart = fee * model.auditBps / 10_000;
            uint256 work = fee - auditPart;
            uint256 pool = _auditPool[model.index] + auditPart;
            uint256 w = q.winner - 1; // 0 = assignee, 1 = auditor
            _credit(_seat(q, w), id, work, CREDIT_FEE);
            if (q.flags & FLAG_DISPUTE == 0) {
                // Agreement (or the auditor alone revealed): the auditor's work is paid by the pool.
                if (w == 0 && q.seats >= 2 && q.revealed & 2 != 0 && q.digests[1] == win) {
                    uint256 reward = work < pool ? work : pool;
                    pool -= reward;
                    if (reward != 0) _credit(q.more[0], id, reward, CREDIT_AUDIT);
                }
                _auditPool[model.index] = pool;
                return;
            }
            _auditPool[model.index] = pool;
            // Dispute: the losing party forfeits minStake; majority committee members are paid
            // their work from it; outvoted members are slashed like a minority.
            uint256 loser = 1 - w;
            uint256 taken;
            if (q.revealed & (1 << loser) != 0) taken = _slash(id, _seat(q, loser), model.minStake, SLASH_FRAUD);
            for (uint256 i = 2; i < q.seats; ++i) {
                if (q.revealed & (1 << i) == 0) continue;
                if (q.digests[i] == win) {
                    uint256 pay = work < taken ? work : taken;
                    taken -= pay;
                    if (pay != 0) _credit(_seat(q, i), id, pay, CREDIT_COMMITTEE);
                } else {
                    _burn(id, _slash(id, _seat(q, i), _silentSlash(model), SLASH_MINORITY));
                }
            }
            if (w == 1 && taken != 0) {
                // The assignee's fraud is proven: from the slash, after the committee, the requester
                // gets its fee back plus fee * (1 - p) / p (one credit of fee / p), so that cheats
                // the audit misses (a wrong answer, probability 1 - p) are paid back in expectation.
                uint256 comp = fee * 10_000 / model.auditBps;
                if (comp > taken) comp = taken;
                taken -= comp;
                _credit(_requesterOf(id, q), id, comp, CREDIT_COMPENSATION);
            }
            _burn(id, taken);
            return;
        }
        // r > 1: the matching seats share the fee; revealed dissenters are slashed.
        uint256 r = q.redundancy;
        uint256 matching;
        for (uint256 i; i < r; ++i) {
            if (q.revealed & (1 << i) != 0 && q.digests[i] == win) ++matching;
        }
        uint256 share = fee / matching;
        uint256 rest = fee - share * matching;
        for (uint256 i; i < r; ++i) {
            if (q.revealed & (1 << i) == 0) continue;
            address who = _seat(q, i);
            if (q.digests[i] == win) {
                _credit(who, id, share + rest, CREDIT_FEE);
                rest = 0;
            } else if (q.digests[i] != UNAVAILABLE) {
                _burn(id, _slash(id, who, _silentSlash(model), SLASH_MINORITY));
            }
        }
    }

    /// @dev Nobody could fetch the input: the seats that said so share the base fee, the requester
    ///      gets the rest back.
    function _payUnavailable(uint256 id, Request storage q, Model memory model) internal {
        uint256 fee = _feeOf(id, q);
        uint256 base = model.baseFee < fee ? model.baseFee : fee;
        uint256 n = q.seats == 0 ? q.redundancy : q.seats;
        uint256 count;
        for (uint256 i; i < n; ++i) {
            if (_revealedSeat(q, i) && q.digests[i] == UNAVAILABLE) ++count;
        }
        uint256 share = base / count;
        for (uint256 i; i < n; ++i) {
            if (_revealedSeat(q, i) && q.digests[i] == UNAVAILABLE) _credit(_seat(q, i), id, share, CREDIT_FEE);
        }
        uint256 back = fee - share * count;
        if (back != 0) _credit(_requesterOf(id, q), id, back, CREDIT_REFUND);
    }

    /// @dev A failed round: reassign once to miners not yet seated, else refund. `pot` (the silent
    ///      seats' slashes) compensates the seats that did their part; the rest is burned.
    function _reassignOrRefund(uint256 id, Request storage q, Model memory model, uint256 pot) internal {
        uint256 r = q.redundancy;
        uint8 diligent = q.revealed != 0 ? q.revealed : q.committed;
        if (r > 1 && diligent != 0 && pot != 0) {
            uint256 k;
            for (uint256 i; i < r; ++i) {
                if (diligent & (1 << i) != 0) ++k;
            }
            uint256 share = pot / k;
            for (uint256 i; i < r; ++i) {
                if (diligent & (1 << i) != 0) _credit(_seat(q, i), id, share, CREDIT_COMPENSATION);
            }
            pot -= share * k;
        }
        _burn(id, pot);
        bytes32 modelId = _modelIds[q.modelIndex - 1];
        if (q.flags & FLAG_REASSIGNED == 0) {
            address[] memory old = new address[](r);
            for (uint256 i; i < r; ++i) {
                old[i] = _seat(q, i);
            }
            // Eligible: active since before the round was assigned. `mark` is the commit deadline
            // (Assigned), the commit block (r = 1 Reveal) or the reveal deadline (r > 1 Reveal, at
            // most 2 * timeoutBlocks after assignment), so these cut-offs never fall after it.
            uint256 back = r > 1 && q.phase == Phase.Reveal ? 2 * uint256(model.timeoutBlocks) : model.timeoutBlocks;
            uint256 cutoff = q.mark > back ? q.mark - back : 0;
            (address[] memory fresh, uint256 got) = _pick(
                modelId, r, uint256(keccak256(abi.encode(q.inputDigest, id, q.assignee0, "reassign"))), cutoff, old
            );
            if (got == r) {
                // A fresh seat gets a fresh audit draw (the old round's "no audit" does not carry over).
                q.flags = (q.flags | FLAG_REASSIGNED) & ~FLAG_NO_AUDIT;
                q.committed = 0;
                q.revealed = 0;
                q.winner = 0;
                for (uint256 i; i < r; ++i) {
                    if (q.digests[i] != bytes32(0)) q.digests[i] = bytes32(0);
                }
                _seatAssignees(id, q, modelId, model.timeoutBlocks, fresh);
                return;
            }
        }
        _refund(id, q);
    }

    function _refund(uint256 id, Request storage q) internal {
        q.phase = Phase.Refunded;
        _credit(_requesterOf(id, q), id, _feeOf(id, q), CREDIT_REFUND);
        emit InferenceRefunded(id);
    }

    function _slashUnrevealed(uint256 id, Request storage q, Model memory model, uint256 from, uint256 to)
        internal
        returns (uint256 taken)
    {
        for (uint256 i = from; i < to; ++i) {
            uint8 bit = uint8(1 << i);
            if (q.committed & bit != 0 && q.revealed & bit == 0) {
                taken += _slash(id, _seat(q, i), _silentSlash(model), SLASH_SILENT);
            }
        }
    }

    function _slashUncommitted(uint256 id, Request storage q, Model memory model) internal {
        for (uint256 i = 2; i < q.seats; ++i) {
            if (q.committed & (1 << i) == 0) _burn(id, _slash(id, _seat(q, i), _silentSlash(model), SLASH_SILENT));
        }
    }

    /// @dev Most frequent revealed digest among seats [from, to): (seat of its first holder, count).
    function _plurality(Request storage q, uint256 from, uint256 to) internal view returns (uint256 best, uint256 count) {
        for (uint256 i = from; i < to; ++i) {
            if (q.revealed & (1 << i) == 0 || q.digests[i] == UNAVAILABLE) continue;
            uint256 c;
            for (uint256 j = from; j < to; ++j) {
                if (q.revealed & (1 << j) != 0 && q.digests[j] == q.digests[i]) ++c;
            }
            if (c > count) {
                count = c;
                best = i;
            }
        }
        if (count == 0) {
            // Only UNAVAILABLE (or nothing) was revealed.
            for (uint256 i = from; i < to; ++i) {
                if (q.revealed & (1 << i) != 0) {
                    ++count;
                    best = i;
                }
            }
        }
    }

    function _silentSlash(Model memory model) internal pure returns (uint256) {
        return uint256(model.minStake) * SLASH_BPS / 10_000;
    }

    /// @dev Take up to `amount` from `miner`'s stake. The caller decides where it goes (burn or
    ///      reward). Deactivation is judged against the model the miner is registered for now.
    function _slash(uint256 id, address miner, uint256 amount, uint8 reason) internal returns (uint256 taken) {
        Miner storage m = _miners[miner];
        uint256 stake = m.stake;
        taken = amount < stake ? amount : stake;
        if (taken == 0) return 0;
        stake -= taken;
        m.stake = uint96(stake);
        emit Slashed(id, miner, taken, reason);
        if (m.activePos != 0) {
            bytes32 current = _modelIds[m.modelIndex - 1];
            if (stake < _models[current].minStake) _deactivate(miner, m, current);
        }
        address caller = _bountyTo;
        if (reason == SLASH_SILENT && caller != address(0) && caller != miner) {
            // The timeout's caller is paid from the silent seat's slash (its gas, and then some).
            uint256 bounty = taken * BOUNTY_BPS / 10_000;
            _credit(caller, id, bounty, CREDIT_BOUNTY);
            taken -= bounty;
        }
    }

    function _credit(address account, uint256 id, uint256 amount, uint8 reason) internal {
        _credits[account] += amount;
        emit Credited(account, id, amount, reason);
    }

    function _burn(uint256 id, uint256 amount) internal {
        if (amount == 0) return;
        burned += amount;
        emit Burned(id, amount);
    }

    function _seatCount(Request storage q) internal view returns (uint256) {
        return q.seats > q.redundancy ? q.seats : q.redundancy;
    }

    function _seat(Request storage q, uint256 i) internal view returns (address) {
        return i == 0 ? q.assignee0 : q.more[i - 1];
    }

    function _seatOf(Request storage q, address who) internal view returns (uint256) {
        uint256 n = _seatCount(q);
        for (uint256 i; i < n; ++i) {
            if (_seat(q, i) == who) return i;
        }
        revert NotSeated(0);
    }

    function _isSeat(Request storage q, address who) internal view returns (bool) {
        uint256 n = _seatCount(q);
        for (uint256 i; i < n; ++i) {
            if (_seat(q, i) == who) return true;
        }
        return false;
    }

    function _revealedSeat(Request storage q, uint256 seat) internal view returns (bool) {
        if (q.redundancy == 1 && q.flags & FLAG_AUDIT == 0) return seat == 0 && q.phase == Phase.Final;
        return q.revealed & (1 << seat) != 0;
    }

    function _committedSeat(Request storage q, uint256 seat) internal view returns (bool) {
        if (q.redundancy == 1 && q.flags & FLAG_AUDIT == 0) return seat == 0 && q.digests[0] != bytes32(0);
        return q.committed & (1 << seat) != 0;
    }

    /// @dev Materialise up to `maxCount` requests whose seed block has been mined, in id order. A
    ///      batch member (head 0) is materialised with its first's Pending head (block, model,
    ///      redundancy) and its offset; a call may end inside a batch, so the batch's first id and
    ///      block stay in the cursor's slot for the next call (the first's own head has moved on).
    function _assignDue(uint256 maxCount) internal returns (uint256 done) {
        uint256 next = _nextAssign;
        uint256 end = _nextId;
        uint256 start = next;
        uint256 first = _batchFirst;
        uint256 pending; // the batch's Pending head, once needed
        while (done < maxCount && next < end) {
            Request storage q = _requests[next];
            uint256 w = _head(q);
            if (w == 0) {
                if (pending == 0) pending = _resumedBatch(first);
                _materialise(next, q, pending | (next - first) << HEAD_OFFSET);
                ++done;
            } else if (uint8(w >> HEAD_PHASE) == uint8(Phase.Pending)) {
                if (uint40(w >> HEAD_MARK) >= block.number) break;
                (first, pending) = (next, w);
                _materialise(next, q, w);
                ++done;
            }
            ++next;
        }
        if (next != start) {
            _nextAssign = uint64(next);
            if (pending != 0) (_batchFirst, _batchBlock) = (uint64(first), uint64(uint40(pending >> HEAD_MARK)));
        }
    }

    /// @dev The Pending head batch `first`'s members get when a call resumes inside it: its block from
    ///      the cursor's slot, its model and redundancy from the first's head (kept by assignment).
    function _resumedBatch(uint256 first) internal view returns (uint256) {
        uint256 keep = uint256(type(uint24).max) << HEAD_MODEL | uint256(0xff) << HEAD_R;
        return (_head(_requests[first]) & keep) | uint256(_batchBlock) << HEAD_MARK
            | uint256(uint8(Phase.Pending)) << HEAD_PHASE;
    }

    /// @dev `w`: the request's Pending head (`mark` is the request block; a member's carries its
    ///      offset and is written here for the first time).
    function _materialise(uint256 id, Request storage q, uint256 w) internal {
        if (uint8(w >> HEAD_OFFSET) != 0) _setHead(q, w); // then rewritten at 100 gas
        uint256 requestBlock = uint40(w >> HEAD_MARK);
        bytes32 h = blockhash(requestBlock);
        if (h == bytes32(0)) {
            _refund(id, q);
            return;
        }
        bytes32 modelId = _modelIds[uint24(w >> HEAD_MODEL) - 1];
        uint256 r = uint8(w >> HEAD_R);
        (address[] memory chosen, uint256 got) =
            _pick(modelId, r, uint256(keccak256(abi.encode(h, id))), requestBlock, new address[](0));
        if (got < r) {
            _refund(id, q);
            return;
        }
        _seatAssignees(id, q, modelId, _models[modelId].timeoutBlocks, chosen);
    }

    /// @dev Every pool change first materialises the requests already due: a request's seats are
    ///      drawn over the active pool as it was when its seed block's hash became known, so a
    ///      registration or an exit made after seeing that hash cannot move them.
    function _activate(address miner, Miner storage m, bytes32 modelId) internal {
        _assignDue(type(uint256).max);
        Model storage model = _models[modelId];
        uint32 size = model.active + 1;
        model.active = size;
        _pool[modelId][size - 1] = PoolEntry({miner: miner, since: uint48(block.number)});
        m.activePos = size;
        m.activeSince = uint48(block.number);
        emit MinerActivated(miner, modelId);
    }

    function _deactivate(address miner, Miner storage m, bytes32 modelId) internal {
        _assignDue(type(uint256).max);
        Model storage model = _models[modelId];
        mapping(uint256 => PoolEntry) storage pool = _pool[modelId];
        uint256 pos = m.activePos;
        uint32 last = model.active;
        if (pos != last) {
            PoolEntry memory moved = pool[last - 1];
            pool[pos - 1] = moved;
            _miners[moved.miner].activePos = uint32(pos);
        }
        delete pool[last - 1];
        model.active = last - 1;
        m.activePos = 0;
        emit MinerDeactivated(miner, modelId);
    }

    /// @dev Choose up to `r` distinct active miners of `modelId`, active since before `cutoff` and
    ///      not in `exclude`, by a partial Fisher-Yates shuffle over virtual positions.
    function _pick(bytes32 modelId, uint256 r, uint256 seed, uint256 cutoff, address[] memory exclude)
        internal
        view
        returns (address[] memory chosen, uint256 count)
    {
        mapping(uint256 => PoolEntry) storage pool = _pool[modelId];
        uint256 n = _models[modelId].active;
        chosen = new address[](r);
        if (n == 0) return (chosen, 0);
        if (r == 1 && exclude.length == 0) {
            PoolEntry storage e = pool[seed % n];
            if (e.since < cutoff) {
                chosen[0] = e.miner;
                return (chosen, 1);
            }
        }
        uint256[] memory swapPos = new uint256[](n < 64 ? n : 64);
        uint256[] memory swapVal = new uint256[](swapPos.length);
        uint256 swaps;
        for (uint256 j; j < n && count < r && swaps < swapPos.length; ++j) {
            uint256 k = j + uint256(keccak256(abi.encode(seed, j))) % (n - j);
            uint256 vk;
            (vk, swaps) = _swap(swapPos, swapVal, swaps, j, k);
            PoolEntry storage e = pool[vk];
            address a = e.miner;
            if (e.since < cutoff && !_contains(exclude, a)) chosen[count++] = a;
        }
    }

    function _swap(uint256[] memory swapPos, uint256[] memory swapVal, uint256 swaps, uint256 j, uint256 k)
        internal
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

    function _contains(address[] memory list, address a) internal pure returns (bool) {
        for (uint256 i; i < list.length; ++i) {
            if (list[i] == a) return true;
        }
        return false;
    }
}
