"""The fault schedule of a chaos run: pure, seeded, printed before the run so a failing run can be replayed with
the same `--seed` (faults are keyed to operation numbers, not to wall time)."""

from __future__ import annotations

import random
from dataclasses import dataclass

# what every run can do to the control plane and the cloud
CONTROL_FAULTS = (
    "kill-ipam",          # SIGKILL an ipam replica
    "kill-eni-leader",    # SIGKILL the eni_manager leader (with cloud latency on, usually mid-call)
    "kill-eni-standby",   # SIGKILL an eni_manager standby
    "kill-route-leader",  # SIGKILL the route_manager leader
    "kill-sim",           # SIGKILL the simulated cloud (its state file survives)
    "stop-eni-leader",    # SIGSTOP the eni_manager leader for hold_s, then SIGCONT (frozen, not dead)
    "stop-ipam",          # SIGSTOP an ipam replica for hold_s
    "nats-restart",       # stop and start the nats-server
    "cloud-errors",       # the cloud fails a share of mutating calls for hold_s
    "cloud-throttle",     # the cloud rate-limits mutating calls for hold_s
    "detach-eni",         # an ENI of ours detached in the cloud behind our back
    "remove-ip",          # a free pool IP removed from its ENI in the cloud behind our back
)
# with the fabric: the node services too
NODE_FAULTS = (
    "kill-datapath",      # SIGKILL a node_datapath (ADDs are in flight: usually mid-setup)
    "kill-gateway",       # SIGKILL a cni_gateway
)
OPS_PER_FAULT = 200


@dataclass(frozen=True)
class Fault:
    at_op: int  # done when this many operations have been started
    kind: str
    pick: int  # which target among the candidates at that moment (taken modulo their number)
    hold_s: float  # SIGSTOP, cloud errors and throttling last this long

    def line(self) -> str:
        hold = f" hold={self.hold_s:.1f}s" if self.kind in HELD else ""
        return f"op {self.at_op:>6}  {self.kind:<18} pick={self.pick}{hold}"


HELD = frozenset({"stop-eni-leader", "stop-ipam", "cloud-errors", "cloud-throttle"})


def fault_kinds(fabric: bool) -> tuple[str, ...]:
    return CONTROL_FAULTS + (NODE_FAULTS if fabric else ())


def make_schedule(seed: int, ops: int, fabric: bool, only: tuple[str, ...] = ()) -> list[Fault]:
    """Every kind at least once, then one more fault per OPS_PER_FAULT operations, at random moments in the
    first 85% of the run (the rest is churn without faults before the settle)."""
    rng = random.Random(f"chaos:{seed}")
    kinds = list(only or fault_kinds(fabric))
    count = max(len(kinds), ops // OPS_PER_FAULT)
    chosen = kinds + [rng.choice(kinds) for _ in range(count - len(kinds))]
    last = max(1, int(ops * 0.85))
    moments = sorted(rng.randint(1, last) for _ in chosen)
    rng.shuffle(chosen)
    return [Fault(at, kind, rng.randrange(1 << 16), round(rng.uniform(1.0, 4.0), 1))
            for at, kind in zip(moments, chosen, strict=True)]


def format_schedule(seed: int, faults: list[Fault]) -> str:
    head = f"fault schedule (seed {seed}, {len(faults)} faults; replay with --seed {seed}):"
    return "\n".join([head, *(f"  {f.line()}" for f in faults)])
