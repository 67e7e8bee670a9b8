"""Pod objects -> `cce_pods` (the facts the network reads, under each pod's node), and the endpoint GC that needs
Kubernetes to be right: an endpoint whose pod no longer exists, was re-created (another uid) or runs elsewhere is
released after `pod_gone_grace_s` — judged only while the pod list is current, from the moment it became so."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from chassis.bus import Bus
from chassis.events import EventPublisher
from chassis.grace import Grace
from chassis.kv import KvCache, Versioned
from chassis.logs import get_logger
from chassis.rpc import call
from schemas.base import utcnow
from schemas.errors import CceError
from schemas.events import EventKind
from schemas.messages import ReleaseRequest
from schemas.records import CceEndpoint, PodInfo
from schemas.subjects import IPAM_RELEASE
from services.k8s_bridge.kube import Informer, Key
from services.k8s_bridge.podfacts import (
    gone_endpoints,
    info_key,
    namespace_annotations,
    namespace_labels,
    network_annotations,
    pod_info,
    pod_ref,
    same_facts,
)
from services.k8s_bridge.workqueue import WorkQueue

log = get_logger("k8s_bridge.pods")

PODS_PATH = "/api/v1/pods"
NAMESPACES_PATH = "/api/v1/namespaces"


def slim_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {"metadata": {"name": meta.get("name", ""), "resourceVersion": meta.get("resourceVersion", ""),
                         "annotations": namespace_annotations(obj), "labels": namespace_labels(obj)}}


def slim_pod(obj: dict[str, Any]) -> dict[str, Any]:
    """What the bridge reads of a Pod (the rest of a pod can be large, and there are many)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences",
                                 "deletionTimestamp") if k in meta}
    kept["annotations"] = network_annotations(meta.get("annotations") or {})
    return {"metadata": kept, "spec": {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec}}


class PodSync:
    def __init__(self, bus: Bus, informer: Informer, records: KvCache[PodInfo], endpoints: KvCache[CceEndpoint],
                 events: EventPublisher, *, grace_s: float, wait_turn: Callable[[], Any] | None = None,
                 is_leader: Callable[[], bool] = lambda: True, clock: Callable[[], datetime] = utcnow,
                 namespaces: Informer | None = None) -> None:
        self.bus = bus
        self.informer = informer
        self.records = records
        self.endpoints = endpoints
        self.events = events
        self.grace_s = grace_s
        self.is_leader = is_leader
        self.clock = clock
        self.queue: WorkQueue[Key] = WorkQueue("pods", self.reconcile, 4, wait_turn)
        self.grace = Grace()
        self.released = 0
        self.keys_of: dict[Key, set[str]] = {}  # (namespace, name) -> its records' keys
        for record_key in records.items:
            self._index(record_key, True)
        informer.handlers.append(self._on_pod)
        self.namespaces = namespaces  # their annotations of ours go into their pods' records
        if namespaces is not None:
            namespaces.handlers.append(self._on_namespace)

    def _index(self, record_key: str, present: bool) -> Key:
        _node, namespace, name = record_key.split(".", 2)
        keys = self.keys_of.setdefault((namespace, name), set())
        if present:
            keys.add(record_key)
        else:
            keys.discard(record_key)
            if not keys:
                del self.keys_of[(namespace, name)]
        return namespace, name

    # ---- cce_pods --------------------------------------------------------------------------------------------------

    def _on_pod(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.queue.add(key)

    def _on_namespace(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if namespace_annotations(old) != namespace_annotations(new) or namespace_labels(old) != namespace_labels(new):
            self.queue.add_all({k for k in self.informer.store if k[0] == key[1]})

    def on_record(self, key: str, item: Versioned[PodInfo] | None) -> None:
        self.queue.add(self._index(key, item is not None))

    def resync(self) -> None:
        self.queue.add_all(set(self.informer.store) | set(self.keys_of))

    async def reconcile(self, key: Key) -> None:
        """Make the pod's records say what its object says: one record under its node, none elsewhere."""
        if not self.informer.synced.is_set() or (self.namespaces is not None and not self.namespaces.synced.is_set()):
            self.queue.add(key, 1.0)
            return
        obj = self.informer.store.get(key)
        space = self.namespaces.store.get(("", key[0])) if self.namespaces is not None else None
        info = pod_info(obj, namespace_annotations(space), namespace_labels(space)) if obj is not None else None
        wanted = info_key(info) if info is not None else None
        for record_key in sorted(self.keys_of.get(key, ())):
            if record_key != wanted:
                await self.records.store.delete(record_key)
        if info is None or wanted is None:
            return
        current = self.records.get(wanted)
        if current is not None and same_facts(current, info):
            return
        await self.records.store.mutate(wanted, lambda _old: info)

    # ---- endpoint GC ---------------------------------------------------------------------------------------------

    async def collect(self) -> int:
        """One pass: release the endpoints whose pod has been gone for the grace period; returns how many."""
        if not (self.is_leader() and self.informer.synced.is_set() and self.informer.healthy):
            self.grace.reset()  # nothing is judged on a list that may be stale; the grace starts again after
            return 0
        pods = dict(pod_ref(obj) for obj in self.informer.store.values())
        gone = gone_endpoints(((k, v.value) for k, v in self.endpoints.items.items()), pods)
        released = 0
        for key in self.grace.due("pod-gone", set(gone), self.clock(), self.grace_s):
            item = self.endpoints.items.get(key)
            if item is None:
                continue
            ep = item.value
            try:
                await call(self.bus, IPAM_RELEASE,
                           ReleaseRequest(node=ep.node, container_id=ep.container_id, ifname=ep.ifname), timeout=10.0)
            except CceError as err:
                log.warning("could not release an endpoint whose pod is gone; next pass", key=key,
                            reason=err.reason.value, error=err.message)
                continue
            released += 1
            self.released += 1
            log.info("endpoint released: its pod is gone", key=key, why=gone[key])
            await self.events.publish(EventKind.ENDPOINT, "pod-gone", node=ep.node, object=key,
                                      message=gone[key], namespace=ep.namespace, pod=ep.pod)
        return released

    async def run_gc(self, period_s: float) -> None:
        while True:
            try:
                await self.collect()
            except Exception as err:  # the next pass tries again
                log.warning("endpoint GC pass failed", error=repr(err))
            await asyncio.sleep(period_s)
