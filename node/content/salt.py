"""Salts for private documents, so that nothing guessable is hashed on chain.

The chain holds each document's sha256 (its CID), readable by anyone. A private input such as
"is this email spam? ..." or an answer such as `"yes"` could be confirmed by hashing guesses, so a
private input document carries a random 256-bit `salt` (`private_salt()`, chosen by the requester)
and its output document a salt every honest miner derives from it (`output_salt(input_salt)` =
HMAC-SHA256(key = the input salt's 32 bytes, message = `b"inferd-output-salt"`), hex). An output
salt is needed although the output names its `input_cid`: that CID is public (it is the input
digest on chain), so without a salt of its own a short answer would be guessable from it. Because
the output salt is a function of the decrypted input, every miner, auditor and committee member
writes the same output bytes, so quorum and audits compare digests as before, and only those who
could decrypt the input can recompute it.

**How to add `salt` to the version-3 documents** (`node.content.documents`, for the lead):

* `ChatInputDocument` and `CompletionInputDocument`: an optional field `salt: str | None = None`,
  v3 only, validated with `is_salt` (64 lowercase hex digits; a `DocumentError` naming `salt`
  otherwise). None is omitted, so a public document keeps its bytes and CID; a private one (sealed
  with `node.content.envelope.seal`) must carry one, which the gateway sets with `private_salt()`.
  It is not a sampling parameter: the engine never sees it, but it is part of the input digest, so
  the default seed derived from that digest differs per request, deterministically.
* `OutputDocument`: an optional `salt: str | None = None`, written by the miner as
  `output_salt(input.salt)` exactly when the input has a salt (also on an error output for a
  readable input). An input that could not be decrypted or parsed has no salt to derive from; its
  error output is public anyway (it holds no prompt text).
* The on-chain digests stay those of the plaintext (salted) documents, which is what miners sign
  and compare; the sealed envelopes are stored alongside under their own CIDs (envelopes are
  randomized, so two miners' sealed outputs never match byte for byte).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

SALT_BYTES: Final = 32
OUTPUT_SALT_MESSAGE: Final = b"inferd-output-salt"
_SALT = re.compile(r"[0-9a-f]{64}")


class InvalidSalt(ValueError):
    """A salt that is not 32 bytes as 64 lowercase hex digits."""


def is_salt(value: object) -> bool:
    """Whether `value` is a salt as documents carry it: 64 lowercase hex digits, no `0x`."""
    return isinstance(value, str) and _SALT.fullmatch(value) is not None


def private_salt() -> str:
    """A fresh random salt for a private input document (32 bytes from the OS CSPRNG, hex)."""
    return secrets.token_hex(SALT_BYTES)


def output_salt(input_salt: str) -> str:
    """The output document's salt, derived from its input's: the same on every honest miner."""
    if not is_salt(input_salt):
        raise InvalidSalt("a document salt is 64 lowercase hex digits (32 bytes), without 0x")
    key = bytes.fromhex(input_salt)
    return hmac.new(key, OUTPUT_SALT_MESSAGE, hashlib.sha256).hexdigest()


__all__ = ["OUTPUT_SALT_MESSAGE", "SALT_BYTES", "InvalidSalt", "is_salt", "output_salt", "private_salt"]
