"""gpt-oss's harmony format via `openai_harmony`: chat rendering, output parsing, offline vocabulary.

openai_harmony tokenizes with tiktoken's `o200k_base` ranks, which it would download on first use.
Nothing may be downloaded at run time, so `install_o200k_vocab` builds the ranks file once (during
setup) from the npm registry package `tiktoken` (it ships `encoders/o200k_base.json`, the ranks in
js-tiktoken's compact form), re-encodes it in tiktoken's `.tiktoken` format, checks the sha256 that
tiktoken publishes for that file, and stores it in the cache. `use_o200k_vocab` points
`TIKTOKEN_ENCODINGS_BASE` at it; openai_harmony then reads the file (and checks the hash itself).

Rendering: system/developer messages become the developer instructions, tools the developer's
function tools, earlier tool calls `commentary` messages to `functions.NAME`, tool results messages
from `functions.NAME`. Parsing: `analysis` is reasoning, `final` the content, a message to
`functions.NAME` a tool call. The system message carries no date (determinism) and the document's
`reasoning_effort` (low / medium / high; harmony's own default when absent).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.content.documents import (
    AssistantMessage,
    ChatInputDocument,
    DeveloperMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from node.engine.chat import ParsedOutput, content_text, too_deep, tools_active
from node.engine.model_fetch import default_cache_root

O200K_FILE = "o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # tiktoken's published hash
O200K_NPM_PACKAGE = "tiktoken@1.0.22"
O200K_NPM_MEMBER = "package/encoders/o200k_base.json"
FUNCTIONS = "functions."


class HarmonyVocabError(Exception):
    """The o200k_base vocabulary is missing or does not match tiktoken's published hash."""


def default_vocab_dir() -> Path:
    """Where the verified ranks file lives: beside the model cache."""
    return default_cache_root().parent / "tiktoken"


def tiktoken_file_from_js_ranks(data: dict[str, Any]) -> bytes:
    """js-tiktoken's compact ranks (`"! <offset> tok tok ..."` lines) as a `.tiktoken` file.

    Each line of `bpe_ranks` gives a starting rank and base64 tokens with consecutive ranks; the
    `.tiktoken` format is one `base64 rank` line per token, in rank order.
    """
    ranks: dict[str, int] = {}
    for line in str(data["bpe_ranks"]).split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        offset = int(parts[1])
        for i, token in enumerate(parts[2:]):
            base64.b64decode(token, validate=True)  # garbage in the package must not pass silently
            ranks[token] = offset + i
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    return "".join(f"{token} {rank}\n" for token, rank in ordered).encode()


def _npm_member(package: str, member: str) -> bytes:
    """One file from an npm registry package, fetched with `npm pack` (the ordinary client)."""
    import tarfile

    with tempfile.TemporaryDirectory(prefix="inferd-npm-") as tmp:
        proc = subprocess.run(
            ["npm", "pack", package, "--silent", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise HarmonyVocabError(f"npm pack {package} failed: {proc.stderr.strip()[-1000:]}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise HarmonyVocabError(f"npm pack {package} produced no tarball")
        with tarfile.open(tarballs[0]) as tar:
            fh = tar.extractfile(member)
            if fh is None:
                raise HarmonyVocabError(f"{package} has no {member}")
            return fh.read()


def install_o200k_vocab(dest_dir: Path | None = None, *, source_json: Path | None = None) -> Path:
    """Build, verify and store `o200k_base.tiktoken` (idempotent); its path.

    `source_json` is a local copy of the npm package's `o200k_base.json`; without it `npm pack`
    fetches the package from the registry.
    """
    dest = (dest_dir or default_vocab_dir()) / O200K_FILE
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == O200K_SHA256:
        return dest
    raw = source_json.read_bytes() if source_json else _npm_member(O200K_NPM_PACKAGE, O200K_NPM_MEMBER)
    data = tiktoken_file_from_js_ranks(json.loads(raw))
    got = hashlib.sha256(data).hexdigest()
    if got != O200K_SHA256:
        raise HarmonyVocabError(
            f"o200k_base built from {O200K_NPM_PACKAGE} has sha256 {got}, expected {O200K_SHA256}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def use_o200k_vocab(vocab_dir: Path | None = None) -> Path:
    """Point openai_harmony at the verified local ranks; HarmonyVocabError if absent or altered."""
    path = (vocab_dir or default_vocab_dir()) / O200K_FILE
    if not path.is_file():
        raise HarmonyVocabError(
            f"{path} is missing: run `inferd model fetch-default` (it installs the vocabulary)"
        )
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != O200K_SHA256:
        raise HarmonyVocabError(f"{path} has sha256 {got}, expected {O200K_SHA256}")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(path.parent)
    return path


def _args_text(arguments: str) -> str:
    if too_deep(arguments):  # never handed to json: the miner's raised recursion limit means SIGSEGV
        return arguments
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except (ValueError, RecursionError):  # arguments written by a requester or the model: any text
        return arguments


class HarmonyFormat:
    """Render chat inputs to harmony tokens and parse completions back; needs the o200k vocab."""

    def __init__(self, encoding: Any) -> None:
        self._enc = encoding

    @classmethod
    def load(cls, vocab_dir: Path | None = None) -> HarmonyFormat:
        """Load the gpt-oss encoding from the verified local vocabulary (never downloads)."""
        use_o200k_vocab(vocab_dir)
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding

        return cls(load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS))

    def messages(self, doc: ChatInputDocument) -> list[Any]:
        """The harmony messages (system, developer, conversation) for a chat input."""
        from openai_harmony import (
            Author,
            DeveloperContent,
            Message,
            Role,
            SystemContent,
            ToolDescription,
        )

        system = SystemContent.new()
        if doc.params.reasoning_effort is not None:
            from openai_harmony import ReasoningEffort

            system = system.with_reasoning_effort(ReasoningEffort(doc.params.reasoning_effort.capitalize()))
        out: list[Any] = [Message.from_role_and_content(Role.SYSTEM, system)]
        instructions = [
            content_text(m.content) for m in doc.messages if isinstance(m, SystemMessage | DeveloperMessage)
        ]
        developer = DeveloperContent.new()
        if instructions:
            developer = developer.with_instructions("\n\n".join(instructions))
        if tools_active(doc):
            developer = developer.with_function_tools(
                [
                    ToolDescription.new(
                        t.function.name, t.function.description or "", parameters=t.function.parameters
                    )
                    for t in doc.params.tools or []
                ]
            )
        if instructions or tools_active(doc):
            out.append(Message.from_role_and_content(Role.DEVELOPER, developer))
        call_names: dict[str, str] = {}
        for m in doc.messages:
            if isinstance(m, UserMessage):
                out.append(Message.from_role_and_content(Role.USER, content_text(m.content)))
            elif isinstance(m, AssistantMessage):
                if m.content is not None:
                    text = content_text(m.content)
                    out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final"))
                for call in m.tool_calls or []:
                    call_names[call.id] = call.function.name
                    out.append(
                        Message.from_role_and_content(Role.ASSISTANT, _args_text(call.function.arguments))
                        .with_channel("commentary")
                        .with_recipient(FUNCTIONS + call.function.name)
                        .with_content_type("<|constrain|>json")
                    )
            elif isinstance(m, ToolMessage):
                name = call_names.get(m.tool_call_id, "unknown")
                out.append(
                    Message.from_author_and_content(
                        Author.new(Role.TOOL, FUNCTIONS + name), content_text(m.content)
                    )
                    .with_channel("commentary")
                    .with_recipient("assistant")
                )
        return out

    def render(self, doc: ChatInputDocument) -> list[int]:
        """Prompt token ids ending with the assistant's turn header."""
        from openai_harmony import Conversation, Role

        conversation = Conversation.from_messages(self.messages(doc))
        return list(self._enc.render_conversation_for_completion(conversation, Role.ASSISTANT))

    def stop_token_ids(self) -> list[int]:
        """`<|return|>` and `<|call|>`: the assistant finished or called a tool."""
        return list(self._enc.stop_tokens_for_assistant_actions())

    def parse(self, token_ids: Sequence[int], tool_names: set[str] | None = None) -> ParsedOutput:
        """Split completion tokens into reasoning, final content and tool calls (partial-safe)."""
        from openai_harmony import Role, StreamableParser

        parser = StreamableParser(self._enc, Role.ASSISTANT)
        for tok in token_ids:
            parser.process(tok)
        items: list[tuple[str | None, str | None, str]] = [
            (msg.channel, msg.recipient, "".join(getattr(c, "text", "") for c in msg.content))
            for msg in parser.messages
        ]
        if parser.current_content:  # cut off by max_tokens: keep what was generated
            items.append((parser.current_channel, parser.current_recipient, parser.current_content))
        reasoning: list[str] = []
        content: list[str] = []
        calls: list[tuple[str, str]] = []
        for channel, recipient, text in items:
            if recipient and recipient.startswith(FUNCTIONS):
                name = recipient[len(FUNCTIONS) :]
                if tool_names is None or name in tool_names:
                    calls.append((name, _args_text(text)))
                    continue
            if channel == "analysis":
                reasoning.append(text)
            elif channel in ("final", None):
                content.append(text)
        return ParsedOutput(
            content="".join(content) if content else None,
            tool_calls=calls,
            reasoning="".join(reasoning) if reasoning else None,
        )


__all__ = [
    "O200K_SHA256",
    "HarmonyFormat",
    "HarmonyVocabError",
    "default_vocab_dir",
    "install_o200k_vocab",
    "tiktoken_file_from_js_ranks",
    "use_o200k_vocab",
]
