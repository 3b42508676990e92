"""How much work an input document declares: the `maxTokens` a request puts on chain (protocol v2).

The hub prices a request as `baseFee + perTokenFee * maxTokens`, where `maxTokens` is the most
completion tokens the document may make a miner generate, in all. A miner that meets a document
asking for more than was declared answers with a deterministic error document and is still paid,
so the gateway must never declare less than the document allows; declaring more only costs the
requester. The rule, for sequences = prompts x max(n, best_of) (`sequence_count`):

- with `max_tokens`: `max_tokens x sequences`;
- without it: the engine gives each sequence the context that is left, at most
  `default_max_tokens(doc)` (the documents' caps); the gateway cannot count prompt tokens, so it
  declares that cap, or `max_model_len` per sequence when the model's context is known and smaller;
- never above `MAX_DECLARED_TOKENS` (65536, the contract's bound, equal to the documents'
  `MAX_TOTAL_TOKENS`) and never below 1.

Pure and chain-free, next to the documents' caps it depends on, so the gateway, `inferd hub request`
and tests compute the same number.
"""

from __future__ import annotations

from node.content.documents import (
    MAX_TOTAL_TOKENS,
    InputDocument,
    default_max_tokens,
    sequence_count,
)

MAX_DECLARED_TOKENS = 65_536
"""`InferenceHub.MAX_DECLARED_TOKENS`: the largest `maxTokens` a request may declare."""

assert MAX_TOTAL_TOKENS <= MAX_DECLARED_TOKENS  # a valid document always fits one request


def declared_max_tokens(doc: InputDocument, max_model_len: int | None = None) -> int:
    """The `maxTokens` to declare on chain for `doc` (see the module docstring)."""
    sequences = sequence_count(doc)
    per_sequence = doc.params.max_tokens
    if per_sequence is None:
        per_sequence = default_max_tokens(doc)
        if max_model_len is not None:
            per_sequence = min(per_sequence, max_model_len)
    return max(1, min(MAX_DECLARED_TOKENS, per_sequence * sequences))


AUDIT_MARGIN = 2
"""`InferenceHub.AUDIT_MARGIN`: how many times over an audit must make cheating lose money."""


def audit_inequality_holds(min_stake: int, base_fee: int, per_token_fee: int, audit_bps: int) -> bool:
    """`registerModel`'s rule for r = 1 models: with audits at `audit_bps`, a cheater loses more
    (`min_stake`, when caught) than it gains (at most the largest price) by `AUDIT_MARGIN` times:
    `auditBps * minStake >= AUDIT_MARGIN * (10_000 - auditBps) * (baseFee + perTokenFee * 65536)`."""
    max_price = base_fee + per_token_fee * MAX_DECLARED_TOKENS
    return audit_bps > 0 and audit_bps * min_stake >= AUDIT_MARGIN * (10_000 - audit_bps) * max_price


def request_price(base_fee: int, per_token_fee: int, max_tokens: int) -> int:
    """`InferenceHub.price`: what a request declaring `max_tokens` must pay, exactly."""
    if not 1 <= max_tokens <= MAX_DECLARED_TOKENS:
        raise ValueError(f"maxTokens must be 1..{MAX_DECLARED_TOKENS}, got {max_tokens}")
    return base_fee + per_token_fee * max_tokens


__all__ = [
    "AUDIT_MARGIN",
    "MAX_DECLARED_TOKENS",
    "audit_inequality_holds",
    "declared_max_tokens",
    "request_price",
]
