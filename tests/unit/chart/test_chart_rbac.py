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
# (group, resource) -> verbs: what the operator does (the calls recorded by
# tests/integration/operator/test_rbac.py, plus kopf's reads from its source). kopf lists
# and watches the three kinds and never writes them (no change handlers, no annotations);
# the reconciler gets pools and models, patches status, gets/creates/patches
# RayServices, gets/creates the router's state PersistentVolumeClaim, gets Secrets
# (SecretNotFound) and POSTs Events. kopf's scanning of CRDs and namespaces is off, so
# nothing cluster-scoped is needed.
OPERATOR_NAMESPACED: dict[tuple[str, str], set[str]] = {
    (TY, "servingpools"): {"get", "list", "watch"},
    (TY, "modeldeployments"): {"get", "list", "watch"},
    (TY, "routingpolicies"): {"list", "watch"},
    (TY, "servingpools/status"): {"patch"},
    (TY, "modeldeployments/status"): {"patch"},
    (TY, "routingpolicies/status"): {"patch"},
    ("ray.io", "rayservices"): {"get", "create", "patch"},
    ("", "persistentvolumeclaims"): {"get", "create"},
    ("", "secrets"): {"get"},
    ("", "configmaps"): {"get"},
    ("", "events"): {"create"},
}
# kopf peering, only with operator.peering set: lists, watches and patches the object.
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"}}
NAMESPACED_PEERING = {("kopf.dev", "kopfpeerings"): {"list", "watch", "patch"}}
# The autoscaler lists pools, models and policies, patches the scale subresource of
# models and the status subresource of all three (decisions; measured GPUs and spend),
# POSTs events.k8s.io Events and holds a Lease in the release namespace.
AUTOSCALER_NEEDS: dict[tuple[str, str], set[str]] = {
    (TY, "servingpools"): {"list"},
    (TY, "modeldeployments"): {"list"},
    (TY, "routingpolicies"): {"list"},
    (TY, "modeldeployments/scale"): {"patch"},
    (TY, "modeldeployments/status"): {"patch"},
    (TY, "servingpools/status"): {"patch"},
    (TY, "routingpolicies/status"): {"patch"},
    ("events.k8s.io", "events"): {"create"},
}
LEASE_NEEDS = {("coordination.k8s.io", "leases"): {"get", "create", "patch"}}
TEAMS = ["--set", "watchNamespaces={team-a,team-b}"]
PEERING = ["--set", "operator.peering=tokenyard"]


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


@pytest.mark.parametrize(
    ("extra", "peering"), [([], {}), (PEERING, CLUSTER_PEERING)], ids=["standalone", "peering"]
)
def test_operator_cluster_wide_gets_exactly_what_it_uses(
    extra: list[str], peering: dict[tuple[str, str], set[str]]
) -> None:
    grants = grants_of(render(*extra), OPERATOR_SA)
    assert all(g.namespace is None for g in grants)
    assert as_table(grants) == OPERATOR_NAMESPACED | peering


@pytest.mark.parametrize(
    ("extra", "peering"), [([], {}), (PEERING, NAMESPACED_PEERING)], ids=["standalone", "peering"]
)
def test_operator_namespaced_gets_exactly_what_it_uses_per_namespace(
    extra: list[str], peering: dict[tuple[str, str], set[str]]
) -> None:
    grants = grants_of(render(*TEAMS, *extra), OPERATOR_SA)
    for ns in ("team-a", "team-b"):
        assert as_table({g for g in grants if g.namespace == ns}) == OPERATOR_NAMESPACED | peering
    assert {g.namespace for g in grants} == {"team-a", "team-b"}, "nothing cluster-scoped"
    assert not allowed(grants, "get", TY, "modeldeployments", "other-team")
    assert not allowed(grants, "get", "", "secrets", "other-team")
    assert not allowed(grants, "get", "", "configmaps", "other-team")
    assert not allowed(grants, "create", "ray.io", "rayservices", NS)


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
        ("list", "", "configmaps"),  # get only: the ConfigMaps a policy names
        ("create", "apps", "deployments"),
        ("delete", "", "namespaces"),
        ("list", "", "secrets"),
        ("update", TY, "modeldeployments"),
        ("delete", "ray.io", "rayservices"),
        ("delete", "", "persistentvolumeclaims"),
        ("patch", "", "events"),
        ("list", "", "namespaces"),
        ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("patch", TY, "modeldeployments"),
        ("patch", TY, "servingpools"),
        ("patch", TY, "routingpolicies"),
    ],
)
def test_nothing_beyond_the_job(verb: str, group: str, resource: str) -> None:
    docs = render()
    for sa in (OPERATOR_SA, AUTOSCALER_SA):
        assert not allowed(grants_of(docs, sa), verb, group, resource, "default"), sa
    assert not allowed(grants_of(docs, AUTOSCALER_SA), "get", "", "secrets", "default")
    assert not allowed(grants_of(docs, AUTOSCALER_SA), "get", "", "configmaps", "default")
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
    only path from the reconciler to the API server) is in the operator's table."""
    kube = pytest.importorskip("tokenyard.operator.kube")
    resources = [v for v in vars(kube).values() if isinstance(v, kube.Resource)]
    assert resources, "tokenyard.operator.kube declares no Resource constants"
    for r in resources:
        assert (r.group, r.plural) in OPERATOR_NAMESPACED, r
