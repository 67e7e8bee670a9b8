"""Records kept in JetStream key-value buckets. Each bucket has exactly one writing service."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
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
    lookahead_s: float = Field(10.0, ge=0, description="the pool keeps free, besides pre_allocate, about as many IPs "
                                                       "as pods took in the last this many seconds (at most "
                                                       "pre_allocate + max_above_watermark - 9); 0 turns the "
                                                       "look-ahead off")
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
    pod_ips: int = Field(0, ge=0, description="pods the node can hold by address: the addresses it has (in use, free, "
                                              "cooling) and can still obtain, at most its max pods (the extended "
                                              "resource cce.io/ip on its Node)")
    pod_enis: int = Field(0, ge=0, description="exclusive ENIs the node can give pods: held, free, cooling, coming "
                                               "and still creatable within its quota (cce.io/eni on its Node)")


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


class Bandwidth(Contract):
    """A pod's traffic limits, shaped on the node (from `kubernetes.io/{ingress,egress}-bandwidth` or the CNI
    `bandwidth` capability). Ingress is traffic into the pod, egress out of it."""

    ingress_bps: int | None = Field(None, ge=1, description="traffic into the pod, bits per second")
    ingress_burst_bytes: int | None = Field(None, ge=1, description="bytes let through at once into the pod")
    egress_bps: int | None = Field(None, ge=1, description="traffic out of the pod, bits per second")
    egress_burst_bytes: int | None = Field(None, ge=1, description="bytes let through at once out of the pod")


class AllocationType(StrEnum):
    ELASTIC = "Elastic"  # the IP goes back to the pool when the pod goes
    FIXED = "Fixed"  # the IP stays the pod's (by namespace/name) across delete and re-create, for a TTL


class ReleaseStrategy(StrEnum):
    TTL = "TTL"  # a fixed IP is released once its pod has been gone for the TTL
    NEVER = "Never"  # released only when the reservation is deleted by hand


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
    bandwidth: Bandwidth | None = Field(None, description="the pod's traffic limits, shaped by the node's datapath")
    allocation_type: AllocationType = Field(AllocationType.ELASTIC, description="Fixed: the IP is the pod's "
                                            "(its FixedIp reservation), kept after the pod goes")
    release_strategy: ReleaseStrategy | None = Field(None, description="Fixed: when the IP is released")
    release_ttl_s: float | None = Field(None, ge=0, description="Fixed, TTL: how long after the pod goes")
    psts: str = Field("", description="the key of the PodSubnetTopologySpread whose subnets the IP came from")

    @property
    def veth_name(self) -> str:
        """The node's end of the pod's veth ("" in the exclusive mode: the pod has the ENI itself)."""
        return "" if self.mode is NetworkMode.VPC_ENI_EXCLUSIVE else host_veth_name(self.namespace, self.pod,
                                                                                     self.ifname)


def host_veth_name(namespace: str, pod: str, ifname: str) -> str:
    """A pod's host veth: 'cce' + 11 hex digits of sha1("ns/pod" [+ "/ifname" unless eth0]), 14 chars (IFNAMSIZ).
    The node's datapath names the link so; the gateway confirms the endpoint with it while the link is made."""
    text = f"{namespace}/{pod}" + ("" if ifname == "eth0" else f"/{ifname}")
    return "cce" + hashlib.sha1(text.encode()).hexdigest()[:11]


class FixedIp(Contract):
    """Key: `<namespace>.<name>` of the pod. A StatefulSet pod's fixed IP, written by ipam: the pod gets it again
    when it comes back under the same namespace and name, on any node of the subnet (the IP moves between ENIs);
    released once the pod has been gone for `ttl_s` (never when `release_strategy` is Never)."""

    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    ip: IPv4Address
    subnet_id: CloudId
    subnet_cidr: IPv4Network
    node: NodeName = Field(description="the node whose ENI carries the IP now")
    eni_id: CloudId = Field(description="the ENI carrying the IP now")
    endpoint: str = Field("", description="the endpoint key holding it; empty while the pod is gone")
    pod_uid: str = ""
    owner: str = Field("", description="the pod's controller, e.g. StatefulSet/web")
    release_strategy: ReleaseStrategy = ReleaseStrategy.TTL
    ttl_s: float | None = Field(None, ge=0, description="TTL: kept this long after the pod goes")
    idle_since: datetime | None = Field(None, description="since when no pod holds it")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def release_at(self) -> datetime | None:
        if self.release_strategy is ReleaseStrategy.NEVER or self.idle_since is None or self.ttl_s is None:
            return None
        return self.idle_since + timedelta(seconds=self.ttl_s)


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


class InstanceClaim(Contract):
    """Key: the instance id. Which node the instance is registered as, written by ipam by compare-and-set before
    the node's record: one instance is one node (two records on one instance would share, and on removal delete,
    each other's ENIs). A claim whose node record is gone or names another instance is stale and taken over."""

    instance_id: CloudId
    node: NodeName
    claimed_at: datetime = Field(default_factory=utcnow)


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


class SubnetDemand(Contract):
    """What pods selected by a PodSubnetTopologySpread want of one subnet on a node: eni_manager keeps that many IPs
    there (inside `ranges` when given), on an ENI of the subnet, creating one when the node has none."""

    target_ips: int = Field(0, ge=0, description="IPs of the subnet (inside the ranges) the node should have")
    used: int = Field(0, ge=0)
    waiting: int = Field(0, ge=0)
    ranges: list[IPv4Network] = Field(default_factory=list, description="only IPs inside these; empty: any")


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
    refill_batch: int = Field(0, ge=0, description="eni_manager rounds a refill up to a multiple of this many IPs "
                                                   "(the cloud's IPs per call; within the node's cap): the IPs the "
                                                   "next pods take come at no extra call; 0: exactly target_ips")
    subnets: dict[str, SubnetDemand] = Field(
        default_factory=dict, description="PodSubnetTopologySpread: subnet id -> the IPs pods it selects want there")


class SubnetWait(Contract):
    subnet_id: CloudId
    ranges: list[IPv4Network] = Field(default_factory=list)
    since: datetime = Field(default_factory=utcnow)


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
    subnet_waiting: dict[str, SubnetWait] = Field(
        default_factory=dict, description="PodSubnetTopologySpread: endpoint key -> the subnet it waits for an IP of")
    waiting_traces: dict[str, str] = Field(
        default_factory=dict, description="endpoint key -> the W3C traceparent of its waiting allocation, so the "
                                          "refill eni_manager makes for it joins that trace")
    recent_allocations: float = Field(
        0.0, ge=0, description="allocations of the last PoolSettings.lookahead_s (a decaying count, as of "
                               "recent_at): the consumption rate the pool looks ahead by")
    recent_at: datetime | None = Field(None, description="when recent_allocations was last counted")
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
    namespace_annotations: dict[str, str] = Field(default_factory=dict,
                                                  description="the annotations of ours on the pod's namespace")
    namespace_labels: dict[str, str] = Field(default_factory=dict, description="the labels of the pod's namespace "
                                             "(a ClusterPodSubnetTopologySpread selects namespaces by them)")
    updated_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# Subnet selection: PodSubnetTopologySpread (namespaced) and ClusterPodSubnetTopologySpread, read by k8s_bridge from
# their Kubernetes objects, validated against the VPC and written here for ipam.


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelRequirement(Contract):
    key: str = Field(min_length=1, max_length=317)
    operator: SelectorOperator
    values: list[str] = Field(default_factory=list)


class LabelSelector(Contract):
    """A Kubernetes label selector: every matchLabels pair and every expression must hold (empty: everything)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelRequirement] = Field(default_factory=list)


class SpreadStrategy(StrEnum):
    ELASTIC = "Elastic"  # the IP goes back to the subnet's pool when the pod goes


class SpreadSubnet(Contract):
    """One subnet of a spread, as asked and as the VPC says it is (`zone`, `cidr`: filled once validated)."""

    subnet_id: CloudId
    ranges: list[IPv4Network] = Field(default_factory=list, description="only IPs inside these; empty: any")
    priority: int = Field(0, description="subnets of higher priority are used first")
    zone: str = ""
    cidr: IPv4Network | None = None
    error: str = Field("", description="why the subnet cannot be used (absent from the VPC, a range outside it)")

    @property
    def is_usable(self) -> bool:
        return self.cidr is not None and not self.error


class SubnetSpread(Contract):
    """Key: `<namespace>.<name>` of a PodSubnetTopologySpread, `_cluster.<name>` of a ClusterPodSubnetTopologySpread
    (see `psts_key`). Pods it selects get IPs only from ENIs in its usable subnets. Written by k8s_bridge."""

    namespace: str = Field("", max_length=63, description="empty for a cluster-wide one")
    name: str = Field(min_length=1, max_length=253)
    uid: str = ""
    generation: int = 0
    priority: int = Field(0, description="of the cluster-wide ones selecting a pod, the highest priority wins")
    strategy: SpreadStrategy = SpreadStrategy.ELASTIC
    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    namespace_selector: LabelSelector | None = Field(None, description="cluster-wide: the namespaces it applies to")
    subnets: list[SpreadSubnet] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list, description="what is wrong with it (it is valid when empty)")
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def is_cluster_wide(self) -> bool:
        return not self.namespace

    @property
    def is_valid(self) -> bool:
        return not self.errors

    @property
    def usable_subnets(self) -> list[SpreadSubnet]:
        return [s for s in self.subnets if s.is_usable]
