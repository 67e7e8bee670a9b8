"""Records -> custom resources. Every change of a record marks the resources it shows in; a marked resource is brought
to its projection at most once per `interval_s` (a burst of changes is one write); a resource edited or deleted by
hand is seen by its informer and put back; a resource whose record is gone is deleted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chassis.kv import KvCache, Versioned
from chassis.logs import get_logger
from schemas.base import from_subject_token, subject_token
from schemas.records import CceEndpoint, Eni, EniProvision, FixedIp, NetResourceSet, NodePool, Subnet
from schemas.subjects import fixed_ip_key
from services.k8s_bridge import projection
from services.k8s_bridge.kube import MERGE_PATCH, Informer, Key, KubeApi, KubeError, Resource
from services.k8s_bridge.projection import CEP, KINDS, NRS, SBN, Desired, Kind, ObjectKey, merge_patch
from services.k8s_bridge.workqueue import WorkQueue

log = get_logger("k8s_bridge.projector")

Work = tuple[str, str, str]  # (kind, namespace, name)


def resource_of(kind: Kind) -> Resource:
    return Resource(kind.plural, f"/apis/{projection.GROUP}/{projection.VERSION}/{kind.plural}")


def object_path(kind: Kind, namespace: str, name: str) -> str:
    base = f"/apis/{projection.GROUP}/{projection.VERSION}"
    return f"{base}/namespaces/{namespace}/{kind.plural}/{name}" if kind.namespaced else f"{base}/{kind.plural}/{name}"


@dataclass
class Records:
    """The bus records the projections are made of, with the indexes that say which resource a record shows in."""

    nodes: KvCache[NetResourceSet]
    pools: KvCache[NodePool]
    enis: KvCache[Eni]
    provision: KvCache[EniProvision]
    endpoints: KvCache[CceEndpoint]
    subnets: KvCache[Subnet]
    fixed: KvCache[FixedIp] | None = None  # fixed IPs: a reserved one whose pod is gone shows as the pod's cep
    eni_node: dict[str, str] = field(default_factory=dict)  # ENI id -> node
    node_enis: dict[str, set[str]] = field(default_factory=dict)  # node -> ENI ids
    endpoint_cep: dict[str, ObjectKey] = field(default_factory=dict)  # endpoint key -> (namespace, cep name)
    cep_endpoints: dict[ObjectKey, set[str]] = field(default_factory=dict)

    def index_eni(self, eni_id: str, eni: Eni | None) -> set[str]:
        touched = set()
        old = self.eni_node.pop(eni_id, None)
        if old is not None:
            touched.add(old)
            self.node_enis.get(old, set()).discard(eni_id)
        if eni is not None:
            self.eni_node[eni_id] = eni.node
            self.node_enis.setdefault(eni.node, set()).add(eni_id)
            touched.add(eni.node)
        return touched

    def index_endpoint(self, key: str, ep: CceEndpoint | None) -> set[ObjectKey]:
        touched = set()
        old = self.endpoint_cep.pop(key, None)
        if old is not None:
            touched.add(old)
            self.cep_endpoints.get(old, set()).discard(key)
        if ep is not None:
            cep = (ep.namespace, projection.cep_name(ep))
            self.endpoint_cep[key] = cep
            self.cep_endpoints.setdefault(cep, set()).add(key)
            touched.add(cep)
        return touched

    def desired(self, kind: str, namespace: str, name: str) -> Desired | None:
        if kind == NRS.kind:
            record = self.nodes.get(subject_token(name))
            if record is None:
                return None
            enis = [e for e in (self.enis.get(i) for i in self.node_enis.get(name, ())) if e is not None]
            return projection.nrs(record, self.pools.get(subject_token(name)), enis, self.provision.get(name))
        if kind == CEP.kind:
            eps = [e for e in (self.endpoints.get(k) for k in self.cep_endpoints.get((namespace, name), ()))
                   if e is not None]
            reserved = self.fixed.get(fixed_ip_key(namespace, name)) if self.fixed is not None else None
            return projection.ceps(eps, [reserved] if reserved else []).get((namespace, name))
        subnet = self.subnets.get(name)
        return projection.sbn(subnet) if subnet is not None else None


class Projector:
    def __init__(self, api: KubeApi, records: Records, informers: dict[str, Informer], *, interval_s: float,
                 wait_turn: Callable[[], Any] | None = None, workers: int = 4) -> None:
        self.api = api
        self.records = records
        self.informers = informers  # kind -> informer of its resources
        self.interval_s = interval_s
        self.queue: WorkQueue[Work] = WorkQueue("projections", self.reconcile, workers, wait_turn)
        self.last_write: dict[Work, float] = {}
        self.writes = 0
        for eni_id, eni in records.enis.items.items():
            records.index_eni(eni_id, eni.value)
        for key, ep in records.endpoints.items.items():
            records.index_endpoint(key, ep.value)
        for kind, informer in informers.items():
            informer.handlers.append(self._marker(kind))

    def _marker(self, kind: str) -> Callable[[Key, Any, Any], None]:
        return lambda key, _old, _new: self.queue.add((kind, *key))

    # ---- what marks a resource -----------------------------------------------------------------------------------

    def mark_node(self, node: str) -> None:
        self.queue.add((NRS.kind, "", node))

    def on_node(self, key: str, _item: Versioned[Any] | None) -> None:
        self.mark_node(from_subject_token(key))

    def on_eni(self, key: str, item: Versioned[Eni] | None) -> None:
        for node in self.records.index_eni(key, item.value if item else None):
            self.mark_node(node)

    def on_provision(self, key: str, _item: Versioned[EniProvision] | None) -> None:
        self.mark_node(key)

    def on_endpoint(self, key: str, item: Versioned[CceEndpoint] | None) -> None:
        for namespace, name in self.records.index_endpoint(key, item.value if item else None):
            self.queue.add((CEP.kind, namespace, name))

    def on_fixed(self, key: str, _item: Versioned[FixedIp] | None) -> None:
        namespace, name = key.split(".", 1)
        self.queue.add((CEP.kind, namespace, name))

    def on_subnet(self, key: str, _item: Versioned[Subnet] | None) -> None:
        self.queue.add((SBN.kind, "", key))

    def resync(self) -> None:
        r = self.records
        work: set[Work] = {(NRS.kind, "", from_subject_token(k)) for k in r.nodes.items}
        work |= {(CEP.kind, ns, name) for ns, name in r.cep_endpoints}
        work |= {(SBN.kind, "", k) for k in r.subnets.items}
        for key in r.fixed.items if r.fixed is not None else {}:
            namespace, name = key.split(".", 1)
            work.add((CEP.kind, namespace, name))
        for kind, informer in self.informers.items():
            work |= {(kind, *key) for key in informer.store}
        self.queue.add_all(work)

    # ---- one resource --------------------------------------------------------------------------------------------

    async def reconcile(self, work: Work) -> None:
        kind_name, namespace, name = work
        informer = self.informers[kind_name]
        if not informer.synced.is_set():
            self.queue.add(work, 1.0)
            return
        loop = asyncio.get_running_loop()
        wait = self.last_write.get(work, -1e9) + self.interval_s - loop.time()
        if wait > 0:
            self.queue.add(work, wait)
            return
        kind = next(k for k in KINDS if k.kind == kind_name)
        desired = self.records.desired(kind_name, namespace, name)
        actual = informer.store.get((namespace, name))
        wrote = await self._converge(kind, namespace, name, desired, actual)
        if wrote:
            self.last_write[work] = loop.time()
        elif desired is None:
            self.last_write.pop(work, None)

    async def _converge(self, kind: Kind, namespace: str, name: str, desired: Desired | None,
                        actual: dict[str, Any] | None) -> bool:
        """Create, patch or delete the resource; returns whether anything was written."""
        path = object_path(kind, namespace, name)
        store = self.informers[kind.kind].store
        if desired is None:
            if actual is None:
                return False
            await self._write("DELETE", path, None)
            store.pop((namespace, name), None)
            return True
        wrote = False
        if actual is None:
            try:
                actual = await self._write("POST", path.rsplit("/", 1)[0], desired.body())
                wrote = True
            except KubeError as err:
                if kind.namespaced and (err.not_found or "being terminated" in err.message):
                    # the namespace is gone or going: nothing to show there (the endpoint's own GC follows)
                    log.info("no resource made: its namespace is gone", kind=kind.kind, namespace=namespace,
                             name=name, error=err.message[:200])
                    return False
                if not err.conflict:
                    raise
                actual = await self.api.get(path)  # made meanwhile (our informer is behind): patch it instead
        spec_patch = merge_patch(desired.spec, (actual or {}).get("spec"))
        if spec_patch is not None:
            actual = await self._write("PATCH", path, {"spec": spec_patch}, MERGE_PATCH)
            wrote = True
        status_patch = merge_patch(desired.status, (actual or {}).get("status"))
        if status_patch is not None:
            actual = await self._write("PATCH", f"{path}/status", {"status": status_patch}, MERGE_PATCH)
            wrote = True
        if wrote and actual is not None:
            store[(namespace, name)] = actual
        return wrote

    async def _write(self, method: str, path: str, body: Any, content_type: str | None = None) -> Any:
        try:
            result = await self.api.write(method, path, body, content_type)
        except KubeError as err:
            if method == "DELETE" and err.not_found:
                return None
            raise
        self.writes += 1
        return result if method != "DELETE" else None
