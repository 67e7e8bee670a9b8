"""A stateful stand-in for eni_manager in ipam's tests: it writes Eni and EniProvision records exactly as the
contract between the two says, without any cloud.

- `attach_eni(node, n_ips)`: a new in-use secondary-IP ENI with a primary IP and `n_ips` secondaries.
- `add_ips(node, n)`: fills ENIs with room (in index order), then creates new ENIs up to the node's ENI quota;
  past the quota it reports ENI_CAPACITY_EXCEED in the node's EniProvision.
- `set_provision(node, creating_eni=..., last_error=...)`: what eni_manager says about the node.
- `follow_demand()`: a background loop that, for every pool, deletes the CONFIRMED IPs of the release handshake,
  tops the node's secondaries up toward `demand.target_ips` (at most `batch` IPs per step, as the cloud's batch
  add), and removes every ENI and then the EniProvision of a node whose NetResourceSet says `removing`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network

from chassis.bus import Bus
from chassis.kv import KvCache, Store
from schemas.base import subject_token
from schemas.errors import ErrorReason
from schemas.records import (
    Eni,
    EniProvision,
    EniState,
    EniUse,
    NetResourceSet,
    NodePool,
    PrivateIp,
    ReleaseState,
)
from schemas.subjects import ENIS, NODES, POOLS, PROVISION

SUBNET = IPv4Network("10.0.0.0/16")
MEMORY_TABLE = ((2048, 2), (8192, 8), (32768, 16), (65536, 30))


def ips_per_eni_for(memory_mib: int) -> int:
    if memory_mib < MEMORY_TABLE[0][0]:
        return MEMORY_TABLE[0][1]
    return next((ips for limit, ips in MEMORY_TABLE[1:] if memory_mib <= limit), 40)


class EniDouble:
    def __init__(self, bus: Bus, *, batch: int = 10, period_s: float = 0.05, max_enis: int = 8,
                 ips_per_eni: int = 16, create_delay_s: float = 0.0) -> None:
        self.bus = bus
        self.batch = batch
        self.period_s = period_s
        self.default_quota = (max_enis, ips_per_eni)
        self.create_delay_s = create_delay_s
        self.enis: dict[str, Eni] = {}
        self.provisions: dict[str, EniProvision] = {}
        self.deleted_ips: list[str] = []
        self._next_ip = int(SUBNET.network_address) + 256 + 10
        self._next_eni = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._caches: list[KvCache[NodePool] | KvCache[NetResourceSet]] = []

    async def start(self) -> EniDouble:
        self.eni_store: Store[Eni] = Store(await self.bus.bucket(ENIS), Eni, ENIS.name)
        self.provision_store: Store[EniProvision] = Store(await self.bus.bucket(PROVISION), EniProvision,
                                                          PROVISION.name)
        self.pools: KvCache[NodePool] = KvCache(Store(await self.bus.bucket(POOLS), NodePool, POOLS.name),
                                                lambda _k, _v: self._wake.set())
        self.nodes: KvCache[NetResourceSet] = KvCache(
            Store(await self.bus.bucket(NODES), NetResourceSet, NODES.name), lambda _k, _v: self._wake.set())
        for cache in (self.pools, self.nodes):
            await cache.start()
            self._caches.append(cache)
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for cache in self._caches:
            await cache.stop()

    # ---- reads -------------------------------------------------------------------------------------------------

    def enis_of(self, node: str) -> list[Eni]:
        return sorted((e for e in self.enis.values() if e.node == node), key=lambda e: e.index)

    def secondaries(self, node: str) -> list[str]:
        return [str(ip) for e in self.enis_of(node) if e.state is EniState.INUSE for ip in e.secondary_ips]

    def quota(self, node: str) -> tuple[int, int]:
        prov = self.provisions.get(node)
        return (prov.max_enis, prov.ips_per_eni) if prov else self.default_quota

    # ---- writes ------------------------------------------------------------------------------------------------

    def _new_ips(self, n: int) -> list[IPv4Address]:
        ips = [IPv4Address(self._next_ip + i) for i in range(n)]
        self._next_ip += n
        return ips

    async def _write(self, eni: Eni) -> None:
        self.enis[eni.eni_id] = eni
        await self.eni_store.mutate(eni.eni_id, lambda _cur: eni)

    async def attach_eni(self, node: str, n_ips: int, *, state: EniState = EniState.INUSE,
                         use: EniUse = EniUse.SECONDARY_IPS) -> Eni:
        async with self._lock:
            return await self._attach(node, n_ips, state, use)

    async def _attach(self, node: str, n_ips: int, state: EniState = EniState.INUSE,
                      use: EniUse = EniUse.SECONDARY_IPS) -> Eni:
        self._next_eni += 1
        primary, *secondaries = self._new_ips(1 + n_ips)
        index = 1 + max((e.index for e in self.enis_of(node)), default=0)
        eni = Eni(eni_id=f"eni-{self._next_eni:06d}", node=node, instance_id=f"i-{subject_token(node)}", use=use,
                  subnet_id="sbn-double", subnet_cidr=SUBNET, zone="zoneA", state=state, index=index,
                  ip_quota=self.quota(node)[1],
                  private_ips=[PrivateIp(ip=primary, primary=True), *(PrivateIp(ip=ip) for ip in secondaries)])
        await self._write(eni)
        return eni

    async def add_ips(self, node: str, n: int) -> int:
        """Add up to `n` secondaries: to ENIs with room first, then on new ENIs. Returns how many were added."""
        async with self._lock:
            return await self._add_ips(node, n)

    async def _add_ips(self, node: str, n: int) -> int:
        max_enis, ips_per_eni = self.quota(node)
        added = 0
        for eni in self.enis_of(node):
            room = min(n - added, ips_per_eni - len(eni.private_ips))
            if eni.state is EniState.INUSE and eni.use is EniUse.SECONDARY_IPS and room > 0:
                extra = [PrivateIp(ip=ip) for ip in self._new_ips(room)]
                await self._write(eni.model_copy(update={"private_ips": [*eni.private_ips, *extra]}))
                added += room
        while added < n:
            if len(self.enis_of(node)) >= max_enis:
                await self._provision(node, last_error=ErrorReason.ENI_CAPACITY_EXCEED, message="all ENIs full")
                break
            await self._create_eni(node)
            fresh = self.enis_of(node)[-1]
            room = min(n - added, ips_per_eni - len(fresh.private_ips))
            extra = [PrivateIp(ip=ip) for ip in self._new_ips(room)]
            await self._write(fresh.model_copy(update={"private_ips": [*fresh.private_ips, *extra]}))
            added += room
        return added

    async def _create_eni(self, node: str) -> None:
        if self.create_delay_s:
            await self._provision(node, creating_eni=True)
            await asyncio.sleep(self.create_delay_s)  # the cloud's create + attach
        await self._attach(node, 0)
        if self.create_delay_s:
            await self._provision(node, creating_eni=False)

    async def set_provision(self, node: str, *, creating_eni: bool = False, last_error: ErrorReason | None = None,
                            max_enis: int | None = None, ips_per_eni: int | None = None, message: str = "") -> None:
        async with self._lock:
            await self._provision(node, creating_eni=creating_eni, last_error=last_error, max_enis=max_enis,
                                  ips_per_eni=ips_per_eni, message=message)

    async def _provision(self, node: str, *, creating_eni: bool = False, last_error: ErrorReason | None = None,
                         max_enis: int | None = None, ips_per_eni: int | None = None, message: str = "") -> None:
        current_enis, current_ips = self.quota(node)
        prov = EniProvision(node=node, instance_id=f"i-{subject_token(node)}", max_enis=max_enis or current_enis,
                            ips_per_eni=ips_per_eni or current_ips, creating_eni=creating_eni,
                            last_error=last_error, message=message)
        previous = self.provisions.get(node)
        if previous is not None and previous.model_copy(update={"updated_at": prov.updated_at}) == prov:
            return  # unchanged: do not wake ipam for nothing
        self.provisions[node] = prov
        await self.provision_store.mutate(subject_token(node), lambda _cur: prov)

    async def delete_confirmed(self, node: str, pool: NodePool) -> list[str]:
        """Delete in the 'cloud' the IPs ipam confirmed, and take them off the ENI records."""
        confirmed = {ip for ip, m in pool.releasing.items() if m.state is ReleaseState.CONFIRMED}
        deleted: list[str] = []
        for eni in self.enis_of(node):
            keep = [p for p in eni.private_ips if p.primary or str(p.ip) not in confirmed]
            if len(keep) != len(eni.private_ips):
                gone = [str(p.ip) for p in eni.private_ips if p not in keep]
                deleted += gone
                # counted before the ENI changes: whoever sees the IP off the ENI sees it deleted too
                self.deleted_ips += gone
                await self._write(eni.model_copy(update={"private_ips": keep}))
        return deleted

    async def remove_node(self, node: str) -> None:
        async with self._lock:
            for eni in self.enis_of(node):
                del self.enis[eni.eni_id]
                await self.eni_store.delete(eni.eni_id)
            self.provisions.pop(node, None)
            await self.provision_store.delete(subject_token(node))

    # ---- following ipam's demand -------------------------------------------------------------------------------

    def follow_demand(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="eni-double")

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period_s):  # not wait_for: it can swallow a cancellation on 3.11
                    await self._wake.wait()
            self._wake.clear()
            for nrs in self.nodes.values():
                await self.step(nrs)

    async def step(self, nrs: NetResourceSet) -> None:
        """One round for one node, as eni_manager's reconcile would do it."""
        node = nrs.name
        if nrs.status.removing:
            if self.enis_of(node) or node in self.provisions:
                await self.remove_node(node)
            return
        if node not in self.provisions:
            spec = nrs.spec
            await self.set_provision(node, max_enis=spec.max_enis or min(spec.cpus, 8),
                                     ips_per_eni=spec.ips_per_eni or ips_per_eni_for(spec.memory_mib))
        pool = self.pools.get(subject_token(node))
        if pool is None:
            return
        async with self._lock:
            await self.delete_confirmed(node, pool)
            missing = pool.demand.target_ips - len(self.secondaries(node))
            if missing > 0:
                await self._add_ips(node, min(self.batch, missing))


async def wait_until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 5.0, what: str = "") -> None:
    """Wait for a condition (sync or async) to hold, re-checking every 20 ms; fail with `what` after the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what or check}")
        await asyncio.sleep(0.02)
