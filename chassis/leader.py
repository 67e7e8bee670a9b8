"""Leader election for single-active services: a lease record in KV, renewed by compare-and-set.

A standby takes the lease over when its revision has not moved for a whole TTL, measured on the standby's own
monotonic clock, so clock skew between machines never matters. A leader that cannot renew for most of a TTL
steps down on its own before any standby may take over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from chassis.kv import Store, Versioned
from chassis.logs import get_logger
from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.records import Lease

log = get_logger("chassis.leader")

CHANGES = Counter("cce_leader_changes_total", "leadership changes of this process: elected or lost (resigning "
                  "included)", ["service", "change"])
IS_LEADER = Gauge("cce_leader_is_leader", "1 while this process holds the service's lease", ["service"])

Callback = Callable[[], Awaitable[None]]


class LeaderElector:
    def __init__(
        self,
        store: Store[Lease],
        service: str,
        holder: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.service = service
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self.renew_every = ttl_s / 3
        self.poll_every = ttl_s / 10
        self._leader = asyncio.Event()
        self._revision: int | None = None
        self._last_renewed = 0.0
        self._watched: tuple[int, float] | None = None  # (revision seen, when first seen)
        self.term = 0

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    async def wait_leader(self) -> None:
        await self._leader.wait()

    def _lease(self, acquired: Lease | None = None) -> Lease:
        now = utcnow()
        return Lease(holder=self.holder, service=self.service, ttl_s=self.ttl_s,
                     acquired_at=acquired.acquired_at if acquired else now, renewed_at=now)

    async def step(self) -> bool:
        """One round of the election; returns whether this holder leads afterwards."""
        try:
            current, revision = await self.store.latest(self.service)
            if self.is_leader:
                return await self._renew(current)
            return await self._maybe_acquire(current, revision)
        except CceError as err:
            if err.reason is ErrorReason.CONFLICT:
                self._lose("lease changed under us")
                return False
            return self._trouble(err)
        except Exception as err:  # bus trouble: keep trying; a leader may have to step down
            return self._trouble(err)

    def _trouble(self, err: Exception) -> bool:
        """The bus did not answer (a reconnect, a cluster electing a stream leader): keep trying; a leader that
        could not renew for most of a TTL steps down before any standby may take over."""
        log.warning("lease round failed", service=self.service, error=repr(err))
        if self.is_leader and self.clock() - self._last_renewed > self.ttl_s * 0.75:
            self._lose("could not renew within the lease TTL")
        return self.is_leader

    async def _renew(self, current: Versioned[Lease] | None) -> bool:
        if current is None or current.value.holder != self.holder:
            self._lose("lease taken by another holder")
            return False
        assert self._revision is not None
        item = await self.store.update(self.service, self._lease(current.value), self._revision)
        self._revision = item.revision
        self._last_renewed = self.clock()
        return True

    async def _maybe_acquire(self, current: Versioned[Lease] | None, revision: int | None) -> bool:
        now = self.clock()
        if current is None:
            # no lease, or one that does not decode (overwritten at the revision read with it): both contenders of
            # a simultaneous start may get here, and the store lets one of them win
            item = (await self.store.create(self.service, self._lease()) if revision is None
                    else await self.store.update(self.service, self._lease(), revision))
            return self._won(item.revision, "no holder")
        rev = current.revision
        if current.value.holder == self.holder:
            # our own lease from before a restart: take it back at once
            item = await self.store.update(self.service, self._lease(), rev)
            return self._won(item.revision, "own lease")
        if self._watched is None or self._watched[0] != rev:
            self._watched = (rev, now)
            return False
        if now - self._watched[1] < self.ttl_s:
            return False
        item = await self.store.update(self.service, self._lease(), rev)
        return self._won(item.revision, f"lease of {current.value.holder} expired")

    def _won(self, revision: int, why: str) -> bool:
        self._revision = revision
        self._last_renewed = self.clock()
        self._watched = None
        self.term = revision
        if not self.is_leader:
            CHANGES.labels(self.service, "elected").inc()
            IS_LEADER.labels(self.service).set(1)
        self._leader.set()
        log.info("became leader", service=self.service, holder=self.holder, term=revision, why=why)
        return True

    def _lose(self, why: str) -> None:
        if self.is_leader:
            log.warning("lost leadership", service=self.service, holder=self.holder, why=why)
            CHANGES.labels(self.service, "lost").inc()
            IS_LEADER.labels(self.service).set(0)
        self._leader.clear()
        self._revision = None

    async def run(self, on_elected: Callback | None = None, on_lost: Callback | None = None) -> None:
        """Campaign forever; call the callbacks on every change of role."""
        was = False
        while True:
            now = await self.step()
            if now and not was and on_elected:
                await on_elected()
            if was and not now and on_lost:
                await on_lost()
            was = now
            await asyncio.sleep(self.renew_every if now else self.poll_every)

    async def resign(self) -> None:
        """Give the lease up (on graceful shutdown) so a standby takes over at once."""
        if self.is_leader and self._revision is not None:
            try:
                await self.store.delete(self.service, self._revision)
            except Exception as err:
                log.warning("could not resign", service=self.service, error=repr(err))
        self._lose("resigned")
