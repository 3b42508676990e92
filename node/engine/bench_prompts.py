"""The fixed 256 chat prompts of the engine benchmark, shared with the miner's benchmark.

Generated from templates (no randomness, no files), so every run and every machine measures the
same work and the two benchmarks compare like with like.
"""

from __future__ import annotations

TOPICS = (
    "the ocean",
    "volcanoes",
    "honey bees",
    "the moon",
    "bread baking",
    "chess",
    "rainforests",
    "glaciers",
    "the printing press",
    "electric cars",
    "coffee",
    "the human heart",
    "lighthouses",
    "owls",
    "deserts",
    "the violin",
    "solar panels",
    "ancient Rome",
    "penguins",
    "thunderstorms",
    "the internet",
    "tea",
    "mountains",
    "bicycles",
    "the Eiffel Tower",
    "octopuses",
    "autumn",
    "libraries",
    "trains",
    "comets",
    "gardening",
    "the piano",
)
TASKS = (
    "Write two sentences about {t}.",
    "Explain {t} to a ten-year-old.",
    "List three facts about {t}.",
    "Write a haiku about {t}.",
    "Why do people find {t} interesting?",
    "Give a short history of {t}.",
    "Describe {t} in one paragraph.",
    "What is a common misconception about {t}?",
)
BENCH_MAX_TOKENS = 64


def bench_prompts() -> list[str]:
    """256 distinct user messages: 8 task templates x 32 topics, in a fixed order."""
    return [task.format(t=topic) for task in TASKS for topic in TOPICS]


def bench_messages() -> list[list[dict[str, str]]]:
    """The prompts as one-message chat conversations."""
    return [[{"role": "user", "content": p}] for p in bench_prompts()]


__all__ = ["BENCH_MAX_TOKENS", "bench_messages", "bench_prompts"]
