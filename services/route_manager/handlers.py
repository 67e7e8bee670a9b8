"""Bus requests of route_manager: `cce.route.v1.expand.<node>` (a vpc-route node asks for one more CIDR).

Every replica subscribes; only the leader allocates, a standby answers NotLeader (retryable). The request id makes
a repeat return the CIDR the first one got."""

from __future__ import annotations

from chassis.rpc import RpcServer
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import ExpandReply, ExpandRequest
from schemas.records import NodeCidrState
from schemas.subjects import ROUTE_EXPAND
from services.route_manager.reconciler import RouteManager


class RouteHandlers:
    def __init__(self, manager: RouteManager) -> None:
        self.manager = manager

    async def serve(self, rpc: RpcServer) -> None:
        await rpc.add(ROUTE_EXPAND, self.expand)

    async def expand(self, req: ExpandRequest) -> ExpandReply:
        manager = self.manager
        if not manager.leading or not manager.validated:
            raise CceError(ErrorReason.NOT_LEADER, "this route_manager replica is not leading (yet)", node=req.node)
        nrs = manager.views.nrs(req.node)
        if nrs is None or nrs.status.removing:
            raise CceError(ErrorReason.NODE_NOT_REGISTERED, f"node {req.node} is not registered (or leaving)",
                           node=req.node)
        if nrs.spec.mode is not NetworkMode.VPC_ROUTE:
            raise CceError(ErrorReason.INVALID_REQUEST, f"node {req.node} is in {nrs.spec.mode.value} mode, not "
                           "vpc-route", node=req.node, fields=["node"])
        record, _new = await manager.allocate(req.node, req.request_id)
        active = [c.cidr for c in manager.allocator.of(req.node) if c.state is NodeCidrState.ACTIVE]
        return ExpandReply(cidrs=active, added=record.cidr)
