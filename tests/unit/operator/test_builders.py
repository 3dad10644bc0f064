"""The pure builders: a whole RayService, admission, replicas, secrets, worker groups, hashing."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
import yaml
from tests.unit.operator.factories import (
    NS,
    external,
    external_doc,
    model,
    model_doc,
    policy,
    policy_doc,
    pool,
    pool_doc,
    with_,
)

from tokenyard.api.model import PREFIX_CACHE_AFFINITY_ROUTER, ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator import builders
from tokenyard.operator.builders import Decision, render_pool
from tokenyard.settings import OperatorSettings, Settings

LABELS = {"app.kubernetes.io/managed-by": "tokenyard", "tokenyard.dev/pool": "gpu-pool"}
# What serves the Serve port (the pool's default spec.router.ingress: HAProxy), then the
# Secrets; the same list on head and workers.
INGRESS_ENV = [{"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"}]
SECRET_ENV = [
    {
        "name": "TOKENYARD_APIKEY_PROVIDER",
        "valueFrom": {"secretKeyRef": {"name": "provider-key", "key": "apiKey", "optional": True}},
    },
    {
        "name": "TOKENYARD_TENANT_KEYS_CHAT",
        "valueFrom": {"secretKeyRef": {"name": "chat-tenants", "key": "keys", "optional": True}},
    },
]
IMAGE = "registry.example/tokenyard-ray:1"


def frontier() -> ModelDeployment:
    return model(
        "frontier",
        accelerator="h100",
        source="pvc://weights/llama/70b",
        engine={"tensorParallelSize": 2, "maxModelLen": 32768},
        tier="frontier",
        autoscaling={"minReplicas": 1, "maxReplicas": 1},
    )


def llm_config(
    name: str, source: str, accel: str, *, gpus: int, lo: int, hi: int, engine: dict[str, Any]
) -> dict[str, Any]:
    return {
        "deployment_config": {
            "autoscaling_config": {
                "initial_replicas": lo,
                "max_replicas": hi,
                "min_replicas": lo,
                "target_ongoing_requests": 16.0,
            },
            # enablePrefixCaching is on by default, so replicaRouting Auto picks affinity.
            "request_router_config": {
                "request_router_class": "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
            },
        },
        "engine_kwargs": {
            "dtype": "auto",
            "enable_prefix_caching": True,
            "enforce_eager": False,
            "gpu_memory_utilization": 0.9,
            "pipeline_parallel_size": 1,
            **engine,
        },
        "log_engine_metrics": True,
        "model_loading_config": {"model_id": name, "model_source": source},
        "placement_group_config": {
            "bundles": [{"GPU": 1, f"tokenyard.dev/accel-{accel}": 0.001}] * gpus,
            "strategy": "STRICT_PACK",
        },
        "runtime_env": {"env_vars": {}},
    }


EXPECTED_SERVE: dict[str, Any] = {
    "http_options": {"host": "0.0.0.0", "port": 8000},
    "applications": [
        {
            "name": "model-economy",
            "route_prefix": "/tokenyard/models/economy",
            "import_path": "tokenyard.serving.model_app:build_app",
            "args": {
                "llm_config": llm_config(
                    "economy",
                    "org/economy",
                    "l4",
                    gpus=1,
                    lo=1,
                    hi=2,
                    engine={"max_model_len": 8192, "tensor_parallel_size": 1},
                )
            },
        },
        {
            "name": "model-frontier",
            "route_prefix": "/tokenyard/models/frontier",
            "import_path": "tokenyard.serving.model_app:build_app",
            "args": {
                "llm_config": llm_config(
                    "frontier",
                    "/mnt/models/weights/llama/70b",
                    "h100",
                    gpus=2,
                    lo=1,
                    hi=1,
                    engine={"max_model_len": 32768, "tensor_parallel_size": 2},
                )
            },
        },
        {
            "name": "tokenyard-router",
            "route_prefix": "/",
            "import_path": "tokenyard.serving.router_app:build_app",
            "args": {
                "namespace": NS,
                "pool": "gpu-pool",
                "ledgerPath": "/var/lib/tokenyard/ledger.json",
            },
            "deployments": [
                {
                    "name": "Router",
                    "autoscaling_config": {
                        "max_replicas": 2,
                        "min_replicas": 1,
                        "target_ongoing_requests": 100,
                    },
                    "ray_actor_options": {
                        "num_cpus": 1.0,
                        "resources": {"node:__internal_head__": 0.001},
                    },
                    "user_config": {
                        "pool": "gpu-pool",
                        "namespace": NS,
                        "models": [
                            {
                                "name": "economy",
                                "servedModelName": "economy",
                                "kind": "InCluster",
                                "quality": 0.3,
                                "inputPer1M": 0.222222,  # 0.8 $/h / (1000 tok/s * 3600) * 1e6
                                "outputPer1M": 0.222222,
                                "maxModelLen": 8192,
                                "app": "model-economy",
                                "deployment": "LLMServer",
                                "ready": True,
                                # Spill-over's capacity: what the model app asks Ray
                                # Serve for (initial_replicas), never observed status.
                                "replicas": 1,
                                "tokensPerSecond": 1000.0,
                                "ttftSLOSeconds": 2.0,
                            },
                            {
                                "name": "frontier",
                                "servedModelName": "frontier",
                                "kind": "InCluster",
                                "quality": 1.0,
                                "inputPer1M": 2.222222,  # 2 GPUs x 4 $/h
                                "outputPer1M": 2.222222,
                                "maxModelLen": 32768,
                                "app": "model-frontier",
                                "deployment": "LLMServer",
                                "ready": True,
                                "replicas": 1,
                                "tokensPerSecond": 1000.0,
                                "ttftSLOSeconds": 2.0,
                            },
                            {
                                "name": "provider",
                                "servedModelName": "provider",
                                "kind": "External",
                                "quality": 0.9,
                                "inputPer1M": 2.0,
                                "outputPer1M": 8.0,
                                "dataClasses": ["public"],
                                "external": {
                                    "baseURL": "https://api.example.com/v1",
                                    "providerModel": "example-large",
                                    "apiKeyEnv": "TOKENYARD_APIKEY_PROVIDER",
                                    "timeoutSeconds": 60.0,
                                },
                                "ready": True,
                            },
                        ],
                        "policies": [
                            {
                                "name": "chat",
                                "namespace": NS,
                                "endpoint": "chat",
                                "generation": 3,
                                "tenantKeysEnv": "TOKENYARD_TENANT_KEYS_CHAT",
                                "spec": {
                                    "pool": "gpu-pool",
                                    "targets": [
                                        {"model": "economy"},
                                        {"model": "frontier"},
                                        {"model": "provider"},
                                    ],
                                    "strategy": "CheapestSufficient",
                                    "rules": [],
                                    "classifier": {
                                        "type": "Heuristic",
                                        "allowHeaderOverride": False,
                                    },
                                    "fallback": {
                                        "retryOn": [
                                            "Error",
                                            "Timeout",
                                            "Unavailable",
                                            "Overloaded",
                                        ],
                                        "maxAttempts": 3,
                                        "perAttemptTimeoutSeconds": 60.0,
                                        "totalTimeoutSeconds": 120.0,
                                        "circuitBreaker": {
                                            "failureThreshold": 5,
                                            "cooldownSeconds": 30.0,
                                        },
                                    },
                                    "spillover": {
                                        "enabled": True,
                                        "threshold": 1.0,
                                        "downgradeWhenCapped": False,
                                    },
                                    "tenants": {
                                        "header": "X-Tenant",
                                        "apiKeysSecretRef": {"name": "chat-tenants", "key": "keys"},
                                        "defaultTenant": "default",
                                    },
                                    "budgets": [],
                                    "rateLimits": [],
                                    "egress": {
                                        "allowedExternalDataClasses": ["public"],
                                        "dataClassHeader": "X-Data-Class",
                                        "defaultDataClass": "internal",
                                        "detectors": [
                                            "email",
                                            "payment-card",
                                            "iban",
                                            "national-id",
                                            "private-key",
                                        ],
                                    },
                                    "audit": {"enabled": True, "includePrompts": False},
                                },
                            }
                        ],
                        "routerReplicas": 1,
                    },
                }
            ],
        },
    ],
}


def worker(
    name: str, *, gpus: int, max_replicas: int, cpu: str, memory: str, selector: str
) -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)}
    return {
        "groupName": name,
        "replicas": 0,
        "minReplicas": 0,
        "maxReplicas": max_replicas,
        "rayStartParams": {
            "num-gpus": str(gpus),
            "resources": '"{\\"tokenyard.dev/accel-' + name + '\\": 1}"',
        },
        "template": {
            "metadata": {"labels": LABELS},
            "spec": {
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": IMAGE,
                        "resources": {"limits": amounts, "requests": amounts},
                        "env": INGRESS_ENV + SECRET_ENV,
                    }
                ],
                "nodeSelector": {"nvidia.com/gpu.product": selector},
            },
        },
    }


def expected_ray_service(spec_hash: str) -> dict[str, Any]:
    h100 = worker("h100", gpus=8, max_replicas=1, cpu="64", memory="512Gi", selector="NVIDIA-H100")
    h100["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "pvc-weights", "mountPath": "/mnt/models/weights", "readOnly": True}
    ]
    h100["template"]["spec"]["volumes"] = [
        {"name": "pvc-weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
    ]
    l4 = worker("l4", gpus=1, max_replicas=4, cpu="8", memory="32Gi", selector="NVIDIA-L4")
    l4["template"]["spec"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    head_amounts = {"cpu": "2", "memory": "8Gi"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "gpu-pool",
            "namespace": NS,
            "labels": LABELS,
            "annotations": {"tokenyard.dev/spec-hash": spec_hash},
            "ownerReferences": [
                {
                    "apiVersion": "tokenyard.dev/v1alpha1",
                    "kind": "ServingPool",
                    "name": "gpu-pool",
                    "uid": "uid-pool",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "serveConfigV2": builders.serve_config_yaml(EXPECTED_SERVE),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "2"},
                    "template": {
                        "metadata": {"labels": LABELS},
                        "spec": {
                            "containers": [
                                {
                                    "name": "ray-head",
                                    "image": IMAGE,
                                    "ports": [
                                        {"name": "gcs-server", "containerPort": 6379},
                                        {"name": "dashboard", "containerPort": 8265},
                                        {"name": "client", "containerPort": 10001},
                                        {"name": "serve", "containerPort": 8000},
                                    ],
                                    "resources": {"limits": head_amounts, "requests": head_amounts},
                                    "env": INGRESS_ENV + SECRET_ENV,
                                    "volumeMounts": [
                                        {
                                            "name": "tokenyard-state",
                                            "mountPath": "/var/lib/tokenyard",
                                        }
                                    ],
                                }
                            ],
                            "volumes": [
                                {
                                    "name": "tokenyard-state",
                                    "persistentVolumeClaim": {"claimName": "gpu-pool-router-state"},
                                }
                            ],
                            "securityContext": {"fsGroup": 100},
                        },
                    },
                },
                "workerGroupSpecs": [h100, l4],
            },
        },
    }


def full_render() -> builders.PoolRender:
    return render_pool(
        pool(),
        [model("economy"), frontier(), external()],
        [policy(tenant_keys=("chat-tenants", "keys"))],
    )


def test_whole_ray_service() -> None:
    rs = full_render().ray_service
    assert yaml.safe_load(rs["spec"]["serveConfigV2"]) == EXPECTED_SERVE
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    expected = expected_ray_service(builders.spec_hash(rs["spec"], serve))
    assert rs == expected
    # The hash covers the serve config as data, not as YAML text.
    assert builders.spec_hash(rs["spec"], serve) != builders.spec_hash(rs["spec"])


def test_render_is_deterministic_whatever_the_input_order() -> None:
    a = full_render().ray_service
    b = render_pool(
        pool(),
        [external(), frontier(), model("economy")],
        [policy(tenant_keys=("chat-tenants", "keys"))],
    ).ray_service
    assert a == b


def test_spec_hash_changes_with_the_spec_only() -> None:
    base = full_render().ray_service
    changed = render_pool(
        pool(),
        [model("economy", engine={"maxModelLen": 4096}), frontier(), external()],
        [policy(tenant_keys=("chat-tenants", "keys"))],
    ).ray_service
    h = "tokenyard.dev/spec-hash"
    assert changed["metadata"]["annotations"][h] != base["metadata"]["annotations"][h]
    # A map's key order in the input never changes the hash.
    doc = pool_doc()
    doc["spec"]["accelerators"][0]["nodeSelector"] = {"b": "2", "a": "1"}
    one = render_pool(ServingPool.model_validate(doc), [model("economy")], []).ray_service
    doc["spec"]["accelerators"][0]["nodeSelector"] = {"a": "1", "b": "2"}
    two = render_pool(ServingPool.model_validate(doc), [model("economy")], []).ray_service
    assert one == two


def test_secret_values_are_never_inlined() -> None:
    secret_value = "sk-live-DO-NOT-LEAK"
    secrets = {"provider-key": {"apiKey"}, "chat-tenants": {"keys"}}
    rs = render_pool(
        pool(),
        [model("economy"), external()],
        [policy(tenant_keys=("chat-tenants", "keys"))],
        secrets=secrets,
    ).ray_service
    text = json.dumps(rs)
    assert secret_value not in text
    containers = [
        rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ] + [
        g["template"]["spec"]["containers"][0]
        for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ]
    for c in containers:
        for env in c["env"]:
            if env in INGRESS_ENV:  # Serve's ingress flag: not a secret
                continue
            assert "value" not in env
            assert set(env["valueFrom"]) == {"secretKeyRef"}


def test_missing_secret_marks_the_model_not_ready_but_keeps_the_env_var() -> None:
    r = render_pool(pool(), [model("economy"), external()], [], secrets={})
    router = yaml.safe_load(r.ray_service["spec"]["serveConfigV2"])["applications"][-1]
    provider = router["deployments"][0]["user_config"]["models"][1]
    assert provider["name"] == "provider" and provider["ready"] is False
    assert [(p.name, p.reason) for p in r.problems] == [("provider", "SecretNotFound")]
    env = r.ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    assert env[len(INGRESS_ENV)]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_admin_token_hash_is_rendered_into_the_router_and_the_token_never() -> None:
    token = "s3cret-admin-token-0123456789abcdef"
    settings = OperatorSettings(admin_token=token)
    for pools in ([model("economy"), external()], []):
        rs = render_pool(pool(), pools, [policy()], settings=settings).ray_service
        router = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][-1]
        assert router["args"]["adminTokenSha256"] == hashlib.sha256(token.encode()).hexdigest()
        assert token not in json.dumps(rs)
    # No token: the router args are as before (no key at all).
    rs = render_pool(pool(), [model("economy")], [policy()]).ray_service
    router = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][-1]
    assert "adminTokenSha256" not in router["args"]


def test_admin_token_setting_is_read_from_the_environment_and_never_repr() -> None:
    env = {"TOKENYARD_OPERATOR__ADMIN_TOKEN": "s3cret-admin-token-0123456789abcdef"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s = Settings()
    assert s.operator.admin_token is not None
    assert s.operator.admin_token.get_secret_value() == env["TOKENYARD_OPERATOR__ADMIN_TOKEN"]
    assert env["TOKENYARD_OPERATOR__ADMIN_TOKEN"] not in repr(s)
    with pytest.raises(ValueError):
        OperatorSettings(admin_token="short")


def test_only_accelerator_classes_in_use_get_worker_groups() -> None:
    rs = render_pool(pool(), [model("economy")], []).ray_service
    assert [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["l4"]
    rs = render_pool(pool(), [], []).ray_service
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] == []
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    assert [a["name"] for a in apps] == ["tokenyard-router"]


def test_external_targets_of_other_pools_join_the_catalogue() -> None:
    other = external("shared", pool=None, secret=None)
    r = render_pool(pool(), [model("economy"), other], [policy(targets=("economy", "shared"))])
    assert [builders.obj_name(m) for m in r.externals] == ["shared"]
    # Not targeted by this pool's policies and in no pool: not in the catalogue.
    r = render_pool(pool(), [model("economy"), other], [policy(targets=("economy",))])
    assert r.externals == []


def router_user_config(r: builders.PoolRender) -> dict[str, Any]:
    apps = yaml.safe_load(r.ray_service["spec"]["serveConfigV2"])["applications"]
    router = next(a for a in apps if a["name"] == "tokenyard-router")
    config: dict[str, Any] = router["deployments"][0]["user_config"]
    return config


def test_spillover_capacity_follows_the_spec_and_the_pool_router() -> None:
    md = model(
        "economy",
        replicas=2,
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "ttftSLOSeconds": 0.5},
        inCluster={"source": "hf://org/e", "accelerator": "l4", "nominalTokensPerSecond": 4000},
    )
    doc = pool_doc(router={"minReplicas": 3, "maxReplicas": 4, "cpu": 1.0})
    cfg = router_user_config(render_pool(ServingPool.model_validate(doc), [md, external()], []))
    economy, provider = cfg["models"]
    assert (economy["replicas"], economy["tokensPerSecond"], economy["ttftSLOSeconds"]) == (
        2,
        4000.0,
        0.5,
    )
    # An external model has no capacity: spill-over never sends to it.
    assert {"replicas", "tokensPerSecond", "ttftSLOSeconds"}.isdisjoint(provider)
    assert cfg["routerReplicas"] == 3


def test_observed_replicas_never_change_the_ray_service() -> None:
    """The router's replica count comes from the spec: a status update (which the
    operator itself writes from KubeRay's status) must not re-render the RayService,
    or every readiness change would roll a new serve config out."""
    base = render_pool(pool(), [model("economy", replicas=2)], []).ray_service
    for observed in ({"readyReplicas": 0}, {"readyReplicas": 1, "replicas": 2}):
        md = model("economy", replicas=2, status=observed)
        assert render_pool(pool(), [md], []).ray_service == base
    # The autoscaler's scale (spec.replicas) is a spec change and does reach the router.
    scaled = render_pool(pool(), [model("economy", replicas=1)], [])
    assert router_user_config(scaled)["models"][0]["replicas"] == 1
    assert scaled.ray_service != base


def test_members_of_other_pools_and_namespaces_are_ignored() -> None:
    elsewhere = model("elsewhere", pool="other-pool")
    other_ns = ModelDeployment.model_validate(
        with_(model_doc("far"), "metadata.namespace", "team-b")
    )
    r = render_pool(pool(), [model("economy"), elsewhere, other_ns], [])
    assert [builders.obj_name(m) for m in r.models] == ["economy"]


@pytest.mark.parametrize(
    ("acc", "expected"),
    [
        ({"name": "x", "gpusPerNode": 2, "maxGPUs": 7}, 3),
        ({"name": "x", "gpusPerNode": 2, "maxGPUs": 8, "maxWorkers": 1}, 1),
        ({"name": "x", "gpusPerNode": 0, "maxWorkers": 5}, 5),
        ({"name": "x", "gpusPerNode": 0}, 0),
    ],
)
def test_worker_max_replicas(acc: dict[str, Any], expected: int) -> None:
    from tokenyard.api.pool import AcceleratorClass

    # model_construct: the last case is one the API rejects, handled anyway.
    assert builders.worker_max_replicas(AcceleratorClass.model_construct(**acc)) == expected


def test_cpu_class_runs_models_without_gpus() -> None:
    doc = pool_doc(
        accelerators=[
            {"name": "cpu", "gpusPerNode": 0, "maxWorkers": 2, "cpu": "4", "memory": "16Gi"}
        ]
    )
    r = render_pool(ServingPool.model_validate(doc), [model("tiny", accelerator="cpu")], [])
    assert r.admission.decisions["tiny"] == Decision(True)
    group = r.ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["rayStartParams"] == {"resources": '"{\\"tokenyard.dev/accel-cpu\\": 1}"'}
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "4",
        "memory": "16Gi",
    }
    cfg = yaml.safe_load(r.ray_service["spec"]["serveConfigV2"])["applications"][0]["args"][
        "llm_config"
    ]
    assert cfg["accelerator_config"] == {"kind": "cpu"}


def test_default_image_and_service_account() -> None:
    doc = pool_doc(serviceAccountName="ray-pods")
    del doc["spec"]["image"]
    rs = builders.build_ray_service(
        ServingPool.model_validate(doc),
        [],
        [],
        settings=OperatorSettings(default_ray_image="ray:custom"),
    )
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "ray:custom"
    assert head["serviceAccountName"] == "ray-pods"


def test_no_owner_reference_without_a_uid() -> None:
    rs = render_pool(pool(uid=None), [], []).ray_service
    assert "ownerReferences" not in rs["metadata"]


@pytest.mark.parametrize(
    ("head_cpu", "router", "expected"),
    [
        ("2", {"maxReplicas": 2, "cpu": 1.0}, "2"),
        ("8", {"maxReplicas": 2, "cpu": 1.0}, "8"),
        ("500m", {"maxReplicas": 1, "cpu": 0.5}, "1"),
        ("2", {"maxReplicas": 4, "cpu": 1.0}, "4"),  # the router's replicas always fit
    ],
)
def test_head_num_cpus(head_cpu: str, router: dict[str, Any], expected: str) -> None:
    p = ServingPool.model_validate(
        pool_doc(head={"cpu": head_cpu, "memory": "1Gi"}, router={"minReplicas": 1, **router})
    )
    rs = render_pool(p, [], []).ray_service
    assert rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == expected


@pytest.mark.parametrize(
    ("claim", "expected"),
    [("weights", "pvc-weights"), ("my.claim", "pvc-my-claim"), ("x" * 80, "pvc-" + "x" * 50 + "-")],
)
def test_volume_names_are_dns_labels(claim: str, expected: str) -> None:
    name = builders.volume_name_for_claim(claim)
    assert len(name) <= 63 and name.startswith(expected[:54])


# --------------------------------------------------------------------------- replicas


@pytest.mark.parametrize(
    ("spec", "status", "expected"),
    [
        ({"minReplicas": 1, "maxReplicas": 4}, None, (True, 1, 4, 1)),
        (
            {"minReplicas": 1, "maxReplicas": 4},
            {"autoscaling": {"minReplicas": 2, "maxReplicas": 3}},
            (True, 2, 3, 2),
        ),
        ({"minReplicas": 0, "maxReplicas": 4}, None, (True, 0, 4, 0)),
        ({"mode": "Manual", "minReplicas": 1, "maxReplicas": 4}, None, (False, 1, 1, 1)),
        ({"mode": "External", "minReplicas": 1, "maxReplicas": 4}, None, (False, 1, 1, 1)),
    ],
)
def test_model_replicas(
    spec: dict[str, Any], status: dict[str, Any] | None, expected: tuple[Any, ...]
) -> None:
    md = model("m", autoscaling=spec, status=status)
    r = builders.model_replicas(md)
    assert (r.autoscale, r.min, r.max, r.initial) == expected


def test_replicas_from_spec() -> None:
    assert (
        builders.model_replicas(
            model("m", autoscaling={"minReplicas": 1, "maxReplicas": 4}, replicas=3)
        ).initial
        == 3
    )
    manual = model(
        "m", autoscaling={"mode": "Manual", "minReplicas": 1, "maxReplicas": 2}, replicas=7
    )
    r = builders.model_replicas(manual)
    assert (r.autoscale, r.initial) == (False, 7)
    cfg = builders.model_application(pool(), manual)["args"]["llm_config"]["deployment_config"]
    assert cfg == {
        "num_replicas": 7,
        "request_router_config": {"request_router_class": PREFIX_CACHE_AFFINITY_ROUTER},
    }


# --------------------------------------------------------------------------- admission


def _admit(*models: ModelDeployment, **pool_kw: Any) -> dict[str, tuple[bool, str]]:
    a = builders.admit(pool(**pool_kw), list(models))
    return {n: (d.admitted, d.reason) for n, d in a.decisions.items()}


def test_admission_by_priority_then_name() -> None:
    big = {"minReplicas": 3, "maxReplicas": 3}
    out = _admit(
        model("a-low", autoscaling={**big, "priority": 0}),
        model("b-high", autoscaling={**big, "priority": 5}),
        model("c-small", autoscaling={"minReplicas": 1, "maxReplicas": 1, "priority": -1}),
    )
    # l4 maxGPUs 4: b-high (3 GPUs) first, a-low (3 more) does not fit, c-small (1) still does.
    assert out == {
        "b-high": (True, ""),
        "a-low": (False, "GPULimitExceeded"),
        "c-small": (True, ""),
    }


def test_admission_ties_go_by_name() -> None:
    three = {"minReplicas": 3, "maxReplicas": 3}
    out = _admit(model("zeta", autoscaling=three), model("alpha", autoscaling=three))
    assert out == {"alpha": (True, ""), "zeta": (False, "GPULimitExceeded")}


def test_gpu_limit_message_names_the_fields() -> None:
    a = builders.admit(pool(), [model("huge", autoscaling={"minReplicas": 5, "maxReplicas": 5})])
    d = a.decisions["huge"]
    assert d == Decision(
        False,
        "GPULimitExceeded",
        "spec.autoscaling.minReplicas: 5 replicas x 1 GPUs = 5 GPUs do not fit ServingPool "
        "'gpu-pool' spec.accelerators[0].maxGPUs=4 (l4)",
    )


def test_replica_larger_than_a_node_is_excluded() -> None:
    md = model("wide", engine={"tensorParallelSize": 2})
    d = builders.admit(pool(), [md]).decisions["wide"]
    assert (d.admitted, d.reason) == (False, "GPULimitExceeded")
    assert d.message.startswith(
        "spec.inCluster.gpusPerReplica: one replica takes 2 GPUs but a l4 node has 1"
    )


def test_unknown_accelerator() -> None:
    d = builders.admit(pool(), [model("m", accelerator="a100")]).decisions["m"]
    assert d == Decision(
        False,
        "AcceleratorNotFound",
        "spec.inCluster.accelerator: ServingPool 'gpu-pool' has no accelerator class 'a100' "
        "(it has: l4, h100)",
    )


def test_scale_to_zero_models_reserve_nothing_but_request_what_they_run() -> None:
    a = builders.admit(
        pool(),
        [
            model("idle", autoscaling={"minReplicas": 0, "maxReplicas": 8}),
            model("busy", autoscaling={"minReplicas": 4, "maxReplicas": 4}),
            model(
                "manual",
                autoscaling={"mode": "Manual", "minReplicas": 0, "maxReplicas": 3},
                replicas=2,
            ),
        ],
    )
    assert {n: d.admitted for n, d in a.decisions.items()} == {
        "busy": True,
        "idle": True,
        "manual": False,
    }
    assert a.usage["l4"] == builders.ClassUsage("l4", 4, reserved_gpus=4, requested_gpus=4)
    assert a.usage["h100"] == builders.ClassUsage("h100", 8)


def test_autoscaler_bounds_count_for_admission() -> None:
    md = model(
        "m",
        autoscaling={"minReplicas": 1, "maxReplicas": 8},
        status={"autoscaling": {"minReplicas": 5}},
    )
    assert builders.admit(pool(), [md]).decisions["m"].reason == "GPULimitExceeded"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (
            model_doc("m", autoscaling={"minReplicas": 3, "maxReplicas": 1}),
            "spec.autoscaling.minReplicas",
        ),
        (model_doc("m", pool=None), "spec.pool"),
        (with_(model_doc("m"), "spec.external", external_doc()["spec"]["external"]), "spec"),
        (model_doc("m", replicas=9), "spec.replicas"),
    ],
)
def test_model_semantic_problems(doc: dict[str, Any], field: str) -> None:
    problems = builders.model_semantic_problems(_lenient(doc))
    assert [p.field for p in problems] == [field]


def test_extra_args_that_a_field_sets_are_an_invalid_spec() -> None:
    # CEL cannot see the keys of a free-form object, so the operator (and render) say
    # which field to use instead; other vLLM arguments pass through as they are.
    doc = model_doc("m", engine={"extraArgs": {
        "max_num_seqs": 128, "tensor_parallel_size": 4, "data_parallel_size": 2,
        "lora_modules": [], "model": "other/weights"}})  # fmt: skip
    problems = {p.field: p.message for p in builders.model_semantic_problems(_lenient(doc))}
    assert problems == {
        "spec.inCluster.engine.extraArgs.data_parallel_size":
            "not supported: each replica runs one engine; scale with replicas instead",
        "spec.inCluster.engine.extraArgs.lora_modules":
            "set by spec.inCluster.loraAdapters; use it",
        "spec.inCluster.engine.extraArgs.model": "set by spec.inCluster.source; use it",
        "spec.inCluster.engine.extraArgs.tensor_parallel_size":
            "set by spec.inCluster.engine.tensorParallelSize; use it",
    }  # fmt: skip
    fine = model_doc("m", engine={"extraArgs": {"max_num_seqs": 128}})
    assert builders.model_semantic_problems(_lenient(fine)) == []
    # Every argument engine_kwargs sets from a field is one extraArgs may not set.
    from tokenyard.api.model import ModelDeployment
    from tokenyard.contract import ENGINE_ARGS_SET_BY_FIELDS, engine_kwargs

    md = ModelDeployment.model_validate(model_doc("m", engine={"maxModelLen": 4096,
                                                               "quantization": "fp8"}))  # fmt: skip
    assert set(engine_kwargs(md.spec)) <= set(ENGINE_ARGS_SET_BY_FIELDS)


def _lenient(doc: dict[str, Any]) -> Any:
    """The spec without pydantic's own copies of the CEL rules (as an older API would be)."""
    from tokenyard.api.model import (
        AutoscalingSpec,
        ExternalSpec,
        InClusterSpec,
        ModelDeploymentSpec,
    )

    s = dict(doc["spec"])
    fields: dict[str, Any] = {
        "pool": s.get("pool"),
        "tier": s.get("tier", "standard"),
        "replicas": s.get("replicas"),
        "autoscaling": AutoscalingSpec.model_construct(
            **{**AutoscalingSpec().model_dump(), **s.get("autoscaling", {})}
        ),
        "inCluster": InClusterSpec.model_validate(s["inCluster"]) if "inCluster" in s else None,
        "external": ExternalSpec.model_validate(s["external"]) if "external" in s else None,
    }
    return ModelDeploymentSpec.model_construct(**fields)


def test_orphan_problems() -> None:
    problems = builders.orphan_problems(
        [pool()],
        [model("ok"), model("lost", pool="nope"), external("free", pool=None)],
        [policy(pool="nope")],
    )
    assert [(p.kind, p.name, p.reason) for p in problems] == [
        ("ModelDeployment", "lost", "PoolNotFound"),
        ("RoutingPolicy", "chat", "PoolNotFound"),
    ]
    assert problems[0].message == "spec.pool: ServingPool 'nope' not found in namespace 'team-a'"


def test_state_claim_is_owned_by_the_pool_and_mounted_on_the_head() -> None:
    r = full_render()
    assert r.state_claim == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "gpu-pool-router-state",
            "namespace": NS,
            "labels": LABELS,
            **(
                {"ownerReferences": r.ray_service["metadata"]["ownerReferences"]}
                if "ownerReferences" in r.ray_service["metadata"]
                else {}
            ),
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def test_router_replicas_run_on_the_head_where_the_state_volume_is() -> None:
    """Workers advertise CPUs too: without the head's resource Ray may place a router
    replica on a GPU worker, whose ledger, audit and learning journals would then go to
    that container's own disk instead of the state volume mounted on the head."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    rs = full_render().ray_service
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    (router,) = [a for a in apps if a["name"] == "tokenyard-router"]
    opts = router["deployments"][0]["ray_actor_options"]
    assert opts["resources"] == {HEAD_NODE_RESOURCE_NAME: 0.001}
    assert opts["num_cpus"] == 1.0
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["volumeMounts"] == [
        {"name": "tokenyard-state", "mountPath": "/var/lib/tokenyard"}
    ]
    # Model replicas are placed by their accelerator bundles, never pinned to the head.
    for app in apps:
        if app["name"] != "tokenyard-router":
            assert HEAD_NODE_RESOURCE_NAME not in json.dumps(app)


def test_state_not_persistent_uses_the_pods_disk_and_no_claim() -> None:
    p = pool()
    p.spec.router.state.persistent = False
    p.spec.router.state.storageClassName = "fast"
    r = render_pool(p, [model("economy")], [])
    assert r.state_claim is None
    head = r.ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"] == [{"name": "tokenyard-state", "emptyDir": {}}]


def test_state_claim_storage_class_and_size() -> None:
    p = pool()
    p.spec.router.state.storageClassName = "fast-ssd"
    p.spec.router.state.size = "5Gi"
    claim = render_pool(p, [model("economy")], []).state_claim
    assert claim is not None
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"] == {"requests": {"storage": "5Gi"}}


def test_the_capped_condition_reaches_the_router_only_for_downgrading_pools() -> None:
    capped = {"conditions": [{"type": "Capped", "status": "True", "reason": "GPUCapped"}]}
    plain = policy(targets=("economy",))
    downgrading = RoutingPolicy.model_validate(
        with_(policy_doc(targets=("economy",)), "spec.spillover", {"downgradeWhenCapped": True})
    )
    # Without a downgrading policy the status is not read: the RayService stays put.
    base = render_pool(pool(), [model("economy")], [plain]).ray_service
    assert render_pool(pool(), [model("economy", status=capped)], [plain]).ray_service == base
    r = render_pool(pool(), [model("economy", status=capped)], [downgrading])
    assert router_user_config(r)["models"][0]["capped"] == "GPUCapped"
    released = render_pool(pool(), [model("economy")], [downgrading])
    assert "capped" not in router_user_config(released)["models"][0]
    # Spill-over off: no downgrade either, so nothing to follow.
    off = RoutingPolicy.model_validate(
        with_(
            policy_doc(targets=("economy",)),
            "spec.spillover",
            {"enabled": False, "downgradeWhenCapped": True},
        )
    )
    r = render_pool(pool(), [model("economy", status=capped)], [off])
    assert "capped" not in router_user_config(r)["models"][0]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("nvidia.com/gpu.product", True),
        ("node-role.kubernetes.io/gpu", True),
        ("gpu", True),
        ("x/" + "a" * 63, True),
        ("x/" + "a" * 64, False),
        ("nvidia.com/gpu product", False),
        ("Nvidia.com/gpu", False),
        ("/gpu", False),
        ("-gpu", False),
        ("a" * 254 + "/gpu", False),
    ],
)
def test_node_selector_keys_are_label_keys(key: str, valid: bool) -> None:
    """The CRD checks the values (a pattern); a map's keys only the operator can check, as
    the API server checks them when KubeRay creates the worker pods, at the first
    scale-up of the class."""
    doc = pool_doc()
    doc["spec"]["accelerators"][0]["nodeSelector"] = {key: "NVIDIA-L4"}
    problems = builders.pool_semantic_problems(ServingPool.model_validate(doc))
    assert (problems == []) is valid, problems
    if not valid:
        (p,) = problems
        assert p.field == "spec.accelerators[0].nodeSelector" and repr(key) in p.message


def test_a_model_whose_claim_is_missing_is_left_out_and_not_mounted() -> None:
    """Every worker of a class mounts every admitted model's claims: one missing claim
    would leave them all Pending, so the model that names it is left out instead."""
    models = [
        model("a-weights", source="pvc://weights/llama/8b"),
        model("b-typo", source="pvc://wieghts/llama/8b"),
        model("c-hub"),
    ]
    r = render_pool(pool(), models, [], claims={"weights"})
    d = r.admission.decisions
    assert d["a-weights"].admitted and d["c-hub"].admitted
    assert not d["b-typo"].admitted and d["b-typo"].reason == "ClaimNotFound"
    assert d["b-typo"].message.startswith(
        "spec.inCluster.source: PersistentVolumeClaim 'wieghts' not found in namespace"
    )
    (group,) = r.ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in group["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == ["weights"]
    assert "model-b-typo" not in r.ray_service["spec"]["serveConfigV2"]
    # Unknown (the claims could not be read, or tokenyard render offline): all assumed present.
    r = render_pool(pool(), models, [])
    assert all(x.admitted for x in r.admission.decisions.values())
    # A LoRA adapter's claim counts too, and its field is named.
    lora = model_doc("d-lora")
    lora["spec"]["inCluster"]["loraAdapters"] = [
        {"name": "sql", "source": "pvc://adapters/sql"},
    ]
    r = render_pool(pool(), [ModelDeployment.model_validate(lora)], [], claims=set())
    assert r.admission.decisions["d-lora"].message.startswith(
        "spec.inCluster.loraAdapters[0].source: PersistentVolumeClaim 'adapters' not found"
    )


def test_each_secret_gets_its_own_environment_variable() -> None:
    """'gpt.4o' and 'gpt-4o' once shared TOKENYARD_APIKEY_GPT_4O: one model would have
    called its provider with the other's key."""
    from tokenyard import contract

    names = ["gpt-4o", "gpt.4o", "gpt-4o-d", "a.b.c", "a-b.c", "a.b-c", "a-b-c"]
    envs = [contract.api_key_env(n) for n in names]
    assert len(set(envs)) == len(names), envs
    assert contract.api_key_env("gpt-4o") == "TOKENYARD_APIKEY_GPT_4O"  # dot-free: unchanged
    assert re.fullmatch(r"TOKENYARD_APIKEY_GPT_4O_d[0-9a-f]{8}", contract.api_key_env("gpt.4o"))
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", e) for e in envs)  # shell-safe
    docs = [external_doc(n) for n in ("gpt-4o", "gpt.4o")]
    env = builders.secret_env_vars([ModelDeployment.model_validate(d) for d in docs], [])
    assert len({e["name"] for e in env}) == 2, env
