"""The admin API (unauthenticated; loopback by default): what `cce-net sim ...` and tests drive.

`GET /admin/info`, `POST /admin/instances`, `DELETE /admin/instances/{id}[?force=true]`, `POST /admin/subnets`,
`POST /admin/subnets/{id}/reservations`, `POST /admin/route-tables`, `GET|PUT|DELETE /admin/faults`,
`POST /admin/faults/fail-next`, `GET|PUT /admin/settings`.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from services.vpc_sim import bodies as b
from services.vpc_sim.api import Call, SimApp, error_reply, model_json, reply
from services.vpc_sim.bodies import describe_validation_error, parse_json_object
from services.vpc_sim.faults import FailNext, FaultConfig
from services.vpc_sim.model import CloudFault, Code
from services.vpc_sim.views import eni_view, instance_view, subnet_view


class AdminRoutes:
    def __init__(self, sim: SimApp) -> None:
        self.sim = sim

    # ---- the cloud -----------------------------------------------------------------------------------------

    def info(self, call: Call) -> dict[str, Any]:
        sim, cloud = self.sim, self.sim.cloud
        access_key, secret_key = next(iter(sim.credentials.items()))
        return {
            "endpoint": sim.endpoint, "accessKey": access_key, "secretKey": secret_key, "region": sim.region,
            "vpcId": cloud.vpc_id, "vpcCidr": cloud.vpc_cidr, "routeTableId": cloud.main_route_table_id,
            "routeTableIds": sorted(cloud.route_tables),
            "subnets": [subnet_view(s) for s in cloud.list_subnets()],
            "instances": [instance_view(cloud, i) for _, i in sorted(cloud.instances.items())],
            "enis": [eni_view(cloud, e) for _, e in sorted(cloud.enis.items())],  # every ENI, faults or not
            "settings": self.settings_view(), "fabric": sim.fabric_info(),
        }

    def create_instance(self, call: Call) -> dict[str, Any]:
        body: b.AdminInstanceBody = call.model(b.AdminInstanceBody)
        instance = self.sim.cloud.create_instance(
            instance_type=body.instance_type, cpus=body.cpus, memory_mib=body.memory_mib, zone=body.zone,
            now=call.now, name=body.name, instance_id=body.instance_id, subnet_id=body.subnet_id,
            eni_quota=body.eni_quota, primary_ip=body.primary_ip)
        return instance_view(self.sim.cloud, instance)

    def delete_instance(self, call: Call) -> dict[str, Any]:
        force = (call.query("force") or "").lower() in ("1", "true", "yes")
        self.sim.cloud.delete_instance(call.param("instanceId"), now=call.now, force=force)
        return {}

    def create_subnet(self, call: Call) -> dict[str, Any]:
        body: b.AdminSubnetBody = call.model(b.AdminSubnetBody)
        subnet = self.sim.cloud.create_subnet(zone=body.zone, cidr=body.cidr, name=body.name,
                                              subnet_id=body.subnet_id, description=body.description)
        return subnet_view(subnet)

    def reserve(self, call: Call) -> dict[str, Any]:
        body: b.AdminReservationBody = call.model(b.AdminReservationBody)
        reserved = self.sim.cloud.reserve(call.param("subnetId"), cidr=body.cidr, ips=body.ips)
        return {"reserved": reserved, "subnet": subnet_view(self.sim.cloud.subnet(call.param("subnetId")))}

    def create_route_table(self, call: Call) -> dict[str, Any]:
        body: b.AdminRouteTableBody = call.model(b.AdminRouteTableBody)
        table = self.sim.cloud.create_route_table(body.route_table_id)
        return {"routeTableId": table.route_table_id, "vpcId": table.vpc_id}

    def get_settings(self, call: Call) -> dict[str, Any]:
        return self.settings_view()

    def put_settings(self, call: Call) -> dict[str, Any]:
        body: b.AdminSettingsBody = call.model(b.AdminSettingsBody)
        tunables = self.sim.cloud.tunables
        for name, value in body.model_dump(exclude_none=True).items():
            setattr(tunables, name, value)
        return self.settings_view()

    def settings_view(self) -> dict[str, Any]:
        t = self.sim.cloud.tunables
        return {"attachDelayS": t.attach_delay_s, "detachDelayS": t.detach_delay_s, "routeQuota": t.route_quota,
                "unattachedEniIpQuota": t.unattached_eni_ip_quota}

    # ---- faults (no domain state, no lock) -----------------------------------------------------------------

    async def faults(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        injector = self.sim.injector
        try:
            if request.method == "PUT":
                injector.configure(FaultConfig.model_validate(parse_json_object(await request.read())))
            elif request.method == "DELETE":
                injector.reset()
            elif request.method == "POST":
                injector.add_fail_next(FailNext.model_validate(parse_json_object(await request.read())))
            return reply(model_json(injector.snapshot()), request_id)
        except ValidationError as err:
            return error_reply(Code.INVALID_PARAMETER.value, 400, describe_validation_error(err), request_id)
        except CloudFault as fault:
            return error_reply(fault.code, fault.status, fault.message, request_id)


def add_admin_routes(app: web.Application, sim: SimApp) -> None:
    r = AdminRoutes(sim)

    def route(method: str, path: str, op: Any, *, mutation: bool, status: int = 200) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await sim.admin(request, op, mutation=mutation, status=status)

        app.router.add_route(method, path, handle)

    route("GET", "/admin/info", r.info, mutation=False)
    route("POST", "/admin/instances", r.create_instance, mutation=True, status=201)
    route("DELETE", "/admin/instances/{instanceId}", r.delete_instance, mutation=True)
    route("POST", "/admin/subnets", r.create_subnet, mutation=True, status=201)
    route("POST", "/admin/subnets/{subnetId}/reservations", r.reserve, mutation=True)
    route("POST", "/admin/route-tables", r.create_route_table, mutation=True, status=201)
    route("GET", "/admin/settings", r.get_settings, mutation=False)
    route("PUT", "/admin/settings", r.put_settings, mutation=True)
    for method in ("GET", "PUT", "DELETE"):
        app.router.add_route(method, "/admin/faults", r.faults)
    app.router.add_route("POST", "/admin/faults/fail-next", r.faults)
