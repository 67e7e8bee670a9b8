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


BBC_PRIMARY_NIC_IPS = 40  # a BBC's primary NIC carries 40 IPs, its own included


def primary_nic_ips(instance_type: str, memory_mib: int, override: int | None = None) -> int:
    """IPs the primary NIC can carry (its own included): the node's override, 40 on BBC, else by memory (EBC)."""
    if override is not None:
        return override
    return BBC_PRIMARY_NIC_IPS if instance_type == "BBC" else ips_per_eni_by_memory(memory_mib)
