"""Composition root of route_manager (one leader, standbys wait on the lease).

route_manager owns the cluster CIDR pool (`cce_cidr_pool`), node CIDRs (`cce_node_cidrs`) and the route rule
records (`cce_routes`), and makes every route-table cloud call through `VpcApi`. It reads the nodes and pools ipam
writes. Every replica keeps its caches warm and serves expand requests (the standby answers NotLeader); only the
leader acts (see `reconciler.py`).

Refusals at start: overlapping blocks or a mask that does not fit fail the settings; when the VPC is configured
(`CCE_CLOUD_VPC_ID`) the blocks are checked against the VPC CIDR and its subnets before anything is served, else as
soon as the leader learns the VPC from the first vpc-route node (the process then stops).
"""

from __future__ import annotations

from chassis.service import ServiceProcess, run
from cloud.bce import BceSettings, BceVpcApi
from cloud.port import VpcApi
from schemas.subjects import CIDR_POOL, NODE_CIDRS, NODES, POOLS, ROUTE_MANAGER, ROUTES
from services.route_manager.allocator import CidrAllocator
from services.route_manager.handlers import RouteHandlers
from services.route_manager.reconciler import RouteManager, Views, validate_vpc
from services.route_manager.routes import RouteSync
from services.route_manager.settings import RouteManagerSettings


async def wire_manager(proc: ServiceProcess, settings: RouteManagerSettings, api: VpcApi,
                       vpc_id: str = "") -> RouteManager:
    """Wire route_manager into a started process with this cloud; `vpc_id` empty: learnt from the first node."""
    if vpc_id:
        await validate_vpc(api, settings, vpc_id)  # ConfigError: refuse before serving anything
    allocator = CidrAllocator(await proc.store(NODE_CIDRS), settings.cluster_cidrs, settings.node_cidr_mask)
    routes = RouteSync(api, await proc.store(ROUTES), proc.events, settings.cluster_id, settings.conflict_policy)
    views = Views()
    manager = RouteManager(settings, api, allocator, routes, await proc.store(POOLS), await proc.store(CIDR_POOL),
                           proc.events, lambda coro, name: proc.spawn(coro, name=name), views, vpc_id=vpc_id)
    views.nodes = await proc.cache(NODES, manager.on_node_change)
    views.pools = await proc.cache(POOLS)
    await RouteHandlers(manager).serve(proc.rpc)
    await proc.campaign(manager.on_elected, manager.on_lost)
    return manager


async def wire(proc: ServiceProcess) -> None:
    cloud = BceSettings()
    await wire_manager(proc, RouteManagerSettings.of(proc.settings), BceVpcApi(cloud), vpc_id=cloud.vpc_id)


def main() -> None:
    run(ROUTE_MANAGER, RouteManagerSettings, wire, description="node CIDRs and the VPC route table")
