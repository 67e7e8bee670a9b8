"""Benchmark: vpc-route mode's control plane: how long a joining node waits for its VPC route rule, and how long
route_manager takes to reconcile the route table of a large cluster.

One run starts its own nats-server (JetStream, temp dir), an in-process simulated VPC (`SimServer`: no fabric, no
faults, state in memory, route-table quota raised to fit) and the control plane as real processes:
`python -m services.route_manager` (1) and `python -m services.ipam` (1, which serves node registration), logging
into the temp dir. Cluster block 172.16.0.0/12, node CIDRs /24. Phases:

1. join latency: `--samples` nodes registered one at a time (NODE_REGISTER to ipam); each is timed from the
   registration request to its rule (destination = its CIDR, next hop = its instance) appearing in the simulator's
   route table (read in-process every 2 ms);
2. bulk join: `--nodes` more nodes registered (32 requests in flight): time until every one has its rule;
3. steady-state reconcile: route_manager's own round time (`cce_route_round_seconds` from its /metrics) over
   `--steady` seconds with every rule in place (list the table, diff, nothing to write) at a 0.2 s resync period;
4. repair: every rule of ours deleted behind route_manager's back (in the simulator directly): time until the
   periodic reconcile has put all of them back (detection is bounded by the resync period, 1 s here).

`--cloud-limits default` keeps the adapter's reference rate limits (create route rule 5/s burst 10, list 10/s):
then creating N rules takes about N/5 s; `wide` (the default) lifts them so route_manager itself is measured.
The simulator shares this process's event loop with the load generator: on a small machine figures are upper
bounds of the control plane's own cost.

Run:  .venv/bin/python bench/route.py [--nodes 500] [--samples 20] [--cloud-limits default|wide]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _plane import Processes
from _table import Result, print_table  # bench/ comes first on sys.path when run as a script...
from prometheus_client.parser import text_string_to_metric_families

# ...where this file's neighbour cloud.py would shadow the `cloud` package: drop bench/ before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from chassis.bus import Bus  # noqa: E402
from chassis.config import ChassisSettings  # noqa: E402
from chassis.embedded_nats import EmbeddedNats  # noqa: E402
from chassis.logs import configure_logging  # noqa: E402
from chassis.rpc import call  # noqa: E402
from cloud.port import CloudApi  # noqa: E402
from schemas.base import NetworkMode  # noqa: E402
from schemas.errors import CceError, ErrorReason  # noqa: E402
from schemas.messages import NodeRegisterRequest  # noqa: E402
from schemas.subjects import NODE_REGISTER  # noqa: E402
from services.vpc_sim.admin import SimAdmin  # noqa: E402
from services.vpc_sim.server import SimServer, SimSettings  # noqa: E402

BLOCK = "172.16.0.0/12"
POLL_S = 0.002
PROCS = (("rm-1", "services.route_manager"), ("ipam-1", "services.ipam"))
CLUSTER_ID = "bench"


class ControlPlane:
    """route_manager and ipam as processes (bench/_plane.py) on this NATS and simulator."""

    def __init__(self, nats_url: str, sim: SimServer, logs: Path, wide: bool) -> None:
        env = {**os.environ, "CCE_NATS_URL": nats_url, "CCE_HTTP_PORT": "0", "CCE_LOG_LEVEL": "info",
               "CCE_CLOUD_ENDPOINT": sim.url, "CCE_CLOUD_ACCESS_KEY": sim.access_key,
               "CCE_CLOUD_SECRET_KEY": sim.secret_key, "CCE_CLOUD_VPC_ID": sim.vpc_id,
               "CCE_CLUSTER_CIDRS": BLOCK, "CCE_NODE_CIDR_MASK": "24", "CCE_CLUSTER_ID": CLUSTER_ID,
               "CCE_RESYNC_PERIOD_S": "1.0"}
        if wide:
            env["CCE_CLOUD_RATE_LIMITS"] = json.dumps({api.value: [1e6, 1_000_000] for api in CloudApi})
        self.logs = logs
        self.processes = Processes(env, logs)

    def start(self, **env: str) -> None:
        for sid, module in PROCS:
            self.processes.start(sid, module, env)

    def log(self, sid: str) -> str:
        return (self.logs / f"{sid}.log").read_text(errors="replace")

    async def wait_started(self, timeout: float = 60) -> None:
        await self.processes.wait_started([sid for sid, _ in PROCS], timeout)

    def metrics_url(self, sid: str) -> str:
        match = re.search(r'"http_port": (\d+)', self.log(sid))
        if match is None:
            raise RuntimeError(f"{sid} logged no http_port")
        return f"http://127.0.0.1:{match.group(1)}/metrics"

    def stop(self) -> None:
        self.processes.stop()


def ours(sim: SimServer) -> dict[str, str]:
    """Destination -> next hop of the rules of our cluster in the simulator's route table (read in-process)."""
    table = sim.domain.route_table(sim.route_table_id)
    return {r.destination: r.next_hop_id for r in table.rules if r.description.startswith(f"cce-route:{CLUSTER_ID}:")}


async def round_stats(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    async with session.get(url) as resp:
        text = await resp.text()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cce_route_round_seconds_sum":
                total = s.value
            elif s.name == "cce_route_round_seconds_count":
                count = s.value
    return total, count


async def register(bus: Bus, admin: SimAdmin, name: str) -> str:
    inst = await admin.create_instance(name=name, cpus=4, memory_mib=8192)
    await register_instance(bus, name, inst)
    return str(inst["id"])


async def register_instance(bus: Bus, name: str, inst: dict[str, Any]) -> None:
    req = NodeRegisterRequest(node=name, instance_id=inst["id"], instance_type=inst["instanceType"],
                              zone=inst["zoneName"], cpus=4, memory_mib=8192, mode=NetworkMode.VPC_ROUTE)
    for attempt in range(50):  # ipam logs "service started" a moment before it serves
        try:
            await call(bus, NODE_REGISTER, req, timeout=10)
            return
        except CceError as err:
            if err.reason is not ErrorReason.SERVICE_UNAVAILABLE or attempt == 49:
                raise
            await asyncio.sleep(0.1)


async def until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def bench(args: argparse.Namespace, tmp: Path, nats_url: str) -> None:
    wide = args.cloud_limits == "wide"
    sim = await SimServer(SimSettings(port=0, state_file=None, fabric="off")).start()
    admin, session = SimAdmin(sim.url), aiohttp.ClientSession()
    total_nodes = args.samples + args.nodes
    await admin.set_settings(route_quota=total_nodes + 50)
    plane = ControlPlane(nats_url, sim, tmp, wide)
    bus: Bus | None = None
    try:
        print(f"vpc_sim {sim.url} (in-process, no faults, route quota {total_nodes + 50}); nats {nats_url};"
              f" logs in {tmp}")
        print(f"samples={args.samples} nodes={args.nodes} cloud-limits={args.cloud_limits} block={BLOCK} mask=/24")
        t0 = time.perf_counter()
        plane.start()
        await plane.wait_started()
        print(f"control plane (1 route_manager, 1 ipam) up in {time.perf_counter() - t0:.1f} s")
        bus = await Bus.connect(ChassisSettings(nats_url=nats_url), name="bench-route")

        # phase 1: join latency, one node at a time
        lat: list[int] = []
        started = time.perf_counter_ns()
        for i in range(args.samples):
            name = f"sample-{i:03d}"
            inst = await admin.create_instance(name=name, cpus=4, memory_mib=8192)
            before = set(ours(sim))
            t = time.perf_counter_ns()
            await register_instance(bus, name, inst)

            def routed(hop_id: str = inst["id"], before: set[str] = before) -> bool:
                return any(hop == hop_id for d, hop in ours(sim).items() if d not in before)

            await until(routed, 30, f"{name}'s rule")
            lat.append(time.perf_counter_ns() - t)
        join_ns = time.perf_counter_ns() - started
        print(f"phase 1 join: {args.samples} nodes, registration -> rule in the simulator")

        # phase 2: bulk join
        names = [f"node-{i:04d}" for i in range(args.nodes)]
        queue = list(reversed(names))
        t = time.perf_counter()

        async def worker() -> None:
            while queue:
                await register(bus, admin, queue.pop())  # type: ignore[arg-type]

        await asyncio.gather(*(worker() for _ in range(32)))
        registered_s = time.perf_counter() - t
        await until(lambda: len(ours(sim)) >= total_nodes, 600, f"{total_nodes} rules")
        bulk_s = time.perf_counter() - t
        print(f"phase 2 bulk join: {args.nodes} nodes registered in {registered_s:.1f} s; all {total_nodes} rules"
              f" in the simulator {bulk_s:.1f} s after the first registration", flush=True)

        # phase 3: steady-state rounds
        metrics = plane.metrics_url("rm-1")
        await asyncio.sleep(1.5)  # let the last creating round finish
        s0, c0 = await round_stats(session, metrics)
        await asyncio.sleep(args.steady)
        s1, c1 = await round_stats(session, metrics)
        rounds = int(c1 - c0)
        steady_ms = (s1 - s0) / rounds * 1000 if rounds else float("nan")
        print(f"phase 3 steady state: {rounds} rounds in {args.steady:.0f} s over {total_nodes} rules (resync 1 s"
              f" + node-change kicks), mean round {steady_ms:.1f} ms (list {total_nodes} rules in pages of 100,"
              f" diff, no write)")

        # phase 4: repair after every rule vanished
        table = sim.domain.route_table(sim.route_table_id)
        for rule_id in [r.rule_id for r in table.rules if r.description.startswith(f"cce-route:{CLUSTER_ID}:")]:
            sim.domain.delete_route_rule(rule_id)
        t = time.perf_counter()
        await until(lambda: len(ours(sim)) >= total_nodes, 600, "the rules to be restored")
        repair_s = time.perf_counter() - t
        s2, c2 = await round_stats(session, metrics)
        print(f"phase 4 repair: {total_nodes} rules deleted behind route_manager's back, all restored after"
              f" {repair_s:.2f} s (up to 1 s of it waiting for the next periodic round)")
        print()
        print_table([Result("register -> rule", "1 at a time", lat, join_ns)], rate="joins/s")
        print()
        print(f"reconcile of {total_nodes} nodes: bulk join {bulk_s:.1f} s ({total_nodes / bulk_s:.0f} rules/s),"
              f" no-op round {steady_ms:.1f} ms, repair of every rule {repair_s:.2f} s;"
              f" route_manager rounds so far {int(c2)}, {s2:.1f} s in rounds")
    finally:
        if bus is not None:
            await bus.close()
        plane.stop()
        await session.close()
        await admin.close()
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500, help="nodes joined in bulk (phase 2)")
    parser.add_argument("--samples", type=int, default=20, help="nodes joined one at a time (phase 1)")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady-state rounds measured")
    parser.add_argument("--cloud-limits", choices=("default", "wide"), default="wide")
    args = parser.parse_args()
    configure_logging("warning")
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="cce-bench-route-") as tmp, EmbeddedNats(Path(tmp) / "nats") as nats:
            asyncio.run(bench(args, Path(tmp), nats.url))
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s; processes stopped, temp dir removed")
        return
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
