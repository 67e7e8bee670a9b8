"""`cce-net`: run the local stack and look inside it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cce_net import stack as stack_mod
from cce_net.bus_cli import bus_app
from cce_net.pod_cli import pod_app
from cce_net.sim_cli import sim_app
from cce_net.topology import COMPOSE_FILE, compose_text
from chassis.config import ChassisSettings
from schemas.base import NetworkMode

app = typer.Typer(help="cce-network: a container network for a cloud VPC, on a NATS bus.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
svc_app = typer.Typer(help="Micro services on the bus.", no_args_is_help=True)
app.add_typer(svc_app, name="svc")
app.add_typer(sim_app, name="sim")
app.add_typer(pod_app, name="pod")
app.add_typer(bus_app, name="bus")
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="CCE_STATE_DIR",
                                        help="where the local stack keeps its state and logs")]
NatsUrl = Annotated[str | None, typer.Option("--nats-url", envvar="NATS_URL",
                                             help="NATS server (default: the local stack's)")]
DEFAULT_STATE = Path(".cce-state")


def resolve_url(nats_url: str | None, state_dir: Path) -> ChassisSettings:
    """The bus to talk to and how: the local stack's as its admin, or `--nats-url` (with CCE_NATS_CREDS and
    CCE_NATS_TLS_CA from the environment)."""
    return stack_mod.client_settings(nats_url, state_dir.resolve())


def with_bus(settings: ChassisSettings, action: Callable[[Any], Awaitable[T]]) -> T:
    from chassis.bus import Bus
    from chassis.creds import redact_url
    from chassis.logs import configure_logging

    configure_logging("warning", json_output=False)

    async def go() -> T:
        try:
            bus = await Bus.connect(settings, name="cce-net-cli", wait_s=2.0)
        except Exception as err:
            err_console.print(f"[red]cannot reach NATS at {redact_url(settings.nats_url)}: {err!r}[/red]")
            raise typer.Exit(2) from None
        try:
            return await action(bus)
        finally:
            await bus.close()

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------------------------
# up / down


@app.command()
def up(
    nodes: Annotated[int, typer.Option(min=0, max=64, help="simulated nodes")] = 2,
    mode: Annotated[NetworkMode, typer.Option(help="network mode of the cluster")] = NetworkMode.VPC_ENI,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    nats_url: NatsUrl = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for health")] = 60.0,
    pool: Annotated[str | None, typer.Option(help='pool settings of the simulated nodes as JSON, '
                                                  'e.g. \'{"cooldown_s": 5, "pre_allocate": 4}\'')] = None,
    kube: Annotated[bool, typer.Option("--kube", help="with a local Kubernetes API server (`make kube-tools`): "
                                                      "nodes join as Node objects through k8s_bridge")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="the embedded bus WITHOUT identities and TLS "
                                                              "(debugging only)")] = False,
    creds_dir: Annotated[Path | None, typer.Option("--creds-dir", envvar="CCE_NATS_CREDS_DIR",
                                                   help="with NATS_URL: the <identity>.creds files of its "
                                                        "operator (see schemas/api/permissions.md)")] = None,
    nats_ca: Annotated[Path | None, typer.Option("--nats-ca", envvar="CCE_NATS_TLS_CA",
                                                 help="with NATS_URL: the CA of its server certificate")] = None,
    nats_cluster: Annotated[int, typer.Option("--nats-cluster", min=1, max=5,
                                              help="embedded nats-servers in one cluster (3: every stream and "
                                                   "bucket replicated on three)")] = 1,
) -> None:
    """Start the local stack: NATS (embedded unless NATS_URL) and every service, one log file each.
    As root, each simulated node also runs its node_datapath and cni_gateway (see `cce-net pod`).
    With --kube, a local kube-apiserver + etcd too, and the simulated nodes register through their Node objects."""
    state_dir = state_dir.resolve()
    pool_settings = _pool_settings(pool)
    existing = stack_mod.read_state(state_dir)
    if existing and stack_mod.pid_alive(existing.get("supervisor_pid")):
        err_console.print(f"a stack is already running from {state_dir} (pid {existing['supervisor_pid']}); "
                          "run `cce-net down` first")
        raise typer.Exit(1)
    if kube:
        from cce_net.kubelocal import missing_parts

        missing = missing_parts()
        if missing:
            err_console.print("[red]--kube needs a local API server; missing: " + "; ".join(missing) + "[/red]")
            raise typer.Exit(1)
    security = {"insecure": insecure, "creds_dir": creds_dir.resolve() if creds_dir else None,
                "nats_ca": nats_ca.resolve() if nats_ca else None, "nats_cluster": nats_cluster}
    if detach:
        _up_detached(nodes, mode, state_dir, nats_url, timeout, pool, kube, security)
        return
    _up_foreground(nodes, mode, state_dir, nats_url, timeout, pool_settings, kube, security)


def _pool_settings(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    from pydantic import ValidationError

    from schemas.records import PoolSettings

    try:
        return PoolSettings.model_validate_json(text).model_dump(mode="json", exclude_unset=True)
    except ValidationError as err:
        err_console.print(f"[red]--pool: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}[/red]")
        raise typer.Exit(2) from None


def _up_foreground(nodes: int, mode: NetworkMode, state_dir: Path, nats_url: str | None,
                   timeout: float, pool: dict[str, Any] | None, kube: bool, security: dict[str, Any]) -> None:
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    local = stack_mod.LocalStack(state_dir, nodes=nodes, mode=mode.value, nats_url=nats_url,
                                 say=lambda m: console.print(m), pool=pool, kube=kube, **security)
    try:
        local.start(timeout)
    except Exception as err:
        err_console.print(f"[red]start failed: {err}[/red]")
        local.stop()
        raise typer.Exit(1) from None
    _print_stack(stack_mod.read_state(state_dir) or {})
    console.print("running; Ctrl-C or `cce-net down` stops everything")
    try:
        while not stop["now"]:
            local.supervise_once()
            time.sleep(0.2)
    finally:
        console.print("stopping...")
        local.stop()
        console.print("stopped")


def _up_detached(nodes: int, mode: NetworkMode, state_dir: Path, nats_url: str | None,
                 timeout: float, pool: str | None, kube: bool, security: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / stack_mod.STATE_FILE).unlink(missing_ok=True)
    args = [sys.executable, "-m", "cce_net", "up", "--nodes", str(nodes), "--mode", mode.value,
            "--state-dir", str(state_dir), "--timeout", str(timeout)]
    if nats_url:
        args += ["--nats-url", nats_url]
    if pool:
        args += ["--pool", pool]
    if kube:
        args.append("--kube")
    if security["insecure"]:
        args.append("--insecure")
    for flag, key in (("--creds-dir", "creds_dir"), ("--nats-ca", "nats_ca")):
        if security[key]:
            args += [flag, str(security[key])]
    args += ["--nats-cluster", str(security["nats_cluster"])]
    log = state_dir / "up.log"
    with open(log, "ab") as out:
        sup = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "COLUMNS": "160"})
    deadline = time.monotonic() + timeout + 10
    while time.monotonic() < deadline:
        state = stack_mod.read_state(state_dir)
        if state and state.get("ready") and state.get("supervisor_pid") == sup.pid:
            _print_stack(state)
            console.print(f"running in the background (supervisor pid {sup.pid}, log {log}); "
                          "`cce-net down` stops it")
            return
        if sup.poll() is not None:
            break
        time.sleep(0.1)
    err_console.print(f"[red]the stack did not come up; see {log}[/red]")
    err_console.print(log.read_text(errors="replace")[-3000:])
    stack_mod.down(state_dir)
    raise typer.Exit(1)


def _print_stack(state: dict[str, Any]) -> None:
    table = Table(title=f"cce-network local stack — NATS {state.get('nats_url')}")
    for col in ("service", "pid", "health/metrics", "log"):
        table.add_column(col)
    for s in state.get("services", []):
        table.add_row(s["id"], str(s["pid"]), s["http"], s["log"])
    console.print(table)
    console.print(f"simulated VPC: {state.get('sim_url')} (`cce-net sim info`); nodes: {state.get('nodes')}  "
                  f"mode: {state.get('mode')}")
    bus = state.get("bus") or {}
    if bus.get("creds_dir"):
        console.print(f"bus: {bus['url']}, one identity per service and node: credentials in {bus['creds_dir']} "
                      f"(the operator's: admin.creds), TLS CA {bus['ca']}")
    else:
        console.print(f"bus: {bus.get('url') or state.get('nats_url')} [bold red]without authentication[/bold red]")
    kube = state.get("kube")
    if kube:
        console.print(f"Kubernetes API server: {kube['url']}\n  export KUBECONFIG={kube['kubeconfig']}\n"
                      f"  {kube['kubectl']} get nrs,cep,sbn -A   (or `cce-net kubectl get nrs,cep -A`)")


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE) -> None:
    """Stop the local stack and every process it started."""
    if stack_mod.down(state_dir.resolve(), say=lambda m: console.print(m)):
        console.print("stack stopped")


# ---------------------------------------------------------------------------------------------------------------
# looking inside


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    nats_url: NatsUrl = None,
) -> None:
    """Nodes, pools, ENIs, endpoints and routes, read from the KV buckets."""
    from cce_net.inspect import render_status, status_data

    data = with_bus(resolve_url(nats_url, state_dir), status_data)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        render_status(data, console)


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False,
    subject_filter: Annotated[str, typer.Option("--filter", help="subject filter")] = "cce.events.>",
    last: Annotated[int | None, typer.Option(help="only the last N events")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON of each event")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    nats_url: NatsUrl = None,
) -> None:
    """Print the events stored in CCE_EVENTS (like `nats sub`), optionally following new ones."""
    from cce_net.inspect import tail_events

    async def action(bus: Any) -> int:
        return await tail_events(bus, follow=follow, subject_filter=subject_filter, last=last,
                                 as_json=as_json, out=lambda line: print(line, flush=True))

    with contextlib.suppress(KeyboardInterrupt):
        with_bus(resolve_url(nats_url, state_dir), action)


@app.command()
def trace(
    pod: Annotated[str, typer.Argument(help="the pod, as namespace/name")],
    command: Annotated[str, typer.Option(help="which CNI command's trace: ADD, DEL or CHECK")] = "ADD",
    as_json: Annotated[bool, typer.Option("--json", help="the trace index and span records as JSON")] = False,
    state_dir: StateDir = DEFAULT_STATE,
    nats_url: NatsUrl = None,
) -> None:
    """The spans of the pod's last CNI ADD (or --command) across the services, as a timeline (from CCE_TRACES)."""
    from cce_net.traces import render, trace_data

    namespace, _, name = pod.partition("/")
    if not namespace or not name or command.upper() not in ("ADD", "DEL", "CHECK"):
        err_console.print("give the pod as namespace/name and --command as ADD, DEL or CHECK")
        raise typer.Exit(2)

    async def action(bus: Any) -> Any:
        return await trace_data(bus, namespace, name, command.upper())

    data = with_bus(resolve_url(nats_url, state_dir), action)
    if as_json:
        print(json.dumps(None if data is None else {"index": data["index"].model_dump(mode="json"),
                                                    "spans": [s.model_dump(mode="json") for s in data["spans"]]},
                         indent=2))
    else:
        render(data, print)
    if data is None:
        raise typer.Exit(1)


@svc_app.command("ls")
def svc_ls(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to collect answers")] = 0.5,
    state_dir: StateDir = DEFAULT_STATE,
    nats_url: NatsUrl = None,
) -> None:
    """List the running micro services ($SRV.INFO / $SRV.STATS) with endpoints and stats."""
    from cce_net.inspect import list_services, render_services

    async def action(bus: Any) -> list[dict[str, Any]]:
        return await list_services(bus, timeout)

    services = with_bus(resolve_url(nats_url, state_dir), action)
    if as_json:
        print(json.dumps(services, indent=2, default=str))
    else:
        render_services(services, console)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kubectl(ctx: typer.Context, state_dir: StateDir = DEFAULT_STATE) -> None:
    """kubectl (the one `make kube-tools` built) against the local stack's API server (`cce-net up --kube`)."""
    state = stack_mod.read_state(state_dir.resolve()) or {}
    kube = state.get("kube")
    if not kube:
        err_console.print(f"no local stack with a Kubernetes API server runs from {state_dir} (`cce-net up --kube`)")
        raise typer.Exit(1)
    os.execv(kube["kubectl"], [kube["kubectl"], f"--kubeconfig={kube['kubeconfig']}", *ctx.args])


@app.command("install-cni")
def install_cni_cmd(
    node: Annotated[str, typer.Option(help="the node the plugin's gateway serves")],
    bin_dir: Annotated[Path, typer.Option("--bin-dir", help="where the plugin binary goes (e.g. /opt/cni/bin)")],
    conf_dir: Annotated[Path, typer.Option("--conf-dir", help="where the conflist goes (e.g. /etc/cni/net.d)")],
    socket: Annotated[Path, typer.Option(help="the cni_gateway's unix socket")] = Path("/run/cce-net/cni.sock"),
    chain: Annotated[str, typer.Option(help="plugins chained after ours, e.g. portmap,bandwidth")] = "",
    plugin: Annotated[str, typer.Option(envvar="CCE_CNI_PLUGIN",
                                        help="auto (native when built), native (Go, `make cni-plugin`) or python")
                      ] = "auto",
    plugin_binary: Annotated[Path | None, typer.Option(envvar="CCE_CNI_PLUGIN_BINARY",
                                                       help="the native plugin (default: build/cni/cce)")] = None,
    cni_version: Annotated[str, typer.Option("--cni-version", envvar="CCE_CNI_VERSION",
                                             help="the conflist's cniVersion: 1.0.0 for containerd 1.6/1.7; empty: "
                                                  "1.1.0 when ours is alone, 1.0.0 when chained")] = "",
) -> None:
    """Install the CNI plugin `<bin-dir>/cce` and `<conf-dir>/10-cce.conflist` (idempotent; keeps other plugins)."""
    from services.cni_gateway.install import InstallError, install_cni

    try:
        done = install_cni(bin_dir, conf_dir, node, socket, [c.strip() for c in chain.split(",") if c.strip()],
                           plugin_kind=plugin, plugin_binary=plugin_binary, version=cni_version)
    except (InstallError, OSError) as err:
        err_console.print(f"[red]install-cni failed: {err}[/red]")
        raise typer.Exit(1) from None
    for path, changed in ((done.plugin, done.plugin_changed), (done.conflist, done.conflist_changed)):
        kind = f" ({done.kind})" if path == done.plugin else ""
        console.print(f"{'wrote' if changed else 'unchanged'} {path}{kind}")


@app.command()
def compose(
    check: Annotated[bool, typer.Option("--check", help="exit 1 if the file is stale")] = False,
) -> None:
    """Write compose/docker-compose.yml from the topology (the same one `up` runs)."""
    text = compose_text()
    if check:
        current = COMPOSE_FILE.read_text() if COMPOSE_FILE.exists() else ""
        if current != text:
            err_console.print(f"{COMPOSE_FILE} is stale: run `cce-net compose`")
            raise typer.Exit(1)
        return
    COMPOSE_FILE.write_text(text)
    console.print(f"wrote {COMPOSE_FILE}")


if __name__ == "__main__":
    app()
