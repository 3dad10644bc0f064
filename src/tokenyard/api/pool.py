"""The ServingPool resource: one shared Ray cluster and its accelerator classes."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, model_validator

from tokenyard.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    LABEL_VALUE,
    PREFIXED_NAME,
    ApiModel,
    Condition,
    Toleration,
    cel,
    list_map,
    require,
    require_unique,
)

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"

# CEL rules the API server enforces; the model validators below raise the same messages
# so `tokenyard render` rejects offline what `kubectl apply` would reject.
RULE_CPU_CLASS_MAX_WORKERS = (
    "self.gpusPerNode > 0 || has(self.maxWorkers)",
    "maxWorkers is required when gpusPerNode is 0 (a CPU-only class)",
)
RULE_ROUTER_MIN_MAX = (
    "self.router.minReplicas <= self.router.maxReplicas",
    "router.minReplicas must be <= router.maxReplicas",
)


class AcceleratorClass(ApiModel):
    """A class of identical worker nodes in the pool, such as A10G or H100 GPUs."""

    model_config = ApiModel.model_config | {"json_schema_extra": cel(RULE_CPU_CLASS_MAX_WORKERS)}

    name: str = Field(pattern=DNS_LABEL, max_length=40)
    """name of the class, referred to by ModelDeployment spec.inCluster.accelerator."""
    nodeSelector: dict[str, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]] = Field(
        default_factory=dict, max_length=32
    )
    """nodeSelector picks the Kubernetes nodes of this class (for example
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3): node label keys and values."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """tolerations let this class's Ray workers run on tainted GPU nodes."""
    resourceName: str = Field(default="nvidia.com/gpu", pattern=PREFIXED_NAME, max_length=253)
    """resourceName is the extended resource that counts this class's GPUs, with its
    domain (nvidia.com/gpu, amd.com/gpu)."""
    gpusPerNode: int = Field(default=1, ge=0, le=64)
    """gpusPerNode is how many GPUs one Ray worker pod of this class takes; 0 makes a
    CPU-only class (small models, tests)."""
    maxGPUs: int = Field(default=0, ge=0, le=100000)
    """maxGPUs is the most GPUs of this class the pool may use at once; models asking for
    more get the condition GPULimitExceeded."""
    maxWorkers: int | None = Field(default=None, ge=0, le=10000)
    """maxWorkers bounds the Ray worker pods of this class; defaults to maxGPUs /
    gpusPerNode (required for CPU-only classes)."""
    hourlyCostPerGPU: float = Field(default=0.0, ge=0, le=10000)
    """hourlyCostPerGPU in USD, used for spend, budgets and the cost per 1M tokens."""
    cpu: str = Field(default="8", pattern=QUANTITY)
    """cpu requested by each Ray worker pod of this class."""
    memory: str = Field(default="64Gi", pattern=QUANTITY)
    """memory requested by each Ray worker pod of this class."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(self.gpusPerNode > 0 or self.maxWorkers is not None, RULE_CPU_CLASS_MAX_WORKERS[1])
        return self


class HeadSpec(ApiModel):
    """Resources of the Ray head pod (CPU only; it also runs the router)."""

    cpu: str = Field(default="2", pattern=QUANTITY)
    """cpu requested by the Ray head pod."""
    memory: str = Field(default="8Gi", pattern=QUANTITY)
    """memory requested by the Ray head pod."""


class RouterStateSpec(ApiModel):
    """Where the router keeps its spend ledger, so budgets survive restarts."""

    persistent: bool = True
    """persistent keeps the ledger on a PersistentVolumeClaim (named POOL-router-state,
    owned by the pool) mounted on the Ray head; false keeps it on the head pod's own
    disk, lost whenever that pod is replaced."""
    storageClassName: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """storageClassName of the claim; the cluster's default class when unset."""
    size: str = Field(default="1Gi", pattern=QUANTITY)
    """size of the claim (the ledger needs a few MB)."""


class RouterSpec(ApiModel):
    """How the pool's tokenyard router is scaled and where it keeps state."""

    minReplicas: int = Field(default=1, ge=1, le=100)
    """minReplicas of the router deployment."""
    maxReplicas: int = Field(default=2, ge=1, le=100)
    """maxReplicas of the router deployment; Ray Serve scales the router out when its
    replicas carry more than 100 requests in flight each."""
    cpu: float = Field(default=1.0, ge=0, le=64)
    """cpu (Ray logical CPUs) reserved per router replica."""
    state: RouterStateSpec = Field(default_factory=RouterStateSpec)
    """state says where spend is persisted."""
    maxRequestBytes: int = Field(default=8388608, ge=1024, le=256 * 1024 * 1024)
    """maxRequestBytes is the largest request body (bytes) the router accepts; a larger
    one is answered 413 before it is read whole or parsed. The default (8 MiB) fits
    long prompts and a few inline images."""
    ingress: Literal["HAProxy", "Proxy"] = "HAProxy"
    """ingress is what serves the router's port (8000) on every Ray pod. HAProxy (the
    default): Ray Serve's HAProxy mode, a C load balancer that forwards each request
    straight to a router replica's own HTTP server (Serve's direct ingress). Proxy:
    Serve's Python proxy actor, which hands each request to a router replica over a Ray
    actor call; it adds more latency (docs/routing.md has the measured figures). Models
    are called through deployment handles either way."""


class ServingPoolSpec(ApiModel):
    """ServingPoolSpec describes a shared Ray cluster that serves models and routers."""

    model_config = ApiModel.model_config | {"json_schema_extra": cel(RULE_ROUTER_MIN_MAX)}

    accelerators: list[AcceleratorClass] = Field(
        default_factory=list, max_length=16, json_schema_extra=list_map("name")
    )
    """accelerators lists the classes of worker nodes the pool may use; each becomes a
    Ray worker group."""
    image: str | None = Field(default=None, pattern=r"^\S+$", max_length=512)
    """image is the container image of the Ray head and workers (with tokenyard and vLLM
    installed); defaults to the operator's setting."""
    rayVersion: str = Field(default="2.60.0", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    """rayVersion must match the Ray version inside the image."""
    head: HeadSpec = Field(default_factory=HeadSpec)
    """head sets the Ray head pod's resources."""
    router: RouterSpec = Field(default_factory=RouterSpec)
    """router sets how the pool's tokenyard router is scaled."""
    hourlyBudgetUSD: float | None = Field(default=None, ge=0, le=10000000)
    """hourlyBudgetUSD caps the pool's GPU spend per hour; the autoscaler keeps the sum
    of GPU-hours times price under it."""
    serviceAccountName: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    """serviceAccountName runs the Ray pods under this ServiceAccount."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(self.router.minReplicas <= self.router.maxReplicas, RULE_ROUTER_MIN_MAX[1])
        require_unique((a.name for a in self.accelerators), "accelerators[].name")
        return self


class AcceleratorUsage(ApiModel):
    """GPUs requested in one accelerator class."""

    name: str
    """name of the accelerator class."""
    requestedGPUs: int = 0
    """requestedGPUs is what the pool's models ask for at their current replicas."""
    maxGPUs: int = 0
    """maxGPUs is the class's limit."""


class MeasuredAccelerator(ApiModel):
    """What the GPUs of one accelerator class are doing, as Prometheus measures them."""

    name: str
    """name of the accelerator class."""
    gpusInUse: int = 0
    """gpusInUse counts the class's GPUs held by the pool's pods (one DCGM exporter series
    per GPU). Fewer than requestedGPUs while replicas start or their pods wait for a
    node; more while replicas that were scaled down drain."""
    gpuUtilizationPercent: int | None = None
    """gpuUtilizationPercent is the mean busy percentage of those GPUs
    (DCGM_FI_DEV_GPU_UTIL)."""


class PoolMeasurement(ApiModel):
    """What the autoscaler reads from Prometheus about the pool."""

    accelerators: list[MeasuredAccelerator] = Field(default_factory=list)
    """accelerators lists, per class, the GPUs in use and how busy they are."""
    gpus: str | None = None
    """gpus summarises GPUs in use and their utilisation per class (for kubectl get)."""
    spendUSDPerHour: float | None = None
    """spendUSDPerHour is what the pool's RoutingPolicies charge per hour now (the
    router's tokenyard_cost_usd_total over the autoscaler's rate window: tokens times each
    target's price, External providers included). Unset until a router reports spend."""
    lastChangeTime: str | None = None
    """lastChangeTime is when these values last changed (the autoscaler writes them only
    then)."""


class ServingPoolStatus(ApiModel):
    """ServingPoolStatus is the observed state of the pool."""

    observedGeneration: int | None = None
    """observedGeneration is the spec generation this status reflects."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    """conditions: Ready tells whether the pool's RayService exists and is healthy."""
    accelerators: list[AcceleratorUsage] = Field(default_factory=list)
    """accelerators shows GPUs requested against the limit, per class."""
    gpus: str | None = None
    """gpus summarises GPU use as used/limit per class (for kubectl get)."""
    hourlyCostUSD: float | None = None
    """hourlyCostUSD is the hourly GPU cost of the pool at current replicas."""
    models: list[str] = Field(default_factory=list)
    """models are the ModelDeployments that belong to the pool."""
    policies: list[str] = Field(default_factory=list)
    """policies are the RoutingPolicies served by the pool's router."""
    modelCount: int | None = None
    """modelCount is the number of member models."""
    rayService: str | None = None
    """rayService is the name of the KubeRay RayService the operator manages."""
    measured: PoolMeasurement | None = None
    """measured is what the autoscaler reads from Prometheus: GPUs in use and their
    utilisation per class, and the spend rate of the pool's endpoints. Written by the
    autoscaler, not the operator."""


class ServingPool(ApiModel):
    """ServingPool is a pool of shared GPUs: one Ray cluster serving many models."""

    KIND: ClassVar[str] = "ServingPool"
    PLURAL: ClassVar[str] = "servingpools"
    SHORT_NAMES: ClassVar[list[str]] = ["spool"]

    apiVersion: str = "tokenyard.dev/v1alpha1"
    kind: str = "ServingPool"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: ServingPoolSpec
    status: ServingPoolStatus | None = None
