"""Proof under faults: pod churn on the local stack while a seeded fault schedule kills, freezes and disturbs it,
with an invariant checker reading the truth from the records, the cloud, the kernels and the CNI results."""

from cce_net.chaos.invariants import LivePod, Truth, Violation, settled_violations
from cce_net.chaos.run import Chaos, ChaosConfig, Report, render
from cce_net.chaos.schedule import fault_kinds, format_schedule, make_schedule

__all__ = ["Chaos", "ChaosConfig", "LivePod", "Report", "Truth", "Violation", "fault_kinds", "format_schedule",
           "make_schedule", "render", "settled_violations"]
