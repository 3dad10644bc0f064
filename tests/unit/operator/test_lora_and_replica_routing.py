"""Issue 14: replica routing (prefix-cache affinity) and LoRA adapters as the operator
renders them (model app, router catalogue) and reports them (model and policy status)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from tests.unit.operator.factories import NOW, model, policy
from tests.unit.operator.test_status import P, cond, observed

from tokenyard import contract
from tokenyard.api.model import (
    LEAST_QUEUED_TOKENS_ROUTER,
    PREFIX_CACHE_AFFINITY_ROUTER,
    ModelDeployment,
)
from tokenyard.operator import builders, status
from tokenyard.operator.builders import Decision
from tokenyard.operator.status import ModelContext, PolicyContext

AFFINITY = {"request_router_class": PREFIX_CACHE_AFFINITY_ROUTER}
# The test model's nominalTokensPerSecond drains the router's estimate.
LEAST_TOKENS = {
    "request_router_class": LEAST_QUEUED_TOKENS_ROUTER,
    "request_router_kwargs": {"prefill_tokens_per_s": 1000.0},
}
ADAPTERS = [
    {"name": "sql", "source": "file:///adapters/sql", "quality": 0.7},
    {
        "name": "support",
        "source": "pvc://adapters/support",
        "price": {"inputPer1M": 0.4, "outputPer1M": 0.8},
    },
    {"name": "legal", "source": "hf://org/legal-lora"},
]


def _deployment_config(md: ModelDeployment) -> dict[str, Any]:
    cfg: dict[str, Any] = builders.model_application(P, md)["args"]["llm_config"]
    return dict(cfg["deployment_config"])


def _in_cluster(md_name: str, **in_cluster: Any) -> ModelDeployment:
    md = model(md_name)
    doc = md.dump()
    doc["spec"]["inCluster"].update(in_cluster)
    return ModelDeployment.model_validate(doc)


@pytest.mark.parametrize(
    ("routing", "prefix_caching", "expected"),
    [
        ("Auto", True, AFFINITY),
        ("Auto", False, None),
        ("PrefixCacheAffinity", True, AFFINITY),
        ("PowerOfTwoChoices", True, None),
        ("PowerOfTwoChoices", False, None),
        ("LeastQueuedTokens", True, LEAST_TOKENS),
        ("LeastQueuedTokens", False, LEAST_TOKENS),
    ],
)
def test_replica_routing_renders_the_request_router(
    routing: str, prefix_caching: bool, expected: dict[str, str] | None
) -> None:
    md = model("economy", engine={"enablePrefixCaching": prefix_caching})
    doc = md.dump()
    doc["spec"]["inCluster"]["replicaRouting"] = routing
    cfg = _deployment_config(ModelDeployment.model_validate(doc))
    assert cfg.get("request_router_config") == expected


def test_the_default_model_gets_prefix_cache_affinity() -> None:
    cfg = _deployment_config(model("economy"))
    assert cfg["request_router_config"] == AFFINITY
    # Autoscaling is untouched by it.
    assert cfg["autoscaling_config"]["max_replicas"] == 2


def test_the_imbalance_limit_reaches_the_router_kwargs() -> None:
    md = _in_cluster("economy", prefixAffinityMaxImbalance=8)
    assert _deployment_config(md)["request_router_config"] == {
        **AFFINITY,
        "request_router_kwargs": {"imbalanced_threshold": 8},
    }
    with pytest.raises(ValidationError, match="prefixAffinityMaxImbalance needs"):
        _in_cluster("economy", replicaRouting="PowerOfTwoChoices", prefixAffinityMaxImbalance=8)
    with pytest.raises(ValidationError, match="prefixAffinityMaxImbalance needs"):
        _in_cluster("economy", replicaRouting="LeastQueuedTokens", prefixAffinityMaxImbalance=8)


def test_affinity_without_prefix_caching_is_rejected() -> None:
    doc = model("economy", engine={"enablePrefixCaching": False}).dump()
    doc["spec"]["inCluster"]["replicaRouting"] = "PrefixCacheAffinity"
    with pytest.raises(ValidationError, match=r"needs engine\.enablePrefixCaching"):
        ModelDeployment.model_validate(doc)


def test_lora_adapters_become_vllm_multi_lora_arguments() -> None:
    md = _in_cluster("economy", loraAdapters=ADAPTERS, maxLoraRank=8)
    kw = builders.model_application(P, md)["args"]["llm_config"]["engine_kwargs"]
    assert kw["enable_lora"] is True
    assert kw["max_lora_rank"] == 8
    assert kw["max_loras"] == 3  # every adapter in one batch unless maxLoras says less
    assert kw["lora_modules"] == [
        {"name": "sql", "path": "/adapters/sql"},
        {"name": "support", "path": f"{contract.PVC_MOUNT_ROOT}/adapters/support"},
        {"name": "legal", "path": "org/legal-lora"},
    ]


def test_a_model_without_adapters_renders_no_lora_arguments() -> None:
    kw = builders.model_application(P, model("economy"))["args"]["llm_config"]["engine_kwargs"]
    assert not {"enable_lora", "max_lora_rank", "max_loras", "lora_modules"} & set(kw)


def test_max_loras_caps_the_batch() -> None:
    md = _in_cluster("economy", loraAdapters=ADAPTERS, maxLoras=1)
    kw = builders.model_application(P, md)["args"]["llm_config"]["engine_kwargs"]
    assert kw["max_loras"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"loraAdapters": [ADAPTERS[0], ADAPTERS[0]]}, "duplicate value 'sql'"),
        ({"maxLoras": 2}, "maxLoras is only meaningful with loraAdapters"),
        ({"loraAdapters": [{"name": "x", "source": "s3://b/x"}]}, "should match pattern"),
        ({"loraAdapters": [{"name": "X_1", "source": "file:///x"}]}, "should match pattern"),
        ({"maxLoraRank": 12}, "Input should be"),
    ],
)
def test_invalid_adapters_are_rejected(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _in_cluster("economy", **extra)


def test_adapters_are_catalogue_entries_of_their_own() -> None:
    md = _in_cluster("economy", loraAdapters=ADAPTERS)
    cfg = builders.router_config(P, [md], [], [policy(targets=("economy:sql",))], None)
    by_name = {e.name: e for e in cfg.models}
    base = by_name["economy"]
    assert set(by_name) == {"economy", "economy:sql", "economy:support", "economy:legal"}
    sql = by_name["economy:sql"]
    # Served by the base model's app and deployment, called by the adapter's name.
    assert (sql.app, sql.deployment, sql.servedModelName) == (base.app, base.deployment, "sql")
    assert (sql.adapterOf, sql.kind, sql.replicas) == ("economy", "InCluster", base.replicas)
    assert sql.quality == 0.7 and sql.inputPer1M == base.inputPer1M
    support = by_name["economy:support"]
    assert (support.quality, support.inputPer1M, support.outputPer1M) == (0.3, 0.4, 0.8)


def test_an_adapter_is_callable_by_its_own_name() -> None:
    md = _in_cluster("economy", loraAdapters=ADAPTERS)
    pol = policy(targets=("economy", "economy:sql"))
    cfg = builders.router_config(P, [md], [], [pol], None)
    direct = contract.direct_policy(cfg, "sql")
    assert direct is not None
    assert [t.model for t in direct.policy_spec().targets] == ["economy:sql"]
    # Under the policy that lists it as a target.
    assert direct.name == "chat"


def test_policy_targets_may_name_adapters() -> None:
    pol = policy(targets=("economy:sql",))
    assert pol.spec.targets[0].model == "economy:sql"
    assert contract.split_target("economy:sql") == ("economy", "sql")
    assert contract.split_target("economy") == ("economy", None)


def test_model_status_reports_each_adapter() -> None:
    md = _in_cluster("economy", loraAdapters=ADAPTERS[:2])
    ctx = ModelContext(
        pool=P, decision=Decision(True), observed=observed({"model-economy": "RUNNING"})
    )
    st = status.build_model_status(md, ctx, now=NOW)
    assert st["adapters"] == [
        {
            "name": "sql",
            "target": "economy:sql",
            "source": "file:///adapters/sql",
            "ready": True,
            "quality": 0.7,
            "costPer1MTokens": st["costPer1MTokens"],
        },
        {
            "name": "support",
            "target": "economy:support",
            "source": "pvc://adapters/support",
            "ready": True,
            "quality": 0.3,
            "costPer1MTokens": contract.blended_price(0.4, 0.8),
        },
    ]
    waiting = ModelContext(pool=P, decision=Decision(True))
    deploying = status.build_model_status(md, waiting, now=NOW)["adapters"]
    assert all(not a["ready"] and a["message"].startswith("Deploying") for a in deploying)


def test_model_status_clears_adapters_that_were_removed() -> None:
    md = model("economy", status={"adapters": [{"name": "sql", "target": "economy:sql"}]})
    st = status.build_model_status(md, ModelContext(pool=P, decision=Decision(True)), now=NOW)
    assert st["adapters"] is None
    assert "adapters" not in status.build_model_status(
        model("economy"), ModelContext(pool=P), now=NOW
    )


def test_policy_status_resolves_adapter_targets() -> None:
    md = _in_cluster("economy", loraAdapters=ADAPTERS)
    ctx = PolicyContext(
        pool=P,
        models={"economy": md},
        admission=builders.admit(P, [md]),
        observed=observed({"model-economy": "RUNNING"}),
    )
    st = status.build_policy_status(policy(targets=("economy:support",)), ctx, now=NOW)
    assert st["conditions"] == [cond("Ready", "True", "TargetsReady", NOW, "1/1 targets ready", 3)]
    (t,) = st["targets"]
    assert t["model"] == "economy:support" and t["ready"] is True
    assert t["costPer1MTokens"] == contract.blended_price(0.4, 0.8)

    missing = status.build_policy_status(policy(targets=("economy:nope",)), ctx, now=NOW)
    (c,) = missing["conditions"]
    assert (c["status"], c["reason"]) == ("False", "TargetNotFound")
    assert "ModelDeployment 'economy' has no LoRA adapter 'nope'" in c["message"]
    assert "has no LoRA adapter 'nope'" in missing["targets"][0]["message"]


def test_adapter_claims_are_mounted_in_the_workers() -> None:
    md = _in_cluster(
        "economy",
        loraAdapters=[
            {"name": "sql", "source": "pvc://adapters/sql"},
            {"name": "legal", "source": "hf://org/legal-lora"},
        ],
    )
    acc = next(a for a in P.spec.accelerators if a.name == "l4")
    group = builders.build_worker_group(P, acc, "img", [], [md])
    pod = group["template"]["spec"]
    assert pod["volumes"] == [
        {
            "name": "pvc-adapters",
            "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True},
        }
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "pvc-adapters", "mountPath": "/mnt/models/adapters", "readOnly": True}
    ]
