"""PodSubnetTopologySpread / ClusterPodSubnetTopologySpread objects -> `cce_psts` (the records ipam selects subnets
by), validated against the VPC (the subnet mirror first, the cloud for a subnet not mirrored yet), and their status
(per subnet: IPs used and free; a `Valid` condition with every error) with a Warning Event when a spread turns
invalid. A status is written at most once per `interval_s`; the rules are in `spreads.py`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from chassis.kv import KvCache, Versioned
from chassis.logs import get_logger
from cloud.port import VpcApi
from schemas.errors import CceError, ErrorReason
from schemas.records import CceEndpoint, Eni, Subnet, SubnetSpread
from schemas.subjects import CLUSTER_SPREAD_PREFIX, psts_key
from services.k8s_bridge import spreads as sp
from services.k8s_bridge.kube import MERGE_PATCH, Informer, KubeApi, KubeError
from services.k8s_bridge.kubeevents import InvolvedObject, KubeEvent
from services.k8s_bridge.projection import Kind, merge_patch
from services.k8s_bridge.recorder import EventRecorder
from services.k8s_bridge.workqueue import WorkQueue

log = get_logger("k8s_bridge.spreads")

Work = tuple[str, str, str]  # (kind, namespace, name)


class SpreadSync:
    def __init__(self, api: KubeApi, cloud: VpcApi, informers: dict[str, Informer], records: KvCache[SubnetSpread],
                 endpoints: KvCache[CceEndpoint], subnets: KvCache[Subnet], enis: KvCache[Eni],
                 recorder: EventRecorder, *, interval_s: float, wait_turn: Callable[[], Any] | None = None) -> None:
        self.api = api
        self.cloud = cloud
        self.informers = informers  # kind -> informer of its objects
        self.records = records
        self.endpoints = endpoints
        self.subnets = subnets
        self.enis = enis
        self.recorder = recorder
        self.interval_s = interval_s
        self.queue: WorkQueue[Work] = WorkQueue("spreads", self.reconcile, 2, wait_turn)
        self.last_write: dict[Work, float] = {}
        self.writes = 0
        for kind_name, informer in informers.items():
            informer.handlers.append(self._on_object(kind_name))

    def _on_object(self, kind_name: str) -> Callable[..., None]:
        def handler(key: tuple[str, str], _old: Any, _new: Any) -> None:
            self.queue.add((kind_name, *key))
        return handler

    @staticmethod
    def work_of(key: str) -> Work:
        scope, name = key.split(".", 1)
        if scope == CLUSTER_SPREAD_PREFIX:
            return sp.CPSTS.kind, "", name
        return sp.PSTS.kind, scope, name

    def on_record(self, key: str, _item: Versioned[SubnetSpread] | None) -> None:
        self.queue.add(self.work_of(key))

    def on_endpoint(self, _key: str, item: Versioned[CceEndpoint] | None) -> None:
        if item is not None and item.value.psts:
            self.queue.add(self.work_of(item.value.psts), self.interval_s)
        elif item is None:  # a released endpoint: which spread it was under is gone with it; statuses catch up
            self.resync_statuses()

    def on_subnet(self, _key: str, _item: Versioned[Subnet] | None) -> None:
        self.resync_statuses()

    def resync_statuses(self) -> None:
        for key in self.records.items:
            self.queue.add(self.work_of(key), self.interval_s)

    def resync(self) -> None:
        work: set[Work] = {self.work_of(k) for k in self.records.items}
        for kind_name, informer in self.informers.items():
            work |= {(kind_name, *key) for key in informer.store}
        self.queue.add_all(work)

    # ---- one spread ------------------------------------------------------------------------------------------

    async def reconcile(self, work: Work) -> None:
        kind_name, namespace, name = work
        informer = self.informers[kind_name]
        if not informer.synced.is_set():
            self.queue.add(work, 1.0)
            return
        kind = sp.PSTS if kind_name == sp.PSTS.kind else sp.CPSTS
        key = psts_key(namespace, name)
        obj = informer.store.get((namespace, name))
        if obj is None:
            if self.records.get(key) is not None:
                await self.records.store.delete(key)
                log.info("spread gone", psts=key)
            return
        spread = sp.validate(sp.parse(obj, not kind.namespaced), await self._vpc(obj))
        if spread is None:  # nothing ipam could use: its pods are not selected until it is fixed
            if self.records.get(key) is not None:
                await self.records.store.delete(key)
            errors = "; ".join(sp.parse(obj, not kind.namespaced).errors)
            if (obj.get("status") or {}).get("valid") is not False:
                await self._warn(kind, obj, "InvalidSpec", errors)
            await self._patch_status(work, kind, obj, sp.unreadable_status(errors))
            return
        record = await self._write_record(key, spread, obj, kind)
        await self._write_status(work, kind, obj, record)

    async def _vpc(self, obj: dict[str, Any]) -> dict[str, Subnet | None]:
        """Subnet id -> the subnet, None when the VPC has none of that id (other cloud errors: retried later)."""
        out: dict[str, Subnet | None] = {}
        for raw in (obj.get("spec") or {}).get("subnets") or []:
            subnet_id = raw.get("subnetId") if isinstance(raw, dict) else None
            if not isinstance(subnet_id, str) or subnet_id in out:
                continue
            out[subnet_id] = self.subnets.get(subnet_id) or await self._ask_cloud(subnet_id)
        return out

    async def _ask_cloud(self, subnet_id: str) -> Subnet | None:
        try:
            found = await self.cloud.get_subnet(subnet_id)
        except CceError as err:
            if err.reason in (ErrorReason.CLOUD_NOT_FOUND, ErrorReason.INVALID_REQUEST):
                return None
            raise
        try:
            return Subnet(subnet_id=found.subnet_id, vpc_id=found.vpc_id, zone=found.zone, cidr=found.cidr,
                          available_ips=max(found.available_ips, 0), name=found.name)
        except ValueError:
            return None

    async def _write_record(self, key: str, spread: SubnetSpread, obj: dict[str, Any], kind: Kind) -> SubnetSpread:
        current = self.records.get(key)
        if current is not None and sp.same_spread(current, spread):
            return current
        item = await self.records.store.mutate(key, lambda _old: spread)
        if spread.errors and (current is None or current.errors != spread.errors):
            await self._warn(kind, obj, "InvalidSubnetTopologySpread", "; ".join(spread.errors))
        log.info("spread recorded", psts=key, valid=spread.is_valid, errors=spread.errors)
        return item.value if item is not None else spread

    async def _write_status(self, work: Work, kind: Kind, obj: dict[str, Any], record: SubnetSpread) -> None:
        loop = asyncio.get_running_loop()
        wait = self.last_write.get(work, -1e9) + self.interval_s - loop.time()
        if wait > 0:
            self.queue.add(work, wait)
            return
        key = sp.key_of(record)
        used = sp.used_by_subnet(key, self.endpoints.values())
        held = {str(p.ip) for e in self.enis.values() for p in e.private_ips} if any(
            s.ranges for s in record.subnets) else set()
        peers = [s for s in self.records.values() if s.namespace == record.namespace]
        others = sp.ambiguous(peers).get(key, [])
        mirrored = {k: v.value for k, v in self.subnets.items.items()}
        desired = sp.status(record, used, mirrored, held, others, record.updated_at)
        await self._patch_status(work, kind, obj, desired)

    async def _patch_status(self, work: Work, kind: Kind, obj: dict[str, Any], desired: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        patch = merge_patch(desired, obj.get("status"))
        if patch is None:
            return
        meta = obj.get("metadata") or {}
        namespace, name = (meta.get("namespace", "") if kind.namespaced else ""), meta.get("name", "")
        path = sp.spread_path(kind, namespace, name)
        try:
            updated = await self.api.write("PATCH", f"{path}/status", {"status": patch}, MERGE_PATCH)
        except KubeError as err:
            if err.not_found:
                return  # deleted meanwhile: its informer says so next
            raise
        self.writes += 1
        self.last_write[work] = loop.time()
        if isinstance(updated, dict):
            self.informers[kind.kind].store[(namespace, name)] = updated

    async def _warn(self, kind: Kind, obj: dict[str, Any], reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        involved = InvolvedObject(kind.kind, meta.get("name", ""), meta.get("namespace", "") if kind.namespaced
                                  else "", meta.get("uid", ""))
        try:
            await self.recorder.record(KubeEvent(involved, "Warning", reason, message or reason))
        except KubeError as err:
            log.info("spread event not written", reason=reason, error=str(err))
