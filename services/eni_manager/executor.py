"""Carries out a plan's actions through `VpcApi`, recording every change and publishing an event for it.

A failed cloud call raises `CceError` to the caller (the node worker records it and retries later); what the cloud
did before failing (a partial add) is recorded first. Every step is safe to repeat: a new leader may redo it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chassis.events import EventPublisher
from chassis.logs import get_logger
from cloud.port import CloudEni, VpcApi
from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.records import Eni, EniState
from services.eni_manager.domain import (
    Action,
    AddIps,
    AddPrimaryIps,
    AttachEni,
    AwaitAttach,
    CreateEni,
    DeleteEni,
    DropPrimaryNic,
    DropProvision,
    Quota,
    RemoveIps,
    RemovePrimaryIps,
    SyncPrimaryNic,
)
from services.eni_manager.ledger import Ledger
from services.eni_manager.mirror import differs, eni_from_cloud, primary_nic_record, with_ips
from services.eni_manager.modes import primary_nic_id
from services.eni_manager.subnets import SubnetMirror

log = get_logger("eni_manager.executor")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class NodeContext:
    """What the executor needs to know about the node it acts for."""

    node: str
    instance_id: str
    vpc_id: str
    quota: Quota


@dataclass(frozen=True)
class Timing:
    poll_s: float = 0.2
    timeout_s: float = 60.0


class Executor:
    def __init__(self, api: VpcApi, ledger: Ledger, subnets: SubnetMirror, events: EventPublisher,
                 timing: Timing, sleep: Sleep = asyncio.sleep) -> None:
        self.api = api
        self.ledger = ledger
        self.subnets = subnets
        self.events = events
        self.timing = timing
        self._sleep = sleep

    async def run(self, ctx: NodeContext, action: Action) -> None:
        match action:
            case AddIps():
                await self.add_ips(ctx, action)
            case RemoveIps():
                await self.remove_ips(ctx, action)
            case CreateEni():
                await self._in_flight(ctx, self.create(ctx, action))
            case AttachEni():
                await self._in_flight(ctx, self.attach(ctx, action.eni_id))
            case AwaitAttach():
                await self._in_flight(ctx, self.await_attach(ctx, action.eni_id))
            case DeleteEni():
                await self.delete(ctx, action)
            case DropProvision():
                await self.ledger.drop_provision(ctx.node)
                await self.events.publish(EventKind.ENI, "node-cleaned", node=ctx.node,
                                          message=f"every ENI of {ctx.node} is gone")
            case SyncPrimaryNic():
                await self.sync_primary(ctx)
            case AddPrimaryIps():
                await self.add_primary_ips(ctx, action)
            case RemovePrimaryIps():
                await self.remove_primary_ips(ctx, action.ips)
            case DropPrimaryNic():
                await self.drop_primary(ctx, action)

    # --- vpc-eni-primary: the instance's own NIC --------------------------------------------------------------

    async def sync_primary(self, ctx: NodeContext) -> None:
        """Read the instance into its primary NIC's record (created on the first read)."""
        instance = await self.api.get_instance(ctx.instance_id)
        subnet = await self.subnets.get(instance.subnet_id)
        eni_id = primary_nic_id(ctx.instance_id)
        previous = self.ledger.enis.get(eni_id)
        record = primary_nic_record(instance, node=ctx.node, eni_id=eni_id, subnet_cidr=subnet.cidr,
                                    ip_quota=ctx.quota.ips_per_eni, now=utcnow(), previous=previous)
        if not differs(previous, record):
            return
        await self.ledger.enis.put(eni_id, record)
        if previous is None:
            await self.events.publish(EventKind.ENI, "primary-nic", node=ctx.node, object=eni_id, mac=record.mac,
                                      ips=len(record.secondary_ips), message=f"the primary NIC of {ctx.instance_id}"
                                      f" carries the pool of {ctx.node}")
        else:
            await self._announce_resync(ctx, previous, record)

    def _primary(self, ctx: NodeContext) -> Eni | None:
        return self.ledger.enis.get(primary_nic_id(ctx.instance_id))

    async def add_primary_ips(self, ctx: NodeContext, action: AddPrimaryIps) -> None:
        try:
            added = await self.api.add_primary_nic_ips(ctx.instance_id, count=action.count)
        except CceError as err:
            partial = [str(ip) for ip in err.details.get("added_ips") or []]
            nic = self._primary(ctx)
            if partial and nic is not None:
                await self._record_added(ctx, nic.eni_id, partial)
            raise
        nic = self._primary(ctx)
        if nic is not None:
            await self._record_added(ctx, nic.eni_id, added)

    async def remove_primary_ips(self, ctx: NodeContext, ips: tuple[str, ...]) -> None:
        try:
            await self.api.remove_primary_nic_ips(ctx.instance_id, ips)
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                raise
            await self.sync_primary(ctx)  # some IP is already gone: take the cloud's word
            return
        nic = self._primary(ctx)
        if nic is not None:
            await self.ledger.enis.put(nic.eni_id, with_ips(nic, remove=list(ips), now=utcnow()))
            await self.subnets.took(nic.subnet_id, -len(ips))
            await self.events.publish(EventKind.IP, "removed", node=ctx.node, object=nic.eni_id, count=len(ips),
                                      ips=list(ips), message=f"{len(ips)} released IPs deleted from {nic.eni_id}")

    async def drop_primary(self, ctx: NodeContext, action: DropPrimaryNic) -> None:
        """A removed node: its secondary IPs leave the primary NIC (an instance already gone is done)."""
        nic = self._primary(ctx)
        try:
            if action.ips:
                await self.api.remove_primary_nic_ips(ctx.instance_id, action.ips)
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                raise
        if nic is not None:
            await self.subnets.took(nic.subnet_id, -len(action.ips))
            await self.ledger.enis.drop(nic.eni_id)
            await self.events.publish(EventKind.ENI, "primary-nic-released", node=ctx.node, object=nic.eni_id,
                                      count=len(action.ips), message=f"{len(action.ips)} IPs left the primary NIC")

    # --- secondary IPs ----------------------------------------------------------------------------------------

    async def add_ips(self, ctx: NodeContext, action: AddIps) -> None:
        try:
            added = await self.api.add_private_ips(action.eni_id, count=action.count)
        except CceError as err:
            await self._record_added(ctx, action.eni_id, [str(ip) for ip in err.details.get("added_ips") or []])
            if err.reason is ErrorReason.SUBNET_NO_MORE_IP:
                record = self.ledger.enis.get(action.eni_id)
                if record is not None:
                    await self.subnets.refresh_quietly(record.subnet_id)
            raise
        await self._record_added(ctx, action.eni_id, added)

    async def _record_added(self, ctx: NodeContext, eni_id: str, added: list[str]) -> None:
        record = self.ledger.enis.get(eni_id)
        if not added or record is None:
            return
        await self.ledger.enis.put(eni_id, with_ips(record, add=added, now=utcnow()))
        await self.subnets.took(record.subnet_id, len(added))
        await self.events.publish(EventKind.IP, "added", node=ctx.node, object=eni_id, count=len(added),
                                  ips=added, message=f"{len(added)} IPs added to {eni_id}")

    async def remove_ips(self, ctx: NodeContext, action: RemoveIps) -> None:
        try:
            await self.api.remove_private_ips(action.eni_id, action.ips)
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                raise
            # some IP (or the ENI) is already gone: take the cloud's word and let the next plan decide
            await self.refresh(ctx, action.eni_id)
            return
        record = self.ledger.enis.get(action.eni_id)
        if record is not None:
            await self.ledger.enis.put(action.eni_id, with_ips(record, remove=list(action.ips), now=utcnow()))
            await self.subnets.took(record.subnet_id, -len(action.ips))
        await self.events.publish(EventKind.IP, "removed", node=ctx.node, object=action.eni_id,
                                  count=len(action.ips), ips=list(action.ips),
                                  message=f"{len(action.ips)} released IPs deleted from {action.eni_id}")

    # --- ENI lifecycle ----------------------------------------------------------------------------------------

    async def _in_flight(self, ctx: NodeContext, step: Awaitable[None]) -> None:
        """`creating_eni` is set while an ENI is created or attached (left set if the leader dies meanwhile)."""
        await self._set_creating(ctx, True)
        try:
            await step
        except Exception:
            await self._set_creating(ctx, False)
            raise
        await self._set_creating(ctx, False)

    async def create(self, ctx: NodeContext, action: CreateEni) -> None:
        """Create, record at once (before attaching, so a successor knows it), attach, wait until in use."""
        subnet = await self.subnets.get(action.subnet_id)
        try:
            eni_id = await self.api.create_eni(name=action.name, subnet_id=action.subnet_id,
                                               security_group_ids=action.security_group_ids,
                                               description=action.description)
        except CceError as err:
            if err.reason is ErrorReason.SUBNET_NO_MORE_IP:
                await self.subnets.refresh_quietly(action.subnet_id)
            raise
        now = utcnow()
        record = Eni(eni_id=eni_id, node=ctx.node, instance_id=ctx.instance_id, name=action.name,
                     description=action.description, vpc_id=ctx.vpc_id or None, subnet_id=subnet.subnet_id,
                     subnet_cidr=subnet.cidr, zone=subnet.zone, security_group_ids=list(action.security_group_ids),
                     state=EniState.AVAILABLE, ip_quota=ctx.quota.ips_per_eni, index=action.index,
                     state_since=now, synced_at=now, use=action.use)
        await self.ledger.enis.put(eni_id, record)
        await self.subnets.took(subnet.subnet_id, 1)
        await self.events.publish(EventKind.ENI, "created", node=ctx.node, object=eni_id, name=action.name,
                                  subnet_id=action.subnet_id, index=action.index, use=action.use.value)
        await self.attach(ctx, eni_id)

    async def attach(self, ctx: NodeContext, eni_id: str) -> None:
        try:
            await self.api.attach_eni(eni_id, ctx.instance_id)
        except CceError as err:
            # a predecessor may have attached it already: go on waiting unless it is still available
            if err.reason is not ErrorReason.CLOUD_INVALID_STATE:
                raise
            if (await self.api.get_eni(eni_id)).status is EniState.AVAILABLE:
                raise
        await self.await_attach(ctx, eni_id)

    async def await_attach(self, ctx: NodeContext, eni_id: str) -> None:
        cloud = await self._await_state(eni_id, EniState.INUSE)
        await self.record(ctx, cloud)
        if cloud.status is not EniState.INUSE:
            raise CceError(ErrorReason.TIMEOUT, f"ENI {eni_id} is still {cloud.status} after "
                           f"{self.timing.timeout_s}s", eni_id=eni_id)
        await self.events.publish(EventKind.ENI, "attached", node=ctx.node, object=eni_id,
                                  instance_id=ctx.instance_id, mac=cloud.mac)

    async def delete(self, ctx: NodeContext, action: DeleteEni) -> None:
        """Detach when attached, wait until available, delete, drop the record. An ENI already gone is done."""
        cloud = await self._get_or_none(action.eni_id)
        if cloud is not None:
            cloud = await self._detached(ctx, cloud)
            try:
                await self.api.delete_eni(action.eni_id)
            except CceError as err:
                if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                    raise
            await self.subnets.took(cloud.subnet_id, -len(cloud.private_ips))
        await self.ledger.enis.drop(action.eni_id)
        await self.events.publish(EventKind.ENI, "deleted", node=ctx.node, object=action.eni_id, why=action.why)

    async def _detached(self, ctx: NodeContext, cloud: CloudEni) -> CloudEni:
        if cloud.status is EniState.ATTACHING:
            cloud = await self._await_state(cloud.eni_id, EniState.INUSE)
        if cloud.status is EniState.INUSE:
            await self.api.detach_eni(cloud.eni_id, cloud.instance_id or ctx.instance_id)
            await self.events.publish(EventKind.ENI, "detaching", node=ctx.node, object=cloud.eni_id)
        if cloud.status is not EniState.AVAILABLE:
            cloud = await self._await_state(cloud.eni_id, EniState.AVAILABLE)
        if cloud.status is not EniState.AVAILABLE:
            raise CceError(ErrorReason.TIMEOUT, f"ENI {cloud.eni_id} is still {cloud.status} after "
                           f"{self.timing.timeout_s}s", eni_id=cloud.eni_id)
        return cloud

    # --- reading the cloud back -------------------------------------------------------------------------------

    async def refresh(self, ctx: NodeContext, eni_id: str) -> None:
        """Re-read one ENI into its record; drop the record if the ENI is gone."""
        cloud = await self._get_or_none(eni_id)
        if cloud is None:
            if self.ledger.enis.get(eni_id) is not None:
                await self.ledger.enis.drop(eni_id)
                await self.events.publish(EventKind.ENI, "vanished", node=ctx.node, object=eni_id)
            return
        await self.record(ctx, cloud, announce=True)

    async def _get_or_none(self, eni_id: str) -> CloudEni | None:
        try:
            return await self.api.get_eni(eni_id)
        except CceError as err:
            if err.reason is ErrorReason.CLOUD_NOT_FOUND:
                return None
            raise

    async def _await_state(self, eni_id: str, want: EniState) -> CloudEni:
        """Poll until the ENI is in `want`, or the timeout passes (then its last state is returned)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timing.timeout_s
        while True:
            cloud = await self.api.get_eni(eni_id)
            if cloud.status is want or loop.time() >= deadline:
                return cloud
            await self._sleep(self.timing.poll_s)

    async def record(self, ctx: NodeContext, cloud: CloudEni, index: int | None = None,
                     announce: bool = False) -> None:
        """Write what the cloud says about one ENI into its record (kept when nothing changed). `index` is for
        an ENI no record knows yet (adoption); a known ENI keeps its own. `announce`: publish what changed."""
        previous = self.ledger.enis.get(cloud.eni_id)
        subnet = await self.subnets.get(cloud.subnet_id)
        slot = previous.index if previous is not None else index
        assert slot is not None, f"an index is needed to record the unknown ENI {cloud.eni_id}"
        record = eni_from_cloud(cloud, node=ctx.node, instance_id=ctx.instance_id, subnet_cidr=subnet.cidr,
                                quota=ctx.quota, index=slot, now=utcnow(), previous=previous)
        if not differs(previous, record):
            return
        await self.ledger.enis.put(cloud.eni_id, record)
        if announce and previous is not None:
            await self._announce_resync(ctx, previous, record)

    async def _announce_resync(self, ctx: NodeContext, before: Eni, after: Eni) -> None:
        added = sorted(set(map(str, after.secondary_ips)) - set(map(str, before.secondary_ips)))
        removed = sorted(set(map(str, before.secondary_ips)) - set(map(str, after.secondary_ips)))
        if before.state is not after.state:
            await self.events.publish(EventKind.ENI, "resynced", node=ctx.node, object=after.eni_id,
                                      message=f"{after.eni_id} is {after.state.value} in the cloud",
                                      before=before.state.value, after=after.state.value)
        if added or removed:
            await self.events.publish(EventKind.IP, "resynced", node=ctx.node, object=after.eni_id,
                                      count=len(added) + len(removed), added=added, removed=removed,
                                      message=f"the cloud has {len(added)} more and {len(removed)} fewer IPs")

    async def _set_creating(self, ctx: NodeContext, creating: bool) -> None:
        record = self.ledger.provision_of(ctx.node)
        if record is not None and record.creating_eni != creating:
            await self.ledger.put_provision(record.model_copy(update={"creating_eni": creating,
                                                                      "updated_at": utcnow()}))
