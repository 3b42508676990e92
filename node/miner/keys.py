"""The miner's signing key: from `INFERD_CHAIN__PRIVATE_KEY` (settings) or an encrypted keystore.

The key is registered with the log redactor the moment it is loaded, so it can never reach a log
line, and it is only ever handed to eth-account.
"""

from __future__ import annotations

import json
import os

from eth_account import Account
from eth_account.signers.local import LocalAccount

from node.config import ChainSettings
from node.log import register_secret


class MinerKeyError(RuntimeError):
    """No usable key: neither a private key nor a decryptable keystore was configured."""


def load_account(chain: ChainSettings) -> LocalAccount:
    """The miner's account from settings (private key first, then keystore + password)."""
    if chain.private_key is not None:
        key = chain.private_key.get_secret_value().strip()
        register_secret(key)
        try:
            account: LocalAccount = Account.from_key(key)
        except Exception:
            raise MinerKeyError("chain.private_key is not a valid 32-byte hex private key") from None
        return account
    if chain.keystore_path is not None:
        if not chain.keystore_path.is_file():
            raise MinerKeyError(f"keystore {chain.keystore_path} does not exist")
        password = (
            chain.keystore_password.get_secret_value()
            if chain.keystore_password is not None
            else os.environ.get("INFERD_KEYSTORE_PASSWORD")
        )
        if password is None:
            raise MinerKeyError(
                "the keystore needs a password: set INFERD_CHAIN__KEYSTORE_PASSWORD "
                "(or chain.keystore_password)"
            )
        register_secret(password)
        try:
            raw = Account.decrypt(json.loads(chain.keystore_path.read_text()), password)
        except (ValueError, json.JSONDecodeError) as exc:
            raise MinerKeyError(
                f"cannot decrypt keystore {chain.keystore_path}: wrong password or not a keystore"
            ) from exc
        key = "0x" + bytes(raw).hex()
        register_secret(key)
        return Account.from_key(key)  # type: ignore[no-any-return]
    raise MinerKeyError(
        "no miner key: set INFERD_CHAIN__PRIVATE_KEY, "
        "or chain.keystore_path (+ INFERD_CHAIN__KEYSTORE_PASSWORD)"
    )


__all__ = ["MinerKeyError", "load_account"]
