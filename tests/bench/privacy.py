"""Private prompts: the cost of sealing and opening envelopes, and their size overhead.

For 1 KiB, 64 KiB and 1 MiB documents (random printable JSON-ish bytes) sealed to 1 and 3
recipients (real secp256k1 keys), measures the median (p50) wall time of `seal` and of one
recipient's `open_envelope`, and the envelope's bytes over the plaintext (base64's 4/3 plus ~240
bytes per recipient plus a fixed header). A 1 MiB document's envelope does not fit one 1 MiB block
(see `node.content.envelope`), so the 1 MiB case is sealed with the gate's limit instead and reported
with `fits_block: false`; `max_plaintext_<n>` is the largest document that fits for n recipients.

    .venv/bin/python tests/bench/privacy.py [--runs N]

Prints one JSON line: {"<size>_<n>r": {"seal_ms_p50", "open_ms_p50", "envelope_bytes",
"overhead_bytes", "overhead_ratio", "fits_block"}, ..., "max_plaintext_1": ..., "max_plaintext_3": ...}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eth_account import Account

from node.chain.pubkeys import public_key_of
from node.content.envelope import ENVELOPE_LIMITS, max_plaintext_bytes, open_envelope, seal
from node.content.errors import MAX_DOCUMENT_BYTES

SIZES = {"1KiB": 1 << 10, "64KiB": 64 << 10, "1MiB": 1 << 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    keys = ["0x" + hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(3)]
    addresses = [Account.from_key(k).address for k in keys]
    rng = random.Random(16)
    result: dict[str, object] = {}
    for label, size in SIZES.items():
        plaintext = bytes(rng.randrange(32, 127) for _ in range(size))
        for count in (1, 3):
            recipients = {addresses[i]: public_key_of(keys[i]) for i in range(count)}
            seal_s, open_s = [], []
            envelope = b""
            for _ in range(args.runs):
                start = time.perf_counter()
                envelope = seal(plaintext, recipients, max_bytes=ENVELOPE_LIMITS.max_bytes)
                seal_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                opened = open_envelope(envelope, keys[0], addresses[0])
                open_s.append(time.perf_counter() - start)
                assert opened == plaintext
            result[f"{label}_{count}r"] = {
                "seal_ms_p50": round(statistics.median(seal_s) * 1000, 3),
                "open_ms_p50": round(statistics.median(open_s) * 1000, 3),
                "envelope_bytes": len(envelope),
                "overhead_bytes": len(envelope) - size,
                "overhead_ratio": round(len(envelope) / size, 4),
                "fits_block": len(envelope) <= MAX_DOCUMENT_BYTES,
            }
    result["max_plaintext_1"] = max_plaintext_bytes(1)
    result["max_plaintext_3"] = max_plaintext_bytes(3)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
