"""One instance is one node: the claim ipam writes, by compare-and-set, before a node's record.

Two records on one instance would share its ENIs, and the removal of either would delete the other's. A node
registering takes the instance's claim; a claim held by another node whose record is gone (or names another
instance now) is stale and taken over; a node's removal gives its claim back once its record is gone.
"""

from __future__ import annotations

from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.records import InstanceClaim, NetResourceSet
from services.ipam.state import Stores, node_key

ATTEMPTS = 5  # compare-and-set races lost in a row before the registration is refused (retryable)
FRESH_S = 30.0  # a claim younger than this whose node has no record yet is a registration in progress, not stale


async def claim(stores: Stores, node: str, instance_id: str) -> None:
    """Take `instance_id` for `node`, or raise Conflict (retryable) naming the node that holds it."""
    for _ in range(ATTEMPTS):
        current, revision = await stores.instances.latest(instance_id)
        if current is not None and current.value.node == node:
            return
        if current is not None:
            holder = await stores.nodes.get(node_key(current.value.node))
            if holder is not None and holder.value.spec.instance_id == instance_id:
                raise held_by(holder.value, instance_id, node)
            if holder is None and (utcnow() - current.value.claimed_at).total_seconds() < FRESH_S:
                raise CceError(ErrorReason.CONFLICT, f"instance {instance_id} is being registered as node "
                               f"{current.value.node}", node=node, holder=current.value.node)
        record = InstanceClaim(instance_id=instance_id, node=node)
        try:
            if revision is None:
                await stores.instances.create(instance_id, record)
            else:
                await stores.instances.update(instance_id, record, revision)
            return
        except CceError as err:
            if err.reason is not ErrorReason.CONFLICT:
                raise
    raise CceError(ErrorReason.CONFLICT, f"instance {instance_id}: its claim kept changing; register again",
                   node=node)


def held_by(holder: NetResourceSet, instance_id: str, node: str) -> CceError:
    then = "it is leaving: register once it is gone" if holder.status.removing else "remove that node first"
    return CceError(ErrorReason.CONFLICT, f"instance {instance_id} is registered as node {holder.name}; {then}",
                    node=node, holder=holder.name)


async def give_back(stores: Stores, node: str, instance_id: str) -> None:
    """Delete the instance's claim if `node` holds it (a claim another node took meanwhile stays)."""
    current, revision = await stores.instances.latest(instance_id)
    if current is None and revision is None:
        return
    if current is not None and current.value.node != node:
        return
    try:
        await stores.instances.delete(instance_id, revision)
    except CceError as err:
        if err.reason is not ErrorReason.CONFLICT:
            raise
