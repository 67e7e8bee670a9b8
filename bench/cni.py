"""Benchmark (root): CNI ADD and DEL as the container runtime sees them, timed from exec of the plugin to its exit,
for our plugin on a simulated node of the local stack and for the reference `ptp` + `host-local` plugins
(Debian's containernetworking-plugins) in the same run.

Ours: `LocalStack` with one simulated node (embedded NATS, simulator with its namespace fabric, ipam x2,
eni_manager x2, route_manager x2, the node's node_datapath + cni_gateway), its pool warmed up to `--pods` free
IPs first (a production node keeps a warm pool; a cold ADD waiting for the cloud measures the cloud), cooldown 0.
The conflist is the one the node's cni_gateway installed (our plugin only). Reference: a conflist of `ptp` with
`host-local` IPAM (a /16, its own data dir), run in a namespace of its own standing for the host.

Both are executed by the same harness (cce_net/cni_runtime.py) under `nsenter --net=<node namespace>`, as a
runtime on a namespaced node would; the cost of that wrapper alone (`nsenter ... /bin/true`) is printed too. Phases
per variant: `--pods` ADDs one after another, then their DELs one after another; then the same number with
`--concurrency` in flight. Pod namespaces are created before and removed after the timed calls.

Run:  .venv/bin/python bench/cni.py [--pods 100] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _table import pct  # bench/ comes first on sys.path when run as a script...

# ...where this file's neighbour cloud.py would shadow the `cloud` package: drop bench/ before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cce_net.cni_runtime import CniNetwork, CniRuntime, conflist_from, load_conflist  # noqa: E402
from cce_net.pods import create_netns, remove_netns  # noqa: E402
from cce_net.stack import REFERENCE_PLUGINS, LocalStack  # noqa: E402

ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name}"


def timed_runs(network: CniNetwork, command: str, items: list[tuple[str, str]],
               run: Callable[[str, str], object], concurrency: int) -> list[float]:
    """Run `run(container_id, netns)` for every item, `concurrency` at a time; the plugins' exec-to-exit seconds."""
    start = len(network.timings)
    if concurrency <= 1:
        for cid, ns in items:
            run(cid, ns)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda item: run(*item), items))
    # one "exec" of a conflist = the sum of its plugins' execs for that container
    per_container: dict[str, float] = {}
    for t in network.timings[start:]:
        if t.command == command:
            assert t.ok, f"{t.plugin} {command} {t.container_id} failed"
            per_container[t.container_id] = per_container.get(t.container_id, 0.0) + t.seconds
    return list(per_container.values())


def phase(network: CniNetwork, label: str, pods: int, concurrency: int) -> dict[str, list[float]]:
    items = [(f"{label}{i:04d}{os.getpid()}", f"cce-bench-{label}{i}") for i in range(pods)]
    for _, ns in items:
        create_netns(ns)
    results: dict[str, object] = {}
    try:
        def add(cid: str, ns: str) -> None:
            results[cid] = network.add(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid))

        def delete(cid: str, ns: str) -> None:
            network.delete(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid), results.get(cid))  # type: ignore[arg-type]

        return {"ADD": timed_runs(network, "ADD", items, add, concurrency),
                "DEL": timed_runs(network, "DEL", items, delete, concurrency)}
    finally:
        for _, ns in items:
            remove_netns(ns)


def wrapper_cost(netns: str, n: int = 50) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", "/bin/true"], check=True)
        out.append(time.perf_counter() - t0)
    return out


def ms(values: list[float], q: float) -> float:
    ns = sorted(int(v * 1e9) for v in values)
    return pct(ns, q) / 1e6


def wait_pool(stack: LocalStack, node: str, free: int, timeout: float) -> float:
    from chassis.bus import Bus
    from chassis.config import ChassisSettings
    from schemas.records import NodePool
    from schemas.subjects import POOLS

    async def poll() -> float:
        bus = await Bus.connect(ChassisSettings(nats_url=stack.url), name="bench-cni")
        try:
            kv = await bus.bucket(POOLS)
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                try:
                    entry = await kv.get(node)
                    if NodePool.model_validate_json(entry.value or b"{}").demand.free >= free:
                        return time.monotonic() - t0
                except Exception:  # not there yet
                    pass
                await asyncio.sleep(0.25)
            raise SystemExit(f"the pool of {node} did not reach {free} free IPs within {timeout}s")
        finally:
            await bus.close()

    return asyncio.run(poll())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: pods are network namespaces")
    if not (REFERENCE_PLUGINS / "ptp").exists():
        raise SystemExit(f"needs the reference plugins in {REFERENCE_PLUGINS} "
                         "(apt-get install containernetworking-plugins)")
    tmp = Path(tempfile.mkdtemp(prefix="cce-bench-cni-"))
    os.environ["CCE_SIM_FABRIC_PREFIX"] = f"bc{os.getpid() % 100000}"
    pods = min(args.pods, 105)
    pool = {"min_allocate": pods + 5, "pre_allocate": pods, "max_above_watermark": 110, "cooldown_s": 0}
    stack = LocalStack(tmp / "state", nodes=1, pool=pool, say=lambda m: print(m, file=sys.stderr))
    ref_ns = f"cce-bench-ref{os.getpid() % 100000}"
    try:
        t0 = time.monotonic()
        stack.start(timeout=90)
        info = stack.node_info["node-1"]
        warm = wait_pool(stack, "node-1", pods, timeout=180)
        print(f"stack up in {time.monotonic() - t0 - warm:.1f} s; pool warm ({pods} free) {warm:.1f} s later")
        ours = CniNetwork(load_conflist(Path(info["conf_dir"]) / "10-cce.conflist"),
                          CniRuntime([info["bin_dir"]], exec_netns=f"/run/netns/{info['netns']}"))
        create_netns(ref_ns)
        ref_conf = {"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [{
            "type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.0.0/16"}]],
                                    "dataDir": str(tmp / "host-local")}}]}
        ref = CniNetwork(conflist_from(ref_conf), CniRuntime([REFERENCE_PLUGINS], exec_netns=f"/run/netns/{ref_ns}"))
        figures: dict[tuple[str, str], dict[str, list[float]]] = {}
        for mode, conc in (("sequential", 1), (f"{args.concurrency} concurrent", args.concurrency)):
            figures[("cce", mode)] = phase(ours, "c" + mode[0], pods, conc)
            figures[("ptp+host-local", mode)] = phase(ref, "r" + mode[0], pods, conc)
        wrap = wrapper_cost(ref_ns)
        head = ("op", "mode", "plugin", "n", "p50 ms", "p95 ms", "p99 ms", "p50 ratio")
        rows = []
        for (plugin, mode), ops in figures.items():
            for op, values in ops.items():
                base = figures[("ptp+host-local", mode)][op]
                ratio = ms(values, 0.5) / ms(base, 0.5)
                rows.append((op, mode, plugin, str(len(values)), f"{ms(values, .5):.1f}", f"{ms(values, .95):.1f}",
                             f"{ms(values, .99):.1f}", f"x{ratio:.2f}"))
        rows.sort(key=lambda r: (r[1] != "sequential", r[0], r[2] != "cce"))
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for row in [head, tuple("-" * w for w in widths), *rows]:
            print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        print(f"harness wrapper alone (nsenter --net=... /bin/true): p50 {ms(wrap, .5):.1f} ms, "
              f"p99 {ms(wrap, .99):.1f} ms (included in every figure above)")
        print(json.dumps({f"{p}|{m}|{op}": round(ms(v, .5), 2) for (p, m), ops in figures.items()
                          for op, v in ops.items()}))
    finally:
        stack.stop()
        from services.vpc_sim.fabric import Fabric  # the simulator removes its namespaces; this is in case

        asyncio.run(Fabric(prefix=stack.fabric_prefix).teardown())
        remove_netns(ref_ns)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
