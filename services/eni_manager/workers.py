"""One worker per node: rounds run one at a time, and kicks that arrive meanwhile coalesce into one more round.

A round returns whether it succeeded; a failed round is retried after a back-off that doubles up to a cap and
resets after a success, and the retry re-reads the node from the cloud first: a failure usually means the records
and the cloud disagree (e.g. IPs a deposed leader added after its successor's takeover resync). Kicks may ask for a
resync first; the request sticks until a round takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chassis.logs import get_logger

log = get_logger("eni_manager.workers")

Round = Callable[[str, bool], Awaitable[bool]]


class NodeWorker:
    def __init__(self, node: str, round_fn: Round, backoff_s: float, backoff_max_s: float) -> None:
        self.node = node
        self._round = round_fn
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._failures = 0
        self._kicked = asyncio.Event()
        self._resync = False
        self._retry: asyncio.TimerHandle | None = None
        self._stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"eni-worker-{self.node}")

    def kick(self, resync: bool = False) -> None:
        self._resync = self._resync or resync
        self._kicked.set()

    def kick_later(self, delay_s: float) -> None:
        """A round once `delay_s` has passed (e.g. when a grace period ends); replaces a pending retry."""
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(delay_s, self.kick)

    async def stop(self) -> None:
        """Ends the worker, a round in flight included. A cancellation can be lost on the way (Python 3.11's
        `wait_for`, used by the NATS client, returns the result when its awaitable finishes as it is cancelled), so
        the loop also ends on its own once the round returns, and stop waits for that."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        if self.task is not None:
            self._kicked.set()
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            await self._kicked.wait()
            if self._stopping:
                return
            self._kicked.clear()
            resync, self._resync = self._resync, False
            try:
                ok = await self._round(self.node, resync)
            except Exception as err:  # a round must never end the worker
                log.exception("node round crashed", node=self.node, error=repr(err))
                ok = False
            if ok:
                self._failures = 0
                continue
            self._resync = True  # the retry starts from what the cloud says
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        delay = min(self._backoff_s * 2 ** self._failures, self._backoff_max_s)
        self._failures += 1
        self.kick_later(delay)
