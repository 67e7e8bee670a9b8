"""Unit tier: the per-node worker of eni_manager (rounds one at a time, coalesced kicks, retries) on a real event
loop with a scripted round function."""

from __future__ import annotations

import asyncio

import pytest

from services.eni_manager.workers import NodeWorker

pytestmark = pytest.mark.unit


class Script:
    """Rounds that succeed or fail as told, recording the resync flag each one was given."""

    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes = outcomes
        self.calls: list[bool] = []
        self.done = asyncio.Event()

    async def round(self, node: str, resync: bool) -> bool:
        self.calls.append(resync)
        ok = self.outcomes.pop(0) if self.outcomes else True
        if not self.outcomes:
            self.done.set()
        return ok


async def run_until_done(script: Script, first_resync: bool) -> None:
    worker = NodeWorker("node-1", script.round, backoff_s=0.01, backoff_max_s=0.05)
    worker.start()
    worker.kick(resync=first_resync)
    try:
        await asyncio.wait_for(script.done.wait(), 5)
        await asyncio.sleep(0.1)  # nothing more runs without a kick
    finally:
        await worker.stop()


async def test_a_failed_round_is_retried_with_a_resync_even_when_it_was_not_one() -> None:
    script = Script([False, False, True])
    await run_until_done(script, first_resync=False)
    assert script.calls == [False, True, True]


async def test_after_a_success_rounds_resync_only_when_asked() -> None:
    script = Script([True])
    await run_until_done(script, first_resync=False)
    assert script.calls == [False]
