"""`cce-net sim ...`: drive the simulated VPC through its admin API (nodes, subnets, faults, settings)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cce_net import stack as stack_mod
from schemas.base import NetworkMode
from services.vpc_sim.admin import SimAdminError, SimAdminSync
from services.vpc_sim.faults import SIM_APIS, FaultConfig, LatencySpec, RateLimitSpec

sim_app = typer.Typer(help="The simulated VPC: nodes, subnets, fault injection.", no_args_is_help=True)
fault_app = typer.Typer(help="Inject cloud faults: errors, rate limits, latency.", no_args_is_help=True)
sim_app.add_typer(fault_app, name="fault")
console = Console()
err_console = Console(stderr=True)

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="CCE_STATE_DIR")]
SimUrl = Annotated[str | None, typer.Option("--sim-url", envvar="CCE_SIM_URL",
                                            help="simulator address (default: the local stack's)")]
DEFAULT_STATE = Path(".cce-state")


def _admin(sim_url: str | None, state_dir: Path) -> SimAdminSync:
    """The simulator's admin API, with the admin token of the local stack (or CCE_SIM_ADMIN_TOKEN)."""
    state = stack_mod.read_state(state_dir.resolve()) or {}
    sim_url = sim_url or state.get("sim_url") or None
    if not sim_url:
        err_console.print("no simulator: start the stack (`cce-net up`) or pass --sim-url")
        raise typer.Exit(2)
    token = os.environ.get("CCE_SIM_ADMIN_TOKEN", "")
    token_file = state.get("sim_admin_token_file")
    if not token and token_file and Path(token_file).exists():
        token = Path(token_file).read_text().strip()
    return SimAdminSync(sim_url, token=token)


def _run(call: Any) -> Any:
    try:
        return call()
    except SimAdminError as err:
        err_console.print(f"[red]{err.code}[/red]: {err.message}")
        raise typer.Exit(1) from None
    except OSError as err:
        err_console.print(f"[red]simulator unreachable[/red]: {err}")
        raise typer.Exit(2) from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


@sim_app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Endpoint, credentials, VPC, route table, subnets and instances: enough to point any BCE client at it."""
    data = _run(_admin(sim_url, state_dir).info)
    if as_json:
        _print_json(data)
        return
    console.print(f"endpoint {data['endpoint']}  region {data['region']}  access key {data['accessKey']}  "
                  f"secret key {data['secretKey']}")
    console.print(f"vpc {data['vpcId']} ({data['vpcCidr']})  route table {data['routeTableId']}  "
                  f"fabric {data.get('fabric')}")
    subnets = Table(title="Subnets")
    for col in ("id", "zone", "cidr", "available"):
        subnets.add_column(col)
    for s in data["subnets"]:
        subnets.add_row(s["subnetId"], s["zoneName"], s["cidr"], str(s["availableIp"]))
    console.print(subnets)
    instances = Table(title="Instances")
    for col in ("id", "name", "type", "cpus", "memory GiB", "zone", "ip", "ENI quota"):
        instances.add_column(col)
    for i in data["instances"]:
        instances.add_row(i["id"], i["name"], i["instanceType"], str(i["cpuCount"]), str(i["memoryCapacityInGB"]),
                          i["zoneName"], i["internalIp"], str(i["eniQuota"]))
    console.print(instances)


@sim_app.command("add-node")
def add_node(
    name: Annotated[str, typer.Argument(help="instance name, e.g. node-3")],
    instance_type: Annotated[str, typer.Option("--type", help="BCC, EBC or BBC")] = "BCC",
    cpus: Annotated[int, typer.Option(min=1)] = 8,
    memory_mib: Annotated[int, typer.Option(min=256)] = 32768,
    zone: str = "zoneA",
    subnet: Annotated[str | None, typer.Option(help="subnet of the primary NIC")] = None,
    eni_quota: Annotated[int | None, typer.Option(help="ENIs besides the primary NIC")] = None,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Create a simulated instance (a node)."""
    admin = _admin(sim_url, state_dir)
    inst = _run(lambda: admin.create_instance(name=name, instance_type=instance_type.upper(), cpus=cpus,
                                              memory_mib=memory_mib, zone=zone, subnet_id=subnet,
                                              eni_quota=eni_quota))
    console.print(f"instance {inst['id']} ({inst['name']}, {inst['instanceType']}) ip {inst['internalIp']} "
                  f"ENI quota {inst['eniQuota']}")


@sim_app.command()
def join(
    nodes: Annotated[int, typer.Option(min=1, max=64, help="simulated nodes node-1..N")] = 2,
    mode: Annotated[NetworkMode, typer.Option(help="the nodes' network mode")] = NetworkMode.VPC_ENI,
    nats_url: Annotated[str | None, typer.Option("--nats-url", envvar="NATS_URL",
                                                 help="NATS server (default: the local stack's)")] = None,
    max_enis: Annotated[int | None, typer.Option(min=0, max=64, help="the instances' ENI quota")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for NATS and for ipam to answer")] = 60.0,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Create the simulated instances node-1..N that are missing and register each as a node on the bus, as its
    agent does when it starts (idempotent: run it again and nothing changes). For stacks without Kubernetes and
    node services, such as compose's."""
    admin = _admin(sim_url, state_dir)
    settings = stack_mod.client_settings(nats_url, state_dir.resolve())
    instances = _run(lambda: stack_mod.ensure_sim_nodes(admin.url, nodes, mode.value, max_enis, admin.token))
    try:
        stack_mod.register_nodes(settings, instances, mode.value, timeout, max_enis=max_enis)
    except Exception as err:  # NATS unreachable, or ipam refused a node: said, not a traceback
        err_console.print(f"[red]registration failed[/red]: {err or type(err).__name__}")
        raise typer.Exit(1) from None
    for inst in instances:
        console.print(f"{inst['name']}: instance {inst['id']} ({inst['instanceType']}, {mode.value}) registered")


@sim_app.command("add-subnet")
def add_subnet(
    cidr: Annotated[str, typer.Argument(help="inside the VPC CIDR, e.g. 10.0.16.0/24")],
    zone: str = "zoneA",
    name: str | None = None,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Create a subnet."""
    admin = _admin(sim_url, state_dir)
    sub = _run(lambda: admin.create_subnet(zone=zone, cidr=cidr, name=name))
    console.print(f"subnet {sub['subnetId']} {sub['cidr']} in {sub['zoneName']}: {sub['availableIp']} free")


@sim_app.command()
def settings(
    attach_delay_s: Annotated[float | None, typer.Option(min=0)] = None,
    detach_delay_s: Annotated[float | None, typer.Option(min=0)] = None,
    route_quota: Annotated[int | None, typer.Option(min=0)] = None,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Show or change the ENI attach/detach delays and the route table quota."""
    admin = _admin(sim_url, state_dir)
    if attach_delay_s is None and detach_delay_s is None and route_quota is None:
        _print_json(_run(admin.get_settings))
        return
    _print_json(_run(lambda: admin.set_settings(attach_delay_s=attach_delay_s, detach_delay_s=detach_delay_s,
                                                route_quota=route_quota)))


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        api, sep, value = item.partition("=")
        if not sep or (api not in SIM_APIS and not (what == "latency" and api == "*")):
            err_console.print(f"bad --{what} {item!r}: expected API=VALUE with API one of {', '.join(SIM_APIS)}")
            raise typer.Exit(2)
        out[api] = value
    return out


@fault_app.command("show")
def fault_show(sim_url: SimUrl = None, state_dir: StateDir = DEFAULT_STATE) -> None:
    """The fault configuration in force (with the remaining fail-next counts)."""
    _print_json(_run(_admin(sim_url, state_dir).get_faults).model_dump(mode="json"))


@fault_app.command("set")
def fault_set(
    error_rate: Annotated[list[str], typer.Option(help="API=RATE, e.g. create_eni=0.1")] = [],  # noqa: B006
    rate_limit: Annotated[list[str], typer.Option(help="API=RATE/BURST, e.g. list_enis=1/1")] = [],  # noqa: B006
    latency: Annotated[list[str], typer.Option(help="API=MEDIAN_MS/P99_MS; API may be *")] = [],  # noqa: B006
    error_code: str = "InternalError",
    error_status: int = 500,
    seed: int | None = None,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Replace the fault configuration: random error rates, rate limits and latency per API."""
    try:
        config = FaultConfig(
            error_rates={k: float(v) for k, v in _pairs(error_rate, "error-rate").items()},
            rate_limits={k: RateLimitSpec(rate_per_s=float(v.split("/")[0]), burst=int(v.split("/")[1]))
                         for k, v in _pairs(rate_limit, "rate-limit").items()},
            latency={k: LatencySpec(median_ms=float(v.split("/")[0]), p99_ms=float(v.split("/")[1]))
                     for k, v in _pairs(latency, "latency").items()},
            error_code=error_code, error_status=error_status, seed=seed,
        )
    except (ValueError, IndexError) as err:
        err_console.print(f"bad fault setting: {err}")
        raise typer.Exit(2) from None
    admin = _admin(sim_url, state_dir)
    _print_json(_run(lambda: admin.set_faults(config)).model_dump(mode="json"))


@fault_app.command("fail-next")
def fault_fail_next(
    api: Annotated[str, typer.Argument(help=f"one of: {', '.join(SIM_APIS)}")],
    count: Annotated[int, typer.Option(min=1)] = 1,
    code: str = "InternalError",
    status: int = 500,
    sim_url: SimUrl = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Fail the next COUNT calls of API with CODE/STATUS."""
    if api not in SIM_APIS:
        err_console.print(f"unknown api {api!r}; one of: {', '.join(SIM_APIS)}")
        raise typer.Exit(2)
    admin = _admin(sim_url, state_dir)
    _run(lambda: admin.fail_next(api, count, code, status))
    console.print(f"the next {count} {api} call(s) fail with {status} {code}")


@fault_app.command("clear")
def fault_clear(sim_url: SimUrl = None, state_dir: StateDir = DEFAULT_STATE) -> None:
    """Remove every injected fault."""
    _run(_admin(sim_url, state_dir).clear_faults)
    console.print("faults cleared")
