"""Test-object builders for the operator's unit tests (in the style of Kueue's MakeX().Obj())."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool

NS = "team-a"
NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"


def pool_doc(
    name: str = "gpu-pool", *, uid: str | None = "uid-pool", **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if uid:
        meta["uid"] = uid
    base: dict[str, Any] = {
        "image": "registry.example/tokenyard-ray:1",
        "head": {"cpu": "2", "memory": "8Gi"},
        "router": {"minReplicas": 1, "maxReplicas": 2, "cpu": 1.0},
        "accelerators": [
            {
                "name": "l4",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "gpusPerNode": 1,
                "maxGPUs": 4,
                "hourlyCostPerGPU": 0.8,
                "cpu": "8",
                "memory": "32Gi",
            },
            {
                "name": "h100",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
                "gpusPerNode": 8,
                "maxGPUs": 8,
                "hourlyCostPerGPU": 4.0,
                "cpu": "64",
                "memory": "512Gi",
            },
        ],
    }
    base.update(spec)
    return {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "ServingPool",
        "metadata": meta,
        "spec": base,
    }


def pool(name: str = "gpu-pool", **kw: Any) -> ServingPool:
    return ServingPool.model_validate(pool_doc(name, **kw))


def model_doc(
    name: str,
    *,
    accelerator: str = "l4",
    source: str | None = None,
    pool: str | None = "gpu-pool",
    engine: dict[str, Any] | None = None,
    autoscaling: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "tier": "economy",
        "inCluster": {
            "source": source or f"hf://org/{name}",
            "accelerator": accelerator,
            "engine": engine or {"maxModelLen": 8192},
        },
        "autoscaling": autoscaling or {"minReplicas": 1, "maxReplicas": 2},
    }
    if pool is not None:
        s["pool"] = pool
    s.update(spec)
    doc: dict[str, Any] = {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": s,
    }
    if status is not None:
        doc["status"] = status
    return doc


def model(name: str, **kw: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(model_doc(name, **kw))


def external_doc(
    name: str = "provider",
    *,
    pool: str | None = "gpu-pool",
    secret: tuple[str, str] | None = ("provider-key", "apiKey"),
) -> dict[str, Any]:
    ext: dict[str, Any] = {
        "baseURL": "https://api.example.com/v1",
        "providerModel": "example-large",
        "price": {"inputPer1M": 2.0, "outputPer1M": 8.0},
    }
    if secret is not None:
        ext["apiKeySecretRef"] = {"name": secret[0], "key": secret[1]}
    spec: dict[str, Any] = {"tier": "frontier", "quality": 0.9, "external": ext}
    if pool is not None:
        spec["pool"] = pool
    return {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": spec,
    }


def external(name: str = "provider", **kw: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(external_doc(name, **kw))


def policy_doc(
    name: str = "chat",
    targets: tuple[str, ...] = ("economy", "frontier", "provider"),
    *,
    pool: str = "gpu-pool",
    tenant_keys: tuple[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"pool": pool, "targets": [{"model": t} for t in targets]}
    if tenant_keys is not None:
        spec["tenants"] = {"apiKeysSecretRef": {"name": tenant_keys[0], "key": tenant_keys[1]}}
    doc: dict[str, Any] = {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name, "namespace": NS, "generation": 3},
        "spec": spec,
    }
    if status is not None:
        doc["status"] = status
    return doc


def policy(name: str = "chat", *args: Any, **kw: Any) -> RoutingPolicy:
    return RoutingPolicy.model_validate(policy_doc(name, *args, **kw))


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted ``path`` set to ``value``."""
    out = copy.deepcopy(doc)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def kuberay_status(rs: dict[str, Any], running: bool = True) -> dict[str, Any]:
    """What KubeRay would write once Ray Serve runs every application of ``rs``."""
    state = "RUNNING" if running else "DEPLOYING"
    return {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if running else "False",
                    "reason": "NonZeroServeEndpoints" if running else "Initializing",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "serviceStatus": "Running" if running else "",
            "activeServiceStatus": {
                "applicationStatuses": {
                    a: {"status": state, "serveDeploymentStatuses": {}} for a in _apps(rs)
                }
            },
        }
    }


def _apps(rs: dict[str, Any]) -> list[str]:
    return [a["name"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]]
