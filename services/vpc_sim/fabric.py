"""The simulator's real network fabric: a "VPC router" network namespace and one namespace per instance.

Each simulated instance gets a namespace (its host; the node's datapath service later runs inside it). Every NIC
attached to an instance -- its primary NIC and each ENI -- is a veth pair: the router side sits in the router
namespace (named ``r<hash of nic_id>``, up, the subnet gateway as a /32, proxy ARP on, so the gateway answers ARP and
the router answers for addresses behind other links), the instance side is created directly inside the instance
namespace carrying the NIC's MAC. The primary NIC is configured here (``eth0``, up, primary IP with the subnet
prefix, default route via the gateway); ENIs are left down and unaddressed for the node's datapath, which finds
them by MAC and may rename them or move them on. The router routes every private IP /32 to the link of the NIC that
owns it, and every route-table rule via the next-hop instance's primary IP.

Declarative: ``Fabric.apply`` takes the whole desired state; pure builders turn it into desired links, addresses,
routes and sysctls, which are diffed against what the kernel reports, and only the differences are changed. All
pyroute2 calls of the simulator live in this module; pyroute2 is imported lazily so importing this module is cheap
and works where pyroute2 is absent (``Fabric.available`` then says why). Nothing forks: a network namespace is
entered by a short-lived thread (setns/unshare move only the calling thread), which creates named namespaces, opens
rtnetlink sockets inside them (then driven by ``AsyncIPRoute`` on the event loop) and writes /proc/sys there; those
primitives live in ``chassis.netns`` (whose NetnsError the fabric reports as FabricError).

Conventions: ``NicSpec.private_ips[0]`` is the NIC's primary IP. A route rule whose next-hop instance is not in the
spec is not installed (the cloud may hold such a rule; there is nowhere to send it). Namespaces are named
``f"{prefix}-vpc"`` and ``f"{prefix}-{instance_id}"``; everything named ``f"{prefix}-*"`` belongs to the fabric.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from chassis import netns
from chassis.logs import get_logger
from chassis.netns import EXISTS as _EXISTS
from chassis.netns import GONE as _GONE
from chassis.netns import Link, NetnsError

log = get_logger("vpc_sim.fabric")

MAIN_TABLE = 254
ROUTE_PROTO = 4  # RTPROT_STATIC: the router routes this module owns ("proto static" in `ip route`)
SCOPE_LINK = 253
RTNH_F_ONLINK = 4
PRIMARY_IFNAME = "eth0"
ROUTER_NS_SUFFIX = "vpc"




VANISHED = frozenset({errno.ENOENT, errno.ENODEV})  # what a link or namespace gone underneath us looks like
VANISHED_RETRIES = 4


class FabricError(NetnsError):
    """A fabric operation failed; the message says what was being done and why."""


# ---------------------------------------------------------------------------------------------------------------
# Desired state (the simulator's view)


@dataclass(frozen=True)
class NicSpec:
    """An attached ENI, or the instance's primary NIC."""

    nic_id: str  # ENI id, or "primary-<instance_id>"
    mac: str  # the instance-side link carries exactly this MAC
    subnet_cidr: str  # e.g. "10.0.1.0/24"; its first host address is the gateway
    private_ips: tuple[str, ...]  # primary first, then secondaries; the router routes each /32 to this NIC
    primary: bool = False


@dataclass(frozen=True)
class InstanceSpec:
    instance_id: str
    primary: NicSpec  # eth0 in the instance ns: up, primary IP/subnet prefix, default route via the gateway
    enis: tuple[NicSpec, ...] = ()  # appear in the instance ns with their MAC, down, no address


@dataclass(frozen=True)
class RouteRuleSpec:
    destination: str  # CIDR
    next_hop_instance: str


@dataclass(frozen=True)
class FabricSpec:
    instances: tuple[InstanceSpec, ...]
    route_rules: tuple[RouteRuleSpec, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# Pure builders: spec -> desired kernel state


@dataclass(frozen=True)
class DesiredLink:
    """A router-side veth link and where its peer goes."""

    name: str
    peer_name: str
    instance_id: str
    instance_ns: str
    nic_id: str
    mac: str
    gateway: str
    primary: bool
    alias: str  # stored as the router link's ifalias: a change means the pair must be rebuilt


@dataclass(frozen=True)
class DesiredRoute:
    dst: str  # normalized CIDR
    link: str  # router-side link name
    gateway: str | None = None  # None: a scope-link route; else via gateway, onlink


@dataclass(frozen=True)
class DesiredPrimary:
    instance_id: str
    ns: str
    nic_id: str
    mac: str
    address: str
    prefixlen: int
    gateway: str


@dataclass(frozen=True)
class DesiredFabric:
    router_ns: str
    links: dict[str, DesiredLink] = field(default_factory=dict)  # by router-side name
    routes: dict[str, DesiredRoute] = field(default_factory=dict)  # by destination
    instances: dict[str, DesiredPrimary] = field(default_factory=dict)  # by instance namespace


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def router_link_name(nic_id: str) -> str:
    """Router-side link of a NIC: 'r' + 10 hex digits (11 chars, within IFNAMSIZ)."""
    return "r" + _short_hash(nic_id)


def eni_peer_name(nic_id: str) -> str:
    """Initial name of an ENI's link inside the instance namespace (the datapath may rename it)."""
    return "e" + _short_hash(nic_id)


def normalize_mac(mac: str) -> str:
    parts = mac.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise FabricError(f"invalid MAC address {mac!r}")
    return ":".join(parts)


def subnet_gateway(subnet_cidr: str) -> tuple[str, int]:
    """(first host address, prefix length) of a subnet."""
    try:
        net = ipaddress.IPv4Network(subnet_cidr, strict=False)
    except ValueError as exc:
        raise FabricError(f"invalid subnet {subnet_cidr!r}: {exc}") from exc
    return str(net.network_address + 1), net.prefixlen


def normalize_cidr(cidr: str) -> str:
    try:
        return ipaddress.IPv4Network(cidr, strict=False).with_prefixlen
    except ValueError as exc:
        raise FabricError(f"invalid CIDR {cidr!r}: {exc}") from exc


def _host(ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except ValueError as exc:
        raise FabricError(f"invalid IPv4 address {ip!r}: {exc}") from exc


def build_desired(prefix: str, spec: FabricSpec) -> DesiredFabric:
    """The whole desired fabric for a spec. Raises FabricError on an inconsistent spec."""
    router_ns = f"{prefix}-{ROUTER_NS_SUFFIX}"
    out = DesiredFabric(router_ns=router_ns)
    macs: dict[str, str] = {}
    nic_ids: set[str] = set()
    owner_of_ip: dict[str, str] = {}
    primary_link: dict[str, tuple[str, str]] = {}  # instance id -> (router link, primary IP)
    for inst in spec.instances:
        ns = f"{prefix}-{inst.instance_id}"
        if not inst.instance_id or "/" in inst.instance_id or ns == router_ns:
            raise FabricError(f"instance id {inst.instance_id!r} cannot name a namespace")
        if ns in out.instances:
            raise FabricError(f"instance {inst.instance_id} appears twice")
        for nic, is_primary in ((inst.primary, True), *((eni, False) for eni in inst.enis)):
            if nic.nic_id in nic_ids:
                raise FabricError(f"NIC {nic.nic_id} appears twice")
            nic_ids.add(nic.nic_id)
            mac = normalize_mac(nic.mac)
            if mac in macs:
                raise FabricError(f"MAC {mac} is on both {macs[mac]} and {nic.nic_id}")
            macs[mac] = nic.nic_id
            gateway, prefixlen = subnet_gateway(nic.subnet_cidr)
            name = router_link_name(nic.nic_id)
            if name in out.links:
                raise FabricError(f"link name {name} of {nic.nic_id} collides with {out.links[name].nic_id}")
            out.links[name] = DesiredLink(
                name=name,
                peer_name=PRIMARY_IFNAME if is_primary else eni_peer_name(nic.nic_id),
                instance_id=inst.instance_id,
                instance_ns=ns,
                nic_id=nic.nic_id,
                mac=mac,
                gateway=gateway,
                primary=is_primary,
                alias=f"{prefix} {inst.instance_id} {nic.nic_id} {mac}",
            )
            for raw in nic.private_ips:
                ip = _host(raw)
                if owner_of_ip.get(ip, nic.nic_id) != nic.nic_id:
                    raise FabricError(f"private IP {ip} is on both {owner_of_ip[ip]} and {nic.nic_id}")
                owner_of_ip[ip] = nic.nic_id
                dst = f"{ip}/32"
                out.routes[dst] = DesiredRoute(dst=dst, link=name)
            if is_primary:
                if not nic.private_ips:
                    raise FabricError(f"primary NIC {nic.nic_id} of {inst.instance_id} has no private IP")
                address = _host(nic.private_ips[0])
                primary_link[inst.instance_id] = (name, address)
                out.instances[ns] = DesiredPrimary(
                    instance_id=inst.instance_id,
                    ns=ns,
                    nic_id=nic.nic_id,
                    mac=mac,
                    address=address,
                    prefixlen=prefixlen,
                    gateway=gateway,
                )
    for rule in spec.route_rules:
        dst = normalize_cidr(rule.destination)
        hop = primary_link.get(rule.next_hop_instance)
        if hop is None:
            continue  # next hop not simulated: nowhere to send it
        want = DesiredRoute(dst=dst, link=hop[0], gateway=hop[1])
        have = out.routes.get(dst)
        if have is not None and have != want:
            raise FabricError(f"route rule {dst} conflicts with another route to {dst}")
        out.routes[dst] = want
    return out


def router_sysctls(links: Iterable[str]) -> dict[str, str]:
    """/proc/sys paths (relative) and values for the router namespace."""
    values = {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/rp_filter": "0",
        "net/ipv4/conf/default/rp_filter": "0",
    }
    for name in links:
        values[f"net/ipv4/conf/{name}/proxy_arp"] = "1"
        values[f"net/ipv4/conf/{name}/rp_filter"] = "0"
        values[f"net/ipv4/neigh/{name}/proxy_delay"] = "0"  # answer proxied ARP at once (default: up to 0.8 s)
    return values


# ---------------------------------------------------------------------------------------------------------------
# Observed state and pure plans


@dataclass(frozen=True)
class RouteState:
    dst: str  # normalized CIDR
    oif: int | None
    gateway: str | None
    onlink: bool
    priority: int | None
    proto: int


@dataclass(frozen=True)
class LinkPlan:
    delete: tuple[Link, ...]
    create: tuple[DesiredLink, ...]


def plan_links(
    desired: Mapping[str, DesiredLink], observed: Iterable[Link], primaries_present: set[str]
) -> LinkPlan:
    """Router links to delete (unknown, or stale: another instance/NIC/MAC, or a primary whose peer is gone from the
    instance namespace) and to create. An ENI whose peer left the instance namespace is not rebuilt: the datapath
    may have moved it into a pod namespace."""
    delete: list[Link] = []
    create: list[DesiredLink] = []
    seen: set[str] = set()
    for link in observed:
        if link.name == "lo":
            continue
        want = desired.get(link.name)
        stale = want is None or link.alias != want.alias or link.kind != "veth"
        if want is not None and want.primary and want.nic_id not in primaries_present:
            stale = True
        if stale:
            delete.append(link)
        else:
            seen.add(link.name)
    create.extend(want for name, want in desired.items() if name not in seen)
    return LinkPlan(delete=tuple(delete), create=tuple(create))


def plan_routes(
    desired: Mapping[str, DesiredRoute], link_index: Mapping[str, int], observed: Iterable[RouteState]
) -> tuple[list[tuple[DesiredRoute, int]], list[RouteState]]:
    """(routes to add or replace, with their oif; our routes to delete first: unwanted, wrong, or duplicates)."""
    by_dst: dict[str, list[RouteState]] = {}
    for route in observed:
        by_dst.setdefault(route.dst, []).append(route)
    replace: list[tuple[DesiredRoute, int]] = []
    delete: list[RouteState] = []
    for dst, routes in by_dst.items():
        want = desired.get(dst)
        oif = link_index.get(want.link) if want is not None else None
        keep = next((r for r in routes if want is not None and _route_matches(r, want, oif)), None)
        delete.extend(r for r in routes if r is not keep)
    for dst, want in desired.items():
        oif = link_index.get(want.link)
        if oif is None:
            raise FabricError(f"route {dst}: router link {want.link} does not exist")
        if not any(_route_matches(r, want, oif) for r in by_dst.get(dst, ())):
            replace.append((want, oif))
    return replace, delete


def _route_matches(route: RouteState, want: DesiredRoute, oif: int | None) -> bool:
    if route.oif != oif or route.gateway != want.gateway:
        return False
    return want.gateway is None or route.onlink


# ---------------------------------------------------------------------------------------------------------------
# Kernel access (pyroute2)


async def _nl(what: str, aw: Awaitable[Any], ok: frozenset[int] = frozenset()) -> Any:
    """Await a netlink call; errno in `ok` is success (returns None); anything else becomes a FabricError."""
    with _as_fabric_error():
        return await netns.nl(what, aw, ok)


async def _dump(what: str, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    with _as_fabric_error():
        return await netns.dump(what, call)


def _route_state(msg: Any) -> RouteState:
    dst = msg.get("dst") or "0.0.0.0"
    return RouteState(
        dst=normalize_cidr(f"{dst}/{msg['dst_len']}"),
        oif=msg.get("oif"),
        gateway=msg.get("gateway"),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
        priority=msg.get("priority"),
        proto=int(msg["proto"]),
    )


async def _links(ipr: Any, ns: str) -> list[Link]:
    return [netns.link_of(m) for m in await _dump(f"list links in {ns}", lambda: ipr.link("dump"))]


async def _main_routes(ipr: Any, ns: str) -> list[RouteState]:
    msgs = await _dump(f"list routes in {ns}", lambda: ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE))
    return [
        _route_state(m)
        for m in msgs
        if m["family"] == socket.AF_INET and m.get("table") == MAIN_TABLE and m["type"] == 1  # unicast
    ]


async def _addresses(ipr: Any, ns: str) -> dict[int, set[tuple[str, int]]]:
    out: dict[int, set[tuple[str, int]]] = {}
    for m in await _dump(f"list addresses in {ns}", lambda: ipr.addr("dump", family=socket.AF_INET)):
        out.setdefault(int(m["index"]), set()).add((str(m.get("address")), int(m["prefixlen"])))
    return out


@contextlib.contextmanager
def _as_fabric_error() -> Iterator[None]:
    """The namespace primitives (chassis.netns) raise NetnsError; the fabric's callers get a FabricError."""
    try:
        yield
    except FabricError:
        raise
    except NetnsError as exc:
        raise FabricError(str(exc), code=exc.errno) from exc


def _open_sockets(namespaces: list[str]) -> dict[str, int]:
    """File descriptors of rtnetlink sockets living in each namespace."""
    with _as_fabric_error():
        return netns.open_socket_fds(namespaces)


def _adopt(fds: Mapping[str, int], stack: contextlib.AsyncExitStack) -> dict[str, Any]:
    return netns.adopt(fds, stack)


def _write_sysctls(ns: str, values: Mapping[str, str]) -> list[str]:
    with _as_fabric_error():
        return netns.write_sysctls(ns, values)


def _list_namespaces(prefix: str) -> list[str]:
    return netns.list_namespaces(f"{prefix}-")


def _create_namespaces(names: list[str]) -> None:
    with _as_fabric_error():
        netns.create_namespaces(names)


def _remove_namespace(name: str) -> None:
    with _as_fabric_error():
        netns.remove_namespace(name)


# ---------------------------------------------------------------------------------------------------------------
# The fabric


class Fabric:
    """The simulator's network fabric. `apply` converges the kernel to a whole desired state; calls are serialized."""

    def __init__(self, prefix: str = "cce-sim") -> None:
        self.prefix = prefix
        self._lock = asyncio.Lock()
        self.last_changes: tuple[str, ...] = ()  # what the last apply() changed (empty: it was already right)

    def router_ns(self) -> str:
        return f"{self.prefix}-{ROUTER_NS_SUFFIX}"

    def instance_ns(self, instance_id: str) -> str:
        return f"{self.prefix}-{instance_id}"

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, "") when this process can build the fabric (root, pyroute2, network namespaces work)."""
        if os.geteuid() != 0:
            return False, "needs root to create network namespaces"
        try:
            import pyroute2  # noqa: F401
        except ImportError as exc:
            return False, f"pyroute2 is not installed: {exc}"
        probe = f"cce-probe-{os.getpid()}-{threading.get_ident() % 100000}"
        try:
            _create_namespaces([probe])
            _write_sysctls(probe, {"net/ipv4/ip_forward": "1"})
        except Exception as exc:
            return False, f"cannot build network namespaces: {exc}"
        finally:
            with contextlib.suppress(Exception):
                _remove_namespace(probe)
        return True, ""

    async def apply(self, spec: FabricSpec) -> None:
        desired = build_desired(self.prefix, spec)
        async with self._lock:
            changes: list[str] = []
            try:
                for attempt in range(VANISHED_RETRIES + 1):
                    try:
                        await self._apply(desired, changes)
                        break
                    except FabricError as err:
                        if err.errno not in VANISHED or attempt == VANISHED_RETRIES:
                            raise
                        # a link or namespace went away while we converged: the kernel tears a removed namespace's
                        # veths down in the background, so a peer seen a moment ago may be gone. Converge again.
                        log.info("fabric changed underneath, converging again", error=str(err), attempt=attempt + 1)
                        await asyncio.sleep(0.05 * 2**attempt)
            finally:
                self.last_changes = tuple(changes)
                if changes:
                    log.info("fabric changed", prefix=self.prefix, changes=len(changes))
                    for change in changes:
                        log.debug("fabric change", change=change)

    async def teardown(self) -> None:
        """Remove every namespace named with our prefix (their veths go with them) and any link in the current
        namespace carrying our alias. Idempotent."""
        async with self._lock:
            for name in await asyncio.to_thread(_list_namespaces, self.prefix):
                await asyncio.to_thread(_remove_namespace, name)
            from pyroute2 import AsyncIPRoute

            async with AsyncIPRoute() as ipr:
                for link in await _links(ipr, "the current namespace"):
                    if link.alias.startswith(f"{self.prefix} "):
                        await _nl(f"delete leftover link {link.name}", ipr.link("del", index=link.index), ok=_GONE)

    # -- internals ----------------------------------------------------------------------------------------------

    async def _apply(self, desired: DesiredFabric, changes: list[str]) -> None:
        existing = set(await asyncio.to_thread(_list_namespaces, self.prefix))
        wanted = [desired.router_ns, *desired.instances]
        missing = [name for name in wanted if name not in existing]
        if missing:
            await asyncio.to_thread(_create_namespaces, missing)
            changes.extend(f"create namespace {name}" for name in missing)
        fds = await asyncio.to_thread(_open_sockets, wanted)
        async with contextlib.AsyncExitStack() as stack:
            handles = _adopt(fds, stack)
            router = handles[desired.router_ns]
            sockets = {ns: handles[ns] for ns in desired.instances}
            dumps = await asyncio.gather(*(_links(ipr, ns) for ns, ipr in sockets.items()))
            instance_links = dict(zip(sockets, dumps, strict=True))
            touched = await self._converge_router(router, desired, instance_links, changes)
            await asyncio.gather(
                *(
                    self._converge_instance(sockets[ns], want, None if ns in touched else instance_links[ns], changes)
                    for ns, want in desired.instances.items()
                )
            )
        for name in sorted(existing - set(wanted)):
            await asyncio.to_thread(_remove_namespace, name)
            changes.append(f"remove namespace {name}")

    async def _converge_router(
        self, ipr: Any, desired: DesiredFabric, instance_links: Mapping[str, list[Link]], changes: list[str]
    ) -> set[str]:
        """Links, addresses, sysctls and routes of the router namespace. Returns the instance namespaces that got a
        new link."""
        ns = desired.router_ns
        present = {
            want.nic_id
            for inst_ns, want in desired.instances.items()
            if any(link.mac == want.mac for link in instance_links.get(inst_ns, ()))
        }
        links, touched = await self._router_links(ipr, desired, present, changes)
        by_name = {link.name: link for link in links}
        await self._router_addresses(ipr, desired, by_name, changes)
        changes.extend(await asyncio.to_thread(_write_sysctls, ns, router_sysctls(desired.links)))
        await self._router_routes(ipr, desired, {name: link.index for name, link in by_name.items()}, changes)
        return touched

    async def _router_links(
        self, ipr: Any, desired: DesiredFabric, present: set[str], changes: list[str]
    ) -> tuple[list[Link], set[str]]:
        ns = desired.router_ns
        links = await _links(ipr, ns)
        plan = plan_links(desired.links, links, present)
        touched: set[str] = set()
        for old in plan.delete:
            what = f"delete router link {old.name} ({old.alias or 'unknown'})"
            await _nl(what, ipr.link("del", index=old.index), ok=_GONE)
            changes.append(what)
        for new in plan.create:
            what = f"create veth {new.name} <-> {new.instance_ns}/{new.peer_name} ({new.mac}) for NIC {new.nic_id}"
            peer = {"ifname": new.peer_name, "address": new.mac, "net_ns_fd": new.instance_ns}
            await _nl(what, ipr.link("add", ifname=new.name, kind="veth", peer=peer))
            touched.add(new.instance_ns)
            changes.append(what)
        if plan.delete or plan.create:
            links = await _links(ipr, ns)
        for link in links:
            want = desired.links.get(link.name)
            if link.name == "lo" and not link.up:
                await _nl(f"set lo up in {ns}", ipr.link("set", index=link.index, state="up"))
                changes.append(f"{ns}: set lo up")
            elif want is not None and (not link.up or link.alias != want.alias):
                what = f"set router link {link.name} up ({want.alias})"
                await _nl(what, ipr.link("set", index=link.index, state="up", ifalias=want.alias))
                changes.append(what)
        return links, touched

    async def _router_addresses(
        self, ipr: Any, desired: DesiredFabric, by_name: Mapping[str, Link], changes: list[str]
    ) -> None:
        """Exactly the subnet gateway /32 on every router link."""
        addrs = await _addresses(ipr, desired.router_ns)
        for name, want in desired.links.items():
            link = by_name.get(name)
            if link is None:
                raise FabricError(f"router link {name} for NIC {want.nic_id} vanished while converging")
            have = addrs.get(link.index, set())
            for address, plen in sorted(have - {(want.gateway, 32)}):
                what = f"remove {address}/{plen} from router link {name}"
                await _nl(what, ipr.addr("del", index=link.index, address=address, prefixlen=plen), ok=_GONE)
                changes.append(what)
            if (want.gateway, 32) not in have:
                what = f"add gateway {want.gateway}/32 to router link {name}"
                await _nl(what, ipr.addr("add", index=link.index, address=want.gateway, prefixlen=32), ok=_EXISTS)
                changes.append(what)

    async def _router_routes(
        self, ipr: Any, desired: DesiredFabric, index: Mapping[str, int], changes: list[str]
    ) -> None:
        ours = [r for r in await _main_routes(ipr, desired.router_ns) if r.proto == ROUTE_PROTO]
        replace, delete = plan_routes(desired.routes, index, ours)
        for route in delete:
            spec: dict[str, Any] = {"dst": route.dst, "table": MAIN_TABLE, "proto": ROUTE_PROTO}
            if route.oif is not None:
                spec["oif"] = route.oif
            if route.gateway is not None:
                spec["gateway"] = route.gateway
            if route.priority is not None:
                spec["priority"] = route.priority
            await _nl(f"delete router route {route.dst}", ipr.route("del", **spec), ok=_GONE)
            changes.append(f"delete router route {route.dst} (dev index {route.oif}, via {route.gateway})")
        for want, oif in replace:
            if want.gateway is None:
                what = f"router route {want.dst} dev {want.link}"
                call = ipr.route(
                    "replace", dst=want.dst, oif=oif, scope=SCOPE_LINK, proto=ROUTE_PROTO, table=MAIN_TABLE
                )
            else:
                what = f"router route {want.dst} via {want.gateway} dev {want.link} onlink"
                call = ipr.route(
                    "replace",
                    dst=want.dst,
                    gateway=want.gateway,
                    oif=oif,
                    flags=RTNH_F_ONLINK,
                    proto=ROUTE_PROTO,
                    table=MAIN_TABLE,
                )
            await _nl(what, call)
            changes.append(what)

    async def _converge_instance(
        self, ipr: Any, want: DesiredPrimary, links: list[Link] | None, changes: list[str]
    ) -> None:
        """lo up; the primary NIC (found by MAC) named eth0, up, addressed, default route via the gateway."""
        ns = want.ns
        if links is None:
            links = await _links(ipr, ns)
        for lo in links:
            if lo.name == "lo" and not lo.up:
                await _nl(f"set lo up in {ns}", ipr.link("set", index=lo.index, state="up"))
                changes.append(f"{ns}: set lo up")
        link = next((x for x in links if x.mac == want.mac), None)
        if link is None:
            raise FabricError(f"{ns}: no link with MAC {want.mac} for primary NIC {want.nic_id}")
        up = link.up
        if link.name != PRIMARY_IFNAME:
            if up:
                await _nl(f"{ns}: set {link.name} down to rename it", ipr.link("set", index=link.index, state="down"))
                up = False
            await _nl(
                f"{ns}: rename {link.name} to {PRIMARY_IFNAME}",
                ipr.link("set", index=link.index, ifname=PRIMARY_IFNAME),
            )
            changes.append(f"{ns}: rename {link.name} to {PRIMARY_IFNAME}")
        if not up:
            await _nl(f"{ns}: set {PRIMARY_IFNAME} up", ipr.link("set", index=link.index, state="up"))
            changes.append(f"{ns}: set {PRIMARY_IFNAME} up")
        have = (await _addresses(ipr, ns)).get(link.index, set())
        if (want.address, want.prefixlen) not in have:
            await _nl(
                f"{ns}: add {want.address}/{want.prefixlen} to {PRIMARY_IFNAME}",
                ipr.addr("add", index=link.index, address=want.address, prefixlen=want.prefixlen),
                ok=_EXISTS,
            )
            changes.append(f"{ns}: add {want.address}/{want.prefixlen} to {PRIMARY_IFNAME}")
        defaults = [r for r in await _main_routes(ipr, ns) if r.dst == "0.0.0.0/0"]
        if not any(r.gateway == want.gateway and r.oif == link.index for r in defaults):
            await _nl(
                f"{ns}: default route via {want.gateway}",
                ipr.route("replace", dst="0.0.0.0/0", gateway=want.gateway, oif=link.index, table=MAIN_TABLE),
            )
            changes.append(f"{ns}: default route via {want.gateway} dev {PRIMARY_IFNAME}")
