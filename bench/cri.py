"""Benchmark (root): pod sandbox start and stop through containerd's CRI, the path a kubelet takes, for our CNI plugin
on a simulated node of the local stack and for the reference `bridge` + `host-local` chain, on one containerd, one run.

containerd is Debian's (1.6.x; apt-get installs it, runc and containernetworking-plugins when missing), run privately
by the benchmark: its own root, state dir, gRPC socket, config and CNI bin dir, started and stopped here; the host's
containerd and docker (and compose/engine.sh's engine) are left alone. It runs in the node's network namespace
(`nsenter --net=`), as that node's runtime, so both chains program the same "host". Two runtime handlers pick the
chain per sandbox (containerd's per-runtime `cni_conf_dir`):
- `cce`: the conflist the node's cni_gateway installed and the plugin it installed (native when `make cni-plugin` has
  built it, else Python), with `--chain` given to the node as CCE_CNI_CHAIN (default portmap, as a Kubernetes node
  usually chains it) and CCE_CNI_VERSION=1.0.0 (containerd 1.6 takes CNI configurations up to 1.0.0; the chart's
  default);
- `ref`: bridge (isGateway, no masquerade) + host-local on 10.213.0.0/16, followed by the same chained plugins.
containerd adds `loopback` to both, as always. No registry is reachable, so tools/build-cri.sh (Go, cached under
~/.cache/cce-network/) builds a static pause program and a one-layer image of it, imported with `ctr images import`
into the k8s.io namespace as the config's sandbox_image, and `cri-call`, a CRI client (k8s.io/cri-api, runtime v1 over
gRPC) that times each RPC around the call itself: no client process start is in any figure.

Sequence: `--warmup` sandboxes per chain (run, stop, remove; not counted); our node's pool warm with as many free IPs
as there are sandboxes (a production node keeps a warm pool), cooldown 0; then `--sandboxes` RunPodSandbox per chain,
one at a time, the chains alternating (ours first on even sandboxes, the reference first on odd ones) so drift on a
noisy machine hits both alike, each checked by PodSandboxStatus (ready, with an IP of its chain) and by the node's
route to that IP (ours: a veth our datapath made; the reference: its bridge); then StopPodSandbox +
RemovePodSandbox of each, alternating the same way (their sum is one figure). Figures are printed, never asserted.

Run:  make bench-cri [CRI_ARGS='--sandboxes 30']
      .venv/bin/python bench/cri.py [--sandboxes 30] [--warmup 2] [--chain portmap] [--mode vpc-eni|vpc-route|...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _table import pct  # bench/ comes first on sys.path when run as a script

from cce_net.stack import REFERENCE_PLUGINS, LocalStack
from chassis.procs import parent_death_signal
from cni import MAX_PODS, wait_pool, wait_ready  # bench/cni.py: importing it drops bench/ from sys.path
from services.cni_gateway.install import CHAINABLE, CHAINED_CONF_VERSION, CONFLIST_NAME, NATIVE_BUILD, PLUGIN_NAME

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build-cri.sh"
PAUSE_IMAGE = "cce.local/pause:bench"
REF_SUBNET = ipaddress.ip_network("10.213.0.0/16")
REF_BRIDGE = "cce-ref0"
CGROUP_PARENT = "/cce-bench-cri"
OURS, REF = "cce", "ref"  # runtime handlers, and the chains' names in the table
MODES = ("vpc-eni", "vpc-route", "vpc-eni-primary")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_packages() -> None:
    """Debian's containerd, runc and reference CNI plugins, installed as a node's image would have them."""
    missing = [pkg for pkg in ("containerd", "runc") if shutil.which(pkg) is None]
    if not (REFERENCE_PLUGINS / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        say(f"installing {' '.join(missing)} from Debian")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env, check=True,
                       stdout=subprocess.DEVNULL)


def build_tools() -> Path:
    """pause, its image and cri-call (tools/build-cri.sh: cached after the first build)."""
    env = {**os.environ, "PAUSE_IMAGE": PAUSE_IMAGE}
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go:
        env["PATH"] = f"{Path(go).parent}:{env.get('PATH', '')}"
    t0 = time.monotonic()
    out = subprocess.run([str(BUILD_SCRIPT)], env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    if time.monotonic() - t0 > 5:
        say(f"built pause, its image and cri-call in {time.monotonic() - t0:.0f} s")
    return Path(out.strip().splitlines()[-1])


def reference_conflist(data_dir: Path, chain: list[str]) -> dict[str, Any]:
    bridge = {"type": "bridge", "bridge": REF_BRIDGE, "isGateway": True, "ipMasq": False,
              "ipam": {"type": "host-local", "ranges": [[{"subnet": str(REF_SUBNET)}]],
                       "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)}}
    return {"cniVersion": CHAINED_CONF_VERSION, "name": "bench-ref",
            "plugins": [bridge, *(CHAINABLE[name] for name in chain)]}


def containerd_config(base: Path, conf_dirs: dict[str, Path]) -> str:
    """containerd 1.6 (config version 2): everything under `base`, the CRI plugin with one runtime handler per chain;
    the first handler's conf dir is also the default network (the one CRI's Status reports)."""
    q = json.dumps  # a TOML basic string is a JSON string
    runtimes = "".join(f"""
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
  runtime_type = "io.containerd.runc.v2"
  cni_conf_dir = {q(str(conf))}
""" for name, conf in conf_dirs.items())
    return f"""version = 2
root = {q(str(base / "root"))}
state = {q(str(base / "state"))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = {q(str(base / "state" / "containerd.sock"))}

[plugins."io.containerd.internal.v1.opt"]
  path = {q(str(base / "root" / "opt"))}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {q(PAUSE_IMAGE)}
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = {q(next(iter(conf_dirs)))}
{runtimes}
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {q(str(base / "bin"))}
  conf_dir = {q(str(next(iter(conf_dirs.values()))))}
  max_conf_num = 1
"""


class BenchError(RuntimeError):
    pass


class Cri:
    """cri-call as a child: one JSON request per line in, one reply per line out ("ns": the RPC's duration)."""

    def __init__(self, tool: Path, socket: Path) -> None:
        # its own session: a Ctrl-C stops the benchmark, whose clean-up still needs the client
        self.proc = subprocess.Popen([str(tool), str(socket)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, start_new_session=True, preexec_fn=parent_death_signal)
        self.unread = 0  # replies not read yet: a call interrupted (Ctrl-C) leaves its reply to the next one to skip

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        self.unread += 1
        while self.unread:
            line = self.proc.stdout.readline()
            if not line:
                raise BenchError(f"cri-call exited (rc={self.proc.wait()})")
            self.unread -= 1
        reply: dict[str, Any] = json.loads(line)
        return reply

    def must(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(op, **fields)
        if not reply["ok"]:
            raise BenchError(f"CRI {op} {fields.get('id') or fields.get('name') or ''}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Containerd:
    """A private containerd in the node's network namespace: root, state, socket, config and CNI dirs under `base`."""

    def __init__(self, base: Path, netns: str, conf_dirs: dict[str, Path], plugin: Path) -> None:
        self.base, self.netns, self.conf_dirs, self.plugin = base, netns, conf_dirs, plugin
        self.socket = base / "state" / "containerd.sock"
        self.log = base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, tools: Path, timeout: float = 60) -> Cri:
        bin_dir = self.base / "bin"
        bin_dir.mkdir(parents=True)
        for plugin in REFERENCE_PLUGINS.iterdir():
            (bin_dir / plugin.name).symlink_to(plugin)
        (bin_dir / PLUGIN_NAME).symlink_to(self.plugin)
        config = self.base / "config.toml"
        config.write_text(containerd_config(self.base, self.conf_dirs))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "--", shutil.which("containerd") or "containerd",
                 "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=parent_death_signal)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            self._check_alive(deadline)
            time.sleep(0.05)
        cri = Cri(tools / "cri-call", self.socket)
        while (status := cri.call("status")).get("state") != "ready":
            self._check_alive(deadline, status.get("error", ""))
            time.sleep(0.1)
        subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", "images", "import",
                        str(tools / "pause.tar")], check=True, stdout=subprocess.DEVNULL)
        return cri

    def _check_alive(self, deadline: float, why: str = "") -> None:
        assert self.proc is not None
        if self.proc.poll() is not None or time.monotonic() > deadline:
            tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise BenchError(f"containerd did not become ready ({why or f'rc={self.proc.poll()}'}); "
                             f"its log {self.log} ends:\n{tail}")

    def stop(self, cri: Cri | None) -> None:
        """Remove every sandbox left, stop containerd, then make sure nothing of it stays: its shims and pods (by
        pid), mounts under its dirs, the pods' cgroup parent."""
        if cri is not None and self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(BenchError):
                for sid in cri.call("list").get("ids") or []:
                    cri.call("stopp", id=sid)
                    cri.call("rmp", id=sid)
        if cri is not None:
            cri.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.base}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, stderr=subprocess.DEVNULL)
        for cgroup in sorted(cgroup_dirs(), key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(cgroup)

    def _leftover_pids(self) -> list[int]:
        """Shims serving our socket and every process in our pods' cgroups."""
        pids = set()
        for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                args = Path(cmdline).read_bytes().split(b"\0")
            except OSError:
                continue
            if args[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in args:
                pids.add(int(cmdline.split("/")[2]))
        for procs in glob.glob("/sys/fs/cgroup/pids/cce-bench-cri/*/cgroup.procs"):
            pids.update(int(pid) for pid in Path(procs).read_text().split())
        return sorted(pids)


def cgroup_dirs() -> list[str]:
    """The pods' cgroups and their parent, in every hierarchy (cgroup v1) or the one (v2)."""
    found = []
    for parent in [*glob.glob(f"/sys/fs/cgroup/*{CGROUP_PARENT}"), f"/sys/fs/cgroup{CGROUP_PARENT}"]:
        if os.path.isdir(parent):
            found += [parent, *(d for d in glob.glob(f"{parent}/*") if os.path.isdir(d))]
    return found


def check_sandbox(cri: Cri, sid: str, chain: str, node_netns: str) -> str:
    """Ready, with an IP of its chain, which the node routes to the chain's interface; returns the IP."""
    status = cri.must("inspectp", id=sid)
    ip = status.get("ip") or ""
    if status.get("state") != "SANDBOX_READY" or not ip:
        raise BenchError(f"{chain} sandbox {sid[:12]}: {status.get('state')}, IP {ip!r}")
    route = json.loads(subprocess.run(["ip", "-n", node_netns, "-j", "route", "get", ip], check=True,
                                      stdout=subprocess.PIPE, text=True).stdout)[0]
    dev = route.get("dev", "")
    if chain == REF:
        good = ipaddress.ip_address(ip) in REF_SUBNET and dev == REF_BRIDGE
    else:
        link = json.loads(subprocess.run(["ip", "-n", node_netns, "-j", "-d", "link", "show", "dev", dev],
                                         check=True, stdout=subprocess.PIPE, text=True).stdout)[0]
        good = ipaddress.ip_address(ip) not in REF_SUBNET and link.get("linkinfo", {}).get("info_kind") == "veth"
    if not good:
        raise BenchError(f"{chain} sandbox {sid[:12]} got {ip}, which the node routes to {dev!r}")
    return ip


def run_sandboxes(cri: Cri, count: int, prefix: str, node_netns: str, logs: Path,
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """`count` sandboxes per chain, the chains alternating; then their stop + remove. Seconds per call, by chain."""
    run: dict[str, list[float]] = {OURS: [], REF: []}
    stop: dict[str, list[float]] = {OURS: [], REF: []}
    ids: list[tuple[str, str]] = []
    for i in range(count):
        for chain in (OURS, REF) if i % 2 == 0 else (REF, OURS):
            name = f"{prefix}-{chain}-{i}"
            reply = cri.must("runp", name=name, uid=f"{name}-{os.getpid()}", namespace="bench", handler=chain,
                             log_dir=str(logs / name), cgroup_parent=CGROUP_PARENT, labels={"bench": prefix})
            run[chain].append(reply["ns"] / 1e9)
            check_sandbox(cri, reply["id"], chain, node_netns)
            ids.append((chain, reply["id"]))
    for chain, sid in ids:  # the same alternation, in the order they started
        stop[chain].append((cri.must("stopp", id=sid)["ns"] + cri.must("rmp", id=sid)["ns"]) / 1e9)
    return run, stop


def ms(values: list[float], q: float) -> float:
    return pct(sorted(int(v * 1e9) for v in values), q) / 1e6


def print_table(figures: dict[str, dict[str, list[float]]], labels: dict[str, str]) -> None:
    head = ("operation", "chain", "n", "p50 ms", "p95 ms", "p99 ms", "mean ms", "p50 vs ref")
    rows = []
    for op, by_chain in figures.items():
        for chain, values in by_chain.items():
            ratio = ms(values, .5) / ms(by_chain[REF], .5)
            rows.append((op, labels[chain], str(len(values)), f"{ms(values, .5):.1f}", f"{ms(values, .95):.1f}",
                         f"{ms(values, .99):.1f}", f"{sum(values) / len(values) * 1e3:.1f}", f"x{ratio:.2f}"))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def start_stack(args: argparse.Namespace, base: Path) -> LocalStack:
    """One simulated node with its node services, the pool warm for every sandbox of ours."""
    pods = args.sandboxes + args.warmup
    os.environ["CCE_SIM_FABRIC_PREFIX"] = f"br{os.getpid() % 100000}"
    os.environ["CCE_CNI_CHAIN"] = ",".join(args.chain)
    os.environ["CCE_CNI_VERSION"] = "1.0.0"  # as a node on containerd 1.6/1.7 is set up (the chart's default)
    pool = {"min_allocate": pods + 5, "pre_allocate": pods, "max_above_watermark": 110, "cooldown_s": 0}
    stack = LocalStack(base, nodes=1, mode=args.mode, pool=pool, say=say)
    t0 = time.monotonic()
    stack.start(timeout=90)
    if not stack.node_info:
        raise BenchError(f"the node has no node services: {stack.node_services_off}")
    if args.mode == "vpc-route":
        wait_ready(stack, "node-1", timeout=120)
    else:
        wait_pool(stack, "node-1", pods, timeout=180)
    say(f"stack up and node-1 warm in {time.monotonic() - t0:.1f} s")
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandboxes", type=int, default=30, help="measured sandboxes per chain")
    parser.add_argument("--warmup", type=int, default=2, help="sandboxes per chain run first and not counted")
    parser.add_argument("--mode", choices=MODES, default="vpc-eni", help="network mode of our node")
    parser.add_argument("--chain", type=lambda v: [p.strip() for p in v.split(",") if p.strip()], default=["portmap"],
                        help=f"plugins chained after the main one in both conflists ({', '.join(CHAINABLE)}; "
                             "'' for none)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: containerd, network namespaces")
    if not set(args.chain) <= set(CHAINABLE):
        raise SystemExit(f"--chain: plugins among {', '.join(CHAINABLE)}")
    if args.sandboxes + args.warmup > MAX_PODS[args.mode]:
        raise SystemExit(f"--sandboxes + --warmup: at most {MAX_PODS[args.mode]} pods on a {args.mode} node")
    ensure_packages()
    tools = build_tools()
    tmp = Path(tempfile.mkdtemp(prefix="cce-bench-cri-"))
    stack = containerd = cri = None
    try:
        stack = start_stack(args, tmp / "stack")
        info = stack.node_info["node-1"]
        plugin = Path(info["bin_dir"]) / PLUGIN_NAME
        kind = "native" if plugin.read_bytes()[:4] == b"\x7fELF" else "python"
        if kind != "native":
            say(f"the native plugin is not built ({NATIVE_BUILD}; `make cni-plugin`): the node runs the Python one")
        ref_conf = tmp / "net.d-ref"
        ref_conf.mkdir()
        (ref_conf / "10-ref.conflist").write_text(json.dumps(reference_conflist(tmp / "host-local", args.chain)))
        conf_dirs = {REF: ref_conf, OURS: Path(info["conf_dir"])}
        ours_conf = json.loads((conf_dirs[OURS] / CONFLIST_NAME).read_text())
        containerd = Containerd(tmp / "containerd", info["netns"], conf_dirs, plugin)
        t0 = time.monotonic()
        cri = containerd.start(tools)
        version = cri.must("version")["version"]
        say(f"{version} ready with {PAUSE_IMAGE} imported in {time.monotonic() - t0:.1f} s")
        logs = tmp / "pod-logs"
        if args.warmup:
            run_sandboxes(cri, args.warmup, "warm", info["netns"], logs)
        t0 = time.monotonic()
        run, stop = run_sandboxes(cri, args.sandboxes, "bench", info["netns"], logs)
        chained = "+".join(["", *args.chain]) if args.chain else ""
        labels = {OURS: f"cce ({kind}){chained} [CNI {ours_conf.get('cniVersion')}]",
                  REF: f"bridge+host-local{chained} [CNI {CHAINED_CONF_VERSION}]"}
        runc = subprocess.run(["runc", "--version"], stdout=subprocess.PIPE, text=True).stdout.split("\n")[0]
        print(f"{version}, {runc}, node-1 ({args.mode}); {args.sandboxes} sandboxes per chain, one at a time, chains "
              f"alternating, after {args.warmup} warm-up each; {time.monotonic() - t0:.1f} s; "
              "RPC time measured by the CRI client around each call")
        print_table({"RunPodSandbox": run, "Stop+RemovePodSandbox": stop}, labels)
        ratio = ms(run[OURS], .5) / ms(run[REF], .5)
        print(f"RunPodSandbox p50 ours/reference: x{ratio:.2f} (issue 14 goal: within x1.30)")
        print(json.dumps({f"{op}|{chain}": round(ms(values, .5), 2)
                          for op, by in (("run", run), ("stop+remove", stop)) for chain, values in by.items()}))
    except BenchError as err:
        raise SystemExit(f"bench/cri.py: {err}") from None
    finally:
        if containerd is not None:
            containerd.stop(cri)
        if stack is not None:
            stack.stop()
            from services.vpc_sim.fabric import Fabric  # the simulator removes its namespaces; this is in case

            asyncio.run(Fabric(prefix=stack.fabric_prefix).teardown())
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
