"""Settings for every component, from CLI flags, `INFERD_*` env vars, a TOML file and defaults.

Precedence is CLI > env > secret files (`secrets_dirs`) > file > defaults. Nested fields use `__`
in env names, e.g. `INFERD_CHAIN__RPC_URL`; the TOML file has one table per component (`[chain]`,
`[engine]`, ...).
Secrets are `SecretStr` so that dumping settings never prints them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_DATA_DIR = Path.home() / ".inferd"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ChainSettings(BaseModel):
    """Where the hub lives and which key signs transactions."""

    rpc_url: str = "http://127.0.0.1:8545"
    ws_url: str | None = None
    chain_id: int | None = None
    hub_address: str | None = None
    private_key: SecretStr | None = None
    keystore_path: Path | None = None
    keystore_password: SecretStr | None = None
    confirmations: int = Field(default=0, ge=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    log_range_blocks: int = Field(default=1000, ge=1)
    gas_margin: float = Field(default=1.2, ge=1.0)
    rpc_timeout_s: float = Field(default=30.0, gt=0)


class ContentSettings(BaseModel):
    """Which content backend stores and serves documents."""

    backend: Literal["local", "kubo", "gateway"] = "local"
    path: Path | None = None
    kubo_api: str | None = None
    gateway_urls: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)


class EngineSettings(BaseModel):
    """How vLLM is started; `dtype="auto"` means float32 on the CPU (deterministic), bf16 on GPUs."""

    model: str = DEFAULT_MODEL_NAME
    model_path: Path | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=2048, ge=64)
    max_num_seqs: int = Field(default=64, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    cpu_kvcache_gib: float = Field(default=2.0, gt=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    batch_invariant: bool = True
    seed: int = 0
    tool_parser: str = Field(default="auto", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """vLLM's tool-call parser for this model (`hermes`, `llama3_json`, `mistral`, `qwen3_coder`,
    `pythonic` ...); `auto` picks one from the chat template, hermes by default. gpt-oss always
    uses harmony. Every miner serving a model must use the same value: it shapes the output."""
    vllm_args: dict[str, JsonValue] = Field(default_factory=dict)
    """Passed to vLLM's `AsyncEngineArgs` unchanged (`quantization`, `kv_cache_dtype`,
    `pipeline_parallel_size`, `distributed_executor_backend`, ...); checked at start, see
    `node.engine.engine_args`. Output-affecting ones become part of the engine class."""
    allow_nondeterministic: bool = False
    """Allow `vllm_args` that make outputs batch-dependent (prefix caching, chunked prefill,
    speculative decoding); the engine class then says `batch_invariant=0`."""


class StreamSettings(BaseModel):
    """The MQTT broker used for live token deltas and heartbeats (optional fast path)."""

    enabled: bool = True
    broker_url: str = "mqtt://127.0.0.1:1883"
    heartbeat_s: float = Field(default=10.0, gt=0)
    username: str | None = None
    password: SecretStr | None = None


class MinerModelSettings(BaseModel):
    """One `[[miner.models]]` entry: one more model served by this box, with its own key.

    The hub registers an address for exactly one model, so several models per box means several
    keys: each entry names its key (`private_key`, `private_key_file`, or `keystore_path` +
    `keystore_password`; none: `[chain]`'s), its `[engine]` overrides and its journal. `name` labels
    the entry in metrics (`model="..."`), `/healthz`, `inferd miner status` and the default journal
    file `journal-<name>.sqlite`; the on-chain model is the one the key is registered for.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    engine: dict[str, JsonValue] = Field(default_factory=dict)
    """Fields of `[engine]` to change for this entry (`model`, `model_path`, `vllm_args`, ...);
    a field given here replaces `[engine]`'s whole value (`vllm_args` is not merged key by key)."""
    private_key: SecretStr | None = None
    private_key_file: Path | None = None
    """A file holding the hex private key (e.g. `/run/secrets/miner_b_key`), read at start."""
    keystore_path: Path | None = None
    keystore_password: SecretStr | None = None
    journal_path: Path | None = None
    stream_username: str | None = None
    """This entry's MQTT login (the broker accepts a miner's publications under its own address
    only, so the username is this entry's checksummed address); None: `[stream]`'s."""
    stream_password: SecretStr | None = None

    @field_validator("engine")
    @classmethod
    def _engine_fields(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        unknown = sorted(set(value) - set(EngineSettings.model_fields))
        if unknown:
            raise ValueError(
                f"unknown [engine] field(s) {unknown}: expected some of {sorted(EngineSettings.model_fields)}"
            )
        return value


class MinerSettings(BaseModel):
    """The miner daemon's pipeline limits and ops endpoints."""

    max_concurrency: int = Field(default=64, ge=1)
    batch_max: int = Field(default=32, ge=1)
    batch_wait_s: float = Field(default=0.5, ge=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    journal_path: Path | None = None
    envelope_urls: list[str] = Field(default_factory=list)
    """Gateways whose `GET /envelope/{input_cid}` serves sealed private inputs (issue 16); empty:
    `content.gateway_urls` (an inferd gateway's content server serves both)."""
    escalate: bool = True
    """Challenge (`escalate`, bond = the model's minStake) a provisional outcome our revealed seat lost
    (`node.miner.disputes`); the wallet must hold the bond plus gas."""
    speculate: bool = True
    """Start a seat at its request's block from our own draw of the seats (`node.chain.draw`), a block
    before `InferenceAssigned` writes them; commits still wait for the assignment."""
    models: list[MinerModelSettings] = Field(default_factory=list)
    """Several models on one box (`[[miner.models]]`); empty: one model, `[engine]` with `[chain]`'s
    key and `journal_path` (today's single-miner config). See `per_model_settings`."""

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[MinerModelSettings]) -> list[MinerModelSettings]:
        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError(f"[[miner.models]] names must be unique, got {names}")
        return value


class GatewaySettings(BaseModel):
    """The OpenAI-compatible HTTP API, and what its wallet may spend.

    Per-key limits (`rate_limit_per_minute`, `max_concurrent_per_key`, `daily_budget_wei_per_key`)
    are defaults a key's own record in the keys file may override. Budgets count fee + gas actually
    paid per UTC day; None means unlimited.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    keys_path: Path | None = None
    ledger_path: Path | None = None
    rate_limit_per_minute: int = Field(default=600, ge=1)
    max_concurrent_per_key: int = Field(default=16, ge=1)
    daily_budget_wei_per_key: int | None = Field(default=10**17, ge=0)
    daily_budget_wei_total: int | None = Field(default=10**18, ge=0)
    max_fee_per_gas_wei: int | None = Field(default=500 * 10**9, ge=1)
    max_fee_bumps: int = Field(default=3, ge=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=2048, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    fee_wei: int | None = None
    request_batch_max: int = Field(default=64, ge=1, le=64)
    """Requests per `requestInferences` transaction at the most (the hub's `MAX_BATCH` is 64); 1 sends
    each request alone (`node.gateway.batcher`)."""
    request_batch_slots: int = Field(default=1, ge=1, le=16)
    """Request transactions per model on their way at once; requests that arrive while all are on
    their way wait for the next and share it. More slots: less waiting, fuller blocks, smaller batches."""
    request_batch_wait_s: float = Field(default=0.25, ge=0, le=10)
    """How long a request waits for a free slot at most before its batch goes out beside those on
    their way (`node.gateway.batcher`): on a chain with a block time it still makes the next block.
    0 turns the bound off (a request waits for a slot however long)."""
    require_auth: bool = True
    redis_url: SecretStr | None = None
    """`redis://[:password@]host:port/db`: several gateways share rate limits, in-flight slots, spend
    and API keys there (`node.gateway.shared`); unset, each gateway keeps them itself (memory, SQLite)."""
    redis_prefix: str = Field(default="inferd:gw", pattern=r"^[A-Za-z0-9:_.-]{1,64}$")
    private_by_default: bool = True
    """Seal every request's input to its seats and its answer to this gateway (issue 16) unless the
    request says `"private": false`; False: only requests that say `"private": true`. The miners
    serving this gateway's requests must list it in `miner.envelope_urls` (or
    `content.gateway_urls`): a private input is served only sealed, at `GET /envelope/{input_cid}`."""
    answer_on: Literal["signature", "chain"] = "signature"
    """When a request is answered (a request's `"finality": "onchain" | "signature"` overrides it).
    `chain`: once its result is final on chain. `signature` (the default): as soon as the assignee's
    EIP-712-signed output arrives over MQTT and checks out (it hashes to the signed digest, the signer
    is an assignee of this request, it answers this request's input); `onchain_data.settlement` is then
    `pending` and `GET /v1/inferences/{id}` shows it settle. Safe because a signed result binds its
    signer: an assignee that commits or reveals anything else loses its minStake to
    `proveEquivocation` (protocol v2; the gateway sends the proof itself), and one that commits nothing
    is slashed as silent. Without a broker every request is answered from the chain."""


class Settings(BaseSettings):
    """All settings; build it with `load_settings` so a TOML file can be layered in."""

    model_config = SettingsConfigDict(
        env_prefix="INFERD_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = DEFAULT_DATA_DIR
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    chain: ChainSettings = Field(default_factory=ChainSettings)
    content: ContentSettings = Field(default_factory=ContentSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    miner: MinerSettings = Field(default_factory=MinerSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secrets = NestedSecretsSettingsSource(file_secret_settings, secrets_dir=secrets_dirs())
        return (init_settings, env_settings, secrets, TomlConfigSettingsSource(settings_cls))

    def content_path(self) -> Path:
        """The local blockstore folder: explicit, or under the data dir."""
        return self.content.path or self.data_dir / "blocks"

    def journal_path(self) -> Path:
        """The miner's SQLite journal: explicit, or under the data dir."""
        return self.miner.journal_path or self.data_dir / "journal.sqlite"


class ConfigFileError(Exception):
    """The `--config` file is missing or unreadable."""


SECRETS_DIR_ENV = "INFERD_SECRETS_DIR"


def secrets_dirs() -> list[Path]:
    """Folders of secret files, one setting per file named like its env var (`inferd_chain__private_key`,
    any case): Docker's `/run/secrets`, systemd's `$CREDENTIALS_DIRECTORY` where they exist, then
    `$INFERD_SECRETS_DIR` (which must exist). A later folder wins; env vars and CLI flags win over all."""
    found = [p for p in (Path("/run/secrets"), Path(os.environ.get("CREDENTIALS_DIRECTORY") or "")) if p.name]
    dirs = [p for p in found if p.is_dir()]
    explicit = os.environ.get(SECRETS_DIR_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise ConfigFileError(f"{SECRETS_DIR_ENV}={explicit} is not a directory")
        dirs.append(path)
    return dirs


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings with CLI `overrides` (nested dicts) over env over `config_file` over defaults."""
    if config_file is not None and not config_file.is_file():
        raise ConfigFileError(f"config file {config_file} does not exist or is not a file")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return _FileSettings(**overrides)


def per_model_settings(settings: Settings) -> dict[str, Settings]:
    """One `Settings` per model this miner serves, by entry name: `[chain]`'s key, `[engine]` and
    the journal replaced by each `[[miner.models]]` entry's (its key file is read here). Without
    entries: `{engine.model: settings}` unchanged. Raises `ConfigFileError` for an unreadable key file
    or engine overrides that do not validate."""
    if not settings.miner.models:
        return {settings.engine.model: settings}
    out: dict[str, Settings] = {}
    for entry in settings.miner.models:
        chain = settings.chain
        key = entry.private_key
        if entry.private_key_file is not None:
            try:
                key = SecretStr(entry.private_key_file.expanduser().read_text().strip())
            except OSError as exc:
                raise ConfigFileError(
                    f"[[miner.models]] {entry.name!r}: cannot read private_key_file "
                    f"{entry.private_key_file}: {exc.strerror}"
                ) from None
        if key is not None or entry.keystore_path is not None:
            chain = chain.model_copy(
                update={
                    "private_key": key,
                    "keystore_path": entry.keystore_path,
                    "keystore_password": entry.keystore_password or chain.keystore_password,
                }
            )
        try:
            engine = EngineSettings.model_validate({**settings.engine.model_dump(), **entry.engine})
        except ValueError as exc:
            raise ConfigFileError(f"[[miner.models]] {entry.name!r}: bad engine overrides: {exc}") from None
        journal = entry.journal_path or settings.data_dir / f"journal-{entry.name}.sqlite"
        miner = settings.miner.model_copy(update={"journal_path": journal, "models": []})
        stream = settings.stream
        if entry.stream_username is not None or entry.stream_password is not None:
            stream = stream.model_copy(
                update={
                    "username": entry.stream_username or stream.username,
                    "password": entry.stream_password or stream.password,
                }
            )
        out[entry.name] = settings.model_copy(
            update={"chain": chain, "engine": engine, "miner": miner, "stream": stream}
        )
    return out


def masked_dump(settings: Settings) -> dict[str, Any]:
    """Settings as JSON-able data with every secret masked, for `inferd config show`."""
    return settings.model_dump(mode="json")
