"""`BceVpcApi`: the production `VpcApi` over the official bce-python-sdk.

Every call goes through `_call`: wait for the API's token bucket, run the synchronous SDK call in a thread, and on
failure classify it (`cloud.classify`) and retry retryable failures with full-jitter exponential back-off, bounded
by `max_attempts` and by `retry_budget_s` (the time one call may take, counted from its start). The SDK's own
retries are off. What is left raises `CceError` with the reason and details `api`, `cloud_code`, `status`,
`request_id`, `attempts` (plus the ids the call was about).

Mutations carry one client token per logical call, reused by every attempt, so a retry after a lost reply is
answered by the cloud from its idempotency record instead of acting twice. The primary-NIC IP calls of `BccClient`
take no token: after a lost reply they are only retried when the cloud said it did nothing (throttled).

Replies come from the SDK as objects whose attributes are the snake_case forms of BCE's camelCase keys
(`privateIpSet` -> `private_ip_set`); a missing key reads as None.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceError, BceHttpClientError, BceServerError
from baidubce.retry.retry_policy import NoRetryPolicy
from baidubce.services.bcc.bcc_client import BccClient
from baidubce.services.eni.eni_client import EniClient
from baidubce.services.eni.eni_model import EniIPSet
from baidubce.services.route.route_client import RouteClient
from baidubce.services.subnet.subnet_client import SubnetClient
from baidubce.services.vpc.vpc_client import VpcClient
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis import tracing
from chassis.config import read_secret
from chassis.logs import get_logger
from cloud.classify import Classified, classify
from cloud.limiter import RateLimits
from cloud.port import (
    MAX_IPS_PER_BATCH,
    CloudApi,
    CloudEni,
    CloudInstance,
    CloudPrivateIp,
    CloudRouteRule,
    CloudSubnet,
    CloudVpc,
)
from schemas.base import InstanceType
from schemas.errors import CceError, ErrorReason
from schemas.records import EniState

P = ParamSpec("P")
R = TypeVar("R")
log = get_logger("cloud.bce")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CALLS = Counter("cce_cloud_calls_total", "cloud calls (retries included) by final outcome: ok or the cloud code",
                ["api", "outcome"])
ERRORS = Counter("cce_cloud_errors_total", "failed cloud attempts by cloud code", ["api", "code"])
CALL_SECONDS = Histogram("cce_cloud_call_seconds", "time of one SDK attempt", ["api"], buckets=_LATENCY_BUCKETS)
LIMITER_WAIT = Histogram("cce_cloud_limiter_wait_seconds", "time held by our rate limiter", ["api"],
                         buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
RETRIES = Counter("cce_cloud_retries_total", "cloud attempts retried after a retryable failure", ["api"])
THROTTLED = Counter("cce_cloud_throttled_total", "cloud attempts the cloud refused as over its rate limit", ["api"])
RATE_LIMIT = Gauge("cce_cloud_rate_limit_per_second", "our client-side budget per API: calls per second the token "
                   "bucket allows (its burst aside)", ["api"])

Sleep = Callable[[float], Awaitable[None]]


class BceSettings(BaseSettings):
    """How to reach the cloud: environment variables `CCE_CLOUD_*`."""

    model_config = SettingsConfigDict(env_prefix="CCE_CLOUD_", extra="ignore")

    endpoint: str = Field("", description="the cloud API, e.g. bcc.bj.baidubce.com or the simulator's URL; required")
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    access_key_file: Path | None = Field(None, description="the access key from a file (a mounted Secret)")
    secret_key_file: Path | None = Field(None, description="the secret key from a file (a mounted Secret)")
    region: str = "bj"
    vpc_id: str = ""
    connection_timeout_ms: int = Field(5000, gt=0, description="socket timeout of one SDK attempt")
    max_attempts: int = Field(4, ge=1, description="attempts per call, the first included")
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(2.0, ge=0)
    retry_budget_s: float = Field(10.0, ge=0, description="no retry starts once a call would exceed this")
    page_size: int = Field(100, ge=1, le=1000, description="maxKeys of list calls")
    rate_limits: dict[CloudApi, tuple[float, int]] = Field(
        default_factory=dict, description='per-API (rate/s, burst) overrides, e.g. {"list_enis": [2, 2]}')

    @model_validator(mode="after")
    def _keys_from_files(self) -> BceSettings:
        access = read_secret(self.access_key_file, "CCE_CLOUD_ACCESS_KEY_FILE")
        secret = read_secret(self.secret_key_file, "CCE_CLOUD_SECRET_KEY_FILE")
        if access is not None:
            self.access_key = access
        if secret is not None:
            self.secret_key = SecretStr(secret)
        return self

    @property
    def resolved_endpoint(self) -> str:
        """Never a default: a process without CCE_CLOUD_ENDPOINT must not reach out to any cloud."""
        if not self.endpoint:
            raise ValueError("CCE_CLOUD_ENDPOINT is not set: name the cloud API endpoint (or the simulator's URL)")
        return self.endpoint


@dataclass(frozen=True)
class SdkClients:
    """The SDK clients `BceVpcApi` calls (untyped: the SDK has no annotations)."""

    eni: Any
    bcc: Any
    subnet: Any
    route: Any
    vpc: Any = None

    @classmethod
    def from_settings(cls, settings: BceSettings) -> SdkClients:
        config = BceClientConfiguration(
            credentials=BceCredentials(settings.access_key, settings.secret_key.get_secret_value()),
            endpoint=settings.resolved_endpoint,
            region=settings.region,
            connection_timeout_in_mills=settings.connection_timeout_ms,
            retry_policy=NoRetryPolicy(),
        )
        return cls(EniClient(config), BccClient(config), SubnetClient(config), RouteClient(config),
                   VpcClient(config))


@dataclass(frozen=True)
class _Failure:
    status: int | None  # None: no HTTP reply
    code: str | None  # the cloud's error code
    message: str
    request_id: str | None
    label: str  # the code, else HTTPnnn, else the transport exception's name: metrics and logs


def _failure(exc: BceError) -> _Failure:
    """What an SDK exception carried: the server's error if it got one, else the transport failure."""
    err: BaseException = exc
    if isinstance(exc, BceHttpClientError) and exc.last_error is not None:
        err = exc.last_error
    if isinstance(err, BceServerError):
        code = str(err.code) if err.code else None
        status = int(err.status_code) if err.status_code else None
        label = code or f"HTTP{status}"
        return _Failure(status, code, str(err), str(err.request_id) if err.request_id else None, label)
    name = type(err).__name__
    return _Failure(None, None, str(err) or name, None, name)


def _batches(items: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), MAX_IPS_PER_BATCH):
        yield list(items[i:i + MAX_IPS_PER_BATCH])


def _ip_requests(count: int, ips: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Split an add-IPs request into batches: explicit addresses, or counts of at most MAX_IPS_PER_BATCH."""
    if count and ips:
        raise CceError(ErrorReason.INVALID_REQUEST, "ask for a count of IPs or for explicit IPs, not both")
    if count < 0:
        raise CceError(ErrorReason.INVALID_REQUEST, f"cannot add {count} IPs")
    for batch in _batches(ips):
        yield {"ips": batch}
    while count > 0:
        yield {"count": min(count, MAX_IPS_PER_BATCH)}
        count -= MAX_IPS_PER_BATCH


def _error(api: CloudApi, verdict: Classified, failure: _Failure, attempts: int,
           ids: dict[str, str] | None) -> CceError:
    status = f"HTTP {failure.status}" if failure.status else "no reply"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return CceError(verdict.reason, f"{api.value}: {failure.label} ({status}){tries}: {failure.message}",
                    api=api.value, cloud_code=failure.code, status=failure.status,
                    request_id=failure.request_id, attempts=attempts, **(ids or {}))


def _token() -> str:
    return uuid.uuid4().hex


def _replies_checked(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A reply of the wrong shape (a list where an object belongs, a string for a number, JSON the SDK cannot map)
    is the cloud's malformed reply, a coded CloudError, whatever exception reading it raised."""

    @functools.wraps(method)
    async def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError) as err:
            raise CceError(ErrorReason.CLOUD_ERROR, f"{method.__name__}: malformed reply from the cloud: {err!r}",
                           cloud_code="MalformedReply") from None

    return checked


class BceVpcApi:
    """`VpcApi` over `EniClient`, `BccClient`, `SubnetClient` and `RouteClient`.

    `clients`, `limits`, `rng`, `sleep` and `clock` are for tests; by default the SDK clients are built from
    `settings`, the limits are the reference defaults with `settings.rate_limits` applied, and jitter is random.
    """

    def __init__(self, settings: BceSettings, *, clients: SdkClients | None = None,
                 limits: RateLimits | None = None, rng: random.Random | None = None,
                 sleep: Sleep = asyncio.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._sdk = clients or SdkClients.from_settings(settings)
        self._limits = limits or RateLimits(settings.rate_limits)
        for api, (rate, _burst) in self._limits.limits.items():
            RATE_LIMIT.labels(api.value).set(rate)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock

    # --- the one generic call ---------------------------------------------------------------------------------

    async def _call(self, api: CloudApi, fn: Callable[..., Any], *args: Any, idempotent: bool = True,
                    ids: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` under the API's rate limit, retrying what is worth retrying (a step of the
        current trace, when there is one: limiter waits and failed attempts are its events).

        `idempotent=False`: after a failure that may have acted (5xx, no reply) do not retry; throttling still is.
        `ids` name what the call was about, for logs and error details.
        """
        with tracing.child_span(f"cloud.{api.value}", {"cloud.api": api.value, **(ids or {})}) as span:
            return await self._attempts(span, api, fn, *args, idempotent=idempotent, ids=ids, **kwargs)

    async def _attempts(self, span: Any, api: CloudApi, fn: Callable[..., Any], *args: Any, idempotent: bool,
                        ids: dict[str, str] | None, **kwargs: Any) -> Any:
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            held = await self._limits.acquire(api)
            LIMITER_WAIT.labels(api.value).observe(held)
            if span is not None:
                span.set_attribute("cloud.attempts", attempt)
                if held > 0:
                    span.add_event("rate limiter", {"held_s": round(held, 4)})
            t0 = self._clock()
            try:
                result = await asyncio.to_thread(fn, *args, **kwargs)
            except BceError as exc:
                CALL_SECONDS.labels(api.value).observe(self._clock() - t0)
                failure = _failure(exc)
                verdict = classify(failure.status, failure.code, failure.message)
                wait = self._retry_wait(verdict, attempt, started, idempotent)
                ERRORS.labels(api.value, failure.label).inc()
                if verdict.reason is ErrorReason.CLOUD_THROTTLED:
                    THROTTLED.labels(api.value).inc()
                if span is not None:
                    span.add_event("attempt failed", {"code": failure.label, "retry_in_s": wait or 0.0})
                log.warning("cloud call failed", api=api.value, code=failure.label, status=failure.status,
                            attempt=attempt, wait=wait, request_id=failure.request_id, **(ids or {}))
                if wait is None:
                    CALLS.labels(api.value, failure.label).inc()
                    raise _error(api, verdict, failure, attempt, ids) from exc
                RETRIES.labels(api.value).inc()
                await self._sleep(wait)
                continue
            CALL_SECONDS.labels(api.value).observe(self._clock() - t0)
            CALLS.labels(api.value, "ok").inc()
            return result

    def _retry_wait(self, verdict: Classified, attempt: int, started: float, idempotent: bool) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if not verdict.retryable or (not idempotent and verdict.reason is not ErrorReason.CLOUD_THROTTLED):
            return None
        if attempt >= self.settings.max_attempts:
            return None
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        wait = self._rng.uniform(0, cap)  # full jitter
        if self._clock() - started + wait > self.settings.retry_budget_s:
            return None
        return wait

    # --- ENIs -------------------------------------------------------------------------------------------------

    @_replies_checked
    async def create_eni(self, *, name: str, subnet_id: str, security_group_ids: Sequence[str],
                         description: str = "", primary_ip: str | None = None) -> str:
        reply = await self._call(
            CloudApi.CREATE_ENI, self._sdk.eni.create_eni, name, subnet_id,
            security_group_ids=list(security_group_ids),
            eni_ip_address_list=[EniIPSet(primary=True, private_ip=primary_ip)],
            description=description, client_token=_token(), ids={"subnet_id": subnet_id, "eni_name": name})
        return _str(_required(reply.eni_id, "eniId"))

    @_replies_checked
    async def attach_eni(self, eni_id: str, instance_id: str) -> None:
        await self._call(CloudApi.ATTACH_ENI, self._sdk.eni.attach_eni_instance, eni_id, instance_id,
                         client_token=_token(), ids={"eni_id": eni_id, "instance_id": instance_id})

    @_replies_checked
    async def detach_eni(self, eni_id: str, instance_id: str) -> None:
        await self._call(CloudApi.DETACH_ENI, self._sdk.eni.detach_eni_instance, eni_id, instance_id,
                         client_token=_token(), ids={"eni_id": eni_id, "instance_id": instance_id})

    @_replies_checked
    async def delete_eni(self, eni_id: str) -> None:
        await self._call(CloudApi.DELETE_ENI, self._sdk.eni.delete_eni, eni_id, client_token=_token(),
                         ids={"eni_id": eni_id})

    @_replies_checked
    async def get_eni(self, eni_id: str) -> CloudEni:
        reply = await self._call(CloudApi.GET_ENI, self._sdk.eni.get_eni_details, eni_id, ids={"eni_id": eni_id})
        return _eni(reply)

    @_replies_checked
    async def list_enis(self, *, vpc_id: str, instance_id: str | None = None,
                        name: str | None = None) -> list[CloudEni]:
        query = {k: v for k, v in {"instance_id": instance_id, "name": name}.items() if v is not None}
        pages = self._pages(CloudApi.LIST_ENIS, self._sdk.eni.list_eni, "enis", vpc_id, marker_key="marker",
                            size_key="max_keys", ids={"vpc_id": vpc_id}, **query)
        return [_eni(item) async for item in pages]

    @_replies_checked
    async def add_private_ips(self, eni_id: str, *, count: int = 0, ips: Sequence[str] = ()) -> list[str]:
        async def add(batch: dict[str, Any]) -> list[str]:
            what = ({"private_ip_address_list": batch["ips"]} if "ips" in batch
                    else {"private_ip_address_count": batch["count"]})
            reply = await self._call(CloudApi.ADD_PRIVATE_IPS, self._sdk.eni.batch_add_private_ip, eni_id,
                                     client_token=_token(), ids={"eni_id": eni_id}, **what)
            return [str(ip) for ip in reply.private_ip_addresses or []]

        return await _add_in_batches(add, count, ips)

    @_replies_checked
    async def remove_private_ips(self, eni_id: str, ips: Sequence[str]) -> None:
        for batch in _batches(ips):
            await self._call(CloudApi.REMOVE_PRIVATE_IPS, self._sdk.eni.batch_delete_private_ip, eni_id, batch,
                             client_token=_token(), ids={"eni_id": eni_id})

    # --- instances and their primary NIC ----------------------------------------------------------------------

    @_replies_checked
    async def get_instance(self, instance_id: str) -> CloudInstance:
        reply = await self._call(CloudApi.GET_INSTANCE, self._sdk.bcc.get_instance, instance_id,
                                 ids={"instance_id": instance_id})
        return _instance(_required(reply.instance, "instance"))

    @_replies_checked
    async def add_primary_nic_ips(self, instance_id: str, *, count: int = 0,
                                  ips: Sequence[str] = ()) -> list[str]:
        async def add(batch: dict[str, Any]) -> list[str]:
            what = ({"private_ips": batch["ips"]} if "ips" in batch
                    else {"secondary_private_ip_address_count": batch["count"]})
            reply = await self._call(CloudApi.ADD_PRIMARY_NIC_IPS, self._sdk.bcc.batch_add_ip, instance_id,
                                     idempotent=False, ids={"instance_id": instance_id}, **what)
            return [str(ip) for ip in reply.ips or []]

        return await _add_in_batches(add, count, ips)

    @_replies_checked
    async def remove_primary_nic_ips(self, instance_id: str, ips: Sequence[str]) -> None:
        for batch in _batches(ips):
            await self._call(CloudApi.REMOVE_PRIMARY_NIC_IPS, self._sdk.bcc.batch_delete_ip, instance_id, batch,
                             ids={"instance_id": instance_id})

    # --- subnets ----------------------------------------------------------------------------------------------

    @_replies_checked
    async def get_subnet(self, subnet_id: str) -> CloudSubnet:
        reply = await self._call(CloudApi.GET_SUBNET, self._sdk.subnet.get_subnet, subnet_id,
                                 ids={"subnet_id": subnet_id})
        return _subnet(_required(reply.subnet, "subnet"))

    @_replies_checked
    async def list_subnets(self, *, vpc_id: str, zone: str | None = None) -> list[CloudSubnet]:
        query = {"zone_name": zone} if zone else {}
        pages = self._pages(CloudApi.LIST_SUBNETS, self._sdk.subnet.list_subnets, "subnets", marker_key="marker",
                            size_key="max_keys", ids={"vpc_id": vpc_id}, vpc_id=vpc_id, **query)
        return [_subnet(item) async for item in pages]

    # --- the VPC and its route table --------------------------------------------------------------------------

    @_replies_checked
    async def get_vpc(self, vpc_id: str) -> CloudVpc:
        reply = await self._call(CloudApi.GET_VPC, self._sdk.vpc.get_vpc, vpc_id, ids={"vpc_id": vpc_id})
        vpc = _required(reply.vpc, "vpc")
        return CloudVpc(vpc_id=_str(vpc.vpc_id) or vpc_id, name=_str(vpc.name), cidr=_str(_required(vpc.cidr, "cidr")))

    @_replies_checked
    async def get_route_table(self, *, vpc_id: str) -> str:
        reply = await self._call(CloudApi.GET_ROUTE_TABLE, self._sdk.route.get_route, vpc_id=vpc_id,
                                 ids={"vpc_id": vpc_id})
        return _str(_required(reply.route_table_id, "routeTableId"))

    @_replies_checked
    async def list_route_rules(self, route_table_id: str) -> list[CloudRouteRule]:
        pages = self._pages(CloudApi.LIST_ROUTE_RULES, self._sdk.route.get_route_rule, "route_rules",
                            marker_key="marker", size_key="maxKeys", ids={"route_table_id": route_table_id},
                            routeTableId=route_table_id)
        return [_route_rule(item, route_table_id) async for item in pages]

    @_replies_checked
    async def create_route_rule(self, *, route_table_id: str, destination: str, next_hop_instance: str,
                                description: str) -> str:
        reply = await self._call(
            CloudApi.CREATE_ROUTE_RULE, self._sdk.route.create_route, route_table_id, "0.0.0.0/0", destination,
            next_hop_type="custom", description=description, next_hop_id=next_hop_instance, client_token=_token(),
            ids={"route_table_id": route_table_id, "destination": destination})
        return _str(_required(reply.route_rule_id, "routeRuleId"))

    @_replies_checked
    async def delete_route_rule(self, rule_id: str) -> None:
        await self._call(CloudApi.DELETE_ROUTE_RULE, self._sdk.route.delete_route, rule_id, client_token=_token(),
                         ids={"rule_id": rule_id})

    # --- paging -----------------------------------------------------------------------------------------------

    async def _pages(self, api: CloudApi, fn: Callable[..., Any], items: str, *args: Any, marker_key: str,
                     size_key: str, ids: dict[str, str], **kwargs: Any) -> AsyncIterator[Any]:
        """Yield every item of a marker-paged list (`isTruncated` / `nextMarker`), one limited call per page."""
        marker: str | None = None
        while True:
            paging: dict[str, Any] = {size_key: self.settings.page_size, **({marker_key: marker} if marker else {})}
            reply = await self._call(api, fn, *args, ids=ids, **kwargs, **paging)
            for item in getattr(reply, items, None) or []:
                yield item
            marker = reply.next_marker
            if not reply.is_truncated or not marker:
                return


async def _add_in_batches(add: Callable[[dict[str, Any]], Awaitable[list[str]]], count: int,
                          ips: Sequence[str]) -> list[str]:
    """Run the batches in turn; if one fails, the IPs the earlier ones added are named in the error."""
    added: list[str] = []
    for batch in _ip_requests(count, ips):
        try:
            added += await add(batch)
        except CceError as err:
            err.details["added_ips"] = list(added)
            raise
    return added


# --- replies -> port dataclasses ----------------------------------------------------------------------------


def _required(value: Any, key: str) -> Any:
    if value is None or value == "":
        raise CceError(ErrorReason.CLOUD_ERROR, f"the cloud's reply has no {key!r}", cloud_code="MalformedReply")
    return value


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _eni(obj: Any) -> CloudEni:
    status = _str(obj.status).lower()
    try:
        state = EniState(status)
    except ValueError:
        raise CceError(ErrorReason.CLOUD_ERROR, f"ENI {obj.eni_id} has an unknown status {status!r}",
                       cloud_code="MalformedReply", eni_id=_str(obj.eni_id)) from None
    return CloudEni(
        eni_id=_str(_required(obj.eni_id, "eniId")),
        name=_str(obj.name),
        subnet_id=_str(obj.subnet_id),
        vpc_id=_str(obj.vpc_id),
        zone=_str(obj.zone_name),
        mac=_str(obj.mac_address),
        status=state,
        instance_id=obj.instance_id or None,
        description=_str(obj.description),
        private_ips=tuple(CloudPrivateIp(_str(p.private_ip_address), bool(p.primary))
                          for p in obj.private_ip_set or []),
        security_group_ids=tuple(str(s) for s in obj.security_group_ids or []),
        created_at=_str(obj.created_time),
    )


def _instance_type(value: Any) -> InstanceType:
    """BCC, EBC or BBC; any other value (a BCC flavour name such as "N3") is a plain BCC VM."""
    kind = _str(value).upper()
    return InstanceType(kind) if kind in InstanceType.__members__ else InstanceType.BCC


def _instance(obj: Any) -> CloudInstance:
    nic = obj.nic_info
    nic_ips = (nic.ips if nic is not None else None) or []
    return CloudInstance(
        instance_id=_str(_required(obj.id, "id")),
        name=_str(obj.name),
        instance_type=_instance_type(obj.instance_type),
        zone=_str(obj.zone_name),
        cpus=int(obj.cpu_count or 0),
        memory_mib=round(float(obj.memory_capacity_in_gb or 0) * 1024),
        vpc_id=_str(obj.vpc_id),
        subnet_id=_str(obj.subnet_id),
        primary_ip=_str(obj.internal_ip),
        primary_mac=_str(nic.mac_address if nic is not None else None),
        eni_quota=int(obj.eni_quota or 0),
        status=_str(obj.status) or "Running",
        secondary_ips=tuple(_str(ip.private_ip) for ip in nic_ips if not ip.primary),
    )


def _subnet(obj: Any) -> CloudSubnet:
    return CloudSubnet(
        subnet_id=_str(_required(obj.subnet_id, "subnetId")),
        name=_str(obj.name),
        zone=_str(obj.zone_name),
        cidr=_str(obj.cidr),
        vpc_id=_str(obj.vpc_id),
        available_ips=int(obj.available_ip or 0),
    )


def _route_rule(obj: Any, route_table_id: str) -> CloudRouteRule:
    return CloudRouteRule(
        rule_id=_str(_required(obj.route_rule_id, "routeRuleId")),
        route_table_id=_str(obj.route_table_id) or route_table_id,
        destination=_str(obj.destination_address),
        next_hop_id=_str(obj.nexthop_id),
        next_hop_type=_str(obj.nexthop_type) or "custom",
        source=_str(obj.source_address) or "0.0.0.0/0",
        description=_str(obj.description),
    )
