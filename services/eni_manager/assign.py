"""A named private IP onto an ENI of a node (`cce.eni.v1.assign`): how a StatefulSet pod's fixed IP follows the pod to
another node of its subnet. The cloud unassigns it from the ENI of ours that carries it (another node's) and assigns
it to an ENI of the node in the same subnet with room; both ENI records are updated, as every cloud change is.

ipam asks only for an IP no pod holds (it claimed the IP on the new node first, and the old node keeps it under the
reservation's marker until the move is done). Only the leader moves IPs, one at a time; a standby answers NotLeader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from chassis.events import EventPublisher
from chassis.logs import get_logger
from cloud.port import VpcApi
from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import AssignIpReply, AssignIpRequest
from schemas.records import Eni, EniState, EniUse
from services.eni_manager.ledger import Ledger
from services.eni_manager.mirror import with_ips

log = get_logger("eni_manager.assign")


def carrier(enis: Iterable[Eni], ip: str) -> Eni | None:
    """The ENI record whose secondary IPs include `ip`."""
    return next((e for e in enis if ip in {str(i) for i in e.secondary_ips}), None)


def target_eni(enis: Iterable[Eni], node: str, subnet_id: str) -> Eni | None:
    """An in-use secondary-IP ENI of the node in the subnet with room (the one with most room; lowest index)."""
    fits = [e for e in enis if e.node == node and e.use is EniUse.SECONDARY_IPS and e.state is EniState.INUSE
            and e.subnet_id == subnet_id and (not e.ip_quota or len(e.private_ips) < e.ip_quota)]
    return min(fits, key=lambda e: (len(e.private_ips) - (e.ip_quota or 0), e.index, e.eni_id), default=None)


class Assigner:
    def __init__(self, api: VpcApi, ledger: Ledger, events: EventPublisher, is_leader: Callable[[], bool]) -> None:
        self.api = api
        self.ledger = ledger
        self.events = events
        self.is_leader = is_leader
        self._lock = asyncio.Lock()

    async def assign(self, req: AssignIpRequest) -> AssignIpReply:
        if not self.is_leader():
            raise CceError(ErrorReason.NOT_LEADER, "this eni_manager replica is a standby")
        ip = str(req.ip)
        async with self._lock:
            here = carrier(self.ledger.enis_of(req.node), ip)
            if here is not None:
                return AssignIpReply(eni_id=here.eni_id)
            target = target_eni(self.ledger.enis.values(), req.node, req.subnet_id)
            if target is None:
                raise CceError(ErrorReason.NO_AVAILABLE_SUBNET, f"node {req.node} has no ENI in subnet "
                               f"{req.subnet_id} with room for the fixed IP {ip}", node=req.node,
                               subnet_id=req.subnet_id, ip=ip)
            source = carrier(self.ledger.enis.values(), ip)
            self.ledger.moving.add(ip)  # a resync meanwhile neither puts it back on the source nor holds it back
            try:
                if source is not None:
                    await self._take_off(source, ip)
                try:
                    added = await self.api.add_private_ips(target.eni_id, ips=[ip])
                except CceError as err:
                    if err.reason is not ErrorReason.IP_IN_USE:
                        raise
                    source = await self._find_ours(target, ip, err)
                    await self._take_off(source, ip)
                    added = await self.api.add_private_ips(target.eni_id, ips=[ip])
                await self.ledger.enis.put(target.eni_id, with_ips(target, add=added, now=utcnow()))
            finally:
                self.ledger.moving.discard(ip)
        log.info("fixed IP assigned", ip=ip, node=req.node, eni_id=target.eni_id,
                 from_eni=source.eni_id if source else None)
        await self.events.publish(EventKind.IP, "assigned", node=req.node, object=target.eni_id, ips=[ip],
                                  from_eni=source.eni_id if source else None,
                                  message=f"{ip} assigned to {target.eni_id}"
                                          + (f", taken off {source.eni_id} ({source.node})" if source else ""))
        return AssignIpReply(eni_id=target.eni_id, moved_from=source.eni_id if source else None)

    async def _find_ours(self, target: Eni, ip: str, err: CceError) -> Eni:
        """The ENI of ours the cloud has the IP on, when the records said another (or none): they lag the cloud.
        One not ours keeps it: `err` (IPInUse) is the answer."""
        listed = await self.api.list_enis(vpc_id=target.vpc_id) if target.vpc_id else []
        holder = next((e for e in listed if ip in e.secondary_ips), None)
        record = self.ledger.enis.get(holder.eni_id) if holder is not None else None
        if record is None or holder is None:
            raise err
        log.warning("fixed IP found on another ENI of ours than recorded", ip=ip, eni_id=holder.eni_id,
                    node=record.node)
        return record

    async def _take_off(self, source: Eni, ip: str) -> None:
        try:
            await self.api.remove_private_ips(source.eni_id, [ip])
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                raise
        current = self.ledger.enis.get(source.eni_id)
        if current is not None:
            await self.ledger.enis.put(source.eni_id, with_ips(current, remove=[ip], now=utcnow()))
