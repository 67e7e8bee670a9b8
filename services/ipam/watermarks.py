"""Watermark maths of a node's pool: quotas, the target size, burstable rounding and the excess to release.

Pure functions over plain numbers (and the node's spec for its quotas); `domain` feeds them a pool's counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.quotas import MAX_ENIS_FALLBACK, ips_per_eni_by_memory, primary_nic_ips
from schemas.records import EniProvision, NodeSpec, PoolSettings


@dataclass(frozen=True)
class Quota:
    """How many ENIs a node may carry besides its primary NIC, and how many IPs each (primary included)."""

    max_enis: int
    ips_per_eni: int

    @property
    def secondaries_per_eni(self) -> int:
        return max(0, self.ips_per_eni - 1)

    @property
    def max_secondaries(self) -> int:
        return self.max_enis * self.secondaries_per_eni


def eni_quota(spec: NodeSpec, provision: EniProvision | None) -> Quota:
    """eni_manager's figures when it has them, else the node's overrides, else the fallbacks."""
    max_enis = provision.max_enis if provision and provision.max_enis > 0 else None
    if max_enis is None:
        max_enis = spec.max_enis if spec.max_enis is not None else min(spec.cpus, MAX_ENIS_FALLBACK)
    ips = provision.ips_per_eni if provision and provision.ips_per_eni > 0 else None
    if ips is None:
        ips = spec.ips_per_eni if spec.ips_per_eni is not None else ips_per_eni_by_memory(spec.memory_mib)
    return Quota(max_enis=max_enis, ips_per_eni=ips)


def primary_nic_quota(spec: NodeSpec, provision: EniProvision | None) -> Quota:
    """vpc-eni-primary: one NIC (the instance's own) with eni_manager's IP quota, else the node's override, else
    40 on BBC and by memory on EBC."""
    ips = provision.ips_per_eni if provision and provision.ips_per_eni > 0 else None
    if ips is None:
        ips = primary_nic_ips(spec.instance_type.value, spec.memory_mib, spec.ips_per_eni)
    return Quota(max_enis=1, ips_per_eni=ips)


def max_allocate(spec: NodeSpec) -> int:
    """The cap on the pool: the setting, else the node's max pods."""
    return spec.pool.max_allocate if spec.pool.max_allocate is not None else spec.max_pods


def target_ips(used: int, pending: int, settings: PoolSettings, upper: int, cooling: int = 0, ahead: int = 0) -> int:
    """clamp(max(min_allocate, used + cooling + pending + max(pre_allocate, ahead)), upper).

    IPs cooling down count as used: they cannot be handed out yet, so `pre_allocate` free IPs need others. `ahead`
    is the look-ahead: what pods took recently (`lookahead`), so the refill comes before the pool runs dry."""
    want = max(settings.min_allocate, used + cooling + pending + max(settings.pre_allocate, ahead))
    return max(0, min(want, upper))


LOOKAHEAD_BATCH = 10  # the cloud's IPs per call: eni_manager rounds a refill up to it, above the look-ahead


def decayed(count: float, elapsed_s: float, window_s: float) -> float:
    """A decaying count of events `elapsed_s` later: about the events of the last `window_s` seconds."""
    if window_s <= 0 or count <= 0:
        return 0.0
    return count * math.exp(-max(0.0, elapsed_s) / window_s)


def lookahead(recent: float, settings: PoolSettings) -> int:
    """Free IPs to keep for the pods to come: as many as came in the last window, at most what the release
    handshake would not take back once a refill rounded up to a whole batch lands (the free IPs then stay within
    pre_allocate + max_above_watermark)."""
    cap = max(settings.pre_allocate, settings.pre_allocate + settings.max_above_watermark - (LOOKAHEAD_BATCH - 1))
    return min(cap, math.ceil(recent - 1e-9)) if settings.lookahead_s > 0 else 0


def burstable_target(target: int, eni_capacities: Iterable[int], per_eni: int) -> int:
    """Round `target` up so every ENI is full: existing ENIs with their capacities, new ones with `per_eni`."""
    existing = sum(eni_capacities)
    if per_eni <= 0:
        return target
    if target <= existing:
        return existing
    needed_enis = -(-(target - existing) // per_eni)
    return existing + needed_enis * per_eni


def pending_surge(waiting: int, already_held: int) -> int:
    """Allocations waiting for an IP, less those whose key already holds one (their claim is in `used`)."""
    return max(0, waiting - already_held)


def keep_ips(target: int, used: int, cooling: int, pending: int, settings: PoolSettings) -> int:
    """How many (non-releasing) IPs the pool keeps before any is excess."""
    watermark = used + cooling + pending + settings.pre_allocate + settings.max_above_watermark
    return max(target, watermark, settings.min_allocate)


def excess_ips(available: int, free: int, keep: int, settings: PoolSettings) -> int:
    """Free IPs to release: those above `keep` among the `available` (usable, not already releasing) ones.

    With the defaults this is free - pending - pre_allocate - max_above_watermark, never taking the pool below
    min_allocate nor below the target (so eni_manager never re-adds what is released)."""
    if not settings.release_excess:
        return 0
    return max(0, min(free, available - keep))


def shortfall(free: int, pending: int, settings: PoolSettings) -> int:
    """Free IPs missing for the waiting allocations plus the pre-allocation."""
    return max(0, pending + settings.pre_allocate - free)
