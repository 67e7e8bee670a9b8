"""`cce-net pod add|del|check|ls|exec`: pods on the local stack's simulated nodes, run as a container runtime
runs them (see cce_net/pods.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cce_net.pods import PodError, Pods

pod_app = typer.Typer(help="Pods on simulated nodes (needs root and `cce-net up`).", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="CCE_STATE_DIR",
                                        help="where the local stack keeps its state and logs")]
DEFAULT_STATE = Path(".cce-state")
Ref = Annotated[str, typer.Argument(help="NAMESPACE/NAME")]


def _fail(err: PodError) -> typer.Exit:
    err_console.print(f"[red]{err}[/red]")
    if err.cni_error:
        err_console.print(json.dumps(err.cni_error, indent=2))
    return typer.Exit(1)


@pod_app.command("add")
def add(ref: Ref, node: Annotated[str, typer.Option(help="the simulated node, e.g. node-1")],
        annotation: Annotated[list[str] | None, typer.Option(
            "--annotation", "-a", help="KEY=VALUE on the pod (repeatable), e.g. cce.io/exclusive-eni=true")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the CNI result")] = False,
        statefulset: Annotated[str, typer.Option(
            "--statefulset", help="with --kube: the pod belongs to this StatefulSet (made if missing)")] = "",
        state_dir: StateDir = DEFAULT_STATE) -> None:
    """Create the pod's network namespace and run CNI ADD for it on the node (with `up --kube`, its Pod object
    first, as kubelet's world does)."""
    annotations = {}
    for item in annotation or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err_console.print(f"[red]--annotation {item!r}: expected KEY=VALUE[/red]")
            raise typer.Exit(2)
        annotations[key] = value
    try:
        record = Pods(state_dir.resolve()).add(ref, node, annotations, statefulset)
    except PodError as err:
        raise _fail(err) from None
    if as_json:
        print(json.dumps(record.result, indent=2))
    else:
        console.print(f"{record.namespace}/{record.name} on {record.node}: {', '.join(record.ips)} "
                      f"(netns {record.netns_path})")


@pod_app.command("del")
def delete(ref: Ref, state_dir: StateDir = DEFAULT_STATE) -> None:
    """Run CNI DEL for the pod and remove its network namespace (a pod that is not there is fine)."""
    try:
        record = Pods(state_dir.resolve()).delete(ref)
    except PodError as err:
        raise _fail(err) from None
    console.print(f"deleted {ref}" if record else f"no pod {ref}; nothing to do")


@pod_app.command("check")
def check(ref: Ref, state_dir: StateDir = DEFAULT_STATE) -> None:
    """Run CNI CHECK for the pod with its cached result."""
    try:
        Pods(state_dir.resolve()).check(ref)
    except PodError as err:
        raise _fail(err) from None
    console.print(f"{ref}: ok")


@pod_app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
       state_dir: StateDir = DEFAULT_STATE) -> None:
    """The pods of the local stack: namespace/name, node, netns path and IP addresses."""
    pods = [p.view() for p in Pods(state_dir.resolve()).all()]
    if as_json:
        print(json.dumps(pods, indent=2))
        return
    table = Table(title=f"{len(pods)} pods")
    for col in ("pod", "node", "ips", "netns", "container"):
        table.add_column(col)
    for p in pods:
        table.add_row(f"{p['namespace']}/{p['name']}", p["node"], ", ".join(p["ips"]), p["netns"],
                      p["container_id"][:12])
    console.print(table)


@pod_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ref: Ref, argv: Annotated[list[str], typer.Argument(help="-- CMD [ARGS...]")],
          state_dir: StateDir = DEFAULT_STATE) -> None:
    """Run a command inside the pod's network namespace (like `kubectl exec` for its network)."""
    try:
        command = Pods(state_dir.resolve()).exec_argv(ref, argv)
    except PodError as err:
        raise _fail(err) from None
    os.execvp(command[0], command)
