"""Every netlink call of the node datapath (pyroute2 AsyncIPRoute), and nothing else: read a namespace into a
`NetState`, execute the domain's plans, create and delete pod veths. Writes use replace; "already gone" on delete
and "already there" on add are success; netlink errno becomes a `NetnsError` saying what was being done.

Sockets are opened per operation inside the node's namespace (and the pod's) by `chassis.netns`, so the process
itself stays where it reaches NATS, and no socket is shared between concurrent operations (the kernel runs one
dump per socket at a time). pyroute2 is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from chassis import netns
from chassis.netns import EXISTS, GONE, Link, NetnsError
from services.node_datapath.domain import (
    DEFAULT_DST,
    MAIN_TABLE,
    NOPREFIXROUTE,
    SCOPE_LINK,
    Addr,
    EniPlan,
    ExclusivePlan,
    HostPlan,
    IdlePlan,
    Neigh,
    NetState,
    NodePlan,
    PodWant,
    ReturnPlan,
    Route,
    Rule,
    host_cidr,
    normalize_cidr,
)
from services.node_datapath.shaping import LATENCY_US, Qdisc, ShapingPlan, Tbf, TcState

NUD_PERMANENT = 0x80
TC_H_ROOT = 0xFFFFFFFF
INGRESS_HANDLE = 0xFFFF0000
TBF_HANDLE = 0x10000
ETH_P_ALL = 0x0003
_TC_GONE = GONE | {errno.EINVAL}  # deleting a qdisc that is not there: EINVAL or ENOENT depending on the kind
RTN_UNICAST = 1
LOOPBACK_INDEX = 1  # lo is index 1 in every network namespace
_NUD_SKIP = 0x20 | 0x40  # NUD_NOARP, NUD_NONE... entries the kernel keeps for itself


def _route(msg: Any) -> Route:
    table = msg.get("table")
    return Route(
        table=int(table if table is not None else msg["table"]),
        dst=normalize_cidr(msg.get("dst") or "0.0.0.0", int(msg["dst_len"])),
        oif=msg.get("oif"),
        gateway=msg.get("gateway"),
        scope=int(msg["scope"]),
    )


def _rule(msg: Any) -> Rule:
    src, dst = msg.get("src"), msg.get("dst")
    table = msg.get("table")
    return Rule(
        priority=int(msg.get("priority") or 0),
        table=int(table if table is not None else msg["table"]),
        src=normalize_cidr(src, int(msg["src_len"])) if src else None,
        dst=normalize_cidr(dst, int(msg["dst_len"])) if dst else None,
    )


async def _read_links(ipr: Any, what: str) -> NetState:
    """A namespace's links and IPv4 addresses only."""
    links = [netns.link_of(m) for m in await netns.dump(f"list links in {what}", lambda: ipr.link("dump"))]
    addrs = [Addr(int(m["index"]), str(m.get("address")), int(m["prefixlen"]), str(m.get("label") or ""))
             for m in await netns.dump(f"list addresses in {what}", lambda: ipr.addr("dump", family=socket.AF_INET))]
    return NetState(tuple(links), tuple(addrs))


async def _read(ipr: Any, what: str, *, rules: bool = True) -> NetState:
    """A namespace's state, dump by dump (one dump at a time per socket)."""
    v4 = socket.AF_INET
    base = await _read_links(ipr, what)
    links, addrs = base.links, base.addrs
    routes = [_route(m) for m in await netns.dump(f"list routes in {what}", lambda: ipr.route("dump", family=v4))
              if m["type"] == RTN_UNICAST]
    neighs = [Neigh(int(m["ifindex"]), str(m.get("dst")), str(m.get("lladdr") or "").lower(),
                    bool(m["state"] & NUD_PERMANENT))
              for m in await netns.dump(f"list neighbours in {what}", lambda: ipr.neigh("dump", family=v4))
              if m.get("dst") and not m["state"] & _NUD_SKIP]
    rule_list = [_rule(m) for m in await netns.dump(f"list rules in {what}", lambda: ipr.rule("dump", family=v4))] \
        if rules else []
    return NetState(tuple(links), tuple(addrs), tuple(routes), tuple(rule_list), tuple(neighs))


def _route_args(route: Route) -> dict[str, Any]:
    args: dict[str, Any] = {"dst": route.dst, "table": route.table, "scope": route.scope}
    if route.oif is not None:
        args["oif"] = route.oif
    if route.gateway is not None:
        args["gateway"] = route.gateway
    return args


def _rule_args(rule: Rule) -> dict[str, Any]:
    args: dict[str, Any] = {"priority": rule.priority, "table": rule.table, "family": socket.AF_INET}
    if rule.src:
        ip, plen = rule.src.split("/")
        args.update(src=ip, src_len=int(plen))
    if rule.dst:
        ip, plen = rule.dst.split("/")
        args.update(dst=ip, dst_len=int(plen))
    return args


class Kernel:
    """The node's kernel, seen from the node's namespace (`node_ns`: a name, an absolute path, or "" for the
    process's own namespace)."""

    def __init__(self, node_ns: str = "") -> None:
        self.node_ns = node_ns
        self.where = node_ns or "the node namespace"

    @contextlib.asynccontextmanager
    async def _sockets(self, *extra: str) -> AsyncIterator[list[Any]]:
        """AsyncIPRoute handles: the node's first, then one per namespace in `extra`."""
        wanted = [self.node_ns, *extra]
        async with contextlib.AsyncExitStack() as stack:
            handles = netns.adopt(netns.open_socket_fds(wanted), stack)
            yield [handles[ns] for ns in wanted]

    # -- reading ------------------------------------------------------------------------------------------------

    async def snapshot(self) -> NetState:
        async with self._sockets() as (node,):
            return await _read(node, self.where)

    async def pod_state(self, pod_ns: str, *, links_only: bool = False) -> NetState | None:
        """The pod namespace's state (`links_only`: its links and addresses); None when the namespace is gone."""
        where = f"pod namespace {pod_ns}"
        try:
            async with self._sockets(pod_ns) as (_, pod):
                return await (_read_links(pod, where) if links_only else _read(pod, where, rules=False))
        except NetnsError as exc:
            if exc.errno in GONE:
                return None
            raise

    async def sysctls(self, values: dict[str, str]) -> list[str]:
        return netns.write_sysctls(self.node_ns, values)

    async def links(self) -> NetState:
        """The node's links and addresses (no routes, rules or neighbours): cheap."""
        async with self._sockets() as (node,):
            return await _read_links(node, self.where)

    async def exclusive_view(self, pod_ns: str) -> tuple[NetState, NetState]:
        """The node's and the pod's links and addresses, read together."""
        async with self._sockets(pod_ns) as (node, pod):
            return await _read_links(node, self.where), await _read(pod, f"pod namespace {pod_ns}", rules=False)

    # -- the node -----------------------------------------------------------------------------------------------

    async def apply_node(self, plan: NodePlan) -> list[str]:
        """Router address on lo (ours carry the label), then sysctls."""
        changes: list[str] = []
        if plan.add_addrs or plan.delete_addrs:
            async with self._sockets() as (ipr,):
                for a in plan.delete_addrs:
                    await netns.nl(f"delete {a.ip}/{a.prefixlen} from lo",
                                   ipr.addr("del", index=a.index, address=a.ip, prefixlen=a.prefixlen), ok=GONE)
                    changes.append(f"delete router address {a.ip}/{a.prefixlen} from lo")
                for a in plan.add_addrs:
                    await netns.nl(f"add router address {a.ip}/{a.prefixlen} to lo",
                                   ipr.addr("add", index=a.index, address=a.ip, prefixlen=a.prefixlen, label=a.label),
                                   ok=EXISTS)
                    changes.append(f"add router address {a.ip}/{a.prefixlen} to lo ({a.label})")
        changes += netns.write_sysctls(self.node_ns, plan.sysctls)
        return changes

    # -- exclusive ENIs -----------------------------------------------------------------------------------------

    async def setup_exclusive(self, plan: ExclusivePlan, pod_ns: str) -> list[str]:
        """Move the ENI's link into the pod under its ifname (one netlink message: the name never clashes in
        either namespace), then up, address ip/prefix, default route via the gateway. Idempotent."""
        want = plan.want
        where = f"pod namespace {pod_ns}"
        changes: list[str] = []
        async with self._sockets(pod_ns) as (node, pod):
            if plan.move is not None:
                fd = os.open(netns.netns_path(pod_ns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    await netns.nl(f"move {plan.move.name} (ENI {want.eni_id}) into {pod_ns} as {want.ifname}",
                                   node.link("set", index=plan.move.index, net_ns_fd=fd, ifname=want.ifname))
                finally:
                    os.close(fd)
                changes.append(f"move {plan.move.name} into the pod as {want.ifname}")
            elif plan.rename_in_pod is not None:
                old = plan.rename_in_pod
                await netns.nl(f"set {old.name} down in the pod", pod.link("set", index=old.index, state="down"))
                await netns.nl(f"rename {old.name} to {want.ifname} in the pod",
                               pod.link("set", index=old.index, ifname=want.ifname))
                changes.append(f"rename {old.name} to {want.ifname} in the pod")
            link = await self._link(pod, want.ifname, where)
            if link is None or link.mac != want.mac:
                raise NetnsError(f"ENI {want.eni_id} link {want.ifname} vanished from {pod_ns} while being set up")
            await netns.nl("set lo up in the pod", pod.link("set", index=LOOPBACK_INDEX, state="up"))
            await netns.nl(f"set {want.ifname} up in the pod", pod.link("set", index=link.index, state="up"))
            await netns.nl(f"add {want.ip}/{want.prefixlen} to {want.ifname}",
                           pod.addr("add", index=link.index, address=want.ip, prefixlen=want.prefixlen), ok=EXISTS)
            await netns.nl(f"pod default route via {want.gateway}",
                           pod.route("replace", dst=DEFAULT_DST, gateway=want.gateway, oif=link.index,
                                     table=MAIN_TABLE))
        return changes

    async def return_exclusive(self, plan: ReturnPlan, pod_ns: str) -> list[str]:
        """Move an ENI's link from the pod netns back to the node under plan.name (the move takes it down and
        drops its addresses; whatever is left is flushed). "Already gone" is success."""
        changes: list[str] = []
        node_path = netns.netns_path(self.node_ns) if self.node_ns else "/proc/self/ns/net"
        async with self._sockets(pod_ns) as (node, pod):
            fd = os.open(node_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                await netns.nl(f"set {plan.link.name} down in {pod_ns}",
                               pod.link("set", index=plan.link.index, state="down"), ok=GONE)
                moved = await netns.nl(
                    f"move {plan.link.name} (ENI {plan.eni_id}) from {pod_ns} back to the node as {plan.name}",
                    pod.link("set", index=plan.link.index, net_ns_fd=fd, ifname=plan.name), ok=GONE)
            finally:
                os.close(fd)
            if moved is None:
                return changes
            changes.append(f"move ENI {plan.eni_id} back to the node as {plan.name}")
            back = await self._link(node, plan.name)
            if back is not None:
                for a in (await _read_links(node, self.where)).addrs:
                    if a.index == back.index:
                        await netns.nl(f"flush {a.ip} from {plan.name}",
                                       node.addr("del", index=a.index, address=a.ip, prefixlen=a.prefixlen), ok=GONE)
        return changes

    async def idle_exclusive(self, plan: IdlePlan) -> list[str]:
        """A free exclusive ENI's link on the node: original name, down, no address."""
        if plan.empty:
            return []
        changes: list[str] = []
        link = plan.link
        async with self._sockets() as (ipr,):
            if plan.set_down:  # (a link is renamed only while down)
                await netns.nl(f"set {link.name} down", ipr.link("set", index=link.index, state="down"), ok=GONE)
                changes.append(f"set {link.name} down")
            if plan.rename:
                await netns.nl(f"rename {link.name} back to {plan.rename} (ENI {plan.eni_id})",
                               ipr.link("set", index=link.index, ifname=plan.rename), ok=GONE)
                changes.append(f"rename {link.name} back to {plan.rename}")
            for a in plan.flush:
                await netns.nl(f"flush {a.ip}/{a.prefixlen} from {plan.name}",
                               ipr.addr("del", index=a.index, address=a.ip, prefixlen=a.prefixlen), ok=GONE)
                changes.append(f"flush {a.ip}/{a.prefixlen} from {plan.name}")
        return changes

    # -- ENIs ---------------------------------------------------------------------------------------------------

    async def apply_eni(self, plan: EniPlan) -> list[str]:
        """Execute an ENI plan; returns what changed."""
        want, link = plan.want, plan.link
        changes: list[str] = []
        async with self._sockets() as (ipr,):
            if plan.rename:
                if link.up:
                    await netns.nl(f"set {link.name} down to rename it", ipr.link("set", index=link.index,
                                                                                    state="down"))
                await netns.nl(f"rename {link.name} to {want.link} (ENI {want.eni_id})",
                               ipr.link("set", index=link.index, ifname=want.link))
                changes.append(f"rename {link.name} to {want.link}")
            if plan.set_up:
                await netns.nl(f"set {want.link} up", ipr.link("set", index=link.index, state="up"))
                changes.append(f"set {want.link} up")
            if plan.add_address:
                await netns.nl(
                    f"add {want.ip}/{want.prefixlen} to {want.link}",
                    ipr.addr("add", index=link.index, address=want.ip, prefixlen=want.prefixlen,
                             flags=NOPREFIXROUTE),
                    ok=EXISTS,
                )
                changes.append(f"add {want.ip}/{want.prefixlen} noprefixroute to {want.link}")
            names = {link.index: want.link}
            for route in plan.delete_routes:
                await netns.nl(f"delete {route.describe(names)} in {route.where}",
                               ipr.route("del", **_route_args(route)), ok=GONE)
                changes.append(f"delete {route.describe(names)} in {route.where}")
            for route in plan.replace_routes:
                await netns.nl(f"add {route.describe(names)} in {route.where}",
                               ipr.route("replace", **_route_args(route)))
                changes.append(f"add {route.describe(names)} in {route.where}")
        changes += netns.write_sysctls(self.node_ns, plan.sysctls)
        return changes

    # -- pods ---------------------------------------------------------------------------------------------------

    async def setup_pod(self, want: PodWant, pod_ns: str) -> list[str]:
        """Create (or re-create, or complete) a pod's veth pair and everything on both sides. Idempotent: an
        existing pair of this endpoint is kept and completed; a veth of that name belonging to another endpoint,
        or whose pod side is missing, is replaced."""
        changes: list[str] = []
        async with self._sockets(pod_ns) as (node, pod):
            # a new pod's pair is made at once; only when a link of either name is there already is it looked at
            if await self._create_pair(node, want, pod_ns, ok=EXISTS):
                changes.append(f"create veth {want.veth} <-> {want.ifname}")
            else:
                changes += await self._complete_pair(node, pod, want, pod_ns)
            veth = await self._link(node, want.veth)
            pod_if = await self._link(pod, want.ifname, f"pod namespace {pod_ns}")
            if veth is None or pod_if is None:
                raise NetnsError(f"veth {want.veth} <-> {want.ifname} vanished while being set up")
            await netns.nl(f"set {want.veth} up", node.link("set", index=veth.index, state="up", ifalias=want.alias))
            await self._pod_side(pod, want, pod_if.index, veth.mac)
            await self.repair_host(HostPlan(veth, routes=_host_routes(want, veth.index),
                                            neighs=(Neigh(veth.index, want.ip, want.pod_mac, True),),
                                            rules=want.rules()), node)
        return changes

    async def _complete_pair(self, node: Any, pod: Any, want: PodWant, pod_ns: str) -> list[str]:
        """A link of the pair's names exists: an existing pair of this endpoint is kept, a veth of that name
        belonging to another endpoint (or whose pod side is missing) replaced; an interface of the pod's name
        without its host veth is not ours to take."""
        changes: list[str] = []
        veth = await self._link(node, want.veth)
        pod_if = None if veth is None else await self._link(pod, want.ifname, f"pod namespace {pod_ns}")
        if veth is not None and veth.alias == want.alias and pod_if is not None and pod_if.mac == want.pod_mac:
            return changes
        if veth is not None:
            await netns.nl(f"delete {want.veth} ({veth.alias or 'no alias'}) to replace it",
                           node.link("del", index=veth.index), ok=GONE)
            changes.append(f"replace host veth {want.veth} ({veth.alias or 'no alias'})")
        try:
            await self._create_pair(node, want, pod_ns)
        except NetnsError as exc:
            if exc.errno in EXISTS and await self._link(pod, want.ifname, f"pod namespace {pod_ns}"):
                raise NetnsError(f"interface {want.ifname} already exists in {pod_ns} (not ours: its host "
                                 f"veth {want.veth} is missing)", code=exc.errno) from exc
            raise
        changes.append(f"create veth {want.veth} <-> {want.ifname}")
        return changes

    async def _create_pair(self, node: Any, want: PodWant, pod_ns: str, ok: frozenset[int] = frozenset()) -> bool:
        """Make the veth pair, its peer in the pod; False when an errno in `ok` said no."""
        fd = os.open(netns.netns_path(pod_ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer = {"ifname": want.ifname, "net_ns_fd": fd, "address": want.pod_mac}
            done = await netns.nl(f"create veth {want.veth} with peer {want.ifname} in {pod_ns}",
                                  netns.done(node.link("add", ifname=want.veth, kind="veth", address=want.host_mac,
                                                       peer=peer)), ok=ok)
        finally:
            os.close(fd)
        return done is not None

    async def _pod_side(self, pod: Any, want: PodWant, index: int, host_mac: str) -> None:
        ifname = want.ifname
        await netns.nl("set lo up in the pod", pod.link("set", index=LOOPBACK_INDEX, state="up"))
        await netns.nl(f"set {ifname} up in the pod", pod.link("set", index=index, state="up"))
        await netns.nl(f"add {want.ip}/32 to {ifname}",
                       pod.addr("add", index=index, address=want.ip, prefixlen=32), ok=EXISTS)
        await netns.nl(f"pod route {want.gateway}/32 dev {ifname}",
                       pod.route("replace", dst=host_cidr(want.gateway), oif=index, scope=SCOPE_LINK,
                                 table=MAIN_TABLE))
        await netns.nl(f"pod default route via {want.gateway}",
                       pod.route("replace", dst=DEFAULT_DST, gateway=want.gateway, oif=index, table=MAIN_TABLE))
        await netns.nl(f"pod neighbour {want.gateway} -> {host_mac}",
                       pod.neigh("replace", dst=want.gateway, lladdr=host_mac, ifindex=index, state=NUD_PERMANENT))

    async def repair_host(self, plan: HostPlan, node: Any | None = None) -> list[str]:
        """Add a pod's missing host-side objects (replace semantics)."""
        if plan.empty:
            return []
        if node is None:
            async with self._sockets() as (ipr,):
                return await self.repair_host(plan, ipr)
        names = {plan.veth.index: plan.veth.name}
        changes: list[str] = []
        if plan.set_up:
            await netns.nl(f"set {plan.veth.name} up", node.link("set", index=plan.veth.index, state="up"))
            changes.append(f"set {plan.veth.name} up")
        for route in plan.routes:
            await netns.nl(f"add {route.describe(names)} in {route.where}", node.route("replace", **_route_args(route)))
            changes.append(f"add {route.describe(names)} in {route.where}")
        for n in plan.neighs:
            await netns.nl(f"neighbour {n.ip} -> {n.mac} dev {plan.veth.name}",
                           node.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=n.index, state=NUD_PERMANENT))
            changes.append(f"add neighbour {n.ip} lladdr {n.mac} dev {plan.veth.name}")
        for rule in plan.rules:
            await netns.nl(f"add {rule.describe()}", node.rule("add", **_rule_args(rule)), ok=EXISTS)
            changes.append(f"add {rule.describe()}")
        return changes

    # -- bandwidth (tc) -----------------------------------------------------------------------------------------

    async def tc_state(self, veth: str, ifb: str) -> TcState:
        """The pod's veth (root and ingress qdiscs, where its ingress redirects to) and its ifb (root qdisc)."""
        async with self._sockets() as (ipr,):
            link = await self._link(ipr, veth)
            dev = await self._link(ipr, ifb)
            if link is None:
                return TcState(None, ifb=dev)
            root, ingress, redirect = await self._qdiscs(ipr, link.index)
            ifb_root = (await self._qdiscs(ipr, dev.index))[0] if dev is not None else None
            return TcState(link, root, ingress, redirect, dev, ifb_root)

    async def _qdiscs(self, ipr: Any, index: int) -> tuple[Qdisc | None, bool, int | None]:
        """A link's root qdisc (None: the default), whether it has an ingress qdisc, and its redirect target."""
        root: Qdisc | None = None
        ingress = False
        for q in await netns.dump(f"list qdiscs of link {index}", lambda: ipr.get_qdiscs(index=index)):
            if q["parent"] == TC_H_ROOT and q.get("kind") == "tbf":
                params = dict((q.get_attr("TCA_OPTIONS") or {}).get("attrs") or []).get("TCA_TBF_PARMS") or {}
                root = Qdisc("tbf", int(params.get("rate", 0)) or None)
            elif q["parent"] == TC_H_ROOT and q.get("kind") not in ("noqueue", "noop", None):
                root = Qdisc(str(q.get("kind")))
            elif q["handle"] == INGRESS_HANDLE:
                ingress = True
        redirect = None
        if ingress:
            filters = await netns.dump(f"list ingress filters of link {index}",
                                       lambda: ipr.get_filters(index=index, parent=INGRESS_HANDLE))
            redirect = next((t for t in map(_redirect_target, filters) if t is not None), None)
        return root, ingress, redirect

    async def apply_shaping(self, plan: ShapingPlan, veth_index: int) -> list[str]:
        """Execute a shaping plan on the pod's veth (by index) and its ifb. "Already gone" is success."""
        want = plan.want
        changes: list[str] = []
        async with self._sockets() as (ipr,):
            if plan.create_ifb:
                await netns.nl(f"create ifb {want.ifb}", ipr.link("add", ifname=want.ifb, kind="ifb"), ok=EXISTS)
                changes.append(f"create ifb {want.ifb}")
            ifb = await self._link(ipr, want.ifb) if (plan.create_ifb or plan.ifb_up or plan.set_ifb_root
                                                      or plan.redirect) else None
            if ifb is not None and (plan.create_ifb or plan.ifb_up):
                await netns.nl(f"set ifb {want.ifb} up",
                               ipr.link("set", index=ifb.index, state="up", ifalias=want.alias))
            if ifb is not None and plan.set_ifb_root is not None:
                await self._tbf(ipr, ifb.index, want.ifb, plan.set_ifb_root)
                changes.append(f"{want.ifb} root {plan.set_ifb_root.describe}")
            if plan.redirect or plan.clear_ingress:
                await netns.nl(f"delete the ingress qdisc of {want.veth}",
                               ipr.tc("del", "ingress", index=veth_index, handle=INGRESS_HANDLE), ok=_TC_GONE)
            if plan.redirect and ifb is not None:
                await netns.nl(f"add an ingress qdisc to {want.veth}",
                               ipr.tc("add", "ingress", index=veth_index, handle=INGRESS_HANDLE))
                await netns.nl(f"redirect {want.veth} ingress to {want.ifb}",
                               ipr.tc("add-filter", "u32", index=veth_index, parent=INGRESS_HANDLE, prio=1,
                                      protocol=ETH_P_ALL, keys=["0x0/0x0+0"], target=0x10000,
                                      action=[{"kind": "mirred", "direction": "egress", "action": "redirect",
                                               "ifindex": ifb.index}]))
                changes.append(f"redirect {want.veth} ingress to {want.ifb}")
            elif plan.clear_ingress:
                changes.append(f"remove the ingress redirect of {want.veth}")
            if plan.set_root is not None:
                await self._tbf(ipr, veth_index, want.veth, plan.set_root)
                changes.append(f"{want.veth} root {plan.set_root.describe}")
            if plan.clear_root:
                await netns.nl(f"delete the root qdisc of {want.veth}",
                               ipr.tc("del", index=veth_index, root=True), ok=_TC_GONE)
                changes.append(f"remove the root qdisc of {want.veth}")
        if plan.delete_ifb and await self.delete_ifb(want.ifb, want.alias):
            changes.append(f"delete ifb {want.ifb}")
        return changes

    async def _tbf(self, ipr: Any, index: int, name: str, tbf: Tbf) -> None:
        await netns.nl(f"{name} root {tbf.describe}",
                       ipr.tc("replace", "tbf", index=index, handle=TBF_HANDLE, rate=tbf.rate, burst=tbf.burst,
                              latency=LATENCY_US))

    async def delete_ifb(self, name: str, alias: str | None = None) -> bool:
        """Delete a pod's ifb by name (only if it carries `alias`, when given); False when there was none."""
        async with self._sockets() as (ipr,):
            link = await self._link(ipr, name)
            if link is None or link.kind != "ifb" or (alias is not None and link.alias != alias):
                return False
            deleted = netns.done(ipr.link("del", index=link.index))
            return await netns.nl(f"delete ifb {name}", deleted, ok=GONE) is not None

    # -- removal ------------------------------------------------------------------------------------------------

    async def set_down(self, link: Link) -> bool:
        """Set a link down: the kernel drops at once its routes and neighbours (permanent ones too), so no traffic
        goes through it; False when it was already gone. (Deleting a link waits for the kernel's RCU grace periods,
        ~20 ms here; this does not.)"""
        return await self._quietly(f"set {link.name} down", lambda ipr: ipr.link("set", index=link.index,
                                                                                 state="down"))

    async def delete_link_aside(self, link: Link) -> bool:
        """`delete_link` from a thread of its own: the event loop goes on serving while the kernel deletes."""
        return await asyncio.to_thread(netns.delete_link, self.node_ns, link.index, f"delete link {link.name}")

    async def delete_link(self, link: Link) -> bool:
        """Delete a link (its routes and neighbours go with it); False when it was already gone."""
        return await self._quietly(f"delete link {link.name}", lambda ipr: ipr.link("del", index=link.index))

    async def link(self, name: str) -> Link | None:
        async with self._sockets() as (ipr,):
            return await self._link(ipr, name)

    async def delete_rules(self, rules: list[Rule]) -> list[Rule]:
        """Delete rules; returns those that were there."""
        deleted: list[Rule] = []
        if rules:
            async with self._sockets() as (ipr,):
                for rule in rules:
                    if await netns.nl(f"delete {rule.describe()}", netns.done(ipr.rule("del", **_rule_args(rule))),
                                      ok=GONE):
                        deleted.append(rule)
        return deleted

    async def delete_rule(self, rule: Rule) -> bool:
        return await self._quietly(f"delete {rule.describe()}", lambda ipr: ipr.rule("del", **_rule_args(rule)))

    async def delete_route(self, route: Route) -> bool:
        return await self._quietly(f"delete {route.describe({})} in {route.where}",
                                   lambda ipr: ipr.route("del", **_route_args(route)))

    async def _quietly(self, what: str, call: Callable[[Any], Awaitable[Any]]) -> bool:
        async with self._sockets() as (ipr,):
            done = await netns.nl(what, netns.done(call(ipr)), ok=GONE)
        return done is not None

    async def _link(self, ipr: Any, name: str, where: str = "") -> Link | None:
        msgs = await netns.nl(f"look up {name} in {where or self.where}", ipr.link("get", ifname=name), ok=GONE)
        return netns.link_of(msgs[0]) if msgs else None


def _redirect_target(msg: Any) -> int | None:
    """The ifindex a u32 filter's mirred action redirects to, if it has one."""
    options = dict((msg.get_attr("TCA_OPTIONS") or {}).get("attrs") or [])
    acts = (options.get("TCA_U32_ACT") or {}).get("attrs") or []
    for _prio, act in acts:
        act_attrs = dict(act.get("attrs") or [])
        parms = dict((act_attrs.get("TCA_ACT_OPTIONS") or {}).get("attrs") or []).get("TCA_MIRRED_PARMS")
        if act_attrs.get("TCA_ACT_KIND") == "mirred" and parms:
            return int(parms["ifindex"])
    return None


def _host_routes(want: PodWant, index: int) -> tuple[Route, ...]:
    return (Route(MAIN_TABLE, host_cidr(want.ip), index, None, SCOPE_LINK),)
