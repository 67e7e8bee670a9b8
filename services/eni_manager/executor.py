"""Carries out a plan's actions through `VpcApi`, recording every change and publishing an event for it.

A failed cloud call raises `CceError` to the caller (the node worker records it and retries later); what the cloud
did before failing (a partial add) is recorded first. Every step is safe to repeat: a new leader may redo it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from ipaddress import IPv4Address

from chassis.events import EventPublisher
from chassis.logs import get_logger
from cloud.port import CloudEni, VpcApi
from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind, Severity
from schemas.records import Eni, EniState, EniUse, NodePool
from services.eni_manager.assign import target_eni
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
PodNodes = Callable[[str], Collection[str]]  # ip -> the nodes whose pool holds it for a pod
EndpointEni = Callable[[str], Awaitable[str | None]]  # endpoint key -> the ENI its IP was handed out on
# a named IP the cloud will not put back on its ENI: it went to something else, or there is no room for it
LOST = frozenset({ErrorReason.IP_IN_USE, ErrorReason.ENI_CAPACITY_EXCEED, ErrorReason.SUBNET_NO_MORE_IP})


def no_pods(_ip: str) -> Collection[str]:
    return ()


async def no_endpoints(_key: str) -> str | None:
    return None


@dataclass(frozen=True)
class NodeContext:
    """What the executor needs to know about the node it acts for."""

    node: str
    instance_id: str
    vpc_id: str
    quota: Quota


FIRST_POLL_S = 0.025  # the first pause while an ENI attaches or detaches; it doubles up to Timing.poll_s
# After our own attach or detach the first look comes at this share of how long the last ones took (learnt): a
# change the cloud makes in a steady time is then seen in one or two calls instead of one per doubling pause
# (~17 for a 3 s attach), and the share lets the estimate come down when the cloud gets faster.
LEARNT_SHARE = 0.8
LEARN_RATE = 0.3


@dataclass(frozen=True)
class Timing:
    poll_s: float = 0.2
    timeout_s: float = 60.0


class Executor:
    def __init__(self, api: VpcApi, ledger: Ledger, subnets: SubnetMirror, events: EventPublisher,
                 timing: Timing, sleep: Sleep = asyncio.sleep, pod_nodes: PodNodes = no_pods,
                 endpoint_eni: EndpointEni = no_endpoints) -> None:
        self.api = api
        self.pod_nodes = pod_nodes
        self.endpoint_eni = endpoint_eni
        self.ledger = ledger
        self.subnets = subnets
        self.events = events
        self.timing = timing
        self._sleep = sleep
        self._settle_s: dict[EniState, float] = {}  # how long our attaches (INUSE) and detaches took, learnt
        self.unavailable: set[str] = set()  # named IPs the cloud said are in use by something not ours
        self.held_back: dict[str, str] = {}  # IP -> node of the ENI the cloud put it on, kept off its record
        self._flying: dict[str, int] = {}  # node -> its ENIs being created or attached now
        self._unrestorable: dict[str, dict[str, str]] = {}  # node -> IP -> endpoint: a stray the cloud refused

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
        await self.put(ctx, record)
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
        if action.ips:
            await self.add_named_ips(ctx, action)
            return
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

    async def add_named_ips(self, ctx: NodeContext, action: AddIps) -> None:
        """A spread's range: these IPs by name. One the cloud says is in use (by something not ours) is skipped
        from then on; the batch is tried one IP at a time to find it."""
        try:
            added = await self.api.add_private_ips(action.eni_id, ips=list(action.ips))
        except CceError as err:
            await self._record_added(ctx, action.eni_id, [str(ip) for ip in err.details.get("added_ips") or []])
            if err.reason is not ErrorReason.IP_IN_USE:
                raise
            if len(action.ips) == 1:
                self.unavailable.update(action.ips)
                log.info("named IP in use elsewhere; skipped", ip=action.ips[0], eni_id=action.eni_id)
                return
            for ip in action.ips:
                await self.add_named_ips(ctx, AddIps(action.eni_id, 1, (ip,)))
            return
        await self._record_added(ctx, action.eni_id, added)

    async def _record_added(self, ctx: NodeContext, eni_id: str, added: list[str]) -> None:
        record = self.ledger.enis.get(eni_id)
        if not added or record is None:
            return
        await self.put(ctx, with_ips(record, add=added, now=utcnow()))
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
        """`creating_eni` is set while an ENI of the node is created or attached (several may be at once; left set
        if the leader dies meanwhile)."""
        self._flying[ctx.node] = self._flying.get(ctx.node, 0) + 1
        try:
            await self._set_creating(ctx, True)
            await step
        except asyncio.CancelledError:  # leadership lost: the flag stays, as a dying leader leaves it
            self._landed(ctx.node)
            raise
        except Exception:
            if self._landed(ctx.node):
                await self._set_creating(ctx, False)
            raise
        if self._landed(ctx.node):
            await self._set_creating(ctx, False)

    def _landed(self, node: str) -> bool:
        """One of the node's ENIs in flight is done; True when it was the last."""
        left = self._flying[node] - 1
        if left:
            self._flying[node] = left
            return False
        del self._flying[node]
        return True

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
        await self.put(ctx, record)
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
            return
        await self.await_attach(ctx, eni_id, asked=True)

    async def await_attach(self, ctx: NodeContext, eni_id: str, asked: bool = False) -> None:
        cloud = await self._await_state(eni_id, EniState.INUSE, asked)
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
            cloud = await self._await_state(cloud.eni_id, EniState.AVAILABLE, asked=True)
        elif cloud.status is not EniState.AVAILABLE:
            cloud = await self._await_state(cloud.eni_id, EniState.AVAILABLE)
        if cloud.status is not EniState.AVAILABLE:
            raise CceError(ErrorReason.TIMEOUT, f"ENI {cloud.eni_id} is still {cloud.status} after "
                           f"{self.timing.timeout_s}s", eni_id=cloud.eni_id)
        return cloud

    # --- one IP, one ENI ----------------------------------------------------------------------------------------

    async def put(self, ctx: NodeContext, record: Eni) -> None:
        """Write an ENI's record as the cloud has it. The cloud has an IP on one ENI at a time: an IP it now lists
        here that another record still lists (taken off that ENI behind our back and handed out again) leaves that
        record first, so no two records, and no two nodes' pools, offer one address. An IP new here that a pod on
        another node still has (its pool holds it) goes back to an ENI of that node in the cloud (`_give_back`);
        where it cannot, it is kept off this record (a warning event says so, `held_back` lists it) until that pod
        lets go: then the reconciler resyncs this ENI's node, which records it."""
        moved: dict[str, list[IPv4Address]] = {}
        held: list[IPv4Address] = []
        off: list[IPv4Address] = []  # given back to the node whose pod has it
        before = self.ledger.enis.get(record.eni_id)
        known = set(before.secondary_ips) if before is not None else set()
        for ip in record.secondary_ips:
            # new here, and a pod's on another node (a fixed IP coming here is already held by this node's pool)
            pods = self.pod_nodes(str(ip)) if ip not in known and str(ip) not in self.ledger.moving else ()
            if pods and record.node not in pods:
                (off if await self._give_back(record, str(ip), min(pods)) else held).append(ip)
                continue
            other = self.ledger.enis.holder(ip)
            if other is not None and other.eni_id != record.eni_id:
                moved.setdefault(other.eni_id, []).append(ip)
        for eni_id, ips in moved.items():
            other = self.ledger.enis.get(eni_id)
            assert other is not None
            await self.ledger.enis.put(eni_id, with_ips(other, remove=list(map(str, ips)), now=utcnow()))
            await self.events.publish(EventKind.IP, "moved", node=other.node, object=eni_id, count=len(ips),
                                      ips=list(map(str, ips)), severity=Severity.WARNING,
                                      message=f"{len(ips)} IPs of {eni_id} are on {record.eni_id} in the cloud")
        for ip in record.secondary_ips:
            self.held_back.pop(str(ip), None)
        self.held_back.update((str(ip), record.node) for ip in held)
        if held or off:
            record = with_ips(record, remove=list(map(str, [*held, *off])), now=record.synced_at)
        if held:
            await self.events.publish(EventKind.IP, "conflict", node=ctx.node, object=record.eni_id,
                                      count=len(held), ips=list(map(str, held)), severity=Severity.WARNING,
                                      message=f"{len(held)} IPs the cloud put on {record.eni_id} are still a "
                                              "pod's on another node; kept off this ENI's pool")
        await self.ledger.enis.put(record.eni_id, record)

    async def _give_back(self, record: Eni, ip: str, owner: str) -> bool:
        """Take the IP off this ENI in the cloud and put it on an ENI of `owner`, whose pod has it (the cloud gave
        it here after it was taken off there behind our back). False when the owner has no ENI in the subnet with
        room for it (it stays here, held back)."""
        target = target_eni(self.ledger.enis.values(), owner, record.subnet_id)
        if target is None:
            return False
        try:
            await self.api.remove_private_ips(record.eni_id, [ip])
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                raise
        try:
            added = await self.api.add_private_ips(target.eni_id, ips=[ip])
        except CceError as err:
            if err.reason not in LOST:
                raise
            await self._lost(owner, target.eni_id, [ip], err)
            return True
        await self.ledger.enis.put(target.eni_id, with_ips(target, add=added, now=utcnow()))
        await self.events.publish(EventKind.IP, "returned", node=owner, object=target.eni_id, ips=[ip],
                                  from_eni=record.eni_id, severity=Severity.WARNING,
                                  message=f"{ip} of a pod on {owner} was on {record.eni_id} ({record.node}) in the "
                                          f"cloud; back on {target.eni_id}")
        return True

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

    async def _await_state(self, eni_id: str, want: EniState, asked: bool = False) -> CloudEni:
        """Poll until the ENI is in `want`, or the timeout passes (then its last state is returned). The polls come
        quickly at first and then every `poll_s` (a fast attach is seen at once, a slow one costs few calls).
        `asked`: we have just asked the cloud for this change, so the first look waits most of the time such a
        change took lately, and the time this one takes is learnt."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timing.timeout_s
        learnt = self._settle_s.get(want) if asked else None
        if learnt is not None:
            await self._sleep(min(LEARNT_SHARE * learnt, self.timing.timeout_s))
        pause = min(FIRST_POLL_S, self.timing.poll_s)
        while True:
            cloud = await self.api.get_eni(eni_id)
            if cloud.status is want:
                if asked:
                    took = loop.time() - started
                    self._settle_s[want] = took if learnt is None else learnt + LEARN_RATE * (took - learnt)
                return cloud
            if loop.time() >= deadline:
                return cloud
            await self._sleep(pause)
            pause = min(pause * 2, self.timing.poll_s)

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
        if previous is not None and record.state is EniState.INUSE:
            record = await self._restore(ctx, previous, record)
        await self.put(ctx, record)
        if announce and previous is not None:
            await self._announce_resync(ctx, previous, record)

    async def _restore(self, ctx: NodeContext, before: Eni, after: Eni) -> Eni:
        """IPs a pod of this node holds that the cloud no longer has on their ENI (taken off behind our back) are
        put back by name. One the cloud will not put back (given to something else, or no room) is lost to its
        pod: a warning event says so (the pod needs re-creating), and the record follows the cloud."""
        kept = set(after.secondary_ips)
        gone = [str(ip) for ip in before.secondary_ips if ip not in kept and str(ip) not in self.ledger.moving
                and ctx.node in self.pod_nodes(str(ip))]
        if not gone:
            return after
        restored: list[str] = []
        try:
            restored += await self.api.add_private_ips(after.eni_id, ips=gone)
        except CceError as err:
            restored += [str(ip) for ip in err.details.get("added_ips") or []]
            if err.reason not in LOST:
                raise
            lost = [ip for ip in gone if ip not in restored]
            if len(lost) == 1:
                await self._lost(ctx.node, after.eni_id, lost, err)
            for ip in lost if len(lost) > 1 else []:  # which of them: one at a time
                restored += await self._restore_one(ctx, after.eni_id, ip)
        if restored:
            await self.events.publish(EventKind.IP, "restored", node=ctx.node, object=after.eni_id,
                                      count=len(restored), ips=restored, severity=Severity.WARNING,
                                      message=f"{len(restored)} IPs of pods were taken off {after.eni_id} in the "
                                              "cloud and are put back")
        return with_ips(after, add=restored, now=after.synced_at) if restored else after

    async def restore_strays(self, ctx: NodeContext, pool: NodePool | None) -> None:
        """Pod IPs of the node that no ENI record carries go back onto the ENI their pod got them on. A resync drops
        an IP the cloud lost while no pod held it, and ipam may hand that IP out meanwhile (it read the ENI record
        before the drop, or the resync read the pool before the claim): the pod's claim is the later fact, so the
        IP is put back. One the cloud refuses is lost to its pod (an event says so) and not asked for again while
        that pod holds it."""
        if pool is None:
            return
        refused = {ip: key for ip, key in self._unrestorable.pop(ctx.node, {}).items() if pool.allocated.get(ip) == key}
        try:
            for ip, key in pool.allocated.items():
                if not self.ledger.enis.carries(ip) and refused.get(ip) != key and ip not in self.ledger.moving \
                        and ip not in self.held_back and not await self._restore_stray(ctx, ip, key):
                    refused[ip] = key
        finally:
            if refused:
                self._unrestorable[ctx.node] = refused

    async def _restore_stray(self, ctx: NodeContext, ip: str, key: str) -> bool:
        """False: the cloud refused it (lost to its pod)."""
        try:
            if str(IPv4Address(ip)) != ip:
                return True  # not an address as ipam writes one: nothing of ours to put back
        except ValueError:
            return True
        eni_id = await self.endpoint_eni(key)
        record = self.ledger.enis.get(eni_id) if eni_id else None
        if (record is None or record.node != ctx.node or record.use is not EniUse.SECONDARY_IPS
                or record.state is not EniState.INUSE):
            log.debug("a pod IP no ENI record carries, its ENI not one to put it on", node=ctx.node, ip=ip,
                      endpoint=key, eni_id=eni_id)
            return True
        try:
            added = await self.api.add_private_ips(record.eni_id, ips=[ip])
        except CceError as err:
            if err.reason not in LOST:
                raise
            cloud = await self._get_or_none(record.eni_id)
            if cloud is not None and ip in cloud.secondary_ips:  # it is there: the record lagged the cloud
                await self.record(ctx, cloud, announce=True)
                return True
            await self._lost(ctx.node, record.eni_id, [ip], err)
            return False
        current = self.ledger.enis.get(record.eni_id) or record
        await self.put(ctx, with_ips(current, add=added, now=utcnow()))
        await self.events.publish(EventKind.IP, "restored", node=ctx.node, object=record.eni_id, count=1, ips=[ip],
                                  endpoint=key, severity=Severity.WARNING,
                                  message=f"{ip}, a pod's, was on no ENI record of {ctx.node} (the cloud lost it "
                                          f"while it was free and ipam handed it out): put back on {record.eni_id}")
        return True

    async def _restore_one(self, ctx: NodeContext, eni_id: str, ip: str) -> list[str]:
        try:
            return await self.api.add_private_ips(eni_id, ips=[ip])
        except CceError as err:
            if err.reason not in LOST:
                raise
            await self._lost(ctx.node, eni_id, [ip], err)
            return []

    async def _lost(self, node: str, eni_id: str, ips: list[str], err: CceError) -> None:
        await self.events.publish(EventKind.IP, "lost", node=node, object=eni_id, count=len(ips), ips=ips,
                                  reason=err.reason, severity=Severity.WARNING,
                                  message=f"{len(ips)} IPs of pods were taken off {eni_id} in the cloud and cannot "
                                          f"be put back ({err.reason.value}): their pods need re-creating")

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
