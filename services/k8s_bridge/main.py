"""Composition root of k8s_bridge (one leader, a standby keeps its informers warm): the only service that talks to the
Kubernetes API.

- Nodes -> the bus: registration from each Node's own object, removal of Nodes gone for a grace (`nodesync.py`).
- Pods -> `cce_pods`, and the release of endpoints whose pod is gone (`podsync.py`).
- Records -> NetResourceSet / CCEEndpoint / Subnet resources (`projector.py`).
- Coded failures -> Kubernetes Events on Pods and Nodes (`recorder.py`).

Every replica lists and watches; only the leader writes anywhere, and a new leader first compares everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chassis.kv import KvCache
from chassis.service import ServiceProcess, run
from cloud.bce import BceSettings, BceVpcApi
from cloud.port import VpcApi
from schemas.subjects import (
    ENDPOINTS,
    ENIS,
    FIXED_IPS,
    K8S_BRIDGE,
    NODES,
    PODS,
    POOLS,
    PROVISION,
    SPREADS,
    SUBNETS,
    Bucket,
)
from services.k8s_bridge.kube import Informer, KubeApi, Resource, api_client
from services.k8s_bridge.kubeevents import SpamFilter
from services.k8s_bridge.nodefacts import Defaults
from services.k8s_bridge.nodesync import NODES_PATH, NodeSync, slim_node
from services.k8s_bridge.podsync import NAMESPACES_PATH, PODS_PATH, PodSync, slim_namespace, slim_pod
from services.k8s_bridge.projection import KINDS
from services.k8s_bridge.projector import Projector, Records, resource_of
from services.k8s_bridge.recorder import BusEvents, EventRecorder
from services.k8s_bridge.settings import BridgeSettings
from services.k8s_bridge.spreads import SPREAD_KINDS
from services.k8s_bridge.spreadsync import SpreadSync


@dataclass
class Bridge:
    """The wired parts of one replica."""

    api: KubeApi
    informers: dict[str, Informer]
    nodes: NodeSync
    pods: PodSync
    projector: Projector
    recorder: EventRecorder
    bus_events: BusEvents
    spreads: SpreadSync

    def resync(self) -> None:
        self.nodes.resync()
        self.pods.resync()
        self.projector.resync()
        self.spreads.resync()

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.values())


async def build(proc: ServiceProcess, cloud: VpcApi) -> Bridge:
    settings = BridgeSettings.of(proc.settings)
    informers: dict[str, Informer] = {}
    api = KubeApi(api_client(settings.kubeconfig, settings.kube_workers + 8), settings.kube_workers,
                  settings.kube_qps, settings.kube_burst)

    def informer(name: str, resource: Resource,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] = lambda o: o) -> Informer:
        informers[name] = Informer(api, resource, settings.watch_timeout_s, transform)
        return informers[name]

    leader = asyncio.Event()

    async def wait_turn() -> None:
        await leader.wait()
    recorder = EventRecorder(api, SpamFilter(settings.event_burst, settings.event_refill_s), proc.id)
    defaults = Defaults(settings.default_mode, settings.default_max_pods, tuple(settings.default_subnet_ids),
                        tuple(settings.default_security_group_ids), settings.default_pool)
    changes = {bucket.name: Fanout() for bucket in (NODES, POOLS, ENIS, PROVISION, SUBNETS, ENDPOINTS, PODS,
                                                    FIXED_IPS, SPREADS)}

    async def cache(bucket: Bucket) -> KvCache[Any]:
        return await proc.cache(bucket, changes[bucket.name])

    node_records, provisions = await cache(NODES), await cache(PROVISION)
    nodes = NodeSync(api, proc.bus, cloud, informer("nodes", Resource("nodes", NODES_PATH), slim_node), node_records,
                     recorder, defaults, gone_grace_s=settings.node_gone_grace_s,
                     recheck_s=settings.instance_recheck_s, workers=settings.node_workers, wait_turn=wait_turn,
                     provisions=provisions)
    pods = PodSync(proc.bus, informer("pods", Resource("pods", PODS_PATH), slim_pod), await cache(PODS),
                   await cache(ENDPOINTS), proc.events, grace_s=settings.pod_gone_grace_s, wait_turn=wait_turn,
                   is_leader=leader.is_set,
                   namespaces=informer("namespaces", Resource("namespaces", NAMESPACES_PATH), slim_namespace))
    records = Records(node_records, await cache(POOLS), await cache(ENIS), provisions, pods.endpoints,
                      await cache(SUBNETS), await cache(FIXED_IPS))
    projector = Projector(api, records, {k.kind: informer(k.plural, resource_of(k)) for k in KINDS},
                          interval_s=settings.projection_interval_s, wait_turn=wait_turn)
    for bucket, handler in ((NODES, nodes.on_record), (NODES, projector.on_node), (POOLS, projector.on_node),
                            (ENIS, projector.on_eni), (PROVISION, projector.on_provision),
                            (PROVISION, nodes.on_provision),
                            (FIXED_IPS, projector.on_fixed),
                            (SUBNETS, projector.on_subnet), (ENDPOINTS, projector.on_endpoint), (PODS, pods.on_record)):
        changes[bucket.name].handlers.append(handler)
    spreads = SpreadSync(api, cloud, {k.kind: informer(k.plural, resource_of(k)) for k in SPREAD_KINDS},
                         await cache(SPREADS), pods.endpoints, records.subnets, records.enis, recorder,
                         interval_s=settings.projection_interval_s, wait_turn=wait_turn)
    spread_handlers: tuple[tuple[Bucket, Callable[[str, Any], None]], ...] = (
        (SPREADS, spreads.on_record), (ENDPOINTS, spreads.on_endpoint), (SUBNETS, spreads.on_subnet))
    for bucket, on_change in spread_handlers:
        changes[bucket.name].handlers.append(on_change)
    bus_events = BusEvents(proc.bus, recorder, nodes.node_uid, leader.is_set, leader.wait)
    bridge = Bridge(api, informers, nodes, pods, projector, recorder, bus_events, spreads)

    async def elected() -> None:
        leader.set()
        bridge.resync()  # a new leader trusts nothing it did not see itself

    async def lost() -> None:
        leader.clear()

    for inf in informers.values():
        await inf.start()
    proc.health.add_check("kubernetes", lambda: (True, _informer_health(bridge)))
    for name, loop in (("node-sync", nodes.queue.run()), ("pod-sync", pods.queue.run()),
                       ("projections", projector.queue.run()), ("spreads", spreads.queue.run()),
                       ("pod-gone-gc", pods.run_gc(settings.gc_period_s)),
                       ("bus-events", bus_events.run()), ("resync", _periodic(bridge.resync,
                                                                              settings.resync_period_s))):
        proc.spawn(loop, name=name)
    proc.spawn(_close_when_cancelled(bridge), name="kube-close")
    await proc.campaign(elected, lost)
    return bridge


async def _close_when_cancelled(bridge: Bridge) -> None:
    """Stop the watches and the API threads when the process shuts down (its tasks are cancelled)."""
    try:
        await asyncio.Event().wait()
    finally:
        for informer in bridge.informers.values():
            await informer.stop()
        bridge.api.close()


class Fanout:
    """A bucket cache's change handler that calls every handler added later (the caches load before their readers
    exist; the changes after that reach them all)."""

    def __init__(self) -> None:
        self.handlers: list[Callable[[str, Any], None]] = []

    def __call__(self, key: str, item: Any) -> None:
        for handler in self.handlers:
            handler(key, item)


def _informer_health(bridge: Bridge) -> str:
    return ", ".join(f"{n}: {'watching' if i.healthy else ('stale' if i.synced.is_set() else 'listing')}"
                     for n, i in bridge.informers.items())


async def _periodic(action: Callable[[], None], period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        action()


async def wire(proc: ServiceProcess) -> None:
    await build(proc, BceVpcApi(BceSettings()))


def main() -> None:
    run(K8S_BRIDGE, BridgeSettings, wire, description="Kubernetes objects <-> the network's records")
