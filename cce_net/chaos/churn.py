"""Pod churn for a chaos run: kubelet-like drivers (the control plane's bus calls, or the real CNI plugin on a
simulated node), the ledger of every call's outcome, and the event trail kept per IP from CCE_EVENTS."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cce_net.chaos.invariants import LivePod, Violation
from chassis.bus import Bus
from chassis.rpc import call
from schemas.errors import CceError, ErrorReason
from schemas.events import Event
from schemas.messages import AllocateRequest, ConfirmRequest, PodRef, ReleaseRequest
from schemas.subjects import IPAM_ALLOCATE, IPAM_CONFIRM, IPAM_RELEASE, endpoint_key

CODED = frozenset(r.value for r in ErrorReason)


@dataclass(frozen=True)
class PodSlot:
    name: str
    node: str


class CallFailed(Exception):
    """One CNI call ended in an error: `outcome` is its coded reason, or `uncoded`."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class Driver(Protocol):
    deadline_s: float

    async def add(self, pod: PodSlot) -> LivePod: ...

    async def delete(self, pod: PodSlot) -> None: ...


# ---- the control plane alone: ipam's requests as the gateway makes them ----------------------------------------


class BusDriver:
    """ADD = allocate + confirm (what the gateway does around the datapath's setup); DEL = release."""

    deadline_s = 30.0

    def __init__(self, bus: Bus, wait_s: float = 10.0) -> None:
        self.bus = bus
        self.wait_s = wait_s

    @staticmethod
    def container_id(pod: PodSlot) -> str:
        return f"chaos{pod.name}"

    async def add(self, pod: PodSlot) -> LivePod:
        cid = self.container_id(pod)
        req = AllocateRequest(node=pod.node, container_id=cid, pod=PodRef(namespace="chaos", name=pod.name),
                              wait_s=self.wait_s)
        reply = await self._coded(call(self.bus, IPAM_ALLOCATE, req, timeout=self.wait_s + 5))
        await self._coded(call(self.bus, IPAM_CONFIRM, ConfirmRequest(node=pod.node, container_id=cid), timeout=5))
        ip = str(reply.endpoint.addresses[0].ip)
        return LivePod(endpoint_key(pod.node, cid, "eth0"), pod.node, ip)

    async def delete(self, pod: PodSlot) -> None:
        req = ReleaseRequest(node=pod.node, container_id=self.container_id(pod))
        await self._coded(call(self.bus, IPAM_RELEASE, req, timeout=10))

    @staticmethod
    async def _coded(pending: Any) -> Any:
        try:
            return await pending
        except CceError as err:
            raise CallFailed(err.reason.value, str(err)) from None
        except Exception as err:
            raise CallFailed("uncoded", repr(err)) from None


# ---- with the fabric: the installed CNI plugin, exec'd like kubelet's runtime does ---------------------------------


class CniDriver:
    deadline_s = 60.0

    def __init__(self, state_dir: Path) -> None:
        from cce_net.pods import Pods

        self.pods = Pods(state_dir)

    async def add(self, pod: PodSlot) -> LivePod:
        from cce_net.pods import PodError

        try:
            record = await asyncio.to_thread(self.pods.add, f"chaos/{pod.name}", pod.node)
        except PodError as err:
            raise CallFailed(cni_reason(err.cni_error), str(err)) from None
        except Exception as err:
            raise CallFailed("uncoded", repr(err)) from None
        key = endpoint_key(pod.node, record.container_id, record.ifname)
        return LivePod(key, pod.node, record.ips[0].split("/")[0], record.netns)

    async def delete(self, pod: PodSlot) -> None:
        from cce_net.pods import PodError

        try:
            await asyncio.to_thread(self.pods.delete, f"chaos/{pod.name}")
        except PodError as err:
            raise CallFailed(cni_reason(err.cni_error), str(err)) from None
        except Exception as err:
            raise CallFailed("uncoded", repr(err)) from None


def cni_reason(error: dict[str, Any] | None) -> str:
    """The coded reason of a CNI error: the first word of its details (the gateway's convention; the plugin's own
    errors write `Reason: ...`)."""
    words = str((error or {}).get("details") or "").split()
    first = words[0].rstrip(":") if words else ""
    return first if first in CODED else "uncoded"


# ---- the event trail ----------------------------------------------------------------------------------------------


class EventTrail:
    """Every event, kept per IP and per record key (the last few of each), and who holds each IP according to the
    endpoint events: an `allocated` for an IP that a live pod holds is a duplicate seen on the event stream."""

    KEEP = 12

    def __init__(self, is_live: Callable[[str], bool]) -> None:
        self.is_live = is_live
        self.by_ip: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=self.KEEP))
        self.by_key: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=self.KEEP))
        self.holder: dict[str, str] = {}
        self.violations: list[Violation] = []
        self.seen = 0
        self._sub: Any = None

    async def start(self, bus: Bus) -> None:
        async def on_msg(msg: Any) -> None:
            try:
                self.take(Event.model_validate_json(msg.data))
            except ValueError:
                return

        self._sub = await bus.nc.subscribe("cce.events.>", cb=on_msg)
        await bus.settled()  # the churn's first events are in the timeline too

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def note(self, ip: str, line: str) -> None:
        self.by_ip[ip].append(f"{time.strftime('%H:%M:%S')} {line}")

    def take(self, event: Event) -> None:
        self.seen += 1
        ips = [ip for ip in str(event.data.get("ip") or "").split(",") if ip]
        for removed in event.data.get("removed") or []:
            ips.append(str(removed))
        line = f"{event.time:%H:%M:%S.%f}"[:-3] + f" {event.kind.value}.{event.what} {event.object} " \
               f"[{event.source}]" + (f" {event.reason.value}" if event.reason else "")
        for ip in ips:
            self.by_ip[ip].append(line)
        if event.object:
            self.by_key[event.object].append(line)
        if event.kind.value != "endpoint":
            return
        for ip in ips:
            if event.what == "allocated":
                other = self.holder.get(ip)
                if other and other != event.object and self.is_live(other):
                    self.violations.append(Violation(
                        "duplicate-ip", f"{ip} allocated to {event.object} while live pod {other} holds it "
                        "(event stream)", (ip,), (other, event.object), tuple(self.by_ip[ip])))
                self.holder[ip] = event.object
            elif self.holder.get(ip) == event.object:
                del self.holder[ip]

    def explain(self, v: Violation) -> Violation:
        lines = [line for ip in v.ips for line in self.by_ip.get(ip, ())]
        lines += [line for key in v.keys for line in self.by_key.get(key, ()) if line not in lines]
        return v.with_trail(sorted(lines)[-self.KEEP:]) if lines else v


# ---- the ledger ---------------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the run's calls answered, and which pods are live."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ADD|DEL, ok|<reason>|uncoded|deadline)
    samples: dict[str, str] = field(default_factory=dict)  # outcome -> one message of it
    live: dict[str, LivePod] = field(default_factory=dict)  # by pod name
    slots: dict[str, PodSlot] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    violations: list[Violation] = field(default_factory=list)
    ops_started: int = 0

    def is_live_key(self, key: str) -> bool:
        return any(p.key == key for p in self.live.values())

    def record(self, op: str, outcome: str, elapsed: float, deadline: float, message: str = "") -> None:
        if elapsed > deadline:
            self.calls[(op, "deadline")] += 1
            self.violations.append(Violation("call-past-deadline", f"{op} took {elapsed:.1f}s (deadline "
                                             f"{deadline:.0f}s), ended {outcome}: {message[:200]}"))
        self.calls[(op, outcome)] += 1
        if outcome != "ok":
            self.samples.setdefault(f"{op} {outcome}", message[:300])
        if outcome == "uncoded":
            self.violations.append(Violation("uncoded-failure", f"{op} failed without a coded reason: "
                                             f"{message[:300]}"))

    def took(self, pod: LivePod) -> None:
        """A successful ADD: its IP must be no other live pod's (checked the moment the answer comes)."""
        for other in self.live.values():
            if other.ip == pod.ip:
                self.violations.append(Violation("duplicate-ip", f"{pod.ip} given to {pod.key} while live pod "
                                                 f"{other.key} holds it (CNI results)", (pod.ip,),
                                                 (other.key, pod.key)))
