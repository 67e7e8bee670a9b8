"""A control plane of real processes for integration tests: ipam and eni_manager replicas started with
`python -m services.<name>` against the session's nats-server and an in-process simulated VPC, each with its own
log file; any of them can be killed with SIGKILL and started again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chassis.bus import Bus
from chassis.kv import Store
from chassis.rpc import call
from cloud.bce import BceSettings, BceVpcApi
from cloud.port import CloudApi, CloudEni
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import AllocateReply, AllocateRequest, NodeRegisterRequest, PodRef
from schemas.records import Eni, EniProvision, Lease, NetResourceSet, NodePool, PoolSettings
from schemas.subjects import ENIS, IPAM_ALLOCATE, LEASES, NODE_REGISTER, NODES, POOLS, PROVISION
from services.vpc_sim.server import SimServer

MODULES = {"ipam": "services.ipam", "eni_manager": "services.eni_manager", "route_manager": "services.route_manager",
           "k8s_bridge": "services.k8s_bridge"}


@dataclass
class Cluster:
    bus: Bus
    sim: SimServer
    nats_url: str
    logs: Path
    lease_ttl_s: float = 1.5
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)  # extra environment per service

    def env(self, sid: str) -> dict[str, str]:
        return {**os.environ, "CCE_NATS_URL": self.nats_url, "CCE_SERVICE_ID": sid, "CCE_HTTP_PORT": "0",
                "CCE_LEASE_TTL_S": str(self.lease_ttl_s), "CCE_LOG_LEVEL": "info",
                "CCE_CLOUD_ENDPOINT": self.sim.url, "CCE_CLOUD_ACCESS_KEY": self.sim.access_key,
                "CCE_CLOUD_SECRET_KEY": self.sim.secret_key, "CCE_CLOUD_BACKOFF_BASE_S": "0.05",
                "CCE_CLOUD_BACKOFF_MAX_S": "0.5", "CCE_RESYNC_PERIOD_S": "5", "CCE_RETRY_BACKOFF_S": "0.2",
                "CCE_MAINTENANCE_PERIOD_S": "0.5"}

    def start(self, service: str, sid: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{sid}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", MODULES[service]],
                                    env={**self.env(sid), **self.service_env.get(service, {})}, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs[sid] = proc
        return proc

    def kill(self, sid: str) -> None:
        proc = self.procs[sid]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def log(self, sid: str) -> str:
        return (self.logs / f"{sid}.log").read_text(errors="replace")

    async def wait_started(self, *sids: str, timeout: float = 30) -> None:
        await until(lambda: all("service started" in self.log(s) for s in sids), timeout, f"{sids} to start")

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for sid, proc in self.procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                tail = self.log(sid)[-4000:]  # the service reports what it was still doing (chassis.service.serve)
                print(f"\n{sid} did not stop within 15 s of SIGTERM and was killed; its log ends:\n{tail}",
                      file=sys.__stderr__)  # a diagnostic for whoever reads the run, not a test outcome

    # --- records and cloud ------------------------------------------------------------------------------------

    async def store(self, bucket) -> Store:  # type: ignore[no-untyped-def,type-arg]
        return Store(await self.bus.bucket(bucket), bucket.record, bucket.name)

    async def pool(self, node: str) -> NodePool | None:
        item = await (await self.store(POOLS)).get(node)
        return item.value if item else None

    async def provision(self, node: str) -> EniProvision | None:
        item = await (await self.store(PROVISION)).get(node)
        return item.value if item else None

    async def eni_records(self, node: str) -> list[Eni]:
        return [v.value for v in (await (await self.store(ENIS)).list()).values() if v.value.node == node]

    async def leader(self, service: str) -> str | None:
        item: object = await Store(await self.bus.bucket(LEASES), Lease, LEASES.name).get(service)
        return item.value.holder if item else None  # type: ignore[attr-defined]

    def api(self) -> BceVpcApi:
        wide = {api: (1e6, 1_000_000) for api in CloudApi}
        return BceVpcApi(BceSettings(endpoint=self.sim.url, access_key=self.sim.access_key,
                                     secret_key=self.sim.secret_key, vpc_id=self.sim.vpc_id, rate_limits=wide))

    async def cloud_enis(self, instance_id: str) -> list[CloudEni]:
        return await self.api().list_enis(vpc_id=self.sim.vpc_id, instance_id=instance_id)

    async def register(self, name: str, inst: dict[str, object], *, max_pods: int = 110,
                       pool: PoolSettings | None = None, mode: NetworkMode = NetworkMode.VPC_ENI,
                       **extra: object) -> None:
        """Register like a node agent; `extra`: more NodeRegisterRequest fields (max_enis, allow_exclusive...).
        A just-started ipam may not be subscribed yet: ServiceUnavailable is retried for a few seconds."""
        req = NodeRegisterRequest(
            node=name, instance_id=str(inst["id"]), instance_type=str(inst["instanceType"]),  # type: ignore[arg-type]
            zone=str(inst["zoneName"]), cpus=int(inst["cpuCount"]),  # type: ignore[call-overload]
            memory_mib=int(inst["memoryCapacityInGB"]) * 1024,  # type: ignore[call-overload]
            max_pods=max_pods, pool=pool, mode=mode, **extra)  # type: ignore[arg-type]
        for attempt in range(50):
            try:
                await call(self.bus, NODE_REGISTER, req, timeout=5)
                return
            except CceError as err:
                if err.reason is not ErrorReason.SERVICE_UNAVAILABLE or attempt == 49:
                    raise
                await asyncio.sleep(0.1)

    async def nrs(self, node: str) -> NetResourceSet | None:
        item = await (await self.store(NODES)).get(node)
        return item.value if item else None

    async def allocate(self, node: str, cid: str, *, wait_s: float = 30, retries: int = 0,
                       timeout: float = 40, exclusive: bool = False) -> AllocateReply:
        """Allocate like kubelet does: a timed-out request is repeated with the same key."""
        req = AllocateRequest(node=node, container_id=cid, pod=PodRef(namespace="default", name=cid), wait_s=wait_s,
                              exclusive=exclusive)
        for attempt in range(retries + 1):
            try:
                reply: AllocateReply = await call(self.bus, IPAM_ALLOCATE, req, timeout=timeout)
                return reply
            except CceError as err:
                if attempt == retries or not err.retryable:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")


async def until(predicate, timeout: float, what: str, every: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Wait for a condition (sync or async predicate) with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


@asynccontextmanager
async def eni_control_plane(bus: Bus, sim: SimServer, nats_url: str, logs: Path, ipam: int = 1, eni_managers: int = 1,
                            service_env: dict[str, dict[str, str]] | None = None) -> AsyncIterator[Cluster]:
    """ipam-1..N and em-1..M as processes, up and with an eni_manager leader; all stopped on exit."""
    c = Cluster(bus, sim, nats_url, logs, service_env=service_env or {})
    sids: Sequence[tuple[str, str]] = [(f"ipam-{i}", "ipam") for i in range(1, ipam + 1)] + [
        (f"em-{i}", "eni_manager") for i in range(1, eni_managers + 1)]
    for sid, service in sids:
        c.start(service, sid)
    try:
        await c.wait_started(*(sid for sid, _ in sids))
        await until(lambda: c.leader("eni_manager"), 15, "an eni_manager leader")
        yield c
    finally:
        await c.stop()
