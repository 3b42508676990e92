"""Private prompts end to end: added latency (p50) and bytes per request on a fake-engine devnet.

Starts `inferd devnet up --fake-engine --miners M` in a temporary directory, then sends N chat
completions alternating `extra_body={"private": true}` and `{"private": false}` (same prompt shape,
max_tokens 8) through the openai SDK, one at a time. For each kind it reports the p50 wall time of
a request (submit to verified answer: dominated by the chain's blocks, so the difference is the
cost of privacy: sealing after assignment, the seats' envelope fetch, opening), the bytes the
request added to the content store (input and output blocks, or envelopes) and the MQTT bytes a
gateway login saw for it (results and deltas; heartbeats excluded).

    .venv/bin/python tests/bench/privacy_e2e.py [--requests N] [--miners M]

Prints one JSON line: {"private": {...}, "public": {...}, "added_p50_ms": ..., "requests": N}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.devnet_cli import devnet, info_of
from tests.integration.test_private_prompts import MqttSpy, _gateway_login


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--miners", type=int, default=1)
    args = parser.parse_args()
    from openai import OpenAI

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "devnet"
        up = devnet(
            "up",
            "--detach",
            "--fake-engine",
            "--miners",
            str(args.miners),
            "--data-dir",
            str(data_dir),
            timeout=300,
        )
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        try:
            info = info_of(data_dir)
            content_dir = data_dir / "blocks"  # the store gateway and miners share (node.devnet.layout)
            client = OpenAI(
                base_url=info["openai_base_url"], api_key=info["api_key"], max_retries=0, timeout=120
            )
            stats: dict[str, dict[str, list[float]]] = {
                k: {"ms": [], "store": [], "mqtt": []} for k in ("private", "public")
            }
            with MqttSpy(info["broker_url"], *_gateway_login(data_dir)) as spy:
                for i in range(args.requests):
                    kind = "private" if i % 2 == 0 else "public"
                    before = _bytes_under(content_dir)
                    t0 = time.perf_counter()
                    reply = client.chat.completions.create(
                        model=info["model"],
                        messages=[{"role": "user", "content": f"question {i}: " + "x" * 200}],
                        max_tokens=8, extra_body={"private": kind == "private"},
                    )  # fmt: skip
                    stats[kind]["ms"].append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.5)  # the seats' writes and MQTT results land
                    stats[kind]["store"].append(_bytes_under(content_dir) - before)
                    rid = (reply.model_extra or {})["onchain_data"]["request_id"]
                    stats[kind]["mqtt"].append(
                        sum(len(p) for t, p in list(spy.payloads) if f"/req/{rid}/" in t)
                    )
            result: dict[str, Any] = {"requests": args.requests, "miners": args.miners}
            for kind, s in stats.items():
                result[kind] = {
                    "latency_ms_p50": round(statistics.median(s["ms"]), 1),
                    "store_bytes_per_request": int(statistics.median(s["store"])),
                    "mqtt_bytes_per_request": int(statistics.median(s["mqtt"])),
                }
            result["added_p50_ms"] = round(
                result["private"]["latency_ms_p50"] - result["public"]["latency_ms_p50"], 1
            )
            print(json.dumps(result))
        finally:
            devnet("down", "--data-dir", str(data_dir), timeout=180)


if __name__ == "__main__":
    main()
