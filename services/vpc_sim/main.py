"""Composition root of the VPC simulator: `python -m services.vpc_sim`.

Reads `SimSettings` once (env `CCE_SIM_*`; `CCE_HTTP_HOST`/`CCE_HTTP_PORT`, as the local stack runner passes
them, when the `CCE_SIM_` ones are unset), logs JSON lines, serves until SIGTERM/SIGINT, then stops: the state
is saved and a fabric this process built is torn down.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping

from chassis.logs import configure_logging, get_logger
from services.vpc_sim.server import SimServer, SimSettings

FALLBACK_ENV = {"host": ("CCE_SIM_HOST", "CCE_HTTP_HOST"), "port": ("CCE_SIM_PORT", "CCE_HTTP_PORT")}


def settings_from_env(environ: Mapping[str, str] | None = None) -> SimSettings:
    env = os.environ if environ is None else environ
    overrides: dict[str, str] = {}
    for field, (own, fallback) in FALLBACK_ENV.items():
        if own not in env and env.get(fallback):
            overrides[field] = env[fallback]
    return SimSettings(**overrides)  # type: ignore[arg-type]


async def serve(settings: SimSettings) -> None:
    log = get_logger("vpc_sim")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await SimServer(settings).start()
    log.info("vpc_sim.serving", url=server.url, access_key=server.access_key, vpc_id=server.vpc_id,
             fabric=server.fabric_enabled)
    try:
        await stop.wait()
    finally:
        log.info("vpc_sim.stopping")
        await server.stop(teardown_fabric=server.fabric_enabled)


def main() -> None:
    settings = settings_from_env()
    configure_logging(settings.log_level, settings.log_json, service="vpc_sim")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
