"""Fallback cloud quotas, facts of the reference system both ipam and eni_manager apply when the cloud or the
node's overrides do not say: ENIs per instance min(CPUs, 8); IPs per ENI (its primary included) by memory."""

from __future__ import annotations

MAX_ENIS_FALLBACK = 8
MIB_PER_GIB = 1024
# (up to GiB, IPs per ENI); above the last bound, IPS_PER_ENI_MAX. Below 2 GiB: 2.
IPS_PER_ENI_BY_MEMORY: tuple[tuple[float, int], ...] = ((2, 2), (8, 8), (32, 16), (64, 30))
IPS_PER_ENI_MAX = 40


def ips_per_eni_by_memory(memory_mib: int) -> int:
    """<2 GiB 2, ≤8 GiB 8, ≤32 GiB 16, ≤64 GiB 30, else 40."""
    gib = memory_mib / MIB_PER_GIB
    if gib < IPS_PER_ENI_BY_MEMORY[0][0]:
        return IPS_PER_ENI_BY_MEMORY[0][1]
    for limit, ips in IPS_PER_ENI_BY_MEMORY[1:]:
        if gib <= limit:
            return ips
    return IPS_PER_ENI_MAX


def max_enis_by_cpus(cpus: int) -> int:
    return min(cpus, MAX_ENIS_FALLBACK)
