"""Composition root of node_datapath (one per node, root).

Reads the endpoints (ipam) and ENIs (eni_manager) of its node through watch caches, writes its EniOnNode records,
serves setup/teardown/check on its own node's subjects and runs the resync loop. With CCE_DATAPATH_NETNS set,
every netlink and sysctl operation happens in that namespace while the process stays where it reaches NATS (how
simulated nodes run).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Histogram

from chassis.events import EventPublisher
from chassis.kv import KvCache, Store, Versioned
from chassis.logs import get_logger
from chassis.service import ServiceProcess, run
from schemas.base import subject_token
from schemas.errors import ErrorReason
from schemas.events import EventKind
from schemas.records import CceEndpoint, Eni, EniOnNode, NetResourceSet
from schemas.subjects import (
    DATAPATH_CHECK,
    DATAPATH_SETUP,
    DATAPATH_TEARDOWN,
    ENDPOINTS,
    ENI_ON_NODE,
    ENIS,
    NODE_DATAPATH,
    NODES,
    eni_on_node_key,
)
from services.node_datapath.datapath import NodeDatapath, Timing
from services.node_datapath.netlink import Kernel
from services.node_datapath.settings import DatapathSettings

log = get_logger("node_datapath")


class CachedRecords:
    """Records from the watch caches (filled in once they are loaded)."""

    def __init__(self) -> None:
        self.endpoint_store: Store[CceEndpoint] | None = None
        self.endpoint_cache: KvCache[CceEndpoint] | None = None
        self.eni_cache: KvCache[Eni] | None = None
        self.node_cache: KvCache[NetResourceSet] | None = None

    def endpoints(self) -> list[CceEndpoint]:
        return self.endpoint_cache.values() if self.endpoint_cache else []

    def endpoint(self, key: str) -> CceEndpoint | None:
        return self.endpoint_cache.get(key) if self.endpoint_cache else None

    async def fetch_endpoint(self, key: str) -> CceEndpoint | None:
        cached = self.endpoint(key)
        if cached is not None or self.endpoint_store is None:
            return cached
        item = await self.endpoint_store.get(key)
        return item.value if item else None

    def enis(self) -> dict[str, Eni]:
        return {e.eni_id: e for e in self.eni_cache.values()} if self.eni_cache else {}

    def node_record(self, node: str) -> NetResourceSet | None:
        return self.node_cache.get(subject_token(node)) if self.node_cache else None


class BusReporter:
    def __init__(self, node: str, store: Store[EniOnNode], events: EventPublisher) -> None:
        self.node = node
        self.store = store
        self.events = events

    async def eni_state(self, record: EniOnNode) -> None:
        await self.store.mutate(eni_on_node_key(self.node, record.eni_id), lambda _: record)

    async def eni_gone(self, eni_id: str) -> None:
        await self.store.mutate(eni_on_node_key(self.node, eni_id), lambda _: None)

    async def event(self, kind: EventKind, what: str, *, message: str, object: str = "",
                    reason: ErrorReason | None = None, **data: Any) -> None:
        await self.events.publish(kind, what, node=self.node, message=message, object=object, reason=reason,
                                  **data)


OPERATION_SECONDS = Histogram(
    "cce_datapath_operation_seconds", "pod network setup, teardown and check on the node, by operation, the pod's "
    "network mode (unknown when the request names no endpoint) and outcome (success or failure)",
    ["operation", "mode", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def timed(operation: str, handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    async def serve(req: Any) -> Any:
        started, outcome = time.perf_counter(), "failure"
        endpoint = getattr(req, "endpoint", None)
        mode = endpoint.mode.value if endpoint is not None else "unknown"
        try:
            reply = await handler(req)
            outcome = "success"
            return reply
        finally:
            OPERATION_SECONDS.labels(operation, mode, outcome).observe(time.perf_counter() - started)

    return serve


def datapath_settings(proc: ServiceProcess) -> DatapathSettings:
    settings = proc.settings
    return settings if isinstance(settings, DatapathSettings) else DatapathSettings(**settings.model_dump())


async def build(proc: ServiceProcess, settings: DatapathSettings | None = None) -> NodeDatapath:
    """Load the caches, serve the node's requests and start the resync loop."""
    settings = settings or datapath_settings(proc)
    node = settings.node
    timing = Timing(settings.datapath_resync_period_s, settings.datapath_gc_grace_s, settings.datapath_eni_wait_s,
                    settings.datapath_debounce_s)
    records = CachedRecords()
    store: Store[EniOnNode] = await proc.store(ENI_ON_NODE)
    datapath = NodeDatapath(node, Kernel(settings.datapath_netns), records, BusReporter(node, store, proc.events),
                            timing)
    datapath.adopt_reported([v.value for v in (await store.list(f"{subject_token(node)}.")).values()])

    def on_endpoint(key: str, item: Versioned[Any] | None) -> None:
        """Only an endpoint that vanished without a teardown matters between periods (its pod is stale): new and
        confirmed endpoints follow a setup and released ones a teardown, and a resync per pod ADD or DEL would
        compete with the ADDs and DELs themselves."""
        if item is None and key.startswith(f"{subject_token(node)}.") and not datapath.tore_down(key):
            datapath.kick()

    eni_facts: dict[str, tuple[Any, ...]] = {}

    def on_eni(key: str, item: Versioned[Any] | None) -> None:
        """What the node's links depend on: the ENI's node, state, use, MAC, index, subnet and primary IP; its
        secondary IPs come and go with every pool refill and change nothing on the node."""
        value = getattr(item, "value", None)
        facts = None if not isinstance(value, Eni) or value.node != node else (
            value.state, value.use, value.mac, value.index, value.subnet_cidr, value.primary_ip)
        if eni_facts.get(key) != facts:
            if facts is None:
                eni_facts.pop(key, None)
            else:
                eni_facts[key] = facts
            datapath.kick()

    seen: dict[str, tuple[Any, ...]] = {}

    def on_node(key: str, item: Versioned[Any] | None) -> None:
        """The node's own record matters only for what the datapath reads from it (mode, router IP, MAC)."""
        value = getattr(item, "value", None)
        if key != subject_token(node) or not isinstance(value, NetResourceSet):
            return
        facts = (value.spec.mode, value.status.router_ip, value.spec.primary_mac)
        if seen.get(key) != facts:
            seen[key] = facts
            datapath.kick()

    records.endpoint_store = await proc.store(ENDPOINTS)
    # the node's own records only: what a node holds and hears does not grow with the cluster (ENI records are keyed
    # by ENI id, so the others' are dropped as they arrive)
    own = subject_token(node)
    records.endpoint_cache = await proc.cache(ENDPOINTS, on_endpoint, keys=f"{own}.>")
    records.node_cache = await proc.cache(NODES, on_node, keys=own)
    records.eni_cache = await proc.cache(ENIS, on_eni, keep=lambda eni: eni.node == node)
    await datapath.resync()  # before serving: ENIs configured, leftovers marked
    for spec, handler in ((DATAPATH_SETUP, datapath.setup), (DATAPATH_TEARDOWN, datapath.teardown),
                          (DATAPATH_CHECK, datapath.check)):
        await proc.rpc.add(spec, timed(spec.name, handler), subject=spec.for_node(node))
    proc.spawn(datapath.run(), name="datapath-resync")
    proc.health.add_check("resync", lambda: (True, f"{datapath.resyncs} passes"))
    log.info("datapath serving", node=node, netns=settings.datapath_netns or "own")
    return datapath


async def wire(proc: ServiceProcess) -> None:
    await build(proc)


def main() -> None:
    run(NODE_DATAPATH, DatapathSettings, wire, description="programs one node's pod and ENI network")
