"""Pod objects -> the facts the network reads (`PodInfo`), and which endpoints have lost their pod (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.records import CceEndpoint, PodInfo
from schemas.subjects import pod_key

# Annotations the network reads: ours, and the standard bandwidth ones.
ANNOTATION_PREFIXES = ("cce.io/",)
ANNOTATION_KEYS = frozenset({"kubernetes.io/ingress-bandwidth", "kubernetes.io/egress-bandwidth"})


@dataclass(frozen=True)
class PodRef:
    """What the endpoint GC needs of a pod: who it is and where it runs."""

    uid: str
    node: str


def network_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in annotations.items()
            if k in ANNOTATION_KEYS or k.startswith(ANNOTATION_PREFIXES)}


def namespace_annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """Ours of a Namespace's annotations (e.g. `cce.io/fixed-ip` for its StatefulSet pods)."""
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return {k: str(v) for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIXES)}


def namespace_labels(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """A Namespace's labels (a ClusterPodSubnetTopologySpread selects namespaces by them)."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return {k: str(v) for k, v in labels.items()}


def pod_info(obj: Mapping[str, Any], ns_annotations: Mapping[str, str] | None = None,
             ns_labels: Mapping[str, str] | None = None) -> PodInfo | None:
    """The pod's record, or None for a pod not (yet) bound to a node, or whose fields we cannot use."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    node = spec.get("nodeName") or ""
    if not node:
        return None
    owner: Mapping[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    try:
        return PodInfo(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
                       node=node, owner_kind=owner.get("kind", ""), owner_name=owner.get("name", ""),
                       host_network=bool(spec.get("hostNetwork")),
                       annotations=network_annotations(meta.get("annotations") or {}),
                       labels={k: str(v) for k, v in (meta.get("labels") or {}).items()},
                       deleting=bool(meta.get("deletionTimestamp")),
                       namespace_annotations=dict(ns_annotations or {}),
                       namespace_labels=dict(ns_labels or {}))
    except ValidationError:
        return None


def info_key(info: PodInfo) -> str:
    return pod_key(info.node, info.namespace, info.name)


def same_facts(a: PodInfo, b: PodInfo) -> bool:
    """Equal but for when they were written."""
    return a.model_dump(exclude={"updated_at"}) == b.model_dump(exclude={"updated_at"})


def pod_ref(obj: Mapping[str, Any]) -> tuple[tuple[str, str], PodRef]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", ""), meta.get("name", "")), PodRef(meta.get("uid", ""),
                                                                     (obj.get("spec") or {}).get("nodeName") or "")


def gone_endpoints(endpoints: Iterable[tuple[str, CceEndpoint]],
                   pods: Mapping[tuple[str, str], PodRef]) -> dict[str, str]:
    """Endpoint key -> why its pod is gone: no pod of that name, a pod of that name with another uid (re-created),
    or the pod bound to another node. Only endpoints that carry a pod uid are judged: kubelet always passes one;
    an endpoint without it comes from a runtime that is not Kubernetes, whose pods the API server does not list."""
    out: dict[str, str] = {}
    for key, ep in endpoints:
        if not ep.pod_uid:
            continue
        pod = pods.get((ep.namespace, ep.pod))
        if pod is None:
            out[key] = f"pod {ep.namespace}/{ep.pod} no longer exists"
        elif pod.uid != ep.pod_uid:
            out[key] = f"pod {ep.namespace}/{ep.pod} was re-created (uid {pod.uid}, endpoint's {ep.pod_uid})"
        elif pod.node and pod.node != ep.node:
            out[key] = f"pod {ep.namespace}/{ep.pod} runs on {pod.node}, not {ep.node}"
    return out
