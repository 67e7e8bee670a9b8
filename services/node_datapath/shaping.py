"""A pod's bandwidth limits on the node (pure planning; the kernel adapter in netlink.py executes the plans).

Traffic into the pod leaves the node through the pod's host-side veth: a token bucket (tbf) as the veth's root qdisc
shapes it. Traffic out of the pod enters the node through the same veth, where a qdisc cannot queue it; the veth's
ingress qdisc redirects it (u32 match-all, mirred) to an ifb device of the pod's, whose root tbf shapes it. The pod's
own side is left alone (the pod cannot undo what is on the node). The ifb is `cceb` + the veth's hash, carries the
alias `cce-net-ifb <endpoint key>`, and goes with the pod (DEL, or resync's collection of stale things).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chassis.netns import Link
from schemas.records import Bandwidth
from services.node_datapath.domain import NetState, Stale

IFB_PREFIX = "cceb"
IFB_ALIAS_PREFIX = "cce-net-ifb "
LATENCY_US = 25_000  # how long a packet may wait in the bucket (sets the queue's length with the rate)
TBF = "tbf"


def ifb_name(veth: str) -> str:
    """`cceb` + the veth's 11 hex digits: 15 characters, within IFNAMSIZ."""
    return IFB_PREFIX + veth[3:]


def ifb_alias(key: str) -> str:
    return f"{IFB_ALIAS_PREFIX}{key}"


def key_of_ifb_alias(alias: str) -> str | None:
    return alias[len(IFB_ALIAS_PREFIX):] if alias.startswith(IFB_ALIAS_PREFIX) else None


@dataclass(frozen=True)
class Tbf:
    rate: int  # bytes per second (the kernel's unit)
    burst: int  # bytes

    @property
    def describe(self) -> str:
        return f"tbf rate {self.rate * 8}bit burst {self.burst}b"


@dataclass(frozen=True)
class ShapingWant:
    key: str
    veth: str
    ingress: Tbf | None  # into the pod: the host veth's root qdisc
    egress: Tbf | None  # out of the pod: the ifb's root qdisc

    @property
    def ifb(self) -> str:
        return ifb_name(self.veth)

    @property
    def alias(self) -> str:
        return ifb_alias(self.key)

    @property
    def shapes(self) -> bool:
        return self.ingress is not None or self.egress is not None


def _tbf(bps: int | None, burst: int | None) -> Tbf | None:
    if not bps:
        return None
    rate = max(1, bps // 8)
    return Tbf(rate, burst or max(16 * 1024, rate // 10))


def shaping_want(key: str, veth: str, bandwidth: Bandwidth | None) -> ShapingWant:
    bw = bandwidth or Bandwidth()
    return ShapingWant(key, veth, _tbf(bw.ingress_bps, bw.ingress_burst_bytes),
                       _tbf(bw.egress_bps, bw.egress_burst_bytes))


# ---- what the kernel has ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Qdisc:
    kind: str
    rate: int | None = None  # tbf: bytes per second


@dataclass(frozen=True)
class TcState:
    """The pod's veth and ifb as the adapter read them."""

    veth: Link | None
    root: Qdisc | None = None  # the veth's root qdisc (None: the default)
    ingress: bool = False  # the veth has an ingress qdisc
    redirect_to: int | None = None  # the ifindex its ingress filter redirects to
    ifb: Link | None = None
    ifb_root: Qdisc | None = None


@dataclass(frozen=True)
class ShapingPlan:
    want: ShapingWant
    set_root: Tbf | None = None  # replace the veth's root qdisc
    clear_root: bool = False
    create_ifb: bool = False
    ifb_up: bool = False
    set_ifb_root: Tbf | None = None
    redirect: bool = False  # (re)install the veth's ingress qdisc and its redirect to the ifb
    clear_ingress: bool = False
    delete_ifb: bool = False

    @property
    def empty(self) -> bool:
        return not (self.set_root or self.clear_root or self.create_ifb or self.ifb_up or self.set_ifb_root
                    or self.redirect or self.clear_ingress or self.delete_ifb)

    def problems(self) -> list[str]:
        """What is not as wanted, in words (CHECK reports them)."""
        w = self.want
        out = [f"{w.veth} root qdisc is not {self.set_root.describe}" if self.set_root else "",
               f"{w.veth} has a root qdisc no limit asks for" if self.clear_root else "",
               f"ifb {w.ifb} is missing" if self.create_ifb else "",
               f"ifb {w.ifb} is down or not this pod's" if self.ifb_up else "",
               f"ifb {w.ifb} root qdisc is not {self.set_ifb_root.describe}" if self.set_ifb_root else "",
               f"{w.veth} ingress is not redirected to {w.ifb}" if self.redirect else "",
               f"{w.veth} has an ingress qdisc no limit asks for" if self.clear_ingress else "",
               f"ifb {w.ifb} is there though no egress limit asks for it" if self.delete_ifb else ""]
        return [p for p in out if p]


def _differs(have: Qdisc | None, want: Tbf) -> bool:
    return have is None or have.kind != TBF or have.rate != want.rate


def plan_shaping(want: ShapingWant, state: TcState) -> ShapingPlan:
    """What to change so the veth and the ifb shape as wanted (and nothing is left where no limit asks)."""
    ingress, egress = want.ingress, want.egress
    set_root = ingress if ingress is not None and _differs(state.root, ingress) else None
    clear_root = ingress is None and state.root is not None and state.root.kind == TBF
    if egress is None:
        return ShapingPlan(want, set_root, clear_root, clear_ingress=state.ingress, delete_ifb=state.ifb is not None)
    ifb = state.ifb
    return ShapingPlan(
        want, set_root, clear_root, create_ifb=ifb is None,
        ifb_up=ifb is not None and (not ifb.up or ifb.alias != want.alias),
        set_ifb_root=egress if ifb is None or _differs(state.ifb_root, egress) else None,
        redirect=ifb is None or not state.ingress or state.redirect_to != ifb.index)


def stale_ifbs(state: NetState, shaped: Mapping[str, ShapingWant]) -> list[Stale]:
    """Our ifb devices whose endpoint is gone or no longer limits its egress."""
    out: list[Stale] = []
    for link in state.links:
        key = key_of_ifb_alias(link.alias)
        if key is None:
            continue
        want = shaped.get(key)
        if want is None or want.egress is None or want.ifb != link.name:
            out.append(Stale(f"ifb {link.name} {key}", f"ifb {link.name} of endpoint {key} (no egress limit)",
                             link=link))
    return out


def shaped_wants(wants: Iterable[ShapingWant]) -> dict[str, ShapingWant]:
    return {w.key: w for w in wants if w.shapes}
