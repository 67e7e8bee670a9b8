"""A clock for unit tests (tier: unit): it moves only when told, or when someone sleeps on it."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """An injectable `asyncio.sleep`: records the wait and moves the clock instead of waiting."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
