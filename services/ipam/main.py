"""Composition root of ipam (any number of replicas, all serving).

ipam owns the node pools (NetResourceSet) and the pod endpoints. Its request handlers (register, allocate,
confirm, release) are wired here as they are built.
"""

from __future__ import annotations

from chassis.config import ChassisSettings
from chassis.service import ServiceProcess, run
from schemas.subjects import ENDPOINTS, IPAM, NODES


async def wire(proc: ServiceProcess) -> None:
    for bucket in (NODES, ENDPOINTS):
        await proc.store(bucket)


def main() -> None:
    run(IPAM, ChassisSettings, wire, description="pod IP allocation from per-node pools")
