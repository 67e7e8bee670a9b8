"""Fixed IPs of StatefulSet pods, as plain data and functions (no I/O, no clock reads).

A fixed IP is the pod's by namespace and name (its `FixedIp` reservation). While a pod holds it, the node's pool
has it under the pod's endpoint key like any other IP; when the pod goes, the pool keeps it under the reservation's
marker (`fixed/<namespace>/<name>`: never an endpoint key, never free, never excess), until the pod comes back (on
this node: the marker becomes the new endpoint key; on another: the IP moves to an ENI of that node and the marker
goes) or the TTL runs out (the marker goes, the IP cools down and returns to the pool).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address

from schemas.records import CceEndpoint, FixedIp, NodePool
from services.ipam.domain import FIXED_MARKER_PREFIX
from services.ipam.facts import IpSlot, NodeFacts

MARKER_PREFIX = FIXED_MARKER_PREFIX


def marker(namespace: str, name: str) -> str:
    return f"{MARKER_PREFIX}{namespace}/{name}"


def is_marker(holder: str) -> bool:
    return holder.startswith(MARKER_PREFIX)


def marker_of(reservation: FixedIp) -> str:
    return marker(reservation.namespace, reservation.name)


def same_pod(endpoints: Mapping[str, CceEndpoint], namespace: str, name: str) -> set[str]:
    """The endpoint keys of (earlier sandboxes of) the pod of that namespace and name."""
    return {k for k, ep in endpoints.items() if (ep.namespace, ep.pod) == (namespace, name)}


@dataclass(frozen=True)
class FixedClaim:
    pool: NodePool
    changed: bool
    slot: IpSlot | None = None  # None: the IP is not on this node's ENIs (yet: it is moving here)
    held_by: str = ""  # the IP is another pod's: who holds it


def claim_fixed(pool: NodePool, facts: NodeFacts, key: str, ip: IPv4Address, mark: str,
                same_pod_keys: Collection[str]) -> FixedClaim:
    """Give `key` the fixed IP `ip` on this node's pool. The IP may be held by the reservation's marker, by an
    earlier sandbox of the same pod, by `key` already, or by no one; held by anyone else, nothing changes and
    `held_by` names the holder. The claim stands even before the IP is on the node (it is moving here), so no other
    pod of the node can take it when it arrives."""
    text = str(ip)
    holder = pool.allocated.get(text)
    if holder is not None and holder not in (key, mark) and holder not in same_pod_keys:
        return FixedClaim(pool, False, held_by=holder)
    slot = facts.slot_of(text)
    others = [other for other, k in pool.allocated.items() if k == key and other != text]
    if holder == key and not others:
        return FixedClaim(pool, False, slot)
    new = pool.model_copy(deep=True)
    for other in others:  # a key holds one IP per interface: another one it held (a half-done claim) goes
        del new.allocated[other]
    new.allocated[text] = key
    new.cooldown.pop(text, None)
    new.releasing.pop(text, None)
    new.waiting.pop(key, None)
    return FixedClaim(new, True, slot)


def unclaim(pool: NodePool, ip: IPv4Address | str, holders: Collection[str]) -> NodePool | None:
    """The pool without the claim on `ip` when one of `holders` has it (None: nothing to change)."""
    text = str(ip)
    if pool.allocated.get(text) not in holders:
        return None
    new = pool.model_copy(deep=True)
    del new.allocated[text]
    return new


def park(pool: NodePool, key: str, reserved: Mapping[str, str]) -> NodePool:
    """Hand the IPs `key` holds that are reserved (IP -> marker) to their reservation: they do not cool down and
    go to no other pod. Used before an ordinary release, which then frees what is left."""
    moving = {ip: mark for ip, mark in reserved.items() if pool.allocated.get(ip) == key}
    if not moving:
        return pool
    new = pool.model_copy(deep=True)
    new.allocated.update(moving)
    return new


def release_marker(pool: NodePool, ip: str, mark: str, cooldown_s: float, now: datetime) -> NodePool | None:
    """The reservation is over: the IP leaves its marker and cools down before it goes to another pod."""
    if pool.allocated.get(ip) != mark:
        return None
    new = pool.model_copy(deep=True)
    del new.allocated[ip]
    new.cooldown[ip] = now + timedelta(seconds=cooldown_s)
    return new


def is_due(reservation: FixedIp, now: datetime) -> bool:
    """Whether the reservation's pod has been gone for its TTL (never with the Never strategy)."""
    at = reservation.release_at
    return not reservation.endpoint and at is not None and at <= now


def taken(reservation: FixedIp, endpoint: str, now: datetime) -> FixedIp:
    """The reservation claimed by the pod's new endpoint: no longer idle, so never due while the claim runs."""
    return reservation.model_copy(update={"endpoint": endpoint, "idle_since": None, "updated_at": now})


def idle(reservation: FixedIp, now: datetime) -> FixedIp:
    new = reservation.model_copy(update={"endpoint": "", "idle_since": reservation.idle_since or now,
                                         "updated_at": now})
    return new


def stray_markers(pool: NodePool, facts: NodeFacts, reservations: Mapping[str, FixedIp]) -> dict[str, str]:
    """Markers (IP -> marker) of this pool no reservation keeps here: the reservation is gone, names another IP, or
    the IP moved to another node (a move whose last write was lost)."""
    by_marker = {marker_of(r): r for r in reservations.values()}
    out: dict[str, str] = {}
    for ip, holder in pool.allocated.items():
        if not is_marker(holder):
            continue
        r = by_marker.get(holder)
        if r is None or str(r.ip) != ip or (r.node != facts.node and facts.slot_of(ip) is None):
            out[ip] = holder
    return out
