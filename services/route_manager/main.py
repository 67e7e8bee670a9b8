"""Composition root of route_manager (one leader, standbys wait on the lease).

route_manager owns the cluster CIDR pool, node CIDRs and VPC route rules (vpc-route mode). Only the leader acts;
its handlers and reconcile loops are wired here as they are built.
"""

from __future__ import annotations

from chassis.config import ChassisSettings
from chassis.service import ServiceProcess, run
from schemas.subjects import CIDR_POOL, NODE_CIDRS, ROUTE_MANAGER, ROUTES


async def wire(proc: ServiceProcess) -> None:
    for bucket in (CIDR_POOL, NODE_CIDRS, ROUTES):
        await proc.store(bucket)
    await proc.campaign()


def main() -> None:
    run(ROUTE_MANAGER, ChassisSettings, wire, description="node CIDRs and the VPC route table")
