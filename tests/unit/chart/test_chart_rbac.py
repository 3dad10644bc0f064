"""The chart's RBAC grants exactly what the operator and autoscaler call, and no more.

A small RBAC evaluator (rules -> may this ServiceAccount do VERB on RESOURCE in
NAMESPACE?) runs over the rendered Roles, ClusterRoles and their bindings.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "tokenyard"
HELM = REPO / ".tools" / "helm" / "helm"
NS = "tokenyard-system"
OPERATOR_SA = "t-tokenyard-operator"
AUTOSCALER_SA = "t-tokenyard-autoscaler"
CLUSTER = None  # namespace of a cluster-wide grant

pytestmark = pytest.mark.skipif(
    not HELM.exists() and shutil.which("helm") is None,
    reason="helm is not installed: run `make tools` (installs .tools/helm/helm)",
)

TY = "tokenyard.dev"
# (group, resource, verbs): what the operator does. kopf lists and watches every
# resource it handles, patches finalizers and its annotations on them and patches status;
# the reconciler creates/patches/deletes RayServices, reads Secrets (SecretNotFound),
# posts Events; kopf reads CRDs and namespaces at start-up and uses peering objects.
OPERATOR_NEEDS: dict[tuple[str, str], set[str]] = {
    (TY, "servingpools"): {"get", "list", "watch", "patch", "update"},
    (TY, "modeldeployments"): {"get", "list", "watch", "patch", "update"},
    (TY, "routingpolicies"): {"get", "list", "watch", "patch", "update"},
    (TY, "servingpools/status"): {"get", "patch", "update"},
    (TY, "modeldeployments/status"): {"get", "patch", "update"},
    (TY, "routingpolicies/status"): {"get", "patch", "update"},
    (TY, "modeldeployments/scale"): {"get", "patch", "update"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "events"): {"create", "patch"},
    ("", "secrets"): {"get", "list", "watch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
}
OPERATOR_CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("kopf.dev", "clusterkopfpeerings"),
}
# The autoscaler lists pools and models, writes the scale and status subresources,
# posts events.k8s.io Events and holds a Lease in the release namespace.
AUTOSCALER_NEEDS: dict[tuple[str, str], set[str]] = {
    (TY, "servingpools"): {"get", "list", "watch"},
    (TY, "modeldeployments"): {"get", "list", "watch"},
    (TY, "routingpolicies"): {"get", "list", "watch"},
    (TY, "modeldeployments/scale"): {"get", "patch", "update"},
    (TY, "modeldeployments/status"): {"get", "patch", "update"},
    (TY, "servingpools/status"): {"get", "patch", "update"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_NEEDS = {
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "patch", "update"}
}


@dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: cluster-wide
    group: str
    resource: str
    verb: str


def render(*extra: str) -> list[dict[str, Any]]:
    binary = str(HELM) if HELM.exists() else "helm"
    result = subprocess.run(
        [binary, "template", "t", str(CHART), "--namespace", NS, *extra],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def grants_of(docs: list[dict[str, Any]], sa: str) -> set[Grant]:
    """Every (namespace, group, resource, verb) the ServiceAccount is granted."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    out: set[Grant] = set()
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NS
            for s in b["subjects"]
        ):
            continue
        ref = b["roleRef"]
        bound_ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        role_ns = bound_ns if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        for rule in role["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add(Grant(bound_ns, group, resource, verb))
    return out


def allowed(grants: set[Grant], verb: str, group: str, resource: str, ns: str | None) -> bool:
    """RBAC's answer, wildcards included (the chart uses none, but be a faithful judge)."""
    for g in grants:
        if g.namespace is not None and g.namespace != ns:
            continue
        if g.group in (group, "*") and g.resource in (resource, "*") and g.verb in (verb, "*"):
            return True
    return False


def as_table(grants: set[Grant]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for g in grants:
        table.setdefault((g.group, g.resource), set()).add(g.verb)
    return table


@pytest.mark.parametrize("extra", [[], ["--set", "watchNamespaces={team-a,team-b}"]])
def test_no_wildcards_anywhere(extra: list[str]) -> None:
    for doc in render(*extra):
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (doc["metadata"]["name"], rule)
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
            assert "impersonate" not in rule["verbs"]


def test_operator_cluster_wide_gets_exactly_what_it_uses() -> None:
    grants = grants_of(render(), OPERATOR_SA)
    assert all(g.namespace is None for g in grants)
    assert as_table(grants) == OPERATOR_NEEDS


def test_operator_namespaced_gets_exactly_what_it_uses_per_namespace() -> None:
    grants = grants_of(render("--set", "watchNamespaces={team-a,team-b}"), OPERATOR_SA)
    for ns in ("team-a", "team-b"):
        for (group, resource), verbs in OPERATOR_NEEDS.items():
            for verb in verbs:
                assert allowed(grants, verb, group, resource, ns), (ns, group, resource, verb)
    cluster = {(g.group, g.resource) for g in grants if g.namespace is None}
    assert cluster == OPERATOR_CLUSTER_SCOPED
    assert not allowed(grants, "get", TY, "modeldeployments", "other-team")
    assert not allowed(grants, "get", "", "secrets", "other-team")
    assert not allowed(grants, "create", "ray.io", "rayservices", NS)
    namespaced = {k: v for k, v in OPERATOR_NEEDS.items() if k not in OPERATOR_CLUSTER_SCOPED}
    assert as_table({g for g in grants if g.namespace == "team-a"}) == namespaced


@pytest.mark.parametrize("extra", [[], ["--set", "watchNamespaces={team-a}"]])
def test_autoscaler_gets_exactly_what_it_uses(extra: list[str]) -> None:
    grants = grants_of(render(*extra), AUTOSCALER_SA)
    lease = {g for g in grants if g.group == "coordination.k8s.io"}
    assert {g.namespace for g in lease} == {NS}, "leases only in the release namespace"
    assert as_table(lease) == LEASE_NEEDS
    assert as_table(grants - lease) == AUTOSCALER_NEEDS
    scope = "team-a" if extra else None
    assert {g.namespace for g in grants - lease} == {scope}


@pytest.mark.parametrize(
    ("verb", "group", "resource"),
    [
        ("delete", "", "pods"),
        ("create", "", "pods"),
        ("create", "", "secrets"),
        ("patch", "", "secrets"),
        ("delete", TY, "modeldeployments"),
        ("create", TY, "servingpools"),
        ("create", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ("get", "", "configmaps"),
        ("create", "apps", "deployments"),
        ("delete", "", "namespaces"),
    ],
)
def test_nothing_beyond_the_job(verb: str, group: str, resource: str) -> None:
    docs = render()
    for sa in (OPERATOR_SA, AUTOSCALER_SA):
        assert not allowed(grants_of(docs, sa), verb, group, resource, "default"), sa
    assert not allowed(grants_of(docs, AUTOSCALER_SA), "get", "", "secrets", "default")
    assert not allowed(grants_of(docs, AUTOSCALER_SA), "patch", TY, "modeldeployments", "x")


def test_the_autoscaler_never_touches_ray_services() -> None:
    grants = grants_of(render(), AUTOSCALER_SA)
    assert not any(g.group == "ray.io" for g in grants)


def test_rbac_can_be_left_to_the_user() -> None:
    docs = render("--set", "rbac.create=false")
    kinds = {d["kind"] for d in docs}
    assert kinds.isdisjoint({"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})


def test_every_resource_the_operator_code_names_is_granted() -> None:
    """Ties the chart to the code: each resource type in tokenyard.operator.kube (the
    only path from the reconciler to the API server) has a grant for the verbs the
    reconciler uses on it (get/create/patch, or create for Events)."""
    kube = pytest.importorskip("tokenyard.operator.kube")
    resources = [v for v in vars(kube).values() if isinstance(v, kube.Resource)]
    assert resources, "tokenyard.operator.kube declares no Resource constants"
    grants = grants_of(render(), OPERATOR_SA)
    for r in resources:
        verbs = {"create"} if r.plural == "events" else {"get"}
        if r.group in (TY, "ray.io"):
            verbs |= {"patch"}
        if r.group == "ray.io":
            verbs |= {"create"}
        for verb in verbs:
            assert allowed(grants, verb, r.group, r.plural, "default"), (r, verb)
