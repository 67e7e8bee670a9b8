"""Node objects -> node registrations on the bus, and the node's network state back on the Node (a condition of
ours, `CCENetworkReady`, and Events; `NetworkUnavailable`, our NoSchedule taint and the extended resources of
`readiness.py`).

- A Node that names a Baidu instance the cloud knows is registered (`cce.node.v1.register`), again whenever what it
  says changes or its record is gone from the bus.
- A Node whose providerID, labels or annotations cannot be used, or whose instance the cloud does not know, gets
  the condition False with the reason and an Event; nothing else happens to it (a registration it had stays).
- A Node deleted and not back within `node_gone_grace_s` is removed from the bus (`cce.node.v1.remove`), which
  releases its ENIs, IPs, node CIDRs and route rules. Nothing is removed while the Node list is not current.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chassis.bus import Bus
from chassis.kv import KvCache, Versioned
from chassis.logs import get_logger
from chassis.rpc import call
from cloud.port import CloudInstance, VpcApi
from schemas.base import from_subject_token, subject_token, utcnow
from schemas.errors import CceError, ErrorReason
from schemas.messages import NodeRegisterRequest, NodeRemoveRequest
from schemas.records import EniProvision, NetResourceSet
from schemas.subjects import NODE_REGISTER, NODE_REMOVE
from services.k8s_bridge import nodefacts, readiness
from services.k8s_bridge.kube import MERGE_PATCH, STRATEGIC_PATCH, Informer, Key, KubeApi, KubeError
from services.k8s_bridge.kubeevents import InvolvedObject, KubeEvent
from services.k8s_bridge.nodefacts import Defaults, NodeProblem
from services.k8s_bridge.readiness import NodeNetwork
from services.k8s_bridge.recorder import EventRecorder
from services.k8s_bridge.workqueue import WorkQueue

log = get_logger("k8s_bridge.nodes")

CONDITION = readiness.READY_CONDITION
NODES_PATH = "/api/v1/nodes"


def slim_node(obj: dict[str, Any]) -> dict[str, Any]:
    """What the bridge reads of a Node (its status also lists every image on it: not kept)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ours = (readiness.IP_RESOURCE, readiness.ENI_RESOURCE)
    return {
        "metadata": {k: meta[k] for k in ("name", "uid", "resourceVersion", "labels", "annotations") if k in meta},
        "spec": {"providerID": spec.get("providerID", ""), "taints": list(spec.get("taints") or [])},
        "status": {"capacity": status.get("capacity") or {},
                   "allocatable": {k: v for k, v in (status.get("allocatable") or {}).items() if k in ours},
                   "conditions": [c for c in status.get("conditions") or []
                                  if c.get("type") in readiness.CONDITIONS]},
    }


@dataclass(frozen=True)
class Lookup:
    instance: CloudInstance | None  # None: the cloud does not know it
    at: float


class NodeSync:
    def __init__(self, api: KubeApi, bus: Bus, cloud: VpcApi, informer: Informer,
                 records: KvCache[NetResourceSet], recorder: EventRecorder, defaults: Defaults, *,
                 gone_grace_s: float, recheck_s: float, workers: int,
                 wait_turn: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic,
                 provisions: KvCache[EniProvision] | None = None) -> None:
        self.api = api
        self.bus = bus
        self.cloud = cloud
        self.informer = informer
        self.records = records
        self.provisions = provisions  # eni_manager's word on each node: why its pool cannot fill, when it cannot
        self.recorder = recorder
        self.defaults = defaults
        self.gone_grace_s = gone_grace_s
        self.recheck_s = recheck_s
        self.clock = clock
        self.queue: WorkQueue[str] = WorkQueue("nodes", self.reconcile, workers, wait_turn)
        self.sent: dict[str, NodeRegisterRequest] = {}
        self.lookups: dict[str, Lookup] = {}
        self.gone_since: dict[str, float] = {}
        informer.handlers.append(self._on_node)

    # ---- triggers ------------------------------------------------------------------------------------------------

    def _on_node(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.queue.add(key[1])

    def on_record(self, key: str, item: Versioned[NetResourceSet] | None) -> None:
        self.queue.add(from_subject_token(key))

    def on_provision(self, key: str, item: Versioned[EniProvision] | None) -> None:
        self.queue.add(key)

    def resync(self) -> None:
        self.queue.add_all({k[1] for k in self.informer.store} | {r.name for r in self.records.values()})

    def node_uid(self, name: str) -> str:
        obj = self.informer.store.get(("", name))
        return str(((obj or {}).get("metadata") or {}).get("uid") or "")

    # ---- one node ------------------------------------------------------------------------------------------------

    async def reconcile(self, name: str) -> None:
        obj = self.informer.store.get(("", name))
        record = self.records.get(subject_token(name))
        if obj is None:
            await self._gone(name, record)
            return
        self.gone_since.pop(name, None)
        view = nodefacts.read_node(obj)
        if isinstance(view, NodeProblem):
            await self._problem(obj, view)
            return
        lookup = await self._lookup(view.instance_id)
        if lookup.instance is None:
            self.queue.add(name, self.recheck_s)
            await self._problem(obj, NodeProblem(nodefacts.INSTANCE_NOT_FOUND,
                                                 f"spec.providerID names instance {view.instance_id}, which the "
                                                 "cloud does not know; the node is not registered"))
            return
        request = nodefacts.registration(view, lookup.instance, self.defaults)
        if record is None or self.sent.get(name) != request:
            try:
                record = await self._register(request) or record
            except CceError as err:
                if err.reason is not ErrorReason.CONFLICT or "holder" not in err.details:  # not the instance's
                    raise
                self.queue.add(name, self.recheck_s)  # the node holding the instance may leave: try again then
                await self._problem(obj, NodeProblem(nodefacts.INSTANCE_IN_USE, err.message))
                return
        provision = self.provisions.get(name) if self.provisions is not None else None
        await self._publish(obj, readiness.of_record(record, provision))

    async def _lookup(self, instance_id: str) -> Lookup:
        cached = self.lookups.get(instance_id)
        if cached is not None and (cached.instance is not None or self.clock() - cached.at < self.recheck_s):
            return cached
        try:
            lookup = Lookup(await self.cloud.get_instance(instance_id), self.clock())
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                raise  # throttled, unreachable: the queue retries with a back-off
            lookup = Lookup(None, self.clock())
        self.lookups[instance_id] = lookup
        return lookup

    async def _register(self, request: NodeRegisterRequest) -> NetResourceSet | None:
        try:
            reply = await call(self.bus, NODE_REGISTER, request, timeout=10.0)
        except CceError as err:
            if err.reason is ErrorReason.CONFLICT and "being removed" in err.message:
                log.info("node is still being removed from the bus; registering once it is gone", node=request.node)
                return None  # its record's deletion brings it back here
            raise
        self.sent[request.node] = request
        if reply.created:
            log.info("node registered", node=request.node, instance=request.instance_id, mode=request.mode.value)
        nrs: NetResourceSet = reply.nrs
        return nrs

    async def _gone(self, name: str, record: NetResourceSet | None) -> None:
        self.sent.pop(name, None)
        if record is None:
            self.gone_since.pop(name, None)
            return
        if record.status.removing:
            return
        if not (self.informer.synced.is_set() and self.informer.healthy):
            self.gone_since.pop(name, None)  # the list may be stale: judge again once it is current
            self.queue.add(name, 5.0)
            return
        since = self.gone_since.setdefault(name, self.clock())
        left = since + self.gone_grace_s - self.clock()
        if left > 0:
            self.queue.add(name, left)
            return
        await call(self.bus, NODE_REMOVE, NodeRemoveRequest(node=name), timeout=10.0)
        self.gone_since.pop(name, None)
        log.info("Node object gone; node removed from the bus", node=name, grace_s=self.gone_grace_s)

    async def _problem(self, obj: dict[str, Any], problem: NodeProblem) -> None:
        name = obj["metadata"]["name"]
        log.warning("Node cannot be registered", node=name, reason=problem.reason, problem=problem.message)
        await self.recorder.record(KubeEvent(InvolvedObject("Node", name, uid=obj["metadata"].get("uid", "")),
                                             "Warning", problem.reason, problem.message))
        await self._publish(obj, readiness.of_problem(problem.reason, problem.message))

    async def _publish(self, obj: dict[str, Any], network: NodeNetwork) -> None:
        """The node's network on its Node: conditions and extended resources in its status, our taint in its spec;
        each written only when it changes (a status patch is a strategic merge: others' conditions stay)."""
        name = obj["metadata"]["name"]
        now = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            patch = readiness.status_patch(obj["status"], network, now)
            if patch is not None:
                await self.api.write("PATCH", f"{NODES_PATH}/{name}/status", patch, STRATEGIC_PATCH)
            taints = readiness.taints(obj["spec"].get("taints") or [], network.ready)
            if taints is not None:
                version = str(obj["metadata"].get("resourceVersion") or "")
                await self.api.write("PATCH", f"{NODES_PATH}/{name}",
                                     readiness.taints_patch(version, taints), MERGE_PATCH)
                log.info("node taint " + ("lifted" if network.ready else "set"), node=name,
                         taint=readiness.TAINT_KEY, reason=network.reason)
        except KubeError as err:
            if err.not_found:
                return
            if err.conflict:  # the Node changed since our copy: its watch event brings it back here
                self.queue.add(name, 0.2)
                return
            raise
