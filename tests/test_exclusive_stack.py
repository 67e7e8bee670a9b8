"""End-to-end tier (control plane only): `cce-net up --mode vpc-eni-exclusive` and `--mode vpc-eni-primary` bring
up a local cluster in one command whose nodes run that mode; `cce-net status --json` shows each node's mode, its
exclusive ENIs and free ENIs. The simulator's fabric is off here, so no node services run (the root end-to-end
tests with pods are in tests/test_modes_e2e.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def cce_net(*args: str, state_dir: Path, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cce_net", *args, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def stack_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return {**env, "COLUMNS": "200", "CCE_SIM_FABRIC": "off", **extra}


def status_until(state_dir: Path, env: dict[str, str], ok: Callable[[dict[str, Any]], bool],
                 timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = cce_net("status", "--json", state_dir=state_dir, env=env)
        data: dict[str, Any] = json.loads(result.stdout) if result.returncode == 0 else {}
        if data and ok(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"status never settled: {result.stdout[-2000:]} {result.stderr[-2000:]}")
        time.sleep(0.5)


@pytest.mark.parametrize("mode", ["vpc-eni-exclusive", "vpc-eni-primary"])
def test_cce_net_up_runs_each_mode_in_one_command(tmp_path: Path, mode: str) -> None:
    env = stack_env(CCE_NET_NODE_MAX_ENIS="3")
    up = cce_net("up", "--detach", "--nodes", "1", "--mode", mode, state_dir=tmp_path, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        if mode == "vpc-eni-exclusive":
            data = status_until(tmp_path, env, lambda d: d["pools"][0]["free_enis"] == 1)
            [pool] = data["pools"]
            assert (pool["mode"], pool["max_enis"], pool["exclusive_target"]) == (mode, 3, 1)
            assert [e["use"] for e in pool["enis"]] == ["exclusive"]
            assert pool["enis"][0]["ips"] == [] and pool["enis"][0]["primary_ip"]
        else:
            data = status_until(tmp_path, env, lambda d: d["pools"][0]["free"] >= 10)
            [pool] = data["pools"]
            assert (pool["mode"], pool["ips_per_eni"]) == (mode, 40)
            assert [e["use"] for e in pool["enis"]] == ["primary-nic"]
            assert pool["enis"][0]["eni_id"] == f"primary-{data['nodes'][0]['spec']['instance_id']}"
        assert data["nodes"][0]["spec"]["mode"] == mode
        table = cce_net("status", state_dir=tmp_path, env=env).stdout
        assert mode in table and "free ENIs" in table
    finally:
        cce_net("down", state_dir=tmp_path, env=env)
