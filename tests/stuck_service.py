"""A test-only service process whose shutdown cannot finish: one background task ignores cancellation (as a task
blocked in a call that swallows it would). Run as `python -m tests.stuck_service`; settings from CCE_*."""

from __future__ import annotations

import asyncio

from chassis.config import ChassisSettings
from chassis.service import ServiceProcess, run


async def wire(proc: ServiceProcess) -> None:
    async def refuses_to_stop() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # swallowed: the shutdown waits for this task forever

    proc.spawn(refuses_to_stop(), "refuses-to-stop")


if __name__ == "__main__":
    run("stuck", ChassisSettings, wire)
