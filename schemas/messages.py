"""Requests and replies on the bus. Every mutating request carries its idempotency key."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pydantic import Field

from schemas.base import CloudId, ContainerId, Contract, IfName, InstanceType, NetworkMode, NodeName
from schemas.records import Bandwidth, CceEndpoint, NetResourceSet, PoolSettings, ReleaseStrategy

# ---------------------------------------------------------------------------------------------------------------
# cce.node.v1.register.<node>


class NodeRegisterRequest(Contract):
    """Idempotent: re-registering a node returns its existing record (updated with new facts)."""

    node: NodeName
    instance_id: CloudId
    instance_type: InstanceType
    zone: str
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    max_pods: int = Field(110, ge=1)
    mode: NetworkMode = NetworkMode.VPC_ENI
    primary_ip: IPv4Address | None = None
    primary_mac: str | None = None
    subnet_ids: list[CloudId] = Field(default_factory=list)
    security_group_ids: list[CloudId] = Field(default_factory=list)
    max_enis: int | None = Field(None, ge=0)
    ips_per_eni: int | None = Field(None, ge=1)
    allow_exclusive: bool = False
    pool: PoolSettings | None = None


class NodeRegisterReply(Contract):
    nrs: NetResourceSet
    created: bool


class NodeRemoveRequest(Contract):
    node: NodeName


class NodeRemoveReply(Contract):
    node: NodeName
    removing: bool


# ---------------------------------------------------------------------------------------------------------------
# cce.ipam.v1.{allocate,confirm,release}.<node>


class PodRef(Contract):
    namespace: str = Field(min_length=1, max_length=253)
    name: str = Field(min_length=1, max_length=253)
    uid: str = ""


class FixedIpRequest(Contract):
    """The pod (of a StatefulSet) keeps its IP across delete and re-create."""

    release_strategy: ReleaseStrategy = ReleaseStrategy.TTL
    ttl_s: float | None = Field(None, ge=0, description="TTL after the pod goes; empty: ipam's default (7 days)")
    owner: str = Field("", max_length=300, description="the pod's controller, e.g. StatefulSet/web")


class AllocateRequest(Contract):
    """Idempotent by (container_id, ifname): a repeat returns the same endpoint."""

    node: NodeName
    container_id: ContainerId
    ifname: IfName = "eth0"
    pod: PodRef
    exclusive: bool = Field(False, description="the pod asks for a whole ENI (nodes that allow it)")
    wait_s: float = Field(10.0, ge=0, le=120, description="how long to wait for the pool to refill")
    netns: str = Field("", max_length=4096, description="the pod's network namespace: recorded in the endpoint, the "
                                                       "one place the node's datapath takes it from")
    bandwidth: Bandwidth | None = Field(None, description="the pod's traffic limits: recorded in the endpoint, "
                                                          "which the datapath shapes by")
    fixed_ip: FixedIpRequest | None = Field(None, description="the pod keeps its IP (StatefulSet pods)")


class AllocateReply(Contract):
    endpoint: CceEndpoint
    reused: bool = Field(False, description="true when the key was already allocated")


class ConfirmRequest(Contract):
    """The node programmed the endpoint: the allocation no longer expires."""

    node: NodeName
    container_id: ContainerId
    ifname: IfName = "eth0"
    host_veth: str = ""


class ConfirmReply(Contract):
    endpoint: CceEndpoint


class ReleaseRequest(Contract):
    """Idempotent: releasing an unknown key succeeds with released=false."""

    node: NodeName
    container_id: ContainerId
    ifname: IfName = "eth0"


class ReleaseReply(Contract):
    released: bool
    ips: list[IPv4Address] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# cce.datapath.v1.{setup,teardown,check}.<node>


class SetupRequest(Contract):
    node: NodeName
    container_id: ContainerId
    ifname: IfName = "eth0"
    netns: str = Field(min_length=1, max_length=4096)
    endpoint: CceEndpoint


class InterfaceResult(Contract):
    name: str
    mac: str
    sandbox: str = ""


class IpResult(Contract):
    address: IPv4Interface = Field(description="address with prefix, as CNI reports it (e.g. 10.0.2.5/24: host bits "
                                               "set, as an exclusive ENI's address is)")
    gateway: IPv4Address
    interface: int = 0


class RouteResult(Contract):
    dst: IPv4Network
    gw: IPv4Address | None = None


class SetupReply(Contract):
    """Shaped like a CNI result so the gateway can pass it through."""

    interfaces: list[InterfaceResult]
    ips: list[IpResult]
    routes: list[RouteResult] = Field(default_factory=list)
    host_veth: str = ""


class TeardownRequest(Contract):
    """Succeeds when there is nothing to tear down (netns gone, unknown pod)."""

    node: NodeName
    container_id: ContainerId
    ifname: IfName = "eth0"
    netns: str = ""
    endpoint: CceEndpoint | None = None


class TeardownReply(Contract):
    removed: list[str] = Field(default_factory=list, description="what was removed, for the log")


class CheckRequest(Contract):
    node: NodeName
    container_id: ContainerId
    ifname: IfName = "eth0"
    netns: str = Field(min_length=1, max_length=4096)
    endpoint: CceEndpoint


class CheckReply(Contract):
    ok: bool
    problems: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# cce.eni.v1.assign.<node>


class AssignIpRequest(Contract):
    """Put a named private IP on an ENI of `node` in `subnet_id`, taking it off the ENI of another node of ours that
    carries it (a fixed IP following its pod). Idempotent: an IP already on an ENI of the node is where it should be.
    ipam asks only for IPs no pod holds."""

    node: NodeName
    ip: IPv4Address
    subnet_id: CloudId
    request_id: str = Field(min_length=1, max_length=128)


class AssignIpReply(Contract):
    eni_id: CloudId
    moved_from: CloudId | None = Field(None, description="the ENI it was taken off")


# ---------------------------------------------------------------------------------------------------------------
# cce.route.v1.expand.<node>


class ExpandRequest(Contract):
    """A node in vpc-route mode asks for one more CIDR before it runs dry. Idempotent by `request_id`."""

    node: NodeName
    request_id: str = Field(min_length=1, max_length=128)
    free_ips: int = Field(0, ge=0)


class ExpandReply(Contract):
    cidrs: list[IPv4Network]
    added: IPv4Network | None = None
