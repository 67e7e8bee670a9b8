"""Clients of the simulator's admin API: `SimAdmin` (asyncio, aiohttp) and `SimAdminSync` (urllib, for the CLI).

Both return the JSON the simulator answers (camelCase dicts) and raise `SimAdminError` carrying the simulator's
status, code and message on any non-2xx reply.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import aiohttp

from services.vpc_sim.faults import FailNext, FaultConfig


class SimAdminError(Exception):
    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"vpc_sim answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


def _error(status: int, raw: bytes) -> SimAdminError:
    try:
        data = json.loads(raw)
        return SimAdminError(status, str(data["code"]), str(data["message"]), str(data.get("requestId", "")))
    except (ValueError, KeyError, TypeError):
        return SimAdminError(status, "HTTP", raw.decode(errors="replace")[:500])


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class _Requests:
    """The admin calls as (method, path, body) triples, shared by both clients."""

    @staticmethod
    def instance(*, instance_type: str, cpus: int, memory_mib: int, zone: str, name: str | None,
                 instance_id: str | None, subnet_id: str | None, eni_quota: int | None,
                 primary_ip: str | None) -> dict[str, Any]:
        return _drop_none(instanceType=instance_type, cpus=cpus, memoryMiB=memory_mib, zone=zone, name=name,
                          instanceId=instance_id, subnetId=subnet_id, eniQuota=eni_quota, primaryIp=primary_ip)

    @staticmethod
    def settings(attach_delay_s: float | None, detach_delay_s: float | None, route_quota: int | None,
                 unattached_eni_ip_quota: int | None) -> dict[str, Any]:
        return _drop_none(attachDelayS=attach_delay_s, detachDelayS=detach_delay_s, routeQuota=route_quota,
                          unattachedEniIpQuota=unattached_eni_ip_quota)


class SimAdmin:
    """Async admin client. Use as `async with SimAdmin(url) as admin:` or call `close()` when done."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def __aenter__(self) -> SimAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(method, self.url + path, json=body, headers=self._headers) as resp:
            raw = await resp.read()
            if resp.status // 100 != 2:
                raise _error(resp.status, raw)
            return json.loads(raw) if raw else {}

    async def info(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/admin/info"))

    async def create_instance(self, *, instance_type: str = "BCC", cpus: int = 4, memory_mib: int = 8192,
                              zone: str = "zoneA", name: str | None = None, instance_id: str | None = None,
                              subnet_id: str | None = None, eni_quota: int | None = None,
                              primary_ip: str | None = None) -> dict[str, Any]:
        body = _Requests.instance(instance_type=instance_type, cpus=cpus, memory_mib=memory_mib, zone=zone,
                                  name=name, instance_id=instance_id, subnet_id=subnet_id, eni_quota=eni_quota,
                                  primary_ip=primary_ip)
        return dict(await self.request("POST", "/admin/instances", body))

    async def delete_instance(self, instance_id: str, force: bool = False) -> None:
        await self.request("DELETE", f"/admin/instances/{instance_id}" + ("?force=true" if force else ""))

    async def create_subnet(self, *, zone: str, cidr: str, name: str | None = None,
                            subnet_id: str | None = None) -> dict[str, Any]:
        body = _drop_none(zone=zone, cidr=cidr, name=name, subnetId=subnet_id)
        return dict(await self.request("POST", "/admin/subnets", body))

    async def reserve(self, subnet_id: str, *, cidr: str | None = None,
                      ips: list[str] | None = None) -> dict[str, Any]:
        return dict(await self.request("POST", f"/admin/subnets/{subnet_id}/reservations",
                                       _drop_none(cidr=cidr, ips=ips)))

    async def create_route_table(self, route_table_id: str | None = None) -> dict[str, Any]:
        return dict(await self.request("POST", "/admin/route-tables", _drop_none(routeTableId=route_table_id)))

    async def get_faults(self) -> FaultConfig:
        return FaultConfig.model_validate(await self.request("GET", "/admin/faults"))

    async def set_faults(self, config: FaultConfig) -> FaultConfig:
        return FaultConfig.model_validate(await self.request("PUT", "/admin/faults", config.model_dump(mode="json")))

    async def fail_next(self, api: str, count: int = 1, code: str = "InternalError",
                        status: int = 500, body: str | None = None) -> FaultConfig:
        """`body`: answer exactly this (a malformed reply) instead of the coded error."""
        entry = FailNext(api=api, count=count, code=code, status=status, body=body)
        return FaultConfig.model_validate(await self.request("POST", "/admin/faults/fail-next",
                                                             entry.model_dump(mode="json")))

    async def clear_faults(self) -> None:
        await self.request("DELETE", "/admin/faults")

    async def get_settings(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/admin/settings"))

    async def set_settings(self, *, attach_delay_s: float | None = None, detach_delay_s: float | None = None,
                           route_quota: int | None = None,
                           unattached_eni_ip_quota: int | None = None) -> dict[str, Any]:
        body = _Requests.settings(attach_delay_s, detach_delay_s, route_quota, unattached_eni_ip_quota)
        return dict(await self.request("PUT", "/admin/settings", body))


class SimAdminSync:
    """The same calls, blocking, over urllib (no event loop needed)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.token = token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self._headers, **({"Content-Type": "application/json"} if data else {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            with err:
                raise _error(err.code, err.read()) from None
        return json.loads(raw) if raw else {}

    def info(self) -> dict[str, Any]:
        return dict(self.request("GET", "/admin/info"))

    def create_instance(self, *, instance_type: str = "BCC", cpus: int = 4, memory_mib: int = 8192,
                        zone: str = "zoneA", name: str | None = None, instance_id: str | None = None,
                        subnet_id: str | None = None, eni_quota: int | None = None,
                        primary_ip: str | None = None) -> dict[str, Any]:
        body = _Requests.instance(instance_type=instance_type, cpus=cpus, memory_mib=memory_mib, zone=zone,
                                  name=name, instance_id=instance_id, subnet_id=subnet_id, eni_quota=eni_quota,
                                  primary_ip=primary_ip)
        return dict(self.request("POST", "/admin/instances", body))

    def delete_instance(self, instance_id: str, force: bool = False) -> None:
        self.request("DELETE", f"/admin/instances/{instance_id}" + ("?force=true" if force else ""))

    def create_subnet(self, *, zone: str, cidr: str, name: str | None = None,
                      subnet_id: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", "/admin/subnets", _drop_none(zone=zone, cidr=cidr, name=name,
                                                                      subnetId=subnet_id)))

    def reserve(self, subnet_id: str, *, cidr: str | None = None, ips: list[str] | None = None) -> dict[str, Any]:
        return dict(self.request("POST", f"/admin/subnets/{subnet_id}/reservations", _drop_none(cidr=cidr, ips=ips)))

    def create_route_table(self, route_table_id: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", "/admin/route-tables", _drop_none(routeTableId=route_table_id)))

    def get_faults(self) -> FaultConfig:
        return FaultConfig.model_validate(self.request("GET", "/admin/faults"))

    def set_faults(self, config: FaultConfig) -> FaultConfig:
        return FaultConfig.model_validate(self.request("PUT", "/admin/faults", config.model_dump(mode="json")))

    def fail_next(self, api: str, count: int = 1, code: str = "InternalError", status: int = 500) -> FaultConfig:
        entry = FailNext(api=api, count=count, code=code, status=status)
        return FaultConfig.model_validate(self.request("POST", "/admin/faults/fail-next",
                                                       entry.model_dump(mode="json")))

    def clear_faults(self) -> None:
        self.request("DELETE", "/admin/faults")

    def get_settings(self) -> dict[str, Any]:
        return dict(self.request("GET", "/admin/settings"))

    def set_settings(self, *, attach_delay_s: float | None = None, detach_delay_s: float | None = None,
                     route_quota: int | None = None, unattached_eni_ip_quota: int | None = None) -> dict[str, Any]:
        body = _Requests.settings(attach_delay_s, detach_delay_s, route_quota, unattached_eni_ip_quota)
        return dict(self.request("PUT", "/admin/settings", body))
