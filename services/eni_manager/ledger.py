"""The records eni_manager alone writes (ENIs, provision, subnets), as the leader sees them.

The leader loads each bucket when it is elected and then updates its view with every write it makes, so a plan
never runs on a view that lags the leader's own last write (a watch could).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from chassis.kv import Store
from schemas.base import Contract, subject_token
from schemas.records import Eni, EniProvision, Subnet

T = TypeVar("T", bound=Contract)


class Owned(Generic[T]):
    """One bucket this service is the only writer of."""

    def __init__(self, store: Store[T]) -> None:
        self.store = store
        self.items: dict[str, T] = {}

    async def load(self) -> None:
        self.items = {key: item.value for key, item in (await self.store.list()).items()}

    def get(self, key: str) -> T | None:
        return self.items.get(key)

    def values(self) -> list[T]:
        return list(self.items.values())

    async def put(self, key: str, value: T) -> None:
        await self.store.mutate(key, lambda _current: value)
        self.items[key] = value

    async def drop(self, key: str) -> None:
        await self.store.delete(key)
        self.items.pop(key, None)


class EniRecords(Owned[Eni]):
    """The ENI records, with the ENI each secondary IP is on by them (the cloud has an IP on one ENI at a time:
    `holder` finds a record that still lists an IP the cloud has since put on another ENI) and each node's ENIs
    (a node's round reads its own without a pass over the cluster's)."""

    def __init__(self, store: Store[Eni]) -> None:
        super().__init__(store)
        self._by_ip: dict[str, str] = {}  # by the address's text, as pools key IPs (a lookup parses nothing)
        self._by_node: dict[str, set[str]] = {}

    async def load(self) -> None:
        await super().load()
        self._by_ip = {str(ip): eni.eni_id for eni in self.items.values() for ip in eni.secondary_ips}
        self._by_node = {}
        for eni in self.items.values():
            self._by_node.setdefault(eni.node, set()).add(eni.eni_id)

    def holder(self, ip: IPv4Address) -> Eni | None:
        eni_id = self._by_ip.get(str(ip))
        return self.items.get(eni_id) if eni_id is not None else None

    def carries(self, ip: str) -> bool:
        """Some record lists the address (given as text, as pools key it)."""
        return ip in self._by_ip

    def of_node(self, node: str) -> list[Eni]:
        return [self.items[eni_id] for eni_id in self._by_node.get(node, ())]

    async def put(self, key: str, value: Eni) -> None:
        before = self.items.get(key)
        await super().put(key, value)
        self._forget(key, before)
        self._by_ip.update((str(ip), key) for ip in value.secondary_ips)
        self._by_node.setdefault(value.node, set()).add(key)

    async def drop(self, key: str) -> None:
        before = self.items.get(key)
        await super().drop(key)
        self._forget(key, before)

    def _forget(self, key: str, before: Eni | None) -> None:
        if before is None:
            return
        for ip in before.secondary_ips:
            if self._by_ip.get(text := str(ip)) == key:
                del self._by_ip[text]
        ids = self._by_node.get(before.node)
        if ids is not None:
            ids.discard(key)
            if not ids:
                del self._by_node[before.node]


@dataclass
class Ledger:
    enis: EniRecords
    provision: Owned[EniProvision]
    subnets: Owned[Subnet]
    moving: set[str] = field(default_factory=set)  # fixed IPs an assignment is moving between ENIs right now

    async def load(self) -> None:
        await self.enis.load()
        await self.provision.load()
        await self.subnets.load()

    def enis_of(self, node: str) -> list[Eni]:
        return sorted(self.enis.of_node(node), key=lambda e: (e.index, e.eni_id))

    def provision_of(self, node: str) -> EniProvision | None:
        return self.provision.get(subject_token(node))

    async def put_provision(self, record: EniProvision) -> None:
        await self.provision.put(subject_token(record.node), record)

    async def drop_provision(self, node: str) -> None:
        await self.provision.drop(subject_token(node))

    def nodes(self) -> set[str]:
        """Every node some record of ours names."""
        return {e.node for e in self.enis.values()} | {p.node for p in self.provision.values()}
