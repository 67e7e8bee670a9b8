"""Benchmark: how far one control plane carries: N simulated nodes joining a 3-member NATS JetStream cluster.

One run starts three nats-servers routed into a cluster (every stream and bucket on 3 replicas), the simulated VPC
(`python -m services.vpc_sim`, no fabric, 50 ms ENI attach) and the control plane as real processes (eni_manager
and `--ipam` ipam replicas). Nodes join at `--rate` per second: the simulator's instance is created and the node
registered on the bus (NODE_REGISTER, as k8s_bridge does for a Node object; bench/kube.py measures that hop), each
node's pool filled to min-allocate, then `--pods` IPs allocated on it (so the endpoint records grow with the
cluster, as on a real one). At each checkpoint (`--checkpoints`, up to `--nodes`) it prints, for the nodes that
joined since the last one: join -> pool ready p50/p99; cloud calls per API per second (against the reference rate
limits); ipam, eni_manager, simulator and nats-server CPU (share of one core) and memory; bus messages per second;
each KV bucket's size. As root, a probe node's node_datapath and cni_gateway (in a network namespace of their own)
are started at the `--probe-at` checkpoints: their memory shows whether a node holds other nodes' state.

`--cloud-limits wide` (the default) lifts the cloud adapter's rate limits so the control plane is measured; with
`default`, ENI creation (5/s) bounds the join rate a vpc-eni cluster can sustain.

Run:  .venv/bin/python bench/scale.py [--nodes 5000] [--rate 20] [--checkpoints 100,500,1000,2000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from _plane import Processes, cpu_seconds, rss_mib, sim_calls
from _table import pct

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from chassis.bus import Bus  # noqa: E402
from chassis.config import ChassisSettings  # noqa: E402
from chassis.embedded_nats import NatsCluster, free_port  # noqa: E402
from chassis.logs import configure_logging  # noqa: E402
from chassis.rpc import call  # noqa: E402
from cloud.limiter import DEFAULT_LIMITS  # noqa: E402
from cloud.port import CloudApi  # noqa: E402
from schemas.errors import CceError  # noqa: E402
from schemas.messages import AllocateRequest, NodeRegisterRequest, PodRef  # noqa: E402
from schemas.records import NodePool  # noqa: E402
from schemas.subjects import BUCKETS, IPAM_ALLOCATE, NODE_REGISTER, POOLS  # noqa: E402
from services.vpc_sim.admin import SimAdmin  # noqa: E402

MIN_ALLOCATE = 10
PROBE = "probe-node"
IPS_PER_NODE = 1 + 15  # a node's first ENI: its primary IP and up to 15 secondaries
NODE_CIDR = "10.250.0.0/16"  # the instances' subnet


class Plane:
    """The simulator, eni_manager and the ipam replicas on the cluster; CPU sampled between checkpoints."""

    def __init__(self, nats_url: str, logs: Path, ipam: int, wide: bool) -> None:
        self.sim_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        env = {**os.environ, "CCE_NATS_URL": nats_url, "CCE_KV_REPLICAS": "3", "CCE_HTTP_PORT": "0",
               "CCE_LOG_LEVEL": "info", "CCE_CLOUD_ENDPOINT": self.sim_url, "CCE_CLOUD_ACCESS_KEY": "cce-sim-ak",
               "CCE_CLOUD_SECRET_KEY": "cce-sim-sk", "CCE_ALLOCATION_TTL_S": "3600", "CCE_TRACING": "false"}
        if wide:
            env["CCE_CLOUD_RATE_LIMITS"] = json.dumps({api.value: [1e6, 1_000_000] for api in CloudApi})
        self.procs = Processes(env, logs)
        self.control = ["eni_manager-1", *(f"ipam-{i + 1}" for i in range(ipam))]
        self.cpu: dict[str, float] = {}

    async def start(self) -> None:
        self.procs.start("vpc_sim", "services.vpc_sim", {
            "CCE_SIM_PORT": str(self.sim_port), "CCE_SIM_FABRIC": "off", "CCE_SIM_ATTACH_DELAY_S": "0.05",
            "CCE_SIM_DETACH_DELAY_S": "0.05", "CCE_SIM_ROUTE_QUOTA": "100000", "CCE_SIM_LOG_LEVEL": "warning"})
        await until_http(f"{self.sim_url}/metrics", 60)
        for sid in self.control:
            self.procs.start(sid, "services.eni_manager" if sid.startswith("eni") else "services.ipam")
        await self.procs.wait_started(self.control)

    def pids(self) -> dict[str, int]:
        return {sid: p.pid for sid, p in self.procs.procs.items() if p.poll() is None}

    def cpu_since(self, extra: dict[str, int]) -> dict[str, float]:
        """CPU seconds each process used since the last call."""
        now = {sid: cpu_seconds(pid) for sid, pid in {**self.pids(), **extra}.items()}
        used = {sid: t - self.cpu.get(sid, 0.0) for sid, t in now.items()}
        self.cpu = now
        return used


async def until_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=1).read())
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not answering after {timeout}s") from None
            await asyncio.sleep(0.1)


class Joins:
    """Join and pool-ready times per node, the latter from one watch of the POOLS bucket."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.joined: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def follow(self, bus: Bus) -> None:
        watcher = await (await bus.bucket(POOLS)).watch(">", ignore_deletes=True)
        async for entry in watcher:
            if entry is None or not entry.value or entry.key in self.ready:
                continue
            if NodePool.model_validate_json(entry.value).demand.free >= self.target:
                self.ready[entry.key] = time.monotonic()
                self.changed.set()

    async def wait_ready(self, nodes: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(n in self.ready for n in nodes):
            if time.monotonic() > deadline:
                missing = [n for n in nodes if n not in self.ready]
                raise RuntimeError(f"{len(missing)} pools not ready after {timeout}s (e.g. {missing[:3]})")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1)

    def latencies(self, nodes: list[str]) -> list[float]:
        return sorted(self.ready[n] - self.joined[n] for n in nodes if n in self.ready)


async def join(bus: Bus, admin: SimAdmin, joins: Joins, name: str, max_pods: int, subnet_id: str) -> None:
    inst = await admin.create_instance(name=name, cpus=8, memory_mib=32 * 1024, subnet_id=subnet_id)
    joins.joined[name] = time.monotonic()
    req = NodeRegisterRequest(node=name, instance_id=inst["id"], instance_type=inst["instanceType"],
                              zone=inst["zoneName"], cpus=8, memory_mib=32 * 1024, max_pods=max_pods)
    for attempt in range(20):
        try:
            await call(bus, NODE_REGISTER, req, timeout=30)
            return
        except CceError as err:
            if not err.retryable or attempt == 19:
                raise
            await asyncio.sleep(0.5)


async def allocate(bus: Bus, node: str, pods: int, failures: Counter[str]) -> None:
    for p in range(pods):
        cid = f"pod-{node}-{p}"
        req = AllocateRequest(node=node, container_id=cid, pod=PodRef(namespace="scale", name=cid), wait_s=60)
        try:
            await call(bus, IPAM_ALLOCATE, req, timeout=70)
        except CceError as err:
            failures[err.reason.value] += 1


def bus_messages(cluster: NatsCluster) -> int:
    """Messages into every member (clients and routes), from their /varz."""
    total = 0
    for port in cluster.http_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=2) as resp:
            total += int(json.loads(resp.read())["in_msgs"])
    return total


async def bucket_sizes(bus: Bus) -> dict[str, tuple[int, int]]:
    """Each bucket's (records, bytes)."""
    out: dict[str, tuple[int, int]] = {}
    for bucket in BUCKETS:
        try:
            state = (await bus.js.stream_info(bucket.stream)).state
        except Exception:  # not created by any service in this run
            continue
        out[bucket.name] = (state.messages, state.bytes)
    return out


class Probe:
    """A node's own services (node_datapath in a namespace of its own, cni_gateway) for one node: their memory once
    their caches are loaded."""

    def __init__(self, procs: Processes, tmp: Path) -> None:
        self.procs = procs
        self.tmp = tmp
        self.netns = "cce-scale-probe"
        self.runs = 0

    def prepare(self) -> str | None:
        """The probe's namespace made; else why there is no probe."""
        if os.geteuid() != 0:
            return "not root: the probe's node_datapath needs a network namespace"
        made = subprocess.run(["ip", "netns", "add", self.netns], check=False, capture_output=True, text=True)
        if made.returncode != 0 and "exists" not in made.stderr:
            return f"ip netns add {self.netns}: {made.stderr.strip()}"
        return None

    async def measure(self) -> dict[str, float]:
        self.runs += 1
        base = self.tmp / f"probe-{self.runs}"
        base.mkdir()
        env = {"CCE_NODE": PROBE, "CCE_DATAPATH_NETNS": f"/run/netns/{self.netns}",
               "CCE_CNI_SOCKET": str(base / "cni.sock"), "CCE_CNI_STATE_DIR": str(base / "state"),
               "CCE_LOG_LEVEL": "warning"}
        sids = [f"probe-datapath-{self.runs}", f"probe-gateway-{self.runs}"]
        for sid, module in zip(sids, ("services.node_datapath", "services.cni_gateway"), strict=True):
            self.procs.start(sid, module, {**env, "CCE_LOG_LEVEL": "info"})
        try:
            await self.procs.wait_started(sids, 120)
            return {sid.rsplit("-", 1)[0]: rss_mib(self.procs.procs[sid].pid) for sid in sids}
        finally:
            self.procs.stop(sids)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)


def limits_per_s() -> dict[str, float]:
    """The cloud adapter's reference rate limits (calls per second) by API name."""
    return {api.value: rate for api, (rate, _burst) in DEFAULT_LIMITS.items()}


async def bench(args: argparse.Namespace, tmp: Path, cluster: NatsCluster) -> None:
    wide = args.cloud_limits == "wide"
    plane = Plane(cluster.url, tmp, args.ipam, wide)
    session = aiohttp.ClientSession()
    bus: Bus | None = None
    probe = Probe(plane.procs, tmp)
    follower: asyncio.Task[None] | None = None
    admin: SimAdmin | None = None
    try:
        await plane.start()
        admin = SimAdmin(plane.sim_url)
        extra = math.ceil((args.nodes + 1) * IPS_PER_NODE / 65_000)
        for i in range(extra):
            await admin.create_subnet(zone="zoneA", cidr=f"10.{i + 1}.0.0/16", name=f"scale-{i + 1}")
        # the instances' own addresses (the simulator's default subnet is a /20: 4,000 nodes fill it)
        node_subnet = str((await admin.create_subnet(zone="zoneA", cidr=NODE_CIDR, name="scale-nodes"))["subnetId"])
        bus = await Bus.connect(ChassisSettings(nats_url=cluster.url, kv_replicas=3), name="bench-scale")
        joins = Joins(min(MIN_ALLOCATE, args.max_pods))
        follower = asyncio.create_task(joins.follow(bus))
        print(f"3-member NATS cluster ({cluster.url}), vpc_sim {plane.sim_url} (no fabric, attach 0.05 s, {extra} "
              f"extra /16 subnet(s)), eni_manager x1, ipam x{args.ipam}; logs in {tmp}")
        print(f"nodes={args.nodes} join rate={args.rate}/s pods/node={args.pods} max_pods={args.max_pods} "
              f"cloud-limits={args.cloud_limits}")
        why_not = probe.prepare()
        if why_not is None:
            await join(bus, admin, joins, PROBE, args.max_pods, node_subnet)
            await joins.wait_ready([PROBE], 120)
        else:
            print(f"probe node services skipped: {why_not}")
        checkpoints = sorted({c for c in args.checkpoints if c <= args.nodes} | {args.nodes})
        limits = limits_per_s()
        failures: Counter[str] = Counter()
        pending: set[asyncio.Task[None]] = set()
        plane.cpu_since(member_pids(cluster))
        calls0, msgs0, t0 = await sim_calls(session, plane.sim_url), bus_messages(cluster), time.monotonic()
        done = 0
        rows: list[dict[str, Any]] = []
        probes: dict[int, dict[str, float]] = {}
        for checkpoint in checkpoints:
            segment = [f"node-{i:05d}" for i in range(done, checkpoint)]
            start = time.monotonic()
            for k, name in enumerate(segment):
                await asyncio.sleep(max(0.0, start + k / args.rate - time.monotonic()))
                task = asyncio.create_task(grow(bus, admin, joins, name, args, failures, node_subnet))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            await joins.wait_ready(segment, 600)
            done = checkpoint
            now = time.monotonic()
            calls, msgs = await sim_calls(session, plane.sim_url), bus_messages(cluster)
            elapsed = now - t0
            cpu = plane.cpu_since(member_pids(cluster))
            pids = {**plane.pids(), **member_pids(cluster)}
            lat = joins.latencies(segment)
            row = {"nodes": checkpoint, "joined": len(segment), "seconds": elapsed,
                   "p50": lat[len(lat) // 2] if lat else math.nan,
                   "p99": pct([int(x * 1e9) for x in lat], 0.99) / 1e9 if lat else math.nan,
                   "cpu": {k: v / elapsed for k, v in cpu.items()}, "rss": {k: rss_mib(p) for k, p in pids.items()},
                   "msgs": (msgs - msgs0) / elapsed, "calls": calls - calls0, "buckets": await bucket_sizes(bus)}
            rows.append(row)
            report(row, limits, wide)
            if why_not is None and checkpoint in args.probe_at:
                probes[checkpoint] = await probe.measure()
                print(f"  probe node services at {checkpoint} nodes: "
                      + ", ".join(f"{k} {v:.1f} MiB" for k, v in probes[checkpoint].items()))
            plane.cpu_since(member_pids(cluster))  # the probe's start-up is not the segment's
            calls0, msgs0, t0 = await sim_calls(session, plane.sim_url), bus_messages(cluster), time.monotonic()
        print()
        summary(rows, probes, failures)
    finally:
        if follower is not None:
            follower.cancel()
        if bus is not None:
            await bus.close()
        plane.procs.stop()
        probe.close()
        await session.close()
        if admin is not None:
            await admin.close()


async def grow(bus: Bus, admin: SimAdmin, joins: Joins, name: str, args: argparse.Namespace,
               failures: Counter[str], node_subnet: str) -> None:
    await join(bus, admin, joins, name, args.max_pods, node_subnet)
    if args.pods:
        await joins.wait_ready([name], 600)
        await allocate(bus, name, args.pods, failures)


def member_pids(cluster: NatsCluster) -> dict[str, int]:
    return {f"nats-{i + 1}": pid for i, pid in enumerate(cluster.pids) if pid}


def report(row: dict[str, Any], limits: dict[str, float], wide: bool) -> None:
    secs = row["seconds"]
    print(f"\n{row['nodes']} nodes ({row['joined']} joined in {secs:.0f} s): join -> pool ready "
          f"p50 {row['p50']:.2f} s, p99 {row['p99']:.2f} s; bus {row['msgs']:.0f} msgs/s into the members")
    cpu, rss = row["cpu"], row["rss"]
    print("  CPU (share of a core) / memory: " + ", ".join(
        f"{k} {cpu.get(k, 0):.2f} / {rss.get(k, 0):.0f} MiB" for k in sorted(rss)))
    calls = ", ".join(f"{api} {n / secs:.1f}/s" + (f" (limit {limits[api]:g})" if api in limits and not wide else "")
                      for api, n in sorted(row["calls"].items()))
    print(f"  cloud calls: {calls or 'none'}")
    print("  buckets: " + ", ".join(f"{b.removeprefix('cce_')} {n} / {size / 1024:.0f} KiB"
                                    for b, (n, size) in sorted(row["buckets"].items()) if n))


def summary(rows: list[dict[str, Any]], probes: dict[int, dict[str, float]], failures: Counter[str]) -> None:
    head = ("nodes", "join->ready p50 s", "p99 s", "ipam CPU", "eni_manager CPU", "ipam MiB", "eni_manager MiB",
            "msgs/s")
    table = []
    for r in rows:
        ipam_cpu = sum(v for k, v in r["cpu"].items() if k.startswith("ipam"))
        ipam_rss = max((v for k, v in r["rss"].items() if k.startswith("ipam")), default=0.0)
        em_cpu, em_rss = r["cpu"].get("eni_manager-1", 0.0), r["rss"].get("eni_manager-1", 0.0)
        table.append((str(r["nodes"]), f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{ipam_cpu:.2f}", f"{em_cpu:.2f}",
                      f"{ipam_rss:.0f}", f"{em_rss:.0f}", f"{r['msgs']:.0f}"))
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]
    for line in [head, tuple("-" * w for w in widths), *table]:
        print(" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    if len(probes) >= 2:
        (small, a), (large, b) = sorted(probes.items())[0], sorted(probes.items())[-1]
        print("probe node services memory: " + ", ".join(
            f"{k} {a[k]:.1f} MiB at {small} nodes, {b[k]:.1f} MiB at {large} ({b[k] / a[k]:.2f}x)" for k in a))
    print(f"allocation failures: {dict(failures) or 0}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=20.0, help="nodes joining per second")
    parser.add_argument("--pods", type=int, default=2, help="IPs allocated on each node once its pool is ready")
    parser.add_argument("--max-pods", type=int, default=20, help="each node's max_pods")
    parser.add_argument("--ipam", type=int, default=2, help="ipam replicas")
    parser.add_argument("--checkpoints", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100, 500, 1000, 2000, 5000])
    parser.add_argument("--probe-at", type=lambda s: [int(x) for x in s.split(",")], default=[100, 2000],
                        help="checkpoints at which the probe node's services are started and measured")
    parser.add_argument("--cloud-limits", choices=("default", "wide"), default="wide")
    args = parser.parse_args()
    configure_logging("warning")
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="cce-bench-scale-") as tmp:
            cluster = NatsCluster(Path(tmp) / "nats", 3, log_dir=Path(tmp))
            with cluster:
                asyncio.run(bench(args, Path(tmp), cluster))
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s; processes stopped, temp dir removed")
        return
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
