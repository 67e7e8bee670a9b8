"""A keyed work queue: a key added many times is processed once (the latest state is read when it runs), never by two
workers at once, at the earliest time it was asked for; a failed key comes back after a back-off that doubles."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from chassis.logs import get_logger

log = get_logger("k8s_bridge.workqueue")

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, name: str, process: Callable[[K], Awaitable[None]], workers: int = 1,
                 wait_turn: Callable[[], Awaitable[None]] | None = None,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.name = name
        self.process = process
        self.workers = workers
        self.wait_turn = wait_turn  # e.g. "until this replica leads": workers hold while it does not
        self.backoff = backoff
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._busy: set[K] = set()
        self._again: dict[K, float] = {}  # added while being processed: run again after
        self._failures: dict[K, int] = {}
        self._wake = asyncio.Event()
        self.processed = 0

    def __len__(self) -> int:
        return len(self._due) + len(self._again)

    def add(self, key: K, delay: float = 0.0) -> None:
        when = asyncio.get_running_loop().time() + max(0.0, delay)
        if key in self._busy:
            self._again[key] = min(when, self._again.get(key, when))
            return
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        self._wake.set()

    def add_all(self, keys: object) -> None:
        for key in keys:  # type: ignore[attr-defined]
            self.add(key)

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _next(self) -> K:
        loop = asyncio.get_running_loop()
        while True:
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # superseded by an earlier time, or taken
            if self._heap and self._heap[0][0] <= loop.time():
                _, _, key = heapq.heappop(self._heap)
                del self._due[key]
                return key
            self._wake.clear()
            timeout = self._heap[0][0] - loop.time() if self._heap else None
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _worker(self) -> None:
        while True:
            if self.wait_turn is not None:
                await self.wait_turn()
            key = await self._next()
            self._busy.add(key)
            try:
                await self.process(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self.backoff[0] * 2 ** (failures - 1), self.backoff[1])
                log.warning("work failed; retrying", queue=self.name, key=str(key), error=repr(err), retry_in=delay)
                self._again[key] = min(self._again.get(key, float("inf")),
                                       asyncio.get_running_loop().time() + delay)
            finally:
                self._busy.discard(key)
                self.processed += 1
                if key in self._again:
                    when = self._again.pop(key)
                    self.add(key, when - asyncio.get_running_loop().time())
