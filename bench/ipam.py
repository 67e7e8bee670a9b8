"""Benchmark: the ENI-mode IP control plane end to end: how fast pods get IPs, and what each IP costs in cloud calls.

One run starts its own nats-server (JetStream, temp dir), an in-process simulated VPC (`SimServer`: no fabric, no
faults, 50 ms ENI attach/detach, state in memory, an extra /16 subnet per 65,000 IPs needed) and the control plane
as real processes, `python -m services.eni_manager` (1) and `python -m services.ipam` (2 replicas), logging into the
temp dir. It creates `--nodes` instances (8 CPUs, 32 GiB: 8 ENIs x 15 pod IPs) and registers them (NODE_REGISTER,
max_pods = --pods). Phases, each timed:

1. warm-up: until every node's pool (`demand.free` of its NodePool record) holds min-allocate (10) free IPs;
2. allocations: `--pods` IPAM_ALLOCATE per node (wait_s 60), `--concurrency` in flight across all nodes in shuffled
   order, a retryable error repeated with the same key like kubelet does; latency per call (retries included),
   and how many waited for a refill (latency > 50 ms);
3. releases of every allocated IP (IPAM_RELEASE), same concurrency.

Cloud calls come from the simulator's `cce_sim_calls_total{api,code}` (GET /metrics), per phase and per allocated
IP. `--cloud-limits default` keeps the adapter's reference rate limits (batch add IPs 5/s burst 10, create/attach ENI
5/s, list ENIs 1/s...), which bound provisioning; `wide` (the default) lifts them so the control plane itself is
measured. Allocations are not confirmed (no datapath), so the allocation TTL is raised to 1 h. The simulator shares
this process's event loop with the load generator, so on a small machine the figures are lower bounds.

`--scenario lookahead` measures the pool's look-ahead instead: 100 sequential allocations on one warm node (none
should wait for a refill: p95 <= 1.5x p50), then 110 concurrent allocations on a node registered at that moment with
the simulator's ENI attach latency at 3 s, printed as a timeline (first IP, each ENI, last pod) against the bound
ENIs x attach latency + 2 s.

Run:  .venv/bin/python bench/ipam.py [--nodes 200] [--pods 50] [--concurrency 64] [--cloud-limits default|wide]
      .venv/bin/python bench/ipam.py --scenario lookahead [--sequential 100] [--cold 110] [--attach-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from _plane import Processes, cpu_seconds, served, sim_calls
from _table import Result, pct, print_table  # bench/ comes first on sys.path when run as a script...

# ...where this file's neighbour cloud.py would shadow the `cloud` package: drop bench/ before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from chassis.bus import Bus  # noqa: E402
from chassis.config import ChassisSettings  # noqa: E402
from chassis.embedded_nats import EmbeddedNats  # noqa: E402
from chassis.logs import configure_logging  # noqa: E402
from chassis.rpc import call  # noqa: E402
from cloud.port import MAX_IPS_PER_BATCH, CloudApi  # noqa: E402
from schemas.errors import CceError  # noqa: E402
from schemas.messages import AllocateRequest, NodeRegisterRequest, PodRef, ReleaseRequest  # noqa: E402
from schemas.records import NodePool  # noqa: E402
from schemas.subjects import IPAM_ALLOCATE, IPAM_RELEASE, NODE_REGISTER, POOLS  # noqa: E402
from services.vpc_sim.admin import SimAdmin  # noqa: E402
from services.vpc_sim.server import SimServer, SimSettings  # noqa: E402

MIN_ALLOCATE = 10
WAITED_NS = 50_000_000  # an allocation slower than this waited for a refill
WAIT_S = 60.0
RETRIES = 5
PROGRESS_S = 30.0
ENIS_PER_NODE = 8
PROCS = (("em-1", "services.eni_manager"), ("ipam-1", "services.ipam"), ("ipam-2", "services.ipam"))
IPAM_SIDS = [sid for sid, module in PROCS if module == "services.ipam"]


class ControlPlane:
    """eni_manager and two ipam replicas as processes (bench/_plane.py) on this NATS and simulator."""

    def __init__(self, nats_url: str, sim: SimServer, logs: Path, wide: bool) -> None:
        env = {**os.environ, "CCE_NATS_URL": nats_url, "CCE_HTTP_PORT": "0", "CCE_LOG_LEVEL": "info",
               "CCE_CLOUD_ENDPOINT": sim.url, "CCE_CLOUD_ACCESS_KEY": sim.access_key,
               "CCE_CLOUD_SECRET_KEY": sim.secret_key, "CCE_ALLOCATION_TTL_S": "3600"}
        if wide:
            env["CCE_CLOUD_RATE_LIMITS"] = json.dumps({api.value: [1e6, 1_000_000] for api in CloudApi})
        self.processes = Processes(env, logs)

    def start(self) -> None:
        for sid, module in PROCS:
            self.processes.start(sid, module)

    async def wait_started(self, timeout: float = 60) -> None:
        await self.processes.wait_started([sid for sid, _ in PROCS], timeout)

    def stop(self) -> None:
        self.processes.stop()

    async def ipam_figures(self, session: aiohttp.ClientSession) -> list[tuple[int, float, float]]:
        """Per ipam replica: (allocates served, seconds serving them, CPU seconds used)."""
        figures = []
        for sid in IPAM_SIDS:
            count, secs = await served(session, self.processes.http_port(sid), IPAM_ALLOCATE.name)
            figures.append((count, secs, cpu_seconds(self.processes.procs[sid].pid)))
        return figures


async def ticker(what: str, done: list[int], total: int, started: float) -> None:
    while True:
        await asyncio.sleep(PROGRESS_S)
        print(f"  ... {what}: {done[0]}/{total} after {time.perf_counter() - started:.0f} s", flush=True)


async def warm_up(bus: Bus, nodes: list[str], target: int) -> float:
    """Seconds until every node's pool has `target` free IPs, followed through one watch of the POOLS bucket."""
    started = time.perf_counter()
    watcher = await (await bus.bucket(POOLS)).watch(">", ignore_deletes=True)
    free: dict[str, int] = {}
    done = [0]
    tick = asyncio.create_task(ticker("pools at min-allocate", done, len(nodes), started))
    try:
        async for entry in watcher:
            if entry is not None and entry.value:
                free[entry.key] = NodePool.model_validate_json(entry.value).demand.free
                done[0] = sum(1 for n in nodes if free.get(n, 0) >= target)
            if done[0] == len(nodes):
                return time.perf_counter() - started
        raise RuntimeError("the POOLS watch ended")
    finally:
        tick.cancel()
        await watcher.stop()


async def drive(what: str, keys: list[tuple[str, str]], concurrency: int, op) -> tuple[list[int], int, Counter[str]]:  # type: ignore[no-untyped-def]
    """Run `op(node, cid)` for every key, `concurrency` at a time: (latencies of the successes, wall ns, failures)."""
    queue = list(reversed(keys))
    lat: list[int] = []
    failures: Counter[str] = Counter()
    done = [0]

    async def worker() -> None:
        while queue:
            node, cid = queue.pop()
            t0 = time.perf_counter_ns()
            try:
                await op(node, cid)
                lat.append(time.perf_counter_ns() - t0)
            except CceError as err:
                failures[err.reason.value] += 1
            done[0] += 1

    started = time.perf_counter()
    tick = asyncio.create_task(ticker(what, done, len(keys), started))
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        tick.cancel()
    return lat, int((time.perf_counter() - started) * 1e9), failures


async def bench(args: argparse.Namespace, tmp: Path, nats_url: str) -> None:
    wide = args.cloud_limits == "wide"
    pod_ips = args.nodes * args.pods
    sim = await SimServer(SimSettings(port=0, state_file=None, fabric="off", attach_delay_s=0.05,
                                      detach_delay_s=0.05)).start()
    admin, session = SimAdmin(sim.url), aiohttp.ClientSession()
    plane = ControlPlane(nats_url, sim, tmp, wide)
    bus: Bus | None = None
    try:
        extra = math.ceil((pod_ips + args.nodes * ENIS_PER_NODE) / 65_000)
        for i in range(extra):
            await admin.create_subnet(zone="zoneA", cidr=f"10.{i + 1}.0.0/16", name=f"bench-{i + 1}")
        print(f"vpc_sim {sim.url} (in-process, no faults, attach/detach 0.05 s, {extra} extra /16 subnet(s));"
              f" nats {nats_url}; logs in {tmp}")
        print(f"nodes={args.nodes} pods/node={args.pods} concurrency={args.concurrency}"
              f" cloud-limits={args.cloud_limits}")
        if wide:
            print("cloud rate limits lifted (CCE_CLOUD_RATE_LIMITS 1e6/s for every API): the control plane is measured")
        else:
            calls = math.ceil(pod_ips / MAX_IPS_PER_BATCH)
            print(f"reference cloud rate limits: they bound provisioning: {pod_ips} IPs at <= {MAX_IPS_PER_BATCH}"
                  f" per batchAdd call, 5 calls/s (burst 10) => >= {max(calls - 10, 0) / 5:.0f} s")
        t0 = time.perf_counter()
        plane.start()
        await plane.wait_started()
        print(f"control plane (1 eni_manager, 2 ipam) up in {time.perf_counter() - t0:.1f} s")
        bus = await Bus.connect(ChassisSettings(nats_url=nats_url), name="bench-ipam")
        nodes = [f"node-{i:04d}" for i in range(args.nodes)]
        base = await sim_calls(session, sim.url)
        t0 = time.perf_counter()
        for name in nodes:
            inst = await admin.create_instance(name=name, cpus=8, memory_mib=32 * 1024)
            await call(bus, NODE_REGISTER, NodeRegisterRequest(
                node=name, instance_id=inst["id"], instance_type=inst["instanceType"], zone=inst["zoneName"],
                cpus=8, memory_mib=32 * 1024, max_pods=args.pods), timeout=10)
        print(f"created and registered {args.nodes} nodes in {time.perf_counter() - t0:.1f} s")

        target = min(MIN_ALLOCATE, args.pods)  # the pool never exceeds max_pods
        warm_s = await warm_up(bus, nodes, target)
        after_warm = await sim_calls(session, sim.url)
        print(f"phase 1 warm-up: every pool at {target} free IPs (min-allocate) after {warm_s:.1f} s"
              f" (from registration: {time.perf_counter() - t0:.1f} s),"
              f" {sum((after_warm - base).values())} cloud calls so far", flush=True)

        keys = [(n, f"pod-{n}-{p:03d}") for n in nodes for p in range(args.pods)]
        random.Random(1).shuffle(keys)
        retried = [0]

        async def allocate(node: str, cid: str) -> None:
            req = AllocateRequest(node=node, container_id=cid, pod=PodRef(namespace="bench", name=cid), wait_s=WAIT_S)
            for attempt in range(RETRIES + 1):
                try:
                    await call(bus, IPAM_ALLOCATE, req, timeout=WAIT_S + 10)
                    return
                except CceError as err:
                    if attempt == RETRIES or not err.retryable:
                        raise
                    retried[0] += 1
                    await asyncio.sleep(0.2)

        released = [0]

        async def release(node: str, cid: str) -> None:
            reply = await call(bus, IPAM_RELEASE, ReleaseRequest(node=node, container_id=cid), timeout=30)
            released[0] += reply.released

        before = await plane.ipam_figures(session)
        alloc_lat, alloc_ns, alloc_fail = await drive("allocations", keys, args.concurrency, allocate)
        after = await plane.ipam_figures(session)
        after_alloc = await sim_calls(session, sim.url)
        allocated = len(alloc_lat)
        waited = sum(1 for ns in alloc_lat if ns > WAITED_NS)
        print(f"phase 2 allocations: {allocated}/{len(keys)} in {alloc_ns / 1e9:.1f} s, {waited} waited for a refill"
              f" (> {WAITED_NS // 1_000_000} ms), {retried[0]} retried, failed: {dict(alloc_fail) or 0}", flush=True)
        print("  server side (each ipam replica's /metrics and /proc): " + ", ".join(
            f"{sid} {n1 - n0} allocates, {(t1 - t0) / max(n1 - n0, 1) * 1e3:.2f} ms each, CPU "
            f"{(c1 - c0) / (alloc_ns / 1e9):.2f} of a core"
            for sid, ((n0, t0, c0), (n1, t1, c1)) in zip(IPAM_SIDS, zip(before, after, strict=True), strict=True)))

        random.Random(2).shuffle(keys)  # release every key: releasing a failed allocation's key is a no-op
        rel_lat, rel_ns, rel_fail = await drive("releases", keys, args.concurrency, release)
        after_rel = await sim_calls(session, sim.url)
        print(f"phase 3 releases: {len(rel_lat)}/{len(keys)} in {rel_ns / 1e9:.1f} s ({released[0]} released an IP),"
              f" failed: {dict(rel_fail) or 0}")
        print()
        results = [Result("allocate", f"x{args.concurrency}", alloc_lat, alloc_ns)] if alloc_lat else []
        results += [Result("release", f"x{args.concurrency}", rel_lat, rel_ns)] if rel_lat else []
        if results:
            print_table(results, rate="calls/s")
        print()
        report_calls(after_warm - base, after_alloc - after_warm, after_rel - after_alloc, allocated)
    finally:
        if bus is not None:
            await bus.close()
        plane.stop()
        await session.close()
        await admin.close()
        await sim.stop()


# ---- --scenario lookahead: one warm node's sequential pods, one cold node's burst --------------------------------


async def join(bus: Bus, admin: SimAdmin, name: str, max_pods: int) -> None:
    inst = await admin.create_instance(name=name, cpus=8, memory_mib=32 * 1024)
    await call(bus, NODE_REGISTER, NodeRegisterRequest(
        node=name, instance_id=inst["id"], instance_type=inst["instanceType"], zone=inst["zoneName"], cpus=8,
        memory_mib=32 * 1024, max_pods=max_pods), timeout=10)


async def allocate_once(bus: Bus, node: str, cid: str) -> None:
    req = AllocateRequest(node=node, container_id=cid, pod=PodRef(namespace="bench", name=cid), wait_s=120)
    await call(bus, IPAM_ALLOCATE, req, timeout=130)


async def sequential(bus: Bus, admin: SimAdmin, session: aiohttp.ClientSession, url: str, count: int) -> None:
    """`count` allocations one after the other on a node whose pool starts at min-allocate: none should wait."""
    node = "warm-0"
    await join(bus, admin, node, 110)
    await warm_up(bus, [node], MIN_ALLOCATE)
    before = await sim_calls(session, url)
    lat: list[int] = []
    started = time.perf_counter_ns()
    for i in range(count):
        t0 = time.perf_counter_ns()
        await allocate_once(bus, node, f"seq-{i:03d}")
        lat.append(time.perf_counter_ns() - t0)
    wall = time.perf_counter_ns() - started
    calls = await sim_calls(session, url) - before
    print(f"\n{count} sequential allocations on a warm node (pool at min-allocate {MIN_ALLOCATE} first):")
    print_table([Result("allocate", "sequential", lat, wall)], rate="calls/s")
    ordered = sorted(lat)
    p50, p95 = pct(ordered, 0.5), pct(ordered, 0.95)
    waited = sum(1 for ns in lat if ns > WAITED_NS)
    print(f"p50 {p50 / 1e6:.2f} ms, p95 {p95 / 1e6:.2f} ms: p95/p50 x{p95 / p50:.2f} (target <= x1.5),"
          f" max {ordered[-1] / 1e6:.1f} ms; {waited} waited for a refill (> {WAITED_NS // 1_000_000} ms);"
          f" cloud calls {dict(calls)} = {sum(calls.values()) / count:.3f} per IP")


async def cold_node(bus: Bus, admin: SimAdmin, count: int, attach_s: float) -> None:
    """`count` concurrent allocations on a node registered at that moment, ENI attach taking `attach_s`: the
    timeline of the first IP, each ENI in use and the last pod, against ENIs x attach latency + 2 s."""
    node = "cold-0"
    await admin.set_settings(attach_delay_s=attach_s)
    timeline: list[tuple[float, str]] = []
    started = time.perf_counter()

    async def on_event(msg: Any) -> None:
        what = msg.subject.rsplit(".", 1)[-1]
        if what in ("created", "attached"):
            eni_id = json.loads(msg.data).get("object", "")
            timeline.append((time.perf_counter() - started, f"ENI {eni_id} {what}"))

    sub = await bus.nc.subscribe(f"cce.events.eni.{node}.*", cb=on_event)
    done: list[float] = []

    async def pod(i: int) -> None:
        await allocate_once(bus, node, f"cold-{i:03d}")
        done.append(time.perf_counter() - started)

    try:
        await join(bus, admin, node, max(count, 110))
        await asyncio.gather(*(pod(i) for i in range(count)))
    finally:
        await sub.unsubscribe()
        await admin.set_settings(attach_delay_s=0.05)
    done.sort()
    timeline += [(done[0], "first pod has its IP"), (done[-1], f"last pod ({count}) has its IP")]
    attached = sum(1 for _t, what in timeline if what.endswith("attached"))
    bound = attached * attach_s + 2.0
    print(f"\ncold node: {count} concurrent allocations from registration, ENI attach {attach_s:g} s (simulator):")
    for at, what in sorted(timeline):
        print(f"  {at:7.2f} s  {what}")
    verdict = "met" if done[-1] <= bound else f"missed by {done[-1] - bound:.1f} s"
    print(f"last pod after {done[-1]:.1f} s; bound {attached} ENIs x {attach_s:g} s + 2 s = {bound:.1f} s: {verdict}")


async def lookahead_bench(args: argparse.Namespace, tmp: Path, nats_url: str) -> None:
    sim = await SimServer(SimSettings(port=0, state_file=None, fabric="off", attach_delay_s=0.05,
                                      detach_delay_s=0.05)).start()
    admin, session = SimAdmin(sim.url), aiohttp.ClientSession()
    plane = ControlPlane(nats_url, sim, tmp, args.cloud_limits == "wide")
    bus: Bus | None = None
    try:
        print(f"vpc_sim {sim.url}; nats {nats_url}; logs in {tmp}; cloud-limits={args.cloud_limits}")
        plane.start()
        await plane.wait_started()
        bus = await Bus.connect(ChassisSettings(nats_url=nats_url), name="bench-ipam")
        await sequential(bus, admin, session, sim.url, args.sequential)
        await cold_node(bus, admin, args.cold, args.attach_s)
    finally:
        if bus is not None:
            await bus.close()
        plane.stop()
        await session.close()
        await admin.close()
        await sim.stop()


def report_calls(warm: Counter[str], alloc: Counter[str], rel: Counter[str], allocated: int) -> None:
    apis = sorted(set(warm) | set(alloc) | set(rel))
    head = ("cloud api (sim)", "warm-up", "allocations", "releases")
    rows = [(a, str(warm[a]), str(alloc[a]), str(rel[a])) for a in apis]
    rows.append(("total", str(sum(warm.values())), str(sum(alloc.values())), str(sum(rel.values()))))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        cells = enumerate(zip(row, widths, strict=True))
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in cells))
    if allocated:
        a, w = sum(alloc.values()), sum(warm.values())
        print(f"cloud calls per allocated IP: {a / allocated:.3f} during allocations,"
              f" {(a + w) / allocated:.3f} with the warm-up ({allocated} IPs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--pods", type=int, default=50, help="pods per node (the node's max_pods)")
    parser.add_argument("--concurrency", type=int, default=64, help="allocations/releases in flight")
    parser.add_argument("--cloud-limits", choices=("default", "wide"), default="wide")
    parser.add_argument("--scenario", choices=("throughput", "lookahead"), default="throughput",
                        help="lookahead: --sequential allocations on one warm node, then --cold concurrent ones on a "
                             "node just registered with ENI attach taking --attach-s (printed as a timeline)")
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--cold", type=int, default=110)
    parser.add_argument("--attach-s", type=float, default=3.0)
    args = parser.parse_args()
    if args.pods > ENIS_PER_NODE * 15:
        parser.error(f"a node holds at most {ENIS_PER_NODE * 15} pod IPs")
    configure_logging("warning")
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="cce-bench-ipam-") as tmp, EmbeddedNats(Path(tmp) / "nats") as nats:
            run = lookahead_bench if args.scenario == "lookahead" else bench
            asyncio.run(run(args, Path(tmp), nats.url))
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s; processes stopped, temp dir removed")
        return
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
