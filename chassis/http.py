"""Per-process HTTP endpoint: `/healthz` (JSON, 200 or 503) and Prometheus `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

HealthCheck = Callable[[], tuple[bool, Any]]


class HealthServer:
    def __init__(self, host: str, port: int, identity: dict[str, str]) -> None:
        self.host = host
        self.port = port
        self.identity = identity
        self.checks: dict[str, HealthCheck] = {}
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: HealthCheck) -> None:
        self.checks[name] = check

    def report(self) -> tuple[bool, dict[str, Any]]:
        results: dict[str, Any] = {}
        healthy = True
        for name, check in self.checks.items():
            try:
                ok, detail = check()
            except Exception as err:
                ok, detail = False, repr(err)
            healthy = healthy and ok
            results[name] = {"ok": ok, "detail": detail}
        return healthy, {"status": "ok" if healthy else "unhealthy", **self.identity, "checks": results}

    async def _healthz(self, _: web.Request) -> web.Response:
        healthy, body = self.report()
        return web.json_response(body, status=200 if healthy else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
