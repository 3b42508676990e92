"""Start and stop the real external parts (anvil, mosquitto, redis) on loopback, for the devnet and tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.stream.access import GATEWAY_PREFIX, Login, acl_text, write_password_file

REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


class ToolNotFound(RuntimeError):
    """A required binary (anvil, mosquitto) is not installed where inferd looks for it."""


class StartupTimeout(RuntimeError):
    """A started process did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def find_tool(name: str) -> str:
    """Locate a binary: `INFERD_<NAME>_BIN`, then the npm toolchain in contracts/, then PATH."""
    env = os.environ.get(f"INFERD_{name.upper()}_BIN")
    if env:
        return env
    npm_bin = REPO_ROOT / "contracts" / "node_modules" / "@foundry-rs" / f"{name}-linux-amd64" / "bin" / name
    if npm_bin.is_file():
        return str(npm_bin)
    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ToolNotFound(
        f"{name} not found: run `make setup` (it installs anvil via npm and mosquitto, redis via apt), "
        f"or set INFERD_{name.upper()}_BIN"
    )


@dataclass
class ManagedProcess:
    """A child process we started and must stop; restartable for outage tests."""

    name: str
    argv: list[str]
    host: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartupTimeout(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if port_open(self.host, self.port) and self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise StartupTimeout(f"{self.name} not ready on {self.host}:{self.port} after {timeout_s}s")

    def _ready(self) -> bool:
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Anvil(ManagedProcess):
    """A real anvil node on loopback."""

    chain_id: int = 31337
    state_cache: Path | None = None
    """Where this anvil writes the historical states it no longer keeps in memory (`--cache-path`):
    its own folder, removed when it stops, instead of anvil's shared `~/.foundry/anvil/tmp`, where
    every anvil that was ever stopped left its states behind (gigabytes each under load)."""

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        if self.state_cache is not None:
            shutil.rmtree(self.state_cache, ignore_errors=True)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _ready(self) -> bool:
        try:
            reply = httpx.post(
                self.rpc_url,
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                timeout=1.0,
            )
            return reply.status_code == 200 and "result" in reply.json()
        except httpx.HTTPError:
            return False


MAX_PERSISTED_STATES = 2048
"""Historical states an anvil keeps on disk (the newest ~2,000 blocks stay readable): far more than
any state read a miner, a gateway or a test makes (a request's block, a reverted transaction's),
and a bound on the disk a long-running devnet uses (0.1-1.5 MB a state; unbounded, the anvils of
two days of tests and benches had left 72 GB in `~/.foundry/anvil/tmp`)."""


def anvil_process(
    log_dir: Path,
    port: int | None = None,
    block_time: float | None = None,
    chain_id: int = 31337,
    state_path: Path | None = None,
    accounts: int = 10,
) -> Anvil:
    """An Anvil (not yet started) on 127.0.0.1; automine unless `block_time` is given."""
    port = port or free_port()
    argv = [
        find_tool("anvil"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chain-id", str(chain_id),
        "--accounts", str(accounts),
        "--mnemonic", ANVIL_MNEMONIC,
        "--balance", "10000",
    ]  # fmt: skip
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    if state_path is not None:
        argv += ["--state", str(state_path)]
    cache = log_dir / f"anvil-states-{port}"
    argv += ["--cache-path", str(cache), "--max-persisted-states", str(MAX_PERSISTED_STATES)]
    return Anvil(
        name="anvil",
        argv=argv,
        host="127.0.0.1",
        port=port,
        log_path=log_dir / f"anvil-{port}.log",
        chain_id=chain_id,
        state_cache=cache,
    )


@dataclass
class Mosquitto(ManagedProcess):
    """A real mosquitto broker on loopback; `logins` is empty when it lets anyone in."""

    logins: dict[str, Login] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def locked_down(self) -> bool:
        return bool(self.logins)

    def stream_login(self, username: str) -> dict[str, str]:
        """The `[stream]` settings (`username`, `password`) of one of this broker's logins."""
        login = self.logins[username]
        return {"username": login.username, "password": login.password}


MQTT_MAX_PACKET_BYTES = 2_228_224
"""2 MiB + 128 KiB: a result carries a whole output document (1 MiB, escaped up to ~2x) as a string."""


def mosquitto_process(log_dir: Path, port: int | None = None, logins: Sequence[Login] = ()) -> Mosquitto:
    """A Mosquitto (not yet started) listening only on 127.0.0.1, without persistence.

    Without `logins` it is anonymous (for tests that are not about the broker). With them it is
    locked down: no anonymous clients, a password file with those logins, and the ACL of
    `node.stream.access` (each login publishes only under its own name; `gateway-*` logins read).
    """
    port = port or free_port()
    conf = Path(tempfile.mkstemp(prefix="mosquitto-", suffix=".conf", dir=log_dir)[1])
    lines = [f"listener {port} 127.0.0.1", "persistence false", f"max_packet_size {MQTT_MAX_PACKET_BYTES}"]
    if logins:
        lines += _lock_down(conf, logins)
    else:
        lines.append("allow_anonymous true")
    conf.write_text("\n".join(lines) + "\n")
    return Mosquitto(
        name="mosquitto",
        argv=[find_tool("mosquitto"), "-c", str(conf)],
        host="127.0.0.1",
        port=port,
        log_path=log_dir / f"mosquitto-{port}.log",
        logins={login.username: login for login in logins},
    )


@dataclass
class Redis(ManagedProcess):
    """A real redis-server on loopback, without persistence (gateways' shared state in tests)."""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def redis_process(log_dir: Path, port: int | None = None) -> Redis:
    """A Redis (not yet started) on 127.0.0.1 only, in its own temp dir, saving nothing to disk;
    its data lives as long as the process (tests restart gateways, not Redis)."""
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix=f"redis-{port}-", dir=log_dir)
    argv = [
        find_tool("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", workdir,
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    return Redis(name="redis", argv=argv, host="127.0.0.1", port=port, log_path=log_dir / f"redis-{port}.log")


def _lock_down(conf: Path, logins: Sequence[Login]) -> list[str]:
    """Write the password and ACL files next to `conf`; the config lines that use them."""
    passwd, acl = conf.with_suffix(".passwd"), conf.with_suffix(".acl")
    write_password_file(passwd, logins)
    readers = [x.username for x in logins if x.username.startswith(GATEWAY_PREFIX)]
    acl.write_text(acl_text(readers))
    lines = ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
    if os.geteuid() == 0:  # as root mosquitto would switch to its own user, who cannot read 0600 files
        lines.append("user root")
    return lines


def anvil_private_keys(count: int = 10) -> list[str]:
    """The well-known dev keys anvil derives from its default test mnemonic (never real funds)."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return [
        "0x" + bytes(Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key).hex()
        for i in range(count)
    ]
