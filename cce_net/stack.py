"""Run the topology as local processes: nats-server (embedded unless NATS_URL is given) and every service,
one log file each, supervised (a crashed service is restarted with back-off) and stopped in order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cce_net.kubelocal import LocalKube
from cce_net.natsauth import BusAccess, BusSecurity
from cce_net.topology import SERVICES, SIM_SERVICE, ServiceDef, resolve_env
from chassis.config import ChassisSettings
from chassis.embedded_nats import EmbeddedNats, NatsCluster, free_port
from chassis.procs import parent_death_signal
from schemas.permissions import ADMIN_IDENTITY, CONTROL_PLANE, Identity, node_identity, service_identity

STATE_FILE = "stack.json"
DEFAULT_NATS_PORT = 4222


@dataclass
class Proc:
    service: ServiceDef
    replica: int
    http_port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = 1.0
    node: str = ""  # per-node services: the node they serve
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.service.name}-{self.node or self.replica}"

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class LocalStack:
    state_dir: Path
    nodes: int = 0
    mode: str = "vpc-eni"
    nats_url: str | None = None
    python: str = sys.executable
    say: Callable[[str], None] = print
    procs: list[Proc] = field(default_factory=list)
    nats: EmbeddedNats | None = None
    node_info: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> its dirs, socket, namespace
    node_services_off: str = ""  # why simulated nodes run without their node services (empty: they run)
    pool: dict[str, Any] | None = None  # PoolSettings fields the simulated nodes register with
    max_enis: int | None = field(default_factory=lambda: env_max_enis())  # ENI quota of the simulated nodes
    kube: bool = False  # a local Kubernetes API server; nodes come from Node objects through k8s_bridge
    kube_server: LocalKube | None = None
    insecure: bool = False  # the embedded NATS without identities and TLS (debugging only)
    creds_dir: Path | None = None  # with NATS_URL: the `<identity>.creds` files its operator issued
    nats_ca: Path | None = None  # with NATS_URL: the CA of its server certificate
    access: BusAccess | None = None
    sim_token: str = ""  # the simulator's admin token (its admin API shows the cloud's keys): the admin's only
    nats_cluster: int = 1  # embedded nats-servers: more than one runs a cluster with streams and buckets on 3
    cluster: NatsCluster | None = None

    @property
    def url(self) -> str:
        assert self.access is not None, "start() first"
        return self.access.url

    def plan(self) -> list[Proc]:
        logs = self.state_dir / "logs"
        return [
            Proc(svc, i + 1, port, logs / f"{svc.name}-{i + 1}.log")
            for (svc, i), port in zip(self._instances(), _distinct_free_ports(len(self._instances())), strict=True)
        ]

    def _instances(self) -> list[tuple[ServiceDef, int]]:
        return [(svc, i) for svc in SERVICES if not svc.per_node and (self.kube or not svc.kube)
                for i in range(svc.replicas)]

    @property
    def sim_url(self) -> str:
        sim = next((p for p in self.procs if p.service.name == SIM_SERVICE), None)
        return f"http://127.0.0.1:{sim.http_port}" if sim else ""

    def _env(self, proc: Proc) -> dict[str, str]:
        assert self.access is not None
        env = {
            **os.environ,
            **self.access.env(identity_of(proc.service, proc.node)),
            "CCE_HTTP_HOST": "127.0.0.1",
            "CCE_HTTP_PORT": str(proc.http_port),
            "CCE_SERVICE_ID": proc.id,
            "CCE_LOG_JSON": "true",
            "PYTHONUNBUFFERED": "1",
            **resolve_env(proc.service.env, self.sim_url),
            **proc.extra_env,
        }
        if proc.service.name == SIM_SERVICE:
            env.setdefault("CCE_SIM_STATE_FILE", str(self.state_dir / "vpc_sim.json"))
            env["CCE_SIM_FABRIC_PREFIX"] = self.fabric_prefix
            if self.sim_token:
                env["CCE_SIM_ADMIN_TOKEN_FILE"] = str(self.sim_token_file)
        if self.kube_server is not None:
            env.update(kube_env(self.kube_server, proc.service, self.pool))
        return env

    @property
    def sim_token_file(self) -> Path:
        return self.state_dir / "sim-admin.token"

    @property
    def fabric_prefix(self) -> str:
        """Namespaces of the simulator's fabric are named `<prefix>-...`; one prefix per stack."""
        return os.environ.get("CCE_SIM_FABRIC_PREFIX", "cce-sim")

    def _spawn(self, proc: Proc) -> None:
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        with open(proc.log, "ab") as log:
            proc.popen = subprocess.Popen(
                [self.python, "-m", proc.service.module], env=self._env(proc), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=parent_death_signal,
            )
        proc.started_at = time.monotonic()

    def start(self, timeout: float = 30.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.access = self._start_bus() if not self.nats_url else BusAccess(self.nats_url, self.creds_dir,
                                                                             self.nats_ca)
        bootstrap_bus(self.access)
        if not self.insecure:
            self.sim_token = sim_admin_token(self.sim_token_file)
        if self.kube:
            self.kube_server = start_kube(self.state_dir / "kube")
        self.procs = self.plan()
        for proc in self.procs:
            self._spawn(proc)
        self.write_state(ready=False)
        self._wait_healthy(timeout)
        if self.sim_url:
            instances = ensure_sim_nodes(self.sim_url, self.nodes, self.mode, self.max_enis, self.sim_token)
            if self.kube_server is not None:  # as a cluster's nodes join: their Node objects, which the bridge reads
                create_node_objects(self.kube_server.kubeconfig, instances, self.mode, self.max_enis)
                wait_registered(self.access.settings(), [inst["name"] for inst in instances], timeout)
            else:
                register_nodes(self.access.settings(), instances, self.mode, timeout, self.pool, self.max_enis)
            self._start_node_services(instances, timeout)
        self.write_state(ready=True)

    def _start_bus(self) -> BusAccess:
        """The embedded nats-server (or `nats_cluster` of them, routed, every stream and bucket replicated on
        three): with an identity per service and per node and TLS (`bus/` in the state dir), or, `insecure`, open to
        anyone on loopback."""
        port = DEFAULT_NATS_PORT if _port_free(DEFAULT_NATS_PORT) else 0
        log = self.state_dir / "logs" / "nats-server.log"
        replicas = min(self.nats_cluster, 3)
        security: BusSecurity | None = None
        config = None
        if self.insecure:
            self.say("WARNING: the bus runs WITHOUT authentication or TLS (--insecure): any local process can act "
                     "for any node")
        else:
            security = BusSecurity(self.state_dir / "bus")
            security.ensure([f"node-{i}" for i in range(1, self.nodes + 1)])
            sec = security

            def config(host: str, bound: int, store: Path) -> str:
                return sec.server_config(host=host, port=bound, store_dir=store, name=f"cce-{bound}")

        if self.nats_cluster > 1:
            self.cluster = NatsCluster(self.state_dir / "nats", self.nats_cluster, log_dir=log.parent, base=config,
                                       tls=security is not None).start()
            url = self.cluster.url
        else:
            self.nats = EmbeddedNats(self.state_dir / "nats", port=port, log_file=log, config=config,
                                     tls=security is not None).start()
            url = self.nats.url
        if security is None:
            return BusAccess(url, replicas=replicas)
        return BusAccess(url, security.dir, security.ca_file, replicas=replicas)

    def _start_node_services(self, instances: list[dict[str, Any]], timeout: float) -> None:
        """node_datapath and cni_gateway for every simulated node, each aimed at the node's namespace in the
        simulator's fabric (which needs root); their CNI plugin and conflist go under the node's directory."""
        from services.vpc_sim.admin import SimAdminSync

        fabric = SimAdminSync(self.sim_url, token=self.sim_token).info().get("fabric", {})
        if not fabric.get("enabled"):
            self.node_services_off = f"the simulator has no network fabric ({fabric.get('reason', 'unknown')})"
            self.say(f"simulated nodes run without node services: {self.node_services_off}")
            return
        node_procs = []
        ports = iter(_distinct_free_ports(len(instances) * 2, avoid={p.http_port for p in self.procs}))
        for inst in instances:
            node = inst["name"]
            info = node_layout(self.state_dir, node, f"{self.fabric_prefix}-{inst['id']}")
            info["instance_id"] = inst["id"]
            self.node_info[node] = info
            wait_netns(info["netns"], timeout)
            env = {
                "CCE_NODE": node,
                "CCE_DATAPATH_NETNS": info["netns"],
                "CCE_CNI_SOCKET": info["socket"],
                "CCE_CNI_BIN_DIR": info["bin_dir"],
                "CCE_CNI_CONF_DIR": info["conf_dir"],
                "CCE_CNI_STATE_DIR": info["state_dir"],
                **({"CCE_POD_INFO_WAIT_S": "2"} if self.kube_server is not None else {}),
            }
            for svc in (s for s in SERVICES if s.per_node):
                proc = Proc(svc, 1, next(ports), self.state_dir / "logs" / f"{svc.name}-{node}.log", node=node,
                            extra_env=env)
                node_procs.append(proc)
        self.procs.extend(node_procs)
        for proc in node_procs:
            self._spawn(proc)
        self.write_state(ready=False)
        self._wait_healthy(timeout, node_procs)

    def _wait_healthy(self, timeout: float, procs: list[Proc] | None = None) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.procs if procs is None else procs)
        while waiting:
            # alive first: a process that lost its port must not pass on another's health
            waiting = [p for p in waiting if not (p.alive and _healthy(p.http_port))]
            dead = [p for p in waiting if not p.alive]
            if dead:
                raise StackError(f"{dead[0].id} exited during start-up; see {dead[0].log}")
            if time.monotonic() > deadline:
                raise StackError(f"not healthy within {timeout}s: {', '.join(p.id for p in waiting)}")
            time.sleep(0.1)

    def supervise_once(self) -> None:
        """Restart services that died, with exponential back-off (reset after a minute of good health)."""
        now = time.monotonic()
        for proc in self.procs:
            if proc.alive:
                if now - proc.started_at > 60:
                    proc.backoff = 1.0
                continue
            if proc.next_start == 0.0:
                rc = proc.popen.returncode if proc.popen else None
                proc.next_start = now + proc.backoff
                self.say(f"{proc.id} exited (rc={rc}); restarting in {proc.backoff:.0f}s, log: {proc.log}")
                proc.backoff = min(proc.backoff * 2, 30.0)
            elif now >= proc.next_start:
                proc.next_start = 0.0
                proc.restarts += 1
                self._spawn(proc)
                self.write_state(ready=True)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every service (they finish in-flight work), SIGKILL stragglers, then stop NATS."""
        for proc in reversed(self.procs):
            if proc.alive and proc.popen:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{proc.id} did not stop within {grace}s; killing it")
                proc.popen.kill()
                proc.popen.wait()
        if self.nats is not None:
            self.nats.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.kube_server is not None:
            self.kube_server.stop()
        state = self.state_dir / STATE_FILE
        state.unlink(missing_ok=True)

    def write_state(self, ready: bool) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "ready": ready,
            "nats_url": self.url,
            "bus": self.access.to_state() if self.access else None,
            "nats_pid": self.nats.pid if self.nats else None,
            "nats_pids": self.cluster.pids if self.cluster else ([self.nats.pid] if self.nats else []),
            "nodes": self.nodes,
            "mode": self.mode,
            "pool": self.pool,
            "max_enis": self.max_enis,
            "sim_url": self.sim_url,
            "sim_admin_token_file": str(self.sim_token_file) if self.sim_token else None,
            "fabric_prefix": self.fabric_prefix,
            "node_services_off": self.node_services_off,
            "node_info": self.node_info,
            "kube": kube_state(self.kube_server) if self.kube_server is not None else None,
            "services": [
                {"id": p.id, "service": p.service.name, "module": p.service.module, "node": p.node,
                 "pid": p.popen.pid if p.popen else None, "http": f"http://127.0.0.1:{p.http_port}",
                 "log": str(p.log), "restarts": p.restarts}
                for p in self.procs
            ],
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)


class StackError(RuntimeError):
    pass


# Simulated nodes: 8 CPUs / 32 GiB BCC instances (8 ENIs of 16 IPs); BBC (40 primary-NIC IPs) for the primary-NIC
# mode; BCC for the exclusive-ENI mode (a pod per ENI: 8, or CCE_NET_NODE_MAX_ENIS).
NODE_CPUS = 8
NODE_MEMORY_MIB = 32768
MAX_ENIS_ENV = "CCE_NET_NODE_MAX_ENIS"  # e.g. 3: simulated instances with an ENI quota of 3, registered so


def env_max_enis() -> int | None:
    """The ENI quota simulated nodes get from the environment (CCE_NET_NODE_MAX_ENIS), if set."""
    raw = os.environ.get(MAX_ENIS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 64:
        raise StackError(f"{MAX_ENIS_ENV} must be a number of ENIs in 0..64, got {raw!r}")
    return int(raw)


def instance_kind(mode: str) -> str:
    """BBC for vpc-eni-primary (its primary NIC carries the pods); BCC (with ENIs) for the other modes."""
    return "BBC" if mode == "vpc-eni-primary" else "BCC"


def ensure_sim_nodes(sim_url: str, nodes: int, mode: str, max_enis: int | None = None,
                     token: str = "") -> list[dict[str, Any]]:
    """Create the simulated instances `node-1` .. `node-N` that do not exist yet; returns them (BCE JSON).
    `max_enis`: the instances' ENI quota in the simulator (else its default, min(CPUs, 8); 0 on BBC); `token`: the
    simulator's admin token."""
    from services.vpc_sim.admin import SimAdminSync

    admin = SimAdminSync(sim_url, token=token)
    by_name = {inst.get("name"): inst for inst in admin.info().get("instances", [])}
    kind = instance_kind(mode)
    quota = max_enis if kind != "BBC" else None
    wanted = []
    for name in (f"node-{i}" for i in range(1, nodes + 1)):
        if name not in by_name:
            by_name[name] = admin.create_instance(name=name, instance_type=kind, cpus=NODE_CPUS,
                                                  memory_mib=NODE_MEMORY_MIB, eni_quota=quota)
        wanted.append(by_name[name])
    return wanted


def sim_admin_token(path: Path) -> str:
    """The simulator's admin token, made once (mode 0600) and kept with the stack's state."""
    import secrets

    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(24))
    return path.read_text().strip()


def identity_of(service: ServiceDef, node: str) -> Identity:
    """The bus identity a process of the stack runs with: its node's for node services, else its service's (the
    simulator has no bus connection: it gets the admin's name, and no use for it)."""
    if service.per_node:
        return node_identity(node)
    return service_identity(service.name) if service.name in CONTROL_PLANE else ADMIN_IDENTITY


def bootstrap_bus(access: BusAccess) -> None:
    """As the admin: every stream and bucket of the contract, before any service starts."""
    import asyncio

    from chassis.bus import Bus

    async def run() -> None:
        bus = await Bus.connect(access.settings(), name="cce-net-bootstrap")
        try:
            await bus.ensure_contract()
        finally:
            await bus.close()

    asyncio.run(run())


def register_nodes(settings: ChassisSettings, instances: list[dict[str, Any]], mode: str, timeout: float,
                   pool: dict[str, Any] | None = None, max_enis: int | None = None) -> None:
    """Register each simulated instance as a node with ipam, as a node's agent does when it starts."""
    import asyncio

    from chassis.bus import Bus
    from chassis.rpc import call
    from schemas.errors import CceError
    from schemas.messages import NodeRegisterRequest
    from schemas.records import PoolSettings
    from schemas.subjects import NODE_REGISTER

    pool_settings = PoolSettings.model_validate(pool) if pool else None

    async def register_all() -> None:
        bus = await Bus.connect(settings, name="cce-net-up")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            for inst in instances:
                req = NodeRegisterRequest(
                    node=inst["name"], instance_id=inst["id"], instance_type=inst["instanceType"],
                    zone=inst["zoneName"], cpus=inst["cpuCount"], memory_mib=int(inst["memoryCapacityInGB"]) * 1024,
                    mode=mode, primary_ip=inst["internalIp"], primary_mac=inst["nicInfo"]["macAddress"],
                    pool=pool_settings, max_enis=max_enis if inst["instanceType"] != "BBC" else None,
                )
                while True:
                    try:
                        await call(bus, NODE_REGISTER, req, timeout=5)
                        break
                    except CceError as err:
                        if not err.retryable or loop.time() > deadline:
                            raise StackError(f"registering {req.node} failed: {err}") from None
                        await asyncio.sleep(0.2)
        finally:
            await bus.close()

    asyncio.run(register_all())


# ---- with a local Kubernetes API server (`cce-net up --kube`) ---------------------------------------------------


def start_kube(state_dir: Path) -> LocalKube:
    """etcd + kube-apiserver, with the CRDs and the bridge's ClusterRole applied (as a chart would install them)."""
    from cce_net.kubelocal import apply_manifests
    from services.k8s_bridge.manifests import BRIDGE_USER, objects

    server = LocalKube(state_dir, service_users=(BRIDGE_USER,))
    try:
        server.start()
        apply_manifests(server.kubeconfig, objects())
    except Exception:
        server.stop()
        raise
    return server


def kube_env(server: LocalKube, service: ServiceDef, pool: dict[str, Any] | None) -> dict[str, str]:
    """k8s_bridge runs as its own least-privilege user; `--pool` is the cluster's default there."""
    if not service.kube:
        return {}
    from services.k8s_bridge.manifests import BRIDGE_USER

    env = {"CCE_KUBECONFIG": str(server.kubeconfig_for(BRIDGE_USER)), "CCE_NODE_GONE_GRACE_S": "10",
           "CCE_POD_GONE_GRACE_S": "10"}
    if pool:
        env["CCE_DEFAULT_POOL"] = json.dumps(pool)
    return env


def kube_state(server: LocalKube) -> dict[str, Any]:
    return {"url": server.url, "kubeconfig": str(server.kubeconfig), "kubectl": str(server.kubectl),
            "apiserver_pid": server.pids()["kube-apiserver"], "etcd_pid": server.pids()["etcd"],
            "etcd_data": str(server.etcd_data) if server.etcd_data else None}


def create_node_objects(kubeconfig: Path, instances: list[dict[str, Any]], mode: str, max_enis: int | None) -> None:
    """A Node object per simulated instance, as its kubelet registers it: providerID, zone, kind, capacity."""
    from cce_net.kubelocal import KubeAdmin

    admin = KubeAdmin(kubeconfig)
    try:
        for inst in instances:
            with_quota = max_enis is not None and inst["instanceType"] != "BBC"
            labels = {"topology.kubernetes.io/zone": inst["zoneName"], "cce.io/network-mode": mode,
                      "node.kubernetes.io/instance-type": inst["instanceType"]}
            admin.create_node(inst["name"], f"cce://{inst['id']}", labels=labels,
                              annotations={"cce.io/max-enis": str(max_enis)} if with_quota else {},
                              cpu=str(inst["cpuCount"]), memory=f"{int(inst['memoryCapacityInGB'])}Gi")
    finally:
        admin.close()


def wait_registered(settings: ChassisSettings, nodes: list[str], timeout: float) -> None:
    """Until k8s_bridge has registered every node on the bus."""
    import asyncio

    from chassis.bus import Bus
    from chassis.kv import Store
    from schemas.base import subject_token
    from schemas.subjects import NODES

    async def wait() -> None:
        bus = await Bus.connect(settings, name="cce-net-up")
        try:
            store = Store(await bus.bucket(NODES), NODES.record, NODES.name)
            deadline = asyncio.get_running_loop().time() + timeout
            for node in nodes:
                while await store.get(subject_token(node)) is None:
                    if asyncio.get_running_loop().time() > deadline:
                        raise StackError(f"k8s_bridge did not register {node} within {timeout}s (see its log)")
                    await asyncio.sleep(0.1)
        finally:
            await bus.close()

    asyncio.run(wait())


def _distinct_free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    """`count` different free ports (a port just released can be handed out again by the kernel)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in (avoid or set()):
            ports.append(port)
    return ports


def node_layout(state_dir: Path, node: str, netns: str) -> dict[str, str]:
    """Where a simulated node keeps its CNI plugin, conflist, socket and gateway journal."""
    base = state_dir / "nodes" / node
    return {"netns": netns, "bin_dir": str(base / "bin"), "conf_dir": str(base / "conf"),
            "socket": str(base / "cni.sock"), "state_dir": str(base / "state")}


# Debian's containernetworking-plugins; chained after ours when CCE_CNI_CHAIN names them (e.g. portmap,bandwidth)
REFERENCE_PLUGINS = Path("/usr/lib/cni")


def wait_netns(name: str, timeout: float) -> None:
    """The simulator builds an instance's namespace right after creating it; wait for its mount point."""
    path = Path("/run/netns") / name
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise StackError(f"the simulator did not build namespace {name} within {timeout}s")
        time.sleep(0.05)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def client_settings(nats_url: str | None, state_dir: Path) -> ChassisSettings:
    """How a tool reaches the bus: the local stack's, as its admin (credentials and CA from its state), unless a
    NATS URL is given; then CCE_NATS_CREDS / CCE_NATS_TLS_CA from the environment, as for any client."""
    state = read_state(state_dir) or {}
    access = BusAccess.from_state(state)
    if access is not None and (not nats_url or nats_url == access.url):
        return access.settings()
    return ChassisSettings(nats_url=nats_url or str(state.get("nats_url") or f"nats://127.0.0.1:{DEFAULT_NATS_PORT}"))


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def down(state_dir: Path, grace: float = 20.0, say: Callable[[str], None] = print) -> bool:
    """Stop a running stack: ask its supervisor, then make sure none of its recorded processes is left."""
    state = read_state(state_dir)
    if state is None:
        say(f"no stack is recorded in {state_dir}")
        return False
    sup = int(state.get("supervisor_pid") or 0)
    if pid_alive(sup) and any(w in _cmdline(sup) for w in ("cce_net", "cce-net")):
        os.kill(sup, signal.SIGTERM)
        _wait_gone([sup], grace)
    leftovers = [s["pid"] for s in state.get("services", []) if pid_alive(s.get("pid"))
                 and s["module"] in _cmdline(s["pid"])]
    for nats_pid in state.get("nats_pids") or [state.get("nats_pid")]:
        if pid_alive(nats_pid) and "nats-server" in _cmdline(nats_pid):
            leftovers.append(nats_pid)
    kube: dict[str, Any] = state.get("kube") or {}
    for key, word in (("apiserver_pid", "kube-apiserver"), ("etcd_pid", "etcd")):
        pid = int(kube.get(key) or 0)
        if pid_alive(pid) and word in _cmdline(pid):
            leftovers.append(pid)
    for pid in leftovers:
        os.kill(pid, signal.SIGTERM)
    for pid in _wait_gone(leftovers, 10.0):
        say(f"pid {pid} ignored SIGTERM; killing it")
        os.kill(pid, signal.SIGKILL)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    if kube.get("etcd_data"):
        shutil.rmtree(kube["etcd_data"], ignore_errors=True)
    if os.geteuid() == 0:
        from cce_net.pods import remove_all

        for pod in remove_all(state_dir):
            say(f"removed pod {pod}")
    if state.get("fabric_prefix"):
        _teardown_fabric(state["fabric_prefix"], say)
    return True


def _teardown_fabric(prefix: str, say: Callable[[str], None]) -> None:
    """The simulator removes its namespaces when it stops; this also covers a simulator that was killed."""
    if os.geteuid() != 0:
        return
    import asyncio

    from services.vpc_sim.fabric import Fabric

    try:
        asyncio.run(Fabric(prefix=prefix).teardown())
    except Exception as err:
        say(f"could not remove the simulator's namespaces: {err!r}")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            return []
        time.sleep(0.1)
    return pids
