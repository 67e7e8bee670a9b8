"""What the control-plane benchmarks share: the services as real processes, and what they cost (CPU, memory, the
simulator's cloud calls), read from /proc and from the simulator's /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from chassis.procs import parent_death_signal

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Processes:
    """Services as subprocesses in their own sessions (Ctrl-C reaches only the benchmark; it stops them), one log
    file each; `procs` is (service id, module, extra environment)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, sid: str, module: str, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{sid}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module], env={**self.env, "CCE_SERVICE_ID": sid, **(extra or {})},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=parent_death_signal)
        self.procs[sid] = proc
        return proc

    async def wait_started(self, sids: list[str], timeout: float = 60) -> None:
        """Until each logged "service started" (a dead one fails at once, naming its log)."""
        deadline = time.monotonic() + timeout
        while not all("service started" in (self.logs / f"{sid}.log").read_text(errors="replace") for sid in sids):
            dead = [sid for sid in sids if self.procs[sid].poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"services did not start (exited: {dead}); see the logs in {self.logs}")
            await asyncio.sleep(0.1)

    def http_port(self, sid: str) -> int:
        """The health/metrics port the service logged when it started (CCE_HTTP_PORT=0 picks a free one)."""
        for line in (self.logs / f"{sid}.log").read_text(errors="replace").splitlines():
            if '"service started"' in line:
                return int(json.loads(line)["http_port"])
        raise RuntimeError(f"{sid} has not logged its start")

    def stop(self, sids: list[str] | None = None) -> None:
        chosen = {sid: p for sid, p in self.procs.items() if sids is None or sid in sids}
        for proc in chosen.values():
            if proc.poll() is None:
                proc.terminate()
        for sid, proc in chosen.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"{sid} did not stop within 15 s of SIGTERM: killed")
                proc.kill()
                proc.wait()
            del self.procs[sid]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def sim_calls(session: aiohttp.ClientSession, url: str) -> Counter[str]:
    """The simulator's BCE call counter by api (a non-OK reply code is appended: `api[Code]`)."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    calls: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cce_sim_calls_total":
                code = s.labels["code"]
                calls[s.labels["api"] + ("" if code == "OK" else f"[{code}]")] += int(s.value)
    return calls


async def served(session: aiohttp.ClientSession, port: int, endpoint: str) -> tuple[int, float]:
    """(requests served, seconds spent serving them) for one bus endpoint of a service, from its /metrics."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    count, total = 0, 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("endpoint") != endpoint:
                continue
            if s.name == "cce_bus_request_seconds_count":
                count += int(s.value)
            elif s.name == "cce_bus_request_seconds_sum":
                total += s.value
    return count, total
