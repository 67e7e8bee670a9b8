"""Composition root of cni_gateway (one per node): installs the plugin and conflist when asked, serves the CNI
plugin's unix socket, and retries journaled releases in the background."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chassis.logs import get_logger
from chassis.service import ServiceProcess, run
from schemas.base import subject_token
from schemas.subjects import CNI_GATEWAY, ENDPOINTS, NODES, PODS
from services.cni_gateway.gateway import Gateway
from services.cni_gateway.install import install_cni
from services.cni_gateway.journal import ReleaseJournal
from services.cni_gateway.server import SocketServer
from services.cni_gateway.settings import GatewaySettings

log = get_logger("cni_gateway.main")


@dataclass(frozen=True)
class CniGateway:
    gateway: Gateway
    server: SocketServer


async def build(proc: ServiceProcess) -> CniGateway:
    settings = GatewaySettings.of(proc.settings)
    if settings.cni_bin_dir and settings.cni_conf_dir:
        installed = install_cni(settings.cni_bin_dir, settings.cni_conf_dir, settings.node, settings.cni_socket,
                                settings.chain, plugin_kind=settings.cni_plugin,
                                plugin_binary=settings.cni_plugin_binary, version=settings.cni_version)
        log.info("cni plugin installed", plugin=str(installed.plugin), kind=installed.kind,
                 conflist=str(installed.conflist), changed=installed.changed)
    journal = ReleaseJournal(settings.state_dir)
    own = await proc.cache(ENDPOINTS, keys=f"{subject_token(settings.node)}.>")  # this node's endpoints only
    pods = await proc.cache(PODS, keys=f"{subject_token(settings.node)}.>")  # this node's pods' records
    gateway = Gateway(proc.bus, settings, own, await proc.store(NODES), journal, events=proc.events, pods=pods)
    await gateway.learn_mode()
    server = SocketServer(settings.cni_socket, gateway.handle, settings.max_request_bytes, settings.read_timeout_s)
    await server.start()
    proc.health.add_check("journal", lambda: (True, f"{len(journal.pending())} pending releases"))
    proc.spawn(_serve_until_cancelled(server, settings.shutdown_grace_s), name="cni-socket")
    proc.spawn(gateway.run_journal(), name="cni-release-journal")
    return CniGateway(gateway, server)


async def _serve_until_cancelled(server: SocketServer, grace_s: float) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(grace_s)


async def wire(proc: ServiceProcess) -> None:
    await build(proc)


def main() -> None:
    run(CNI_GATEWAY, GatewaySettings, wire, description="unix-socket front of the CNI plugin")
