"""Status builders: conditions and their transitions, RayService status, models, pools, policies."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.operator.factories import (
    LATER,
    NOW,
    external,
    model,
    policy,
    policy_doc,
    pool,
    with_,
)

from tokenyard.api.policy import RoutingPolicy
from tokenyard.operator import builders, status
from tokenyard.operator.builders import Decision
from tokenyard.operator.status import (
    ModelContext,
    ObservedRayService,
    PolicyContext,
    PoolContext,
    merge_conditions,
)


def cond(  # noqa: PLR0917 - reads like the condition it builds
    type_: str, st: str, reason: str, ltt: str = NOW, msg: str = "", gen: int | None = None
) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": st, "reason": reason, "message": msg}
    if gen is not None:
        c["observedGeneration"] = gen
    c["lastTransitionTime"] = ltt
    return c


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("existing", "new", "expected"),
    [
        # New condition: stamped now.
        (
            [],
            [status.condition("Ready", False, "Deploying", "m", 1)],
            [cond("Ready", "False", "Deploying", LATER, "m", 1)],
        ),
        # Same status, other reason and message: the old time stays.
        (
            [cond("Ready", "False", "Deploying", NOW)],
            [status.condition("Ready", False, "Unhealthy", "x", 2)],
            [cond("Ready", "False", "Unhealthy", NOW, "x", 2)],
        ),
        # Status flips: the time moves.
        (
            [cond("Ready", "False", "Deploying", NOW)],
            [status.condition("Ready", True, "Running", "", 2)],
            [cond("Ready", "True", "Running", LATER, "", 2)],
        ),
        # Conditions others own stay, in place.
        (
            [cond("MetricsAvailable", "True", "Ok", NOW), cond("Ready", "True", "Running", NOW)],
            [status.condition("Ready", True, "Running", "", None)],
            [cond("MetricsAvailable", "True", "Ok", NOW), cond("Ready", "True", "Running", NOW)],
        ),
        # A condition without a time gets one.
        (
            [{"type": "Ready", "status": "True", "reason": "Running", "message": ""}],
            [status.condition("Ready", True, "Running", "", None)],
            [cond("Ready", "True", "Running", LATER)],
        ),
    ],
)
def test_merge_conditions(
    existing: list[dict[str, Any]], new: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    assert merge_conditions(existing, new, LATER) == expected


# --------------------------------------------------------------------------- observed


def test_observe_ray_service_with_conditions_and_pending_apps() -> None:
    rs = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Initializing", "message": "booting"}
            ],
            "serviceStatus": "Running",  # older field; the condition wins
            "activeServiceStatus": {
                "applicationStatuses": {
                    "model-a": {
                        "status": "RUNNING",
                        "serveDeploymentStatuses": {"LLMServer": {"status": "HEALTHY"}},
                    },
                    "model-b": {"status": "DEPLOY_FAILED", "message": "CUDA OOM"},
                }
            },
            "pendingServiceStatus": {"applicationStatuses": {"model-c": {"status": "RUNNING"}}},
        }
    }
    obs = status.observe_ray_service(rs)
    assert obs is not None
    assert (obs.ready, obs.message) == (False, "booting")
    assert obs.app("model-a") == status.AppStatus("RUNNING", "", {"LLMServer": "HEALTHY"})
    assert obs.app("model-b") == status.AppStatus("DEPLOY_FAILED", "CUDA OOM", {})
    c = obs.app("model-c")
    assert c is not None and c.status == "DEPLOYING"  # only on the pending cluster
    assert obs.app("model-z") is None


@pytest.mark.parametrize(
    ("st", "ready"),
    [
        ({"serviceStatus": "Running"}, True),
        ({"serviceStatus": "WaitForServeDeploymentReady"}, False),
        ({}, False),
    ],
)
def test_observe_ray_service_before_kuberay_1_3(st: dict[str, Any], ready: bool) -> None:
    obs = status.observe_ray_service({"status": st})
    assert obs is not None and obs.ready is ready
    assert status.observe_ray_service(None) is None


# --------------------------------------------------------------------------- models


def observed(apps: dict[str, str], messages: dict[str, str] | None = None) -> ObservedRayService:
    return ObservedRayService(
        ready=True,
        active={a: status.AppStatus(s, (messages or {}).get(a, "")) for a, s in apps.items()},
    )


P = pool()


@pytest.mark.parametrize(
    ("ctx", "expected"),
    [
        (
            ModelContext(pool=None),
            (
                False,
                "PoolNotFound",
                "spec.pool: ServingPool 'gpu-pool' not found in namespace 'team-a'",
            ),
        ),
        (ModelContext(pool=P, crd_missing=True), (False, "RayServiceCRDMissing", None)),
        (
            ModelContext(pool=P, decision=Decision(False, "GPULimitExceeded", "too big")),
            (False, "GPULimitExceeded", "too big"),
        ),
        (
            ModelContext(pool=P, decision=Decision(True)),
            (
                False,
                "Deploying",
                "waiting for RayService gpu-pool to deploy application model-economy",
            ),
        ),
        (
            ModelContext(pool=P, observed=observed({"model-economy": "DEPLOYING"})),
            (False, "Deploying", "application model-economy is DEPLOYING"),
        ),
        (
            ModelContext(pool=P, observed=observed({"model-economy": "RUNNING"})),
            (True, "Running", "application model-economy is RUNNING in RayService gpu-pool"),
        ),
        (
            ModelContext(
                pool=P,
                observed=observed(
                    {"model-economy": "UNHEALTHY"}, {"model-economy": "replica died"}
                ),
            ),
            (False, "Unhealthy", "application model-economy is UNHEALTHY: replica died"),
        ),
        (
            ModelContext(pool=P, observed=observed({"model-economy": "DEPLOY_FAILED"})),
            (False, "Unhealthy", "application model-economy is DEPLOY_FAILED"),
        ),
    ],
)
def test_in_cluster_readiness(ctx: ModelContext, expected: tuple[Any, ...]) -> None:
    ready, reason, message = status.model_readiness(model("economy"), ctx)
    assert (ready, reason) == expected[:2]
    if expected[2] is not None:
        assert message == expected[2]


@pytest.mark.parametrize(
    ("md", "ctx", "expected"),
    [
        (external(), ModelContext(pool=P), (True, "ExternalProvider")),
        (external(), ModelContext(pool=P, secrets={}), (False, "SecretNotFound")),
        (
            external(),
            ModelContext(pool=P, secrets={"provider-key": {"other"}}),
            (False, "SecretNotFound"),
        ),
        (external(), ModelContext(pool=None), (False, "PoolNotFound")),
        (
            external(pool=None),
            ModelContext(pool=None, secrets={"provider-key": {"apiKey"}}),
            (True, "ExternalProvider"),
        ),
    ],
)
def test_external_readiness(md: Any, ctx: ModelContext, expected: tuple[bool, str]) -> None:
    assert status.model_readiness(md, ctx)[:2] == expected


def test_build_model_status_in_cluster_whole() -> None:
    md = model(
        "economy",
        replicas=2,
        autoscaling={"minReplicas": 1, "maxReplicas": 3},
        status={
            "desiredReplicas": 3,  # the autoscaler's: not ours, not in the result
            "conditions": [
                cond("Ready", "False", "Deploying", NOW),
                cond("Capped", "False", "NotCapped", NOW),
            ],
        },
    )
    ctx = ModelContext(
        pool=P, decision=Decision(True), observed=observed({"model-economy": "RUNNING"})
    )
    assert status.build_model_status(md, ctx, now=LATER) == {
        "observedGeneration": 1,
        "conditions": [
            cond(
                "Ready",
                "True",
                "Running",
                LATER,
                "application model-economy is RUNNING in RayService gpu-pool",
                1,
            ),
            cond("Capped", "False", "NotCapped", NOW),
        ],
        "quality": 0.3,
        "costPer1MTokens": 0.222222,
        "costSource": "Estimated",
        "model": "hf://org/economy",
        "replicas": 2,
        "readyReplicas": 2,
        "selector": "tokenyard.dev/pool=gpu-pool,ray.io/group=l4",
        "servedBy": {"pool": "gpu-pool", "rayService": "gpu-pool", "application": "model-economy"},
    }


def test_build_model_status_excluded_and_measured() -> None:
    md = model("economy", status={"costPer1MTokens": 0.05, "costSource": "Measured"})
    ctx = ModelContext(pool=P, decision=Decision(False, "GPULimitExceeded", "no room"))
    st = status.build_model_status(md, ctx, now=NOW)
    assert (st["replicas"], st["readyReplicas"], st["servedBy"]) == (0, 0, {"pool": "gpu-pool"})
    assert (st["costPer1MTokens"], st["costSource"]) == (0.05, "Measured")
    assert st["conditions"] == [cond("Ready", "False", "GPULimitExceeded", NOW, "no room", 1)]


def test_build_model_status_external_whole() -> None:
    st = status.build_model_status(external(), ModelContext(pool=P), now=NOW)
    assert st == {
        "observedGeneration": 1,
        "conditions": [
            cond(
                "Ready",
                "True",
                "ExternalProvider",
                NOW,
                "served by https://api.example.com/v1 as example-large",
                1,
            )
        ],
        "quality": 0.9,
        "costPer1MTokens": 3.5,  # (3 x 2 + 8) / 4
        "costSource": "Price",
        "model": "example-large",
        "replicas": None,
        "readyReplicas": None,
        "selector": None,
        "servedBy": {"pool": "gpu-pool", "baseURL": "https://api.example.com/v1"},
    }


# --------------------------------------------------------------------------- pools


def test_build_pool_status_whole() -> None:
    admission = builders.admit(
        P,
        [
            model("economy", replicas=2, autoscaling={"minReplicas": 1, "maxReplicas": 2}),
            model("frontier", accelerator="h100", engine={"tensorParallelSize": 4}),
        ],
    )
    ctx = PoolContext(
        admission=admission,
        members={"economy", "frontier", "provider"},
        policies={"chat"},
        observed=ObservedRayService(ready=True),
    )
    assert status.build_pool_status(P, ctx, now=NOW) == {
        "observedGeneration": None,
        "conditions": [cond("Ready", "True", "Running", NOW, "RayService gpu-pool is ready")],
        "accelerators": [
            {"name": "l4", "requestedGPUs": 2, "maxGPUs": 4},
            {"name": "h100", "requestedGPUs": 4, "maxGPUs": 8},
        ],
        "gpus": "l4 2/4, h100 4/8",
        "hourlyCostUSD": 17.6,  # 2 x 0.8 + 4 x 4.0
        "models": ["economy", "frontier", "provider"],
        "policies": ["chat"],
        "modelCount": 3,
        "rayService": "gpu-pool",
    }


@pytest.mark.parametrize(
    ("ctx", "reason", "ready"),
    [
        (PoolContext(crd_missing=True), "RayServiceCRDMissing", "False"),
        (PoolContext(conflict="not ours"), "RayServiceConflict", "False"),
        (PoolContext(), "Deploying", "False"),
        (PoolContext(observed=ObservedRayService(ready=False, message="x")), "Deploying", "False"),
        (
            PoolContext(
                observed=ObservedRayService(ready=True), excluded=["big (GPULimitExceeded)"]
            ),
            "Running",
            "True",
        ),
    ],
)
def test_pool_ready_condition(ctx: PoolContext, reason: str, ready: str) -> None:
    st = status.build_pool_status(P, ctx, now=NOW)
    (c,) = st["conditions"]
    assert (c["status"], c["reason"]) == (ready, reason)
    if ctx.excluded:
        assert c["message"].endswith("; excluded: big (GPULimitExceeded)")
    if ctx.crd_missing:
        assert st["rayService"] is None and "KubeRay" in c["message"]


# --------------------------------------------------------------------------- policies


def test_build_policy_status_whole() -> None:
    pol = policy(
        status={
            "targets": [{"model": "economy", "trafficShare": 0.7, "requests": 70}],
            "requests": 100,
        }
    )
    models = {
        "economy": model("economy"),
        "frontier": model("frontier", accelerator="h100", engine={"tensorParallelSize": 2}),
        "provider": external(),
    }
    admission = builders.admit(P, list(models.values()))
    ctx = PolicyContext(
        pool=P, models=models, admission=admission, observed=observed({"model-economy": "RUNNING"})
    )
    assert status.build_policy_status(pol, ctx, now=NOW) == {
        "observedGeneration": 3,
        "conditions": [cond("Ready", "True", "TargetsReady", NOW, "2/3 targets ready", 3)],
        "endpoint": "chat",
        "targets": [
            {
                "model": "economy",
                "ready": True,
                "external": False,
                "location": "model-economy",
                "quality": 0.3,
                "costPer1MTokens": 0.222222,
                "trafficShare": 0.7,
                "requests": 70,
            },
            {
                "model": "frontier",
                "ready": False,
                "external": False,
                "location": "model-frontier",
                "quality": 0.3,
                "costPer1MTokens": 2.222222,
                "message": "Deploying: waiting for RayService gpu-pool to deploy application "
                "model-frontier",
            },
            {
                "model": "provider",
                "ready": True,
                "external": True,
                "location": "https://api.example.com/v1",
                "quality": 0.9,
                "costPer1MTokens": 3.5,
            },
        ],
        "readyTargets": "2/3",
        "classifier": {"type": "Heuristic"},  # new: the classifier in use
        "shadow": None,  # no spec.classifier.shadow: a stale status.shadow is removed
    }


@pytest.mark.parametrize(
    ("ctx", "reason", "needle"),
    [
        (PolicyContext(pool=None), "PoolNotFound", "spec.pool: ServingPool 'gpu-pool' not found"),
        (
            PolicyContext(pool=P, models={"economy": model("economy")}),
            "TargetNotFound",
            "spec.targets[1].model: ModelDeployment 'frontier' not found in namespace 'team-a'",
        ),
        (
            PolicyContext(
                pool=P, models={"economy": model("economy")}, invalid={"frontier", "provider"}
            ),
            "NoReadyTargets",
            "none of 3 targets is ready",
        ),
    ],
)
def test_policy_ready_condition(ctx: PolicyContext, reason: str, needle: str) -> None:
    st = status.build_policy_status(policy(), ctx, now=NOW)
    (c,) = st["conditions"]
    assert (c["status"], c["reason"]) == ("False", reason)
    assert needle in c["message"]


def test_in_cluster_target_of_another_pool_is_not_ready() -> None:
    other = model("economy", pool="other-pool")
    st = status.build_policy_status(
        policy(targets=("economy",)), PolicyContext(pool=P, models={"economy": other}), now=NOW
    )
    assert st["targets"][0]["ready"] is False
    assert "pool 'other-pool'" in st["targets"][0]["message"]


# --------------------------------------------------------------------------- diffing


@pytest.mark.parametrize(
    ("current", "desired", "expected"),
    [
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1, "z": 9}, {"a": 2}, {"a": 2}),  # fields we do not own stay untouched
        ({"a": 1}, {"a": None}, {"a": None}),
        (None, {"a": None}, None),
        (
            {"s": {"pool": "p", "application": "x"}},
            {"s": {"pool": "p"}},
            {"s": {"application": None}},
        ),
        ({"c": [1, 2]}, {"c": [1]}, {"c": [1]}),
    ],
)
def test_status_patch(current: Any, desired: dict[str, Any], expected: Any) -> None:
    assert status.status_patch(current, desired) == expected


def test_a_policy_mixing_keyed_and_open_access_is_warned_about() -> None:
    keyed = policy(tenant_keys=("keys", "k"))
    assert status.mixed_tenant_access(keyed) is None  # keys: unknown callers refused
    assert status.mixed_tenant_access(policy()) is None  # no keys: open, nothing mixed
    doc = with_(policy_doc(tenant_keys=("keys", "k")), "spec.tenants.requireKnownTenant", False)
    mixed = RoutingPolicy.model_validate(doc)
    st = status.build_policy_status(mixed, PolicyContext(pool=None), now=NOW)
    (warn,) = [c for c in st["conditions"] if c["type"] == "MixedTenantAccess"]
    assert warn["status"] == "True" and warn["reason"] == "KeyedAndOpen"
    assert "requireKnownTenant is false" in warn["message"]
    # Fixed: the warning goes away.
    keyed_again = RoutingPolicy.model_validate({**policy_doc(tenant_keys=("keys", "k")),
                                                "status": st})  # fmt: skip
    st = status.build_policy_status(keyed_again, PolicyContext(pool=None), now=LATER)
    assert [c["type"] for c in st["conditions"]] == ["Ready"]
