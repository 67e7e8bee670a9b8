"""Composition root of eni_manager (one leader, standbys wait on the lease).

eni_manager owns the ENI records, the provision records and the subnet mirror, and makes every ENI cloud call
through `VpcApi`. It reads the nodes and pools ipam writes (and an endpoint, to put a pod's IP the cloud lost back
on its ENI). Every replica keeps its caches warm; only the leader acts (see `reconciler.py`).
"""

from __future__ import annotations

import nats.errors

from chassis.kv import Store
from chassis.service import ServiceProcess, run
from cloud.bce import BceSettings, BceVpcApi
from cloud.port import VpcApi
from schemas.errors import CceError
from schemas.records import CceEndpoint
from schemas.subjects import ENDPOINTS, ENI_ASSIGN, ENI_MANAGER, ENIS, NODES, POOLS, PROVISION, SUBNETS
from services.eni_manager.assign import Assigner
from services.eni_manager.executor import Executor, Timing
from services.eni_manager.ledger import EniRecords, Ledger, Owned
from services.eni_manager.nodesync import NodeSync
from services.eni_manager.reconciler import Reconciler, Views
from services.eni_manager.settings import EniManagerSettings
from services.eni_manager.subnets import SubnetMirror


async def wire_manager(proc: ServiceProcess, settings: EniManagerSettings, api: VpcApi,
                       vpc_id: str = "") -> Reconciler:
    """Wire eni_manager into a started process with this cloud; `vpc_id` empty: learnt from the first node."""
    ledger = Ledger(EniRecords(await proc.store(ENIS)), Owned(await proc.store(PROVISION)),
                    Owned(await proc.store(SUBNETS)))
    subnets = SubnetMirror(api, ledger.subnets)
    views = Views()
    endpoints: Store[CceEndpoint] = await proc.store(ENDPOINTS)

    async def endpoint_eni(key: str) -> str | None:
        """The ENI a pod's IP was handed out on, by its endpoint (read only for a pod IP no ENI record carries)."""
        try:
            item = await endpoints.get(key)
        except (CceError, nats.errors.Error):  # unreadable now, or a key that names no endpoint
            return None
        return next((str(a.eni_id) for a in item.value.addresses if a.eni_id), None) if item else None

    executor = Executor(api, ledger, subnets, proc.events, Timing(settings.attach_poll_s, settings.attach_timeout_s),
                        pod_nodes=views.pod_nodes, endpoint_eni=endpoint_eni)
    nodesync = NodeSync(api, ledger, executor, proc.events, settings.cluster_id)
    reconciler = Reconciler(settings, api, ledger, subnets, executor, nodesync, proc.events,
                            lambda coro, name: proc.spawn(coro, name=name), views, vpc_id=vpc_id)
    views.nodes = await proc.cache(NODES, reconciler.on_node_change)
    views.pools = await proc.cache(POOLS, reconciler.on_pool_change)
    views.note_pools()  # the first load is not a change: later ones are noted as they come
    await proc.cache(ENIS, reconciler.on_eni_change)
    await proc.cache(PROVISION)
    await proc.cache(SUBNETS)
    await proc.campaign(reconciler.on_elected, reconciler.on_lost)
    await proc.rpc.add(ENI_ASSIGN, Assigner(api, ledger, proc.events, lambda: reconciler.leading).assign)
    return reconciler


async def wire(proc: ServiceProcess) -> None:
    cloud = BceSettings()
    await wire_manager(proc, EniManagerSettings.of(proc.settings), BceVpcApi(cloud), vpc_id=cloud.vpc_id)


def main() -> None:
    run(ENI_MANAGER, EniManagerSettings, wire, description="ENI lifecycle and secondary IPs in the cloud")
