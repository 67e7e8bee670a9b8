"""What the network fabric should look like for a state of the simulated cloud (a pure builder).

Each instance gets its primary NIC (primary IP plus primary-NIC secondary IPs) and one NIC per ENI that is
`inuse` or `detaching` (a detaching ENI is still plugged in until the detach completes; an attaching one is not
yet). Route rules of the main route table become router routes toward their next-hop instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.vpc_sim.fabric import FabricSpec, InstanceSpec, NicSpec, RouteRuleSpec
from services.vpc_sim.model import EniStatus

if TYPE_CHECKING:
    from services.vpc_sim.domain import SimCloud

PLUGGED = (EniStatus.INUSE, EniStatus.DETACHING)


def build_fabric_spec(cloud: SimCloud) -> FabricSpec:
    instances = []
    for instance_id, instance in sorted(cloud.instances.items()):
        subnet = cloud.subnet(instance.subnet_id)
        primary = NicSpec(f"primary-{instance_id}", instance.mac, subnet.cidr,
                          (instance.primary_ip, *instance.secondary_ips), primary=True)
        enis = tuple(
            NicSpec(eni.eni_id, eni.mac, cloud.subnet(eni.subnet_id).cidr, tuple(eni.ips))
            for eni in sorted(cloud.enis_of(instance_id), key=lambda e: e.eni_id)
            if eni.status in PLUGGED
        )
        instances.append(InstanceSpec(instance_id, primary, enis))
    table = cloud.route_tables[cloud.main_route_table_id]
    rules = tuple(RouteRuleSpec(rule.destination, rule.next_hop_id) for rule in table.rules)
    return FabricSpec(tuple(instances), rules)
