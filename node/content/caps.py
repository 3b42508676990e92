"""The protocol caps: how much work one input document may ask for.

They are part of the input format (a document over a cap is invalid, the same on every node), and
both the document models (`node.content.input_parts`, `node.content.documents`) and the engine's
checks read them, so they live apart from either. `node.content.documents`' docstring says why
each value is what it is; changing one changes which documents are valid.
"""

from __future__ import annotations

MAX_N = 8
MAX_BEST_OF = 8
MAX_PROMPTS = 16
MAX_SEQUENCES = 32
MAX_TOKENS = 32768
MAX_TOTAL_TOKENS = 65536
MAX_MESSAGES = 1024
MAX_CONTENT_PARTS = 64
MAX_TOOLS = 128
MAX_STOP = 4
MAX_STOP_CHARS = 1024
MAX_LOGIT_BIAS = 300
MAX_PROMPT_TOKEN_IDS = 131072
MAX_SCHEMA_BYTES = 65536
MAX_SCHEMA_PROPERTIES = 5000
MAX_SCHEMA_ENUM_VALUES = 1000


__all__ = [
    "MAX_BEST_OF",
    "MAX_CONTENT_PARTS",
    "MAX_LOGIT_BIAS",
    "MAX_MESSAGES",
    "MAX_N",
    "MAX_PROMPTS",
    "MAX_PROMPT_TOKEN_IDS",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_ENUM_VALUES",
    "MAX_SCHEMA_PROPERTIES",
    "MAX_SEQUENCES",
    "MAX_STOP",
    "MAX_STOP_CHARS",
    "MAX_TOKENS",
    "MAX_TOOLS",
    "MAX_TOTAL_TOKENS",
]
