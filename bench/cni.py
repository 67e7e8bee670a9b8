"""Benchmark (root): CNI ADD and DEL as the container runtime sees them, timed from exec of the plugin to its exit,
for our plugins on a simulated node of the local stack — the Python one and the native one (Go, `make cni-plugin`)
side by side, against the same gateway — and for the reference `ptp` + `host-local` plugins (Debian's
containernetworking-plugins) in the same run.

Ours: `LocalStack` with one simulated node (embedded NATS, simulator with its namespace fabric, ipam x2,
eni_manager x2, route_manager x2, the node's node_datapath + cni_gateway), its pool warmed up to `--pods` free
IPs first (a production node keeps a warm pool; a cold ADD waiting for the cloud measures the cloud), cooldown 0.
The conflist is the one the node's cni_gateway installed (our plugin only); each of our plugins (`--plugins`,
default: both when the native one is built, else python) is installed into a directory of its own and run with it.
Reference: a conflist of `ptp` with `host-local` IPAM (a /16, its own data dir), run in a namespace of its own
standing for the host. The exclusive mode's reference is `host-device` (with `host-local`) moving a link of that
namespace into the pod and back, in the same batches and concurrency as our exclusive phases: each pod's link (a
veth, like the simulator's ENIs) is made before its timed ADD and removed after its timed DEL.

Both are executed by the same harness (cce_net/cni_runtime.py) under `nsenter --net=<node namespace>`, as a
runtime on a namespaced node would; the cost of that wrapper alone (`nsenter ... /bin/true`) is printed too. Phases
per variant: `--pods` ADDs one after another, then their DELs one after another; then the same number with
`--concurrency` in flight (each phase runs for every plugin, one plugin after the other). Pod namespaces are
created before and removed after the timed calls.

Modes (`--mode`, or `all`: one stack per mode, one after the other; `ptp` is measured before them, the base of the
ratios, and again after them, printed as the drift the kernel's background cleanup of the pods' namespaces adds):
- vpc-eni: as above (up to 105 pods: a node's ENIs hold that many IPs).
- vpc-route: pods from the node's CIDR (up to 200); ready once the node has its CIDR and router address.
- vpc-eni-primary: a BBC node, pods on its primary NIC (39 at most: 40 IPs, the NIC's own included).
- vpc-eni-exclusive: a whole ENI per pod, so the ADD includes moving the ENI's link into the pod and the DEL moving
  it back. A node holds at most 8 ENIs, so pods come and go in batches of as many as there are free ENIs
  (sequential: ADD then DEL, one pod at a time; concurrent: a batch of up to --concurrency ADDs, then their DELs),
  after a warm-up that leaves that many ENIs attached and free; ENI cooldown 0.

Tracing (`--tracing compare`, the default; `only`: nothing else): one more stack, two vpc-eni nodes, node-1's
gateway tracing every CNI command and node-2's with CCE_TRACING=false (plugin: the last of --plugins, native when
built); sequential ADDs (then DELs) alternate between them in blocks of 10, and the p50s are printed side by side.

Run:  .venv/bin/python bench/cni.py [--pods 100] [--concurrency 20] [--mode vpc-eni|vpc-route|...|all]
                                   [--plugins python,native] [--tracing compare|skip|only]
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
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _table import pct  # bench/ comes first on sys.path when run as a script...

# ...where this file's neighbour cloud.py would shadow the `cloud` package: drop bench/ before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cce_net.cni_runtime import CniNetwork, CniRuntime, RuntimeConf, conflist_from, load_conflist  # noqa: E402
from cce_net.pods import create_netns, remove_netns  # noqa: E402
from cce_net.stack import REFERENCE_PLUGINS, LocalStack  # noqa: E402
from services.cni_gateway.install import NATIVE_BUILD, PLUGIN_NAME, plugin_content, write_atomically  # noqa: E402

ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name}"
MODES = ("vpc-eni", "vpc-route", "vpc-eni-primary", "vpc-eni-exclusive")
MAX_PODS = {"vpc-eni": 105, "vpc-route": 200, "vpc-eni-primary": 39, "vpc-eni-exclusive": 10**6}


def timed_runs(network: CniNetwork | HostDeviceNetwork, command: str, items: list[tuple[str, str]],
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


def phase(network: CniNetwork | HostDeviceNetwork, label: str, pods: int, concurrency: int,
          batch: int | None = None) -> dict[str, list[float]]:
    """ADD `batch` pods (`concurrency` in flight), then DEL them; repeated until `pods` were added (batch None:
    all at once)."""
    items = [(f"{label}{i:04d}{os.getpid()}", f"cce-bench-{label}{i}") for i in range(pods)]
    for _, ns in items:
        create_netns(ns)
    results: dict[str, object] = {}
    try:
        def add(cid: str, ns: str) -> None:
            results[cid] = network.add(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid))

        def delete(cid: str, ns: str) -> None:
            network.delete(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid), results.get(cid))  # type: ignore[arg-type]

        out: dict[str, list[float]] = {"ADD": [], "DEL": []}
        step = batch or pods
        for first in range(0, pods, step):
            chunk = items[first:first + step]
            out["ADD"] += timed_runs(network, "ADD", chunk, add, concurrency)
            out["DEL"] += timed_runs(network, "DEL", chunk, delete, concurrency)
        return out
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


def wait_record(stack: LocalStack, bucket: Any, node: str, reached: Callable[[Any], bool], what: str,
                timeout: float) -> float:
    """Poll a node's record in `bucket` until `reached(record)`; returns the seconds it took."""
    from chassis.bus import Bus
    from chassis.config import ChassisSettings

    async def poll() -> float:
        settings = stack.access.settings() if stack.access is not None else ChassisSettings(nats_url=stack.url)
        bus = await Bus.connect(settings, name="bench-cni")
        try:
            kv = await bus.bucket(bucket)
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                try:
                    if reached(bucket.record.model_validate_json((await kv.get(node)).value or b"{}")):
                        return time.monotonic() - t0
                except Exception:  # not there yet
                    pass
                await asyncio.sleep(0.25)
            raise SystemExit(f"{what} within {timeout}s")
        finally:
            await bus.close()

    return asyncio.run(poll())


def wait_pool(stack: LocalStack, node: str, free: int, timeout: float) -> float:
    from schemas.subjects import POOLS

    return wait_record(stack, POOLS, node, lambda pool: pool.demand.free >= free,
                       f"the pool of {node} did not reach {free} free IPs", timeout)


def wait_ready(stack: LocalStack, node: str, timeout: float) -> float:
    """vpc-route: until the node's record is ready (its CIDR and router address are there)."""
    from schemas.subjects import NODES

    return wait_record(stack, NODES, node, lambda nrs: nrs.status.ready and nrs.status.router_ip is not None,
                       f"node {node} was not ready", timeout)


def warm_enis(network: CniNetwork, count: int, timeout: float) -> int:
    """vpc-eni-exclusive: add pods until `count` hold ENIs (each ADD may wait for the next ENI to be attached),
    then delete them: their ENIs stay attached and free. Returns how many ENIs were free at the end."""
    held: list[tuple[str, str, object]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(held) < count and time.monotonic() < deadline:
            cid, ns = f"warm{len(held)}x{os.getpid()}", f"cce-bench-warm{len(held)}"
            create_netns(ns)
            try:
                held.append((cid, ns, network.add(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid))))
            except Exception as err:
                remove_netns(ns)
                if "ENICapacityExceed" in str(err):
                    break
                time.sleep(1)
    finally:
        for cid, ns, result in held:
            network.delete(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid), result)  # type: ignore[arg-type]
            remove_netns(ns)
    return len(held)


def plugin_dirs(kinds: list[str], tmp: Path) -> dict[str, Path]:
    """A bin directory per plugin kind, holding our plugin of that kind as `cce`."""
    dirs = {}
    for kind in kinds:
        dirs[kind] = tmp / f"bin-{kind}"
        write_atomically(dirs[kind] / PLUGIN_NAME, plugin_content(kind)[1], 0o755)
    return dirs


class HostDeviceNetwork:
    """The reference of the exclusive mode: `host-device` moves a link of the host (here: the reference namespace)
    into the pod on ADD and back on DEL, `host-local` giving it an address. One conflist per pod (the plugin is told
    its device by name); the pod's link (a veth, as the simulator's ENIs are, its peer staying behind) is made
    before the timed exec and removed after it."""

    def __init__(self, runtime: CniRuntime, host_netns: str, data_dir: Path) -> None:
        self.runtime, self.host_netns, self.data_dir = runtime, host_netns, data_dir

    @property
    def timings(self) -> list[Any]:
        return self.runtime.timings

    def _device(self, cid: str) -> str:
        return f"hd{zlib.crc32(cid.encode()):08x}"

    def _conflist(self, cid: str) -> Any:
        return conflist_from({"cniVersion": "1.0.0", "name": "bench-ref-device", "plugins": [{
            "type": "host-device", "device": self._device(cid),
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.214.0.0/16"}]],
                     "dataDir": str(self.data_dir)}}]})

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.host_netns, *args], check=True, capture_output=True)

    def add(self, cid: str, netns: str, ifname: str, args: str) -> object:
        self._ip("link", "add", self._device(cid), "type", "veth", "peer", "name", self._device(cid) + "p")
        return self.runtime.run_add(self._conflist(cid), RuntimeConf(cid, netns, ifname, args, {}))

    def delete(self, cid: str, netns: str, ifname: str, args: str, prev_result: Any) -> None:
        self.runtime.run_delete(self._conflist(cid), RuntimeConf(cid, netns, ifname, args, {}), prev_result)
        self._ip("link", "del", self._device(cid) + "p")  # the pair goes with its peer


Phases = list[tuple[str, int, int | None, int]]  # (label, concurrency, batch, pods) of a mode's phases


def measure_mode(mode: str, args: argparse.Namespace, tmp: Path,
                 ) -> tuple[dict[tuple[str, str], dict[str, list[float]]], Phases]:
    """Start a one-node stack in `mode`, warm it, run the sequential and concurrent phases with each plugin, stop
    it. Figures are keyed by (plugin and mode, phase); the phases are returned too (the reference repeats them)."""
    pods = min(args.pods, MAX_PODS[mode])
    pool: dict[str, object] = {"min_allocate": pods + 5, "pre_allocate": pods, "max_above_watermark": 110,
                               "cooldown_s": 0}
    if mode == "vpc-eni-exclusive":
        pool = {"cooldown_s": 0, "eni_cooldown_s": 0}
    os.environ["CCE_SIM_FABRIC_PREFIX"] = f"bc{os.getpid() % 100000}{MODES.index(mode)}"
    stack = LocalStack(tmp / mode, nodes=1, mode=mode, pool=pool, say=lambda m: print(m, file=sys.stderr))
    figures: dict[tuple[str, str], dict[str, list[float]]] = {}
    try:
        t0 = time.monotonic()
        stack.start(timeout=90)
        info = stack.node_info["node-1"]
        conflist = load_conflist(Path(info["conf_dir"]) / "10-cce.conflist")
        networks = {kind: CniNetwork(conflist, CniRuntime([bin_dir], exec_netns=f"/run/netns/{info['netns']}"))
                    for kind, bin_dir in plugin_dirs(args.plugins, tmp / mode).items()}
        ours = networks[args.plugins[0]]
        up = time.monotonic() - t0
        batch: int | None = None
        if mode == "vpc-eni-exclusive":
            free = warm_enis(ours, args.concurrency, timeout=180)
            batch = max(1, free)
            what = f"{free} ENIs attached and free"
        elif mode == "vpc-route":
            wait_ready(stack, "node-1", timeout=120)
            what = "node CIDR and router address"
        else:
            wait_pool(stack, "node-1", pods, timeout=180)
            what = f"pool of {pods} free IPs"
        print(f"[{mode}] stack up in {up:.1f} s; warm ({what}) {time.monotonic() - t0 - up:.1f} s later")
        conc = min(args.concurrency, batch) if batch else args.concurrency
        phases: Phases = [("sequential", 1, 1 if batch else None, pods), (f"{conc} concurrent", conc, batch, pods)]
        for label, concurrency, per_batch, _ in phases:
            for n, (kind, network) in enumerate(networks.items()):
                prefix = f"c{MODES.index(mode)}{label[0]}{n}"
                figures[(f"cce/{kind} {mode}", label)] = phase(network, prefix, pods, concurrency, per_batch)
    finally:
        stack.stop()
        from services.vpc_sim.fabric import Fabric  # the simulator removes its namespaces; this is in case

        asyncio.run(Fabric(prefix=stack.fabric_prefix).teardown())
    return figures, phases


def restart_gateway(stack: LocalStack, node: str, env: dict[str, str], timeout: float = 60) -> None:
    """Run the node's cni_gateway again with `env` added (the stack's other processes keep running)."""
    proc = next(p for p in stack.procs if p.service.name == "cni_gateway" and p.node == node)
    assert proc.popen is not None
    proc.popen.terminate()
    proc.popen.wait(timeout=30)
    proc.extra_env = {**proc.extra_env, **env}
    stack._spawn(proc)
    stack._wait_healthy(timeout, [proc])


def tracing_comparison(args: argparse.Namespace, tmp: Path, block: int = 10) -> dict[str, dict[str, list[float]]]:
    """ADD/DEL with tracing on and off in one run, on one stack: node-1's gateway traces every CNI command (so
    ipam, node_datapath and eni_manager continue its traces), node-2's runs with CCE_TRACING=false (its requests
    carry no trace, so nothing downstream makes a span for them). Sequential ADDs alternate between the two nodes
    in blocks of `block`, then the DELs, so drift on a noisy machine hits both alike."""
    pods = min(args.pods, MAX_PODS["vpc-eni"])
    pool: dict[str, object] = {"min_allocate": pods + 5, "pre_allocate": pods, "max_above_watermark": 110,
                               "cooldown_s": 0}
    os.environ["CCE_SIM_FABRIC_PREFIX"] = f"bt{os.getpid() % 100000}"
    stack = LocalStack(tmp / "tracing", nodes=2, mode="vpc-eni", pool=pool, say=lambda m: print(m, file=sys.stderr))
    try:
        stack.start(timeout=90)
        restart_gateway(stack, "node-2", {"CCE_TRACING": "false"})
        networks = {}
        for label, node in (("on", "node-1"), ("off", "node-2")):
            info = stack.node_info[node]
            conflist = load_conflist(Path(info["conf_dir"]) / "10-cce.conflist")
            bin_dir = plugin_dirs(args.plugins[-1:], tmp / f"tracing-{label}")[args.plugins[-1]]
            networks[label] = CniNetwork(conflist, CniRuntime([bin_dir], exec_netns=f"/run/netns/{info['netns']}"))
            wait_pool(stack, node, pods, timeout=180)
        items = {label: [(f"t{label}{i:04d}{os.getpid()}", f"cce-bench-t{label}{i}") for i in range(pods)]
                 for label in networks}
        out: dict[str, dict[str, list[float]]] = {label: {"ADD": [], "DEL": []} for label in networks}
        results: dict[str, object] = {}
        for label_items in items.values():
            for _, ns in label_items:
                create_netns(ns)
        try:
            for command in ("ADD", "DEL"):
                for first in range(0, pods, block):
                    for label, network in networks.items():
                        chunk = items[label][first:first + block]

                        def run(cid: str, ns: str, network: CniNetwork = network, command: str = command) -> None:
                            if command == "ADD":
                                results[cid] = network.add(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid))
                            else:
                                network.delete(cid, f"/run/netns/{ns}", "eth0", ARGS.format(name=cid),
                                               results.get(cid))  # type: ignore[arg-type]

                        out[label][command] += timed_runs(network, command, chunk, run, 1)
        finally:
            for label_items in items.values():
                for _, ns in label_items:
                    remove_netns(ns)
        return out
    finally:
        stack.stop()
        from services.vpc_sim.fabric import Fabric

        asyncio.run(Fabric(prefix=stack.fabric_prefix).teardown())


def print_tracing(figures: dict[str, dict[str, list[float]]], plugin: str) -> None:
    print(f"\ntracing on (node-1) vs off (node-2), same stack, alternating blocks; plugin {plugin}, sequential:")
    for op in ("ADD", "DEL"):
        on, off = figures["on"][op], figures["off"][op]
        print(f"  {op}: on p50 {ms(on, .5):.2f} ms p95 {ms(on, .95):.2f} ms | off p50 {ms(off, .5):.2f} ms "
              f"p95 {ms(off, .95):.2f} ms | p50 on/off x{ms(on, .5) / ms(off, .5):.3f} (n={len(on)}, {len(off)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="vpc-eni", help="network mode(s) of our node")
    parser.add_argument("--tracing", choices=["compare", "skip", "only"], default="compare",
                        help="compare: also ADD/DEL with tracing on vs off on one two-node stack (vpc-eni); "
                             "only: just that")
    parser.add_argument("--plugins", type=lambda v: [k.strip() for k in v.split(",") if k.strip()],
                        default=["python", "native"] if NATIVE_BUILD.is_file() else ["python"],
                        help="our plugins to run, e.g. python,native (default: both when the native one is built)")
    args = parser.parse_args()
    if not args.plugins or not set(args.plugins) <= {"python", "native"}:
        raise SystemExit("--plugins: a comma-separated list of python and native")
    if "native" in args.plugins and not NATIVE_BUILD.is_file():
        raise SystemExit(f"the native plugin is not built ({NATIVE_BUILD}): run `make cni-plugin` (needs Go)")
    if os.geteuid() != 0:
        raise SystemExit("needs root: pods are network namespaces")
    if not (REFERENCE_PLUGINS / "ptp").exists():
        raise SystemExit(f"needs the reference plugins in {REFERENCE_PLUGINS} "
                         "(apt-get install containernetworking-plugins)")
    tmp = Path(tempfile.mkdtemp(prefix="cce-bench-cni-"))
    if args.tracing == "only":
        try:
            print_tracing(tracing_comparison(args, tmp), args.plugins[-1])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    ref_ns = f"cce-bench-ref{os.getpid() % 100000}"
    try:
        create_netns(ref_ns)
        ref_runtime = CniRuntime([REFERENCE_PLUGINS], exec_netns=f"/run/netns/{ref_ns}")
        ref_conf = {"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [{
            "type": "ptp", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.0.0/16"}]],
                                    "dataDir": str(tmp / "host-local")}}]}
        ref = CniNetwork(conflist_from(ref_conf), ref_runtime)
        pods = min(args.pods, 105)
        modes = MODES if args.mode == "all" else (args.mode,)

        def ptp_phases(when: str) -> dict[tuple[str, str], dict[str, list[float]]]:
            return {(REF, "sequential"): phase(ref, f"rs{when}", pods, 1),
                    (REF, f"{args.concurrency} concurrent"): phase(ref, f"rc{when}", pods, args.concurrency)}

        # ptp is measured before our stacks (the ratios' base: a machine nothing ran on yet) and again after them:
        # the kernel cleans up the namespaces of hundreds of pods in the background for a while, and the drift
        # between the two shows how much that weighs on whatever runs next
        references = ptp_phases("b") if set(modes) - {EXCLUSIVE} else {}
        figures: dict[tuple[str, str], dict[str, list[float]]] = {}
        phases: dict[str, Phases] = {}
        for mode in modes:
            mode_figures, phases[mode] = measure_mode(mode, args, tmp)
            figures.update(mode_figures)
        after = ptp_phases("a") if references else {}
        if EXCLUSIVE in phases:
            device = HostDeviceNetwork(ref_runtime, ref_ns, tmp / "host-local-device")
            for n, (label, concurrency, batch, count) in enumerate(phases[EXCLUSIVE]):
                references[(REF_DEVICE, label)] = phase(device, f"rd{n}x", count, concurrency, batch)
        wrap = wrapper_cost(ref_ns)
        traced = tracing_comparison(args, tmp) if args.tracing == "compare" else None
        print_table(figures, references)
        if traced is not None:
            print_tracing(traced, args.plugins[-1])
        for (_, label), ops in after.items():
            print(f"{REF} again after our stacks, {label}: " + ", ".join(
                f"{op} p50 {ms(v, .5):.1f} ms (x{ms(v, .5) / ms(references[(REF, label)][op], .5):.2f} of before)"
                for op, v in ops.items()))
        print(f"harness wrapper alone (nsenter --net=... /bin/true): p50 {ms(wrap, .5):.1f} ms, "
              f"p99 {ms(wrap, .99):.1f} ms (included in every figure above)")
        print(json.dumps({f"{p}|{m}|{op}": round(ms(v, .5), 2)
                          for (p, m), ops in [*figures.items(), *references.items()] for op, v in ops.items()}))
    finally:
        remove_netns(ref_ns)
        shutil.rmtree(tmp, ignore_errors=True)


REF = "ptp+host-local"
REF_DEVICE = "host-device+host-local"
EXCLUSIVE = "vpc-eni-exclusive"


def print_table(figures: dict[tuple[str, str], dict[str, list[float]]],
                references: dict[tuple[str, str], dict[str, list[float]]]) -> None:
    """One row per plugin, phase and command; the ratio is against the reference of that phase (host-device for
    the exclusive mode, ptp for the others)."""
    head = ("op", "phase", "plugin", "n", "p50 ms", "p95 ms", "p99 ms", "p50 ratio", "against")
    rows = []
    for (plugin, label), ops in [*figures.items(), *references.items()]:
        reference = plugin if plugin in (REF, REF_DEVICE) else REF_DEVICE if plugin.endswith(EXCLUSIVE) else REF
        for op, values in ops.items():
            base = references[(reference, label)][op]
            ratio = ms(values, 0.5) / ms(base, 0.5)
            rows.append((op, label, plugin, str(len(values)), f"{ms(values, .5):.1f}", f"{ms(values, .95):.1f}",
                         f"{ms(values, .99):.1f}", f"x{ratio:.2f}", reference))
    rows.sort(key=lambda r: (r[1] != "sequential", r[1], r[0], r[8], r[2] in (REF, REF_DEVICE), r[2]))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
