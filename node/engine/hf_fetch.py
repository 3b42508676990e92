"""Models from a Hugging Face hub, pinned to a commit and verified from their bytes.

`fetch_hf_model` downloads one repo at one commit with huggingface_hub's own `snapshot_download`
(its progress bars, resumable per file, `HF_ENDPOINT` / `HF_TOKEN` honoured), then checks every file
against the commit's tree listing (the sha256 the hub records for LFS files, the git blob id for the
others) and writes the same manifest as the default model (`inferd-model.json`, one sha256 per
file). The weights hash, and so the engine class and `system_fingerprint`, is computed from that
manifest, i.e. from bytes, never from a repo name: two miners with different bytes under the same
name get different classes.

Why a commit and not a branch: a branch moves, and every miner of a model must load the same
bytes or the minority is slashed. A full 40-hex commit is immutable, so it is required;
`allow_unpinned` accepts a branch or tag for trying a model out, resolves it to the commit it
points at now and stores the result under that commit (the manifest never records a branch).

The folder is built beside its final place (`<cache root>/hf/<org>--<name>/.<commit>.partial`, a
fixed name so an interrupted download resumes) and renamed to `<cache root>/hf/<org>--<name>/
<commit>` only once verified, so the engine never loads a half-written or unverified model.
huggingface_hub's `.cache/huggingface` metadata stays in the folder (outside the manifest): a
damaged folder is repaired by downloading only the files whose bytes no longer match.

Offline (`offline=True`, or `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` in the environment, read at
call time): nothing is downloaded; a verified folder is returned, anything else is refused with
what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.engine.model_fetch import MANIFEST, default_cache_root, read_manifest, sha256_file

HF_SUBDIR = "hf"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}
_HF_META = ".cache/huggingface"  # huggingface_hub's metadata inside a local_dir download

Progress = Callable[[str], None]


class HfFetchError(Exception):
    """A hub model could not be fetched or verified; the message says what to do."""


class HfOfflineError(HfFetchError):
    """Offline, and the model is not (completely, verifiably) in the cache."""


@dataclass(frozen=True)
class HfModel:
    """A verified hub model folder: where it is and what it is."""

    path: Path
    repo_id: str
    commit: str
    files: dict[str, str]


def is_commit_hash(revision: str) -> bool:
    """True for a full lowercase 40-hex git commit id (the only revision that pins bytes)."""
    return _COMMIT.fullmatch(revision) is not None


def offline_from_env() -> bool:
    """`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` as huggingface_hub reads them, but read now."""
    raw = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return raw.upper() in _TRUE


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]  # public, implicit re-export

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HfFetchError(f"{repo_id!r} is not a hub repo id (expected org/name): {exc}") from exc


def hf_model_dir(repo_id: str, commit: str, cache_root: Path | None = None) -> Path:
    """The folder `fetch_hf_model` installs `repo_id` at `commit` into; `engine.model_path` points here."""
    _check_repo_id(repo_id)
    if not is_commit_hash(commit):
        raise HfFetchError(f"{commit!r} is not a full 40-hex commit hash")
    return (cache_root or default_cache_root()) / HF_SUBDIR / repo_id.replace("/", "--") / commit


def _partial_dir(target: Path) -> Path:
    return target.parent / f".{target.name}.partial"


def _local_files(root: Path) -> dict[str, Path]:
    """Repo-relative posix path -> file, without huggingface_hub's metadata or our manifest."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST and not rel.startswith(f"{_HF_META}/"):
            out[rel] = path
    return out


def verify_hf_model_dir(model_dir: Path, repo_id: str | None = None, commit: str | None = None) -> str | None:
    """None if the folder holds exactly the files its manifest lists, byte for byte; else why not.

    With `repo_id` / `commit`, the manifest must also name them. Files not in the manifest are
    refused too: vLLM loads every weight file in the folder.
    """
    manifest = read_manifest(model_dir)
    if manifest is None:
        return f"{model_dir / MANIFEST} is missing"
    if repo_id is not None and manifest.get("repo") != repo_id:
        return f"manifest names repo {manifest.get('repo')!r}, expected {repo_id!r}"
    if commit is not None and manifest.get("revision") != commit:
        return f"manifest names revision {manifest.get('revision')!r}, expected {commit}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{model_dir / MANIFEST} lists no files"
    for name in sorted(files):
        path = model_dir / str(name)
        if not path.is_file():
            return f"{path} is missing"
        got = sha256_file(path)
        if got != files[name]:
            return f"{path} has sha256 {got}, expected {files[name]}"
    extra = sorted(set(_local_files(model_dir)) - set(files))
    if extra:
        return f"{model_dir} holds files its manifest does not list: {', '.join(extra[:5])}"
    return None


def _hf_call(what: str, repo_id: str, revision: str, fn: Callable[[], Any]) -> Any:
    """Run a huggingface_hub call; its errors become one actionable `HfFetchError`."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return fn()
    except RevisionNotFoundError as exc:
        raise HfFetchError(f"{repo_id} has no revision {revision} ({what})") from exc
    except GatedRepoError as exc:
        raise HfFetchError(
            f"{repo_id} is gated: accept its terms on the hub and set HF_TOKEN to a token that may read it"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise HfFetchError(
            f"{repo_id} was not found ({what}); check the name, or set HF_TOKEN if it is private"
        ) from exc
    except (HfHubHTTPError, LocalEntryNotFoundError, httpx2.HTTPError) as exc:
        raise HfFetchError(f"{what} failed for {repo_id}@{revision}: {exc}") from exc
    except OSError as exc:  # disk full, permissions
        raise HfFetchError(f"{what} failed for {repo_id}@{revision}: {exc}") from exc


def _resolve(repo_id: str, revision: str, endpoint: str | None, token: str | bool | None) -> str:
    """The commit a branch or tag points at now (`/api/models/{repo}/revision/{rev}`)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    info = _hf_call(
        "resolving the revision", repo_id, revision, lambda: api.model_info(repo_id, revision=revision)
    )
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not is_commit_hash(sha):
        raise HfFetchError(f"the hub did not resolve {repo_id}@{revision} to a commit (got {sha!r})")
    return sha


def _verify_against_tree(
    partial: Path,
    repo_id: str,
    commit: str,
    ignore_patterns: list[str],
    endpoint: str | None,
    token: str | bool | None,
) -> dict[str, str]:
    """Check the download against the commit's tree; the manifest's `files` (path -> sha256).

    A file whose bytes do not match is deleted, so the next fetch downloads it again.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]  # as snapshot_download
    from huggingface_hub.utils.sha import git_hash

    api = HfApi(endpoint=endpoint, token=token)
    tree = _hf_call(
        "listing the commit's files",
        repo_id,
        commit,
        lambda: [
            f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)
        ],
    )
    wanted: dict[str, RepoFile] = {f.path: f for f in tree}
    keep = set(filter_repo_objects(wanted.keys(), ignore_patterns=ignore_patterns or None))
    wanted = {k: v for k, v in wanted.items() if k in keep}
    if not wanted:
        raise HfFetchError(f"{repo_id}@{commit} has no files to fetch (after --exclude)")
    local = _local_files(partial)
    missing = sorted(set(wanted) - set(local))
    if missing:
        raise HfFetchError(f"the download of {repo_id}@{commit} lacks {', '.join(missing[:5])}; run again")
    extra = sorted(set(local) - set(wanted))
    if extra:
        raise HfFetchError(
            f"{partial} holds files that {repo_id}@{commit} does not (after --exclude): "
            f"{', '.join(extra[:5])}; delete {partial} and run again"
        )
    files: dict[str, str] = {}
    for rel in sorted(wanted):
        entry, path = wanted[rel], local[rel]
        digest = sha256_file(path)
        if entry.lfs is not None:
            expected, got, algo = entry.lfs.sha256.lower(), digest, "sha256"
        else:  # small files live in git itself: their id is the git blob hash
            expected, got, algo = entry.blob_id.lower(), git_hash(path.read_bytes()), "git blob id"
        if got != expected:
            path.unlink()
            raise HfFetchError(
                f"{rel} from {repo_id}@{commit} has {algo} {got}, but the commit records {expected}: "
                "refused and deleted (a corrupt or tampered download); run again, and check HF_ENDPOINT "
                "if it repeats"
            )
        files[rel] = digest
    return files


def _reuse_damaged(target: Path, partial: Path) -> None:
    """Turn a damaged installed folder into the partial download, minus the files that fail.

    huggingface_hub skips a file its `.cache` metadata says it fetched at this commit, so a file
    whose bytes no longer match the manifest is deleted first; the others are not downloaded again.
    """
    manifest = read_manifest(target) or {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    if partial.exists():
        shutil.rmtree(partial)
    target.rename(partial)
    (partial / MANIFEST).unlink(missing_ok=True)
    for rel, path in _local_files(partial).items():
        if not isinstance(files, dict) or files.get(rel) != sha256_file(path):
            path.unlink()


def _offline_missing(partial: Path, repo_id: str, commit: str, target: Path, why: str) -> HfOfflineError:
    """The offline refusal, naming the folder and, when a partial download exists, its missing files."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    detail = ""
    if partial.is_dir():
        try:
            listed = [f.path for f in get_cached_repo_tree(repo_id, revision=commit, local_dir=partial)]
        except CachedRepoTreeNotFoundError:
            listed = []
        have = _local_files(partial)
        missing = sorted(p for p in listed if p not in have)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            detail = f"; a partial download in {partial} lacks {', '.join(missing[:5])}{more}"
    return HfOfflineError(
        f"offline (--offline or HF_HUB_OFFLINE) and {repo_id}@{commit} is not ready: {why}{detail}. "
        f"Fetch it where the hub is reachable (unset HF_HUB_OFFLINE / drop --offline), or copy a fetched "
        f"folder (with its {MANIFEST}) to {target}"
    )


def fetch_hf_model(
    repo_id: str,
    revision: str,
    *,
    cache_root: Path | None = None,
    offline: bool | None = None,
    allow_unpinned: bool = False,
    ignore_patterns: Iterable[str] = (),
    endpoint: str | None = None,
    token: str | bool | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> HfModel:
    """Make sure `repo_id` at `revision` is in the cache, verified; where and what it is. Idempotent.

    `endpoint` defaults to `$HF_ENDPOINT` (read now), then huggingface.co; `offline` to the
    environment. A verified folder is returned untouched (online or not); a damaged one is fetched
    again online and refused offline.
    """
    say: Progress = progress or (lambda _msg: None)
    _check_repo_id(repo_id)
    offline = offline_from_env() if offline is None else offline
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    patterns = sorted(set(ignore_patterns))
    if is_commit_hash(revision):
        commit = revision
    elif not allow_unpinned:
        raise HfFetchError(
            f"revision {revision!r} is not a full 40-hex commit hash: a branch or tag moves, and every "
            "miner of a model must load the same bytes. Pass the commit (the hub's 'Files and versions' "
            "history), or --allow-unpinned to resolve it once, for trying a model out"
        )
    elif offline:
        raise HfOfflineError(
            f"offline, so {revision!r} cannot be resolved to a commit; pass the full commit hash"
        )
    else:
        commit = _resolve(repo_id, revision, endpoint, token)
        say(f"{repo_id}@{revision} is commit {commit} now; pin it with --revision {commit}")

    target = hf_model_dir(repo_id, commit, cache_root)
    partial = _partial_dir(target)
    if target.is_dir() and not force:
        say(f"verifying {target}")
        problem = verify_hf_model_dir(target, repo_id, commit)
        if problem is None:
            return _ready(target, repo_id, commit, say)
        if offline:
            raise _offline_missing(partial, repo_id, commit, target, problem)
        say(f"fetching again: {problem}")
        _reuse_damaged(target, partial)
    elif offline:
        raise _offline_missing(partial, repo_id, commit, target, f"{target} does not exist")

    from huggingface_hub import snapshot_download

    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"downloading {repo_id}@{commit} from {endpoint or 'the default hub endpoint'}")
    _hf_call(
        "downloading",
        repo_id,
        commit,
        lambda: snapshot_download(
            repo_id,
            revision=commit,
            local_dir=partial,
            ignore_patterns=patterns or None,
            endpoint=endpoint,
            token=token,
            force_download=force,
        ),
    )
    say("verifying every file against the commit's tree")
    files = _verify_against_tree(partial, repo_id, commit, patterns, endpoint, token)
    manifest: dict[str, Any] = {
        "model": repo_id,
        "source": f"huggingface:{repo_id}@{commit}",
        "repo": repo_id,
        "revision": commit,
        "files": files,
    }
    if patterns:
        manifest["ignore_patterns"] = patterns
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    say("installing the verified folder")
    if target.exists():
        old = target.parent / f".{target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(target)
    return _ready(target, repo_id, commit, say, files)


def _ready(
    target: Path, repo_id: str, commit: str, say: Progress, files: dict[str, str] | None = None
) -> HfModel:
    if files is None:
        manifest = read_manifest(target) or {}
        files = {str(k): str(v) for k, v in (manifest.get("files") or {}).items()}
    say(f"{repo_id}@{commit} is ready at {target}")
    return HfModel(path=target, repo_id=repo_id, commit=commit, files=files)


def settings_lines(model: HfModel) -> str:
    """The `[engine]` settings that make the engine load this folder (TOML, and the env form)."""
    return (
        "[engine]\n"
        f'model = "{model.repo_id}"        # must be the name registered on the hub\n'
        f'model_path = "{model.path}"\n'
        f"# or: INFERD_ENGINE__MODEL_PATH={model.path}\n"
    )


__all__ = [
    "HF_SUBDIR",
    "HfFetchError",
    "HfModel",
    "HfOfflineError",
    "fetch_hf_model",
    "hf_model_dir",
    "is_commit_hash",
    "offline_from_env",
    "settings_lines",
    "verify_hf_model_dir",
]
