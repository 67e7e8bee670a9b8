"""Composition root of ipam (any number of replicas, all serving).

ipam owns the node records (NetResourceSet), the node pools (NodePool) and the pod endpoints (CceEndpoint); it
reads the ENI records and provisioning records eni_manager writes. Every replica serves register/remove and
allocate/confirm/release; the replica holding the "ipam-maintenance" lease also runs pool maintenance.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chassis.leader import LeaderElector
from chassis.rpc import call
from chassis.service import ServiceProcess, run
from schemas.errors import CceError, ErrorReason
from schemas.messages import AssignIpReply, AssignIpRequest, ExpandReply, ExpandRequest
from schemas.subjects import ENI_ASSIGN, IPAM, LEASES, ROUTE_EXPAND
from services.ipam.fixed_ops import FixedIps
from services.ipam.handlers import IpamHandlers
from services.ipam.maintenance import Maintenance
from services.ipam.metrics import POOL_GAUGES, leader_samples
from services.ipam.pool_ops import PoolOps
from services.ipam.settings import IpamSettings
from services.ipam.state import IpamState


@dataclass(frozen=True)
class Ipam:
    """The wired parts of one replica."""

    ops: PoolOps
    handlers: IpamHandlers
    maintenance: Maintenance
    elector: LeaderElector


def ipam_settings(proc: ServiceProcess) -> IpamSettings:
    settings = proc.settings
    return settings if isinstance(settings, IpamSettings) else IpamSettings(**settings.model_dump())


async def build(proc: ServiceProcess) -> Ipam:
    """Load the caches, start the maintenance campaign and serve the requests."""
    settings = ipam_settings(proc)
    ops = PoolOps(await IpamState.open(proc), settings)
    elector = LeaderElector(await proc.store(LEASES), settings.maintenance_lease, proc.id, settings.lease_ttl_s)
    proc.elector = elector  # resigned on shutdown, so another replica takes maintenance over at once
    proc.health.add_check("maintenance", lambda: (True, "leader" if elector.is_leader else "standby"))
    async def expand(req: ExpandRequest) -> ExpandReply:
        reply: ExpandReply = await call(proc.bus, ROUTE_EXPAND, req, timeout=settings.expand_timeout_s)
        return reply

    maintenance = Maintenance(ops, proc.events, elector, expand)
    POOL_GAUGES.source = leader_samples(ops.state, elector, ops.clock)
    proc.spawn(elector.run(), name="ipam-maintenance-lease")
    proc.spawn(maintenance.run(), name="ipam-maintenance")

    async def assign(req: AssignIpRequest) -> AssignIpReply:
        """eni_manager moves a fixed IP; its standby answers NotLeader: asked again (a queue group picks one)."""
        for attempt in range(6):
            try:
                reply: AssignIpReply = await call(proc.bus, ENI_ASSIGN, req, timeout=settings.assign_timeout_s)
                return reply
            except CceError as err:
                if err.reason is not ErrorReason.NOT_LEADER or attempt == 5:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    fixed = FixedIps(ops, proc.events, assign, settings.fixed_ip_ttl_s)
    maintenance.fixed = fixed
    handlers = IpamHandlers(ops, proc.events, fixed)
    await handlers.serve(proc.rpc)
    return Ipam(ops, handlers, maintenance, elector)


async def wire(proc: ServiceProcess) -> None:
    await build(proc)


def main() -> None:
    run(IPAM, IpamSettings, wire, description="pod IP allocation from per-node pools")
