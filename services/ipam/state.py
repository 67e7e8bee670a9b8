"""ipam's view of the buckets: the stores it writes, watch caches of what it reads, indexes by node, and per-node
signals that wake waiting allocations and the maintenance loop when a node's pool, ENIs or provisioning change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chassis.kv import KvCache, Store, Versioned
from chassis.service import ServiceProcess
from schemas.base import Contract, from_subject_token, subject_token
from schemas.errors import CceError, ErrorReason
from schemas.records import (
    CceEndpoint,
    ClusterCidrPool,
    Eni,
    EniProvision,
    FixedIp,
    InstanceClaim,
    NetResourceSet,
    NodeCidr,
    NodePool,
    NodeSpec,
    PodInfo,
    RouteRule,
    Subnet,
    SubnetSpread,
)
from schemas.subjects import (
    CIDR_POOL,
    ENDPOINTS,
    ENIS,
    FIXED_IPS,
    INSTANCES,
    NODE_CIDRS,
    NODES,
    PODS,
    POOLS,
    PROVISION,
    ROUTES,
    SPREADS,
    SUBNETS,
)
from services.ipam import spread
from services.ipam.domain import NodeFacts

T = TypeVar("T", bound=Contract)
Listener = Callable[[str], None]


def node_key(node: str) -> str:
    """The key of a node's NetResourceSet and NodePool."""
    return subject_token(node)


class ByNode(Generic[T]):
    """Records of a bucket grouped by the node they belong to, kept current from the bucket's watch."""

    def __init__(self, node_of: Callable[[T], str]) -> None:
        self._node_of = node_of
        self._by_node: dict[str, dict[str, T]] = {}
        self._owner: dict[str, str] = {}

    def load(self, items: dict[str, Versioned[Any]]) -> set[str]:
        self._by_node.clear()
        self._owner.clear()
        for key, item in items.items():
            self.apply(key, item)
        return set(self._by_node)

    def apply(self, key: str, item: Versioned[Any] | None) -> set[str]:
        """Record a change; returns the nodes it touched (an ENI moving between nodes touches both)."""
        touched = set()
        old = self._owner.pop(key, None)
        if old is not None:
            touched.add(old)
            records = self._by_node.get(old, {})
            records.pop(key, None)
            if not records:
                self._by_node.pop(old, None)
        if item is not None:
            node = self._node_of(item.value)
            self._owner[key] = node
            self._by_node.setdefault(node, {})[key] = item.value
            touched.add(node)
        return touched

    def of(self, node: str) -> dict[str, T]:
        return dict(self._by_node.get(node, {}))

    def nodes(self) -> set[str]:
        return set(self._by_node)


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds have passed, whichever is first.

    `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11 the latter can swallow a cancellation that arrives
    as the event is set, and a loop waiting that way would then never stop."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()


class NodeSignals:
    """One event per node, set (and replaced) on every change: take it before looking, then wait on it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def current(self, node: str) -> asyncio.Event:
        return self._events.setdefault(node, asyncio.Event())

    def fire(self, node: str) -> None:
        event = self._events.pop(node, None)
        if event is not None:
            event.set()


@dataclass
class Stores:
    nodes: Store[NetResourceSet]
    pools: Store[NodePool]
    endpoints: Store[CceEndpoint]
    fixed: Store[FixedIp]
    instances: Store[InstanceClaim]


class IpamState:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.enis: ByNode[Eni] = ByNode(lambda e: e.node)
        self.provisions: ByNode[EniProvision] = ByNode(lambda p: p.node)
        self.endpoints: ByNode[CceEndpoint] = ByNode(lambda ep: ep.node)
        self.node_cidrs: ByNode[NodeCidr] = ByNode(lambda c: c.node)  # vpc-route, written by route_manager
        self.routes: ByNode[RouteRule] = ByNode(lambda r: r.node)
        self._cidr_pool: KvCache[ClusterCidrPool] | None = None
        self.signals = NodeSignals()
        self.listeners: list[Listener] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._nodes: KvCache[NetResourceSet] | None = None
        self._pools: KvCache[NodePool] | None = None
        self._fixed: KvCache[FixedIp] | None = None
        self._spreads: KvCache[SubnetSpread] | None = None  # PodSubnetTopologySpreads (k8s_bridge's)
        self._subnets: KvCache[Subnet] | None = None  # eni_manager's mirror: a spread's subnets' free addresses
        self.pods: Store[PodInfo] | None = None  # the pods' facts (k8s_bridge's), read on ADD when spreads exist

    @classmethod
    async def open(cls, proc: ServiceProcess) -> IpamState:
        state = cls(Stores(await proc.store(NODES), await proc.store(POOLS), await proc.store(ENDPOINTS),
                           await proc.store(FIXED_IPS), await proc.store(INSTANCES)))
        await state._watch(proc)
        return state

    async def _watch(self, proc: ServiceProcess) -> None:
        self._nodes = await proc.cache(NODES, self._keyed_change)
        self._pools = await proc.cache(POOLS, self._keyed_change)
        indexes: tuple[tuple[Any, ByNode[Any]], ...] = (
            (ENIS, self.enis), (PROVISION, self.provisions), (ENDPOINTS, self.endpoints),
            (NODE_CIDRS, self.node_cidrs), (ROUTES, self.routes))
        for bucket, index in indexes:
            cache = await proc.cache(bucket, self._indexed_change(index))
            index.load(cache.items)
        self._cidr_pool = await proc.cache(CIDR_POOL)
        self._fixed = await proc.cache(FIXED_IPS, self._fixed_change)
        self._spreads = await proc.cache(SPREADS, self._spread_change)
        self._subnets = await proc.cache(SUBNETS)
        self.pods = await proc.store(PODS)

    def _spread_change(self, _key: str, _item: Versioned[Any] | None) -> None:
        for node in self.known_nodes():  # the ranges kept for spreads, and so every pool's demand, may change
            self.touch(node)

    def _fixed_change(self, _key: str, item: Versioned[Any] | None) -> None:
        if item is not None:
            self.touch(item.value.node)

    # ---- change notifications --------------------------------------------------------------------------------

    def _keyed_change(self, key: str, _item: Versioned[Any] | None) -> None:
        self.touch(from_subject_token(key))

    def _indexed_change(self, index: ByNode[Any]) -> Callable[[str, Versioned[Any] | None], None]:
        def on_change(key: str, item: Versioned[Any] | None) -> None:
            for node in index.apply(key, item):
                self.touch(node)

        return on_change

    def touch(self, node: str) -> None:
        """Something about `node` changed: wake its waiting allocations and tell the listeners."""
        self.signals.fire(node)
        for listener in self.listeners:
            listener(node)

    # ---- reads -------------------------------------------------------------------------------------------------

    def lock(self, node: str) -> asyncio.Lock:
        """Serialises this replica's compare-and-set attempts on a node's pool (replicas race by CAS)."""
        return self._locks.setdefault(node, asyncio.Lock())

    async def create_endpoint(self, key: str, endpoint: CceEndpoint) -> tuple[CceEndpoint, bool]:
        """Write a new endpoint record; when a concurrent request with the same key wrote it first, that one and
        True."""
        try:
            await self.stores.endpoints.create(key, endpoint)
        except CceError as err:
            if err.reason is not ErrorReason.CONFLICT:
                raise
            existing = await self.stores.endpoints.get(key)
            if existing is None:
                raise
            return existing.value, True
        return endpoint, False

    def forget(self, node: str) -> None:
        self._locks.pop(node, None)

    def nrs(self, node: str) -> NetResourceSet | None:
        assert self._nodes is not None
        return self._nodes.get(node_key(node))

    def pool(self, node: str) -> NodePool | None:
        assert self._pools is not None
        return self._pools.get(node_key(node))

    def instance_holder(self, instance_id: str, other_than: str) -> NetResourceSet | None:
        """Another node whose record, as this replica has seen it, names the instance."""
        assert self._nodes is not None
        return next((n for n in self._nodes.values() if n.spec.instance_id == instance_id and n.name != other_than),
                    None)

    def known_nodes(self) -> set[str]:
        assert self._nodes is not None and self._pools is not None
        return {v.name for v in self._nodes.values()} | {p.node for p in self._pools.values()}

    def knows(self, node: str) -> bool:
        """Whether the node has a record or a pool (`known_nodes` without building the set)."""
        assert self._nodes is not None and self._pools is not None
        key = node_key(node)
        return key in self._nodes.items or key in self._pools.items

    def provision(self, node: str) -> EniProvision | None:
        return next(iter(self.provisions.of(node).values()), None)

    def fixed_ips(self) -> dict[str, FixedIp]:
        """Every fixed IP reservation, by key (`<namespace>.<name>`)."""
        return {k: v.value for k, v in self._fixed.items.items()} if self._fixed else {}

    def reserved_on(self, node: str) -> dict[str, FixedIp]:
        """IP -> its reservation, for the reservations whose IP is on `node`."""
        return {str(r.ip): r for r in self.fixed_ips().values() if r.node == node}

    def spreads(self) -> list[SubnetSpread]:
        return list(self._spreads.values()) if self._spreads else []

    def subnets(self) -> dict[str, Subnet]:
        return {k: v.value for k, v in self._subnets.items.items()} if self._subnets else {}

    def cidr_pool(self) -> ClusterCidrPool | None:
        return self._cidr_pool.get("config") if self._cidr_pool else None

    def facts(self, node: str, spec: NodeSpec) -> NodeFacts:
        return NodeFacts(node=node, spec=spec, enis=tuple(self.enis.of(node).values()),
                         provision=self.provision(node), cidrs=tuple(self.node_cidrs.of(node).values()),
                         routes=tuple(self.routes.of(node).values()), cidr_pool=self.cidr_pool(),
                         reserved=spread.reserved_ranges(self.spreads()))
