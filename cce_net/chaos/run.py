"""A chaos run: the local stack up (control plane only, or with the simulator's fabric and the node services),
pod churn by kubelet-like drivers while the seeded fault schedule is done to it, the invariants sampled during
the churn and checked once it settled, and a one-screen report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cce_net.chaos.churn import BusDriver, CallFailed, CniDriver, Driver, EventTrail, Ledger, PodSlot
from cce_net.chaos.faults import FaultRunner
from cce_net.chaos.invariants import LivePod, Truth, Violation, duplicate_endpoint_ips, settled_violations
from cce_net.chaos.schedule import Fault, format_schedule, make_schedule
from cce_net.chaos.truth import read_bucket, read_truth
from cce_net.stack import LocalStack, _healthy
from chassis.bus import Bus
from schemas.subjects import ENDPOINTS

GC_PERIOD_S = 5.0  # ipam's orphan grace in a chaos run; the settle waits at least two of them
RUN_ENV = {
    "CCE_ORPHAN_GRACE_S": str(GC_PERIOD_S), "CCE_RESYNC_PERIOD_S": "5", "CCE_LEASE_TTL_S": "3",
    "CCE_CLOUD_BACKOFF_BASE_S": "0.05", "CCE_CLOUD_BACKOFF_MAX_S": "1", "CCE_RETRY_BACKOFF_S": "0.2",
    "CCE_DATAPATH_RESYNC_PERIOD_S": "3", "CCE_DATAPATH_GC_GRACE_S": str(GC_PERIOD_S),
}
POOL = {"cooldown_s": 2.0, "release_delay_s": 2.0}


@dataclass
class ChaosConfig:
    state_dir: Path
    ops: int = 500
    nodes: int = 4
    concurrency: int = 8
    seed: int = 1
    fabric: bool = False
    mode: str = "vpc-eni"
    pods_per_node: int = 8
    settle_s: float = 180.0
    only: tuple[str, ...] = ()  # fault kinds to use (all when empty)
    sample_s: float = 1.0


@dataclass
class Report:
    config: ChaosConfig
    schedule: list[Fault]
    ledger: Ledger
    runner: FaultRunner | None = None
    violations: list[Violation] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    churn_s: float = 0.0
    converge_s: float | None = None
    samples: int = 0
    events: int = 0
    pings: tuple[int, int] = (0, 0)  # ok, tried

    @property
    def ok(self) -> bool:
        return not self.violations


class Chaos:
    def __init__(self, config: ChaosConfig, say: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.say = say
        self.schedule = make_schedule(config.seed, config.ops, config.fabric, config.only)
        self.ledger = Ledger()
        self.stack = LocalStack(config.state_dir, nodes=config.nodes, mode=config.mode, pool=dict(POOL),
                                say=lambda line: None)
        self.report = Report(config, self.schedule, self.ledger)
        self.trail = EventTrail(self.ledger.is_live_key)
        self.sampled: list[Violation] = []
        self.bus: Bus | None = None
        self._env_before: dict[str, str | None] = {}

    # ---- up and down ---------------------------------------------------------------------------------------------

    async def up(self) -> None:
        """The stack's processes take the run's settings from the environment (put back as it was on `down`)."""
        env = {**RUN_ENV, "CCE_SIM_FABRIC": "auto" if self.cfg.fabric else "off",
               "CCE_SIM_FABRIC_PREFIX": os.environ.get("CCE_SIM_FABRIC_PREFIX", f"chaos{os.getpid() % 10**5}")}
        self._env_before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        await asyncio.to_thread(self.stack.start, 120.0)
        if self.cfg.fabric and self.stack.node_services_off:
            raise RuntimeError(f"--fabric needs the node services: {self.stack.node_services_off}")
        assert self.stack.access is not None
        self.bus = await Bus.connect(self.stack.access.settings(), name="chaos")
        await self.trail.start(self.bus)

    async def down(self) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.trail.stop()
                await self.bus.close()
        await asyncio.to_thread(self.stack.stop)
        if self.cfg.fabric:
            from cce_net.pods import remove_all
            from cce_net.stack import _teardown_fabric

            await asyncio.to_thread(remove_all, self.cfg.state_dir)
            await asyncio.to_thread(_teardown_fabric, self.stack.fabric_prefix, self.say)  # runs its own loop
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    # ---- the run -------------------------------------------------------------------------------------------------

    async def run(self) -> Report:
        self.say(format_schedule(self.cfg.seed, self.schedule))
        await self.up()
        try:
            assert self.bus is not None
            self.report.runner = FaultRunner(self.stack, self.bus, self.stack.sim_token)
            await self.report.runner.apply_cloud()
            driver: Driver = CniDriver(self.cfg.state_dir) if self.cfg.fabric else BusDriver(self.bus)
            watchers = [asyncio.create_task(self.supervise()), asyncio.create_task(self.sample())]
            started = time.monotonic()
            await asyncio.gather(*(self.worker(driver) for _ in range(self.cfg.concurrency)))
            self.report.churn_s = time.monotonic() - started
            await self.report.runner.calm()
            calm_at = time.monotonic()
            await self.settle(calm_at)
            for task in watchers:
                task.cancel()
            if self.cfg.fabric:
                await self.ping()
        finally:
            self.report.events = self.trail.seen
            await self.down()
        return self.report

    async def worker(self, driver: Driver) -> None:
        runner = self.report.runner
        assert runner is not None
        while self.ledger.ops_started < self.cfg.ops:
            n = self.ledger.ops_started
            self.ledger.ops_started += 1
            while self.schedule and self.schedule[0].at_op <= n:
                runner._spawn(runner.fire(self.schedule.pop(0)))
            rng = random.Random(f"{self.cfg.seed}:op:{n}")
            free = sorted(name for name in self.ledger.live if name not in self.ledger.busy)
            full = len(self.ledger.live) >= self.cfg.nodes * self.cfg.pods_per_node
            if free and (full or rng.random() < 0.45):
                name = rng.choice(free)
                pod = self.ledger.live.pop(name)
                await self.delete(driver, PodSlot(name, pod.node))
            else:
                await self.add(driver, PodSlot(f"p{n}", f"node-{rng.randint(1, self.cfg.nodes)}"))

    async def add(self, driver: Driver, slot: PodSlot) -> None:
        self.ledger.busy.add(slot.name)
        started = time.monotonic()
        try:
            pod = await driver.add(slot)
        except CallFailed as failed:
            self.ledger.record("ADD", failed.outcome, time.monotonic() - started, driver.deadline_s, str(failed))
            await self.delete(driver, slot)  # the runtime cleans up a failed ADD
            return
        finally:
            self.ledger.busy.discard(slot.name)
        self.ledger.record("ADD", "ok", time.monotonic() - started, driver.deadline_s)
        self.ledger.took(pod)
        self.ledger.live[slot.name] = pod

    async def delete(self, driver: Driver, slot: PodSlot, give_up_s: float = 180.0) -> None:
        """As kubelet does: DEL again until it succeeds."""
        self.ledger.busy.add(slot.name)
        first = time.monotonic()
        try:
            while True:
                started = time.monotonic()
                try:
                    await driver.delete(slot)
                    self.ledger.record("DEL", "ok", time.monotonic() - started, driver.deadline_s)
                    return
                except CallFailed as failed:
                    self.ledger.record("DEL", failed.outcome, time.monotonic() - started, driver.deadline_s,
                                       str(failed))
                if time.monotonic() - first > give_up_s:
                    self.ledger.violations.append(Violation("del-never-succeeded", f"DEL of {slot.node}/{slot.name} "
                                                            f"failed for {give_up_s:.0f}s"))
                    return
                await asyncio.sleep(0.5)
        finally:
            self.ledger.busy.discard(slot.name)

    # ---- watchers ------------------------------------------------------------------------------------------------

    async def supervise(self) -> None:
        """The stack's supervisor (restarts the dead), noting every exit the run did not cause: a crash."""
        runner = self.report.runner
        assert runner is not None
        while True:
            for proc in self.stack.procs:
                pid = proc.popen.pid if proc.popen else None
                if pid and not proc.alive and pid not in runner.killed:
                    runner.killed.add(pid)
                    rc = proc.popen.returncode if proc.popen else None
                    self.report.crashes.append(f"{proc.id} exited by itself (rc={rc}); log {proc.log}")
            self.stack.supervise_once()
            await asyncio.sleep(0.2)

    async def sample(self) -> None:
        """Every `sample_s`: the endpoint records, no two with one IP (a read that fails, e.g. while nats-server
        restarts, is skipped)."""
        assert self.bus is not None
        while True:
            await asyncio.sleep(self.cfg.sample_s)
            try:
                endpoints = await asyncio.wait_for(read_bucket(self.bus, ENDPOINTS), 10)
            except Exception:
                continue
            self.report.samples += 1
            seen = {(v.invariant, v.ips) for v in self.sampled}
            self.sampled += [v for v in duplicate_endpoint_ips(endpoints) if (v.invariant, v.ips) not in seen]

    async def settle(self, calm_at: float) -> None:
        """After the faults: every service up and healthy, then the settled invariants until they hold (at least two
        GC periods, at most `settle_s`)."""
        assert self.bus is not None
        deadline = calm_at + self.cfg.settle_s
        while time.monotonic() < deadline and not all(p.alive and _healthy(p.http_port) for p in self.stack.procs):
            await asyncio.sleep(0.5)
        found: list[Violation] = []
        while time.monotonic() < deadline:
            try:
                found = settled_violations(await self.truth(), list(self.ledger.live.values()))
            except Exception as err:
                found = [Violation("unreadable", f"the truth could not be read: {err!r}")]
            if not found and time.monotonic() - calm_at >= 2 * GC_PERIOD_S:
                self.report.converge_s = time.monotonic() - calm_at
                break
            await asyncio.sleep(1.0)
        crashes = [Violation("service-crashed", c) for c in self.report.crashes]
        everything = [*self.ledger.violations, *self.trail.violations, *self.sampled, *crashes, *found]
        self.report.violations = [self.trail.explain(v) for v in everything]

    async def truth(self) -> Truth:
        assert self.bus is not None
        nodes = {n: info["netns"] for n, info in self.stack.node_info.items()} if self.cfg.fabric else None
        pods = [p.netns for p in self.ledger.live.values() if p.netns] if self.cfg.fabric else None
        return await read_truth(self.bus, self.stack.sim_url, self.stack.sim_token, nodes, pods)

    async def ping(self) -> None:
        """Every live pod pings the next one (a ring over all live pods, across nodes)."""
        pods = sorted(self.ledger.live.values(), key=lambda p: p.key)
        if len(pods) < 2:
            return
        sem = asyncio.Semaphore(8)

        async def one(src: LivePod, dst: LivePod) -> None:
            async with sem:
                done = await asyncio.to_thread(
                    subprocess.run, ["nsenter", f"--net=/run/netns/{src.netns}", "ping", "-c", "1", "-W", "2",
                                     dst.ip], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                self.report.violations.append(self.trail.explain(Violation(
                    "ping-failed", f"{src.key} ({src.ip}) cannot ping {dst.key} ({dst.ip})", (src.ip, dst.ip))))
            else:
                ok[0] += 1

        ok = [0]
        await asyncio.gather(*(one(p, pods[(i + 1) % len(pods)]) for i, p in enumerate(pods)))
        self.report.pings = (ok[0], len(pods))


def outcome_line(calls: Counter[tuple[str, str]], op: str) -> str:
    mine = {outcome: n for (o, outcome), n in calls.items() if o == op}
    ok = mine.pop("ok", 0)
    rest = ", ".join(f"{outcome} {n}" for outcome, n in sorted(mine.items(), key=lambda kv: -kv[1]))
    return f"{op:<4} calls: {ok + sum(mine.values())}  ok {ok}" + (f"  | failed: {rest}" if rest else "")


def render(report: Report, max_violations: int = 8) -> str:
    cfg, ledger, runner = report.config, report.ledger, report.runner
    lines = [
        f"chaos run  seed={cfg.seed}  ops={ledger.ops_started}  nodes={cfg.nodes}  mode={cfg.mode}  "
        f"{'fabric + node services' if cfg.fabric else 'control plane'}  concurrency={cfg.concurrency}",
        f"churn {report.churn_s:.0f}s ({ledger.ops_started / max(report.churn_s, 1e-9):.0f} ops/s); "
        f"live pods at the end {len(ledger.live)}; events seen {report.events}; KV samples {report.samples}",
    ]
    if runner is not None:
        injected = ", ".join(f"{k} {n}" for k, n in sorted(runner.injected.items()))
        lines.append(f"faults injected ({sum(runner.injected.values())}): {injected}")
        if runner.skipped:
            lines.append("  no target then: " + ", ".join(f"{k} {n}" for k, n in sorted(runner.skipped.items())))
    lines += [outcome_line(ledger.calls, "ADD"), outcome_line(ledger.calls, "DEL")]
    converge = f"{report.converge_s:.1f}s" if report.converge_s is not None else f"not within {cfg.settle_s:.0f}s"
    lines.append(f"converged after the faults stopped: {converge}")
    if cfg.fabric:
        lines.append(f"pings between live pods: {report.pings[0]}/{report.pings[1]} answered")
    by_kind = Counter(v.invariant for v in report.violations)
    lines.append(f"invariant violations: {len(report.violations)}"
                 + (" (" + ", ".join(f"{k} {n}" for k, n in by_kind.most_common()) + ")" if by_kind else ""))
    for v in report.violations[:max_violations]:
        lines.append(f"  [{v.invariant}] {v.detail}")
        lines += [f"      {t}" for t in v.trail[-4:]]
    if len(report.violations) > max_violations:
        lines.append(f"  ... and {len(report.violations) - max_violations} more")
    lines.append("RESULT: " + ("OK, 0 violations" if report.ok else "FAILED") + f"  (replay: --seed {cfg.seed})")
    return "\n".join(lines)
