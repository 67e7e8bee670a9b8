"""`cce-net bus ...`: the bus's identities — credentials for a server you run yourself, a new node's, a revocation,
the permissions table — and its contract (every stream and bucket)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cce_net import stack as stack_mod
from cce_net.natsauth import BusSecurity
from schemas.permissions import CONTROL_PLANE, Identity, identities, node_identity, service_identity, table

bus_app = typer.Typer(help="The bus: identities, credentials, permissions, streams and buckets.",
                      no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="CCE_STATE_DIR")]
DEFAULT_STATE = Path(".cce-state")
BusDir = Annotated[Path | None, typer.Option("--dir", help="where the keys and credentials live "
                                                           "(default: the local stack's bus/)")]


def _security(bus_dir: Path | None, state_dir: Path) -> BusSecurity:
    return BusSecurity((bus_dir or state_dir.resolve() / "bus").resolve())


def identity_named(name: str) -> Identity:
    """`ipam`, `admin`, `node.node-3` or just a node's name (`node-3`)."""
    if name == "admin":
        return next(i for i in identities(()) if i.is_admin)
    if name in CONTROL_PLANE:
        return service_identity(name)
    return node_identity(name.removeprefix("node."))


@bus_app.command()
def setup(
    bus_dir: Annotated[Path, typer.Option("--dir", help="where to write them")],
    nodes: Annotated[str, typer.Option(help="node names, comma-separated")] = "",
    host: Annotated[str, typer.Option(help="the address your server listens on (and its certificate names)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 4222,
    store: Annotated[Path, typer.Option(help="your server's JetStream directory")] = Path("/var/lib/nats"),
) -> None:
    """For a NATS server you run yourself: an operator and account, a credentials file per identity (every service,
    the admin, each node named), a CA and server certificate, and `nats-server.conf` using them. Then run
    `nats-server -c <dir>/nats-server.conf` and `cce-net up --nats-url tls://HOST:PORT --creds-dir <dir>
    --nats-ca <dir>/ca.pem`."""
    security = BusSecurity(bus_dir.resolve())
    names = [n.strip() for n in nodes.split(",") if n.strip()]
    security.ensure(names)
    security.ensure_tls((host, "localhost") if host != "localhost" else (host,))
    conf = security.dir / "nats-server.conf"
    conf.write_text(security.server_config(host=host, port=port, store_dir=store, name=f"cce-{port}"))
    conf.chmod(0o600)
    console.print(f"credentials ({len(names)} nodes + {len(CONTROL_PLANE)} services + admin), CA and server "
                  f"certificate in {security.dir}\nserver configuration: {conf}")


@bus_app.command()
def issue(name: Annotated[str, typer.Argument(help="ipam, eni_manager, ..., admin, or a node's name")],
          bus_dir: BusDir = None, state_dir: StateDir = DEFAULT_STATE) -> None:
    """New credentials for an identity (e.g. a node that joins): `<dir>/<identity>.creds`, mode 0600."""
    path = _security(bus_dir, state_dir).issue(identity_named(name))
    console.print(f"wrote {path}")


@bus_app.command()
def revoke(name: Annotated[str, typer.Argument(help="ipam, eni_manager, ..., admin, or a node's name")],
           bus_dir: BusDir = None, state_dir: StateDir = DEFAULT_STATE) -> None:
    """Revoke an identity's current credentials. The local stack's server reloads at once; a server of your own
    needs its configuration rewritten (`bus setup`) and reloaded. `bus issue` then makes new ones."""
    security = _security(bus_dir, state_dir)
    identity = identity_named(name)
    user = security.revoke(identity)
    state = stack_mod.read_state(state_dir.resolve()) or {}
    nats_conf = state_dir.resolve() / "nats" / "nats-server.conf"
    pid = state.get("nats_pid")
    if bus_dir is None and pid and stack_mod.pid_alive(pid) and nats_conf.exists():
        store = state_dir.resolve() / "nats" / "jetstream"
        url = str((state.get("bus") or {}).get("url") or "")
        port = int(url.rsplit(":", 1)[1]) if ":" in url else 4222
        text = security.server_config(host="127.0.0.1", port=port, store_dir=store, name=f"cce-{port}")
        nats_conf.write_text(text)
        os.kill(int(pid), signal.SIGHUP)
        console.print(f"revoked {identity.name} ({user}); the local server reloaded its configuration")
    else:
        console.print(f"revoked {identity.name} ({user}); rewrite your server's configuration and reload it")


@bus_app.command()
def permissions() -> None:
    """What each identity may publish and subscribe to (Markdown; also schemas/api/permissions.md)."""
    print(table(), end="")


@bus_app.command()
def init(nats_url: Annotated[str | None, typer.Option("--nats-url", envvar="NATS_URL")] = None,
         state_dir: StateDir = DEFAULT_STATE) -> None:
    """Create every stream and bucket of the contract, or bring their configuration to it (as the admin)."""
    from chassis.bus import Bus

    settings = stack_mod.client_settings(nats_url, state_dir.resolve())

    async def run() -> None:
        bus = await Bus.connect(settings, name="cce-net-bus-init", wait_s=5.0)
        try:
            await bus.ensure_contract()
        finally:
            await bus.close()

    asyncio.run(run())
    console.print("streams and buckets are as the contract says")
