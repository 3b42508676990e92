"""An input document made ready for vLLM: validated, rendered, tokenized, its sampling fixed (`Job`).

Preparation is the part of a request that depends only on the input and the model (its tokenizer,
chat template, harmony format, fill-in-the-middle tokens, context length), never on vLLM's state, so
it runs off the event loop (`Engine` hands `Preparer.prepare` to a one-thread executor: rendering
and tokenizing a 1 MiB input takes seconds) and every refusal here is a deterministic `ParamError`
answer. It also decides how the output will be read back (`ParseMode`, see `tool_calls`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from node.content.cid import cid_to_digest, digest_of
from node.content.documents import (
    ChatInputDocument,
    ChatParams,
    CompletionInputDocument,
    InputDocument,
    JsonSchemaFormat,
    NamedToolChoice,
    OutputObject,
    default_max_tokens,
    load_json,
    to_canonical_bytes,
    validate_input_document,
)
from node.content.errors import ContentError
from node.engine import chat
from node.engine.params import (
    ParamError,
    SamplingSpec,
    chat_sampling,
    check_echo_logprobs,
    check_forced_schema,
    check_schema_bounds,
    completion_sampling,
    seed_from_digest,
)

FIM_SPELLINGS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
)

ParseMode = Literal["plain", "tools", "forced", "harmony"]


@dataclass
class Job:
    """One validated input, rendered and mapped: what is handed to vLLM and how to read it back."""

    doc: InputDocument
    digest: bytes
    prompts: list[list[int]]
    prompt_texts: list[str]
    spec: SamplingSpec
    mode: ParseMode = "plain"
    tool_names: set[str] = field(default_factory=set)
    echo: bool = False
    want_logprobs: bool = False
    schema_param: str = "tools"  # the parameter a refused grammar came from
    single_call: bool = False  # parallel_tool_calls false: at most one tool call per choice

    @property
    def is_chat(self) -> bool:
        return isinstance(self.doc, ChatInputDocument)

    @property
    def object(self) -> OutputObject:
        return "chat.completion" if self.is_chat else "text_completion"


def object_of(raw: Any) -> OutputObject:
    """The output `object` for an input that failed validation: by its `type` when readable."""
    if isinstance(raw, bytes):
        try:
            raw = load_json(raw)
        except ContentError:
            return "error"
    kind = raw.get("type") if isinstance(raw, Mapping) else getattr(raw, "type", None)
    return {"chat": "chat.completion", "completion": "text_completion"}.get(str(kind), "error")  # type: ignore[return-value]


def validate(raw: InputDocument | bytes | Mapping[str, Any]) -> InputDocument:
    """The input document (bytes and mappings are parsed and validated; documents pass as they are)."""
    if isinstance(raw, ChatInputDocument | CompletionInputDocument):
        return raw
    obj = load_json(raw) if isinstance(raw, bytes) else raw
    return validate_input_document(obj)


def input_digest(input_cid: str, doc: InputDocument) -> bytes:
    """The digest the default seed comes from: the CID's, else the canonical bytes' own."""
    try:
        return cid_to_digest(input_cid)
    except ContentError:
        return digest_of(to_canonical_bytes(doc))


def response_format_grammar(params: ChatParams) -> tuple[dict[str, Any] | None, bool]:
    """`response_format` as structured outputs: (JSON schema, json_object); bounded like forced calls."""
    fmt = params.response_format
    if fmt is None:
        return None, False
    if isinstance(fmt, JsonSchemaFormat) and fmt.json_schema.schema_ is not None:
        schema = dict(fmt.json_schema.schema_)
        check_schema_bounds(schema, "the response_format schema", "response_format")
        return schema, False
    return None, True  # json_object, or json_schema without a schema: any JSON object


class Preparer:
    """Turns input documents into `Job`s for one model (see module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        template: str | None,
        harmony: Any,
        max_model_len: int,
        vocab_size: int,
        tool_skip_special: bool,
    ) -> None:
        """`tool_skip_special`: the tool parser reads text without special tokens (`tool_calls`)."""
        self.tokenizer = tokenizer
        self.template = template
        self.harmony = harmony
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.tool_skip_special = tool_skip_special
        self.special = {
            name: str(tok)
            for name in ("bos_token", "eos_token", "pad_token", "unk_token")
            if isinstance(tok := getattr(tokenizer, name, None), str)
        }
        vocab = tokenizer.get_vocab()
        self.fim = next((s for s in FIM_SPELLINGS if all(t in vocab for t in s)), None)

    def prepare(self, doc: InputDocument, digest: bytes) -> Job:
        default_seed = seed_from_digest(digest)
        if isinstance(doc, ChatInputDocument):
            return self.prepare_chat(doc, digest, default_seed)
        return self.prepare_completion(doc, digest, default_seed)

    def prepare_chat(self, doc: ChatInputDocument, digest: bytes, default_seed: int) -> Job:
        params = doc.params
        tools = params.tools or []
        stop_ids: list[int] = []
        mode: ParseMode = "plain"
        schema = None
        json_object = False
        schema_param = "tools"
        if self.harmony is not None:
            if params.response_format is not None:
                raise ParamError(
                    "unsupported_parameter",
                    "this model's harmony format cannot be held to a response format yet",
                    "response_format",
                )
            ids = self.harmony.render(doc)
            stop_ids = self.harmony.stop_token_ids()
            mode = "harmony"
        else:
            if params.reasoning_effort is not None:
                raise ParamError(
                    "unsupported_parameter", "this model is not a reasoning model", "reasoning_effort"
                )
            if self.template is None:
                raise ParamError(
                    "unsupported_model", "this model has no chat template; use completions", "messages"
                )
            text = chat.render_chat(doc, self.template, special_tokens=self.special)
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            if chat.tools_active(doc):
                if params.tool_choice == "required" or isinstance(params.tool_choice, NamedToolChoice):
                    mode = "forced"
                    schema = chat.forced_call_schema(tools, params.tool_choice)
                    check_forced_schema(schema)
                else:
                    mode = "tools"
            else:
                schema, json_object = response_format_grammar(params)
                schema_param = "response_format"
        spec = chat_sampling(
            params,
            prompt_tokens=len(ids),
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            default_seed=default_seed,
            default_max_tokens=default_max_tokens(doc),
            json_schema=schema,
            json_object=json_object,
            stop_token_ids=stop_ids,
            skip_special_tokens=mode != "harmony" and (mode != "tools" or self.tool_skip_special),
        )
        return Job(
            doc=doc,
            digest=digest,
            prompts=[ids],
            prompt_texts=[""],
            spec=spec,
            mode=mode,
            tool_names={t.function.name for t in tools},
            want_logprobs=bool(params.logprobs),
            schema_param=schema_param,
            single_call=params.parallel_tool_calls is False,
        )

    def prepare_completion(self, doc: CompletionInputDocument, digest: bytes, default_seed: int) -> Job:
        params = doc.params
        prompt = doc.prompt
        if isinstance(prompt, str):
            items: list[str | list[int]] = [prompt]
        elif all(isinstance(p, int) for p in prompt):
            items = [[int(p) for p in prompt]]  # type: ignore[arg-type]
        else:
            items = list(prompt)  # type: ignore[arg-type]
        if params.suffix is not None:
            if self.fim is None:
                raise ParamError(
                    "unsupported_parameter",
                    "this model has no fill-in-the-middle tokens, so it cannot use a suffix",
                    "suffix",
                )
            if not all(isinstance(p, str) for p in items):
                raise ParamError(
                    "unsupported_parameter", "suffix needs text prompts, not token ids", "suffix"
                )
            pre, suf, mid = self.fim
            items = [f"{pre}{p}{suf}{params.suffix}{mid}" for p in items]
        prompts: list[list[int]] = []
        texts: list[str] = []
        for item in items:
            if isinstance(item, str):
                prompts.append(list(self.tokenizer.encode(item, add_special_tokens=True)))
                texts.append(item)
            else:
                bad = [t for t in item if t >= self.vocab_size]
                if bad:
                    raise ParamError(
                        "invalid_request", f"token id {bad[0]} is outside the vocabulary", "prompt"
                    )
                prompts.append(item)
                texts.append(str(self.tokenizer.decode(item)))
        if params.echo and params.logprobs is not None:
            check_echo_logprobs([len(p) for p in prompts])
        longest = max(len(p) for p in prompts)
        try:
            spec = completion_sampling(
                params,
                prompt_tokens=longest,
                max_model_len=self.max_model_len,
                vocab_size=self.vocab_size,
                default_seed=default_seed,
                default_max_tokens=default_max_tokens(doc),
            )
        except ParamError as exc:
            if exc.param == "messages":
                exc = ParamError(exc.code, exc.message.removeprefix("messages: "), "prompt")
            raise exc from None
        return Job(
            doc=doc,
            digest=digest,
            prompts=prompts,
            prompt_texts=texts,
            spec=spec,
            echo=bool(params.echo),
            want_logprobs=params.logprobs is not None,
        )


__all__ = [
    "FIM_SPELLINGS",
    "Job",
    "ParseMode",
    "Preparer",
    "input_digest",
    "object_of",
    "response_format_grammar",
    "validate",
]
