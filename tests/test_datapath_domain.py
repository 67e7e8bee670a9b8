"""node_datapath's pure planning (services/node_datapath/domain.py): names, desired state from Eni and CceEndpoint
records, plans against a hand-made kernel snapshot, problems, stale things and the two-phase GC. Unit tier."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from chassis.netns import Link
from schemas.base import InstanceType, NetworkMode
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    EndpointState,
    Eni,
    EniLinkState,
    EniOnNode,
    EniState,
    EniUse,
    NetResourceSet,
    NodeSpec,
    NodeStatus,
    PrivateIp,
    host_veth_name,
)
from services.node_datapath.domain import (
    MAIN_TABLE,
    SCOPE_LINK,
    Addr,
    LinkMissing,
    Neigh,
    NetState,
    NodePlan,
    PlanError,
    ReturnPlan,
    Route,
    Rule,
    check_exclusive,
    check_pod,
    derived_mac,
    eni_want,
    enis_on_node,
    exclusive_enis_on_node,
    exclusive_want,
    find_orphan_enis,
    find_stale,
    idle_record,
    key_of_alias,
    live_endpoints,
    node_want,
    plan_eni,
    plan_exclusive_return,
    plan_exclusive_setup,
    plan_gc,
    plan_host,
    plan_idle_exclusive,
    plan_node,
    pod_want,
    veth_alias,
)

MAC = "02:00:00:00:01:01"


def eni(index: int = 1, **kw: object) -> Eni:
    values: dict[str, object] = dict(
        eni_id="eni-a", node="node-a", instance_id="i-a", subnet_id="sbn-1", subnet_cidr=IPv4Network("10.0.1.0/24"),
        mac=MAC.upper(), state=EniState.INUSE, index=index,
        private_ips=[PrivateIp(ip=IPv4Address("10.0.1.5"), primary=True), PrivateIp(ip=IPv4Address("10.0.1.20"))])
    values.update(kw)
    return Eni.model_validate(values)


def endpoint(cid: str = "c1", ip: str = "10.0.1.20", **kw: object) -> CceEndpoint:
    values: dict[str, object] = dict(
        node="node-a", container_id=cid, ifname="eth0", namespace="default", pod=f"pod-{cid}",
        state=EndpointState.READY,
        addresses=[EndpointAddress(ip=IPv4Address(ip), gateway=IPv4Address("10.0.1.1"), eni_id="eni-a",
                                   route_table=128)])
    values.update(kw)
    return CceEndpoint.model_validate(values)


def configured_eni_state() -> NetState:
    link = Link(5, "cce-eni-1", MAC, True, kind="veth")
    return NetState(
        links=(Link(1, "lo", "00:00:00:00:00:00", True), link),
        addrs=(Addr(5, "10.0.1.5", 24),),
        routes=(Route(128, "10.0.1.1/32", 5, None, SCOPE_LINK), Route(128, "0.0.0.0/0", 5, "10.0.1.1")),
    )


# ----------------------------------------------------------------------------------------------------- names


def test_host_veth_names_are_deterministic_and_fit_ifnamsiz() -> None:
    name = host_veth_name("default", "web-0", "eth0")
    assert name.startswith("cce") and len(name) == 14
    assert name == host_veth_name("default", "web-0", "eth0")
    assert name != host_veth_name("default", "web-0", "net1") != host_veth_name("other", "web-0", "eth0")


def test_the_alias_maps_a_veth_back_to_its_endpoint() -> None:
    assert key_of_alias(veth_alias("node-a.c1.eth0")) == "node-a.c1.eth0"
    assert key_of_alias("someone else's") is None and key_of_alias("cce-net ") is None


def test_derived_macs_are_stable_locally_administered_unicast() -> None:
    mac = derived_mac("pod node-a.c1.eth0")
    first = int(mac.split(":")[0], 16)
    assert mac == derived_mac("pod node-a.c1.eth0") and len(mac) == 17
    assert first & 0x02 and not first & 0x01


# ------------------------------------------------------------------------------------------------------ ENIs


def test_only_attached_secondary_ip_enis_of_the_node_are_configured() -> None:
    mine = eni(1)
    others = [eni(2, eni_id="eni-b", node="node-b"), eni(3, eni_id="eni-c", state=EniState.DETACHING),
              eni(4, eni_id="eni-d", use=EniUse.PRIMARY_NIC)]
    assert enis_on_node([*others, mine], "node-a") == [mine]


def test_an_eni_without_mac_or_primary_ip_cannot_be_planned() -> None:
    with pytest.raises(PlanError, match="no MAC"):
        eni_want(eni(mac=""))
    with pytest.raises(PlanError, match="no primary IP"):
        eni_want(eni(private_ips=[PrivateIp(ip=IPv4Address("10.0.1.20"))]))
    with pytest.raises(PlanError, match="no route table"):
        eni_want(eni(200))


def test_a_fresh_eni_link_is_renamed_raised_addressed_and_routed() -> None:
    want = eni_want(eni(1))
    assert (want.link, want.table, want.ip, want.prefixlen, want.gateway) == ("cce-eni-1", 128, "10.0.1.5", 24,
                                                                              "10.0.1.1")
    fresh = NetState(links=(Link(7, "e6fc34c8fc8", MAC, False, kind="veth"),),
                     routes=(Route(128, "10.9.0.0/16", 7, None, SCOPE_LINK),))
    plan = plan_eni(want, fresh)
    assert plan.rename and plan.set_up and plan.add_address
    assert plan.replace_routes == (Route(128, "10.0.1.1/32", 7, None, SCOPE_LINK),
                                   Route(128, "0.0.0.0/0", 7, "10.0.1.1"))
    assert plan.delete_routes == (Route(128, "10.9.0.0/16", 7, None, SCOPE_LINK),)
    assert plan.sysctls["net/ipv4/conf/cce-eni-1/proxy_arp"] == "1"
    assert plan.sysctls["net/ipv4/conf/cce-eni-1/rp_filter"] == "0"


def test_a_configured_eni_needs_no_change() -> None:
    plan = plan_eni(eni_want(eni(1)), configured_eni_state())
    assert not plan.changes_link


def test_eni_link_missing_or_its_name_taken() -> None:
    with pytest.raises(PlanError, match=f"no link with MAC {MAC}"):
        plan_eni(eni_want(eni(1)), NetState())
    taken = NetState(links=(Link(7, "e1", MAC, False), Link(8, "cce-eni-1", "02:00:00:00:09:09", True)))
    with pytest.raises(PlanError, match="taken"):
        plan_eni(eni_want(eni(1)), taken)


# ------------------------------------------------------------------------------------------------------ pods


def test_a_pod_routes_through_its_enis_table() -> None:
    want = pod_want(endpoint(), {"eni-a": eni(2)})
    assert want.table == 129  # the ENI record's index wins over a stale route_table in the endpoint
    assert want.rules() == (Rule(512, MAIN_TABLE, dst="10.0.1.20/32"), Rule(1536, 129, src="10.0.1.20/32"))
    assert want.veth == host_veth_name("default", "pod-c1", "eth0")
    assert pod_want(endpoint(), {}).table == 128  # ENI record not loaded: the endpoint's table


def test_primary_nic_and_route_pods_need_no_rules_and_exclusive_ones_have_no_veth() -> None:
    assert pod_want(endpoint(mode=NetworkMode.VPC_ENI_PRIMARY), {}).rules() == ()
    route = pod_want(endpoint(mode=NetworkMode.VPC_ROUTE), {"eni-a": eni(2)})
    assert (route.table, route.rules()) == (None, ())
    with pytest.raises(PlanError, match="no veth pod"):
        pod_want(endpoint(mode=NetworkMode.VPC_ENI_EXCLUSIVE), {})
    with pytest.raises(PlanError, match="no address"):
        pod_want(endpoint(addresses=[]), {})


def test_an_endpoint_names_the_veth_the_datapath_makes_for_it() -> None:
    """Unit: the gateway confirms an endpoint with `veth_name` while the datapath makes the link: the same name."""
    for mode in (NetworkMode.VPC_ENI, NetworkMode.VPC_ENI_PRIMARY, NetworkMode.VPC_ROUTE):
        for ifname in ("eth0", "net1"):
            ep = endpoint(mode=mode, ifname=ifname)
            assert ep.veth_name == pod_want(ep, {"eni-a": eni(2)}).veth
    assert endpoint(mode=NetworkMode.VPC_ENI_EXCLUSIVE).veth_name == ""


def test_releasing_endpoints_and_other_nodes_are_not_live() -> None:
    eps = [endpoint("c1"), endpoint("c2", state=EndpointState.RELEASING), endpoint("c3", node="node-b")]
    assert [e.container_id for e in live_endpoints(eps, "node-a")] == ["c1"]


def test_check_names_each_missing_piece() -> None:
    want = pod_want(endpoint(), {})
    veth = Link(9, want.veth, want.host_mac, True, alias=want.alias)
    node = NetState(links=(veth,), routes=(), rules=(want.rules()[0],),
                    neighs=(Neigh(9, "10.0.1.20", want.pod_mac, True),))
    eth0 = Link(2, "eth0", want.pod_mac, True)
    pod = NetState(links=(eth0,), addrs=(Addr(2, "10.0.1.20", 32),),
                   routes=(Route(MAIN_TABLE, "10.0.1.1/32", 2, None, SCOPE_LINK),
                           Route(MAIN_TABLE, "0.0.0.0/0", 2, "10.0.1.1")),
                   neighs=(Neigh(2, "10.0.1.1", want.host_mac, True),))
    assert check_pod(want, node, pod) == [
        f"route 10.0.1.20/32 dev {want.veth} missing in main",
        "rule 1536: from 10.0.1.20/32 lookup 128 missing",
    ]
    assert plan_host(want, veth, node).routes == (Route(MAIN_TABLE, "10.0.1.20/32", 9, None, SCOPE_LINK),)
    assert check_pod(want, node, None)[-1] == "pod network namespace is gone"
    assert check_pod(want, NetState(), pod) == [f"host veth {want.veth} missing"]


# ------------------------------------------------------------------------------------------------------- GC


def test_stale_veths_rules_and_eni_tables_are_found() -> None:
    live = pod_want(endpoint("c1"), {})
    gone_alias = veth_alias("node-a.c9.eth0")
    state = NetState(
        links=(Link(9, live.veth, live.host_mac, True, alias=live.alias), Link(10, "cceold", "x", True,
                                                                                alias=gone_alias),
               Link(11, "eth0", "y", True)),
        rules=(*live.rules(), Rule(1536, 128, src="10.0.1.99/32"), Rule(1536, 130, dst=None, src="10.0.1.20/32"),
               Rule(1000, 128, src="10.0.1.98/32"), Rule(32766, MAIN_TABLE)),
        routes=(Route(128, "0.0.0.0/0", 5, "10.0.1.1"), Route(130, "0.0.0.0/0", 5, "10.0.1.1"),
                Route(MAIN_TABLE, "10.0.7.0/24", 11)),
    )
    stale = find_stale(state, {live.key: live}, {128})
    assert sorted(s.what for s in stale) == sorted([
        "host veth cceold of gone endpoint node-a.c9.eth0",
        "stale rule 1536: from 10.0.1.99/32 lookup 128",
        "stale rule 1536: from 10.0.1.20/32 lookup 130",  # the live IP, but the wrong table
        "stale route 0.0.0.0/0 via 10.0.1.1 dev index 5 in table 130",
    ])
    assert next(s for s in stale if s.link is not None).key == "node-a.c9.eth0"


def test_gc_marks_first_and_removes_after_the_grace_but_never_a_young_veth() -> None:
    stale = find_stale(NetState(links=(Link(10, "cceold", "x", True, alias=veth_alias("n.c9.eth0")),),
                                rules=(Rule(512, MAIN_TABLE, dst="10.0.1.99/32"),)), {}, set())
    first = plan_gc(stale, {}, now=100.0, grace_s=10, recent_veths={})
    assert first.remove == () and set(first.marks.values()) == {100.0}
    early = plan_gc(stale, first.marks, now=105.0, grace_s=10, recent_veths={})
    assert early.remove == ()
    due = plan_gc(stale, early.marks, now=110.0, grace_s=10, recent_veths={"cceold": 104.0})
    assert [s.what for s in due.remove] == ["stale rule 512: to 10.0.1.99/32 lookup 254"]  # the veth is young
    veth_only = [s for s in stale if s.link is not None]  # the rule is gone now
    later = plan_gc(veth_only, due.marks, now=114.0, grace_s=10, recent_veths={"cceold": 104.0})
    assert later.remove == tuple(veth_only) and later.marks == {}
    assert plan_gc([], later.marks, now=120.0, grace_s=10, recent_veths={}).marks == {}  # no longer stale


# ------------------------------------------------------------------------------------- the node (route, primary)


def node_record(mode: NetworkMode, router: str | None = None) -> NetResourceSet:
    spec = NodeSpec(instance_id="i-a", instance_type=InstanceType.BCC, zone="z", cpus=8, memory_mib=32768, mode=mode,
                    primary_mac="02:00:00:00:00:0A")
    return NetResourceSet(name="node-a", spec=spec,
                          status=NodeStatus(router_ip=IPv4Address(router) if router else None))


def host_state(*addrs: Addr) -> NetState:
    return NetState(links=(Link(1, "lo", "00:00:00:00:00:00", True), Link(2, "eth0", "02:00:00:00:00:0a", True)),
                    addrs=addrs)


def test_route_mode_puts_the_router_address_on_lo_and_turns_forwarding_on() -> None:
    want = node_want("node-a", node_record(NetworkMode.VPC_ROUTE, "172.16.1.1"), [], [])
    assert (want.router_ip, want.forwarding, want.proxy_arp_mac) == ("172.16.1.1", True, None)
    plan = plan_node(want, host_state(Addr(1, "172.16.9.1", 32, "lo:cce"), Addr(1, "127.0.0.1", 8, "lo")))
    assert plan.add_addrs == (Addr(1, "172.16.1.1", 32, "lo:cce"),)
    assert plan.delete_addrs == (Addr(1, "172.16.9.1", 32, "lo:cce"),)  # ours but stale; 127.0.0.1 is not ours
    assert plan.sysctls == {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0",
                            "net/ipv4/conf/eth0/rp_filter": "0"}
    done = plan_node(want, host_state(Addr(1, "172.16.1.1", 32, "lo:cce")))
    assert (done.add_addrs, done.delete_addrs) == ((), ())


def test_the_router_address_comes_from_a_route_endpoint_before_the_node_record_is_loaded() -> None:
    ep = endpoint(mode=NetworkMode.VPC_ROUTE, addresses=[EndpointAddress(
        ip=IPv4Address("172.16.1.5"), gateway=IPv4Address("172.16.1.1"))])
    assert node_want("node-a", None, [], [ep]).router_ip == "172.16.1.1"
    assert node_want("node-a", node_record(NetworkMode.VPC_ENI), [], []).router_ip is None


def test_primary_mode_turns_proxy_arp_on_the_link_with_the_primary_nics_mac() -> None:
    nic = eni(0, eni_id="primary-i-a", use=EniUse.PRIMARY_NIC, mac="02:00:00:00:00:0A")
    want = node_want("node-a", None, [nic], [])
    assert (want.proxy_arp_mac, want.primary_eni, want.forwarding) == ("02:00:00:00:00:0a", "primary-i-a", True)
    plan = plan_node(want, host_state())
    assert plan.primary_link is not None and plan.primary_link.name == "eth0" and plan.problem == ""
    assert plan.sysctls["net/ipv4/conf/eth0/proxy_arp"] == "1" and plan.sysctls["net/ipv4/ip_forward"] == "1"
    missing = plan_node(want, NetState(links=(Link(1, "lo", "00:00:00:00:00:00", True),)))
    assert "no link with MAC 02:00:00:00:00:0a" in missing.problem


def test_a_plain_eni_node_needs_nothing_of_the_node() -> None:
    want = node_want("node-a", node_record(NetworkMode.VPC_ENI), [eni(1)], [])
    assert plan_node(want, host_state()) == NodePlan()


# ---------------------------------------------------------------------------------------------- exclusive ENIs


XMAC = "02:00:00:00:02:01"


def exclusive_endpoint(cid: str = "x1", **address: object) -> CceEndpoint:
    values: dict[str, object] = dict(ip=IPv4Address("10.0.2.5"), prefix_len=24, gateway=IPv4Address("10.0.2.1"),
                                     eni_id="eni-x", mac=XMAC.upper())
    values.update(address)
    return endpoint(cid, mode=NetworkMode.VPC_ENI_EXCLUSIVE, addresses=[EndpointAddress.model_validate(values)])


def test_an_exclusive_endpoint_wants_the_whole_eni_with_its_subnet_prefix() -> None:
    want = exclusive_want(exclusive_endpoint(), {})
    assert (want.eni_id, want.mac, want.ip, want.prefixlen, want.gateway) == ("eni-x", XMAC, "10.0.2.5", 24,
                                                                              "10.0.2.1")
    from_record = exclusive_want(exclusive_endpoint(mac=None), {"eni-x": eni(eni_id="eni-x", mac=XMAC)})
    assert from_record.mac == XMAC
    with pytest.raises(PlanError, match="has no MAC"):
        exclusive_want(exclusive_endpoint(mac=None), {})
    with pytest.raises(PlanError, match="does not hand a whole ENI"):
        exclusive_want(endpoint(), {})


def test_exclusive_setup_moves_the_node_link_or_finishes_a_move_already_made() -> None:
    want = exclusive_want(exclusive_endpoint(), {})
    node = NetState(links=(Link(7, "e1234", XMAC, False),))
    plan = plan_exclusive_setup(want, node, NetState())
    assert plan.move == Link(7, "e1234", XMAC, False) and plan.original_name == "e1234"
    assert plan_exclusive_setup(want, node, NetState(), original_name="eth1").original_name == "eth1"
    moved = plan_exclusive_setup(want, NetState(), NetState(links=(Link(3, "eth0", XMAC, True),)), "e1234")
    assert (moved.move, moved.rename_in_pod, moved.original_name) == (None, None, "e1234")
    half = plan_exclusive_setup(want, NetState(), NetState(links=(Link(3, "e1234", XMAC, False),)))
    assert half.rename_in_pod == Link(3, "e1234", XMAC, False)
    with pytest.raises(LinkMissing):
        plan_exclusive_setup(want, NetState(), NetState())
    with pytest.raises(PlanError, match="already exists in the pod"):
        plan_exclusive_setup(want, node, NetState(links=(Link(3, "eth0", "02:00:00:00:09:09", True),)))


def test_exclusive_check_wants_the_enis_mac_address_and_default_route() -> None:
    want = exclusive_want(exclusive_endpoint(), {})
    good = NetState(links=(Link(3, "eth0", XMAC, True),), addrs=(Addr(3, "10.0.2.5", 24),),
                    routes=(Route(MAIN_TABLE, "0.0.0.0/0", 3, "10.0.2.1"),))
    assert check_exclusive(want, good) == []
    wrong = NetState(links=(Link(3, "eth0", "02:00:00:00:09:09", False),))
    assert check_exclusive(want, wrong) == [
        f"pod interface eth0 has MAC 02:00:00:00:09:09, not ENI eni-x's {XMAC}", "pod interface eth0 is down",
        "address 10.0.2.5/24 on eth0 missing", "pod default route via 10.0.2.1 dev eth0 missing"]
    assert check_exclusive(want, None) == ["pod network namespace is gone"]


def test_a_returning_eni_takes_its_original_name_unless_taken() -> None:
    pod = NetState(links=(Link(3, "eth0", XMAC, True),))
    assert plan_exclusive_return("eni-x", XMAC, pod, NetState(), "e1234") == ReturnPlan(
        "eni-x", Link(3, "eth0", XMAC, True), "e1234")
    taken = NetState(links=(Link(9, "e1234", "02:00:00:00:09:09", True),))
    assert plan_exclusive_return("eni-x", XMAC, pod, taken, "e1234").name == "ceni00000201"  # type: ignore[union-attr]
    assert plan_exclusive_return("eni-x", XMAC, None, NetState(), "e1234") is None  # netns gone
    assert plan_exclusive_return("eni-x", XMAC, NetState(), NetState(), "e1234") is None  # already home


def test_a_free_eni_is_kept_down_unaddressed_and_under_its_original_name() -> None:
    node = NetState(links=(Link(7, "dev9", XMAC, True),), addrs=(Addr(7, "10.0.2.5", 24),))
    plan = plan_idle_exclusive("eni-x", XMAC, node, "e1234")
    assert plan is not None and (plan.rename, plan.set_down, plan.flush) == ("e1234", True, (Addr(7, "10.0.2.5", 24),))
    tidy = plan_idle_exclusive("eni-x", XMAC, NetState(links=(Link(7, "e1234", XMAC, False),)), "e1234")
    assert tidy is not None and tidy.empty
    assert plan_idle_exclusive("eni-x", XMAC, NetState(), "e1234") is None
    assert idle_record("eni-x", "node-a", None, None).state is EniLinkState.PENDING
    ready = idle_record("eni-x", "node-a", "e1234", None)
    assert (ready.state, ready.link_name, ready.original_name) == (EniLinkState.READY, "e1234", "e1234")


def test_only_enis_in_a_gone_pods_netns_are_orphans_and_gc_waits_out_the_grace() -> None:
    record = EniOnNode(eni_id="eni-x", node="node-a", state=EniLinkState.IN_POD, link_name="eth0",
                       original_name="e1234", netns="/run/netns/p1", endpoint="node-a.x1.eth0")
    enis = [eni(eni_id="eni-x", mac=XMAC, use=EniUse.EXCLUSIVE)]
    orphans = find_orphan_enis(enis, set(), {"eni-x": record}, NetState())
    assert [o.key for o in orphans] == ["node-a.x1.eth0"] and orphans[0].recent_key == "eni eni-x"
    assert find_orphan_enis(enis, {"eni-x"}, {"eni-x": record}, NetState()) == []  # its pod lives
    home = NetState(links=(Link(7, "e1234", XMAC, False),))
    assert find_orphan_enis(enis, set(), {"eni-x": record}, home) == []  # back on the node already
    first = plan_gc(orphans, {}, now=100.0, grace_s=10, recent_veths={"eni eni-x": 95.0})
    assert first.remove == ()
    assert plan_gc(orphans, first.marks, now=110.0, grace_s=10, recent_veths={"eni eni-x": 95.0}).remove == tuple(
        orphans)
    assert exclusive_enis_on_node([*enis, eni(eni_id="eni-s")], "node-a") == enis
