"""The devnet: anvil, mosquitto, miner and gateway on one machine."""
