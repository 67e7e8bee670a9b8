"""Unit tier: a pod's bandwidth limits — the annotations and the CNI capability (services/cni_gateway/bandwidth.py)
and the tc plans of the datapath (services/node_datapath/shaping.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chassis.netns import Link
from schemas.records import Bandwidth
from services.cni_gateway.bandwidth import (
    CHAINED,
    EGRESS_ANNOTATION,
    INGRESS_ANNOTATION,
    MIN_BURST,
    BandwidthError,
    bandwidth_of,
    parse_quantity,
)
from services.node_datapath.domain import NetState
from services.node_datapath.shaping import (
    Qdisc,
    TcState,
    ifb_alias,
    ifb_name,
    plan_shaping,
    shaping_want,
    stale_ifbs,
)

pytestmark = pytest.mark.unit

VETH = "cce0123456789a"


@pytest.mark.parametrize(("text", "value"), [("10M", 10**7), ("1G", 10**9), ("500k", 500_000), ("1.5M", 1_500_000),
                                             ("2Mi", 2 * 2**20), ("100e3", 100_000), ("1000", 1000),
                                             ("2500m", Decimal("2.5"))])
def test_quantities_read_as_kubernetes_writes_them(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_annotations_give_the_limits_with_a_sane_burst() -> None:
    bw = bandwidth_of({}, {INGRESS_ANNOTATION: "10M", EGRESS_ANNOTATION: "1G", "other": "x"})
    assert bw == Bandwidth(ingress_bps=10**7, ingress_burst_bytes=125_000, egress_bps=10**9,
                           egress_burst_bytes=10**9 // 80)
    assert bandwidth_of({}, {}) is None
    slow = bandwidth_of({}, {EGRESS_ANNOTATION: "1M"})
    assert slow is not None and slow.egress_burst_bytes == MIN_BURST  # 100 ms of 1 Mbit/s is below the floor
    assert bandwidth_of({}, {INGRESS_ANNOTATION: "100G"}) is None  # beyond what tbf can shape: no limit


@pytest.mark.parametrize(("annotations", "words"), [
    ({INGRESS_ANNOTATION: "fast"}, "kubernetes.io/ingress-bandwidth='fast': 'fast' is not a quantity"),
    ({EGRESS_ANNOTATION: "10"}, "between 1k and 1P"),
    ({EGRESS_ANNOTATION: "2P"}, "between 1k and 1P"),
    ({EGRESS_ANNOTATION: "-5M"}, "is not a quantity"),
    ({EGRESS_ANNOTATION: ""}, "is not a quantity"),
])
def test_a_malformed_annotation_is_named_with_its_value(annotations: dict[str, str], words: str) -> None:
    with pytest.raises(BandwidthError, match="annotation") as err:
        bandwidth_of({}, annotations)
    assert words in str(err.value)


def test_the_runtime_config_wins_and_its_giant_burst_is_capped_at_a_second() -> None:
    runtime = {"runtimeConfig": {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 2**32 - 1,
                                               "egressRate": 16_000_000}}}
    bw = bandwidth_of(runtime, {INGRESS_ANNOTATION: "1M"})
    assert bw is not None and bw.ingress_bps == 8_000_000 and bw.ingress_burst_bytes == 1_000_000
    assert bw.egress_bps == 16_000_000 and bw.egress_burst_bytes == 16_000_000 // 80
    with pytest.raises(BandwidthError, match="ingressRate"):
        bandwidth_of({"runtimeConfig": {"bandwidth": {"ingressRate": "fast"}}}, {})
    assert bandwidth_of({"bandwidth": CHAINED, "runtimeConfig": {"bandwidth": {"ingressRate": 8_000_000}}},
                        {INGRESS_ANNOTATION: "1M"}) is None  # a chained bandwidth plugin shapes


# ---- the datapath's plans ---------------------------------------------------------------------------------------


def veth(up: bool = True) -> Link:
    return Link(7, VETH, "02:00:00:00:00:07", up, "cce-net node-1.c1.eth0", "veth")


def ifb(index: int = 9, up: bool = True, alias: str = ifb_alias("node-1.c1.eth0")) -> Link:
    return Link(index, ifb_name(VETH), "02:00:00:00:00:09", up, alias, "ifb")


WANT = shaping_want("node-1.c1.eth0", VETH, Bandwidth(ingress_bps=8_000_000, ingress_burst_bytes=20_000,
                                                      egress_bps=16_000_000, egress_burst_bytes=30_000))


def test_a_fresh_veth_gets_a_root_tbf_an_ifb_and_the_redirect() -> None:
    plan = plan_shaping(WANT, TcState(veth()))
    assert plan.set_root is not None and (plan.set_root.rate, plan.set_root.burst) == (1_000_000, 20_000)
    assert plan.create_ifb and plan.redirect and plan.set_ifb_root is not None
    assert plan.set_ifb_root.rate == 2_000_000
    assert not (plan.clear_root or plan.clear_ingress or plan.delete_ifb)


def test_a_shaped_veth_needs_nothing_and_what_is_missing_is_named() -> None:
    done = TcState(veth(), Qdisc("tbf", 1_000_000), True, 9, ifb(), Qdisc("tbf", 2_000_000))
    assert plan_shaping(WANT, done).empty
    wrong = TcState(veth(), Qdisc("tbf", 5), True, 3, ifb(up=False), None)
    problems = plan_shaping(WANT, wrong).problems()
    assert len(problems) == 4 and "root qdisc is not tbf rate 8000000bit" in problems[0]
    assert plan_shaping(WANT, TcState(veth(), None, True, 9, ifb(alias="someone else"), None)).ifb_up


def test_limits_no_longer_asked_for_are_taken_away() -> None:
    none = shaping_want("node-1.c1.eth0", VETH, None)
    plan = plan_shaping(none, TcState(veth(), Qdisc("tbf", 1), True, 9, ifb(), Qdisc("tbf", 2)))
    assert plan.clear_root and plan.clear_ingress and plan.delete_ifb and plan.set_root is None
    assert plan_shaping(none, TcState(veth(), Qdisc("pfifo_fast"))).empty  # not ours: left alone


def test_stale_ifbs_are_those_of_gone_or_unlimited_endpoints() -> None:
    state = NetState((veth(), ifb(), Link(10, "ccebffffffffff", "02:00:00:00:00:0a", True,
                                          ifb_alias("node-1.gone.eth0"), "ifb")), ())
    assert [s.link.name for s in stale_ifbs(state, {WANT.key: WANT}) if s.link] == ["ccebffffffffff"]
    ingress_only = shaping_want(WANT.key, VETH, Bandwidth(ingress_bps=8_000_000))
    assert len(stale_ifbs(state, {WANT.key: ingress_only})) == 2


@given(st.booleans(), st.booleans(), st.sampled_from([None, "tbf", "pfifo"]), st.booleans(), st.booleans())
def test_applying_a_plan_leaves_nothing_to_do(ingress: bool, egress: bool, root: str | None, has_ingress: bool,
                                              has_ifb: bool) -> None:
    """Model the adapter: after the plan, the state is what the plan made it, and planning again is empty."""
    bw = Bandwidth(ingress_bps=8_000_000 if ingress else None, egress_bps=16_000_000 if egress else None)
    want = shaping_want("node-1.c1.eth0", VETH, bw)
    before = TcState(veth(), Qdisc(root, 3) if root else None, has_ingress, 9 if has_ingress else None,
                     ifb() if has_ifb else None, Qdisc("tbf", 1) if has_ifb else None)
    plan = plan_shaping(want, before)
    new_root = (Qdisc("tbf", plan.set_root.rate) if plan.set_root else None if plan.clear_root else before.root)
    new_ifb = None if plan.delete_ifb else ifb() if (plan.create_ifb or plan.ifb_up or before.ifb) else None
    ifb_root = Qdisc("tbf", plan.set_ifb_root.rate) if plan.set_ifb_root else before.ifb_root
    redirected = plan.redirect or (before.ingress and not plan.clear_ingress)
    after = TcState(veth(), new_root, redirected, 9 if redirected else None, new_ifb, ifb_root if new_ifb else None)
    assert plan_shaping(want, after).empty
