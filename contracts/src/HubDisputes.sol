// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {HubStorage} from "./HubStorage.sol";

/// @title HubDisputes
/// @notice The rare paths of InferenceHub: audits, committees, escalation votes and equivocation
///         proofs. Runs only by delegatecall from the hub (its fallback, or the hub's own commit,
///         reveal and timeout for these phases), so it reads and writes the hub's storage and the
///         hub's reentrancy lock is already held. Called directly it sees empty storage.
contract HubDisputes is HubStorage {
    /// @notice EIP-712 domain separator of result signatures (name "inferd", version "2").
    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("inferd"), keccak256("2"), block.chainid, address(this)));
    }

    /// @notice Commit of an auditor or committee member (the hub's `commit` routes here).
    function disputeCommit(uint256 id, bytes32 c) external {
        if (c == bytes32(0)) revert ZeroDigest();
        Request storage q = _requests[id];
        Phase ph = q.phase;
        if (ph == Phase.Audit) {
            if (block.number > q.mark) revert DeadlinePassed(id);
            if (q.more[0] != msg.sender) revert NotSeated(id);
            _commitSeat(q, id, 1, c);
            _openReveal(id, q, Phase.AuditReveal);
        } else if (ph == Phase.Committee) {
            if (block.number > q.mark) revert DeadlinePassed(id);
            uint256 seat = _seatOf(q, msg.sender);
            if (seat < 2) revert NotSeated(id);
            _commitSeat(q, id, seat, c);
            if (q.committed == (1 << q.seats) - 1) _openReveal(id, q, Phase.CommitteeReveal);
        } else {
            revert WrongPhase(id, ph);
        }
    }

    /// @notice Reveal of any seat outside the r = 1 happy path (the hub's `reveal` routes here):
    ///         r > 1 assignees, the audited assignee, the auditor and committee members.
    function disputeReveal(uint256 id, bytes32 d) external {
        if (d == bytes32(0)) revert ZeroDigest();
        Request storage q = _requests[id];
        Phase ph = q.phase;
        if (ph == Phase.Reveal && q.redundancy == 1 && q.flags & FLAG_AUDIT == 0) revert WrongPhase(id, ph);
        if (ph != Phase.Reveal && ph != Phase.AuditReveal && ph != Phase.CommitteeReveal) revert WrongPhase(id, ph);
        if (block.number > q.mark) revert DeadlinePassed(id);
        uint256 seat = _seatOf(q, msg.sender);
        if (ph == Phase.AuditReveal && seat > 1) revert NotSeated(id);
        if (ph == Phase.CommitteeReveal && seat < 2) revert NotSeated(id);
        uint8 bit = uint8(1 << seat);
        if (q.committed & bit == 0) revert NotSeated(id);
        if (q.revealed & bit != 0) revert AlreadyRevealed(id);
        if (keccak256(abi.encode(d, msg.sender, id)) != q.digests[seat]) revert CommitmentMismatch(id);
        q.digests[seat] = d;
        q.revealed |= bit;
        emit ResultRevealed(id, msg.sender, d);
        if (ph == Phase.Reveal) {
            if (q.revealed == q.committed) _tallyQuorum(id, q, 0);
        } else if (ph == Phase.AuditReveal) {
            if (q.revealed & 3 == 3) _resolveAudit(id, q);
        } else if (q.revealed == q.committed) {
            _resolveCommittee(id, q);
        }
    }

    /// @notice Move a request past a deadline that has passed (the hub's `timeout` routes here):
    ///         slash the silent seats, then reassign, resolve or refund as the phase requires.
    function disputeTimeout(uint256 id) external {
        _bountyTo = msg.sender;
        Request storage q = _requests[id];
        Phase ph = q.phase;
        if (ph == Phase.None) {
            // a batch member not yet assigned (its head is still empty) is Pending
            if (q.inputDigest == bytes32(0)) revert UnknownRequest(id);
            revert WrongPhase(id, Phase.Pending);
        }
        Model memory model = _models[_modelIds[q.modelIndex - 1]];
        uint256 due = q.mark;
        if (ph == Phase.Reveal && q.redundancy == 1) due += model.timeoutBlocks;
        if (ph == Phase.Vote) due = _escalations[id].revealEnd;
        if (ph == Phase.Pending || ph == Phase.Final || ph == Phase.Refunded) revert WrongPhase(id, ph);
        if (block.number <= due) revert NotYet(id, uint64(due + 1));

        if (ph == Phase.Assigned) {
            uint256 r = q.redundancy;
            uint256 committed;
            uint256 pot;
            for (uint256 i; i < r; ++i) {
                if (r > 1 && q.committed & (1 << i) != 0) ++committed;
                else pot += _slash(id, _seat(q, i), _silentSlash(model), SLASH_SILENT);
            }
            if (r > 1 && committed >= r / 2 + 1) {
                _burn(id, pot);
                _openReveal(id, q, Phase.Reveal);
            } else {
                _reassignOrRefund(id, q, model, pot);
            }
        } else if (ph == Phase.Reveal) {
            if (q.redundancy == 1) {
                // A batch-committed seat whose root was never opened: its leaf never reached the
                // chain. Drawn, it goes to audit like a single commit its assignee leaves unrevealed
                // (the auditor's digest stands; the assignee is slashed as hiding its result), so
                // keeping a drawn batch closed never costs less than revealing a wrong result.
                q.flags &= ~FLAG_BATCH;
                if (q.flags & FLAG_NO_AUDIT == 0 && _drawn(id, q.mark, model.auditBps)) {
                    _openAudit(id, q); // a drawn audit nobody opened: open it now
                    return;
                }
                _reassignOrRefund(id, q, model, _slash(id, q.assignee0, _silentSlash(model), SLASH_SILENT));
                return;
            }
            _tallyQuorum(id, q, _slashUnrevealed(id, q, model, 0, q.redundancy));
        } else if (ph == Phase.Audit) {
            _burn(id, _slash(id, q.more[0], _silentSlash(model), SLASH_SILENT));
            q.flags |= FLAG_NO_AUDIT;
            q.flags &= ~FLAG_AUDIT;
            q.committed = 0;
            q.seats = 0;
            q.phase = Phase.Reveal;
            q.mark = uint40(block.number); // fresh reveal window for the assignee
        } else if (ph == Phase.AuditReveal) {
            bool a = q.revealed & 1 != 0;
            bool b = q.revealed & 2 != 0;
            if (a) {
                _burn(id, _slash(id, q.more[0], _silentSlash(model), SLASH_SILENT));
                q.winner = 1;
                _finish(id, q, model);
            } else if (b) {
                // The assignee hid its result from the auditor: treated as fraud.
                _burn(id, _slash(id, q.assignee0, model.minStake, SLASH_FRAUD));
                q.winner = 2;
                _finish(id, q, model);
            } else {
                _burn(id, _slash(id, q.assignee0, _silentSlash(model), SLASH_SILENT));
                _burn(id, _slash(id, q.more[0], _silentSlash(model), SLASH_SILENT));
                _refund(id, q);
            }
        } else if (ph == Phase.Committee) {
            _slashUncommitted(id, q, model);
            if (q.committed >> 2 == 0) _refund(id, q);
            else _openReveal(id, q, Phase.CommitteeReveal);
        } else if (ph == Phase.CommitteeReveal) {
            _burn(id, _slashUnrevealed(id, q, model, 2, q.seats));
            _resolveCommittee(id, q);
        } else if (ph == Phase.Resolved) {
            _finish(id, q, model);
        } else if (ph == Phase.Vote) {
            _resolveVote(id, q, model);
        }
    }

    /// @notice Seat an auditor for a drawn r = 1 result (anyone). With no eligible auditor the
    ///         result goes unaudited.
    function openAudit(uint256 id) external {
        Request storage q = _requests[id];
        // A batch-committed seat has no leaf on chain until `revealBatch` withholds it.
        if (q.phase != Phase.Reveal || q.redundancy != 1 || q.flags & FLAG_BATCH != 0) revert WrongPhase(id, q.phase);
        if (!auditDrawn(id)) revert NotDrawn(id);
        _openAudit(id, q);
    }

    /// @notice A seat whose revealed digest lost a provisional outcome challenges it with a bond of
    ///         `minStake`; every other active miner of the model may vote.
    function escalate(uint256 id) external payable {
        Request storage q = _requests[id];
        if (q.phase != Phase.Resolved) revert WrongPhase(id, q.phase);
        if (block.number > q.mark) revert DeadlinePassed(id);
        Model memory model = _models[_modelIds[q.modelIndex - 1]];
        if (msg.value != model.minStake) revert WrongFee(model.minStake, msg.value);
        uint256 seat = _seatOf(q, msg.sender);
        bytes32 mine = q.digests[seat];
        bytes32 win = q.digests[q.winner - 1];
        if (q.revealed & (1 << seat) == 0 || mine == win || mine == UNAVAILABLE) revert CannotEscalate(id);
        if (q.redundancy == 1 && seat > 1) revert CannotEscalate(id); // committee seats follow the parties
        uint48 t = uint48(model.timeoutBlocks);
        Escalation storage e = _escalations[id];
        e.challenger = msg.sender;
        e.challengerDigest = mine;
        e.commitEnd = uint48(block.number) + t;
        e.revealEnd = uint48(block.number) + 2 * t;
        e.bond = uint96(msg.value);
        q.base = uint48(block.number);
        q.phase = Phase.Vote;
        q.flags |= FLAG_ESCALATED;
        emit EscalationOpened(id, msg.sender, mine, e.commitEnd, e.revealEnd);
    }

    /// @notice Commit a vote `keccak256(abi.encode(digest, msg.sender, id))` (active miners of the
    ///         model, active before the escalation, not seated on the request).
    function commitVote(uint256 id, bytes32 commitment) external {
        Request storage q = _requests[id];
        if (q.phase != Phase.Vote) revert WrongPhase(id, q.phase);
        Escalation storage e = _escalations[id];
        if (block.number > e.commitEnd) revert DeadlinePassed(id);
        if (commitment == bytes32(0)) revert ZeroDigest();
        Miner memory m = _miners[msg.sender];
        if (m.activePos == 0 || m.modelIndex != q.modelIndex || m.activeSince >= q.base || _isSeat(q, msg.sender)) {
            revert NotEligible(id);
        }
        if (_votes[id][msg.sender] != bytes32(0)) revert AlreadyCommitted(id);
        _votes[id][msg.sender] = commitment;
        emit VoteCommitted(id, msg.sender);
    }

    function revealVote(uint256 id, bytes32 digest) external {
        Request storage q = _requests[id];
        if (q.phase != Phase.Vote) revert WrongPhase(id, q.phase);
        Escalation storage e = _escalations[id];
        if (block.number <= e.commitEnd) revert NotYet(id, e.commitEnd + 1);
        if (block.number > e.revealEnd) revert DeadlinePassed(id);
        bytes32 c = _votes[id][msg.sender];
        if (c == bytes32(0)) revert NotEligible(id);
        if (_voteSide[id][msg.sender] != 0) revert AlreadyRevealed(id);
        if (keccak256(abi.encode(digest, msg.sender, id)) != c) revert CommitmentMismatch(id);
        uint8 side = 3;
        if (digest == q.digests[q.winner - 1]) {
            side = 1;
            ++e.votesFor;
        } else if (digest == e.challengerDigest) {
            side = 2;
            ++e.votesAgainst;
        }
        _voteSide[id][msg.sender] = side;
        emit VoteRevealed(id, msg.sender, digest);
    }

    /// @notice A voter on the winning side of an escalation collects its share.
    function claimVote(uint256 id) external {
        Escalation storage e = _escalations[id];
        if (_requests[id].phase != Phase.Final || e.challenger == address(0)) revert NothingToClaim(id);
        uint8 side = _voteSide[id][msg.sender];
        uint8 won = e.overturned ? 2 : 1;
        if (side != won || e.voterShare == 0) revert NothingToClaim(id);
        _voteSide[id][msg.sender] = 4;
        _credit(msg.sender, id, e.voterShare, CREDIT_VOTE);
    }

    /// @notice Slash `miner` for an EIP-712 `InferenceResult` signature over `signedDigest` for request
    ///         `id` that differs from what it committed or revealed there. The prover gets
    ///         `BOUNTY_BPS` of the slash; the rest is burned. A batch-committed seat (its leaf is in a
    ///         root, not in the request) is proven with `proveBatchEquivocation`.
    function proveEquivocation(uint256 id, address miner, bytes32 signedDigest, bytes calldata signature) external {
        Request storage q = _requests[id];
        if (q.phase == Phase.None) revert UnknownRequest(id);
        if (q.flags & FLAG_BATCH != 0) revert NoEquivocation(id);
        _checkSigned(id, q, miner, signedDigest, signature);
        uint256 seat = _seatOf(q, miner);
        bytes32 stored = q.digests[seat];
        bool differs;
        if (_revealedSeat(q, seat)) {
            differs = stored != signedDigest;
        } else if (_committedSeat(q, seat)) {
            // `stored` is the commitment, or the revealed digest of a seat already punished by an
            // overturning vote (its revealed bit is cleared): a signature over either is no proof.
            // 0: a batch seat whose root was never opened (audited by timeout): nothing to differ from.
            differs = keccak256(abi.encode(signedDigest, miner, id)) != stored && stored != signedDigest
                && stored != bytes32(0);
        }
        _punishEquivocation(id, q, miner, signedDigest, differs);
    }

    /// @notice `proveEquivocation` for a seat committed in a batch root: `ids` and `leaves` are the
    ///         root's (from `BatchRevealed`, or known to the prover); the leaf of `id` must differ from
    ///         `keccak256(abi.encode(signedDigest, miner, id))`. Valid while the request is in Reveal
    ///         or Final with the root's leaf still binding (not withheld into a single commitment).
    function proveBatchEquivocation(
        uint256 id,
        address miner,
        bytes32 signedDigest,
        bytes calldata signature,
        uint256[] calldata ids,
        bytes32[] calldata leaves
    ) external {
        Request storage q = _requests[id];
        if (q.flags & FLAG_BATCH == 0 || q.assignee0 != miner) revert NoEquivocation(id);
        bool differs = _batchLeafDiffers(id, q.mark, miner, signedDigest, ids, leaves);
        _checkSigned(id, q, miner, signedDigest, signature);
        _punishEquivocation(id, q, miner, signedDigest, differs);
    }

    /// @dev Whether `id`'s leaf in the root `miner` committed at `commitBlock` for `ids` differs from
    ///      the signed digest's leaf (reverts unless `ids`/`leaves` are that root's).
    function _batchLeafDiffers(
        uint256 id,
        uint256 commitBlock,
        address miner,
        bytes32 signedDigest,
        uint256[] calldata ids,
        bytes32[] calldata leaves
    ) internal view returns (bool) {
        if (ids.length != leaves.length) revert LengthMismatch();
        if (_batchRoots[_batchKey(miner, keccak256(abi.encodePacked(ids, leaves)), ids)] != commitBlock) {
            revert CommitmentMismatch(id);
        }
        uint256 j;
        while (j < ids.length && ids[j] != id) ++j;
        if (j == ids.length) revert BadBatch();
        return leaves[j] != keccak256(abi.encode(signedDigest, miner, id));
    }

    function _checkSigned(uint256 id, Request storage q, address miner, bytes32 signedDigest, bytes calldata signature)
        internal
        view
    {
        bytes32 structHash = keccak256(abi.encode(RESULT_TYPEHASH, id, q.inputDigest, signedDigest));
        if (_recover(keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash)), signature) != miner) {
            revert BadSignature();
        }
    }

    function _punishEquivocation(uint256 id, Request storage q, address miner, bytes32 signedDigest, bool differs)
        internal
    {
        bytes32 key = keccak256(abi.encode(id, miner));
        if (!differs || _equivocations[key]) revert NoEquivocation(id);
        _equivocations[key] = true;
        Model memory model = _models[_modelIds[q.modelIndex - 1]];
        uint256 taken = _slash(id, miner, model.minStake, SLASH_EQUIVOCATION);
        uint256 bounty = taken * BOUNTY_BPS / 10_000;
        // A miner whose stake earlier offences took (its open seats are not bounded by its stake)
        // has nothing left to take: refused, so that the prover's estimate fails before it pays gas.
        if (bounty == 0) revert NothingToClaim(id);
        _credit(msg.sender, id, bounty, CREDIT_BOUNTY);
        _burn(id, taken - bounty);
        emit EquivocationProven(id, miner, signedDigest, msg.sender);
    }

    function getEscalation(uint256 id) external view returns (Escalation memory) {
        return _escalations[id];
    }

    function _openAudit(uint256 id, Request storage q) internal {
        uint256 commitBlock = q.mark;
        bytes32 modelId = _modelIds[q.modelIndex - 1];
        Model memory model = _models[modelId];
        bytes32 seed = keccak256(abi.encode(blockhash(commitBlock), id, "auditor"));
        address[] memory exclude = new address[](1);
        exclude[0] = q.assignee0;
        (address[] memory chosen, uint256 got) = _pick(modelId, 1, uint256(seed), commitBlock, exclude);
        if (got == 0) {
            // Nobody can audit: the result goes unaudited, with a fresh reveal window.
            q.flags |= FLAG_NO_AUDIT;
            q.mark = uint40(block.number);
            return;
        }
        uint40 deadline = uint40(block.number + model.timeoutBlocks);
        q.seed = seed;
        q.base = uint48(commitBlock);
        q.more[0] = chosen[0];
        q.seats = 2;
        q.committed = 1;
        q.flags |= FLAG_AUDIT;
        q.phase = Phase.Audit;
        q.mark = deadline;
        emit AuditOpened(id, chosen[0], q.inputDigest, deadline);
    }

    function _resolveAudit(uint256 id, Request storage q) internal {
        Model memory model = _models[_modelIds[q.modelIndex - 1]];
        bytes32 a = q.digests[0];
        bytes32 b = q.digests[1];
        if (a == b || a == UNAVAILABLE || b == UNAVAILABLE) {
            // Agreement, or one side could not fetch the input: the other side's digest stands.
            q.winner = b == UNAVAILABLE ? 1 : (a == UNAVAILABLE ? 2 : 1);
            _finish(id, q, model);
            return;
        }
        bytes32 modelId = _modelIds[q.modelIndex - 1];
        address[] memory exclude = new address[](2);
        exclude[0] = q.assignee0;
        exclude[1] = q.more[0];
        (address[] memory chosen, uint256 got) =
            _pick(modelId, COMMITTEE_SIZE, uint256(keccak256(abi.encode(q.seed, "committee"))), q.base, exclude);
        if (got == 0) {
            _refund(id, q);
            return;
        }
        address[] memory members = new address[](got);
        for (uint256 i; i < got; ++i) {
            members[i] = chosen[i];
            q.more[1 + i] = chosen[i];
        }
        q.seats = uint8(2 + got);
        q.flags |= FLAG_DISPUTE;
        q.phase = Phase.Committee;
        uint40 deadline = uint40(block.number + model.timeoutBlocks);
        q.mark = deadline;
        emit CommitteeOpened(id, q.inputDigest, deadline, members);
    }

    function _resolveCommittee(uint256 id, Request storage q) internal {
        Model memory model = _models[_modelIds[q.modelIndex - 1]];
        uint256 members = q.seats - 2;
        uint256 forA;
        uint256 forB;
        for (uint256 i = 2; i < 2 + members; ++i) {
            if (q.revealed & (1 << i) == 0) continue;
            if (q.digests[i] == q.digests[0]) ++forA;
            else if (q.digests[i] == q.digests[1]) ++forB;
        }
        uint256 need = members / 2 + 1;
        if (forA >= need) q.winner = 1;
        else if (forB >= need) q.winner = 2;
        else {
            _refund(id, q);
            return;
        }
        _provisional(id, q, model, q.digests[q.winner - 1]);
    }

    function _resolveVote(uint256 id, Request storage q, Model memory model) internal {
        Escalation storage e = _escalations[id];
        bool overturned = e.votesAgainst > e.votesFor;
        e.overturned = overturned;
        uint256 pot;
        uint256 winners;
        if (overturned) {
            bytes32 old = q.digests[q.winner - 1];
            uint256 seat = _seatOf(q, e.challenger);
            q.winner = uint8(seat + 1);
            _credit(e.challenger, id, e.bond, CREDIT_BOND);
            // Everyone who revealed the overturned digest forfeits minStake.
            uint256 n = q.seats == 0 ? q.redundancy : q.seats;
            uint256 taken;
            for (uint256 i; i < n; ++i) {
                if (q.revealed & (1 << i) != 0 && q.digests[i] == old) {
                    taken += _slash(id, _seat(q, i), model.minStake, SLASH_FRAUD);
                    q.revealed &= ~uint8(1 << i); // already punished: not again as a minority
                }
            }
            uint256 bounty = taken * BOUNTY_BPS / 10_000;
            if (bounty != 0) _credit(e.challenger, id, bounty, CREDIT_BOUNTY);
            pot = (taken - bounty) * VOTER_BPS / 10_000;
            winners = e.votesAgainst;
            // The rest of the slash goes to the model's audit pool, not the burn: a miner's open seats
            // are not bounded by its stake, so the seats a later vote overturns may have nothing left
            // (earlier offences took it); the pool then tops that vote's pot up to baseFee a winning
            // voter (their three transactions), and no further than it holds.
            uint256 pool = _auditPool[model.index] + (taken - bounty - pot);
            uint256 floor = winners * model.baseFee;
            if (pot < floor) {
                uint256 add = floor - pot < pool ? floor - pot : pool;
                pool -= add;
                pot += add;
            }
            _auditPool[model.index] = pool;
        } else {
            pot = uint256(e.bond) * VOTER_BPS / 10_000;
            _burn(id, e.bond - pot);
            winners = e.votesFor;
        }
        if (winners != 0) {
            uint256 share = pot / winners;
            e.voterShare = uint96(share);
            _burn(id, pot - share * winners);
        } else {
            _burn(id, pot);
        }
        _finish(id, q, model);
    }

    function _recover(bytes32 digest, bytes calldata sig) internal pure returns (address) {
        if (sig.length != 65) revert BadSignature();
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if (uint256(s) > HALF_N || (v != 27 && v != 28)) revert BadSignature();
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert BadSignature();
        return signer;
    }

    /// @dev r > 1: every committed seat revealed, or the reveal deadline passed.
    function _tallyQuorum(uint256 id, Request storage q, uint256 pot) internal {
        uint256 r = q.redundancy;
        (uint256 best, uint256 count) = _plurality(q, 0, r);
        Model memory model = _models[_modelIds[q.modelIndex - 1]];
        if (count < r / 2 + 1) {
            _reassignOrRefund(id, q, model, pot);
            return;
        }
        q.winner = uint8(best + 1);
        bytes32 win = q.digests[best];
        bool dissent;
        for (uint256 i; i < r; ++i) {
            if (q.revealed & (1 << i) != 0 && q.digests[i] != win && q.digests[i] != UNAVAILABLE) dissent = true;
        }
        _burn(id, pot);
        if (dissent) _provisional(id, q, model, win);
        else _finish(id, q, model);
    }
}
