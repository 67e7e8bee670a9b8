"""Integration tier: the bus as a 3-member nats-server cluster (JetStream R3), and what the network's promises become
when a member is lost — the meta leader or a stream's leader SIGKILLed, a member frozen (SIGSTOP, a partition) and
back, a rolling restart of all three — while writers, electors, caches and the control plane keep working:
- no acknowledged write is lost, and no compare-and-set succeeds twice (writes carry their own idempotency key);
- a lease never has two holders at once;
- watch caches resume and see what was written meanwhile;
- every allocation ends in success or a coded retryable error, and no IP is handed out twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.embedded_nats import NatsCluster
from chassis.kv import KEEP, KvCache, Store, _Keep
from chassis.leader import LeaderElector
from chassis.rpc import call
from schemas.base import Contract
from schemas.errors import CceError
from schemas.messages import AllocateRequest, ConfirmRequest, PodRef, ReleaseRequest
from schemas.records import Lease
from schemas.subjects import ENDPOINTS, IPAM_ALLOCATE, IPAM_CONFIRM, IPAM_RELEASE, LEASES, Bucket
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import eni_control_plane, until

pytestmark = pytest.mark.integration


class Ledger(Contract):
    ops: list[str] = []


LEDGER = Bucket("cce_test_ledger", Ledger, "test", "<key>")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", 3, log_dir=tmp_path) as c:
        yield c


def settings(c: NatsCluster, **extra: object) -> ChassisSettings:
    return ChassisSettings(nats_url=c.url, kv_replicas=3, log_level="warning", nats_reconnect_wait_s=0.1,
                           lease_ttl_s=1.5, **extra)  # type: ignore[arg-type]


@pytest.fixture
async def bus(cluster: NatsCluster) -> AsyncIterator[Bus]:
    b = await Bus.connect(settings(cluster), name="test")
    await b.ensure_events_stream()
    yield b
    await b.close()


# ---- the faults --------------------------------------------------------------------------------------------------


async def stream_leader(bus: Bus, c: NatsCluster, stream: str) -> int:
    info = await bus.js.stream_info(stream)
    name = str(info.cluster.leader if info.cluster else "")
    return next(i for i, m in enumerate(c.members) if name.endswith(f"-{m.port}"))


async def back_to_three(c: NatsCluster) -> None:
    """The cluster whole again: a meta leader, and every member healthy (its streams caught up)."""
    await asyncio.to_thread(c.wait_meta_leader, 30)
    await asyncio.to_thread(c.wait_healthy, 60)


async def faults(c: NatsCluster, bus: Bus, stream: str, log: list[str]) -> None:
    """Each fault in turn, the cluster whole again between them."""
    meta = c.meta_leader()
    assert meta is not None
    log.append(f"SIGKILL meta leader n{meta + 1}")
    c.members[meta].kill()
    await asyncio.sleep(1.0)  # a fault lasts a while: the writers work through it
    await asyncio.to_thread(c.members[meta].start)
    await back_to_three(c)
    leader = await _retry(lambda: stream_leader(bus, c, stream))
    log.append(f"SIGKILL stream {stream} leader n{leader + 1}")
    c.members[leader].kill()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(c.members[leader].start)
    await back_to_three(c)
    frozen = (leader + 1) % 3
    log.append(f"SIGSTOP n{frozen + 1} for 3 s (a partition), then SIGCONT")
    proc = c.members[frozen].proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    await asyncio.sleep(3.0)
    proc.send_signal(signal.SIGCONT)
    await back_to_three(c)
    for i, member in enumerate(c.members):
        log.append(f"rolling restart n{i + 1}")
        await asyncio.to_thread(member.stop)
        await asyncio.to_thread(member.start)
        await back_to_three(c)


async def _retry(fn):  # type: ignore[no-untyped-def]
    for _ in range(100):
        try:
            return await fn()
        except Exception:
            await asyncio.sleep(0.1)
    return await fn()


# ---- writes ------------------------------------------------------------------------------------------------------


@dataclass
class Writers:
    acked: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # an attempt whose reply was lost: applied or not
    errors: list[str] = field(default_factory=list)


async def write_until(stop: asyncio.Event, store: Store[Ledger], who: str, out: Writers) -> None:
    n = 0
    while not stop.is_set():
        op = f"{who}-{n}"
        n += 1

        def append(current: Ledger | None, op: str = op) -> Ledger | _Keep:
            ledger = current or Ledger()
            if op in ledger.ops:
                return KEEP  # the idempotency key: an earlier attempt of this op was applied
            ledger.ops.append(op)
            return ledger

        for _attempt in range(200):
            try:
                await store.mutate("ledger", append)
                out.acked.add(op)
                out.unknown.discard(op)
                break
            except Exception as err:
                out.unknown.add(op)
                out.errors.append(type(err).__name__)
                await asyncio.sleep(0.05)


async def test_no_acknowledged_write_is_lost_and_no_compare_and_set_succeeds_twice(cluster: NatsCluster,
                                                                                   bus: Bus) -> None:
    store = Store(await bus.bucket(LEDGER), Ledger, LEDGER.name)
    stop, out, log = asyncio.Event(), Writers(), []
    writers = [asyncio.create_task(write_until(stop, store, f"w{i}", out)) for i in range(6)]
    try:
        await faults(cluster, bus, LEDGER.stream, log)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    final = await _retry(lambda: store.get("ledger"))
    assert final is not None
    ops = final.value.ops
    assert len(ops) == len(set(ops)), "an op applied twice"
    assert out.acked <= set(ops), f"acknowledged writes lost: {sorted(out.acked - set(ops))[:5]}"
    assert set(ops) <= out.acked | out.unknown
    print(f"{len(out.acked)} writes acknowledged through: {'; '.join(log)}; {len(out.errors)} failed attempts "
          f"retried ({', '.join(sorted(set(out.errors)))})")


async def test_a_lease_never_has_two_holders_and_watch_caches_resume(cluster: NatsCluster, bus: Bus) -> None:
    buses = [await Bus.connect(settings(cluster), name=f"elector-{i}") for i in range(2)]
    electors = [LeaderElector(Store(await b.bucket(LEASES), Lease, LEASES.name), "test-lease", f"holder-{i}", 1.5)
                for i, b in enumerate(buses)]
    runs = [asyncio.create_task(e.run()) for e in electors]
    cache: KvCache[Ledger] = KvCache(Store(await bus.bucket(LEDGER), Ledger, LEDGER.name))
    await cache.start()
    both: list[float] = []
    stop = asyncio.Event()

    async def watch_holders() -> None:
        while not stop.is_set():
            if all(e.is_leader for e in electors):
                both.append(time.monotonic())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(watch_holders())
    log: list[str] = []
    try:
        await until(lambda: any(e.is_leader for e in electors), 15, "a first leader")
        await faults(cluster, bus, LEASES.stream, log)
        writer = await Bus.connect(settings(cluster), name="writer")
        try:
            store = Store(await writer.bucket(LEDGER), Ledger, LEDGER.name)
            await _retry(lambda: store.create("after", Ledger(ops=["x"])))
        finally:
            await writer.close()
        await until(lambda: cache.get("after") is not None, 20, "the cache to see a write made after the faults")
        await until(lambda: any(e.is_leader for e in electors), 15, "a leader after the faults")
    finally:
        stop.set()
        await sampler
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await cache.stop()
        for b in buses:
            await b.close()
    assert not both, f"two lease holders at once ({len(both)} samples) through: {'; '.join(log)}"


# ---- the control plane -------------------------------------------------------------------------------------------


@dataclass
class Churn:
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds) of each allocate
    outcomes: list[str] = field(default_factory=list)
    live: dict[str, str] = field(default_factory=dict)  # container id -> IP, allocated and not released
    released: set[str] = field(default_factory=set)


async def churn(bus: Bus, node: str, stop: asyncio.Event, out: Churn, worker: int) -> None:
    n = 0
    while not stop.is_set():
        cid = f"w{worker}-{n}"
        n += 1
        started = time.monotonic()
        try:
            reply = await call(bus, IPAM_ALLOCATE, AllocateRequest(
                node=node, container_id=cid, pod=PodRef(namespace="default", name=cid), wait_s=5), timeout=8)
            await call(bus, IPAM_CONFIRM, ConfirmRequest(node=node, container_id=cid), timeout=8)
        except CceError as err:
            out.outcomes.append(err.reason.value if err.retryable
                                else f"NOT RETRYABLE {err.reason.value}: {err.message}")
            with contextlib.suppress(CceError):  # as the gateway undoes a failed ADD
                await call(bus, IPAM_RELEASE, ReleaseRequest(node=node, container_id=cid), timeout=10)
            await asyncio.sleep(0.1)  # kubelet tries again a little later
            continue
        out.latencies.append((started, time.monotonic() - started))
        out.outcomes.append("ok")
        out.live[cid] = str(reply.endpoint.addresses[0].ip)
        if n % 2 == 0:  # release every other one, as pods come and go
            deadline = time.monotonic() + 90  # kubelet asks again until the DEL succeeds; a member may be away
            while True:
                try:
                    await call(bus, IPAM_RELEASE, ReleaseRequest(node=node, container_id=cid), timeout=10)
                    break
                except CceError as err:
                    if not err.retryable or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            out.live.pop(cid)
            out.released.add(cid)


async def test_allocations_through_member_loss_end_well_and_never_share_an_ip(
        cluster: NatsCluster, bus: Bus, vpc_sim: SimServer, sim_admin: SimAdmin, tmp_path: Path) -> None:
    env = {"CCE_KV_REPLICAS": "3", "CCE_NATS_RECONNECT_WAIT_S": "0.1"}
    async with eni_control_plane(bus, vpc_sim, cluster.url, tmp_path, ipam=2, eni_managers=1,
                                 service_env={"ipam": env, "eni_manager": env}) as c:
        inst = await sim_admin.create_instance(name="node-1", cpus=8, memory_mib=32768)
        await c.register("node-1", inst)
        await until(lambda: c.pool("node-1"), 20, "node-1's pool")
        stop, out, log = asyncio.Event(), Churn(), []
        workers = [asyncio.create_task(churn(bus, "node-1", stop, out, w)) for w in range(4)]
        began = time.monotonic()
        try:
            await until(lambda: out.outcomes.count("ok") >= 20, 30, "allocations before the faults")
            await faults(cluster, bus, ENDPOINTS.stream, log)
            after = out.outcomes.count("ok")
            try:
                await until(lambda: out.outcomes.count("ok") >= after + 20, 60,
                            "allocations to work again after them")
            except AssertionError as err:
                raise AssertionError(f"{err}; the last outcomes: {out.outcomes[-8:]}") from None
        finally:
            stop.set()
            await asyncio.gather(*workers)
        store = Store(await bus.bucket(ENDPOINTS), ENDPOINTS.record, ENDPOINTS.name)
        endpoints = await _retry(store.list)
    bad = [o for o in out.outcomes if o.startswith("NOT RETRYABLE")]
    assert not bad, bad
    assert out.latencies, f"no allocation succeeded: {sorted(set(out.outcomes))}"
    ips = [str(ep.value.addresses[0].ip) for ep in endpoints.values()]
    assert len(ips) == len(set(ips)), "one IP held by two endpoints"
    recorded = {ep.value.container_id for ep in endpoints.values()}
    assert set(out.live) <= recorded, f"acknowledged allocations lost: {sorted(set(out.live) - recorded)[:5]}"
    assert not (recorded & out.released), "released endpoints came back"
    pauses = sorted(s for _t, s in out.latencies)
    done = sorted(t + s for t, s in out.latencies)
    gap = max(b - a for a, b in itertools.pairwise(done))
    print(f"{out.outcomes.count('ok')} allocations ok, {len(out.outcomes) - out.outcomes.count('ok')} coded "
          f"retryable failures ({', '.join(sorted({o for o in out.outcomes if o != 'ok'}))}) in "
          f"{time.monotonic() - began:.0f} s through: {'; '.join(log)}; allocate p50 {pauses[len(pauses) // 2]:.3f} s,"
          f" max {pauses[-1]:.2f} s; longest time without a successful allocation {gap:.2f} s")
