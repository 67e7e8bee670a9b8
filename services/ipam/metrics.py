"""Per-node pool gauges, computed at scrape time from the caches by the replica that runs pool maintenance.

Only the maintenance leader exports them (the others answer with empty families), so a replica that lost the lease
never serves stale values, and a node that left has no series at all: nothing is remembered between scrapes.
Labels are the node and its network mode, both bounded by the cluster's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from chassis.leader import LeaderElector
from chassis.logs import get_logger
from schemas.records import EniState, NetResourceSet, NodePool
from services.ipam import exclusive_pool as xp
from services.ipam.domain import NodeFacts, PoolView
from services.ipam.state import IpamState

log = get_logger("ipam.metrics")

LABELS = ("node", "mode")
GAUGES: dict[str, str] = {
    "cce_ipam_pool_free_ips": "pod IPs a pod can get now (not used, not cooling down, not being released)",
    "cce_ipam_pool_used_ips": "pod IPs held by pods",
    "cce_ipam_pool_pending_allocations": "allocations waiting for the pool to refill",
    "cce_ipam_pool_cooling_ips": "freed pod IPs not reusable before their cooldown ends",
    "cce_ipam_pool_releasing_ips": "pod IPs in the release handshake (on their way back to the cloud)",
    "cce_ipam_pool_target_ips": "pod IPs the node's pool should hold (the watermark target eni_manager fills to)",
    "cce_ipam_pool_max_ips": "the most pod IPs the node may hold (max-allocate, else its max pods)",
    "cce_ipam_pool_enis": "ENIs of the node's pool (secondary-IP ENIs, the primary NIC, or exclusive ENIs)",
    "cce_ipam_pool_free_enis": "vpc-eni-exclusive: ENIs ready for a pod",
}
REFILL_WAIT = Histogram("cce_ipam_refill_wait_seconds", "time allocations waited for their node's pool to refill, by "
                        "outcome (served or not)", ["outcome"],
                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60))


@dataclass(frozen=True)
class PoolSample:
    node: str
    mode: str
    values: dict[str, float]


def pool_sample(nrs: NetResourceSet, pool: NodePool, facts: NodeFacts, now: datetime) -> PoolSample:
    """The gauges of one node (pure)."""
    view = PoolView(pool, facts, now)
    enis = [e for e in (*facts.secondary_enis, *xp.exclusive_enis(facts)) if e.state is not EniState.DELETED]
    values = {
        "cce_ipam_pool_free_ips": view.free,
        "cce_ipam_pool_used_ips": view.used,
        "cce_ipam_pool_pending_allocations": view.pending + len(pool.exclusive_waiting),
        "cce_ipam_pool_cooling_ips": view.cooling,
        "cce_ipam_pool_releasing_ips": len(pool.releasing),
        "cce_ipam_pool_target_ips": view.target(),
        "cce_ipam_pool_max_ips": facts.max_allocate,
        "cce_ipam_pool_enis": len(enis),
        "cce_ipam_pool_free_enis": len(view.enis.free),
    }
    return PoolSample(nrs.name, nrs.spec.mode.value, {k: float(v) for k, v in values.items()})


Source = Callable[[], Iterable[PoolSample]]


def leader_samples(state: IpamState, elector: LeaderElector, clock: Callable[[], datetime]) -> Source:
    """The gauges of every live node while this replica leads maintenance; none otherwise."""

    def samples() -> list[PoolSample]:
        if not elector.is_leader:
            return []
        now, out = clock(), []
        for node in sorted(state.known_nodes()):
            nrs, pool = state.nrs(node), state.pool(node)
            if nrs is None or pool is None or nrs.status.removing:
                continue
            try:
                out.append(pool_sample(nrs, pool, state.facts(node, nrs.spec), now))
            except Exception as err:  # one odd node must not take the scrape down
                log.warning("pool gauges of a node failed", node=node, error=repr(err))
        return out

    return samples


class PoolCollector:
    """The registry's view of the pool gauges; `source` is set by the process's ipam (the last one wired)."""

    def __init__(self) -> None:
        self.source: Source | None = None

    def describe(self) -> list[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc, labels=list(LABELS))

    def collect(self) -> Iterator[Metric]:
        families = {f.name: f for f in self._families()}
        for sample in self.source() if self.source is not None else ():
            for name, value in sample.values.items():
                families[name].add_metric([sample.node, sample.mode], value)
        yield from families.values()


POOL_GAUGES = PoolCollector()
REGISTRY.register(POOL_GAUGES)
