"""MQTT fast path: live token deltas, final results and miner heartbeats (never a source of truth)."""
