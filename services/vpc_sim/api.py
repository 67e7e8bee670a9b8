"""The simulator's HTTP API (aiohttp): the BCE routes of the README, the admin routes, /healthz and /metrics.

Every BCE request goes: bce-auth-v1 check (403 AccessDenied) → injected latency → injected fault → body
validation → the domain operation under one lock → on a change, an atomic save of the state and, when a fabric
is active, `fabric.apply(cloud.fabric_spec())`. Every reply carries `x-bce-request-id`; every error body is
`{"code", "message", "requestId"}`. Handlers never let an exception escape: anything unexpected is a logged 500
InternalError.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel

from chassis.logs import get_logger
from services.vpc_sim import auth
from services.vpc_sim.bodies import parse_json_object, validate
from services.vpc_sim.domain import SimCloud
from services.vpc_sim.faults import FaultInjector
from services.vpc_sim.model import CloudFault, Code
from services.vpc_sim.persist import save_state

log = get_logger("vpc_sim.api")

TICK_S = 0.05
REQUEST_ID_HEADER = "x-bce-request-id"
HTTP_CODES = {404: "NoSuchObject", 405: "MethodNotAllowed", 413: "InvalidParameter"}


class FabricPort(Protocol):
    async def apply(self, spec: Any) -> None: ...


@dataclass
class Call:
    """What a domain operation gets: path parameters, query, the JSON body and the time."""

    request: web.Request
    body: dict[str, Any]
    now: float

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    def query(self, name: str) -> str | None:
        value = self.request.query.get(name)
        return value if value else None

    def model(self, model: type[Any]) -> Any:
        return validate(model, self.body)


Op = Callable[[Call], Any]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("cce_sim_calls", "BCE API calls by api and reply code", ["api", "code"],
                             registry=self.registry)
        self.latency = Histogram("cce_sim_call_seconds", "BCE API call latency", ["api"], registry=self.registry,
                                 buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.fabric_failures = Counter("cce_sim_fabric_apply_failures", "failed fabric applies",
                                       registry=self.registry)
        self.enis = Gauge("cce_sim_enis", "ENIs by status", ["status"], registry=self.registry)
        self.subnet_free = Gauge("cce_sim_subnet_available_ips", "free addresses by subnet", ["subnet"],
                                 registry=self.registry)


def reply(body: Any, request_id: str, status: int = 200) -> web.Response:
    resp = web.json_response(body, status=status, headers={REQUEST_ID_HEADER: request_id})
    resp.force_close()  # the SDK opens a connection per call and never reuses it
    return resp


def raw_reply(body: str, status: int, request_id: str) -> web.Response:
    """An injected malformed reply: the body as given, labelled JSON as BCE's replies are."""
    resp = web.Response(body=body.encode(), status=status, content_type="application/json",
                        headers={REQUEST_ID_HEADER: request_id})
    resp.force_close()
    return resp


def error_reply(code: str, status: int, message: str, request_id: str | None = None) -> web.Response:
    request_id = request_id or str(uuid.uuid4())
    return reply({"code": code, "message": message, "requestId": request_id}, request_id, status)


@web.middleware
async def coded_http_errors(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Router refusals (unknown path, wrong method, body too large) as coded JSON errors too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_reply(HTTP_CODES.get(exc.status, "InvalidParameter"), exc.status,
                           f"{request.method} {request.path}: {exc.reason}")


class SimApp:
    """State and plumbing shared by the BCE and admin handlers."""

    def __init__(self, cloud: SimCloud, *, credentials: Mapping[str, str], injector: FaultInjector,
                 state_file: Path | None = None, fabric: FabricPort | None = None, fabric_reason: str = "",
                 clock: Callable[[], float] = time.time, region: str = "bj") -> None:
        self.cloud = cloud
        self.credentials = dict(credentials)
        self.injector = injector
        self.state_file = state_file
        self.fabric = fabric
        self.fabric_reason = fabric_reason
        self.fabric_error: str | None = None
        self.clock = clock
        self.region = region
        self.endpoint = ""
        self.lock = asyncio.Lock()
        self.metrics = Metrics()

    # ---- the request pipeline ------------------------------------------------------------------------------

    async def serve(self, request: web.Request, api: str, op: Op, *, mutation: bool) -> web.Response:
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        code = "OK"
        try:
            self.authenticate(request)
            await asyncio.sleep(self.injector.latency_s(api))
            fault = self.injector.check(api)
            if fault is not None and fault.body is not None:
                code = fault.code
                return raw_reply(fault.body, fault.status, request_id)
            if fault is not None:
                raise CloudFault(fault.code, fault.status, fault.message)
            body = parse_json_object(await request.read()) if request.method in ("POST", "PUT") else {}
            result = await self.run(api, op, body, request, mutation=mutation)
            return reply(result, request_id)
        except CloudFault as fault:
            code = fault.code
            log.info("vpc_sim.refused", api=api, code=fault.code, status=fault.status, message=fault.message,
                     request_id=request_id)
            return error_reply(fault.code, fault.status, fault.message, request_id)
        except Exception as err:
            code = Code.INTERNAL.value
            log.exception("vpc_sim.crashed", api=api, request_id=request_id)
            return error_reply(code, 500, f"internal error: {err!r}", request_id)
        finally:
            self.metrics.calls.labels(api, code).inc()
            self.metrics.latency.labels(api).observe(time.monotonic() - started)

    def authenticate(self, request: web.Request) -> None:
        try:
            auth.verify(request.method, request.rel_url.raw_path, request.query, request.headers,
                        self.credentials, datetime.now(UTC))
        except auth.AuthError as err:
            log.warning("vpc_sim.access_denied", method=request.method, path=request.path, reason=err.message,
                        peer=request.remote)
            raise CloudFault.of(Code.ACCESS_DENIED, err.message) from None

    async def run(self, api: str, op: Op, body: dict[str, Any], request: web.Request, *, mutation: bool) -> Any:
        """The domain operation under the lock; saves and re-applies the fabric when something changed."""
        async with self.lock:
            now = self.clock()
            moved = self.cloud.advance(now)
            token = request.query.get("clientToken") if mutation else None
            result = self.cloud.recall(api, token)
            if result is None:
                try:
                    result = op(Call(request, body, now))
                except CloudFault:
                    if moved:
                        await self.commit()
                    raise
                self.cloud.remember(api, token, result)
            if mutation or moved:
                await self.commit()
            return result

    async def commit(self) -> None:
        """Persist the state and bring the fabric in line with it. Called with the lock held."""
        if self.state_file is not None:
            await asyncio.to_thread(save_state, self.state_file, self.cloud.to_dict())
        if self.fabric is not None:
            try:
                await self.fabric.apply(self.cloud.fabric_spec())
                self.fabric_error = None
            except Exception as err:
                self.fabric_error = repr(err)
                self.metrics.fabric_failures.inc()
                log.exception("vpc_sim.fabric_apply_failed")

    async def admin(self, request: web.Request, op: Op, *, mutation: bool, status: int = 200) -> web.Response:
        """An admin call: no signature, no faults; same lock, saving and coded errors."""
        request_id = str(uuid.uuid4())
        try:
            body = parse_json_object(await request.read()) if request.method in ("POST", "PUT") else {}
            async with self.lock:
                now = self.clock()
                moved = self.cloud.advance(now)
                result = op(Call(request, body, now))
                if mutation or moved:
                    await self.commit()
            return reply(result, request_id, status)
        except CloudFault as fault:
            return error_reply(fault.code, fault.status, fault.message, request_id)
        except Exception as err:
            log.exception("vpc_sim.admin_crashed", path=request.path)
            return error_reply(Code.INTERNAL.value, 500, f"internal error: {err!r}", request_id)

    # ---- background work -----------------------------------------------------------------------------------

    async def tick_forever(self) -> None:
        """Complete due ENI moves even when nobody reads, so the fabric follows attach/detach on time."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                async with self.lock:
                    if self.cloud.advance(self.clock()):
                        await self.commit()
            except Exception:
                log.exception("vpc_sim.tick_failed")

    async def ticker(self, _: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.tick_forever(), name="vpc-sim-ticker")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # ---- health and metrics --------------------------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        healthy = self.fabric_error is None
        body = {"status": "ok" if healthy else "unhealthy", "service": "vpc_sim", "vpcId": self.cloud.vpc_id,
                "fabric": self.fabric_info(), "fabricError": self.fabric_error}
        return web.json_response(body, status=200 if healthy else 503)

    def fabric_info(self) -> dict[str, Any]:
        return {"enabled": self.fabric is not None, "reason": self.fabric_reason}

    async def metrics_page(self, _: web.Request) -> web.Response:
        self.metrics.enis.clear()
        for status in ("available", "attaching", "inuse", "detaching"):
            self.metrics.enis.labels(status).set(sum(1 for e in self.cloud.enis.values() if e.status == status))
        for subnet in self.cloud.subnets.values():
            self.metrics.subnet_free.labels(subnet.subnet_id).set(subnet.available)
        resp = web.Response(body=generate_latest(self.metrics.registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp


def model_json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def admin_guard(token: str) -> Any:
    """With a token, /admin/... answers only requests that carry it (`Authorization: Bearer <token>`)."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("vpc_sim.admin_refused", path=request.path, remote=request.remote)
                return web.json_response({"code": "AccessDenied", "message": "the admin API wants the admin's "
                                          "token (Authorization: Bearer ...)"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    return guard


def build_app(sim: SimApp, admin_token: str = "") -> web.Application:
    from services.vpc_sim.routes_admin import add_admin_routes
    from services.vpc_sim.routes_bce import add_bce_routes

    middlewares = [admin_guard(admin_token)] if admin_token else []
    app = web.Application(middlewares=[*middlewares, coded_http_errors], client_max_size=1024 * 1024)
    add_bce_routes(app, sim)
    add_admin_routes(app, sim)
    app.router.add_get("/healthz", sim.healthz)
    app.router.add_get("/metrics", sim.metrics_page)
    app.cleanup_ctx.append(sim.ticker)
    return app
