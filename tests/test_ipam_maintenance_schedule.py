"""Unit tier (pure scheduling, no bus): how ipam's maintenance loop orders its work. A full pass over every node
is followed by a rest of at least twice its length, and nodes that change while it runs are reconciled between its
nodes, not after it. The reconciliation itself is replaced by a recorder that takes a set time per node (the
service tests in test_ipam_service.py run the real one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from services.ipam.maintenance import FULL_PASS_REST, Maintenance

PER_NODE_S = 0.02


class Recorded(Maintenance):
    def __init__(self, nodes: list[str], period_s: float) -> None:
        state = SimpleNamespace(listeners=[], known_nodes=lambda: set(nodes))
        settings = SimpleNamespace(maintenance_period_s=period_s, maintenance_coalesce_s=0.0)
        super().__init__(SimpleNamespace(state=state, settings=settings), None, SimpleNamespace(is_leader=True))  # type: ignore[arg-type]
        self.calls: list[tuple[str, float]] = []
        self.on_call: Any = None

    async def reconcile(self, node: str) -> None:
        loop = asyncio.get_running_loop()
        self.calls.append((node, loop.time()))
        if self.on_call is not None:
            self.on_call(node)
        await asyncio.sleep(PER_NODE_S)


async def test_a_full_pass_rests_twice_its_length_and_changes_during_it_go_first() -> None:
    nodes = [f"node-{i:02d}" for i in range(10)]
    m = Recorded(nodes, period_s=0.01)
    m.on_call = lambda node: m.poke("changed") if node == "node-02" and len(m.calls) < 5 else None
    task = asyncio.create_task(m.run())
    try:
        while sum(1 for node, _ in m.calls if node == "node-09") < 2:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    order = [node for node, _ in m.calls]
    first = order[:order.index("node-09") + 1]
    # the node that changed during the first pass is done right after the node being reconciled when it changed
    assert first == [*nodes[:3], "changed", *nodes[3:]]
    ends = [t for node, t in m.calls if node == "node-09"]
    starts = [t for node, t in m.calls if node == "node-00"]
    took = ends[0] + PER_NODE_S - starts[0]
    assert starts[1] - (ends[0] + PER_NODE_S) >= FULL_PASS_REST * took * 0.99
