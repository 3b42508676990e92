"""`inferd model fetch`: huggingface_hub downloads from a loopback hub mirror, verified from bytes.

The mirror is a real HTTP server on 127.0.0.1 that speaks the hub endpoints huggingface_hub 2.4
calls for a download (read from its source): `GET /api/models/{repo}/tree/{rev}?recursive=...` for
the commit's files (LFS entries carry the content sha256, the others the git blob id),
`GET /api/models/{repo}/revision/{rev}` to resolve a branch, and `HEAD`/`GET /{repo}/resolve/{rev}/
{file}` with `X-Repo-Commit`, `ETag` and `Content-Length`; unknown revisions answer 404 with
`X-Error-Code: RevisionNotFound` as the hub does. The fake repo (config, tokenizer files, a tiny
safetensors file) is made here. Every socket the test process opens is checked to be loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants as hf_constants
import pytest

from node.engine.hf_fetch import (
    HfFetchError,
    HfOfflineError,
    fetch_hf_model,
    hf_model_dir,
    verify_hf_model_dir,
)
from node.engine.model_fetch import MANIFEST, read_manifest

REPO = "inferd-test/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
LFS_SUFFIXES = (".safetensors",)


def _safetensors(values: list[float]) -> bytes:
    """A tiny valid safetensors file: one F32 tensor."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}, separators=(",", ":")
    ).encode()
    return struct.pack("<Q", len(header)) + header + data


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def fake_repo() -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 4}).encode(),
        "tokenizer.json": json.dumps(
            {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}
        ).encode(),
        "tokenizer_config.json": json.dumps({"chat_template": "{{ messages[0].content }}"}).encode(),
        "model.safetensors": _safetensors([0.5, -1.0, 2.0, 0.25]),
        "extra/notes.md": b"not loaded by vLLM\n",
    }


class HubMirror:
    """A loopback stand-in for the hub: one repo at one commit, `main` pointing at it."""

    def __init__(self) -> None:
        self.files = fake_repo()
        self.tampered: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> HubMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def resolve(self, rev: str) -> str | None:
        return COMMIT if rev in (COMMIT, "main") else None

    def tree(self) -> list[dict[str, Any]]:
        out = []
        for path, data in sorted(self.files.items()):
            entry: dict[str, Any] = {
                "type": "file",
                "path": path,
                "size": len(data),
                "oid": _git_blob_id(data),
            }
            if path.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                entry["oid"] = _git_blob_id(pointer.encode())
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
            out.append(entry)
        return out

    def gets(self, path: str) -> int:
        """How many GETs of a repo file were served."""
        return sum(1 for method, p in self.requests if method == "GET" and p.endswith(f"/{path}"))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, code: int, error_code: str, head: bool) -> None:
                body = json.dumps({"error": error_code}).encode()
                self._send(code, body, {"X-Error-Code": error_code, "Content-Type": "application/json"}, head)

            def _serve(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                with mirror._lock:
                    mirror.requests.append(("HEAD" if head else "GET", path))
                prefix = f"/api/models/{REPO}/"
                if path.startswith(prefix):
                    kind, _, rev = path[len(prefix) :].partition("/")
                    commit = mirror.resolve(rev)
                    if commit is None:
                        return self._error(404, "RevisionNotFound", head)
                    if kind == "tree":
                        body = json.dumps(mirror.tree()).encode()
                    elif kind == "revision":
                        siblings = [{"rfilename": p} for p in sorted(mirror.files)]
                        body = json.dumps({"id": REPO, "sha": commit, "siblings": siblings}).encode()
                    else:
                        return self._error(404, "EntryNotFound", head)
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                prefix = f"/{REPO}/resolve/"
                if not path.startswith(prefix):
                    return self._error(404, "RepoNotFound", head)
                rev, _, name = path[len(prefix) :].partition("/")
                commit = mirror.resolve(rev)
                if commit is None:
                    return self._error(404, "RevisionNotFound", head)
                if name not in mirror.files:
                    return self._error(404, "EntryNotFound", head)
                data = mirror.tampered.get(name, mirror.files[name])
                recorded = mirror.files[name]
                etag = (
                    hashlib.sha256(recorded).hexdigest()
                    if name.endswith(LFS_SUFFIXES)
                    else _git_blob_id(recorded)
                )
                headers = {
                    "X-Repo-Commit": commit,
                    "ETag": f'"{etag}"',
                    "Content-Type": "application/octet-stream",
                }
                self._send(200, data, headers, head)

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

        return Handler


@pytest.fixture()
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection from this process to a non-loopback address."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(sock, address)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            raise AssertionError(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture()
def mirror(monkeypatch: pytest.MonkeyPatch, loopback_only: None) -> Iterator[HubMirror]:
    with HubMirror() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(
            hf_constants, "HF_HUB_OFFLINE", False
        )  # read at import; the test sets it per call
        yield hub


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_pinned_commit_writes_a_verified_manifest(mirror: HubMirror, tmp_path: Path) -> None:
    model = fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)
    assert (
        model.path
        == hf_model_dir(REPO, COMMIT, tmp_path)
        == tmp_path / "hf" / "inferd-test--tiny-model" / COMMIT
    )
    expected = {name: _sha(data) for name, data in mirror.files.items()}
    assert model.files == expected
    manifest = read_manifest(model.path)
    assert manifest is not None
    assert manifest["files"] == expected
    assert (manifest["repo"], manifest["revision"]) == (REPO, COMMIT)
    for name, data in mirror.files.items():
        assert (model.path / name).read_bytes() == data
    assert (model.path / ".cache" / "huggingface").is_dir()  # huggingface_hub's metadata: kept, unlisted
    assert verify_hf_model_dir(model.path, REPO, COMMIT) is None
    assert ("GET", f"/api/models/{REPO}/tree/{COMMIT}") in mirror.requests
    assert mirror.gets("model.safetensors") == 1

    # Idempotent: a verified folder is returned without a request.
    before = len(mirror.requests)
    assert fetch_hf_model(REPO, COMMIT, cache_root=tmp_path).path == model.path
    assert len(mirror.requests) == before


def test_exclude_patterns_are_recorded(mirror: HubMirror, tmp_path: Path) -> None:
    model = fetch_hf_model(REPO, COMMIT, cache_root=tmp_path, ignore_patterns=["extra/*"])
    assert "extra/notes.md" not in model.files
    assert not (model.path / "extra").exists()
    manifest = read_manifest(model.path)
    assert manifest is not None and manifest["ignore_patterns"] == ["extra/*"]
    assert mirror.gets("notes.md") == 0


def test_branch_is_refused_unless_allowed_then_pinned_to_its_commit(
    mirror: HubMirror, tmp_path: Path
) -> None:
    with pytest.raises(HfFetchError, match="not a full 40-hex commit"):
        fetch_hf_model(REPO, "main", cache_root=tmp_path)
    assert mirror.requests == []
    said: list[str] = []
    model = fetch_hf_model(REPO, "main", cache_root=tmp_path, allow_unpinned=True, progress=said.append)
    assert model.commit == COMMIT and model.path.name == COMMIT
    assert ("GET", f"/api/models/{REPO}/revision/main") in mirror.requests
    assert any(f"--revision {COMMIT}" in msg for msg in said)
    manifest = read_manifest(model.path)
    assert manifest is not None and manifest["revision"] == COMMIT  # never the branch name


def test_unknown_revision_is_refused(mirror: HubMirror, tmp_path: Path) -> None:
    with pytest.raises(HfFetchError, match=f"has no revision {OTHER_COMMIT}"):
        fetch_hf_model(REPO, OTHER_COMMIT, cache_root=tmp_path)
    assert not hf_model_dir(REPO, OTHER_COMMIT, tmp_path).exists()


def test_tampered_download_is_refused_then_refetched(mirror: HubMirror, tmp_path: Path) -> None:
    mirror.tampered["model.safetensors"] = _safetensors([0.5, -1.0, 2.0, 9.0])  # same size, other bytes
    with pytest.raises(HfFetchError, match=r"model\.safetensors .* tampered"):
        fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)
    target = hf_model_dir(REPO, COMMIT, tmp_path)
    assert not target.exists()

    mirror.tampered.clear()
    model = fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)
    assert model.files["model.safetensors"] == _sha(mirror.files["model.safetensors"])
    # The partial download resumed: only the refused file was fetched again.
    assert mirror.gets("model.safetensors") == 2
    assert mirror.gets("config.json") == 1


def test_tampered_tokenizer_is_refused(mirror: HubMirror, tmp_path: Path) -> None:
    mirror.tampered["tokenizer.json"] = b'{"version": "evil"}'
    with pytest.raises(HfFetchError, match=r"tokenizer\.json .* git blob id"):
        fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)


def test_offline_refuses_uncached_and_serves_cached(
    mirror: HubMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = hf_model_dir(REPO, COMMIT, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HfOfflineError) as err:
        fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)
    assert REPO in str(err.value) and COMMIT in str(err.value) and str(target) in str(err.value)
    with pytest.raises(HfOfflineError, match="cannot be resolved"):
        fetch_hf_model(REPO, "main", cache_root=tmp_path, allow_unpinned=True)
    assert mirror.requests == []

    fetch_hf_model(REPO, COMMIT, cache_root=tmp_path, offline=False)
    seen = len(mirror.requests)
    model = fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)  # offline from the environment
    assert model.path == target and model.files["model.safetensors"] == _sha(
        mirror.files["model.safetensors"]
    )
    assert len(mirror.requests) == seen


def test_offline_names_the_files_a_partial_download_lacks(mirror: HubMirror, tmp_path: Path) -> None:
    mirror.tampered["model.safetensors"] = b"x" * 8
    with pytest.raises(HfFetchError):
        fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)  # leaves a partial download without the weights
    with pytest.raises(HfOfflineError, match=r"lacks model\.safetensors"):
        fetch_hf_model(REPO, COMMIT, cache_root=tmp_path, offline=True)


def test_damaged_folder_refused_offline_and_repaired_online(mirror: HubMirror, tmp_path: Path) -> None:
    model = fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)
    (model.path / "stray.safetensors").write_bytes(b"vLLM would load me")
    assert "does not list: stray.safetensors" in (verify_hf_model_dir(model.path) or "")
    weights = model.path / "model.safetensors"
    weights.write_bytes(_safetensors([1.0, 1.0, 1.0, 1.0]))
    problem = verify_hf_model_dir(model.path, REPO, COMMIT)
    assert problem is not None and "model.safetensors has sha256" in problem
    with pytest.raises(HfOfflineError, match=r"model\.safetensors has sha256"):
        fetch_hf_model(REPO, COMMIT, cache_root=tmp_path, offline=True)

    repaired = fetch_hf_model(REPO, COMMIT, cache_root=tmp_path)
    assert not (repaired.path / "stray.safetensors").exists()
    assert weights.read_bytes() == mirror.files["model.safetensors"]
    assert verify_hf_model_dir(repaired.path, REPO, COMMIT) is None
    assert mirror.gets("config.json") == 1  # only the damaged file was downloaded again


def test_cli_fetch_prints_path_and_settings(mirror: HubMirror, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_ENDPOINT": mirror.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "INFERD_MODEL_CACHE": str(tmp_path / "models"),
        "NO_COLOR": "1",
    }
    # The `model` group on its own, as `inferd model` runs it (independent of the other groups).
    cli = [sys.executable, "-c", "from node.cli.model import app; app()", "fetch", REPO]
    proc = subprocess.run([*cli, "--revision", COMMIT], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    path = hf_model_dir(REPO, COMMIT, tmp_path / "models")
    assert proc.stdout.strip() == str(path)
    assert f'model_path = "{path}"' in proc.stderr
    assert (path / MANIFEST).is_file()

    # Refusals, in process (the mirror must see no request for either).
    from typer.testing import CliRunner

    from node.cli.model import app

    seen = len(mirror.requests)
    runner = CliRunner()
    refused = runner.invoke(app, ["fetch", REPO, "--revision", "main"], env=env)
    assert refused.exit_code == 1 and "--allow-unpinned" in refused.stderr
    offline = runner.invoke(app, ["fetch", REPO, "--revision", OTHER_COMMIT, "--offline"], env=env)
    assert offline.exit_code == 1 and "offline" in offline.stderr and OTHER_COMMIT in offline.stderr
    assert len(mirror.requests) == seen
