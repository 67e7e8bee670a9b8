"""Benchmark: the Kubernetes bridge — nodes joining through their Node objects, and the projections under pod churn.

One run starts its own nats-server, an in-process simulated VPC (no fabric, 50 ms attach, cloud limits lifted so the
bridge and not the cloud is measured, unless `--cloud-limits default`), a real API server (etcd + kube-apiserver of
`make kube-tools`) with the CRDs and the bridge's ClusterRole, and as processes eni_manager (1), ipam (2) and
k8s_bridge (2, as its least-privilege user). Phases:

1. `--nodes` Node objects created at once (16 threads), each naming a simulated instance: per node, the time from
   its creation to its registration on the bus (the NetResourceSet record) and to its `nrs` resource; p50/p99 and
   the time until the last. ENI provisioning of every node runs meanwhile, as it would.
2. `--pods` pods over the first `--pod-nodes` nodes, `--concurrency` at a time: the Pod object, then ADD as the
   gateway does it (allocate + confirm on the bus); then every DEL (release, then the Pod object goes). The bridge
   projects `cep` resources throughout: its Kubernetes writes per second and CPU seconds (the leader's, from its
   /metrics and /proc), and the time until the last `cep` is gone.

Run:  .venv/bin/python bench/kube.py [--nodes 500] [--pods 1000] [--pod-nodes 20] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _table import pct
from prometheus_client.parser import text_string_to_metric_families

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from cce_net.kubelocal import KubeAdmin, LocalKube, apply_manifests, missing_parts  # noqa: E402
from chassis.bus import Bus  # noqa: E402
from chassis.config import ChassisSettings  # noqa: E402
from chassis.embedded_nats import EmbeddedNats  # noqa: E402
from chassis.kv import KvCache, Store  # noqa: E402
from chassis.logs import configure_logging  # noqa: E402
from chassis.procs import parent_death_signal  # noqa: E402
from chassis.rpc import call  # noqa: E402
from cloud.port import CloudApi  # noqa: E402
from schemas.errors import CceError  # noqa: E402
from schemas.messages import AllocateRequest, ConfirmRequest, PodRef, ReleaseRequest  # noqa: E402
from schemas.subjects import IPAM_ALLOCATE, IPAM_CONFIRM, IPAM_RELEASE, LEASES, NODES  # noqa: E402
from services.k8s_bridge.manifests import BRIDGE_USER, bridge_binding, bridge_cluster_role, crd  # noqa: E402
from services.k8s_bridge.projection import CEP, GROUP, KINDS, NRS, VERSION  # noqa: E402
from services.vpc_sim.admin import SimAdmin  # noqa: E402
from services.vpc_sim.server import SimServer, SimSettings  # noqa: E402

PROCS = (("em-1", "services.eni_manager"), ("ipam-1", "services.ipam"), ("ipam-2", "services.ipam"),
         ("bridge-1", "services.k8s_bridge"), ("bridge-2", "services.k8s_bridge"))


class Plane:
    def __init__(self, nats_url: str, sim: SimServer, kube: LocalKube, logs: Path, wide: bool) -> None:
        self.env = {**os.environ, "CCE_NATS_URL": nats_url, "CCE_LOG_LEVEL": "info",
                    "CCE_CLOUD_ENDPOINT": sim.url, "CCE_CLOUD_ACCESS_KEY": sim.access_key,
                    "CCE_CLOUD_SECRET_KEY": sim.secret_key, "CCE_KUBECONFIG": str(kube.kubeconfig_for(BRIDGE_USER))}
        if wide:
            self.env["CCE_CLOUD_RATE_LIMITS"] = json.dumps({api.value: [1e6, 1_000_000] for api in CloudApi})
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        from chassis.embedded_nats import free_port

        for sid, module in PROCS:
            self.ports[sid] = free_port()
            with open(self.logs / f"{sid}.log", "ab") as out:
                self.procs[sid] = subprocess.Popen(
                    [sys.executable, "-m", module], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**self.env, "CCE_SERVICE_ID": sid, "CCE_HTTP_PORT": str(self.ports[sid])},
                    start_new_session=True, preexec_fn=parent_death_signal)

    async def wait_started(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not all("service started" in (self.logs / f"{sid}.log").read_text(errors="replace") for sid, _ in PROCS):
            dead = [sid for sid, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the services did not start (exited: {dead}); logs in {self.logs}")
            await asyncio.sleep(0.1)

    def cpu_s(self, sid: str) -> float:
        fields = Path(f"/proc/{self.procs[sid].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def writes(self, sid: str) -> int:
        """The bridge's Kubernetes writes so far (every method but GET), from its /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[sid]}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return int(sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name == "cce_kube_requests_total" and s.labels["method"] != "GET"))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Watcher:
    """First-seen (ADDED) and gone (DELETED) times of one kind of resource, from a watch on a thread."""

    def __init__(self, kube: LocalKube, plural: str) -> None:
        from kubernetes import client as kclient
        from kubernetes import config as kconfig
        from kubernetes import watch

        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.events = 0
        api = kclient.CustomObjectsApi(kconfig.new_client_from_config(str(kube.kubeconfig)))
        self._watch = watch.Watch()
        self._stream = lambda: self._watch.stream(api.list_cluster_custom_object, GROUP, VERSION, plural,
                                                  timeout_seconds=3600)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:  # the API server stopped under the watch at the end of the run
            return

    def _follow(self) -> None:
        for event in self._stream():
            name = event["object"]["metadata"]["name"]
            self.events += 1
            if event["type"] == "ADDED":
                self.added.setdefault(name, time.perf_counter())
            elif event["type"] == "DELETED":
                self.deleted[name] = time.perf_counter()

    def stop(self) -> None:
        self._watch.stop()


def say(*parts: object) -> None:
    print(*parts, flush=True)


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"p50 {pct(ordered, 0.5) * 1000:.0f} ms, p99 {pct(ordered, 0.99) * 1000:.0f} ms" if ordered else "-"


async def nodes_join(args: argparse.Namespace, admin: SimAdmin, kube_admin: KubeAdmin, bus: Bus,
                     nrs: Watcher) -> None:
    instances = [await admin.create_instance(name=f"node-{i}", cpus=8, memory_mib=32768)
                 for i in range(1, args.nodes + 1)]
    registered: dict[str, float] = {}

    def on_record(key: str, item: Any) -> None:
        if item is not None:
            registered.setdefault(key, time.perf_counter())

    records = KvCache(Store(await bus.bucket(NODES), NODES.record, NODES.name), on_record)
    await records.start()
    created: dict[str, float] = {}
    labels = {"topology.kubernetes.io/zone": "zoneA", "node.kubernetes.io/instance-type": "BCC"}

    def create(inst: dict[str, Any]) -> None:
        created[inst["name"]] = time.perf_counter()
        kube_admin.create_node(inst["name"], f"cce://{inst['id']}", labels=labels)

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, create, i) for i in instances))
    made = time.perf_counter() - started
    names = [i["name"] for i in instances]
    while not all(n in registered and n in nrs.added for n in names):
        await asyncio.sleep(0.2)
    await records.stop()
    reg = [registered[n] - created[n] for n in names]
    shown = [nrs.added[n] - created[n] for n in names]
    last = max(nrs.added[n] for n in names) - started
    say(f"\n{args.nodes} Node objects created in {made:.1f} s (16 threads)")
    say(f"  Node object -> registered on the bus: {ms(reg)}")
    say(f"  Node object -> nrs resource written:  {ms(shown)}")
    say(f"  first Node created -> last nrs written: {last:.1f} s")


async def pod_churn(args: argparse.Namespace, plane: Plane, kube_admin: KubeAdmin, bus: Bus, ceps: Watcher,
                    leader: str) -> None:
    nodes = [f"node-{i}" for i in range(1, min(args.pod_nodes, args.nodes) + 1)]
    pods = [(nodes[i % len(nodes)], f"p{i}") for i in range(args.pods)]
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(args.concurrency)
    failures: list[str] = []

    async def add(node: str, name: str) -> None:
        uid = await loop.run_in_executor(pool, kube_admin.create_pod, "bench", name, node)
        try:
            await call(bus, IPAM_ALLOCATE, AllocateRequest(node=node, container_id=name, pod=PodRef(
                namespace="bench", name=name, uid=uid), wait_s=60), timeout=70)
            await call(bus, IPAM_CONFIRM, ConfirmRequest(node=node, container_id=name, host_veth="veth"), timeout=10)
        except CceError as err:
            failures.append(err.reason.value)

    async def delete(node: str, name: str) -> None:
        await call(bus, IPAM_RELEASE, ReleaseRequest(node=node, container_id=name), timeout=10)
        await loop.run_in_executor(pool, kube_admin.delete_pod, "bench", name)

    async def drive(what: str, op: Any) -> float:
        queue = list(reversed(pods))
        started = time.perf_counter()
        done = [0]

        async def worker() -> None:
            while queue:
                await op(*queue.pop())
                done[0] += 1

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                say(f"  ... {what}: {done[0]}/{len(pods)}", flush=True)

        tick = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        finally:
            tick.cancel()
        return time.perf_counter() - started

    kube_admin.ensure_namespace("bench")
    cpu0, writes0, t0 = plane.cpu_s(leader), plane.writes(leader), time.perf_counter()
    adds = await drive("ADD", add)
    dels = await drive("DEL", delete)
    while any(n not in ceps.deleted or ceps.deleted[n] < ceps.added[n] for n in ceps.added):
        await asyncio.sleep(0.2)
    settled = time.perf_counter() - t0
    cpu, writes = plane.cpu_s(leader) - cpu0, plane.writes(leader) - writes0
    pool.shutdown()
    say(f"\n{len(pods)} pods over {len(nodes)} nodes, {args.concurrency} at a time"
          f"{f' ({len(failures)} ADDs failed: {sorted(set(failures))})' if failures else ''}")
    say(f"  ADD (Pod object + allocate + confirm) {adds:.1f} s, {len(pods) / adds:.0f}/s; "
          f"DEL (release + Pod object deleted) {dels:.1f} s, {len(pods) / dels:.0f}/s")
    say(f"  last cep gone {settled:.1f} s after the first ADD; cep resources seen: {len(ceps.added)} "
          f"(watch events: {ceps.events})")
    say(f"  bridge leader ({leader}): {writes} Kubernetes writes, {writes / settled:.0f} writes/s; "
          f"CPU {cpu:.1f} s ({cpu / settled * 100:.0f}% of one core)")


async def bench(args: argparse.Namespace, tmp: Path, nats_url: str, kube: LocalKube) -> None:
    sim = await SimServer(SimSettings(port=0, state_file=None, fabric="off", attach_delay_s=0.05,
                                      detach_delay_s=0.05)).start()
    admin = SimAdmin(sim.url)
    await admin.create_subnet(zone="zoneA", cidr="10.1.0.0/16", name="bench-1")
    plane = Plane(nats_url, sim, kube, tmp, args.cloud_limits == "wide")
    kube_admin = KubeAdmin(kube.kubeconfig, pool_size=max(16, args.concurrency))
    nrs, ceps = Watcher(kube, NRS.plural), Watcher(kube, CEP.plural)
    bus = await Bus.connect(ChassisSettings(nats_url=nats_url), name="bench-kube")
    try:
        plane.start()
        await plane.wait_started()
        leases = Store(await bus.bucket(LEASES), LEASES.record, LEASES.name)
        while (lease := await leases.get("k8s_bridge")) is None:
            await asyncio.sleep(0.1)
        leader = lease.value.holder
        say(f"nats {nats_url}; vpc_sim {sim.url}; API server {kube.url}; logs in {tmp}; bridge leader {leader}; "
              f"cloud limits {args.cloud_limits}")
        await nodes_join(args, admin, kube_admin, bus, nrs)
        if args.pods:
            await pod_churn(args, plane, kube_admin, bus, ceps, leader)
    finally:
        nrs.stop()
        ceps.stop()
        await bus.close()
        plane.stop()
        kube_admin.close()
        await admin.close()
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--pod-nodes", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cloud-limits", choices=("wide", "default"), default="wide")
    args = parser.parse_args()
    missing = missing_parts()
    if missing:
        sys.exit("needs a local API server: " + "; ".join(missing))
    configure_logging("warning", json_output=False)
    with tempfile.TemporaryDirectory(prefix="cce-bench-kube-") as tmp_name:
        tmp = Path(tmp_name)
        kube = LocalKube(tmp / "kube", service_users=(BRIDGE_USER,)).start()
        try:
            apply_manifests(kube.kubeconfig, [*(crd(k) for k in KINDS), bridge_cluster_role(), bridge_binding()])
            with EmbeddedNats(tmp / "nats") as nats:
                asyncio.run(bench(args, tmp, nats.url, kube))
        finally:
            kube.stop()


if __name__ == "__main__":
    main()
