"""`inferd devnet up`: the whole network on one machine, supervised by one process.

The supervisor starts, in order: anvil (saved state under the data dir), mosquitto, the chain
bootstrap (hub, the model registered for the engine class its miners run — computed here from the
miners' engine settings, as each miner computes it; `--fake-engine` has a fixed class — and staked
miners, in this process, through `HubClient`), an API key, then the
gateway and every miner as `inferd --config <part>/inferd.toml gateway serve|miner run` child
processes, and waits until each answers its health check. It then writes devnet.json, prints
ready-to-paste examples, and waits: Ctrl-C (or SIGTERM from `inferd devnet down`) stops the
parts in reverse order, each one's whole process group, so nothing is left behind.

While it waits it keeps the parts up: a miner, the gateway or mosquitto that dies is restarted
(what its process group left is swept first) after a backoff that doubles per recent crash, capped;
a part that crashes more than 5 times in 60 s is given up, said so, and the rest keeps running.
Restarts, the last exit and each part's state go to run.json, which `inferd devnet status` shows.
anvil is not restarted: its state is dumped only every few seconds, so a restarted anvil would hand
miners and gateway a chain that went back in time (their cursors, nonces and journals ahead of it).
anvil dying stops the devnet with a message; `inferd devnet up` then resumes from the saved state.

`--detach` re-runs the same command as a background supervisor (`node.devnet.detach`). The
restarts are `node.devnet.watchdog`'s, the ready message `node.devnet.banner`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from eth_account import Account

from node.devnet.banner import banner
from node.devnet.chain import ChainPlan, ChainState, bootstrap
from node.devnet.control import down, lock_pid
from node.devnet.groups import stop_group
from node.devnet.layout import (
    PHASE_FAILED,
    PHASE_READY,
    PHASE_STARTING,
    PHASE_STOPPING,
    Layout,
    dump_toml,
    read_json,
    write_json,
    write_private,
)
from node.devnet.options import DevnetError, UpOptions, pick_port
from node.devnet.processes import (
    Anvil,
    ManagedProcess,
    Mosquitto,
    anvil_private_keys,
    anvil_process,
    mosquitto_process,
)
from node.devnet.progress import Progress, waiting_line
from node.devnet.service import Service, child_env, env_names, inferd_command
from node.devnet.watchdog import Watchdog, describe_exit
from node.engine.cores import engine_cpus, keep_off
from node.stream.access import GATEWAY_PREFIX, gateway_login, miner_login


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while starting."""


# -------------------------------------------------------------------------------------------------
# The supervisor
# -------------------------------------------------------------------------------------------------


class Devnet:
    """Starts, watches and stops every part of one devnet (run in the foreground)."""

    def __init__(self, opts: UpOptions, say: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.layout = Layout(opts.data_dir.resolve())
        self.say = say
        self.anvil: Anvil | None = None
        self.broker: Mosquitto | None = None
        self.services: list[Service] = []
        self._stop = threading.Event()
        self._signal: int | None = None
        self._phase = PHASE_STARTING
        self._t0 = time.monotonic()
        self._taken: set[int] = set()
        self.watchdog = Watchdog(say)  # restarts a part that dies while the devnet runs
        self.progress = Progress()  # the waiting line on stderr while the parts start

    # ---------------------------------------------------------------- signals and run.json

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signum
        self._stop.set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Interrupted()

    def _write_run(self, phase: str) -> None:
        self._phase = phase
        parts: dict[str, dict[str, Any]] = {}
        for proc in (self.anvil, self.broker):
            if proc is not None and proc.proc is not None:
                parts[proc.name] = {"pid": proc.proc.pid, "pgid": proc.proc.pid}
        for svc in self.services:
            if svc.pid is not None:
                parts[svc.name] = {"pid": svc.pid, "pgid": svc.pid}
        for name, tracker in self.watchdog.restarts.items():
            if name in parts:
                parts[name].update(tracker.as_dict())
        write_json(
            self.layout.run_json,
            {
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
                "phase": phase,
                "parts": parts,
                "updated": time.time(),
            },
        )

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        """Start everything, wait for Ctrl-C / SIGTERM / a part dying, stop everything."""
        self.opts.validate()
        self._prepare_dir()  # raises DevnetError (before touching run.json) if one already runs here
        previous_handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        code = 0
        try:
            self._write_run(PHASE_STARTING)
            info = self._start()
            self._write_run(PHASE_READY)
            self.say(banner(info))
            code = self._watch()
        except Interrupted:
            self.say("interrupted: stopping the devnet")
            code = 130 if self._signal == signal.SIGINT else 0
        except Exception as exc:
            self.say(f"devnet failed: {exc}")
            with contextlib.suppress(Exception):
                self._write_run(PHASE_FAILED)
            code = 1
        finally:
            self._stop_all()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        return code

    def _prepare_dir(self) -> None:
        root = self.layout.root
        other = lock_pid(self.layout)
        if other is not None:
            raise DevnetError(
                f"a devnet is already running from {root} (pid {other}): "
                f"`inferd devnet down --data-dir {root}` stops it"
            )
        if self.layout.run_json.exists():  # a supervisor that was killed: sweep what it left
            down(self.layout, 15.0, self.say)
        if self.opts.fresh and root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.layout.logs.mkdir(exist_ok=True)

    def _start(self) -> dict[str, Any]:
        opts, layout = self.opts, self.layout
        previous = read_json(layout.devnet_json) or {}
        old_ports: dict[str, Any] = (
            previous.get("ports", {}) if isinstance(previous.get("ports"), dict) else {}
        )
        n = opts.miners
        keys = anvil_private_keys(max(10, n + 2))
        owner_key, miner_keys, gateway_key = keys[0], keys[1 : n + 1], keys[n + 1]

        # 1. anvil, with its state saved under the data dir (also every few seconds, for crashes).
        self.anvil = anvil_process(
            layout.logs,
            port=pick_port(opts.rpc_port, old_ports.get("rpc"), self._taken),
            block_time=opts.block_time,
            chain_id=opts.chain_id,
            state_path=layout.anvil_state,
            accounts=max(10, n + 2),
        )
        self.anvil.argv += ["--state-interval", "5"]
        self.anvil.log_path = layout.log_path("anvil")
        self._start_managed(self.anvil)
        self.say(
            f"anvil      {self.anvil.rpc_url} (chain id {opts.chain_id}, "
            f"{'automine' if opts.block_time is None else f'block time {opts.block_time}s'})"
        )

        # 2. mosquitto, locked down: one login per miner (its address) and for the gateway.
        logins = [miner_login(Account.from_key(k).address) for k in miner_keys] + [gateway_login("devnet")]
        self.broker = mosquitto_process(
            layout.logs, port=pick_port(opts.broker_port, old_ports.get("broker"), self._taken), logins=logins
        )
        self.broker.log_path = layout.log_path("mosquitto")
        self._start_managed(self.broker)
        self.say(f"mosquitto  {self.broker.url}")

        # 3. the chain: hub, model, staked miners (reused when the saved state has them).
        engine_class = miner_engine_class(self._engine_settings(opts.model), fake=opts.fake_engine)
        previous_hub = previous.get("hub") if previous.get("chain_id") == opts.chain_id else None
        chain = asyncio.run(
            bootstrap(
                ChainPlan(
                    rpc_url=self.anvil.rpc_url,
                    model=opts.model,
                    owner_key=owner_key,
                    miner_keys=miner_keys,
                    engine_class=engine_class,
                    redundancy=opts.effective_redundancy,
                    hub_address=previous_hub if isinstance(previous_hub, str) else None,
                    fund_keys=[gateway_key],
                )
            )
        )
        self._check_stop()
        self.say(
            f"hub        {chain.hub} ({'deployed' if chain.deployed else 'reused'}), "
            f"model {chain.model}, {len(chain.miners)} miner(s) staked"
        )

        # 4. an API key (kept across restarts: its hash is in the gateway's keys file).
        gateway_port = pick_port(opts.gateway_port, old_ports.get("gateway"), self._taken)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        keys_path = layout.gateway_dir / "api_keys.json"
        api_key = self._api_key(keys_path, previous.get("api_key"))

        # 5. the gateway and the miners, launched together, then awaited together.
        common = self._common_settings(chain)
        gw_settings = {
            "data_dir": str(layout.gateway_dir),
            **common,
            "gateway": {"host": "127.0.0.1", "port": gateway_port, "keys_path": str(keys_path)},
        }
        gw_settings["chain"] = {**common["chain"], "private_key": gateway_key}
        gw_settings["stream"] = {**common["stream"], **self.broker.stream_login(GATEWAY_PREFIX + "devnet")}
        self.services.append(
            self._service(
                "gateway", layout.gateway_dir, gw_settings, ["gateway", "serve"], f"{gateway_url}/healthz"
            )
        )
        miners_info: list[dict[str, Any]] = []
        old_metrics = old_ports.get("miner_metrics") or []
        metrics_ports: list[int] = []
        for i, key in enumerate(miner_keys):
            port = pick_port(0, old_metrics[i] if i < len(old_metrics) else None, self._taken)
            metrics_ports.append(port)
            mdir = layout.miner_dir(i)
            settings = {
                "data_dir": str(mdir),
                **common,
                # sealed private inputs come from the gateway's /envelope route (issue 16)
                "miner": {"metrics_host": "127.0.0.1", "metrics_port": port, "envelope_urls": [gateway_url]},
            }
            settings["chain"] = {**common["chain"], "private_key": key}
            login = self.broker.stream_login(Account.from_key(key).address)
            settings["stream"] = {**common["stream"], **login}
            name = f"miner-{i}"
            self.services.append(
                self._service(
                    name,
                    mdir,
                    settings,
                    ["miner", "run", *(["--fake-engine"] if opts.fake_engine else [])],
                    f"http://127.0.0.1:{port}/healthz",
                )
            )
            miners_info.append(
                {
                    "name": name,
                    "address": Account.from_key(key).address,
                    "metrics_url": f"http://127.0.0.1:{port}/metrics",
                    "health_url": f"http://127.0.0.1:{port}/healthz",
                    "data_dir": str(mdir),
                    "config": str(layout.config_path(mdir)),
                    "log": str(layout.log_path(name)),
                }
            )
        if opts.chain_only:
            self.say(
                "chain only: start the parts yourself, e.g.\n"
                + "\n".join(f"  {' '.join(s.argv)}" for s in self.services)
            )
            self.services = []
        else:
            for svc in self.services:
                svc.launch()
            self._write_run(PHASE_STARTING)
            self.say(
                "starting   gateway and "
                + ", ".join(m["name"] for m in miners_info)
                + " (the first start loads the model: up to a few minutes on a CPU)"
            )
            self._await_healthy()
            self._keep_off_engines()

        info: dict[str, Any] = {
            "gateway_url": gateway_url,
            "openai_base_url": f"{gateway_url}/v1",
            "api_key": api_key,
            "rpc_url": self.anvil.rpc_url,
            "ws_url": self.anvil.ws_url,
            "chain_id": chain.chain_id,
            "hub": chain.hub,
            "model": chain.model,
            "model_id": chain.model_id,
            "redundancy": chain.redundancy,
            "min_fee_wei": chain.min_fee,
            "per_token_fee_wei": chain.per_token_fee,
            "audit_bps": chain.audit_bps,
            "engine_class": chain.engine_class,
            "broker_url": self.broker.url,
            "block_time": opts.block_time,
            "miners": miners_info,
            "gateway": {
                "address": Account.from_key(gateway_key).address,
                "config": str(layout.config_path(layout.gateway_dir)),
                "log": str(layout.log_path("gateway")),
            },
            "ports": {
                "rpc": self.anvil.port,
                "broker": self.broker.port,
                "gateway": gateway_port,
                "miner_metrics": metrics_ports,
            },
            "data_dir": str(layout.root),
            "logs": str(layout.logs),
            "pid": os.getpid(),
            "started_at": time.time(),
            "startup_s": round(time.monotonic() - self._t0, 1),
        }
        write_json(layout.devnet_json, info)
        return info

    def _start_managed(self, proc: ManagedProcess) -> None:
        self._check_stop()
        proc.start(timeout_s=30.0)
        self._write_run(PHASE_STARTING)

    def _common_settings(self, chain: ChainState) -> dict[str, Any]:
        assert self.anvil is not None and self.broker is not None
        return {
            "chain": {
                "rpc_url": self.anvil.rpc_url,
                "ws_url": self.anvil.ws_url,
                "chain_id": chain.chain_id,
                "hub_address": chain.hub,
                "confirmations": 0,
                "poll_interval_s": 0.25,
            },
            "content": {"backend": "local", "path": str(self.layout.blocks)},
            "stream": {"enabled": True, "broker_url": self.broker.url},
            "engine": self._engine_settings(chain.model),
        }

    def _engine_settings(self, model: str) -> dict[str, Any]:
        """Several miners share one machine: split the GPU memory (ignored on a CPU) and keep each
        CPU KV cache small, unless the user set these through the environment."""
        engine: dict[str, Any] = {"model": model}
        n = self.opts.miners
        if n > 1:
            if "INFERD_ENGINE__GPU_MEMORY_UTILIZATION" not in os.environ:
                engine["gpu_memory_utilization"] = round(0.85 / n, 3)
            if "INFERD_ENGINE__CPU_KVCACHE_GIB" not in os.environ:
                engine["cpu_kvcache_gib"] = 1.0
        return engine

    def _service(
        self, name: str, part_dir: Path, settings: dict[str, Any], command: list[str], health_url: str
    ) -> Service:
        part_dir.mkdir(parents=True, exist_ok=True)
        config = self.layout.config_path(part_dir)
        write_private(config, dump_toml(settings))
        return Service(
            name=name,
            argv=[*inferd_command(), "--config", str(config), *command],
            log_path=self.layout.log_path(name),
            health_url=health_url,
            env=child_env(env_names(settings)),
        )

    @staticmethod
    def _api_key(keys_path: Path, previous: Any) -> str:
        from node.gateway.auth import KeyStore

        store = KeyStore(keys_path)
        if isinstance(previous, str) and store.lookup(previous) is not None:
            return previous
        key, _ = store.add("devnet")
        return key

    def _await_healthy(self) -> None:
        """Wait until every part answers its health check, showing what is still awaited on stderr."""
        pending = {svc.name: svc for svc in self.services}
        deadline = time.monotonic() + self.opts.ready_timeout_s
        try:
            while pending:
                self._check_stop()
                for name, svc in list(pending.items()):
                    code = svc.exited()
                    if code is not None:
                        raise DevnetError(
                            f"{name} exited with code {code} while starting; last lines of {svc.log_path}:\n"
                            + svc.log_tail()
                        )
                    if svc.healthy():
                        self.progress.clear()
                        self.say(f"healthy    {name} (after {time.monotonic() - self._t0:.1f} s)")
                        del pending[name]
                if pending and time.monotonic() > deadline:
                    raise DevnetError(
                        f"not healthy after {self.opts.ready_timeout_s:.0f} s: {', '.join(pending)} "
                        f"(see {self.layout.logs})"
                    )
                if pending:
                    loading = not self.opts.fake_engine and any(n.startswith("miner") for n in pending)
                    self.progress.update(waiting_line(list(pending), time.monotonic() - self._t0, loading))
                    self._stop.wait(0.5)
        finally:
            self.progress.clear()

    def _watch(self) -> int:
        """Keep the parts up until a signal (exit 0) or until anvil dies (exit 1)."""
        while not self._stop.wait(0.5):
            if self.anvil is not None and not self.anvil.running:
                code = self.anvil.proc.returncode if self.anvil.proc is not None else None
                self.say(
                    f"anvil exited ({describe_exit(code)}); see {self.anvil.log_path}. The devnet stops: "
                    "a restarted anvil would resume from state saved up to 5 s earlier, behind the miners "
                    f"and the gateway. `inferd devnet up --data-dir {self.layout.root}` resumes it."
                )
                return 1
            changed = self.broker is not None and self.watchdog.check_broker(self.broker)
            for svc in self.services:
                changed = self.watchdog.check_service(svc) or changed
            if changed:
                self._write_run(self._phase)
                self._keep_off_engines()
        self.say("stopping the devnet")
        return 0

    def _keep_off_engines(self) -> None:
        """Move anvil, the broker and the gateway off the cores the miners' CPU engines compute on
        (`node.engine.cores`: each miner moves itself). Again after a restart: a restarted engine
        binds anew, and a restarted service starts anywhere."""
        cpus: frozenset[int] = frozenset()
        for svc in self.services:
            if svc.name.startswith("miner") and svc.pid is not None:
                cpus |= engine_cpus(svc.pid)
        others = [svc.pid for svc in self.services if not svc.name.startswith("miner")]
        for proc in (self.anvil, self.broker):
            others.append(proc.proc.pid if proc is not None and proc.proc is not None else None)
        keep_off([pid for pid in others if pid is not None], cpus)

    def _stop_all(self) -> None:
        with contextlib.suppress(Exception):
            self._write_run(PHASE_STOPPING)
        t0 = time.monotonic()

        def stop(svc: Service) -> None:
            clean = svc.stop(60.0)
            note = "" if clean else " (needed SIGKILL)"
            self.say(f"stopped    {svc.name} after {time.monotonic() - t0:.1f} s{note}")

        # Gateway and miners first (in parallel: each may take a few seconds to drain).
        if self.services:
            with ThreadPoolExecutor(max_workers=len(self.services)) as pool:
                list(pool.map(stop, self.services))
        # Then the broker, then anvil (SIGTERM makes it write its state file).
        for proc in (self.broker, self.anvil):
            if proc is not None and proc.proc is not None:
                stop_group(proc.proc.pid, proc.proc.pid, 15.0, proc=proc.proc)
                self.say(f"stopped    {proc.name} after {time.monotonic() - t0:.1f} s")
        with contextlib.suppress(FileNotFoundError):
            self.layout.run_json.unlink()


def miner_engine_class(engine: dict[str, Any], *, fake: bool = False) -> bytes:
    """The engine class id the devnet's miners will run: the fake engine's fixed class, or the real
    engine's computed from `engine` (over the environment, as a miner's settings are) without
    starting vLLM. DevnetError when it cannot be computed (e.g. the model is not fetched yet)."""
    if fake:
        from node.miner.testing import FAKE_ENGINE_CLASS

        return FAKE_ENGINE_CLASS
    from node.config import load_settings
    from node.engine.engine import EngineError, resolve_model_path
    from node.engine.engine_args import VllmArgsError
    from node.engine.engine_class import EngineClassError, engine_class

    settings = load_settings(engine=engine).engine
    try:
        return engine_class(settings, resolve_model_path(settings)).id
    except (EngineError, EngineClassError, VllmArgsError) as exc:
        raise DevnetError(f"cannot compute the miners' engine class: {exc}") from exc


def run_foreground(opts: UpOptions, say: Callable[[str], None] = print) -> int:
    """`inferd devnet up` without --detach."""
    return Devnet(opts, say).run()


__all__ = ["Devnet", "miner_engine_class", "run_foreground"]
