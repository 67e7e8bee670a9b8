"""Unit tier: the per-node worker of eni_manager (rounds one at a time, coalesced kicks, retries) on a real event
loop with a scripted round function."""

from __future__ import annotations

import asyncio
import contextlib

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


async def test_stop_ends_the_worker_even_when_the_round_in_flight_loses_the_cancellation() -> None:
    """Python 3.11's wait_for (inside the NATS client) can return a result that arrived as it was cancelled: the
    round then returns normally. The worker must still end, not wait for a kick that never comes."""
    started = asyncio.Event()

    async def swallowing_round(node: str, resync: bool) -> bool:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # as a wait_for whose awaitable finished at that moment
            await asyncio.sleep(30)
        return True

    worker = NodeWorker("node-1", swallowing_round, backoff_s=0.01, backoff_max_s=0.05)
    worker.start()
    worker.kick()
    await started.wait()
    await asyncio.wait_for(worker.stop(), 10)  # the bound only turns a hang into a failure
    assert worker.task is not None and worker.task.done()
