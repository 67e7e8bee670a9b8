"""Unit tier, property: the cluster CIDR pool never hands one CIDR to two nodes.

Several allocator replicas (a leader, a deposed leader with a stale view, a freshly restarted one) share one
compare-and-set store (an in-memory stand-in with the JetStream KV semantics the chassis Store has: create fails
when the key exists, update/delete fail on a stale revision). Hypothesis interleaves allocations (also two at once
on different replicas, yielding between the read and the write), state changes, releases from stale views and
restarts. The model is the set of allocations handed out and not given back; the store must equal it after
every step, and no allocation may return a CIDR the model holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chassis.kv import Versioned, conflict
from schemas.errors import CceError, ErrorReason
from schemas.records import NodeCidr, NodeCidrState
from schemas.subjects import cidr_key
from services.route_manager.allocator import CidrAllocator

BLOCKS = [IPv4Network("172.16.0.0/26"), IPv4Network("172.17.0.0/27")]  # 4 + 2 node CIDRs of /28
MASK = 28
NODES = ["node-a", "node-b", "node-c"]
REPLICAS = 3


class FakeCasStore:
    """In-memory KV with compare-and-set on revisions; yields to the loop before every write so concurrent
    allocations interleave between their read and their write."""

    def __init__(self) -> None:
        self.items: dict[str, Versioned[NodeCidr]] = {}
        self.revision = 0

    def _next(self) -> int:
        self.revision += 1
        return self.revision

    async def get(self, key: str) -> Versioned[NodeCidr] | None:
        return self.items.get(key)

    async def create(self, key: str, value: NodeCidr) -> Versioned[NodeCidr]:
        await asyncio.sleep(0)
        if key in self.items:
            raise conflict("fake", key, "(exists)")
        item = self.items[key] = Versioned(key, value, self._next())
        return item

    async def update(self, key: str, value: NodeCidr, revision: int) -> Versioned[NodeCidr]:
        await asyncio.sleep(0)
        current = self.items.get(key)
        if current is None or current.revision != revision:
            raise conflict("fake", key)
        item = self.items[key] = Versioned(key, value, self._next())
        return item

    async def delete(self, key: str, revision: int | None = None) -> None:
        await asyncio.sleep(0)
        current = self.items.get(key)
        if current is None:
            return
        if revision is not None and current.revision != revision:
            raise conflict("fake", key)
        del self.items[key]

    async def list(self, prefix: str = "") -> dict[str, Versioned[NodeCidr]]:
        return dict(self.items)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = FakeCasStore()
        self.replicas = [CidrAllocator(self.store, BLOCKS, MASK) for _ in range(REPLICAS)]
        self.live: dict[IPv4Network, tuple[str, datetime]] = {}  # the model: handed out, not given back
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.requests = 0

    def _now(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def _handed(self, record: NodeCidr) -> None:
        held = self.live.get(record.cidr)
        assert held is None or held == (record.node, record.allocated_at), (
            f"{record.cidr} handed to {record.node} while {held} holds it")
        self.live[record.cidr] = (record.node, record.allocated_at)

    async def _allocate(self, replica: int, node: str) -> NodeCidr | None:
        self.requests += 1
        try:
            return await self.replicas[replica].allocate(node, f"req-{self.requests}", self._now())
        except CceError as err:
            reason = err.reason
        assert reason is ErrorReason.CIDR_POOL_EXHAUSTED
        assert len(self.store.items) == 6, "exhausted while the pool has room"
        return None

    @rule(replica=st.integers(0, REPLICAS - 1), node=st.sampled_from(NODES))
    def allocate(self, replica: int, node: str) -> None:
        record = asyncio.run(self._allocate(replica, node))
        if record is not None:
            self._handed(record)

    @rule(a=st.integers(0, REPLICAS - 1), b=st.integers(0, REPLICAS - 1), na=st.sampled_from(NODES),
          nb=st.sampled_from(NODES))
    def allocate_concurrently(self, a: int, b: int, na: str, nb: str) -> None:
        async def both() -> list[NodeCidr | None]:
            return list(await asyncio.gather(self._allocate(a, na), self._allocate(b, nb)))

        got = [r for r in asyncio.run(both()) if r is not None]
        if len(got) == 2:
            assert got[0].cidr != got[1].cidr
        for record in got:
            self._handed(record)

    @precondition(lambda self: any(r.items for r in self.replicas))
    @rule(replica=st.integers(0, REPLICAS - 1), pick=st.integers(0, 100))
    def release_from_a_possibly_stale_view(self, replica: int, pick: int) -> None:
        alloc = self.replicas[replica]
        if not alloc.items:
            return
        key = sorted(alloc.items)[pick % len(alloc.items)]
        seen = alloc.items[key]
        released = asyncio.run(alloc.release(seen.value.cidr))
        if released:
            # only the very record this replica saw may be deleted
            assert self.live.get(seen.value.cidr) in (None, (seen.value.node, seen.value.allocated_at))
            self.live.pop(seen.value.cidr, None)

    @precondition(lambda self: any(r.items for r in self.replicas))
    @rule(replica=st.integers(0, REPLICAS - 1), pick=st.integers(0, 100),
          state=st.sampled_from(list(NodeCidrState)))
    def change_state(self, replica: int, pick: int, state: NodeCidrState) -> None:
        alloc = self.replicas[replica]
        if alloc.items:
            key = sorted(alloc.items)[pick % len(alloc.items)]
            asyncio.run(alloc.set_state(alloc.items[key].value.cidr, state, self._now()))

    @rule(replica=st.integers(0, REPLICAS - 1))
    def restart(self, replica: int) -> None:
        alloc = CidrAllocator(self.store, BLOCKS, MASK)
        asyncio.run(alloc.load())
        self.replicas[replica] = alloc

    @invariant()
    def the_store_holds_exactly_what_was_handed_out(self) -> None:
        truth = {v.value.cidr: (v.value.node, v.value.allocated_at) for v in self.store.items.values()}
        assert truth == self.live
        assert all(key == cidr_key(v.value.cidr) for key, v in self.store.items.items())

    @invariant()
    def every_cidr_is_a_node_sized_piece_of_a_block(self) -> None:
        for cidr in self.live:
            assert cidr.prefixlen == MASK and any(cidr.subnet_of(b) for b in BLOCKS)


PoolMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestCidrPoolNeverHandsOneCidrToTwoNodes = PoolMachine.TestCase
