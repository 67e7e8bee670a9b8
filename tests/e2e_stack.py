"""Helpers of the end-to-end tier: a local stack (`cce-net up --detach`) in a temporary state dir, driven through
the CLI, with the node services' resync made quick, and torn down with `cce-net down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cce_net.stack import read_state

NODE_ENV = {"CCE_DATAPATH_RESYNC_PERIOD_S": "3", "CCE_DATAPATH_GC_GRACE_S": "1"}


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        argv.insert(argv.index("--") if "--" in argv else len(argv), f"--state-dir={self.state_dir}")
        return subprocess.run([sys.executable, "-m", "cce_net", *argv], capture_output=True, text=True,
                              timeout=timeout, env=self.env, check=False)

    def add(self, ref: str, node: str) -> dict[str, Any]:
        """A pod through the installed CNI plugin, run in-process as `cce-net pod add` runs it (no CLI start-up)."""
        from cce_net.pods import Pods

        return Pods(self.state_dir).add(ref, node).view()

    def delete(self, ref: str) -> None:
        from cce_net.pods import Pods

        Pods(self.state_dir).delete(ref)

    def pods(self) -> dict[str, dict[str, Any]]:
        from cce_net.pods import Pods

        return {f"{p.namespace}/{p.name}": p.view() for p in Pods(self.state_dir).all()}

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ok(self.cli("status", "--json")))
        return data

    def node_ns(self, node: str) -> str:
        return str((read_state(self.state_dir) or {})["node_info"][node]["netns"])

    @property
    def fabric_prefix(self) -> str:
        return str((read_state(self.state_dir) or {})["fabric_prefix"])


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def until(check: Callable[[], Any], timeout: float, what: str, period: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(period)


def stack_env(tag: str, **env: str) -> dict[str, str]:
    """The environment of a test stack: its own fabric prefix (stacks of parallel runs never meet) and quick resync."""
    full_env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    full_env.update(NODE_ENV, COLUMNS="200", CCE_SIM_FABRIC_PREFIX=f"{tag}{os.getpid() % 10**5}", **env)
    return full_env


@contextmanager
def running_stack(factory: pytest.TempPathFactory, mode: str, tag: str, up_args: Sequence[str] = (),
                  **env: str) -> Iterator[Stack]:
    """`cce-net up --detach --nodes 2 --mode M` for the block; skips where the simulator has no fabric."""
    state_dir = factory.mktemp(tag)
    stack = Stack(state_dir, stack_env(tag, **env))
    result = stack.cli("up", "--detach", "--nodes", "2", "--mode", mode, *up_args, timeout=180)
    if result.returncode != 0:
        logs = state_dir / "logs"
        tails = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                        for p in sorted(logs.glob("*.log"))) if logs.exists() else ""
        stack.cli("down")
        pytest.fail(f"stack did not start:\n{result.stdout}\n{result.stderr}{tails}")
    state = read_state(state_dir) or {}
    if state.get("node_services_off"):
        stack.cli("down")
        pytest.skip(f"simulated nodes have no node services here: {state['node_services_off']}")
    try:
        yield stack
    finally:
        stack.cli("down")


def in_ns(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False,
                          timeout=30)
