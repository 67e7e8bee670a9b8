"""Per-process HTTP endpoint: liveness `/livez`, readiness `/readyz` (and `/healthz`, its old name), Prometheus
`/metrics`.

- `/livez`: the process is alive: its event loop answers. It never depends on NATS or anything else outside the
  process, so a bus outage does not make a supervisor (Kubernetes' liveness probe, compose) restart every replica.
- `/readyz`: the process is serving: every readiness check passes (bus connected, wired, leader or standby...).
  JSON, 200 or 503. `/healthz` is the same answer, kept for the tools and scripts that already ask it.
"""

from __future__ import annotations

import time
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
        self.checks: dict[str, HealthCheck] = {}  # readiness checks
        self.started_at = time.monotonic()
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: HealthCheck) -> None:
        """A readiness check: `/readyz` (and `/healthz`) is 503 while it fails; `/livez` never looks at it."""
        self.checks[name] = check

    def report(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: (all checks pass, the JSON body)."""
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

    def liveness(self) -> dict[str, Any]:
        return {"status": "ok", **self.identity, "uptime_s": round(time.monotonic() - self.started_at, 3)}

    async def _livez(self, _: web.Request) -> web.Response:
        return web.json_response(self.liveness())

    async def _readyz(self, _: web.Request) -> web.Response:
        healthy, body = self.report()
        return web.json_response(body, status=200 if healthy else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)
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
