"""Bus events -> Kubernetes Events where a user looks (pure): a pod's coded ADD failure on the Pod, node-level trouble
(ENI quota reached, subnet full, route conflict, cloud throttled...) on the Node.

An Event's name is derived from what it says (object, type, reason, message), so the same story told again — by
this replica or by the next leader — lands on the same Event and raises its count instead of adding another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from schemas.events import Event, EventKind, Severity

COMPONENT = "cce-network"
NODE_EVENT_NAMESPACE = "default"  # where Events about cluster-scoped objects live, as kubelet's do
# Normal events worth telling on a Node: (kind, what) -> Event reason
NODE_NOTICES: dict[tuple[EventKind, str], str] = {
    (EventKind.NODE, "registered"): "Registered",
    (EventKind.NODE, "mode-detected"): "NetworkModeDetected",
}
NODE_TROUBLE_KINDS = frozenset({EventKind.ENI, EventKind.ROUTE, EventKind.NODE, EventKind.CIDR, EventKind.SUBNET,
                                EventKind.DATAPATH, EventKind.IP})
ADD_FAILED = "add-failed"  # cni_gateway: an ADD failed; data carries namespace, pod and pod_uid


@dataclass(frozen=True)
class InvolvedObject:
    kind: str  # Pod or Node
    name: str
    namespace: str = ""
    uid: str = ""


@dataclass(frozen=True)
class KubeEvent:
    involved: InvolvedObject
    type: str  # Normal or Warning
    reason: str
    message: str
    instance: str = ""  # the service instance that told the bus

    @property
    def namespace(self) -> str:
        return self.involved.namespace or NODE_EVENT_NAMESPACE

    @property
    def name(self) -> str:
        o = self.involved
        digest = hashlib.sha256("\0".join((o.kind, o.namespace, o.name, o.uid, self.type, self.reason,
                                           self.message)).encode()).hexdigest()[:16]
        return f"{o.name[:200]}.{digest}"

    def body(self, now: str, count: int = 1) -> dict[str, object]:
        o = self.involved
        involved = {"kind": o.kind, "name": o.name, "apiVersion": "v1"}
        if o.namespace:
            involved["namespace"] = o.namespace
        if o.uid:
            involved["uid"] = o.uid
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "involvedObject": involved, "type": self.type, "reason": self.reason,
            "message": self.message[:1024], "count": count, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": self.instance[:128],
        }


def from_bus_event(event: Event, node_uid: str = "") -> KubeEvent | None:
    """The Kubernetes Event a bus event makes, or None when it is not one a user needs to see there."""
    if event.kind is EventKind.ENDPOINT and event.what == ADD_FAILED:
        namespace, pod = str(event.data.get("namespace", "")), str(event.data.get("pod", ""))
        if not namespace or not pod:
            return None
        reason = event.reason.value if event.reason else "AddFailed"
        return KubeEvent(InvolvedObject("Pod", pod, namespace, str(event.data.get("pod_uid", ""))),
                         "Warning", reason, event.message or reason, event.source)
    if event.node in ("", "-"):
        return None
    node = InvolvedObject("Node", event.node, uid=node_uid)
    notice = NODE_NOTICES.get((event.kind, event.what))
    if notice is not None and (event.what != "registered" or event.data.get("created")):
        return KubeEvent(node, "Normal", notice, event.message or notice, event.source)
    if event.severity is Severity.WARNING and event.kind in NODE_TROUBLE_KINDS:
        reason = event.reason.value if event.reason else _camel(event.what)
        return KubeEvent(node, "Warning", reason, event.message or f"{event.kind.value} {event.what}", event.source)
    return None


def _camel(what: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in what.replace("_", "-").split("-"))


@dataclass
class SpamFilter:
    """At most `burst` Events per object at once, then one more every `refill_s` (a token bucket per object)."""

    burst: int
    refill_s: float
    _tokens: dict[InvolvedObject, tuple[float, float]] = field(default_factory=dict)

    def allow(self, obj: InvolvedObject, now: float) -> bool:
        tokens, since = self._tokens.get(obj, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) / self.refill_s)
        if tokens < 1.0:
            self._tokens[obj] = (tokens, now)
            return False
        self._tokens[obj] = (tokens - 1.0, now)
        if len(self._tokens) > 50_000:  # forget objects with a full bucket: they would start full anyway
            self._tokens = {k: v for k, v in self._tokens.items() if v[0] < self.burst - 1}
        return True
