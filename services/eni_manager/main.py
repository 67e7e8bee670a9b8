"""Composition root of eni_manager (one leader, standbys wait on the lease).

eni_manager owns the ENI records and the subnet mirror, and makes every ENI cloud call. Only the leader acts;
its reconcile loops are wired here as they are built.
"""

from __future__ import annotations

from chassis.config import ChassisSettings
from chassis.service import ServiceProcess, run
from schemas.subjects import ENI_MANAGER, ENIS, SUBNETS


async def wire(proc: ServiceProcess) -> None:
    for bucket in (ENIS, SUBNETS):
        await proc.store(bucket)
    await proc.campaign()


def main() -> None:
    run(ENI_MANAGER, ChassisSettings, wire, description="ENI lifecycle and secondary IPs in the cloud")
