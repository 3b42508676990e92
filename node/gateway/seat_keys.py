"""Seats' public keys for private requests: to whom the gateway seals a private input.

A key is accepted from any source because it authenticates itself (`node.chain.pubkeys`:
keccak(key)[12:] == address): offered by a miner's retained MQTT heartbeat (`public_key`), else
recovered from the transaction that activated the miner (the `MinerActivated` log at
`getMiner(address).activeSince`: `registerMiner` or `addStake`, both signed by the miner).
"""

from __future__ import annotations

from collections import OrderedDict

from eth_utils.address import is_checksum_address, to_checksum_address

from node.chain.events import event_topic
from node.chain.hub import HubClient
from node.chain.pubkeys import WrongPublicKey, recover_public_key_from_tx, verify_public_key
from node.gate import MQTT_LIMITS, UntrustedJSON, load_json_object
from node.stream.topics import PREFIX


class PublicKeyUnavailable(Exception):
    """No verified public key for a seat yet (no heartbeat, and its activation tx not readable)."""


class PublicKeys:
    """Verified secp256k1 public keys by (lowercase) address, from heartbeats or the chain."""

    def __init__(self, max_entries: int = 16384) -> None:
        self._keys: OrderedDict[str, bytes] = OrderedDict()
        self.max_entries = max_entries

    def offer(self, address: str, public_key: bytes | str) -> bool:
        """Cache `public_key` for `address` if it is that address's key; False (ignored) otherwise."""
        try:
            key = verify_public_key(public_key, address)
        except (WrongPublicKey, ValueError):
            return False
        self._keys[address.lower()] = key
        self._keys.move_to_end(address.lower())
        while len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)
        return True

    def cached(self, address: str) -> bytes | None:
        return self._keys.get(address.lower())

    async def get(self, address: str, hub: HubClient) -> bytes:
        """The key of `address`: cached, else recovered from its activation transaction."""
        key = self.cached(address)
        if key is not None:
            return key
        try:
            info = await hub.get_miner(address)
            topic = "0x" + bytes(12).hex() + address.lower().removeprefix("0x")
            logs = await hub.w3.eth.get_logs(
                {
                    "address": hub.address,
                    "fromBlock": info.active_since,
                    "toBlock": info.active_since,
                    "topics": [event_topic("MinerActivated"), topic],
                }
            )
            if not logs:
                raise PublicKeyUnavailable(f"no MinerActivated log of {address} at its activeSince block")
            tx = await hub.w3.eth.get_transaction(logs[0]["transactionHash"])
            recovered = recover_public_key_from_tx(dict(tx))
        except PublicKeyUnavailable:
            raise
        except Exception as exc:
            raise PublicKeyUnavailable(f"cannot recover the public key of {address}: {exc}") from exc
        if not self.offer(address, recovered):
            raise PublicKeyUnavailable(f"the key recovered for {address} is not its own")
        return recovered


def heartbeat_filter(chain_id: int, hub: str) -> str:
    """The MQTT filter of every miner's retained heartbeat on one hub (`node.stream.topics`)."""
    return f"{PREFIX}/{int(chain_id)}/{to_checksum_address(hub)}/miner/+"


def offer_heartbeat(keys: PublicKeys, topic: str, payload: bytes) -> bool:
    """Cache the `public_key` of a heartbeat if it is the key of the miner its topic names.

    The topic's miner level is what the broker's ACL checked; the key is checked against it here
    anyway (self-authenticating), so a forged heartbeat can at worst be ignored.
    """
    parts = topic.split("/")
    if len(parts) != 6 or parts[4] != "miner" or not is_checksum_address(parts[5]):
        return False
    try:
        body = load_json_object(payload, MQTT_LIMITS)
    except UntrustedJSON:
        return False
    key = body.get("public_key")
    if not isinstance(key, str) or len(key) > 132:
        return False
    try:
        return keys.offer(parts[5], bytes.fromhex(key.removeprefix("0x")))
    except ValueError:
        return False


__all__ = ["PublicKeyUnavailable", "PublicKeys", "heartbeat_filter", "offer_heartbeat"]
