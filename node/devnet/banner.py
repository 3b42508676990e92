"""What `inferd devnet up` prints once the devnet is ready: its endpoints, and examples to paste."""

from __future__ import annotations

import json
from typing import Any


def examples(info: dict[str, Any]) -> str:
    """Ready-to-paste curl and openai SDK snippets for a running devnet."""
    base, key, model = info["gateway_url"], info["api_key"], info["model"]
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello in five words."}],
            "max_tokens": 32,
        }
    )
    return f"""\
curl -s {base}/v1/chat/completions \\
  -H "Authorization: Bearer {key}" \\
  -H "Content-Type: application/json" \\
  -d '{body}'

python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{key}")
reply = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Say hello in five words."}}],
    max_tokens=32,
)
print(reply.choices[0].message.content)
print(reply.model_extra["onchain_data"])  # request id, transactions, CIDs, assigned miners
EOF"""


def banner(info: dict[str, Any]) -> str:
    """The ready message: every endpoint, the API key, where the logs are, then `examples`."""
    miners = info.get("miners", [])
    lines = [
        f"inferd devnet ready in {info.get('startup_s', '?')} s  (data dir {info['data_dir']})",
        "",
        f"  gateway   {info['gateway_url']}   (OpenAI base_url {info['gateway_url']}/v1)",
        f"  api key   {info['api_key']}",
        f"  chain     {info['rpc_url']}   chain id {info['chain_id']}   hub {info['hub']}",
        f"  model     {info['model']}   redundancy {info['redundancy']}",
        f"  broker    {info['broker_url']}",
    ]
    for m in miners:
        lines.append(f"  {m['name']:<9} {m['address']}   metrics {m['metrics_url']}")
    lines += [
        "",
        f"  logs      {info['logs']}",
        f"  miner CLI inferd --config {miners[0]['config']} miner status" if miners else "",
        "",
        "Try it:",
        "",
        examples(info),
        "",
    ]
    return "\n".join(lines)


__all__ = ["banner", "examples"]
