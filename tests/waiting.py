"""Waiting in tests for state that other tasks set: a guard against hanging, never a timing assertion."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(cond: Callable[[], bool], what: str, timeout: float = 20) -> None:  # noqa: ASYNC109
    """Return once `cond()` holds; fail naming `what` if it still does not after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not cond():  # noqa: ASYNC110 - state set by callbacks in other tasks
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


__all__ = ["until"]
