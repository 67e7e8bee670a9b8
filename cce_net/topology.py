"""The one definition of the stack's topology. `cce-net up` runs it as local processes and
`compose/docker-compose.yml` is generated from it (`cce-net compose`), so the two cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "compose" / "docker-compose.yml"
IMAGE = "cce-network:dev"
HTTP_PORT_IN_CONTAINER = 9090


@dataclass(frozen=True)
class ServiceDef:
    name: str
    module: str
    description: str
    replicas: int = 1
    per_node: bool = False
    env: dict[str, str] = field(default_factory=dict)
    kube: bool = False  # needs a Kubernetes API server: runs with `cce-net up --kube` (compose has none)

    @property
    def argv(self) -> list[str]:
        return ["python", "-m", self.module]


# The simulated cloud's credentials (dev and test only; production passes real ones the same way).
SIM_ACCESS_KEY = "cce-sim-ak"
SIM_SECRET_KEY = "cce-sim-sk"
# `{vpc_sim_url}` in an env value is the simulator's address: a local port for `up`, a service name in compose.
CLOUD_ENV = {
    "CCE_CLOUD_ENDPOINT": "{vpc_sim_url}",
    "CCE_CLOUD_ACCESS_KEY": SIM_ACCESS_KEY,
    "CCE_CLOUD_SECRET_KEY": SIM_SECRET_KEY,
}

# In start order. ipam scales out; the managers run a leader and a standby.
SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef("vpc_sim", "services.vpc_sim", "the simulated Baidu VPC (BCE OpenAPI subset)",
               env={"CCE_SIM_ACCESS_KEY": SIM_ACCESS_KEY, "CCE_SIM_SECRET_KEY": SIM_SECRET_KEY}),
    ServiceDef("ipam", "services.ipam", "pod IP allocation from per-node pools", replicas=2),
    ServiceDef("eni_manager", "services.eni_manager", "ENI lifecycle in the cloud (leader + standby)",
               replicas=2, env=CLOUD_ENV),
    ServiceDef("route_manager", "services.route_manager", "node CIDRs and VPC routes (leader + standby)",
               replicas=2, env=CLOUD_ENV),
    ServiceDef("k8s_bridge", "services.k8s_bridge", "Kubernetes objects <-> the network's records (leader + standby)",
               replicas=2, env=CLOUD_ENV, kube=True),
    # One of each per node; on simulated nodes they target the node's namespace in the simulator's fabric.
    ServiceDef("node_datapath", "services.node_datapath", "programs the node: ENI links, pod veths, routes, rules",
               per_node=True),
    ServiceDef("cni_gateway", "services.cni_gateway", "the CNI plugin's unix socket: ADD/DEL/CHECK to the bus",
               per_node=True),
)

SIM_SERVICE = "vpc_sim"


def resolve_env(env: dict[str, str], vpc_sim_url: str) -> dict[str, str]:
    return {k: v.format(vpc_sim_url=vpc_sim_url) for k, v in env.items()}


def compose_name(name: str) -> str:
    return name.replace("_", "-")


# ---- compose ---------------------------------------------------------------------------------------------------
# compose/docker-compose.yml: NATS, the simulator and the control plane, one image (compose/Dockerfile), plus the
# one-shot `nodes` that plays the simulated nodes' agents (no Kubernetes and no node services: no fabric here).
# Published ports are bound to 127.0.0.1 only and can be moved with the variables below (e.g. beside `cce-net up`,
# whose NATS takes 4222). Every process runs as the image's user (uid 10001), NATS included.
COMPOSE_NATS_PORT = "${CCE_COMPOSE_NATS_PORT:-4222}"
COMPOSE_NATS_MONITOR_PORT = "${CCE_COMPOSE_NATS_MONITOR_PORT:-8222}"
COMPOSE_SIM_PORT = "${CCE_COMPOSE_SIM_PORT:-8680}"
COMPOSE_NODES = "${CCE_COMPOSE_NODES:-2}"
COMPOSE_MODE = "${CCE_COMPOSE_MODE:-vpc-eni}"
COMPOSE_USER = "10001:10001"
COMPOSE_SIM_URL = f"http://{compose_name(SIM_SERVICE)}:{HTTP_PORT_IN_CONTAINER}"
COMPOSE_NATS_URL = "nats://nats:4222"
NODES_SERVICE = "nodes"
# Compose's healthcheck is readiness (/readyz): compose uses health to order start-up (depends_on) and for
# `up --wait`, and never restarts a container for being unhealthy (a process that dies is restarted by `restart`).
# /livez is for supervisors that restart on failure (the chart's liveness probes): a NATS outage must not restart
# every replica. The simulator has no bus and one health answer.
READINESS_PATH = "/readyz"
SIM_HEALTH_PATH = "/healthz"


def http_healthcheck(port: int | str, path: str) -> dict[str, Any]:
    """Probe an HTTP endpoint in the container with the standard library only (no curl or wget in the image)."""
    probe = (f"import http.client as h, sys; c = h.HTTPConnection('127.0.0.1', {port}, timeout=2); "
             f"c.request('GET', '{path}'); sys.exit(c.getresponse().status != 200)")
    return {"test": ["CMD", "python3", "-I", "-S", "-c", probe],
            "interval": "3s", "timeout": "3s", "retries": 5, "start_period": "60s"}


def _image(build: bool = False) -> dict[str, Any]:
    """The one image; built by one service only (`nats`, the first to start), so `compose build` builds it once.
    pip inside the build reaches PyPI through the host's network: the engine may have no bridge network."""
    if build:
        return {"image": IMAGE, "build": {"context": "..", "dockerfile": "compose/Dockerfile", "network": "host"}}
    return {"image": IMAGE, "pull_policy": "never"}  # made here (`make image`), never in a registry


def _compose_nats() -> dict[str, Any]:
    return {
        **_image(build=True),
        "command": ["nats-server", "--jetstream", "--store_dir", "/data", "--port", "4222", "--http_port", "8222",
                    "--server_name", "cce-nats"],
        "user": COMPOSE_USER,
        "ports": [f"127.0.0.1:{COMPOSE_NATS_PORT}:4222", f"127.0.0.1:{COMPOSE_NATS_MONITOR_PORT}:8222"],
        "volumes": ["nats-data:/data"],
        "healthcheck": http_healthcheck(8222, "/healthz?js-enabled-only=true"),
        "restart": "unless-stopped",
        "stop_grace_period": "15s",
    }


def _compose_service(svc: ServiceDef) -> dict[str, Any]:
    is_sim = svc.name == SIM_SERVICE
    env = resolve_env(svc.env, COMPOSE_SIM_URL)
    depends: dict[str, Any] = {} if is_sim else {"nats": {"condition": "service_healthy"}}
    if any(COMPOSE_SIM_URL in v for v in env.values()):
        depends[compose_name(SIM_SERVICE)] = {"condition": "service_healthy"}
    spec: dict[str, Any] = {
        **_image(),
        "command": svc.argv,
        "user": COMPOSE_USER,
        "environment": {
            **({} if is_sim else {"CCE_NATS_URL": COMPOSE_NATS_URL}),
            "CCE_HTTP_HOST": "0.0.0.0",
            "CCE_HTTP_PORT": str(HTTP_PORT_IN_CONTAINER),
            **env,
            **({"CCE_SIM_FABRIC": "off", "CCE_SIM_STATE_FILE": "/data/vpc_sim.json"} if is_sim else {}),
        },
    }
    if depends:
        spec["depends_on"] = depends
    spec.update({
        "deploy": {"replicas": svc.replicas},
        "healthcheck": http_healthcheck(HTTP_PORT_IN_CONTAINER, SIM_HEALTH_PATH if is_sim else READINESS_PATH),
        "restart": "unless-stopped",
        "stop_grace_period": "15s",
    })
    if is_sim:
        spec["volumes"] = ["sim-data:/data"]
        spec["ports"] = [f"127.0.0.1:{COMPOSE_SIM_PORT}:{HTTP_PORT_IN_CONTAINER}"]
    return spec


def compose_services() -> list[ServiceDef]:
    """The topology's services that compose runs: no per-node services (no nodes) and no Kubernetes (no API server)."""
    return [svc for svc in SERVICES if not svc.per_node and not svc.kube]


def _compose_nodes(after: list[str]) -> dict[str, Any]:
    """Creates the simulated instances and registers them on the bus, as their agents would; idempotent, so it
    runs again on every `compose up`/`start` without changing what is there."""
    return {
        **_image(),
        "command": ["cce-net", "sim", "join", "--nodes", COMPOSE_NODES, "--mode", COMPOSE_MODE,
                    "--nats-url", COMPOSE_NATS_URL, "--sim-url", COMPOSE_SIM_URL],
        "user": COMPOSE_USER,
        "depends_on": {name: {"condition": "service_healthy"} for name in after},
        "restart": "no",
    }


def render_compose() -> dict[str, Any]:
    services: dict[str, Any] = {"nats": _compose_nats()}
    for svc in compose_services():
        services[compose_name(svc.name)] = _compose_service(svc)
    services[NODES_SERVICE] = _compose_nodes(list(services))
    return {"name": "cce-network", "services": services, "volumes": {"nats-data": {}, "sim-data": {}}}


HEADER = "# Generated from cce_net/topology.py by `cce-net compose`; do not edit by hand.\n"


def compose_text() -> str:
    return HEADER + yaml.safe_dump(render_compose(), sort_keys=False, width=110)
