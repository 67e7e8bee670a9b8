"""The registry of every subject, stream and bucket on the bus, with its payload types and owner."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.base import Contract, subject_token
from schemas.events import Event, EventKind
from schemas.messages import (
    AllocateReply,
    AllocateRequest,
    AssignIpReply,
    AssignIpRequest,
    CheckReply,
    CheckRequest,
    ConfirmReply,
    ConfirmRequest,
    ExpandReply,
    ExpandRequest,
    NodeRegisterReply,
    NodeRegisterRequest,
    NodeRemoveReply,
    NodeRemoveRequest,
    ReleaseReply,
    ReleaseRequest,
    SetupReply,
    SetupRequest,
    TeardownReply,
    TeardownRequest,
)
from schemas.records import (
    CceEndpoint,
    ClusterCidrPool,
    Eni,
    EniOnNode,
    EniProvision,
    FixedIp,
    InstanceClaim,
    Lease,
    NetResourceSet,
    NodeCidr,
    NodePool,
    PodInfo,
    RouteRule,
    Subnet,
    SubnetSpread,
)
from schemas.traces import SpanBatch, TraceIndex

# Services, by the name their micro service and queue group carry.
IPAM = "ipam"
ENI_MANAGER = "eni_manager"
ROUTE_MANAGER = "route_manager"
NODE_DATAPATH = "node_datapath"
CNI_GATEWAY = "cni_gateway"
K8S_BRIDGE = "k8s_bridge"
ADMIN = "admin"  # an operator's tools (`cce-net`): reads everything, registers nodes where no bridge does


@dataclass(frozen=True)
class RequestSubject:
    """A request/reply endpoint: `<prefix>.<node>`, served by `service` in a queue group of its name, asked by
    `callers` (the bus permissions of each identity are derived from this: see schemas/permissions.py)."""

    name: str
    prefix: str
    request: type[Contract]
    reply: type[Contract]
    service: str
    summary: str
    callers: tuple[str, ...] = ()

    @property
    def pattern(self) -> str:
        return f"{self.prefix}.*"

    def for_node(self, node: str) -> str:
        return f"{self.prefix}.{subject_token(node)}"


NODE_REGISTER = RequestSubject(
    "register", "cce.node.v1.register", NodeRegisterRequest, NodeRegisterReply, IPAM,
    "register a node: create or refresh its NetResourceSet",
    callers=(K8S_BRIDGE, ADMIN),
)
NODE_REMOVE = RequestSubject(
    "remove", "cce.node.v1.remove", NodeRemoveRequest, NodeRemoveReply, IPAM,
    "start removing a node: its ENIs, IPs, CIDRs and routes are cleaned up, then its record goes",
    callers=(K8S_BRIDGE, ADMIN),
)
IPAM_ALLOCATE = RequestSubject(
    "allocate", "cce.ipam.v1.allocate", AllocateRequest, AllocateReply, IPAM,
    "allocate an IP for a pod interface (idempotent by container id and ifname)",
    callers=(CNI_GATEWAY,),
)
IPAM_CONFIRM = RequestSubject(
    "confirm", "cce.ipam.v1.confirm", ConfirmRequest, ConfirmReply, IPAM,
    "confirm an allocation after the node programmed it, so it does not expire",
    callers=(CNI_GATEWAY,),
)
IPAM_RELEASE = RequestSubject(
    "release", "cce.ipam.v1.release", ReleaseRequest, ReleaseReply, IPAM,
    "release a pod interface's IP (idempotent; unknown keys succeed)",
    callers=(CNI_GATEWAY, K8S_BRIDGE),
)
DATAPATH_SETUP = RequestSubject(
    "setup", "cce.datapath.v1.setup", SetupRequest, SetupReply, NODE_DATAPATH,
    "program a pod's interface, addresses, routes and rules on the node",
    callers=(CNI_GATEWAY,),
)
DATAPATH_TEARDOWN = RequestSubject(
    "teardown", "cce.datapath.v1.teardown", TeardownRequest, TeardownReply, NODE_DATAPATH,
    "remove a pod's network from the node (succeeds when nothing is left)",
    callers=(CNI_GATEWAY,),
)
DATAPATH_CHECK = RequestSubject(
    "check", "cce.datapath.v1.check", CheckRequest, CheckReply, NODE_DATAPATH,
    "check that a pod's network is as programmed",
    callers=(CNI_GATEWAY,),
)
ROUTE_EXPAND = RequestSubject(
    "expand", "cce.route.v1.expand", ExpandRequest, ExpandReply, ROUTE_MANAGER,
    "give a vpc-route node one more CIDR before it runs dry",
    callers=(IPAM,),
)

ENI_ASSIGN = RequestSubject(
    "assign", "cce.eni.v1.assign", AssignIpRequest, AssignIpReply, ENI_MANAGER,
    "put a named IP on an ENI of the node (a fixed IP following its pod), taking it off another node's ENI",
    callers=(IPAM,),
)

REQUESTS: tuple[RequestSubject, ...] = (
    NODE_REGISTER,
    NODE_REMOVE,
    IPAM_ALLOCATE,
    IPAM_CONFIRM,
    IPAM_RELEASE,
    DATAPATH_SETUP,
    DATAPATH_TEARDOWN,
    DATAPATH_CHECK,
    ROUTE_EXPAND,
    ENI_ASSIGN,
)

# ---------------------------------------------------------------------------------------------------------------
# Events.

EVENTS_STREAM = "CCE_EVENTS"
EVENTS_PREFIX = "cce.events"
EVENTS_WILDCARD = f"{EVENTS_PREFIX}.>"
EVENT_PAYLOAD: type[Contract] = Event
BRIDGE_EVENTS_CONSUMER = "k8s_bridge_events"  # k8s_bridge's durable consumer: bus events -> Kubernetes Events


def event_subject(kind: EventKind, node: str, what: str) -> str:
    node_token = "-" if node in ("", "-") else subject_token(node)
    return f"{EVENTS_PREFIX}.{kind.value}.{node_token}.{what}"


# ---------------------------------------------------------------------------------------------------------------
# Streams several services append to: plain publishes on `<prefix>.<node>.>` (fire and forget: a writer never waits
# for the stream, and what is published while it does not exist is lost), read by `readers`; the oldest records go
# first once a limit is reached.


@dataclass(frozen=True)
class Stream:
    name: str
    prefix: str
    records: tuple[type[Contract], ...]
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    summary: str
    max_age_s: float
    max_bytes: int
    max_msgs: int

    @property
    def wildcard(self) -> str:
        return f"{self.prefix}.>"

    def node_prefix(self, node: str) -> str:
        """What a writer for `node` publishes under (`-`: no node)."""
        return f"{self.prefix}.{'-' if node in ('', '-') else subject_token(node)}"


TRACES = Stream(
    "CCE_TRACES", "cce.traces", (SpanBatch, TraceIndex), writers=(CNI_GATEWAY, IPAM, ENI_MANAGER, NODE_DATAPATH),
    readers=(ADMIN,), summary="span records of traced CNI requests (`cce-net trace`): "
    "<node>.span.<trace_id> (SpanBatch), <node>.pod.<command>.<namespace>.<name> (TraceIndex)",
    max_age_s=24 * 3600, max_bytes=256 << 20, max_msgs=1_000_000,
)
STREAMS: tuple[Stream, ...] = (TRACES,)


def trace_span_subject(node: str, trace_id: str) -> str:
    return f"{TRACES.node_prefix(node)}.span.{trace_id}"


def trace_index_subject(node: str, command: str, namespace: str, pod: str) -> str:
    """`pod` is a DNS subdomain: its dots make more tokens, which a filter names the same way."""
    return f"{TRACES.node_prefix(node)}.pod.{command.lower()}.{namespace}.{pod}"


# ---------------------------------------------------------------------------------------------------------------
# Buckets: each key space has one writing service; others watch.


@dataclass(frozen=True)
class Bucket:
    """A key space: one writing service, the services that read it (the bus permissions follow from both), and
    `node_scoped` when every key starts with the node token, so a node's own keys are `<node>.>`."""

    name: str
    record: type[Contract]
    writer: str
    key: str
    history: int = 1
    readers: tuple[str, ...] = ()
    node_scoped: bool = False

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"


NODES = Bucket("cce_nodes", NetResourceSet, IPAM, "<node>",
               readers=(ENI_MANAGER, ROUTE_MANAGER, NODE_DATAPATH, CNI_GATEWAY, K8S_BRIDGE))
ENDPOINTS = Bucket("cce_endpoints", CceEndpoint, IPAM, "<node>.<container_id>.<ifname>",
                   readers=(NODE_DATAPATH, CNI_GATEWAY, K8S_BRIDGE, ENI_MANAGER), node_scoped=True)
ENIS = Bucket("cce_enis", Eni, ENI_MANAGER, "<eni_id>", readers=(IPAM, NODE_DATAPATH, K8S_BRIDGE))
ENI_ON_NODE = Bucket("cce_eni_node", EniOnNode, NODE_DATAPATH, "<node>.<eni_id>", node_scoped=True)
SUBNETS = Bucket("cce_subnets", Subnet, ENI_MANAGER, "<subnet_id>", readers=(K8S_BRIDGE, IPAM))
CIDR_POOL = Bucket("cce_cidr_pool", ClusterCidrPool, ROUTE_MANAGER, "config", readers=(IPAM,))
NODE_CIDRS = Bucket("cce_node_cidrs", NodeCidr, ROUTE_MANAGER, "<cidr with / as _>", readers=(IPAM,))
ROUTES = Bucket("cce_routes", RouteRule, ROUTE_MANAGER, "<destination with / as _>", readers=(IPAM,))
LEASES = Bucket("cce_leases", Lease, "*", "<service>")
INSTANCES = Bucket("cce_instances", InstanceClaim, IPAM, "<instance_id>")
POOLS = Bucket("cce_pools", NodePool, IPAM, "<node>", readers=(ENI_MANAGER, ROUTE_MANAGER, K8S_BRIDGE))
PROVISION = Bucket("cce_provision", EniProvision, ENI_MANAGER, "<node>", readers=(IPAM, K8S_BRIDGE))
PODS = Bucket("cce_pods", PodInfo, K8S_BRIDGE, "<node>.<namespace>.<name>", readers=(CNI_GATEWAY, IPAM),
              node_scoped=True)
FIXED_IPS = Bucket("cce_fixed_ips", FixedIp, IPAM, "<namespace>.<name>", readers=(K8S_BRIDGE,))
SPREADS = Bucket("cce_psts", SubnetSpread, K8S_BRIDGE, "<namespace>.<name> | _cluster.<name>", readers=(IPAM,))

# Leases of the single-active loops: the lease key each service campaigns for (its own and no other).
LEASE_KEYS: dict[str, str] = {IPAM: "ipam-maintenance", ENI_MANAGER: ENI_MANAGER, ROUTE_MANAGER: ROUTE_MANAGER,
                              K8S_BRIDGE: K8S_BRIDGE}

BUCKETS: tuple[Bucket, ...] = (NODES, ENDPOINTS, POOLS, ENIS, ENI_ON_NODE, PROVISION, SUBNETS, CIDR_POOL, NODE_CIDRS,
                               ROUTES, LEASES, PODS, FIXED_IPS, SPREADS, INSTANCES)


def endpoint_key(node: str, container_id: str, ifname: str) -> str:
    return f"{subject_token(node)}.{container_id}.{ifname}"


def eni_on_node_key(node: str, eni_id: str) -> str:
    return f"{subject_token(node)}.{eni_id}"


def fixed_ip_key(namespace: str, name: str) -> str:
    """The key of a pod's FixedIp (namespaces have no '.', so the name is the rest)."""
    return f"{namespace}.{name}"


CLUSTER_SPREAD_PREFIX = "_cluster"  # '_' is never in a namespace name


def psts_key(namespace: str, name: str) -> str:
    """The key of a SubnetSpread: `<namespace>.<name>`, or `_cluster.<name>` for a cluster-wide one."""
    return f"{namespace or CLUSTER_SPREAD_PREFIX}.{name}"


def pod_key(node: str, namespace: str, name: str) -> str:
    """The key of a pod's PodInfo: under its node's prefix (namespaces have no '.', so the name is the rest)."""
    return f"{subject_token(node)}.{namespace}.{name}"


def cidr_key(cidr: object) -> str:
    return str(cidr).replace("/", "_")


def expand_request_id(node: str, nth: int) -> str:
    """The idempotency key of a node's `nth` CIDR (1 = the one it gets on registration): every ipam replica
    asking for the same next CIDR sends the same key, so route_manager hands out one CIDR for it."""
    return f"{subject_token(node)}-cidr-{nth}"
