"""The BCE OpenAPI routes (services/vpc_sim/README.md): each maps a request onto one `SimCloud` operation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from services.vpc_sim import bodies as b
from services.vpc_sim.api import Call, Op, SimApp
from services.vpc_sim.domain import SimCloud
from services.vpc_sim.model import invalid
from services.vpc_sim.views import eni_view, instance_view, paginate, parse_max_keys, rule_view, subnet_view

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BceRoutes:
    def __init__(self, sim: SimApp) -> None:
        self.sim = sim

    @property
    def cloud(self) -> SimCloud:
        return self.sim.cloud

    def handler(self, api: str, op: Op, *, mutation: bool) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.sim.serve(request, api, op, mutation=mutation)

        return handle

    async def put_eni(self, request: web.Request) -> web.StreamResponse:
        """`PUT /v1/eni/{eniId}?attach` or `?detach`."""
        if "detach" in request.query:
            return await self.sim.serve(request, "detach_eni", self.detach_eni, mutation=True)
        return await self.sim.serve(request, "attach_eni", self.attach_eni, mutation=True)

    # ---- ENIs ------------------------------------------------------------------------------------------------

    def create_eni(self, call: Call) -> dict[str, Any]:
        body: b.CreateEniBody = call.model(b.CreateEniBody)
        eni = self.cloud.create_eni(name=body.name, subnet_id=body.subnet_id, now=call.now,
                                    security_group_ids=body.security_group_ids, primary_ip=body.primary_ip(),
                                    description=body.description or "")
        return {"eniId": eni.eni_id}

    def attach_eni(self, call: Call) -> dict[str, Any]:
        if "attach" not in call.request.query:
            raise invalid("PUT /v1/eni/{eniId} needs the ?attach or ?detach action")
        body: b.InstanceRefBody = call.model(b.InstanceRefBody)
        self.cloud.attach_eni(call.param("eniId"), body.instance_id, now=call.now)
        return {}

    def detach_eni(self, call: Call) -> dict[str, Any]:
        body: b.InstanceRefBody = call.model(b.InstanceRefBody)
        self.cloud.detach_eni(call.param("eniId"), body.instance_id, now=call.now)
        return {}

    def delete_eni(self, call: Call) -> dict[str, Any]:
        self.cloud.delete_eni(call.param("eniId"), now=call.now)
        return {}

    def get_eni(self, call: Call) -> dict[str, Any]:
        return eni_view(self.cloud, self.cloud.eni(call.param("eniId")))

    def get_eni_status(self, call: Call) -> dict[str, Any]:
        return {"status": self.cloud.eni(call.param("eniId")).status.value}

    def list_enis(self, call: Call) -> dict[str, Any]:
        vpc_id = call.query("vpcId")
        if vpc_id is None:
            raise invalid("vpcId is required")
        self.cloud.check_vpc(vpc_id)
        enis = self.cloud.list_enis(instance_id=call.query("instanceId"), name=call.query("name"))
        page = paginate(enis, lambda e: e.eni_id, call.query("marker"), parse_max_keys(call.query("maxKeys")))
        return {"enis": [eni_view(self.cloud, e) for e in page.pop("items")], **page}

    def add_private_ip(self, call: Call) -> dict[str, Any]:
        body: b.AddIpBody = call.model(b.AddIpBody)
        if body.is_ipv6:
            raise invalid("IPv6 addresses are not supported by this VPC")
        wanted = [body.private_ip_address] if body.private_ip_address else None
        added = self.cloud.add_private_ips(call.param("eniId"), now=call.now, ips=wanted, count=0 if wanted else 1)
        return {"privateIpAddress": added[0]}

    def delete_private_ip(self, call: Call) -> dict[str, Any]:
        self.cloud.remove_private_ips(call.param("eniId"), [call.param("ip")], now=call.now)
        return {}

    def batch_add_private_ips(self, call: Call) -> dict[str, Any]:
        body: b.BatchAddBody = call.model(b.BatchAddBody)
        if body.is_ipv6:
            raise invalid("IPv6 addresses are not supported by this VPC")
        added = self.cloud.add_private_ips(call.param("eniId"), now=call.now, ips=body.private_ip_addresses,
                                           count=body.private_ip_address_count or 0)
        return {"privateIpAddresses": added}

    def batch_delete_private_ips(self, call: Call) -> dict[str, Any]:
        body: b.BatchDelBody = call.model(b.BatchDelBody)
        self.cloud.remove_private_ips(call.param("eniId"), body.private_ip_addresses, now=call.now)
        return {}

    # ---- instances -------------------------------------------------------------------------------------------

    def get_instance(self, call: Call) -> dict[str, Any]:
        return {"instance": instance_view(self.cloud, self.cloud.instance(call.param("instanceId")))}

    def list_instance_enis(self, call: Call) -> dict[str, Any]:
        instance = self.cloud.instance(call.param("instanceId"))
        return {"enis": [eni_view(self.cloud, e) for e in self.cloud.list_enis(instance_id=instance.instance_id)]}

    def batch_add_instance_ips(self, call: Call) -> dict[str, Any]:
        body: b.InstanceBatchAddBody = call.model(b.InstanceBatchAddBody)
        if body.allocate_multi_ipv6_addr:
            raise invalid("IPv6 addresses are not supported by this VPC")
        added = self.cloud.add_instance_ips(body.instance_id, now=call.now, ips=body.private_ips,
                                            count=body.count or 0)
        return {"ips": added}

    def batch_delete_instance_ips(self, call: Call) -> dict[str, Any]:
        body: b.InstanceBatchDelBody = call.model(b.InstanceBatchDelBody)
        self.cloud.remove_instance_ips(body.instance_id, body.private_ips, now=call.now)
        return {}

    # ---- subnets ---------------------------------------------------------------------------------------------

    def get_subnet(self, call: Call) -> dict[str, Any]:
        return {"subnet": subnet_view(self.cloud.subnet(call.param("subnetId")))}

    def list_subnets(self, call: Call) -> dict[str, Any]:
        vpc_id = call.query("vpcId")
        if vpc_id is not None:
            self.cloud.check_vpc(vpc_id)
        subnets = self.cloud.list_subnets(call.query("zoneName"))
        page = paginate(subnets, lambda s: s.subnet_id, call.query("marker"), parse_max_keys(call.query("maxKeys")))
        return {"subnets": [subnet_view(s) for s in page.pop("items")], **page}

    # ---- the VPC and its route tables -------------------------------------------------------------------------

    def get_vpc(self, call: Call) -> dict[str, Any]:
        self.cloud.check_vpc(call.param("vpcId"))
        return {"vpc": {"vpcId": self.cloud.vpc_id, "name": "vpc-sim", "cidr": self.cloud.vpc_cidr,
                        "description": "", "isDefault": True, "subnets": []}}

    def get_route(self, call: Call) -> dict[str, Any]:
        table = self.cloud.route_table(call.query("routeTableId"), call.query("vpcId"))
        return {"routeTableId": table.route_table_id, "vpcId": table.vpc_id,
                "routeRules": [rule_view(r) for r in table.rules]}

    def list_route_rules(self, call: Call) -> dict[str, Any]:
        table = self.cloud.route_table(call.query("routeTableId"), call.query("vpcId"))
        page = paginate(table.rules, lambda r: r.rule_id, call.query("marker"),
                        parse_max_keys(call.query("maxKeys")))
        return {"routeRules": [rule_view(r) for r in page.pop("items")], **page}

    def create_route_rule(self, call: Call) -> dict[str, Any]:
        body: b.CreateRouteBody = call.model(b.CreateRouteBody)
        rule = self.cloud.create_route_rule(route_table_id=body.route_table_id,
                                            destination=body.destination_address, next_hop_id=body.nexthop_id,
                                            next_hop_type=body.nexthop_type, source=body.source_address,
                                            description=body.description or "")
        return {"routeRuleId": rule.rule_id}

    def delete_route_rule(self, call: Call) -> dict[str, Any]:
        self.cloud.delete_route_rule(call.param("ruleId"))
        return {}


def add_bce_routes(app: web.Application, sim: SimApp) -> None:
    r = BceRoutes(sim)
    table: list[tuple[str, str, str, Op, bool]] = [
        ("POST", "/v1/eni", "create_eni", r.create_eni, True),
        ("DELETE", "/v1/eni/{eniId}", "delete_eni", r.delete_eni, True),
        ("GET", "/v1/eni/{eniId}", "get_eni", r.get_eni, False),
        ("GET", "/v1/eni/{eniId}/status", "get_eni_status", r.get_eni_status, False),
        ("GET", "/v1/eni", "list_enis", r.list_enis, False),
        ("POST", "/v1/eni/{eniId}/privateIp", "add_private_ip", r.add_private_ip, True),
        ("DELETE", "/v1/eni/{eniId}/privateIp/{ip}", "delete_private_ip", r.delete_private_ip, True),
        ("POST", "/v1/eni/{eniId}/privateIp/batchAdd", "batch_add_private_ips", r.batch_add_private_ips, True),
        ("POST", "/v1/eni/{eniId}/privateIp/batchDel", "batch_delete_private_ips", r.batch_delete_private_ips,
         True),
        ("GET", "/v2/instance/{instanceId}", "get_instance", r.get_instance, False),
        ("GET", "/v2/eni/{instanceId}", "list_instance_enis", r.list_instance_enis, False),
        ("PUT", "/v2/instance/batchAddIp", "batch_add_instance_ips", r.batch_add_instance_ips, True),
        ("PUT", "/v2/instance/batchDelIp", "batch_delete_instance_ips", r.batch_delete_instance_ips, True),
        ("GET", "/v1/subnet/{subnetId}", "get_subnet", r.get_subnet, False),
        ("GET", "/v1/subnet", "list_subnets", r.list_subnets, False),
        ("GET", "/v1/vpc/{vpcId}", "get_vpc", r.get_vpc, False),
        ("GET", "/v1/route", "get_route", r.get_route, False),
        ("GET", "/v1/route/rule", "list_route_rules", r.list_route_rules, False),
        ("POST", "/v1/route/rule", "create_route_rule", r.create_route_rule, True),
        ("DELETE", "/v1/route/rule/{ruleId}", "delete_route_rule", r.delete_route_rule, True),
    ]
    for method, path, api, op, mutation in table:
        app.router.add_route(method, path, r.handler(api, op, mutation=mutation))
    app.router.add_route("PUT", "/v1/eni/{eniId}", r.put_eni)
