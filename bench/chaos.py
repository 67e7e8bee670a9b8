"""Chaos run: pod ADD/DEL churn on the local stack under a seeded fault schedule, checked by the invariant checker.

    .venv/bin/python bench/chaos.py --ops 20000 --nodes 50              # control plane (no fabric)
    sudo .venv/bin/python bench/chaos.py --fabric --ops 2000 --nodes 4   # root: fabric, node services, pings

Prints the fault schedule first (replay a run with its --seed), then a one-screen report; exits 1 on any invariant
violation."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cce_net.chaos import Chaos, ChaosConfig, fault_kinds, render


def parse(argv: list[str]) -> ChaosConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=500, help="pod ADD/DEL operations")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (random when not given)")
    p.add_argument("--fabric", action="store_true", help="root: the simulator's fabric, node services, real CNI")
    p.add_argument("--mode", default="vpc-eni")
    p.add_argument("--pods-per-node", type=int, default=8, help="live pods per node at most")
    p.add_argument("--settle", type=float, default=180.0, help="seconds the system gets to converge after faults")
    p.add_argument("--faults", default="", help=f"comma-separated kinds to use (default all: "
                                                f"{', '.join(fault_kinds(True))})")
    p.add_argument("--state-dir", type=Path, default=None, help="where the stack runs (a temporary dir)")
    a = p.parse_args(argv)
    only = tuple(k for k in a.faults.split(",") if k)
    unknown = set(only) - set(fault_kinds(a.fabric))
    if unknown:
        p.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 10**6)
    state_dir = a.state_dir or Path(tempfile.mkdtemp(prefix="cce-chaos-"))
    return ChaosConfig(state_dir=state_dir, ops=a.ops, nodes=a.nodes, concurrency=a.concurrency, seed=seed,
                       fabric=a.fabric, mode=a.mode, pods_per_node=a.pods_per_node, settle_s=a.settle, only=only)


def main(argv: list[str]) -> int:
    config = parse(argv)
    print(f"state dir: {config.state_dir}", flush=True)
    report = asyncio.run(Chaos(config, say=lambda line: print(line, flush=True)).run())
    print(render(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
