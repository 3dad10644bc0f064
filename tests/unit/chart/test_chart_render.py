"""The helm chart lints, renders valid Kubernetes objects, and maps values onto settings.

Uses the helm binary from .tools/ (`make tools`); rendered built-in kinds are checked
offline with kubernetes-validate against the oldest Kubernetes the chart supports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import validate as k8s_validate

from tokenyard.settings import Settings

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "tokenyard"
HELM = REPO / ".tools" / "helm" / "helm"
K8S_VERSION = "1.30.0"  # the chart's kubeVersion floor
NAMESPACE = "tokenyard-system"

VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "no-autoscaler": ["--set", "autoscaler.enabled=false"],
    "one-autoscaler": ["--set", "autoscaler.replicas=1"],
    "peering": ["--set", "operator.peering=tokenyard"],
    "admin-token-existing": ["--set", "router.adminToken.existingSecret=my-admin"],
    "admin-token-off": ["--set", "router.adminToken.enabled=false"],
}

pytestmark = pytest.mark.skipif(
    not HELM.exists() and shutil.which("helm") is None,
    reason="helm is not installed: run `make tools` (installs .tools/helm/helm)",
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = str(HELM) if HELM.exists() else "helm"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=50, check=False)


def render(*extra: str, crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", "t", str(CHART), "--namespace", NAMESPACE, *extra]
    if crds:
        args.append("--include-crds")
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_strict_namespaced() -> None:
    result = helm("lint", "--strict", str(CHART), "--set", "watchNamespaces={team-a}")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(values: str) -> None:
    docs = render(*VALUE_SETS[values], crds=True)
    assert docs
    for doc in docs:
        # Raises on any schema violation, unknown fields included (strict).
        k8s_validate(doc, K8S_VERSION, strict=True)


def test_chart_crds_are_the_generated_ones() -> None:
    docs = by_kind(render(crds=True), "CustomResourceDefinition")
    on_disk = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    key = lambda d: d["metadata"]["name"]  # noqa: E731
    assert sorted(docs, key=key) == sorted(on_disk, key=key)


def test_default_render_has_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert kinds == [
        ("ClusterRole", "t-tokenyard-autoscaler"),
        ("ClusterRole", "t-tokenyard-operator"),
        ("ClusterRoleBinding", "t-tokenyard-autoscaler"),
        ("ClusterRoleBinding", "t-tokenyard-operator"),
        ("Deployment", "t-tokenyard-autoscaler"),
        ("Deployment", "t-tokenyard-operator"),
        ("PodDisruptionBudget", "t-tokenyard-autoscaler"),
        ("Role", "t-tokenyard-autoscaler-leader-election"),
        ("RoleBinding", "t-tokenyard-autoscaler-leader-election"),
        ("Secret", "t-tokenyard-router-admin"),
        ("ServiceAccount", "t-tokenyard-autoscaler"),
        ("ServiceAccount", "t-tokenyard-operator"),
    ]


def test_autoscaler_disabled_renders_only_the_operator() -> None:
    docs = [d for d in render(*VALUE_SETS["no-autoscaler"]) if d["kind"] != "Secret"]
    assert all(d["metadata"]["name"].startswith("t-tokenyard-operator") for d in docs)
    assert [d["metadata"]["name"] for d in by_kind(docs, "Deployment")] == ["t-tokenyard-operator"]


def test_namespaced_render_uses_roles_per_namespace() -> None:
    docs = render(*VALUE_SETS["namespaced"])
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "Role")}
    assert roles == {
        ("team-a", "t-tokenyard-operator"),
        ("team-b", "t-tokenyard-operator"),
        ("team-a", "t-tokenyard-autoscaler"),
        ("team-b", "t-tokenyard-autoscaler"),
        (NAMESPACE, "t-tokenyard-autoscaler-leader-election"),
    }
    # Nothing cluster-wide: kopf's scanning of CRDs and namespaces is off.
    assert by_kind(docs, "ClusterRole") == []
    assert by_kind(docs, "ClusterRoleBinding") == []
    for binding in by_kind(docs, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject["namespace"] == NAMESPACE
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        ("log.level=LOUD", "level is an enum"),
        ("log.format=xml", "format is an enum"),
        ("operator.healthPort=80", "a non-root container cannot bind below 1024"),
        ("autoscaler.replicas=0", "at least one replica"),
        ("autoscaler.prometheusURL=prometheus:9090", "a URL with a scheme"),
        ("watchNamespaces={Team_A}", "namespace names are DNS labels"),
        ("operator.resyncIntervalSeconds=0", "a positive interval"),
        ("image.pullPolicy=Sometimes", "pull policy is an enum"),
        ("unknownKey=1", "unknown keys are typos"),
        ("operator.replicas=2", "the operator runs one standalone replica"),
        ("operator.peering=Not_A_Name", "peering object names are DNS subdomains"),
    ],
)
def test_values_schema_rejects_bad_values(flag: str, why: str) -> None:
    result = helm("template", "t", str(CHART), "--set", flag)
    assert result.returncode != 0, why
    assert "values don't meet the specifications" in result.stderr or "at '" in result.stderr


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_pods_are_locked_down(values: str) -> None:
    for deploy in by_kind(render(*VALUE_SETS[values]), "Deployment"):
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod
        c = _container(deploy)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert c["image"] == "ghcr.io/tokenyard/tokenyard:0.1.0"


def test_operator_probes_hit_the_kopf_health_endpoint() -> None:
    (deploy,) = [d for d in by_kind(render(), "Deployment") if "operator" in d["metadata"]["name"]]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    c = _container(deploy)
    assert c["args"] == ["operator"]
    assert c["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8082, "protocol": "TCP"},
    ]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


def test_autoscaler_probes_hit_its_health_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("--set", "autoscaler.healthPort=9099", "--set", "autoscaler.intervalSeconds=30")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "autoscaler" in d["metadata"]["name"]]
    c = _container(deploy)
    assert c["args"] == ["autoscaler"]
    assert c["ports"] == [{"name": "health", "containerPort": 9099, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    # The first liveness check waits for three intervals: the loop's own staleness limit.
    assert c["livenessProbe"]["initialDelaySeconds"] == 90
    assert _settings_from(c, monkeypatch).autoscaler.health_port == 9099


def _settings_from(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for env in container["env"]:
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    return Settings()


def test_values_map_onto_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(
        *VALUE_SETS["namespaced"],
        "--set",
        "rayImage=registry.example/ray:1",
        "--set",
        "operator.resyncIntervalSeconds=45",
        "--set",
        "operator.watch.serverTimeoutSeconds=120",
        "--set",
        "log.level=DEBUG",
    )
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "operator" in d["metadata"]["name"]]
    s = _settings_from(_container(deploy), monkeypatch)
    assert s.operator.namespaces == ["team-a", "team-b"]
    assert s.operator.default_ray_image == "registry.example/ray:1"
    assert s.operator.resync_interval_s == 45
    assert s.operator.watch_server_timeout_s == 120
    assert s.operator.watch_client_timeout_s == 330
    assert s.operator.health_port == 8080
    assert s.operator.tokenyard_image == "ghcr.io/tokenyard/tokenyard:0.1.0"
    assert s.log_level == "DEBUG"
    assert s.log_format == "json"


def test_cluster_wide_means_no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    for deploy in by_kind(render(), "Deployment"):
        s = _settings_from(_container(deploy), monkeypatch)
        assert s.operator.namespaces == [] and s.autoscaler.namespaces == []


@pytest.mark.parametrize("peering", ["", "tokenyard"])
def test_peering_value_maps_onto_the_operator_setting(
    peering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render("--set", f"operator.peering={peering}")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "operator" in d["metadata"]["name"]]
    monkeypatch.delenv("TOKENYARD_OPERATOR__PEERING", raising=False)
    s = _settings_from(_container(deploy), monkeypatch)
    assert s.operator.peering == (peering or None)
    # The peering RBAC appears exactly when the operator runs with peering.
    kinds = {
        r for d in by_kind(docs, "ClusterRole") for rule in d["rules"] for r in rule["resources"]
    }
    assert ("clusterkopfpeerings" in kinds) is bool(peering)


def test_values_map_onto_autoscaler_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("--set", "autoscaler.prometheusURL=http://prom.monitoring:9090")
    (deploy,) = [d for d in by_kind(docs, "Deployment") if "autoscaler" in d["metadata"]["name"]]
    assert deploy["spec"]["replicas"] == 2
    c = _container(deploy)
    assert c["args"] == ["autoscaler"]
    s = _settings_from(c, monkeypatch)
    assert s.autoscaler.prometheus_url == "http://prom.monitoring:9090"
    assert s.autoscaler.lease_namespace == NAMESPACE
    assert s.autoscaler.lease_name == "t-tokenyard-autoscaler"
    assert s.autoscaler.interval_s == 15


def test_notes_name_the_kuberay_prerequisite_with_a_pinned_version() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "helm install kuberay-operator kuberay-operator" in notes
    assert "--version 1.4.2" in notes
    assert "kubectl apply -f examples/" in notes


def test_kubernetes_validate_cli_accepts_the_rendered_chart() -> None:
    """The pipeline a user can run: helm template | kubernetes-validate --strict."""
    cli = Path(sys.executable).with_name("kubernetes-validate")
    if not cli.exists():
        pytest.skip("kubernetes-validate is not installed next to this Python")
    rendered = helm("template", "t", str(CHART), "--namespace", NAMESPACE, "--include-crds")
    assert rendered.returncode == 0, rendered.stderr
    result = subprocess.run(
        [str(cli), "--strict", "--quiet", "-k", K8S_VERSION, "-"],
        input=rendered.stdout,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
