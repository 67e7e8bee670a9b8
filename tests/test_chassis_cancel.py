"""Unit tier: chassis.service.cancel_all, which a service's shutdown uses to end its background tasks, on a real
event loop."""

from __future__ import annotations

import asyncio

import pytest

from chassis.service import cancel_all

pytestmark = pytest.mark.unit


async def test_a_task_that_lost_one_cancellation_is_cancelled_again_and_ends() -> None:
    """A loop whose first cancellation was swallowed (as Python 3.11's wait_for does when its awaitable finishes
    at that moment) goes back to waiting; the next cancellation ends it, and the shutdown does not hang."""
    waits = 0

    async def loses_the_first() -> None:
        nonlocal waits
        while True:
            waits += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if waits > 1:
                    raise
                # lost, once

    async def fails() -> None:
        raise RuntimeError("a task that had already failed")

    tasks = [
        asyncio.create_task(loses_the_first()),
        asyncio.create_task(fails()),
        asyncio.create_task(asyncio.sleep(3600)),
    ]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all(tasks, again_after_s=0.05), 10)  # the bound only turns a hang into a failure
    assert all(t.done() for t in tasks) and waits == 2
