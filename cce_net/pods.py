"""Pods on simulated nodes, run the way a container runtime runs them: a network namespace per pod, the node's
installed CNI plugins executed with the CNI environment and its conflist (ADD in order, DEL in reverse, CHECK with
the cached result), and the result kept for the DEL and CHECK that follow.

A pod's record lives in `<state dir>/pods/<namespace>_<name>.json`; it is written before ADD runs, so a failed or
interrupted ADD can always be deleted.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cce_net import stack as stack_mod

NETNS_PREFIX = "cce-pod-"
NETNS_DIR = Path("/run/netns")
CONFLIST = "10-cce.conflist"


class PodError(RuntimeError):
    """A pod operation failed; `cni_error` holds the plugin's CNI error object when a plugin failed."""

    def __init__(self, message: str, cni_error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.cni_error = cni_error


@dataclass
class PodRecord:
    namespace: str
    name: str
    node: str
    netns: str  # the namespace's name under /run/netns
    container_id: str
    uid: str
    ifname: str = "eth0"
    result: dict[str, Any] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    annotations: dict[str, str] = field(default_factory=dict)
    kube: bool = False  # a Pod object stands for it in the local stack's API server

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    @property
    def ips(self) -> list[str]:
        return [str(ip.get("address", "")) for ip in (self.result or {}).get("ips", [])]

    @property
    def cni_args(self) -> str:
        """kubelet's CNI_ARGS; without a Pod object, the annotations travel as a runtime that passes them would."""
        args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}")
        if not self.kube:
            args += "".join(f";K8S_POD_ANNOTATION_{k}={v}" for k, v in sorted(self.annotations.items()))
        return args

    def view(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "node": self.node, "netns": self.netns_path,
                "container_id": self.container_id, "ifname": self.ifname, "ips": self.ips,
                "created_at": self.created_at}


def parse_ref(ref: str) -> tuple[str, str]:
    """`NS/NAME` (or `NAME` in `default`) -> (namespace, name)."""
    namespace, _, name = ref.rpartition("/")
    namespace = namespace or "default"
    for part in (namespace, name):
        if not part or len(part) > 253 or not all(c.isalnum() or c in "-." for c in part):
            raise PodError(f"invalid pod reference {ref!r}: expected NAMESPACE/NAME (DNS names)")
    return namespace, name


def netns_name(state_dir: Path, namespace: str, name: str) -> str:
    """The pod's namespace name: unique per stack, so two stacks on one machine never share a pod namespace."""
    return NETNS_PREFIX + hashlib.sha1(f"{state_dir.resolve()}/{namespace}/{name}".encode()).hexdigest()[:12]


class PodStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "pods"

    def path(self, namespace: str, name: str) -> Path:
        return self.dir / f"{namespace}_{name}.json"

    def get(self, namespace: str, name: str) -> PodRecord | None:
        try:
            return PodRecord(**json.loads(self.path(namespace, name).read_text()))
        except FileNotFoundError:
            return None

    def put(self, record: PodRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(record.namespace, record.name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2))
        tmp.replace(path)

    def delete(self, record: PodRecord) -> None:
        self.path(record.namespace, record.name).unlink(missing_ok=True)

    def all(self) -> list[PodRecord]:
        if not self.dir.exists():
            return []
        return [PodRecord(**json.loads(p.read_text())) for p in sorted(self.dir.glob("*.json"))]


class Pods:
    """Pod operations against a running local stack in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.store = PodStore(state_dir)

    def _node(self, node: str) -> dict[str, str]:
        state = stack_mod.read_state(self.state_dir)
        if state is None:
            raise PodError(f"no local stack is running from {self.state_dir} (`cce-net up` first)")
        info: dict[str, str] | None = (state.get("node_info") or {}).get(node)
        if info is None:
            why = state.get("node_services_off") or f"known nodes: {', '.join(state.get('node_info') or {}) or 'none'}"
            raise PodError(f"node {node!r} has no node services: {why}")
        return info

    def _network(self, info: dict[str, str]) -> Any:
        from cce_net.cni_runtime import CniNetwork

        cni_path = [info["bin_dir"], str(stack_mod.REFERENCE_PLUGINS)]
        # plugins run in the node's namespace, as the node's container runtime runs them: chained plugins
        # (portmap, bandwidth) change the host side of the pod there
        return CniNetwork.load(Path(info["conf_dir"]) / CONFLIST, cni_path, exec_netns=str(NETNS_DIR / info["netns"]))

    def _kube(self) -> Any:
        """An admin client of the stack's API server (`cce-net up --kube`), else None."""
        kube = (stack_mod.read_state(self.state_dir) or {}).get("kube")
        if not kube:
            return None
        from cce_net.kubelocal import KubeAdmin

        return KubeAdmin(Path(kube["kubeconfig"]))

    def add(self, ref: str, node: str, annotations: dict[str, str] | None = None,
            statefulset: str = "") -> PodRecord:
        """As kubelet's world does it: with an API server, the Pod object first (bound to the node), then the ADD
        with its uid; the pod's annotations reach the network through its object (or CNI_ARGS without one)."""
        namespace, name = parse_ref(ref)
        info = self._node(node)
        existing = self.store.get(namespace, name)
        if existing is not None:
            if existing.result is not None:
                return existing
            self.delete(ref)  # a half-done ADD: start over
        kube = self._kube()
        uid = str(uuid.uuid4())
        if kube is not None:
            try:
                uid = kube.create_pod(namespace, name, node, annotations, statefulset)
            finally:
                kube.close()
        record = PodRecord(namespace=namespace, name=name, node=node, netns=netns_name(self.state_dir, namespace, name),
                           container_id=secrets.token_hex(32), uid=uid, annotations=dict(annotations or {}),
                           kube=kube is not None)
        self.store.put(record)
        create_netns(record.netns)
        network = self._network(info)
        try:
            record.result = network.add(record.container_id, record.netns_path, record.ifname, record.cni_args)
        except Exception as err:
            # a runtime whose ADD failed deletes the sandbox's network before giving up
            self._teardown(record)
            raise PodError(f"ADD {namespace}/{name} on {node} failed: {err}", getattr(err, "error", None)) from None
        self.store.put(record)
        return record

    def check(self, ref: str) -> None:
        record = self._get(ref)
        network = self._network(self._node(record.node))
        try:
            network.check(record.container_id, record.netns_path, record.ifname, record.cni_args, record.result)
        except Exception as err:
            raise PodError(f"CHECK {record.namespace}/{record.name} failed: {err}",
                           getattr(err, "error", None)) from None

    def delete(self, ref: str) -> PodRecord | None:
        namespace, name = parse_ref(ref)
        record = self.store.get(namespace, name)
        if record is None:
            return None
        self._teardown(record)
        return record

    def _teardown(self, record: PodRecord) -> None:
        try:
            network = self._network(self._node(record.node))
            network.delete(record.container_id, record.netns_path, record.ifname, record.cni_args, record.result)
        except Exception as err:
            raise PodError(f"DEL {record.namespace}/{record.name} failed (run `cce-net pod del` again): {err}",
                           getattr(err, "error", None)) from None
        remove_netns(record.netns)
        kube = self._kube() if record.kube else None
        if kube is not None:
            try:
                kube.delete_pod(record.namespace, record.name)  # kubelet has finished with it
            finally:
                kube.close()
        self.store.delete(record)

    def _get(self, ref: str) -> PodRecord:
        namespace, name = parse_ref(ref)
        record = self.store.get(namespace, name)
        if record is None:
            raise PodError(f"no pod {namespace}/{name}")
        return record

    def all(self) -> list[PodRecord]:
        return self.store.all()

    def exec_argv(self, ref: str, argv: list[str]) -> list[str]:
        """The command line that runs `argv` inside the pod's network namespace."""
        record = self._get(ref)
        if not argv:
            raise PodError("nothing to run: give a command after `--`")
        return ["nsenter", f"--net={record.netns_path}", "--", *argv]


def create_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        return
    _ip("netns", "add", name)


def remove_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        _ip("netns", "delete", name)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PodError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def remove_all(state_dir: Path) -> list[str]:
    """Forget every pod of a stack that is going down: their namespaces go (their veths with them)."""
    gone = []
    for record in PodStore(state_dir).all():
        try:
            remove_netns(record.netns)
        except PodError:
            continue
        PodStore(state_dir).delete(record)
        gone.append(f"{record.namespace}/{record.name}")
    return gone
