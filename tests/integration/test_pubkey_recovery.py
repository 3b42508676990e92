"""A miner's public key recovered from a real transaction on a real anvil, then checked by address."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import Web3

from node.chain.pubkeys import (
    TxRecoveryError,
    WrongPublicKey,
    public_key_of,
    recover_public_key_from_tx,
    verify_public_key,
)
from node.devnet.processes import Anvil


def _send(w3: Web3, key: str, tx: dict[str, object]) -> dict[str, object]:
    account = Account.from_key(key)
    tx = {"nonce": w3.eth.get_transaction_count(account.address), "chainId": w3.eth.chain_id, **tx}
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    return dict(w3.eth.get_transaction(tx_hash))


@pytest.mark.parametrize("kind", ["eip1559", "eip2930", "legacy"])
def test_recover_from_value_transfer(anvil: Anvil, anvil_keys: list[str], kind: str) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    key = anvil_keys[7]
    to = Account.from_key(anvil_keys[8]).address
    base: dict[str, object] = {"to": to, "value": 12345, "gas": 21000}
    if kind == "eip1559":
        base |= {"maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "type": 2}
    elif kind == "eip2930":
        base |= {"gasPrice": 10**10, "type": 1, "accessList": []}
    else:
        base |= {"gasPrice": 10**10}
    tx = _send(w3, key, base)
    assert tx["type"] == {"eip1559": 2, "eip2930": 1, "legacy": 0}[kind]

    public = recover_public_key_from_tx(tx)
    assert public == public_key_of(key)
    assert verify_public_key(public, Account.from_key(key).address) == public
    with pytest.raises(WrongPublicKey):
        verify_public_key(public, to)  # the same key, claimed for another miner

    forged = dict(tx, value=int(tx["value"]) + 1)  # type: ignore[call-overload]  # an RPC that lies about one field
    with pytest.raises(TxRecoveryError):
        recover_public_key_from_tx(forged)
