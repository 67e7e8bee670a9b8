"""The subnet mirror: `list_subnets(vpc_id)` into SUBNETS records, refreshed on a period and when one runs dry."""

from __future__ import annotations

import asyncio

from chassis.logs import get_logger
from cloud.port import VpcApi
from schemas.base import utcnow
from schemas.errors import CceError, ErrorReason
from schemas.records import Subnet
from services.eni_manager.ledger import Owned
from services.eni_manager.mirror import differs, subnet_from_cloud

log = get_logger("eni_manager.subnets")


class SubnetMirror:
    def __init__(self, api: VpcApi, owned: Owned[Subnet]) -> None:
        self.api = api
        self.owned = owned
        self._took = asyncio.Lock()  # one count at a time: two rounds taking from one subnet both count

    @property
    def items(self) -> dict[str, Subnet]:
        return self.owned.items

    async def sync(self, vpc_id: str) -> None:
        """Mirror every subnet of the VPC; subnets gone from the cloud leave the mirror."""
        now = utcnow()
        seen: set[str] = set()
        for cloud in await self.api.list_subnets(vpc_id=vpc_id):
            seen.add(cloud.subnet_id)
            await self._put(subnet_from_cloud(cloud, now, self.owned.get(cloud.subnet_id)))
        for gone in [key for key, s in self.owned.items.items() if s.vpc_id == vpc_id and key not in seen]:
            log.info("subnet left the VPC", subnet_id=gone)
            await self.owned.drop(gone)

    async def get(self, subnet_id: str) -> Subnet:
        """The mirrored subnet, fetched from the cloud when not mirrored yet."""
        return self.owned.get(subnet_id) or await self.refresh(subnet_id)

    async def refresh(self, subnet_id: str) -> Subnet:
        cloud = await self.api.get_subnet(subnet_id)
        record = subnet_from_cloud(cloud, utcnow(), self.owned.get(subnet_id))
        await self._put(record)
        return record

    async def refresh_quietly(self, subnet_id: str) -> None:
        """Refresh after the cloud said the subnet is full; a failure here only leaves the mirror stale."""
        try:
            await self.refresh(subnet_id)
        except CceError as err:
            if err.reason is ErrorReason.CLOUD_NOT_FOUND:
                await self.owned.drop(subnet_id)
            log.warning("subnet refresh failed", subnet_id=subnet_id, error=str(err))

    async def took(self, subnet_id: str, count: int) -> None:
        """Our own call took `count` addresses (negative: gave them back): the mirror follows at once, so the
        next plan does not ask for addresses that are gone; the periodic sync corrects any drift."""
        async with self._took:
            record = self.owned.get(subnet_id)
            if record is not None and count:
                await self.owned.put(subnet_id, record.model_copy(
                    update={"available_ips": max(record.available_ips - count, 0)}))

    async def _put(self, record: Subnet) -> None:
        previous = self.owned.get(record.subnet_id)
        if differs(previous, record) or previous is None:
            await self.owned.put(record.subnet_id, record)
