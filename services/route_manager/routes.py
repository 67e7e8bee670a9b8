"""Route sync: the desired rules (one per node CIDR of a live vpc-route node) against the VPC route table's listing.

One pass lists the table, plans a `RouteDiff`, deletes (stale rules of ours; a conflicting stale rule of ours only
under the takeover policy), then creates, and writes each destination's `RouteRule` record (programmed, pending
with the reason it is not, or conflict). Conflicts and quota exhaustion are reported once per change (an event and
the coded reason in the record); nothing is retried here: the next pass (a period or an event) does it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from chassis.events import EventPublisher
from chassis.kv import Store
from chassis.logs import get_logger
from cloud.port import CloudRouteRule, VpcApi
from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.records import RouteRule, RouteRuleState
from schemas.subjects import cidr_key
from services.route_manager.domain import (
    ConflictPolicy,
    DesiredRule,
    RouteDiff,
    foreign_destinations,
    is_ours,
    owner_of,
    plan_routes,
)

log = get_logger("route_manager.routes")

CHUNK = 8  # cloud calls of one pass in flight at once

_VOLATILE = {"updated_at"}


@dataclass
class SyncResult:
    """What one pass saw and did."""

    listing: list[CloudRouteRule] = field(default_factory=list)
    diff: RouteDiff = field(default_factory=RouteDiff)
    created: list[IPv4Network] = field(default_factory=list)
    deleted: list[IPv4Network] = field(default_factory=list)
    failed: dict[IPv4Network, ErrorReason] = field(default_factory=dict)
    _held: set[str] | None = field(default=None, repr=False)  # our destinations left after the pass, computed once

    def ours_on(self, destination: IPv4Network, cluster_id: str) -> bool:
        """Whether a rule of ours still holds `destination` after the pass."""
        if self._held is None:
            self._held = {r.destination for r in self.listing if is_ours(r, cluster_id)} - {
                str(d) for d in self.deleted}
        return str(destination) in self._held


class RouteSync:
    def __init__(self, api: VpcApi, records: Store[RouteRule], events: EventPublisher, cluster_id: str,
                 policy: ConflictPolicy) -> None:
        self.api = api
        self.records = records
        self.events = events
        self.cluster_id = cluster_id
        self.policy = policy
        self.route_table_id = ""
        self.items: dict[str, RouteRule] = {}
        self.foreign: set[IPv4Network] = set()

    async def load(self) -> None:
        self.items = {key: item.value for key, item in (await self.records.list()).items()}

    async def sync(self, desired: Iterable[DesiredRule]) -> SyncResult:
        wanted = {d.destination: d for d in desired}
        listing = await self.api.list_route_rules(self.route_table_id)
        self.foreign = foreign_destinations(listing, self.cluster_id)
        result = SyncResult(listing=listing, diff=plan_routes(wanted.values(), listing, self.cluster_id, self.policy))
        await self._delete(result)
        await self._create(result)
        for dest, rule_id in result.diff.programmed.items():
            await self._record(wanted[dest], RouteRuleState.PROGRAMMED, rule_id=rule_id)
        for conflict in result.diff.conflicts:
            await self._record(wanted[conflict.destination], RouteRuleState.CONFLICT, reason=ErrorReason.ROUTE_CONFLICT,
                               message=conflict.message, conflict=conflict.holder.rule_id,
                               holder_next_hop=conflict.holder.next_hop_id, holder_ours=conflict.ours)
        await self._drop_records(wanted, result)
        return result

    async def _delete(self, result: SyncResult) -> None:
        rules = result.diff.delete
        for i in range(0, len(rules), CHUNK):
            await asyncio.gather(*(self._delete_one(result, rule) for rule in rules[i:i + CHUNK]))

    async def _delete_one(self, result: SyncResult, rule: CloudRouteRule) -> None:
        dest = IPv4Network(rule.destination, strict=False)
        try:
            await self.api.delete_route_rule(rule.rule_id)
        except CceError as err:
            if err.reason is not ErrorReason.CLOUD_NOT_FOUND:
                log.warning("route rule not deleted", rule_id=rule.rule_id, destination=str(dest),
                            reason=err.reason.value, error=err.message)
                result.failed[dest] = err.reason
                return
        result.deleted.append(dest)
        log.info("route rule deleted", rule_id=rule.rule_id, destination=str(dest), next_hop=rule.next_hop_id)
        await self.events.publish(EventKind.ROUTE, "deleted", node=_node_of(rule, self.cluster_id),
                                  object=str(dest), rule_id=rule.rule_id, next_hop=rule.next_hop_id)

    async def _create(self, result: SyncResult) -> None:
        """Create in chunks; once the table is full the rest wait for room without asking the cloud again."""
        wants = result.diff.create
        quota: list[CceError] = []
        for i in range(0, len(wants), CHUNK):
            chunk = wants[i:i + CHUNK]
            if quota:
                for want in chunk:
                    result.failed[want.destination] = quota[0].reason
                    await self._record(want, RouteRuleState.PENDING, reason=quota[0].reason,
                                       message=quota[0].message)
                continue
            await asyncio.gather(*(self._create_one(result, want, quota) for want in chunk))

    async def _create_one(self, result: SyncResult, want: DesiredRule, quota: list[CceError]) -> None:
        try:
            rule_id = await self.api.create_route_rule(
                route_table_id=self.route_table_id, destination=str(want.destination),
                next_hop_instance=want.next_hop, description=want.description)
        except CceError as err:
            if err.reason is ErrorReason.ROUTE_QUOTA_EXCEEDED:
                quota.append(err)
            result.failed[want.destination] = err.reason
            log.warning("route rule not created", destination=str(want.destination), node=want.node,
                        reason=err.reason.value, error=err.message)
            await self._record(want, RouteRuleState.PENDING, reason=err.reason, message=err.message)
            return
        result.created.append(want.destination)
        log.info("route rule created", destination=str(want.destination), node=want.node, rule_id=rule_id)
        await self._record(want, RouteRuleState.PROGRAMMED, rule_id=rule_id, created=True)

    async def _record(self, want: DesiredRule, state: RouteRuleState, *, rule_id: str | None = None,
                      reason: ErrorReason | None = None, message: str = "", conflict: str = "",
                      created: bool = False, **details: Any) -> None:
        """Write the destination's record when it changes; a change of state or reason is an event."""
        key = cidr_key(want.destination)
        previous = self.items.get(key)
        if previous is not None and (previous.state, previous.rule_id, previous.reason, previous.message,
                                     previous.conflict, previous.node, previous.next_hop_instance,
                                     previous.route_table_id) == (state, rule_id, reason, message, conflict,
                                                                  want.node, want.next_hop, self.route_table_id):
            return  # the common case of a periodic pass: nothing to write, nothing to build
        record = RouteRule(destination=want.destination, node=want.node, route_table_id=self.route_table_id,
                           next_hop_instance=want.next_hop, description=want.description, rule_id=rule_id,
                           state=state, conflict=conflict, reason=reason, message=message, updated_at=utcnow())
        if previous is not None and previous.model_dump(exclude=_VOLATILE) == record.model_dump(exclude=_VOLATILE):
            return
        await self.records.mutate(key, lambda _current: record)
        self.items[key] = record
        changed = previous is None or (previous.state, previous.reason) != (state, reason)
        if not changed:
            return
        what = {RouteRuleState.PROGRAMMED: "created" if created else "programmed",
                RouteRuleState.CONFLICT: "conflict"}.get(state, "quota-exceeded"
                                                         if reason is ErrorReason.ROUTE_QUOTA_EXCEEDED else "failed")
        await self.events.publish(EventKind.ROUTE, what, node=want.node, object=str(want.destination),
                                  reason=reason, message=message or f"{want.destination} via {want.next_hop}",
                                  rule_id=record.rule_id, next_hop=want.next_hop, **details)

    async def _drop_records(self, wanted: Mapping[IPv4Network, DesiredRule], result: SyncResult) -> None:
        """Records of destinations no longer wanted go once no rule of ours holds them."""
        for key, record in list(self.items.items()):
            if record.destination in wanted or result.ours_on(record.destination, self.cluster_id):
                continue
            await self.records.delete(key)
            self.items.pop(key, None)

    def record_of(self, destination: IPv4Network) -> RouteRule | None:
        return self.items.get(cidr_key(destination))


def _node_of(rule: CloudRouteRule, cluster_id: str) -> str:
    return owner_of(rule.description, cluster_id) or "-"
