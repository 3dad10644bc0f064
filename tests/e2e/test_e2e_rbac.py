"""The chart's RBAC on a real API server: SubjectAccessReviews for the rendered
ServiceAccounts allow every verb tokenyard uses and deny what it must not do."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from tokenyard_e2e import tool, wait_for

REPO = Path(__file__).resolve().parents[2]
TY = "tokenyard.dev"

# (verb, group, resource, subresource) the operator uses, all namespaces (cluster-wide,
# the chart's default; kopf peering is off, so no peering grants).
OPERATOR_USES = [
    *[
        (v, TY, r, "")
        for r in ("servingpools", "modeldeployments")
        for v in ("get", "list", "watch")
    ],
    *[(v, TY, "routingpolicies", "") for v in ("list", "watch")],
    *[("patch", TY, r, "status") for r in ("servingpools", "modeldeployments", "routingpolicies")],
    *[(v, "ray.io", "rayservices", "") for v in ("get", "create", "patch")],
    *[(v, "", "persistentvolumeclaims", "") for v in ("get", "create")],
    ("get", "", "secrets", ""),
    ("get", "", "configmaps", ""),  # a Learned classifier's artifact
    ("create", "", "events", ""),
]
# What the operator does not do, so the chart no longer grants it.
OPERATOR_UNUSED = [
    ("update", TY, "modeldeployments", ""),
    ("patch", TY, "modeldeployments", ""),
    ("patch", TY, "servingpools", ""),
    ("patch", TY, "routingpolicies", ""),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("get", TY, "routingpolicies", ""),
    ("get", TY, "modeldeployments", "status"),
    ("patch", TY, "modeldeployments", "scale"),
    ("delete", "ray.io", "rayservices", ""),
    ("list", "ray.io", "rayservices", ""),
    ("list", "", "secrets", ""),
    ("list", "", "configmaps", ""),
    ("patch", "", "events", ""),
    ("list", "", "namespaces", ""),
    ("patch", "kopf.dev", "clusterkopfpeerings", ""),
    ("patch", "kopf.dev", "kopfpeerings", ""),
]
AUTOSCALER_USES = [
    ("list", TY, "modeldeployments", ""),
    ("list", TY, "servingpools", ""),
    ("list", TY, "routingpolicies", ""),
    ("patch", TY, "modeldeployments", "scale"),
    ("patch", TY, "modeldeployments", "status"),
    ("patch", TY, "servingpools", "status"),
    ("patch", TY, "routingpolicies", "status"),
    ("create", "events.k8s.io", "events", ""),
]
AUTOSCALER_UNUSED = [
    ("get", TY, "modeldeployments", ""),
    ("watch", TY, "modeldeployments", ""),
    ("watch", TY, "routingpolicies", ""),
    ("patch", TY, "servingpools", ""),
    ("patch", TY, "routingpolicies", ""),
    ("update", TY, "modeldeployments", "scale"),
    ("create", "", "events", ""),
    ("patch", "events.k8s.io", "events", ""),
]
NEVER = [
    ("delete", "", "pods", ""),
    ("create", "", "pods", ""),
    ("create", "", "secrets", ""),
    ("delete", TY, "modeldeployments", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("create", "apps", "deployments", ""),
]


def _helm() -> str:
    return tool("helm")


@pytest.fixture
def chart_rbac(cluster: Any, namespace: str) -> Iterator[dict[str, str]]:
    """The chart's ServiceAccounts, (Cluster)Roles and bindings, created for real under
    a unique release name; the cluster-scoped ones are deleted afterwards."""
    release = f"e2e{uuid.uuid4().hex[:6]}"
    out = subprocess.run(
        [_helm(), "template", release, str(REPO / "charts" / "tokenyard"), "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    created: list[tuple[str, str]] = []
    try:
        for d in docs:
            kind = d["kind"]
            if kind == "ServiceAccount":
                cluster.core.create_namespaced_service_account(namespace, d)
            elif kind == "ClusterRole":
                cluster.rbac.create_cluster_role(d)
                created.append((kind, d["metadata"]["name"]))
            elif kind == "ClusterRoleBinding":
                cluster.rbac.create_cluster_role_binding(d)
                created.append((kind, d["metadata"]["name"]))
            elif kind == "Role":
                cluster.rbac.create_namespaced_role(namespace, d)
            elif kind == "RoleBinding":
                cluster.rbac.create_namespaced_role_binding(namespace, d)
        yield {
            "operator": f"{release}-tokenyard-operator",
            "autoscaler": f"{release}-tokenyard-autoscaler",
        }
    finally:
        for kind, name in reversed(created):
            try:
                if kind == "ClusterRole":
                    cluster.rbac.delete_cluster_role(name)
                else:
                    cluster.rbac.delete_cluster_role_binding(name)
            except ApiException as err:
                if err.status != 404:
                    raise


Perm = tuple[str, str, str, str]  # verb, group, resource, subresource


def _allowed(cluster: Any, ns: str, sa: str, perm: Perm, *, scope: str) -> bool:
    """SubjectAccessReview: may ServiceAccount ns/sa do perm in scope ('' = all)?"""
    verb, group, resource, sub = perm
    review = cluster.authz.create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{ns}:{sa}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{ns}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "namespace": scope,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": sub,
                },
            },
        }
    )
    return bool(review.status.allowed)


def test_operator_may_do_its_job_and_nothing_more(
    cluster: Any, namespace: str, chart_rbac: dict[str, str]
) -> None:
    sa = chart_rbac["operator"]
    # RBAC reaches the authorizer through an informer: give it a moment.
    wait_for(
        "the operator's ClusterRoleBinding to take effect",
        lambda: _allowed(cluster, namespace, sa, ("list", TY, "servingpools", ""), scope=""),
        30,
    )
    for perm in OPERATOR_USES:
        for scope in ("", namespace):
            assert _allowed(cluster, namespace, sa, perm, scope=scope), (perm, scope)
    for perm in [*NEVER, *OPERATOR_UNUSED]:
        assert not _allowed(cluster, namespace, sa, perm, scope=namespace), perm


def test_autoscaler_may_scale_and_lead_but_not_more(
    cluster: Any, namespace: str, chart_rbac: dict[str, str]
) -> None:
    sa = chart_rbac["autoscaler"]
    wait_for(
        "the autoscaler's bindings to take effect",
        lambda: _allowed(cluster, namespace, sa, ("list", TY, "modeldeployments", ""), scope=""),
        30,
    )
    for perm in AUTOSCALER_USES:
        assert _allowed(cluster, namespace, sa, perm, scope=namespace), perm
    for verb in ("get", "create", "patch"):
        lease: Perm = (verb, "coordination.k8s.io", "leases", "")
        # Leases only in the release namespace (here: the test namespace).
        assert _allowed(cluster, namespace, sa, lease, scope=namespace), lease
        assert not _allowed(cluster, namespace, sa, lease, scope="kube-system"), lease
    for verb in ("list", "watch", "update", "delete"):
        unused: Perm = (verb, "coordination.k8s.io", "leases", "")
        assert not _allowed(cluster, namespace, sa, unused, scope=namespace), unused
    extra: list[Perm] = [("get", "", "secrets", ""), ("create", "ray.io", "rayservices", "")]
    for perm in [*NEVER, *AUTOSCALER_UNUSED, *extra]:
        assert not _allowed(cluster, namespace, sa, perm, scope=namespace), perm
