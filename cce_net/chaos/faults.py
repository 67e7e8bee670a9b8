"""Doing a chaos run's faults to a running local stack: signals to its processes (the stack's supervisor restarts
the dead ones), a nats-server restart, the simulated cloud's fault API, and changes made in the cloud behind the
system's back (through the production cloud adapter, as an operator's console would)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cce_net.chaos.invariants import OUR_ENI
from cce_net.chaos.schedule import Fault
from cce_net.stack import LocalStack, Proc
from chassis.bus import Bus
from chassis.kv import Store
from cloud.bce import BceSettings, BceVpcApi
from cloud.port import CloudApi
from schemas.records import Lease, NodePool
from schemas.subjects import LEASES, POOLS
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.faults import FaultConfig, LatencySpec, RateLimitSpec

MUTATING_APIS = ("create_eni", "attach_eni", "detach_eni", "delete_eni", "batch_add_private_ips",
                 "batch_delete_private_ips", "add_private_ip", "delete_private_ip", "create_route_rule",
                 "delete_route_rule", "batch_add_instance_ips", "batch_delete_instance_ips")
# every cloud call takes a few ms, so a leader killed at a random moment is often killed mid-call
BASE_LATENCY = {"*": LatencySpec(median_ms=8, p99_ms=60)}
ERROR_RATE = 0.3
THROTTLE = RateLimitSpec(rate_per_s=2, burst=2)


@dataclass
class FaultRunner:
    stack: LocalStack
    bus: Bus
    sim_token: str
    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # no target at that moment (e.g. no free IP)
    log: list[str] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)  # pids we ended: their exits are not crashes
    stopped: set[int] = field(default_factory=set)
    cloud_modes: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # ---- the processes ---------------------------------------------------------------------------------------

    def procs(self, service: str) -> list[Proc]:
        return [p for p in self.stack.procs if p.service.name == service and p.alive]

    async def leader(self, service: str) -> str | None:
        store: Store[Lease] = Store(await self.bus.bucket(LEASES, create=False), Lease, LEASES.name)
        item = await store.get(service)
        return item.value.holder if item else None

    async def pick(self, fault: Fault, service: str, role: str = "any") -> Proc | None:
        procs = self.procs(service)
        if role != "any":
            with contextlib.suppress(Exception):
                holder = await asyncio.wait_for(self.leader(service), 3)
                procs = [p for p in procs if (p.id == holder) == (role == "leader")]
        return procs[fault.pick % len(procs)] if procs else None

    def kill(self, proc: Proc) -> None:
        assert proc.popen is not None
        self.killed.add(proc.popen.pid)
        proc.backoff = 1.0  # a deliberate kill is not a crash loop: restart at the first back-off step
        proc.popen.send_signal(signal.SIGKILL)

    def freeze(self, proc: Proc, hold_s: float) -> None:
        assert proc.popen is not None
        pid = proc.popen.pid
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)

        async def thaw() -> None:
            await asyncio.sleep(hold_s)
            self.thaw(pid)

        self._spawn(thaw())

    def thaw(self, pid: int) -> None:
        if pid in self.stopped:
            self.stopped.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- the cloud -------------------------------------------------------------------------------------------

    def cloud_config(self) -> FaultConfig:
        errors = {api: ERROR_RATE for api in MUTATING_APIS} if "errors" in self.cloud_modes else {}
        limits = {api: THROTTLE for api in MUTATING_APIS} if "throttle" in self.cloud_modes else {}
        return FaultConfig(latency=BASE_LATENCY, error_rates=errors, rate_limits=limits, error_code="InternalError",
                           error_status=500)

    async def apply_cloud(self) -> None:
        async with SimAdmin(self.stack.sim_url, token=self.sim_token) as admin:
            await admin.set_faults(self.cloud_config())

    def cloud_for(self, mode: str, hold_s: float) -> None:
        self.cloud_modes.add(mode)

        async def end() -> None:
            await asyncio.sleep(hold_s)
            self.cloud_modes.discard(mode)
            with contextlib.suppress(Exception):
                await self.apply_cloud()

        self._spawn(end())

    async def cloud_api(self) -> BceVpcApi:
        async with SimAdmin(self.stack.sim_url, token=self.sim_token) as admin:
            info = await admin.info()
        wide = {api: (1e6, 1_000_000) for api in CloudApi}
        return BceVpcApi(BceSettings(endpoint=self.stack.sim_url, access_key=info["accessKey"],
                                     secret_key=info["secretKey"], vpc_id=info["vpcId"], rate_limits=wide,
                                     backoff_base_s=0.05, backoff_max_s=0.2))

    async def our_enis(self) -> list[dict[str, Any]]:
        async with SimAdmin(self.stack.sim_url, token=self.sim_token) as admin:
            enis = (await admin.info()).get("enis", [])
        return [e for e in enis if str(e.get("description", "")).startswith(OUR_ENI) and e["status"] == "inuse"]

    async def detach_eni(self, fault: Fault) -> str | None:
        enis = await self.our_enis()
        if not enis:
            return None
        eni = enis[fault.pick % len(enis)]
        await (await self.cloud_api()).detach_eni(eni["eniId"], eni["instanceId"])
        return f"{eni['eniId']} from {eni['instanceId']}"

    async def remove_ip(self, fault: Fault) -> str | None:
        """A free IP (in no claim, no release, no cooldown) of an ENI of ours, removed in the cloud."""
        store: Store[NodePool] = Store(await self.bus.bucket(POOLS, create=False), NodePool, POOLS.name)
        pools = {p.value.node: p.value for p in (await store.list()).values()}
        free = []
        for eni in await self.our_enis():
            node = str(eni["description"]).split("node=", 1)[-1].split()[0]
            pool = pools.get(node)
            taken = set(pool.allocated) | set(pool.releasing) | set(pool.cooldown) if pool else set()
            free += [(eni["eniId"], p["privateIpAddress"]) for p in eni["privateIpSet"]
                     if not p["primary"] and p["privateIpAddress"] not in taken]
        if not free:
            return None
        eni_id, ip = sorted(free)[fault.pick % len(free)]
        await (await self.cloud_api()).remove_private_ips(eni_id, [ip])
        return f"{ip} from {eni_id}"

    # ---- one fault ---------------------------------------------------------------------------------------------

    async def fire(self, fault: Fault) -> None:
        try:
            what = await self._do(fault)
        except Exception as err:
            what = f"refused: {err!r}"[:200]
        if what is None:
            self.skipped[fault.kind] += 1
            self.log.append(f"{fault.line()}  -> skipped (no target)")
            return
        self.injected[fault.kind] += 1
        self.log.append(f"{fault.line()}  -> {what}")

    async def _do(self, fault: Fault) -> str | None:
        kind = fault.kind
        kills = {"kill-ipam": ("ipam", "any"), "kill-eni-leader": ("eni_manager", "leader"),
                 "kill-eni-standby": ("eni_manager", "standby"), "kill-route-leader": ("route_manager", "leader"),
                 "kill-sim": ("vpc_sim", "any"), "kill-datapath": ("node_datapath", "any"),
                 "kill-gateway": ("cni_gateway", "any")}
        if kind in kills:
            proc = await self.pick(fault, *kills[kind])
            if proc is None:
                return None
            self.kill(proc)
            return f"SIGKILL {proc.id}"
        if kind in ("stop-eni-leader", "stop-ipam"):
            proc = await self.pick(fault, "eni_manager" if kind == "stop-eni-leader" else "ipam",
                                   "leader" if kind == "stop-eni-leader" else "any")
            if proc is None:
                return None
            self.freeze(proc, fault.hold_s)
            return f"SIGSTOP {proc.id} for {fault.hold_s}s"
        if kind == "nats-restart":
            assert self.stack.nats is not None, "nats-restart needs the embedded nats-server"
            await asyncio.to_thread(self.stack.nats.restart)
            return f"nats-server restarted (pid {self.stack.nats.pid})"
        if kind in ("cloud-errors", "cloud-throttle"):
            self.cloud_for(kind.removeprefix("cloud-"), fault.hold_s)
            await self.apply_cloud()
            return f"{kind} for {fault.hold_s}s"
        if kind == "detach-eni":
            return await self.detach_eni(fault)
        if kind == "remove-ip":
            return await self.remove_ip(fault)
        raise ValueError(f"unknown fault kind {kind!r}")

    async def calm(self) -> None:
        """The end of the faults: every frozen process thawed, the cloud back to its base behaviour."""
        for task in list(self.tasks):
            task.cancel()
        for pid in list(self.stopped):
            self.thaw(pid)
        self.cloud_modes.clear()
        for _ in range(20):
            try:
                await self.apply_cloud()
                return
            except Exception:
                await asyncio.sleep(0.5)  # the simulator may be restarting after a kill
