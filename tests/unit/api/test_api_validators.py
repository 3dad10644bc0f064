"""Table tests of the pydantic models: bounds, enums, patterns, defaults and helpers."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tokenyard.api import (
    AcceleratorClass,
    AutoscalingSpec,
    Budget,
    EngineSpec,
    ExternalSpec,
    InClusterSpec,
    ModelDeploymentSpec,
    RateLimit,
    RoutingPolicySpec,
    SecretKeyRef,
    ServingPoolSpec,
    Target,
)
from tokenyard.api.policy import EgressSpec, FallbackSpec, Range, TenantSpec

PRICE = {"inputPer1M": 1, "outputPer1M": 2}

# (model, input, valid?)
CASES: list[tuple[type[BaseModel], dict[str, Any], bool]] = [
    (AcceleratorClass, {"name": "l4"}, True),
    (AcceleratorClass, {"name": "L4"}, False),
    (AcceleratorClass, {"name": "a" * 40}, True),
    (AcceleratorClass, {"name": "a" * 41}, False),
    (AcceleratorClass, {"name": "-l4"}, False),
    (AcceleratorClass, {"name": "l4", "gpusPerNode": 65}, False),
    (AcceleratorClass, {"name": "l4", "gpusPerNode": -1}, False),
    (AcceleratorClass, {"name": "l4", "hourlyCostPerGPU": 10001}, False),
    (AcceleratorClass, {"name": "l4", "memory": "64Gi", "cpu": "500m"}, True),
    (AcceleratorClass, {"name": "l4", "memory": "64 GB"}, False),
    (AcceleratorClass, {"name": "l4", "gpus": 1}, False),
    (ServingPoolSpec, {"rayVersion": "2.60"}, False),
    (ServingPoolSpec, {"hourlyBudgetUSD": -1}, False),
    (ServingPoolSpec, {"serviceAccountName": "ray_workers"}, False),
    (ServingPoolSpec, {"router": {"minReplicas": 0}}, False),
    (ServingPoolSpec, {"accelerators": [{"name": f"c{i}"} for i in range(17)]}, False),
    (EngineSpec, {"dtype": "int8"}, False),
    (EngineSpec, {"quantization": "fp8"}, True),
    (EngineSpec, {"quantization": "int4"}, False),
    (EngineSpec, {"gpuMemoryUtilization": 0}, False),
    (EngineSpec, {"gpuMemoryUtilization": 1}, True),
    (EngineSpec, {"maxModelLen": 15}, False),
    (EngineSpec, {"extraArgs": {"max_num_seqs": 128, "nested": {"a": [1]}}}, True),
    (InClusterSpec, {"source": "hf://org/name", "accelerator": "l4"}, True),
    (InClusterSpec, {"source": "pvc://claim/path", "accelerator": "l4"}, True),
    (InClusterSpec, {"source": "org/name", "accelerator": "l4"}, False),
    (InClusterSpec, {"source": "hf://", "accelerator": "l4"}, False),
    (
        InClusterSpec,
        {"source": "hf://a/b", "accelerator": "l4", "nominalTokensPerSecond": 0},
        False,
    ),
    (ExternalSpec, {"baseURL": "https://p.example/v1", "providerModel": "m", "price": PRICE}, True),
    (ExternalSpec, {"baseURL": "p.example/v1", "providerModel": "m", "price": PRICE}, False),
    (ExternalSpec, {"baseURL": "https://p/v1", "providerModel": "", "price": PRICE}, False),
    (ExternalSpec, {"baseURL": "https://p/v1", "providerModel": "m", "price": {}}, False),
    (SecretKeyRef, {"name": "key.v1", "key": "api-key"}, True),
    (SecretKeyRef, {"name": "Key", "key": "api-key"}, False),
    (SecretKeyRef, {"name": "key", "key": ""}, False),
    (AutoscalingSpec, {"mode": "HPA"}, False),
    (AutoscalingSpec, {"minReplicas": 0, "maxReplicas": 0}, False),
    (AutoscalingSpec, {"targetKVCacheUsage": 1.01}, False),
    (AutoscalingSpec, {"scaleToZeroAfterSeconds": 29}, False),
    (AutoscalingSpec, {"priority": -1000}, True),
    (AutoscalingSpec, {"priority": 1001}, False),
    (Target, {"model": "qwen-small", "weight": 100}, True),
    (Target, {"model": "qwen-small", "weight": -1}, False),
    (Range, {"min": 0.5, "max": 0.5}, True),
    (Range, {"max": 0.5}, True),
    (Budget, {"tenant": "a", "limitUSD": 5}, True),
    (Budget, {"tenant": "", "limitUSD": 5}, False),
    (Budget, {"tenant": "a", "limitUSD": 5, "window": "90m"}, True),
    (Budget, {"tenant": "a", "limitUSD": 5, "window": "24"}, False),
    (Budget, {"tenant": "a", "limitUSD": 5, "onExceeded": "Throttle"}, False),
    (RateLimit, {"tenant": "a", "requestsPerMinute": 0}, False),
    (RateLimit, {"tenant": "a", "tokensPerMinute": 10_000_000_000}, True),
    (TenantSpec, {"header": "X Tenant"}, False),
    (EgressSpec, {"allowedExternalDataClasses": ["Public"]}, False),
    (EgressSpec, {"detectors": ["ssn"]}, False),
    (FallbackSpec, {"maxAttempts": 0}, False),
    (FallbackSpec, {"maxAttempts": 10}, True),
]


@pytest.mark.parametrize(
    ("model", "data", "valid"),
    CASES,
    ids=[f"{m.__name__}-{i}" for i, (m, _, _) in enumerate(CASES)],
)
def test_field_constraints(model: type[BaseModel], data: dict[str, Any], valid: bool) -> None:
    if valid:
        model.model_validate(data)
    else:
        with pytest.raises(ValidationError):
            model.model_validate(data)


def test_defaults_of_a_minimal_model() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {"pool": "p", "inCluster": {"source": "hf://a/b", "accelerator": "l4"}}
    )
    assert spec.tier == "standard"
    assert spec.effective_quality() == 0.6
    assert spec.autoscaling.mode == "Tokenyard"
    assert (spec.autoscaling.minReplicas, spec.autoscaling.maxReplicas) == (1, 1)
    assert spec.inCluster is not None
    assert spec.inCluster.engine.dtype == "auto"
    assert spec.inCluster.engine.enablePrefixCaching is True
    assert spec.gpus_per_replica() == 1
    assert spec.desired_replicas() == 1
    assert spec.dataClasses is None


def test_defaults_of_a_minimal_policy() -> None:
    spec = RoutingPolicySpec.model_validate({"pool": "p", "targets": [{"model": "m"}]})
    assert spec.strategy == "CheapestSufficient"
    assert spec.fallback.retryOn == ["Error", "Timeout", "Unavailable", "Overloaded"]
    assert spec.egress.allowedExternalDataClasses == ["public"]
    assert spec.egress.defaultDataClass == "internal"
    assert spec.audit.enabled is True
    assert spec.audit.includePrompts is False
    assert spec.tenants.header == "X-Tenant"


def test_defaults_of_a_minimal_pool() -> None:
    spec = ServingPoolSpec.model_validate({"accelerators": [{"name": "l4"}]})
    accel = spec.accelerators[0]
    assert (accel.resourceName, accel.gpusPerNode, accel.maxGPUs) == ("nvidia.com/gpu", 1, 0)
    assert (spec.router.minReplicas, spec.router.maxReplicas) == (1, 2)
    assert spec.hourlyBudgetUSD is None


@pytest.mark.parametrize(
    ("engine", "gpus", "expected"),
    [
        ({}, None, 1),
        ({"tensorParallelSize": 4}, None, 4),
        ({"tensorParallelSize": 2, "pipelineParallelSize": 2}, None, 4),
        ({"tensorParallelSize": 4}, 0, 0),
    ],
)
def test_gpus_per_replica(engine: dict[str, Any], gpus: int | None, expected: int) -> None:
    in_cluster: dict[str, Any] = {"source": "hf://a/b", "accelerator": "l4", "engine": engine}
    if gpus is not None:
        in_cluster["gpusPerReplica"] = gpus
    spec = ModelDeploymentSpec.model_validate({"pool": "p", "inCluster": in_cluster})
    assert spec.gpus_per_replica() == expected


@pytest.mark.parametrize(
    ("tier", "quality", "expected"),
    [("economy", None, 0.3), ("frontier", None, 1.0), ("economy", 0.45, 0.45)],
)
def test_effective_quality(tier: str, quality: float | None, expected: float) -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "tier": tier,
            "quality": quality,
            "external": {"baseURL": "https://p/v1", "providerModel": "m", "price": PRICE},
        }
    )
    assert spec.effective_quality() == expected
    assert spec.gpus_per_replica() == 0


def test_dump_round_trips_without_unset_optionals() -> None:
    data = {"pool": "p", "targets": [{"model": "m"}]}
    dumped = RoutingPolicySpec.model_validate(data).dump()
    assert "endpoint" not in dumped
    assert RoutingPolicySpec.model_validate(dumped) == RoutingPolicySpec.model_validate(data)
