"""The one definition of the stack's topology. `cce-net up` runs it as local processes and
`compose/docker-compose.yml` is generated from it (`cce-net compose`), so the two cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "compose" / "docker-compose.yml"
IMAGE = "cce-network:dev"
NATS_IMAGE = "nats:2.11-alpine"
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


def render_compose() -> dict[str, Any]:
    services: dict[str, Any] = {
        "nats": {
            "image": NATS_IMAGE,
            "command": ["-js", "-sd", "/data", "-m", "8222"],
            "ports": ["4222:4222", "8222:8222"],
            "volumes": ["nats-data:/data"],
            "healthcheck": {"test": ["CMD", "wget", "-q", "-O-", "http://localhost:8222/healthz"],
                            "interval": "5s", "retries": 10},
            "restart": "unless-stopped",
        }
    }
    for svc in SERVICES:
        if svc.per_node or svc.kube:
            continue
        services[compose_name(svc.name)] = {
            "image": IMAGE,
            "build": {"context": "..", "dockerfile": "compose/Dockerfile"},
            "command": svc.argv,
            "environment": {
                "CCE_NATS_URL": "nats://nats:4222",
                "CCE_HTTP_HOST": "0.0.0.0",
                "CCE_HTTP_PORT": str(HTTP_PORT_IN_CONTAINER),
                **resolve_env(svc.env, f"http://{compose_name(SIM_SERVICE)}:{HTTP_PORT_IN_CONTAINER}"),
                **({"CCE_SIM_FABRIC": "off", "CCE_SIM_STATE_FILE": "/data/vpc_sim.json"}
                   if svc.name == SIM_SERVICE else {}),
            },
            "depends_on": {"nats": {"condition": "service_healthy"}},
            "deploy": {"replicas": svc.replicas},
            "healthcheck": {
                "test": ["CMD", "python", "-c",
                         f"import urllib.request as u; u.urlopen('http://127.0.0.1:{HTTP_PORT_IN_CONTAINER}"
                         "/healthz', timeout=2)"],
                "interval": "10s", "retries": 3,
            },
            "restart": "unless-stopped",
            "stop_grace_period": "15s",
        }
        if svc.name == SIM_SERVICE:
            services[compose_name(svc.name)]["volumes"] = ["sim-data:/data"]
            services[compose_name(svc.name)]["ports"] = [f"8680:{HTTP_PORT_IN_CONTAINER}"]
    return {"name": "cce-network", "services": services, "volumes": {"nats-data": {}, "sim-data": {}}}


HEADER = "# Generated from cce_net/topology.py by `cce-net compose`; do not edit by hand.\n"


def compose_text() -> str:
    return HEADER + yaml.safe_dump(render_compose(), sort_keys=False, width=110)
