"""Unit and integration tiers of the compose stack without an engine: what compose/docker-compose.yml (generated
from the topology) and compose/Dockerfile promise, and `cce-net sim join`, the one-shot `nodes` service's command.
The stack itself runs in tests/test_compose_e2e.py."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cce_net.topology import COMPOSE_FILE, IMAGE, SERVICES, compose_name, compose_services
from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import Store
from schemas.subjects import NODES
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "compose" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLI = Path(sys.executable).parent / "cce-net"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text())["services"])


def packages() -> list[str]:
    """The top-level packages pyproject.toml ships (`include = ["schemas*", ...]`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]


@pytest.mark.unit
def test_compose_runs_nats_the_simulator_the_control_plane_and_the_nodes_job() -> None:
    services = compose()
    expected = {compose_name(s.name) for s in SERVICES if not s.per_node and not s.kube}
    assert set(services) == {"nats", "nodes", *expected}
    assert "k8s-bridge" not in services  # no Kubernetes API server in compose
    assert {s.name for s in compose_services()} == {"vpc_sim", "ipam", "eni_manager", "route_manager"}


@pytest.mark.unit
def test_every_container_runs_the_one_image_as_the_unprivileged_user() -> None:
    for name, spec in compose().items():
        assert spec["image"] == IMAGE, name
        assert spec["user"] == "10001:10001", name
    built = [name for name, spec in compose().items() if "build" in spec]
    assert built == ["nats"]  # built once; the others never pull it from a registry
    assert compose()["nats"]["build"]["network"] == "host"
    assert all(spec.get("pull_policy") == "never" for name, spec in compose().items() if name != "nats")


@pytest.mark.unit
def test_published_ports_are_bound_to_loopback_only() -> None:
    published = {name: spec.get("ports", []) for name, spec in compose().items()}
    assert published["nats"] and published["vpc-sim"]
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), (name, port)


@pytest.mark.unit
def test_healthchecks_ask_readiness_and_state_lives_in_named_volumes() -> None:
    services = compose()
    for svc in compose_services():
        probe = " ".join(services[compose_name(svc.name)]["healthcheck"]["test"])
        assert ("'/healthz'" if svc.name == "vpc_sim" else "'/readyz'") in probe, svc.name
    assert "/healthz?js-enabled-only=true" in " ".join(services["nats"]["healthcheck"]["test"])
    assert "--jetstream" in services["nats"]["command"]
    assert services["nats"]["volumes"] == ["nats-data:/data"]
    assert services["vpc-sim"]["volumes"] == ["sim-data:/data"]
    assert services["vpc-sim"]["environment"]["CCE_SIM_STATE_FILE"].startswith("/data/")
    assert set(yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]) == {"nats-data", "sim-data"}
    for name in ("eni-manager", "route-manager"):
        assert services[name]["depends_on"]["vpc-sim"] == {"condition": "service_healthy"}


@pytest.mark.unit
def test_the_nodes_job_joins_the_simulated_nodes_once_everything_is_healthy() -> None:
    services = compose()
    nodes = services["nodes"]
    assert nodes["restart"] == "no"
    assert nodes["command"][:3] == ["cce-net", "sim", "join"]
    assert "healthcheck" not in nodes
    assert set(nodes["depends_on"]) == set(services) - {"nodes"}
    assert all(d == {"condition": "service_healthy"} for d in nodes["depends_on"].values())


@pytest.mark.unit
def test_the_image_carries_every_package_pyproject_ships() -> None:
    text = DOCKERFILE.read_text()
    copied = set(re.findall(r"^COPY (\S+) /tmp/src/\1$", text, flags=re.MULTILINE))
    assert set(packages()) <= copied, f"compose/Dockerfile does not copy {set(packages()) - copied}"
    allowed = {line[1:] for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    assert set(packages()) <= allowed, f".dockerignore leaves out {set(packages()) - allowed}"
    assert {"pyproject.toml", "README.md", "build/cni/cce"} <= allowed
    for package in packages():
        assert (ROOT / package / "__init__.py").exists(), package


@pytest.mark.unit
def test_the_image_runs_under_tini_as_a_user_with_the_native_cni_plugin() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["tini", "--"]' in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert "COPY build/cni/cce /usr/local/lib/cce-network/cni/cce" in text
    assert "CCE_CNI_PLUGIN_BINARY=/usr/local/lib/cce-network/cni/cce" in text
    base = re.search(r"^FROM (\S+)$", text, flags=re.MULTILINE)
    assert base is not None and base.group(1) == "python:3.11-slim"


# ---- cce-net sim join: what the `nodes` job runs ------------------------------------------------------------------


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(str(CLI), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


def start_ipam(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.ipam"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.integration
async def test_sim_join_creates_and_registers_the_nodes_and_a_second_run_changes_nothing(
        clean_nats: str, vpc_sim: SimServer, sim_admin: SimAdmin, tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CCE_")}, "CCE_NATS_URL": clean_nats,
           "CCE_HTTP_PORT": "0", "CCE_LOG_LEVEL": "warning"}
    ipam = start_ipam(env, tmp_path / "ipam.log")
    bus = await Bus.connect(ChassisSettings(nats_url=clean_nats), name="test")
    try:
        join = ("sim", "join", "--nodes", "2", "--nats-url", clean_nats, "--sim-url", vpc_sim.url, "--timeout", "30")
        code, out = await cli(*join)
        assert code == 0, out
        assert "node-1: instance i-" in out and "node-2: instance i-" in out
        store = Store(await bus.bucket(NODES), NODES.record, NODES.name)
        first = {k: v.value.spec.instance_id for k, v in (await store.list()).items()}
        assert set(first) == {"node-1", "node-2"}

        code, out = await cli(*join)
        assert code == 0, out
        assert {k: v.value.spec.instance_id for k, v in (await store.list()).items()} == first
        assert sorted(i["name"] for i in (await sim_admin.info())["instances"]) == ["node-1", "node-2"]
    finally:
        await bus.close()
        ipam.terminate()
        ipam.wait(15)


@pytest.mark.unit
async def test_sim_join_refuses_an_unknown_mode_naming_the_option() -> None:
    code, out = await cli("sim", "join", "--mode", "vpc-magic", "--sim-url", "http://127.0.0.1:9")
    assert code == 2
    assert "--mode" in out and "vpc-magic" in out
