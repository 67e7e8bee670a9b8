"""Records kept in JetStream key-value buckets. Each bucket has exactly one writing service."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from pydantic import Field

from schemas.base import (
    CloudId,
    ContainerId,
    Contract,
    IfName,
    InstanceType,
    NetworkMode,
    NodeName,
    utcnow,
)
from schemas.errors import ErrorReason

# ---------------------------------------------------------------------------------------------------------------
# NetResourceSet: one per node, the node's IP resource pool.


class PoolSettings(Contract):
    """Watermarks of a node's pool (defaults are those of the reference system)."""

    pre_allocate: int = Field(2, ge=0, description="free IPs kept ready")
    min_allocate: int = Field(10, ge=0, description="IPs allocated at bootstrap")
    max_above_watermark: int = Field(24, ge=0, description="free IPs above which the excess is released")
    max_allocate: int | None = Field(None, ge=0, description="cap on the pool size; defaults to max pods")
    burstable: bool = Field(False, description="keep one ENI's worth free and fill a new ENI to capacity")
    release_excess: bool = Field(True, description="release excess IPs through the handshake")
    release_delay_s: float = Field(30.0, ge=0, description="how long an excess IP stays marked before it goes")
    cooldown_s: float = Field(30.0, ge=0, description="a freed pod IP is not handed out again before this")
    eni_cooldown_s: float = Field(5.0, ge=0, description="exclusive mode: a freed ENI goes to no other pod before this")
    eni_release_after_s: float | None = Field(
        300.0, ge=0, description="exclusive mode: free ENIs beyond those held, waited for and the one spare are "
                                 "deleted once the surplus has lasted this long; null keeps them")


class NodeSpec(Contract):
    instance_id: CloudId
    instance_type: InstanceType
    zone: str
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    max_pods: int = Field(110, ge=1)
    mode: NetworkMode = NetworkMode.VPC_ENI
    primary_ip: IPv4Address | None = None
    primary_mac: str | None = None
    subnet_ids: list[CloudId] = Field(default_factory=list, description="subnets pods may use; empty = any")
    security_group_ids: list[CloudId] = Field(default_factory=list)
    max_enis: int | None = Field(None, ge=0, description="override of the ENI quota")
    ips_per_eni: int | None = Field(None, ge=1, description="override of the IP quota per ENI")
    allow_exclusive: bool = Field(False, description="pods may opt in to an exclusive ENI on this node")
    pool: PoolSettings = Field(default_factory=PoolSettings)


class NodeCapacity(Contract):
    """What the node can still give pods: the scheduler integration reads this."""

    free_ips: int = 0
    used_ips: int = 0
    attachable_ips: int = Field(0, description="IPs obtainable by adding to ENIs with room or new ENIs")
    free_enis: int = Field(0, description="exclusive mode: spare ENIs ready for a pod")
    max_enis: int = 0
    ips_per_eni: int = 0


class NodeCondition(Contract):
    type: str
    status: bool
    reason: str = ""
    message: str = ""
    since: datetime = Field(default_factory=utcnow)


class NodeStatus(Contract):
    ready: bool = False
    enis: list[CloudId] = Field(default_factory=list)
    cidrs: list[IPv4Network] = Field(default_factory=list, description="vpc-route: the node's pod CIDRs")
    router_ip: IPv4Address | None = Field(None, description="vpc-route: the pod gateway on the node")
    capacity: NodeCapacity = Field(default_factory=NodeCapacity)
    conditions: list[NodeCondition] = Field(default_factory=list)
    removing: bool = Field(False, description="the node left; its resources are being cleaned up")
    registered_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class NetResourceSet(Contract):
    """Key: the node name (subject token form). Written by ipam."""

    name: NodeName
    spec: NodeSpec
    status: NodeStatus = Field(default_factory=NodeStatus)


# ---------------------------------------------------------------------------------------------------------------
# ENI: cloud state written by eni_manager, on-node state written by node_datapath.


class EniState(StrEnum):
    AVAILABLE = "available"
    ATTACHING = "attaching"
    INUSE = "inuse"
    DETACHING = "detaching"
    DELETED = "deleted"


class EniUse(StrEnum):
    SECONDARY_IPS = "secondary-ips"  # vpc-eni: pods take its secondary IPs
    PRIMARY_NIC = "primary-nic"  # vpc-eni-primary: the instance's own NIC
    EXCLUSIVE = "exclusive"  # vpc-eni-exclusive: the whole ENI goes to one pod


class PrivateIp(Contract):
    ip: IPv4Address
    primary: bool = False


class Eni(Contract):
    """Key: the ENI id. Mirrors the cloud, which is the source of truth."""

    eni_id: CloudId
    node: NodeName
    instance_id: CloudId
    use: EniUse = EniUse.SECONDARY_IPS
    name: str = ""
    description: str = ""
    vpc_id: CloudId | None = None
    subnet_id: CloudId
    subnet_cidr: IPv4Network
    zone: str = ""
    security_group_ids: list[CloudId] = Field(default_factory=list)
    mac: str = ""
    state: EniState = EniState.AVAILABLE
    private_ips: list[PrivateIp] = Field(default_factory=list)
    ip_quota: int = Field(0, ge=0, description="IPs this ENI can carry, its primary included")
    index: int = Field(0, ge=0, description="the node-local number N of cce-eni-N and table 127+N")
    state_since: datetime = Field(default_factory=utcnow)
    synced_at: datetime = Field(default_factory=utcnow)

    @property
    def gateway(self) -> IPv4Address:
        return next(self.subnet_cidr.hosts())

    @property
    def primary_ip(self) -> IPv4Address | None:
        return next((p.ip for p in self.private_ips if p.primary), None)

    @property
    def secondary_ips(self) -> list[IPv4Address]:
        return [p.ip for p in self.private_ips if not p.primary]


class EniLinkState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    IN_POD = "in-pod"
    ERROR = "error"


class EniOnNode(Contract):
    """Key: the ENI id. What node_datapath did with the ENI's link."""

    eni_id: CloudId
    node: NodeName
    state: EniLinkState = EniLinkState.PENDING
    link_name: str = ""
    original_name: str = ""
    route_table: int | None = None
    message: str = ""
    updated_at: datetime = Field(default_factory=utcnow)
    netns: str = Field("", description="exclusive mode: the pod network namespace the link was moved into")
    endpoint: str = Field("", description="exclusive mode: the endpoint key of the pod holding the link")


# ---------------------------------------------------------------------------------------------------------------
# CCEEndpoint: one per pod interface. Written by ipam.


class EndpointState(StrEnum):
    ALLOCATED = "allocated"  # IP reserved; expires unless the node confirms it
    READY = "ready"  # the node programmed it and confirmed
    RELEASING = "releasing"  # DEL seen; the IP goes to cooldown


class EndpointAddress(Contract):
    ip: IPv4Address
    prefix_len: int = Field(32, ge=0, le=32)
    gateway: IPv4Address
    subnet_cidr: IPv4Network | None = None
    eni_id: CloudId | None = None
    subnet_id: CloudId | None = None
    route_table: int | None = Field(None, description="the node-side per-ENI table (vpc-eni)")
    mac: str | None = Field(None, description="exclusive mode: the ENI's MAC")


class CceEndpoint(Contract):
    """Key: `<node>.<container_id>.<ifname>`, the CNI idempotency key scoped by node."""

    node: NodeName
    container_id: ContainerId
    ifname: IfName
    namespace: str
    pod: str
    pod_uid: str = ""
    mode: NetworkMode = NetworkMode.VPC_ENI
    state: EndpointState = EndpointState.ALLOCATED
    addresses: list[EndpointAddress] = Field(default_factory=list)
    host_veth: str = ""
    netns: str = Field("", max_length=4096, description="the pod's network namespace (CNI_NETNS) the node programs")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = Field(None, description="an unconfirmed allocation expires then")
    updated_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# Subnets: a mirror of the cloud's, written by eni_manager.


class Subnet(Contract):
    """Key: the subnet id."""

    subnet_id: CloudId
    vpc_id: CloudId
    zone: str
    cidr: IPv4Network
    available_ips: int = Field(ge=0)
    name: str = ""
    excluded: bool = Field(False, description="operators can take a subnet out of use")
    synced_at: datetime = Field(default_factory=utcnow)

    @property
    def gateway(self) -> IPv4Address:
        return next(self.cidr.hosts())


# ---------------------------------------------------------------------------------------------------------------
# vpc-route: the cluster CIDR pool, node CIDRs and route rules, written by route_manager.


class ClusterCidrPool(Contract):
    """Key: `config`. The container CIDR blocks and how they are cut per node."""

    blocks: list[IPv4Network]
    node_mask: int = Field(24, ge=8, le=30)
    low_free_threshold: int = Field(8, ge=0, description="a node with fewer free IPs gets another CIDR")
    max_cidrs_per_node: int = Field(8, ge=1, description="a node never holds more CIDRs than this")
    cluster_id: str = Field("", description="the cluster whose route rules carry its mark")
    vpc_id: str = ""
    route_table_id: str = Field("", description="the VPC route table the node CIDRs are routed in")
    updated_at: datetime = Field(default_factory=utcnow)


class NodeCidrState(StrEnum):
    ACTIVE = "active"
    RELEASING = "releasing"


class NodeCidr(Contract):
    """Key: the CIDR with '/' as '_' (e.g. `172.16.3.0_24`); created once, so a CIDR has one owner."""

    cidr: IPv4Network
    node: NodeName
    state: NodeCidrState = NodeCidrState.ACTIVE
    allocated_at: datetime = Field(default_factory=utcnow)
    request_id: str = Field("", description="the expand request (or registration) it was allocated for")
    state_since: datetime = Field(default_factory=utcnow, description="when it entered its state")

    @property
    def router_ip(self) -> IPv4Address:
        """The first host address: the pod gateway on the node when this is the node's first CIDR."""
        return next(self.cidr.hosts())


class RouteRuleState(StrEnum):
    PENDING = "pending"  # desired, not yet in the cloud
    PROGRAMMED = "programmed"  # seen in the cloud listing with our next hop
    CONFLICT = "conflict"  # the destination is held by a rule we do not own
    DELETING = "deleting"


class RouteRule(Contract):
    """Key: the destination CIDR in key form. One VPC route rule per node CIDR."""

    destination: IPv4Network
    node: NodeName
    route_table_id: CloudId
    next_hop_instance: CloudId
    description: str
    rule_id: CloudId | None = None
    state: RouteRuleState = RouteRuleState.PENDING
    conflict: str = Field("", description="what holds the destination when in conflict")
    reason: ErrorReason | None = Field(None, description="why the rule is not programmed (RouteConflict, ...)")
    message: str = ""
    updated_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# Leader election lease: one key per single-active service.


class Lease(Contract):
    """Key: the service name. Renewed by its holder; taken over when its revision stops moving."""

    holder: str
    service: str
    ttl_s: float = Field(gt=0)
    acquired_at: datetime = Field(default_factory=utcnow)
    renewed_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# ENI-mode pools: what ipam has handed out (written by ipam replicas, compare-and-set) and what eni_manager has
# learnt from the cloud about each node (written by eni_manager).


class ReleaseState(StrEnum):
    MARKED = "marked"  # chosen as excess; must stay unallocated for the release delay
    CONFIRMED = "confirmed"  # ipam confirmed it is unused: eni_manager may delete it in the cloud


class ReleaseMark(Contract):
    eni_id: CloudId
    state: ReleaseState = ReleaseState.MARKED
    marked_at: datetime = Field(default_factory=utcnow)


class PoolDemand(Contract):
    """ipam's statement of what the node's pool should hold; eni_manager provisions toward `target_ips`."""

    target_ips: int = Field(0, ge=0, description="pod IPs (ENI secondaries) the node should have in total")
    used: int = Field(0, ge=0)
    pending: int = Field(0, ge=0, description="allocations waiting for an IP right now")
    free: int = Field(0, ge=0, description="usable now: not used, not cooling down, not being released")
    cooling: int = Field(0, ge=0)
    releasing: int = Field(0, ge=0)
    computed_at: datetime = Field(default_factory=utcnow)
    target_enis: int = Field(0, ge=0, description="exclusive ENIs the node should hold (in use + waiting + spare)")
    enis_used: int = Field(0, ge=0, description="exclusive ENIs held by pods")
    enis_pending: int = Field(0, ge=0, description="allocations waiting for an exclusive ENI right now")
    enis_free: int = Field(0, ge=0, description="exclusive ENIs ready for a pod (not held, not cooling down)")


class NodePool(Contract):
    """Key: the node. The claims on a node's IPs: an IP is handed out only by a compare-and-set on this record,
    so no two ipam replicas can give one IP to two pods."""

    node: NodeName
    allocated: dict[str, str] = Field(default_factory=dict, description="IP -> endpoint key holding it")
    cooldown: dict[str, datetime] = Field(default_factory=dict, description="IP -> not reusable before")
    releasing: dict[str, ReleaseMark] = Field(default_factory=dict, description="IP -> release handshake")
    waiting: dict[str, datetime] = Field(default_factory=dict, description="endpoint key -> waiting since")
    demand: PoolDemand = Field(default_factory=PoolDemand)
    exclusive: dict[str, str] = Field(default_factory=dict,
                                      description="exclusive mode: ENI id -> the endpoint key holding the whole ENI")
    eni_cooldown: dict[str, datetime] = Field(default_factory=dict,
                                              description="exclusive mode: ENI id -> not handed out again before")
    exclusive_waiting: dict[str, datetime] = Field(
        default_factory=dict, description="endpoint key -> waiting for an exclusive ENI since")
    eni_releasing: dict[str, datetime] = Field(
        default_factory=dict, description="exclusive mode: ENI id -> marked surplus at; never handed out again, "
                                          "eni_manager deletes it")
    eni_surplus_since: datetime | None = Field(
        None, description="exclusive mode: since when the node has had more free ENIs than it needs")
    updated_at: datetime = Field(default_factory=utcnow)


class EniProvision(Contract):
    """Key: the node. eni_manager's view of a node: its cloud quotas and how provisioning is going."""

    node: NodeName
    instance_id: CloudId
    max_enis: int = Field(0, ge=0, description="ENIs besides the primary NIC (cloud quota or override)")
    ips_per_eni: int = Field(0, ge=0, description="IPs per ENI, its primary included")
    creating_eni: bool = Field(False, description="an ENI creation or attachment is in flight")
    last_error: ErrorReason | None = Field(None, description="why the last provisioning attempt failed")
    message: str = ""
    error_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    detected_mode: NetworkMode | None = Field(
        None, description="the mode the instance allows when it differs from the registered one (ENI-less EBC)")


# ---------------------------------------------------------------------------------------------------------------
# Pods: the network-relevant facts of each pod scheduled to a node, written by k8s_bridge from the Pod objects, so
# cni_gateway and ipam learn a pod's options on ADD without a Kubernetes client.


class PodInfo(Contract):
    """Key: `<node>.<namespace>.<name>` (node in subject-token form), so a node's pods sit under its own prefix."""

    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    uid: str = ""
    node: NodeName
    owner_kind: str = Field("", description="kind of the controlling owner (StatefulSet, ReplicaSet, Job...)")
    owner_name: str = ""
    host_network: bool = Field(False, description="the pod shares its node's network: it has no endpoint of ours")
    annotations: dict[str, str] = Field(default_factory=dict, description="only the annotations the network reads")
    labels: dict[str, str] = Field(default_factory=dict)
    deleting: bool = Field(False, description="the pod object has a deletion timestamp")
    updated_at: datetime = Field(default_factory=utcnow)
