"""The node datapath's pure planning: names, what the node should have (from Eni and CceEndpoint records), what
it has (a kernel snapshot as plain values), and the plans that close the gap. No asyncio, no pyroute2, no clock
reads: the adapter (netlink.py) reads and executes, the service (datapath.py) decides when.

Facts we implement (ARCHITECTURE §5): ENI link `cce-eni-N`, per-ENI table 127+N with `gw/32 dev eni scope link` and
`default via gw`; per pod IP the rules `to podIP lookup main` (priority 512) and `from podIP lookup 127+N` (1536);
host veth without address, `podIP/32 dev veth scope link` in main, permanent neighbour podIP -> pod MAC; pod side
podIP/32, `gw/32 dev ifname scope link`, `default via gw`, permanent neighbour gw -> host veth MAC.

Other modes: vpc-route and vpc-eni-primary pods are veth pods routed through main (no tables, no rules); the node
carries the router address (vpc-route, on `lo`) or proxy ARP on its primary NIC (vpc-eni-primary). vpc-eni-exclusive
pods get a whole ENI: its link moves into the pod netns as the pod's interface and comes back under its original
name on teardown (the exclusive section below).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from chassis.netns import Link
from schemas.base import NetworkMode
from schemas.records import CceEndpoint, EndpointState, Eni, EniLinkState, EniOnNode, EniState, EniUse, NetResourceSet
from schemas.subjects import endpoint_key

RULE_TO_POD = 512  # to podIP lookup main
RULE_FROM_POD = 1536  # from podIP lookup <ENI table>
ENI_TABLE_BASE = 127
ENI_TABLE_MAX = 252  # 253..255 are the kernel's default/main/local tables
MAIN_TABLE = 254
SCOPE_LINK = 253
SCOPE_UNIVERSE = 0
ALIAS_PREFIX = "cce-net "
ENI_LINK_PREFIX = "cce-eni-"
DEFAULT_DST = "0.0.0.0/0"
NOPREFIXROUTE = 0x200  # IFA_F_NOPREFIXROUTE: no connected route for the ENI's subnet in main
LOOPBACK = "lo"
ROUTER_LABEL = "lo:cce"  # vpc-route: the router address on lo carries this label (how resync knows it is ours)
VETH_MODES = (NetworkMode.VPC_ENI, NetworkMode.VPC_ENI_PRIMARY, NetworkMode.VPC_ROUTE)


class PlanError(Exception):
    """The records ask for something the datapath cannot do (the request is invalid)."""


# ---------------------------------------------------------------------------------------------------------------
# Names


def veth_alias(key: str) -> str:
    return f"{ALIAS_PREFIX}{key}"


def key_of_alias(alias: str) -> str | None:
    """The endpoint key a host veth's ifalias names, or None when the link is not ours."""
    return alias[len(ALIAS_PREFIX):] if alias.startswith(ALIAS_PREFIX) and len(alias) > len(ALIAS_PREFIX) else None


def derived_mac(text: str) -> str:
    """A locally administered unicast MAC derived from `text`, so a repair knows it without asking the pod."""
    digest = hashlib.sha1(text.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def eni_link_name(index: int) -> str:
    return f"{ENI_LINK_PREFIX}{index}"


def eni_table(index: int) -> int:
    return ENI_TABLE_BASE + index


def is_eni_table(table: int) -> bool:
    return ENI_TABLE_BASE <= table <= ENI_TABLE_MAX


def normalize_mac(mac: str) -> str:
    return mac.strip().lower().replace("-", ":")


def host_cidr(ip: str) -> str:
    return f"{ip}/32"


# ---------------------------------------------------------------------------------------------------------------
# Observed kernel state (plain values the adapter fills in)


@dataclass(frozen=True)
class Addr:
    index: int
    ip: str
    prefixlen: int
    label: str = ""


@dataclass(frozen=True)
class Route:
    table: int
    dst: str  # normalized CIDR
    oif: int | None
    gateway: str | None = None
    scope: int = SCOPE_UNIVERSE

    def describe(self, names: Mapping[int, str]) -> str:
        dev = names.get(self.oif or -1, f"index {self.oif}")
        via = f" via {self.gateway}" if self.gateway else ""
        return f"route {self.dst}{via} dev {dev}"

    @property
    def where(self) -> str:
        return "main" if self.table == MAIN_TABLE else f"table {self.table}"


@dataclass(frozen=True)
class Rule:
    priority: int
    table: int
    src: str | None = None  # normalized CIDR
    dst: str | None = None

    def describe(self) -> str:
        match = f"from {self.src}" if self.src else f"to {self.dst}" if self.dst else "from all"
        return f"rule {self.priority}: {match} lookup {self.table}"

    @property
    def pod_ip(self) -> str | None:
        """The pod IP a rule at our priorities is about."""
        cidr = self.dst if self.priority == RULE_TO_POD else self.src if self.priority == RULE_FROM_POD else None
        return cidr[:-3] if cidr and cidr.endswith("/32") else None


@dataclass(frozen=True)
class Neigh:
    index: int
    ip: str
    mac: str
    permanent: bool


@dataclass(frozen=True)
class NetState:
    """One namespace's links, IPv4 addresses, routes (all tables), rules and neighbours."""

    links: tuple[Link, ...] = ()
    addrs: tuple[Addr, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    neighs: tuple[Neigh, ...] = ()

    def link(self, name: str) -> Link | None:
        return next((x for x in self.links if x.name == name), None)

    def link_by_mac(self, mac: str) -> Link | None:
        mac = normalize_mac(mac)
        return next((x for x in self.links if x.mac == mac and x.kind != "bridge"), None)

    def link_by_alias(self, alias: str) -> Link | None:
        return next((x for x in self.links if x.alias == alias), None)

    def names(self) -> dict[int, str]:
        return {x.index: x.name for x in self.links}

    def addrs_of(self, index: int) -> set[tuple[str, int]]:
        return {(a.ip, a.prefixlen) for a in self.addrs if a.index == index}


# ---------------------------------------------------------------------------------------------------------------
# Desired state


@dataclass(frozen=True)
class EniWant:
    eni_id: str
    mac: str
    index: int
    link: str
    table: int
    ip: str
    prefixlen: int
    gateway: str

    @property
    def routes(self) -> tuple[tuple[str, str | None, int], ...]:
        """(dst, gateway, scope) of the ENI's table."""
        return ((host_cidr(self.gateway), None, SCOPE_LINK), (DEFAULT_DST, self.gateway, SCOPE_UNIVERSE))


def enis_on_node(enis: Iterable[Eni], node: str) -> list[Eni]:
    """The ENIs the node should configure: attached (or attaching) secondary-IP ENIs of this node."""
    return sorted(
        (e for e in enis if e.node == node and e.use is EniUse.SECONDARY_IPS
         and e.state in (EniState.ATTACHING, EniState.INUSE)),
        key=lambda e: e.index,
    )


def eni_want(eni: Eni) -> EniWant:
    if not eni.mac:
        raise PlanError(f"ENI {eni.eni_id} has no MAC address yet")
    primary = eni.primary_ip
    if primary is None:
        raise PlanError(f"ENI {eni.eni_id} has no primary IP")
    if not is_eni_table(eni_table(eni.index)):
        raise PlanError(f"ENI {eni.eni_id} index {eni.index} leaves no route table (127+N must be <= 252)")
    return EniWant(eni.eni_id, normalize_mac(eni.mac), eni.index, eni_link_name(eni.index), eni_table(eni.index),
                   str(primary), eni.subnet_cidr.prefixlen, str(eni.gateway))


@dataclass(frozen=True)
class PodWant:
    key: str
    container_id: str
    ifname: str
    veth: str
    ip: str
    gateway: str
    table: int | None  # None: no per-ENI table (routed through main)
    eni_id: str | None
    host_mac: str
    pod_mac: str

    @property
    def alias(self) -> str:
        return veth_alias(self.key)

    def rules(self) -> tuple[Rule, ...]:
        if self.table is None:
            return ()
        cidr = host_cidr(self.ip)
        return Rule(RULE_TO_POD, MAIN_TABLE, dst=cidr), Rule(RULE_FROM_POD, self.table, src=cidr)


def pod_want(ep: CceEndpoint, enis: Mapping[str, Eni]) -> PodWant:
    """What a veth pod interface needs, from its endpoint record (and its ENI's record for the table). vpc-route
    and vpc-eni-primary pods route through main: no table, no rules."""
    if ep.mode not in VETH_MODES:
        raise PlanError(f"mode {ep.mode.value} has no veth pod (see exclusive_want)")
    if not ep.addresses:
        raise PlanError(f"endpoint {ep.container_id}/{ep.ifname} has no address")
    address = ep.addresses[0]
    table = address.route_table
    eni = enis.get(address.eni_id) if address.eni_id else None
    if eni is not None and ep.mode is NetworkMode.VPC_ENI:
        table = eni_table(eni.index)
    if ep.mode is not NetworkMode.VPC_ENI:
        table = None
    key = endpoint_key(ep.node, ep.container_id, ep.ifname)
    return PodWant(
        key=key, container_id=ep.container_id, ifname=ep.ifname,
        veth=ep.veth_name, ip=str(address.ip), gateway=str(address.gateway),
        table=table, eni_id=address.eni_id, host_mac=derived_mac(f"host {key}"), pod_mac=derived_mac(f"pod {key}"),
    )


def live_endpoints(endpoints: Iterable[CceEndpoint], node: str) -> list[CceEndpoint]:
    """Endpoints of this node whose pod is (or is about to be) running: not being released."""
    return [e for e in endpoints if e.node == node and e.state is not EndpointState.RELEASING and e.addresses]


# ---------------------------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class EniPlan:
    want: EniWant
    link: Link
    rename: bool
    set_up: bool
    add_address: bool
    replace_routes: tuple[Route, ...]
    delete_routes: tuple[Route, ...]
    sysctls: dict[str, str]

    @property
    def changes_link(self) -> bool:
        return self.rename or self.set_up or self.add_address or bool(self.replace_routes or self.delete_routes)


def eni_sysctls(link: str) -> dict[str, str]:
    return {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/rp_filter": "0",
        f"net/ipv4/conf/{link}/rp_filter": "0",
        f"net/ipv4/conf/{link}/proxy_arp": "1",
        f"net/ipv4/neigh/{link}/proxy_delay": "0",  # answer proxied ARP at once (default: up to 0.8 s)
    }


def plan_eni(want: EniWant, state: NetState) -> EniPlan:
    """What to change on the node so the ENI is configured. PlanError when its link is missing or its name is
    taken by another link."""
    link = state.link_by_mac(want.mac)
    if link is None:
        raise PlanError(f"no link with MAC {want.mac} for ENI {want.eni_id} on the node")
    squatter = state.link(want.link)
    if squatter is not None and squatter.index != link.index:
        raise PlanError(f"link name {want.link} for ENI {want.eni_id} is taken by {squatter.mac}")
    routes = [Route(want.table, dst, link.index, gw, scope) for dst, gw, scope in want.routes]
    observed = [r for r in state.routes if r.table == want.table]
    return EniPlan(
        want=want,
        link=link,
        rename=link.name != want.link,
        set_up=not link.up or link.name != want.link,
        add_address=(want.ip, want.prefixlen) not in state.addrs_of(link.index),
        replace_routes=tuple(r for r in routes if r not in observed),
        delete_routes=tuple(r for r in observed if r not in routes),
        sysctls=eni_sysctls(want.link),
    )


@dataclass(frozen=True)
class HostPlan:
    """Host-side objects of a pod that are missing or wrong (the veth exists)."""

    veth: Link
    set_up: bool = False
    routes: tuple[Route, ...] = ()
    neighs: tuple[Neigh, ...] = ()
    rules: tuple[Rule, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set_up or self.routes or self.neighs or self.rules)

    def problems(self, names: Mapping[int, str]) -> list[str]:
        out = [f"host veth {self.veth.name} is down"] if self.set_up else []
        out += [f"{r.describe(names)} missing in {r.where}" for r in self.routes]
        out += [f"neighbour {n.ip} lladdr {n.mac} dev {self.veth.name} missing" for n in self.neighs]
        out += [f"{r.describe()} missing" for r in self.rules]
        return out


def plan_host(want: PodWant, veth: Link, state: NetState) -> HostPlan:
    route = Route(MAIN_TABLE, host_cidr(want.ip), veth.index, None, SCOPE_LINK)
    neigh = Neigh(veth.index, want.ip, want.pod_mac, True)
    return HostPlan(
        veth=veth,
        set_up=not veth.up,
        routes=() if route in state.routes else (route,),
        neighs=() if neigh in state.neighs else (neigh,),
        rules=tuple(r for r in want.rules() if r not in state.rules),
    )


def check_pod(want: PodWant, node: NetState, pod: NetState | None) -> list[str]:
    """Concrete problems of a pod's network: empty when it is as set up."""
    veth = node.link(want.veth)
    if veth is None:
        return [f"host veth {want.veth} missing"]
    problems: list[str] = []
    if veth.alias != want.alias:
        problems.append(f"host veth {want.veth} belongs to {key_of_alias(veth.alias) or 'someone else'}")
    problems += plan_host(want, veth, node).problems(node.names())
    if pod is None:
        return [*problems, "pod network namespace is gone"]
    link = pod.link(want.ifname)
    if link is None:
        return [*problems, f"pod interface {want.ifname} missing"]
    if not link.up:
        problems.append(f"pod interface {want.ifname} is down")
    if (want.ip, 32) not in pod.addrs_of(link.index):
        problems.append(f"address {want.ip}/32 on {want.ifname} missing")
    names = pod.names()
    for route in (Route(MAIN_TABLE, host_cidr(want.gateway), link.index, None, SCOPE_LINK),
                  Route(MAIN_TABLE, DEFAULT_DST, link.index, want.gateway, SCOPE_UNIVERSE)):
        if route not in pod.routes:
            problems.append(f"pod {route.describe(names)} missing in {route.where}")
    if Neigh(link.index, want.gateway, veth.mac, True) not in pod.neighs:
        problems.append(f"pod neighbour {want.gateway} lladdr {veth.mac} dev {want.ifname} missing")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Stale things and two-phase GC


@dataclass(frozen=True)
class Stale:
    """Something of ours the records no longer want. `id` is stable across passes (for the marks)."""

    id: str
    what: str
    link: Link | None = None
    rule: Rule | None = None
    route: Route | None = None
    key: str | None = None  # the endpoint key of a stale veth (or of the gone pod holding an ENI)
    eni: EniOnNode | None = None  # an exclusive ENI left in the netns of a pod whose endpoint is gone

    @property
    def recent_key(self) -> str | None:
        """What a recent setup is remembered by (a veth's name, an exclusive ENI's id): never removed while young."""
        return self.link.name if self.link is not None else eni_recent_key(self.eni.eni_id) if self.eni else None


def find_stale(state: NetState, live: Mapping[str, PodWant], eni_tables: set[int]) -> list[Stale]:
    """Host veths with our alias whose endpoint is gone, rules at our priorities for IPs no live endpoint holds
    (or pointing at the wrong table), routes in ENI tables of ENIs no longer on the node."""
    out: list[Stale] = []
    for link in state.links:
        key = key_of_alias(link.alias)
        if key is not None and key not in live:
            out.append(Stale(f"veth {link.name} {key}", f"host veth {link.name} of gone endpoint {key}",
                             link=link, key=key))
    wanted_rules = {r for p in live.values() for r in p.rules()}
    for rule in state.rules:
        if rule.pod_ip is not None and rule not in wanted_rules:
            out.append(Stale(f"rule {rule.describe()}", f"stale {rule.describe()}", rule=rule))
    names = state.names()
    for route in state.routes:
        if is_eni_table(route.table) and route.table not in eni_tables:
            out.append(Stale(f"route {route.table} {route.dst} {route.gateway}",
                             f"stale {route.describe(names)} in {route.where}", route=route))
    return out


@dataclass(frozen=True)
class GcPlan:
    remove: tuple[Stale, ...]
    marks: dict[str, float] = field(default_factory=dict)  # what stays marked (id -> when first seen stale)


def plan_gc(stale: Iterable[Stale], marks: Mapping[str, float], now: float, grace_s: float,
            recent_veths: Mapping[str, float]) -> GcPlan:
    """Mark on the first pass, remove on a later pass once marked for `grace_s`; never a veth set up in the last
    `grace_s`. Marks of things no longer stale are dropped."""
    remove: list[Stale] = []
    kept: dict[str, float] = {}
    for item in stale:
        since = marks.get(item.id, now)
        recent = item.recent_key
        young = recent is not None and now - recent_veths.get(recent, now - grace_s - 1) < grace_s
        if now - since >= grace_s and not young:
            remove.append(item)
        else:
            kept[item.id] = since
    return GcPlan(tuple(remove), kept)


def normalize_cidr(ip: str, prefixlen: int) -> str:
    return ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False).with_prefixlen


# ---------------------------------------------------------------------------------------------------------------
# The node itself: router address (vpc-route), primary NIC (vpc-eni-primary), forwarding


@dataclass(frozen=True)
class NodeWant:
    router_ip: str | None = None  # vpc-route: the pods' gateway, carried by the node on lo
    proxy_arp_mac: str | None = None  # vpc-eni-primary: the primary NIC answers ARP for the node's pods
    rp_off_mac: str | None = None  # the primary NIC, whose rp_filter goes off
    forwarding: bool = False
    primary_eni: str | None = None  # the primary-NIC "ENI" record whose EniOnNode the node reports


def primary_nic_of(enis: Iterable[Eni], node: str) -> Eni | None:
    return next((e for e in enis if e.node == node and e.use is EniUse.PRIMARY_NIC), None)


def node_want(node: str, nrs: NetResourceSet | None, enis: Iterable[Eni], endpoints: Iterable[CceEndpoint]) -> NodeWant:
    """What the node needs besides ENIs and pods. The router address comes from the node's record (or, before it
    is loaded, from a route-mode endpoint's gateway); primary-NIC mode from the node's primary-NIC record."""
    live = live_endpoints(endpoints, node)
    route_mode = nrs is not None and nrs.spec.mode is NetworkMode.VPC_ROUTE
    router = nrs.status.router_ip if nrs is not None and route_mode else None
    if router is None:
        router = next((a.gateway for e in live if e.mode is NetworkMode.VPC_ROUTE for a in e.addresses), None)
    primary = primary_nic_of(enis, node)
    primary_mac = primary.mac if primary is not None and primary.mac else None
    spec_mac = nrs.spec.primary_mac if nrs is not None else None
    veth_pods = route_mode or router is not None or primary is not None or any(e.mode in VETH_MODES for e in live)
    return NodeWant(
        router_ip=str(router) if router is not None else None,
        proxy_arp_mac=normalize_mac(primary_mac) if primary_mac else None,
        rp_off_mac=normalize_mac(primary_mac or spec_mac or "") or None,
        forwarding=veth_pods,
        primary_eni=primary.eni_id if primary is not None else None,
    )


@dataclass(frozen=True)
class NodePlan:
    add_addrs: tuple[Addr, ...] = ()
    delete_addrs: tuple[Addr, ...] = ()
    sysctls: dict[str, str] = field(default_factory=dict)
    primary_link: Link | None = None  # the link carrying proxy_arp_mac
    problem: str = ""  # why the node is not fully configured (e.g. no link carries the primary NIC's MAC)


def plan_node(want: NodeWant, state: NetState) -> NodePlan:
    """Router address on lo (exactly the wanted one among ours), forwarding and proxy-ARP sysctls."""
    lo = state.link(LOOPBACK)
    ours = [a for a in state.addrs if a.label == ROUTER_LABEL]
    wanted = Addr(lo.index, want.router_ip, 32, ROUTER_LABEL) if lo is not None and want.router_ip else None
    sysctls: dict[str, str] = {}
    if want.forwarding:
        sysctls.update({"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0"})
    rp_link = state.link_by_mac(want.rp_off_mac) if want.rp_off_mac else None
    if rp_link is not None and want.forwarding:
        sysctls[f"net/ipv4/conf/{rp_link.name}/rp_filter"] = "0"
    primary = state.link_by_mac(want.proxy_arp_mac) if want.proxy_arp_mac else None
    problem = ""
    if primary is not None:
        sysctls.update({f"net/ipv4/conf/{primary.name}/proxy_arp": "1",
                        f"net/ipv4/neigh/{primary.name}/proxy_delay": "0"})
    elif want.proxy_arp_mac:
        problem = f"no link with MAC {want.proxy_arp_mac} for the primary NIC on the node"
    return NodePlan(
        add_addrs=() if wanted is None or wanted in ours else (wanted,),
        delete_addrs=tuple(a for a in ours if a != wanted),
        sysctls=sysctls,
        primary_link=primary,
        problem=problem,
    )


# ---------------------------------------------------------------------------------------------------------------
# Exclusive ENIs: the whole ENI link moves into the pod


ENI_FALLBACK_PREFIX = "ceni"


def eni_recent_key(eni_id: str) -> str:
    return f"eni {eni_id}"


def fallback_eni_name(mac: str) -> str:
    """A name for a returning ENI link whose original name is unknown or taken: 'ceni' + the MAC's last 4 bytes."""
    return ENI_FALLBACK_PREFIX + normalize_mac(mac).replace(":", "")[-8:]


def exclusive_enis_on_node(enis: Iterable[Eni], node: str) -> list[Eni]:
    return sorted((e for e in enis if e.node == node and e.use is EniUse.EXCLUSIVE and e.state is EniState.INUSE
                   and e.mac), key=lambda e: e.eni_id)


@dataclass(frozen=True)
class ExclusiveWant:
    key: str
    container_id: str
    ifname: str
    eni_id: str
    mac: str
    ip: str
    prefixlen: int
    gateway: str


def exclusive_want(ep: CceEndpoint, enis: Mapping[str, Eni]) -> ExclusiveWant:
    """What an exclusive pod needs: the ENI's link (by MAC) as its interface with the ENI's primary IP."""
    if ep.mode is not NetworkMode.VPC_ENI_EXCLUSIVE:
        raise PlanError(f"mode {ep.mode.value} does not hand a whole ENI to the pod")
    if not ep.addresses:
        raise PlanError(f"endpoint {ep.container_id}/{ep.ifname} has no address")
    address = ep.addresses[0]
    if not address.eni_id:
        raise PlanError(f"exclusive endpoint {ep.container_id}/{ep.ifname} names no ENI")
    eni = enis.get(address.eni_id)
    mac = address.mac or (eni.mac if eni is not None else "")
    if not mac:
        raise PlanError(f"exclusive endpoint {ep.container_id}/{ep.ifname}: ENI {address.eni_id} has no MAC")
    return ExclusiveWant(key=endpoint_key(ep.node, ep.container_id, ep.ifname), container_id=ep.container_id,
                         ifname=ep.ifname, eni_id=address.eni_id, mac=normalize_mac(mac), ip=str(address.ip),
                         prefixlen=address.prefix_len, gateway=str(address.gateway))


@dataclass(frozen=True)
class ExclusivePlan:
    want: ExclusiveWant
    move: Link | None  # the node's link to move into the pod (None: it is there already)
    rename_in_pod: Link | None = None  # in the pod already, under another name
    original_name: str = ""  # its name on the node before the move


class LinkMissing(PlanError):
    """The link is not where it should be yet (worth waiting for)."""


def plan_exclusive_setup(want: ExclusiveWant, node: NetState, pod: NetState, original_name: str = "") -> ExclusivePlan:
    """Move the ENI's link from the node into the pod (or finish a setup that already moved it). LinkMissing when
    the link is on neither side; PlanError when the pod's ifname is held by another interface."""
    in_pod = pod.link_by_mac(want.mac)
    squatter = pod.link(want.ifname)
    if squatter is not None and (in_pod is None or squatter.index != in_pod.index):
        raise PlanError(f"interface {want.ifname} already exists in the pod (MAC {squatter.mac}, not the ENI's)")
    if in_pod is not None:
        rename = in_pod if in_pod.name != want.ifname else None
        return ExclusivePlan(want, None, rename, original_name)
    on_node = node.link_by_mac(want.mac)
    if on_node is None:
        raise LinkMissing(f"no link with MAC {want.mac} for ENI {want.eni_id} on the node")
    return ExclusivePlan(want, on_node, None, original_name or on_node.name)


def check_exclusive(want: ExclusiveWant, pod: NetState | None) -> list[str]:
    """Problems of an exclusive pod: its interface must carry the ENI's MAC and IP, be up, route by the gateway."""
    if pod is None:
        return ["pod network namespace is gone"]
    link = pod.link(want.ifname)
    if link is None:
        return [f"pod interface {want.ifname} missing"]
    problems: list[str] = []
    if link.mac != want.mac:
        problems.append(f"pod interface {want.ifname} has MAC {link.mac}, not ENI {want.eni_id}'s {want.mac}")
    if not link.up:
        problems.append(f"pod interface {want.ifname} is down")
    if (want.ip, want.prefixlen) not in pod.addrs_of(link.index):
        problems.append(f"address {want.ip}/{want.prefixlen} on {want.ifname} missing")
    if not any(r.table == MAIN_TABLE and r.dst == DEFAULT_DST and r.gateway == want.gateway and r.oif == link.index
               for r in pod.routes):
        problems.append(f"pod default route via {want.gateway} dev {want.ifname} missing")
    return problems


@dataclass(frozen=True)
class ReturnPlan:
    """Move an ENI's link from a pod netns back to the node under `name`."""

    eni_id: str
    link: Link  # as seen in the pod
    name: str


def plan_exclusive_return(eni_id: str, mac: str, pod: NetState | None, node: NetState,
                          original_name: str) -> ReturnPlan | None:
    """None when the pod does not hold the link (netns gone: the kernel/fabric returns it; or returned already)."""
    link = pod.link_by_mac(mac) if pod is not None else None
    if link is None:
        return None
    name = original_name if original_name and node.link(original_name) is None else fallback_eni_name(mac)
    return ReturnPlan(eni_id, link, name)


@dataclass(frozen=True)
class IdlePlan:
    """A free exclusive ENI's link on the node: under its original name, down, no address."""

    eni_id: str
    link: Link
    rename: str | None
    set_down: bool
    flush: tuple[Addr, ...]

    @property
    def name(self) -> str:
        return self.rename or self.link.name

    @property
    def empty(self) -> bool:
        return not (self.rename or self.set_down or self.flush)


def plan_idle_exclusive(eni_id: str, mac: str, node: NetState, original_name: str) -> IdlePlan | None:
    """None when the link is not on the node."""
    link = node.link_by_mac(mac)
    if link is None:
        return None
    rename = original_name if (original_name and link.name != original_name
                               and node.link(original_name) is None) else None
    return IdlePlan(eni_id, link, rename, link.up, tuple(a for a in node.addrs if a.index == link.index))


def idle_record(eni_id: str, node: str, link_name: str | None, before: EniOnNode | None) -> EniOnNode:
    """The EniOnNode of an exclusive ENI no pod holds: ready under its name, or pending when its link is away."""
    original = (before.original_name if before else "") or (link_name or "")
    if link_name is None:
        return EniOnNode(eni_id=eni_id, node=node, state=EniLinkState.PENDING, original_name=original,
                         message="no link with the ENI's MAC on the node (not plugged yet, or coming back from a "
                                 "pod netns)")
    return EniOnNode(eni_id=eni_id, node=node, state=EniLinkState.READY, link_name=link_name, original_name=original)


def find_orphan_enis(enis: Iterable[Eni], held: set[str], reported: Mapping[str, EniOnNode],
                     node: NetState) -> list[Stale]:
    """Exclusive ENIs reported in a pod netns whose pod no live endpoint holds, and whose link is not on the node."""
    out: list[Stale] = []
    for eni in enis:
        record = reported.get(eni.eni_id)
        if eni.eni_id in held or record is None or record.state is not EniLinkState.IN_POD or not record.netns:
            continue
        if node.link_by_mac(eni.mac) is None:
            out.append(Stale(f"eni {eni.eni_id} {record.netns}", f"ENI {eni.eni_id} left in {record.netns} by gone "
                             f"endpoint {record.endpoint}", key=record.endpoint or None, eni=record))
    return out
