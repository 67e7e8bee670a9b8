"""A real Kubernetes API server on this machine: etcd (Debian's `etcd-server`) and a `kube-apiserver` built from the
`k8s.io/kubernetes` Go module (`make kube-tools`, cached under the user's cache dir), on free loopback ports.

Used by `cce-net up --kube`, by the tests that need Kubernetes behaviour and by `bench/kube.py`. No kubelet, no
scheduler, no controller-manager: Node and Pod objects are inputs written by whoever plays those parts.

Two identities are made: an admin token (`system:masters`) and one token per service user named in
`service_users` (no groups: what they may do comes from the RBAC rules applied for them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chassis.procs import parent_death_signal

KUBE_VERSION = "v1.36.3"  # the release tools/build-kube.sh builds by default (a test keeps the two equal)
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "build-kube.sh"
SERVICE_CIDR = "10.96.0.0/16"


class KubeUnavailable(RuntimeError):
    """A part is missing (binary not built, etcd not installed) or did not come up; the message says which."""


def cache_dir(version: str = "") -> Path:
    version = version or os.environ.get("KUBE_VERSION") or KUBE_VERSION
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cce-network" / f"kube-{version}"


def kube_bin_dir() -> Path:
    return Path(os.environ["CCE_KUBE_BIN_DIR"]) if os.environ.get("CCE_KUBE_BIN_DIR") else cache_dir()


def missing_parts() -> list[str]:
    """What this machine lacks to run the API server (empty: everything is here)."""
    missing = []
    bins = kube_bin_dir()
    for name in ("kube-apiserver", "kubectl"):
        if not os.access(bins / name, os.X_OK):
            missing.append(f"{bins / name} (build it: `make kube-tools`)")
    if shutil.which("etcd") is None:
        missing.append("etcd (Debian: `apt-get install etcd-server`)")
    if shutil.which("openssl") is None:
        missing.append("openssl (Debian: `apt-get install openssl`)")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalKube:
    """etcd + kube-apiserver under `state_dir`; `start()` returns once `/readyz` answers ok."""

    state_dir: Path
    service_users: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()  # more kube-apiserver flags (e.g. `--watch-cache=false`)
    etcd_port: int = 0
    port: int = 0
    etcd: subprocess.Popen[bytes] | None = None
    apiserver: subprocess.Popen[bytes] | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # user -> bearer token ("admin" included)
    etcd_data: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.kubeconfig_for("admin")

    def kubeconfig_for(self, user: str) -> Path:
        return self.state_dir / ("kubeconfig" if user == "admin" else f"kubeconfig-{user.replace(':', '-')}")

    @property
    def kubectl(self) -> Path:
        return kube_bin_dir() / "kubectl"

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> LocalKube:
        missing = missing_parts()
        if missing:
            raise KubeUnavailable("cannot run a local API server; missing: " + "; ".join(missing))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self._write_credentials()
        self.etcd_port = self.etcd_port or free_port()
        self.port = self.port or free_port()
        self._start_etcd(timeout)
        self._start_apiserver(timeout)
        for user in ("admin", *self.service_users):
            self._write_kubeconfig(user)
        return self

    def stop(self) -> None:
        """The API server first, then etcd (stopped together, the API server hangs on SIGTERM)."""
        self.stop_apiserver()
        _stop(self.etcd, 10.0)
        self.etcd = None
        if self.etcd_data is not None:
            shutil.rmtree(self.etcd_data, ignore_errors=True)
            self.etcd_data = None

    def stop_apiserver(self) -> None:
        _stop(self.apiserver, 15.0)
        self.apiserver = None

    def restart_apiserver(self, timeout: float = 90.0) -> None:
        """Stop and start the API server on the same port with the same store and credentials."""
        self.stop_apiserver()
        self._start_apiserver(timeout)

    def __enter__(self) -> LocalKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now (what the API server does every 5 minutes): watches from older versions
        get `410 Gone` (when the API server watches etcd directly, `--watch-cache=false`). Returns the revision."""
        import base64
        import json

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(f"http://127.0.0.1:{self.etcd_port}{path}", method="POST",
                                             data=json.dumps(body).encode())
            with urllib.request.urlopen(request, timeout=10) as resp:
                return dict(json.loads(resp.read()))

        revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def pids(self) -> dict[str, int | None]:
        return {"etcd": self.etcd.pid if self.etcd else None,
                "kube-apiserver": self.apiserver.pid if self.apiserver else None}

    # ---- parts ---------------------------------------------------------------------------------------------------

    def _write_credentials(self) -> None:
        certs = self.state_dir / "certs"
        certs.mkdir(exist_ok=True, mode=0o700)
        key, pub = certs / "sa.key", certs / "sa.pub"
        if not key.exists():
            _run(["openssl", "genrsa", "-out", str(key), "2048"])
            _run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)])
        tokens_file = self.state_dir / "tokens.csv"
        if tokens_file.exists():  # a restart keeps the identities of the first start
            for line in tokens_file.read_text().splitlines():
                token, user, *_ = line.split(",")
                self.tokens[user] = token
        for user in ("admin", *self.service_users):
            self.tokens.setdefault(user, secrets.token_hex(16))
        lines = [f'{tok},{user},{user},"system:masters"' if user == "admin" else f"{tok},{user},{user}"
                 for user, tok in self.tokens.items()]
        tokens_file.write_text("\n".join(lines) + "\n")
        tokens_file.chmod(0o600)

    def _start_etcd(self, timeout: float) -> None:
        # the store on tmpfs when there is one: etcd 3.4 fsyncs every write and cannot be told not to
        shm = Path("/dev/shm")
        data = Path(tempfile.mkdtemp(prefix="cce-etcd-", dir=shm if shm.is_dir() else None))
        data.chmod(0o700)
        self.etcd_data = data
        (self.state_dir / "etcd-data").unlink(missing_ok=True)
        (self.state_dir / "etcd-data").symlink_to(data)
        peer = free_port()
        url = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = _spawn(["etcd", "--data-dir", str(data), "--listen-client-urls", url,
                            "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                            "--initial-cluster", f"default=http://127.0.0.1:{peer}", "--log-level", "warn"],
                           self.state_dir / "logs" / "etcd.log")
        _wait(lambda: _http_ok(f"{url}/health"), timeout, "etcd to answer /health", self.etcd,
              self.state_dir / "logs" / "etcd.log")

    def _start_apiserver(self, timeout: float) -> None:
        certs = self.state_dir / "certs"
        log = self.state_dir / "logs" / "kube-apiserver.log"
        self.apiserver = _spawn([
            str(kube_bin_dir() / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={certs}", f"--token-auth-file={self.state_dir / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # no controller-manager makes `default` ServiceAccounts: without this every Pod create would wait for one
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true", "--profiling=false", "--event-ttl=1h", *self.extra_args,
        ], log)
        _wait(self._ready, timeout, "kube-apiserver to answer /readyz", self.apiserver, log)

    def _ready(self) -> bool:
        if not self.tokens or not self.ca_file.exists():
            return False
        request = urllib.request.Request(f"{self.url}/readyz",
                                         headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        try:
            with urllib.request.urlopen(request, timeout=2, context=self.ssl_context()) as resp:
                return bool(resp.status == 200)
        except (OSError, ssl.SSLError):
            return False

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _write_kubeconfig(self, user: str) -> None:
        config: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Config", "current-context": "cce-local",
            "clusters": [{"name": "cce-local", "cluster": {"server": self.url,
                                                           "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": "cce-local", "context": {"cluster": "cce-local", "user": user}}],
        }
        path = self.kubeconfig_for(user)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KubeUnavailable(f"{argv[0]} failed: {done.stderr.strip()[-500:]}")


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=parent_death_signal)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait(ready: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and log is not None and proc.poll() is not None:
            raise KubeUnavailable(f"{what}: it exited (rc={proc.returncode}); log {log}:\n"
                                  + log.read_text(errors="replace")[-2000:])
        if time.monotonic() > deadline:
            raise KubeUnavailable(f"timed out after {timeout}s waiting for {what}; log {log}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def apply_manifests(kubeconfig: Path, objects: list[dict[str, Any]], manager: str = "cce-network") -> None:
    """Server-side apply of each object (idempotent), then wait until every CRD among them is established."""
    from kubernetes import config as kconfig
    from kubernetes.dynamic import DynamicClient

    client = DynamicClient(kconfig.new_client_from_config(str(kubeconfig)))
    for obj in objects:
        resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                   namespace=obj["metadata"].get("namespace"), field_manager=manager, force=True)
    crds = client.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            _wait(lambda name=obj["metadata"]["name"]: _established(crds.get(name=name)), 30.0,
                  f"CRD {obj['metadata']['name']} to be established", None, None)


def _established(crd: Any) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


class KubeAdmin:
    """The objects kubelet and the scheduler would write, for a cluster without them: Nodes with a providerID and
    capacity, Pods bound to a node (deleted at once, as kubelet finishes a deletion), namespaces."""

    def __init__(self, kubeconfig: Path, pool_size: int = 4) -> None:
        from kubernetes import client as kclient
        from kubernetes import config as kconfig

        self.k = kclient
        configuration = kclient.Configuration()
        kconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size  # one connection per thread that uses this client
        self.api = kclient.ApiClient(configuration)
        self.core = kclient.CoreV1Api(self.api)

    def close(self) -> None:
        self.api.close()

    def create_node(self, name: str, provider_id: str, *, labels: dict[str, str] | None = None,
                    annotations: dict[str, str] | None = None, cpu: str = "8", memory: str = "32Gi",
                    pods: str = "110") -> str:
        """The Node's uid; a Node of that name that exists already is kept (its capacity set again)."""
        k = self.k
        body = k.V1Node(metadata=k.V1ObjectMeta(name=name, labels=labels or {}, annotations=annotations or {}),
                        spec=k.V1NodeSpec(provider_id=provider_id))
        node = _created(lambda: self.core.create_node(body), lambda: self.core.read_node(name))
        capacity = {"cpu": cpu, "memory": memory, "pods": pods}
        self.core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity}})
        return _uid(node)

    def create_pod(self, namespace: str, name: str, node: str, annotations: dict[str, str] | None = None,
                   statefulset: str = "") -> str:
        """The pod's uid (that of the existing pod when one of the name is there); with `statefulset`, the pod is one
        of that StatefulSet's (made if missing; no controller runs here, so the pod is made as its controller
        would: with the StatefulSet as its controlling owner)."""
        k = self.k
        self.ensure_namespace(namespace)
        owners = [self._statefulset_owner(namespace, statefulset)] if statefulset else None
        body = k.V1Pod(metadata=k.V1ObjectMeta(name=name, annotations=annotations or {}, owner_references=owners),
                       spec=k.V1PodSpec(node_name=node,
                                        containers=[k.V1Container(name="app", image="registry.local/pause:3.10")]))
        pod = _created(lambda: self.core.create_namespaced_pod(namespace, body),
                       lambda: self.core.read_namespaced_pod(name, namespace))
        return _uid(pod)

    def _statefulset_owner(self, namespace: str, name: str) -> Any:
        k = self.k
        apps = k.AppsV1Api(self.api)
        labels = {"app": name}
        body = k.V1StatefulSet(metadata=k.V1ObjectMeta(name=name), spec=k.V1StatefulSetSpec(
            service_name=name, selector=k.V1LabelSelector(match_labels=labels),
            template=k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=labels), spec=k.V1PodSpec(
                containers=[k.V1Container(name="app", image="registry.local/pause:3.10")]))))
        sts = _created(lambda: apps.create_namespaced_stateful_set(namespace, body),
                       lambda: apps.read_namespaced_stateful_set(name, namespace))
        return k.V1OwnerReference(api_version="apps/v1", kind="StatefulSet", name=name, uid=sts.metadata.uid,
                                  controller=True)

    def delete_pod(self, namespace: str, name: str) -> None:
        _unless_missing(lambda: self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0))

    def delete_node(self, name: str) -> None:
        _unless_missing(lambda: self.core.delete_node(name))

    def ensure_namespace(self, namespace: str) -> None:
        k = self.k
        _created(lambda: self.core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=namespace))),
                 lambda: None)


def _created(create: Any, read: Any) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return create()
    except ApiException as err:
        if err.status != 409:
            raise
        return read()


def _unless_missing(delete: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        delete()
    except ApiException as err:
        if err.status != 404:
            raise


def _uid(obj: Any) -> str:
    return str(obj.metadata.uid)
