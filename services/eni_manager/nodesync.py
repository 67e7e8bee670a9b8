"""Resync of one node from the cloud, and the VPC-wide scan that finds ENIs of ours no record knows.

`list_enis(vpc_id, instance_id)` is the truth for the node's attached ENIs and their IPs; a record whose ENI is not
attached is re-read on its own (it may be available or detaching, or gone). Unattached ENIs named for a node
come from the VPC scan as hints and are adopted after a fresh read. The periodic VPC scan also groups the attached
ENIs by instance, so a node nothing changed since the listing began resyncs from it without a listing of its own
(one paged call per period instead of one per node: the list API is limited to about 1/s).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from chassis.events import EventPublisher
from chassis.logs import get_logger
from cloud.port import CloudEni, VpcApi
from schemas.events import EventKind
from schemas.records import EniState, EniUse
from services.eni_manager.domain import adoption_owner, index_for_adopted, is_ours, parse_eni_name
from services.eni_manager.executor import Executor, NodeContext
from services.eni_manager.ledger import Ledger

log = get_logger("eni_manager.nodesync")


@dataclass
class VpcScan:
    """Unattached ENIs of ours: those to adopt, by node, and orphans (no record, no live node); and every attached
    ENI (ours or not) by instance id."""

    hints: dict[str, list[CloudEni]] = field(default_factory=dict)
    orphans: list[CloudEni] = field(default_factory=list)
    attached: dict[str, list[CloudEni]] = field(default_factory=dict)


def read_scan(listing: Sequence[CloudEni], cluster_id: str, known: Collection[str],
              live_nodes: Collection[str]) -> VpcScan:
    hints: dict[str, list[CloudEni]] = defaultdict(list)
    orphans: list[CloudEni] = []
    attached: dict[str, list[CloudEni]] = defaultdict(list)
    for cloud in listing:
        if cloud.instance_id:
            attached[cloud.instance_id].append(cloud)
        if not is_ours(cluster_id, cloud.name) or cloud.instance_id or cloud.status is not EniState.AVAILABLE:
            continue
        owner = adoption_owner(cluster_id, cloud.name, cloud.eni_id in known, live_nodes)
        if owner is not None:
            hints[owner.node].append(cloud)
        elif cloud.eni_id not in known:
            orphans.append(cloud)
    return VpcScan(dict(hints), orphans, dict(attached))


class NodeSync:
    def __init__(self, api: VpcApi, ledger: Ledger, executor: Executor, events: EventPublisher,
                 cluster_id: str) -> None:
        self.api = api
        self.ledger = ledger
        self.executor = executor
        self.events = events
        self.cluster_id = cluster_id

    async def scan(self, vpc_id: str, live_nodes: Collection[str]) -> VpcScan:
        listing = await self.api.list_enis(vpc_id=vpc_id)
        return read_scan(listing, self.cluster_id, set(self.ledger.enis.items), live_nodes)

    async def resync(self, ctx: NodeContext, hints: Sequence[CloudEni] = (),
                     listed: Sequence[CloudEni] | None = None) -> int:
        """Bring the node's records in line with the cloud; returns how many attached ENIs are not ours.

        `listed`: the instance's attached ENIs from a VPC scan no change of this node overlapped; None lists them."""
        if listed is not None:
            attached = list(listed)
        elif ctx.instance_id:
            attached = await self.api.list_enis(vpc_id=ctx.vpc_id, instance_id=ctx.instance_id)
        else:
            attached = []
        ours = [c for c in attached if is_ours(self.cluster_id, c.name)]
        for cloud in ours:
            await self._upsert(ctx, cloud)
        seen = {c.eni_id for c in ours}
        for record in self.ledger.enis_of(ctx.node):
            if record.eni_id not in seen and record.use is not EniUse.PRIMARY_NIC:  # the NIC is no ENI
                await self.executor.refresh(ctx, record.eni_id)
        for hint in hints:
            await self._adopt_unattached(ctx, hint.eni_id)
        return len(attached) - len(ours)

    async def _adopt_unattached(self, ctx: NodeContext, eni_id: str) -> None:
        if self.ledger.enis.get(eni_id) is not None:
            return
        try:
            cloud = await self.api.get_eni(eni_id)
        except Exception as err:  # gone since the scan, or unreadable now: the next scan sees it again
            log.info("adoption candidate not readable", eni_id=eni_id, error=str(err))
            return
        if cloud.instance_id is None and cloud.status is EniState.AVAILABLE:
            await self._upsert(ctx, cloud)

    async def _upsert(self, ctx: NodeContext, cloud: CloudEni) -> None:
        if self.ledger.enis.get(cloud.eni_id) is not None:
            await self.executor.record(ctx, cloud, announce=True)
            return
        parsed = parse_eni_name(self.cluster_id, cloud.name)
        index = index_for_adopted(parsed.index if parsed else None, (e.index for e in self.ledger.enis_of(ctx.node)))
        await self.executor.record(ctx, cloud, index=index)
        log.info("ENI adopted", node=ctx.node, eni_id=cloud.eni_id, state=cloud.status.value, index=index)
        await self.events.publish(EventKind.ENI, "adopted", node=ctx.node, object=cloud.eni_id, name=cloud.name,
                                  state=cloud.status.value, index=index)
