"""Who may do what on the broker: per-node logins, the password file and the ACL.

The broker is shared by every miner and gateway of a network, so nothing on it is anonymous: each
miner logs in with its checksummed address as the username (the same string its topics carry), each
gateway as `gateway-<name>`. The ACL gives every login write access only to topics that carry its
own username (`pattern` lines with `%u`), and gateways read access to `inferd/v1/#`; everything
else is denied. So a miner cannot publish deltas or results in another miner's name, and nobody
can publish as the gateway reads.

The password file is written in mosquitto's own format (PBKDF2-SHA512, `$7$`): by
`mosquitto_passwd -U` when the binary is installed (the password never appears on a command line),
otherwise by the same derivation in Python.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from eth_utils.address import to_checksum_address

from node.stream.topics import PREFIX

GATEWAY_PREFIX = "gateway-"
PBKDF2_ITERATIONS = 101
"""mosquitto_passwd's default for `$7$` hashes (what mosquitto 2.0 writes)."""

_USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""No `:` (the password file's separator), no `+ # /` (mosquitto will not substitute them for %u)."""


@dataclass(frozen=True)
class Login:
    """One broker account; the password never appears in `repr` (and so never in a log)."""

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _USERNAME.fullmatch(self.username):
            raise ValueError(f"broker username {self.username!r} must match {_USERNAME.pattern}")
        if not self.password or "\n" in self.password or "\r" in self.password:
            raise ValueError(f"the broker password of {self.username} must be one non-empty line")


def miner_login(address: str, password: str | None = None) -> Login:
    """A miner's login: its checksummed address, and a fresh random password unless given."""
    return Login(to_checksum_address(address), password or secrets.token_urlsafe(24))


def gateway_login(name: str, password: str | None = None) -> Login:
    """A gateway's login, `gateway-<name>`; it may only read."""
    return Login(GATEWAY_PREFIX + name, password or secrets.token_urlsafe(24))


def acl_text(gateways: Iterable[str]) -> str:
    """The ACL file: every login publishes only under its own name; `gateways` (usernames) read."""
    lines = [
        "# inferd broker ACL: deny by default; each login publishes only under topics that carry",
        "# its own username (a miner's checksummed address); gateways read everything.",
        f"pattern write {PREFIX}/+/+/req/+/%u/delta",
        f"pattern write {PREFIX}/+/+/req/+/%u/result",
        f"pattern write {PREFIX}/+/+/miner/%u",
    ]
    for user in gateways:
        if not _USERNAME.fullmatch(user):
            raise ValueError(f"broker username {user!r} must match {_USERNAME.pattern}")
        lines += ["", f"user {user}", f"topic read {PREFIX}/#"]
    return "\n".join(lines) + "\n"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A mosquitto `$7$` password hash (PBKDF2-HMAC-SHA512, 12-byte salt), as `mosquitto_passwd`."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, logins: Iterable[Login], *, mosquitto_passwd: str | None = None) -> None:
    """Write `path` (mode 0600) holding a hash for every login.

    With `mosquitto_passwd` (found on PATH unless given; "" forces Python) the plain lines are
    written to a private file first and hashed in place with `mosquitto_passwd -U`.
    """
    logins = list(logins)
    if len({login.username for login in logins}) != len(logins):
        raise ValueError("broker usernames must be unique")
    binary = shutil.which("mosquitto_passwd") if mosquitto_passwd is None else mosquitto_passwd
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if binary:
        _write_private(tmp, "".join(f"{x.username}:{x.password}\n" for x in logins))
        result = subprocess.run([binary, "-U", str(tmp)], capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"mosquitto_passwd -U failed with exit code {result.returncode}")
    else:
        _write_private(tmp, "".join(f"{x.username}:{hash_password(x.password)}\n" for x in logins))
    os.replace(tmp, path)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


__all__ = [
    "GATEWAY_PREFIX",
    "Login",
    "acl_text",
    "gateway_login",
    "hash_password",
    "miner_login",
    "write_password_file",
]
