"""Every API call the operator makes is allowed by the chart's RBAC, and needs nothing
more than what the chart was asked to grant."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.operator.harness import (
    API_CALLS,
    MODELS,
    NS_DEFAULT,
    POLICIES,
    RAYSERVICES,
    Cluster,
    load_manifests,
    operator,
    operator_calls,
    reason,
)

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "tokenyard"
HELM = REPO / ".tools" / "helm" / "helm"

pytestmark = pytest.mark.timeout(120)

# What the chart grants the operator, exactly (tests/unit/chart pins the same table):
# every call recorded here must fall inside it.
AGREED: dict[tuple[str, str], set[str]] = {
    ("tokenyard.dev", "servingpools"): {"get", "list", "watch"},
    ("tokenyard.dev", "modeldeployments"): {"get", "list", "watch"},
    ("tokenyard.dev", "routingpolicies"): {"list", "watch"},
    ("tokenyard.dev", "servingpools/status"): {"patch"},
    ("tokenyard.dev", "modeldeployments/status"): {"patch"},
    ("tokenyard.dev", "routingpolicies/status"): {"patch"},
    ("ray.io", "rayservices"): {"get", "create", "patch"},
    ("", "events"): {"create"},
    ("", "secrets"): {"get"},
    ("", "configmaps"): {"get"},
    ("", "persistentvolumeclaims"): {"get", "create"},
}


def _name(res: str, sub: str) -> str:
    return f"{res}/{sub}" if sub else res


async def _exercise(cluster: Cluster, kmock: Any) -> set[tuple[str, str, str, str, bool]]:
    """One run through every code path that talks to the API server."""
    docs = load_manifests(
        "pool.yaml", "models.yaml", "policy.yaml", "invalid-model.yaml", "orphans.yaml"
    )
    async with operator(kmock):
        await cluster.apply(*docs)
        await cluster.eventually(lambda: cluster.get(RAYSERVICES, "llm", "gpu-pool"))
        await cluster.eventually(
            lambda: reason(cluster.get(MODELS, "llm", "broken")) == "ValidationFailed"
        )
        await cluster.eventually(
            lambda: reason(cluster.get(MODELS, "llm", "lost")) == "PoolNotFound"
        )
        economy = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "economy"))
        economy["spec"]["inCluster"]["engine"]["dtype"] = "float16"
        await cluster.apply(economy)
        # A Learned classifier: the operator reads its ConfigMap (get) and reports it.
        learned = copy.deepcopy(next(d for d in docs if d["kind"] == "RoutingPolicy"))
        learned["spec"]["classifier"] = {"type": "Learned", "artifactRef": {"name": "dm"}}
        artifact = Path(__file__).parents[2] / "unit" / "fixtures" / "difficulty-model.json"
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "dm", "namespace": learned["metadata"]["namespace"]},
              "data": {"model.json": artifact.read_text()}}  # fmt: skip
        await cluster.apply(cm, learned)
        name = learned["metadata"]["name"]

        def delivered() -> bool:
            st = (cluster.get(POLICIES, "llm", name) or {}).get("status") or {}
            return bool((st.get("classifier") or {}).get("type") == "Learned")

        await cluster.eventually(delivered)
        await cluster.delete(MODELS, "llm", "frontier")
        await cluster.eventually(
            lambda: (
                "name: model-frontier"
                not in (cluster.get(RAYSERVICES, "llm", "gpu-pool") or {})["spec"]["serveConfigV2"]
            )
        )
    return operator_calls(kmock)


async def test_operator_calls_stay_within_the_agreed_permissions(
    cluster: Cluster, kmock: Any
) -> None:
    calls = await _exercise(cluster, kmock) | API_CALLS
    assert ("create", "ray.io", "rayservices", "", True) in calls
    assert ("patch", "tokenyard.dev", "modeldeployments", "status", True) in calls
    assert ("create", "", "persistentvolumeclaims", "", True) in calls
    assert ("get", "", "configmaps", "", True) in calls
    extra = sorted(
        (verb, group, _name(res, sub))
        for verb, group, res, sub, _ in calls
        if verb not in AGREED.get((group, _name(res, sub)), set())
    )
    assert extra == [], f"the operator needs permissions the chart was not asked for: {extra}"


def _render_chart() -> list[dict[str, Any]]:
    helm = str(HELM) if HELM.exists() else shutil.which("helm")
    if helm is None:
        pytest.skip("helm is not installed (make tools installs it into .tools/)")
    out = subprocess.run(
        [helm, "template", "tokenyard", str(CHART), "--namespace", "tokenyard-system"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _allowed(rules: list[dict[str, Any]], verb: str, group: str, resource: str) -> bool:
    for rule in rules:
        groups = rule.get("apiGroups") or []
        resources = rule.get("resources") or []
        verbs = rule.get("verbs") or []
        if (
            (group in groups or "*" in groups)
            and (resource in resources or "*" in resources)
            and (verb in verbs or "*" in verbs)
        ):
            return True
    return False


async def test_chart_rbac_allows_every_operator_call(cluster: Cluster, kmock: Any) -> None:
    if not (CHART / "Chart.yaml").exists():
        pytest.skip(
            "charts/tokenyard/Chart.yaml does not exist yet (the chart is written separately)"
        )
    docs = _render_chart()
    deployment = next(
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    )
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    release_ns = deployment["metadata"]["namespace"]

    def bound(binding_kind: str) -> set[str]:
        return {
            d["roleRef"]["name"]
            for d in docs
            if d["kind"] == binding_kind
            and any(
                s.get("kind") == "ServiceAccount" and s.get("name") == sa
                for s in d.get("subjects", [])
            )
        }

    cluster_rules = [
        r
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound("ClusterRoleBinding")
        for r in d.get("rules", [])
    ]
    ns_rules = cluster_rules + [
        r
        for d in docs
        if d["kind"] == "Role"
        and d["metadata"]["name"] in bound("RoleBinding")
        and d["metadata"].get("namespace") == release_ns
        for r in d.get("rules", [])
    ]
    calls = await _exercise(cluster, kmock) | API_CALLS
    denied = sorted(
        (verb, group, _name(res, sub), "namespaced" if namespaced else "cluster-wide")
        for verb, group, res, sub, namespaced in calls
        # Objects in the test namespace need the ClusterRole (the chart's default mode);
        # only leases live in the release namespace.
        if not _allowed(
            cluster_rules if not namespaced else ns_rules if res == "leases" else cluster_rules,
            verb,
            group,
            _name(res, sub),
        )
    )
    assert denied == [], f"the chart's RBAC denies operator calls: {denied}"
    assert NS_DEFAULT
