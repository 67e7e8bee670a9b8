"""The Helm chart `deploy/helm/cce-network`, with the `helm` that tools/build-helm.sh builds from the helm.sh/helm/v4
Go module (`make helm`): lint, the values schema and the chart's own checks, what it renders (checked against the
services' own settings classes and the rules the brief sets for pods), and every rendered object accepted by a real
API server (server-side dry run). Its RBAC, asked of the API server, is in tests/test_chart_rbac.py.

Skips only without Go (helm cannot be built) or without the local API server's parts (tests/kube.py says which)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from cce_net.kubelocal import KUBE_VERSION
from cloud.bce import BceSettings
from schemas.records import PoolSettings
from services.cni_gateway.settings import GatewaySettings
from services.eni_manager.settings import EniManagerSettings
from services.ipam.settings import IpamSettings
from services.k8s_bridge.manifests import ALL_KINDS, bridge_cluster_role, crd
from services.k8s_bridge.settings import BridgeSettings
from services.node_datapath.settings import DatapathSettings
from services.route_manager.settings import RouteManagerSettings
from tests.kube import Kube

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "cce-network"
BUILD_SCRIPT = ROOT / "tools" / "build-helm.sh"
HELM_VERSION = "v4.3.2"  # tools/build-helm.sh's default (test_helm_is_the_release_build_helm_builds keeps them equal)
MODES = ("vpc-eni", "vpc-eni-primary", "vpc-eni-exclusive", "vpc-route")
NAMESPACE = "cce-system"
CONTROL_PLANE = ("ipam", "eni-manager", "route-manager", "k8s-bridge")
# the first test to need helm may build it (~2 min on 2 cores from a clean module cache)
pytestmark = pytest.mark.timeout(600)


# ---- helm -------------------------------------------------------------------------------------------------------


def helm_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cce-network" / f"helm-{os.environ.get('HELM_VERSION') or HELM_VERSION}" / "helm"


def go_binary() -> str | None:
    return shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    path = helm_path()
    if not os.access(path, os.X_OK):
        go = go_binary()
        if go is None:
            pytest.skip("no helm: it is built from the helm.sh/helm/v4 Go module (`make helm`), which needs Go")
        env = dict(os.environ, PATH=f"{Path(go).parent}:{os.environ.get('PATH', '')}")
        subprocess.run([str(BUILD_SCRIPT)], env=env, check=True, capture_output=True, timeout=900)
    return Helm(path, tmp_path_factory.mktemp("helm-home"))


class Helm:
    """The helm command with a home of its own (no user's repositories, plugins or kubeconfig)."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        self.env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                        HELM_DATA_HOME=str(home / "data"))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.path), *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)

    def template(self, *args: str, release: str = "cce-network", namespace: str = NAMESPACE) -> str:
        done = self.run("template", release, str(CHART), "--namespace", namespace,
                        "--kube-version", KUBE_VERSION, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def objects(self, *args: str, release: str = "cce-network", namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return [o for o in yaml.safe_load_all(self.template(*args, release=release, namespace=namespace)) if o]


def mode_values(mode: str) -> tuple[str, ...]:
    return ("-f", str(CHART / "ci" / f"{mode}-values.yaml"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(pod_owner: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod_owner["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


# ---- the tool and lint ------------------------------------------------------------------------------------------


def test_helm_is_the_release_build_helm_builds(helm: Helm) -> None:
    script = BUILD_SCRIPT.read_text()
    assert re.search(r'HELM_VERSION:-(v[0-9.]+)\}', script)[1] == HELM_VERSION  # type: ignore[index]
    assert helm.run("version", "--short").stdout.startswith(HELM_VERSION)


@pytest.mark.parametrize("mode", ["defaults", *MODES])
def test_lint_is_clean(helm: Helm, mode: str) -> None:
    done = helm.run("lint", "--strict", str(CHART), *(() if mode == "defaults" else mode_values(mode)))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "0 chart(s) failed" in out
    # helm's lint lets a template's `fail` pass with an INFO line: a clean chart has none
    assert "[WARNING]" not in out and "[ERROR]" not in out and "fail" not in out.replace("0 chart(s) failed", ""), out


# ---- values: the schema and the chart's own checks --------------------------------------------------------------


def test_the_schema_rejects_an_unknown_mode(helm: Helm) -> None:
    done = helm.run("template", "x", str(CHART), "--set", "mode=overlay")
    assert done.returncode != 0
    assert "/mode" in done.stderr and "'vpc-route'" in done.stderr, done.stderr


def test_the_chart_itself_rejects_an_unknown_mode_without_the_schema(helm: Helm) -> None:
    done = helm.run("template", "x", str(CHART), "--set", "mode=overlay", "--skip-schema-validation")
    assert done.returncode != 0
    assert ('mode "overlay" is not a cce-network mode: use one of vpc-eni, vpc-eni-primary, vpc-eni-exclusive, '
            'vpc-route') in done.stderr


@pytest.mark.parametrize(("values", "message"), [
    (["cloud.endpoint="], "cloud.endpoint is required"),
    (["cloud.credentials.existingSecret="], "cloud credentials are required: set cloud.credentials.existingSecret"),
    (["cloud.credentials.create=true"], "cloud.credentials.accessKey is required"),
    (["cloud.credentials.create=true", "cloud.credentials.accessKey=ak"], "cloud.credentials.secretKey is required"),
    (["mode=vpc-route", "network.routeMode.clusterCIDRs=null"], "network.routeMode.clusterCIDRs is required"),
    (["nats.enabled=false"], "nats.url is required with nats.enabled: false"),
    (["nats.replicas=1"], "bus.kvReplicas (3) cannot exceed nats.replicas (1)"),
    (["nats.auth.enabled=true"], "nats.auth.enabled needs nats.enabled: false"),
    (["network.pool.lowWatermark=3"], "not a pool setting"),
])
def test_the_chart_fails_clearly_without_what_it_needs(helm: Helm, values: list[str], message: str) -> None:
    args = [a for v in values for a in ("--set", v)]
    skip_schema = ["--skip-schema-validation"] if "lowWatermark" in values[0] else []
    done = helm.run("template", "x", str(CHART), *args, *skip_schema)
    assert done.returncode != 0, done.stdout[:500]
    assert message in done.stderr, done.stderr


def test_the_schema_rejects_an_unknown_value(helm: Helm) -> None:
    done = helm.run("template", "x", str(CHART), "--set", "node.datpath.privileged=false")
    assert done.returncode != 0 and "datpath" in done.stderr, done.stderr


# ---- what it renders ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_renders_the_whole_network(helm: Helm, mode: str) -> None:
    objects = helm.objects(*mode_values(mode))
    deployments = by_kind(objects, "Deployment")
    expected = {"ipam", "eni-manager", "k8s-bridge"} | ({"route-manager"} if mode == "vpc-route" else set())
    assert {component(d) for d in deployments.values()} == expected
    assert all(d["spec"]["replicas"] == 2 for d in deployments.values())
    assert {component(p) for p in by_kind(objects, "PodDisruptionBudget").values()} == expected | {"nats"}
    assert {component(s) for s in by_kind(objects, "ServiceAccount").values()} == expected | {"nats", "node"}
    assert len(by_kind(objects, "StatefulSet")) == len(by_kind(objects, "DaemonSet")) == 1
    bridge = containers(deployments["cce-network-k8s-bridge"])["k8s-bridge"]
    assert env_of(bridge)["CCE_DEFAULT_MODE"] == mode


def test_route_manager_runs_outside_route_mode_when_asked(helm: Helm) -> None:
    objects = helm.objects("--set", "routeManager.enabled=true")
    assert "cce-network-route-manager" in by_kind(objects, "Deployment")
    assert "cce-network-route-manager" in by_kind(objects, "ServiceAccount")


def test_crds_and_the_bridge_rules_come_from_manifests_py(helm: Helm) -> None:
    crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    assert sorted(crds, key=lambda c: c["metadata"]["name"]) == sorted(
        (crd(k) for k in ALL_KINDS), key=lambda c: c["metadata"]["name"])
    roles = by_kind(helm.objects(), "ClusterRole")
    assert list(roles) == ["cce-network-k8s-bridge"]
    assert roles["cce-network-k8s-bridge"]["rules"] == bridge_cluster_role()["rules"]
    bindings = by_kind(helm.objects(), "ClusterRoleBinding")
    assert [s for b in bindings.values() for s in b["subjects"]] == [
        {"kind": "ServiceAccount", "name": "cce-network-k8s-bridge", "namespace": NAMESPACE}]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain settings, with what kubelet fills in (the downward API, Service addresses) made up."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: env.get(m[1], made_up(m[1])), var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = {"spec.nodeName": "node-1"}.get(var["valueFrom"]["fieldRef"]["fieldPath"], "pod-1")
        else:
            env[var["name"]] = "from-a-secret"
    return env


def made_up(variable: str) -> str:
    """What kubelet's service variables would hold."""
    return "4222" if "_SERVICE_PORT" in variable else "10.96.0.10"


SETTINGS: dict[str, tuple[type[Any], ...]] = {
    "ipam": (IpamSettings,), "eni-manager": (EniManagerSettings, BceSettings),
    "route-manager": (RouteManagerSettings, BceSettings), "k8s-bridge": (BridgeSettings, BceSettings),
    "node-datapath": (DatapathSettings,), "cni-gateway": (GatewaySettings,),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_setting_rendered_is_one_the_service_reads_and_accepts(helm: Helm, mode: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    objects = helm.objects(*mode_values(mode), "--set", "routeManager.enabled=true")
    rendered = {name: c for kind in ("Deployment", "DaemonSet") for o in by_kind(objects, kind).values()
                for name, c in containers(o).items() if name in SETTINGS}
    assert set(rendered) == set(SETTINGS)
    for name, container in rendered.items():
        env = env_of(container)
        for key in [k for k in os.environ if k.startswith("CCE_") or k == "KUBECONFIG"]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        known = set()
        for settings_class in SETTINGS[name]:
            prefix = settings_class.model_config.get("env_prefix", "")
            known |= {f"{prefix}{field}".upper() for field in settings_class.model_fields}
            settings_class()  # a value the service would refuse fails here
        assert sorted(set(env) - known) == [], f"{name}: settings no service reads"
        assert env["CCE_KV_REPLICAS"] == "3"


def test_the_watermarks_reach_the_bridge_as_the_pool_settings(helm: Helm) -> None:
    bridge = containers(by_kind(helm.objects(*mode_values("vpc-eni")), "Deployment")["cce-network-k8s-bridge"])
    pool = PoolSettings.model_validate_json(env_of(bridge["k8s-bridge"])["CCE_DEFAULT_POOL"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())["network"]["pool"]
    snake = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in values.items()}
    assert pool.model_dump() == PoolSettings(**{**snake, "pre_allocate": 4, "max_allocate": 64}).model_dump()


def test_services_reach_nats_through_its_service_address_without_dns(helm: Helm) -> None:
    objects = helm.objects()
    client = by_kind(objects, "Service")["cce-network-nats"]
    assert [p["name"] for p in client["spec"]["ports"]] == ["client"]
    ipam = containers(by_kind(objects, "Deployment")["cce-network-ipam"])["ipam"]
    url = next(v["value"] for v in ipam["env"] if v["name"] == "CCE_NATS_URL")
    assert url == "nats://$(CCE_NETWORK_NATS_SERVICE_HOST):$(CCE_NETWORK_NATS_SERVICE_PORT_CLIENT)"
    given = helm.objects("--set", "nats.enabled=false", "--set", "nats.url=nats://10.0.0.5:4222")
    assert not by_kind(given, "StatefulSet")
    ipam = containers(by_kind(given, "Deployment")["cce-network-ipam"])["ipam"]
    assert env_of(ipam)["CCE_NATS_URL"] == "nats://10.0.0.5:4222"


def test_nats_is_a_three_server_jetstream_cluster_routed_through_its_headless_service(helm: Helm) -> None:
    objects = helm.objects()
    nats = by_kind(objects, "StatefulSet")["cce-network-nats"]
    headless = by_kind(objects, "Service")["cce-network-nats-headless"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["serviceName"] == "cce-network-nats-headless"
    args = containers(nats)["nats"]["args"]
    assert "--jetstream" in args and "--cluster_name=cce-nats" in args and "--store_dir=/data/jetstream" in args
    routes = next(a for a in args if a.startswith("--routes=")).removeprefix("--routes=").split(",")
    assert routes == [f"nats://cce-network-nats-{i}.cce-network-nats-headless.{NAMESPACE}.svc:6222" for i in range(3)]
    claim = nats["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert {"name": "data", "mountPath": "/data"} in containers(nats)["nats"]["volumeMounts"]


def test_control_plane_pods_are_spread_guarded_probed_and_unprivileged(helm: Helm) -> None:
    objects = helm.objects("--set", "routeManager.enabled=true")
    for name, deployment in by_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (component(deployment) == "k8s-bridge"), name
        assert pod["securityContext"]["runAsNonRoot"] is True
        term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        (container,) = pod["containers"]
        assert container["args"] == ["python", "-m", f"services.{component(deployment).replace('-', '_')}"]
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        port = container["ports"][0]
        assert port["name"] == "http" and env_of(container)["CCE_HTTP_PORT"] == str(port["containerPort"])
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert budgets and all(b["spec"]["maxUnavailable"] == 1 for b in budgets.values())
    accounts = by_kind(objects, "ServiceAccount")
    assert {n for n, a in accounts.items() if a["automountServiceAccountToken"]} == {"cce-network-k8s-bridge"}


def test_the_node_agent_installs_the_plugin_then_runs_with_what_it_needs(helm: Helm) -> None:
    daemonset = by_kind(helm.objects("--set", "cni.chain={portmap,bandwidth}"), "DaemonSet")["cce-network-node"]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical" and pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["automountServiceAccountToken"] is False
    parts = containers(daemonset)
    assert parts["install-cni"]["args"] == [
        "cce-net", "install-cni", "--node=$(CCE_NODE)", "--bin-dir=/host/opt/cni/bin",
        "--conf-dir=/host/etc/cni/net.d", "--plugin=native", "--plugin-binary=/usr/local/lib/cce-network/cni/cce",
        "--socket=/run/cce-net/cni.sock", "--chain=portmap,bandwidth", "--cni-version=1.0.0"]
    # containerd 1.6/1.7 refuse a 1.1.0 list: the chart asks for 1.0.0 unless told otherwise
    plain = containers(by_kind(helm.objects("--set", "cni.version="), "DaemonSet")["cce-network-node"])
    assert not [a for a in plain["install-cni"]["args"] if a.startswith("--cni-version")]
    for name in ("install-cni", "cni-gateway"):
        assert parts[name]["securityContext"]["capabilities"] == {"drop": ["ALL"]}, name
    assert parts["node-datapath"]["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {volumes[n]["hostPath"]["path"] for n in ("cni-bin", "cni-conf", "cni-socket", "cni-state", "netns")} == {
        "/opt/cni/bin", "/etc/cni/net.d", "/run/cce-net", "/var/lib/cce-net", "/run/netns"}
    for name in ("node-datapath", "cni-gateway"):
        netns = next(m for m in parts[name]["volumeMounts"] if m["name"] == "netns")
        assert netns["mountPropagation"] == "HostToContainer" and netns["mountPath"] == "/run/netns"
        env = env_of(parts[name])
        assert env["CCE_NODE"] == "node-1"
    gateway = env_of(parts["cni-gateway"])
    assert gateway["CCE_CNI_SOCKET"] == "/run/cce-net/cni.sock"
    assert gateway["CCE_CNI_STATE_DIR"] == "/var/lib/cce-net/node-1"
    unprivileged = containers(by_kind(helm.objects("--set", "node.datapath.privileged=false"), "DaemonSet")[
        "cce-network-node"])["node-datapath"]["securityContext"]
    assert unprivileged["capabilities"] == {"add": ["NET_ADMIN", "SYS_ADMIN"], "drop": ["ALL"]}
    assert "privileged" not in unprivileged


def test_cloud_credentials_come_from_the_secret_as_environment_and_files(helm: Helm) -> None:
    objects = helm.objects("--set", "routeManager.enabled=true")
    for name in ("eni-manager", "route-manager", "k8s-bridge"):
        deployment = by_kind(objects, "Deployment")[f"cce-network-{name}"]
        container = containers(deployment)[name]
        refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v
                and "secretKeyRef" in v["valueFrom"]}
        assert refs == {"CCE_CLOUD_ACCESS_KEY": {"name": "cce-network-cloud", "key": "access-key"},
                        "CCE_CLOUD_SECRET_KEY": {"name": "cce-network-cloud", "key": "secret-key"}}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["cloud-credentials"]["secret"]["secretName"] == "cce-network-cloud"
        assert {"name": "cloud-credentials", "mountPath": "/etc/cce/cloud", "readOnly": True} in container[
            "volumeMounts"]
    ipam = containers(by_kind(objects, "Deployment")["cce-network-ipam"])["ipam"]
    assert not any(v["name"].startswith("CCE_CLOUD_") for v in ipam["env"])
    made = by_kind(helm.objects("--set", "cloud.credentials.create=true", "--set", "cloud.credentials.accessKey=ak",
                                "--set", "cloud.credentials.secretKey=sk"), "Secret")
    assert made["cce-network-cloud"]["stringData"] == {"access-key": "ak", "secret-key": "sk"}


def test_bus_credentials_plug_in_per_identity(helm: Helm) -> None:
    objects = helm.objects("--set", "nats.enabled=false", "--set", "nats.url=tls://nats.example:4222",
                           "--set", "nats.auth.enabled=true", "--set", "nats.tls.caSecret=bus-ca")
    bridge = by_kind(objects, "Deployment")["cce-network-k8s-bridge"]
    assert env_of(containers(bridge)["k8s-bridge"])["CCE_NATS_CREDS"] == "/etc/cce/nats/k8s-bridge.creds"
    volumes = {v["name"]: v for v in bridge["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nats-credentials"]["secret"]["secretName"] == "cce-network-nats-k8s-bridge"
    node = by_kind(objects, "DaemonSet")["cce-network-node"]
    volumes = {v["name"]: v for v in node["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nats-credentials"]["hostPath"] == {"path": "/etc/cce-net/nats/node.creds", "type": "File"}
    assert env_of(containers(node)["cni-gateway"])["CCE_NATS_TLS_CA"] == "/etc/cce/nats-tls/ca.crt"


# ---- against a real API server ------------------------------------------------------------------------------------

VARIANTS = {
    **{mode: mode_values(mode) for mode in MODES},
    "everything-else": ("--set", "routeManager.enabled=true", "--set", "node.datapath.privileged=false",
                        "--set", "cloud.credentials.create=true", "--set", "cloud.credentials.accessKey=ak",
                        "--set", "cloud.credentials.secretKey=sk", "--set", "controlPlane.hostNetwork=false",
                        "--set", "cni.chain={portmap}", "--set", "node.hostPID=true"),
    "bus-security": ("--set", "nats.enabled=false", "--set", "nats.url=tls://nats.example:4222",
                     "--set", "nats.auth.enabled=true", "--set", "nats.tls.caSecret=bus-ca"),
}


@pytest.fixture
def chart_crds(kube: Kube) -> list[dict[str, Any]]:
    """The chart's CRDs applied for real (what `helm install` does first)."""
    from cce_net.kubelocal import apply_manifests

    crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    apply_manifests(kube.server.kubeconfig, crds, manager="helm")
    return crds


def dry_run(kube: Kube, objects: list[dict[str, Any]]) -> list[str]:
    """Server-side apply of each object with dryRun=All; what the API server refused, and why."""
    from kubernetes import config as kconfig
    from kubernetes.dynamic import DynamicClient

    kube.ensure_namespace(NAMESPACE)  # for real: a dry run needs the namespace to exist
    client = DynamicClient(kconfig.new_client_from_config(str(kube.server.kubeconfig)))
    refused = []
    for obj in objects:
        resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                       namespace=obj["metadata"].get("namespace"), field_manager="helm",
                                       force_conflicts=True, dry_run="All")
        except ApiException as err:
            refused.append(f"{obj['kind']} {obj['metadata']['name']}: {json.loads(err.body).get('message')}")
    return refused


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_object_is_accepted_by_the_api_server(helm: Helm, kube: Kube, chart_crds: Any,
                                                             variant: str) -> None:
    objects = helm.objects(*VARIANTS[variant])
    assert len(objects) >= 10
    assert dry_run(kube, objects) == []


def test_the_dry_run_refuses_what_the_api_server_refuses(helm: Helm, kube: Kube) -> None:
    """The check above has teeth: a privileged container that also forbids privilege escalation is invalid."""
    daemonset = by_kind(helm.objects(), "DaemonSet")["cce-network-node"]
    containers(daemonset)["node-datapath"]["securityContext"]["allowPrivilegeEscalation"] = False
    (refused,) = dry_run(kube, [daemonset])
    assert refused.startswith("DaemonSet cce-network-node: ") and "allowPrivilegeEscalation" in refused


def test_a_cloud_secret_without_a_key_fails_the_install(helm: Helm, kube: Kube) -> None:
    namespace = "cce-chart-secret"
    kube.ensure_namespace(namespace)
    body = kube.k.V1Secret(metadata=kube.k.V1ObjectMeta(name="cloud-keys"), string_data={"access-key": "ak"})
    try:
        kube.core.create_namespaced_secret(namespace, body)
    except ApiException as err:
        if err.status != 409:
            raise
    done = helm.run("template", "cce-network", str(CHART), "--namespace", namespace, "--dry-run=server",
                    "--kubeconfig", str(kube.server.kubeconfig), "--set", "cloud.credentials.existingSecret=cloud-keys")
    assert done.returncode != 0
    assert f"the Secret {namespace}/cloud-keys has no key secret-key" in done.stderr, done.stderr
