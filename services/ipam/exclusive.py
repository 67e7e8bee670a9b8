"""vpc-eni-exclusive in ipam, pure: a whole ENI (its primary IP, its MAC) is handed to one pod (see
`exclusive_pool` for the bookkeeping). Waiting allocations are counted in `NodePool.exclusive_waiting`; when every
ENI the quota allows exists and is held, an allocation fails at once with ENICapacityExceed.
"""

from __future__ import annotations

from datetime import datetime

from schemas.errors import CceError, ErrorReason
from schemas.records import Eni, NodePool
from services.ipam.domain import (
    PROVISION_REASONS,
    Claim,
    NodeFacts,
    drop_waiting,
    is_at_max_pods,
    refresh_demand,
    same_pool,
)
from services.ipam.exclusive_pool import EniView, exclusive_enis, slot_of


def held_eni(pool: NodePool, facts: NodeFacts, key: str) -> Eni | None:
    """The in-use ENI `key` already holds."""
    ids = {eni_id for eni_id, holder in pool.exclusive.items() if holder == key}
    return next((e for e in exclusive_enis(facts) if e.eni_id in ids and e.primary_ip is not None), None)


def claim_eni(pool: NodePool, facts: NodeFacts, key: str, now: datetime, wait: bool, resume: bool = False) -> Claim:
    """Give `key` a whole ENI (or the one it holds); when none is free, wait (recorded in `exclusive_waiting`) unless
    the node is at capacity. A resumed wait whose entry is gone was overtaken by a release: cancelled."""
    held = held_eni(pool, facts, key)
    if held is not None:
        new = drop_waiting(pool, facts, key, now)
        return Claim(new, not same_pool(pool, new), slot_of(held), reused=True)
    if resume and key not in pool.exclusive_waiting:
        return Claim(pool, False, cancelled=True)
    if is_at_max_pods(len(pool.allocated) + len(pool.exclusive), facts.max_allocate):
        new = drop_waiting(pool, facts, key, now)
        return Claim(new, not same_pool(pool, new), at_max=True)
    view = EniView(pool, facts, now)
    if view.free:
        eni = view.free[0]
        new = pool.model_copy(deep=True)
        for stale in [eni_id for eni_id, holder in new.exclusive.items() if holder == key]:  # its ENI left
            del new.exclusive[stale]
        new.exclusive[eni.eni_id] = key
        new.eni_cooldown.pop(eni.eni_id, None)
        new.exclusive_waiting.pop(key, None)
        return Claim(refresh_demand(new, facts, now), True, slot_of(eni))
    if view.is_at_capacity():
        new = drop_waiting(pool, facts, key, now)
        return Claim(new, not same_pool(pool, new), at_capacity=True)
    new = pool.model_copy(deep=True)
    if wait:
        new.exclusive_waiting.setdefault(key, now)
    new = refresh_demand(new, facts, now)
    return Claim(new, not same_pool(pool, new), next_cooldown_end=EniView(new, facts, now).next_cooldown_end())


def failure(facts: NodeFacts, claim: Claim, waited_s: float, now: datetime) -> CceError:
    """Why an exclusive allocation got no ENI, with its coded reason."""
    node, pool = facts.node, claim.pool
    used = len(pool.allocated) + len(pool.exclusive)
    if claim.at_max:
        return CceError(ErrorReason.IP_POOL_EXHAUSTED, f"node {node} is at its max pods ({used} pods)", node=node,
                        used=used, max_pods=facts.max_allocate)
    view = EniView(pool, facts, now)
    quota = facts.quota.max_enis
    if claim.at_capacity:
        return CceError(ErrorReason.ENI_CAPACITY_EXCEED, f"node {node} has {view.node_enis()} of {quota} ENIs and "
                        f"every exclusive ENI is held by a pod", node=node, held=len(pool.exclusive), max_enis=quota)
    provision = facts.provision
    if provision is not None and provision.creating_eni:
        return CceError(ErrorReason.WAIT_CREATE_MORE_ENI, f"no free ENI on node {node} after {waited_s:g}s; an "
                        "exclusive ENI is being created", node=node)
    if provision is not None and provision.last_error in PROVISION_REASONS:
        reason = provision.last_error
        assert reason is not None
        return CceError(reason, f"no free ENI on node {node} after {waited_s:g}s; provisioning failed: "
                        f"{provision.message}", node=node)
    if view.cooling:
        return CceError(ErrorReason.IP_POOL_EXHAUSTED, f"no free ENI on node {node} after {waited_s:g}s; "
                        f"{len(view.cooling)} released ENI(s) still cooling down", node=node)
    return CceError(ErrorReason.WAIT_CREATE_MORE_ENI, f"no free ENI on node {node} after {waited_s:g}s; a spare "
                    "exclusive ENI is on its way", node=node)
