"""vpc-eni-exclusive bookkeeping in ipam, pure: which exclusive ENIs of a node are held, cooling, free or on their
way, what the node should hold (`target_enis` = held + waiting + one spare), and releasing a key's ENIs.

The claim is `NodePool.exclusive[eni_id] = endpoint key`, written by compare-and-set like every IP claim, so no ENI
is ever held by two pods. An ENI is claimable when its record is in use, no key holds it, its cooldown
(`PoolSettings.eni_cooldown_s`, short: the ENI keeps its IP and MAC) is over and it is not marked surplus.

Surplus: free ENIs beyond what the node needs (held + waiting + one spare) are marked in `NodePool.eni_releasing`
once the surplus has lasted `PoolSettings.eni_release_after_s`; the mark is written by the same compare-and-set as
the claims, so a marked ENI is never handed out, and eni_manager deletes marked ENIs no pod holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas.base import NetworkMode
from schemas.records import Eni, EniState, EniUse, NodePool, NodeSpec
from services.ipam import watermarks as wm
from services.ipam.facts import LIVE_ENI_STATES, IpSlot, NodeFacts


def allows_exclusive(spec: NodeSpec) -> bool:
    """Nodes that hand out whole ENIs: exclusive-mode nodes, and vpc-eni nodes that allow the per-pod opt-in."""
    return spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE or (spec.mode is NetworkMode.VPC_ENI and spec.allow_exclusive)


def is_exclusive(spec: NodeSpec, asked: bool) -> bool:
    """Whether an allocation takes a whole ENI: every pod of an exclusive node, opted-in pods elsewhere."""
    return spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE or asked


def exclusive_enis(facts: NodeFacts) -> list[Eni]:
    mine = [e for e in facts.enis if e.node == facts.node and e.use is EniUse.EXCLUSIVE]
    return sorted(mine, key=lambda e: (e.index, e.eni_id))


def slot_of(eni: Eni) -> IpSlot:
    assert eni.primary_ip is not None
    return IpSlot(eni.primary_ip, eni)


class EniView:
    """The node's exclusive ENIs at `now`: held, cooling, free (ready for a pod) and on their way (not in use yet)."""

    def __init__(self, pool: NodePool, facts: NodeFacts, now: datetime) -> None:
        self.pool, self.facts, self.now = pool, facts, now
        self.enis = [e for e in exclusive_enis(facts) if e.state in LIVE_ENI_STATES]
        unheld = [e for e in self.enis if e.eni_id not in pool.exclusive]
        self.releasing = [e for e in unheld if e.eni_id in pool.eni_releasing]
        unheld = [e for e in unheld if e.eni_id not in pool.eni_releasing]
        self.coming = [e for e in unheld if e.state is not EniState.INUSE or e.primary_ip is None]
        ready = [e for e in unheld if e not in self.coming]
        self.cooling = [e for e in ready if self.is_in_cooldown(e.eni_id)]
        self.free = [e for e in ready if not self.is_in_cooldown(e.eni_id)]

    def is_in_cooldown(self, eni_id: str) -> bool:
        until = self.pool.eni_cooldown.get(eni_id)
        return until is not None and until > self.now

    @property
    def used(self) -> int:
        return len(self.pool.exclusive)

    @property
    def pending(self) -> int:
        holders = set(self.pool.exclusive.values())
        return wm.pending_surge(len(self.pool.exclusive_waiting),
                                sum(1 for key in self.pool.exclusive_waiting if key in holders))

    def target(self) -> int:
        spare = 1 if allows_exclusive(self.facts.spec) else 0
        return self.used + self.pending + spare if spare or self.used or self.pending else 0

    def node_enis(self) -> int:
        """ENIs of the node of any use (the primary NIC aside) that count against its quota."""
        return sum(1 for e in self.facts.enis if e.node == self.facts.node and e.use is not EniUse.PRIMARY_NIC
                   and e.state in LIVE_ENI_STATES)

    def is_at_capacity(self) -> bool:
        """No ENI free, cooling or on its way, and the quota allows no more."""
        return not (self.free or self.cooling or self.coming) and self.node_enis() >= self.facts.quota.max_enis

    def next_cooldown_end(self) -> datetime | None:
        return min((self.pool.eni_cooldown[e.eni_id] for e in self.cooling), default=None)

    def surplus(self) -> list[Eni]:
        """Free ENIs beyond what the node needs: those on their way, cooling and free count towards the waiting
        pods and the spare; the lowest-index free ones are kept, the rest are surplus."""
        spare = 1 if allows_exclusive(self.facts.spec) else 0
        needed = max(0, self.pending + spare - len(self.coming) - len(self.cooling))
        return sorted(self.free, key=lambda e: (e.index, e.eni_id))[needed:]


def release_enis(pool: NodePool, key: str, cooldown_s: float, now: datetime) -> tuple[NodePool, list[str]]:
    """Free the ENIs `key` holds (each cools down) and its waiting entry; the pool is returned as is otherwise."""
    ids = sorted(eni_id for eni_id, holder in pool.exclusive.items() if holder == key)
    if not ids and key not in pool.exclusive_waiting:
        return pool, []
    new = pool.model_copy(deep=True)
    for eni_id in ids:
        del new.exclusive[eni_id]
        if cooldown_s > 0:
            new.eni_cooldown[eni_id] = now + timedelta(seconds=cooldown_s)
    new.exclusive_waiting.pop(key, None)
    new.updated_at = now
    return new, ids


def prune(pool: NodePool, facts: NodeFacts, now: datetime, waiting_ttl_s: float) -> NodePool:
    """Finished cooldowns, cooldowns and surplus marks of ENIs that are gone and stale waiting entries leave the pool
    (in place)."""
    known = {e.eni_id for e in exclusive_enis(facts)}
    for eni_id in [i for i, until in pool.eni_cooldown.items() if until <= now or i not in known]:
        del pool.eni_cooldown[eni_id]
    for eni_id in [i for i in pool.eni_releasing if i not in known]:
        del pool.eni_releasing[eni_id]
    for key in [k for k, since in pool.exclusive_waiting.items() if since + timedelta(seconds=waiting_ttl_s) <= now]:
        del pool.exclusive_waiting[key]
    return pool


def mark_surplus(pool: NodePool, facts: NodeFacts, now: datetime) -> list[str]:
    """Start, stop or act on the node's surplus timer (in place); returns the ENIs marked now. Marks are never
    taken back: a pod that arrives meanwhile gets the spare, and a new spare is created if need be."""
    after_s = facts.settings.eni_release_after_s
    surplus = EniView(pool, facts, now).surplus() if after_s is not None else []
    if after_s is None or not surplus:
        pool.eni_surplus_since = None
        return []
    if pool.eni_surplus_since is None:
        pool.eni_surplus_since = now
    if pool.eni_surplus_since + timedelta(seconds=after_s) > now:
        return []
    for eni in surplus:
        pool.eni_releasing[eni.eni_id] = now
    pool.eni_surplus_since = None
    return [e.eni_id for e in surplus]
