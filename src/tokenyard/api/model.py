"""The ModelDeployment resource: one model, served in a pool by vLLM or by a provider."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from tokenyard.api.common import (
    DNS_LABEL,
    PRESERVE_UNKNOWN,
    ApiModel,
    Condition,
    DataClass,
    SecretKeyRef,
    cel,
    list_map,
    require,
    require_unique,
)

Tier = Literal["economy", "standard", "frontier"]
TIER_QUALITY: dict[str, float] = {"economy": 0.3, "standard": 0.6, "frontier": 1.0}

SOURCE_URI = r"^(hf|s3|gs|pvc|file)://.+$"
# LoRA adapters load from a path the engine reads (file://, a pvc:// mount) or by
# Hugging Face repository id (vLLM fetches it); s3:// and gs:// are not supported yet.
ADAPTER_SOURCE_URI = r"^(hf|pvc|file)://.+$"

# CEL rules the API server enforces; the model validators below raise the same messages
# so `tokenyard render` rejects offline what `kubectl apply` would reject.
RULE_AUTOSCALING_MIN_MAX = (
    "self.minReplicas <= self.maxReplicas",
    "minReplicas must be <= maxReplicas",
)
RULE_EXACTLY_ONE_BACKEND = (
    "has(self.inCluster) != has(self.external)",
    "exactly one of inCluster or external must be set",
)
RULE_POOL_FOR_IN_CLUSTER = (
    "!has(self.inCluster) || has(self.pool)",
    "pool is required for inCluster models",
)
RULE_AFFINITY_NEEDS_PREFIX_CACHING = (
    "self.replicaRouting != 'PrefixCacheAffinity' || self.engine.enablePrefixCaching",
    "replicaRouting PrefixCacheAffinity needs engine.enablePrefixCaching",
)
RULE_IMBALANCE_NEEDS_AFFINITY = (
    "!has(self.prefixAffinityMaxImbalance) || self.replicaRouting == 'PrefixCacheAffinity' "
    "|| (self.replicaRouting == 'Auto' && self.engine.enablePrefixCaching)",
    "prefixAffinityMaxImbalance needs replicaRouting PrefixCacheAffinity (or Auto with "
    "engine.enablePrefixCaching)",
)
RULE_MAX_LORAS_WITH_ADAPTERS = (
    "!has(self.maxLoras) || (has(self.loraAdapters) && size(self.loraAdapters) > 0)",
    "maxLoras is only meaningful with loraAdapters",
)
RULE_GPUS_FOR_PARALLELISM = (
    "!has(self.gpusPerReplica) || self.gpusPerReplica == 0 || "
    "self.gpusPerReplica >= self.engine.tensorParallelSize * self.engine.pipelineParallelSize",
    "gpusPerReplica must be at least engine.tensorParallelSize x "
    "engine.pipelineParallelSize (or 0 on a CPU-only class)",
)
RULE_REPLICAS_IN_BOUNDS = (
    "!has(self.replicas) || !has(self.inCluster) || "
    "(self.replicas >= self.autoscaling.minReplicas "
    "&& self.replicas <= self.autoscaling.maxReplicas) || "
    "self.autoscaling.mode != 'Tokenyard'",
    "replicas must lie within autoscaling.minReplicas and maxReplicas",
)


class EngineSpec(ApiModel):
    """vLLM engine settings."""

    tensorParallelSize: int = Field(default=1, ge=1, le=64)
    """tensorParallelSize splits each layer over this many GPUs."""
    pipelineParallelSize: int = Field(default=1, ge=1, le=64)
    """pipelineParallelSize splits the layers over this many GPUs."""
    maxModelLen: int | None = Field(default=None, ge=16, le=10_000_000)
    """maxModelLen is the longest context (prompt + output tokens) the engine accepts;
    the router never sends a longer request here."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """dtype of weights and activations."""
    quantization: (
        Literal["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "gguf", "marlin"] | None
    ) = None
    """quantization method of the checkpoint, if any."""
    gpuMemoryUtilization: float = Field(default=0.9, gt=0, le=1)
    """gpuMemoryUtilization is the fraction of GPU memory vLLM may use (weights and KV cache)."""
    enablePrefixCaching: bool = True
    """enablePrefixCaching reuses the KV cache of shared prompt prefixes."""
    enforceEager: bool = False
    """enforceEager disables CUDA graphs (slower, starts faster, uses less memory)."""
    extraArgs: dict[str, Any] = Field(default_factory=dict, json_schema_extra=PRESERVE_UNKNOWN)
    """extraArgs are further vLLM engine arguments, by their Python names
    (for example max_num_seqs: 128). Arguments that a field sets (tensor_parallel_size,
    max_model_len, dtype, ...) and data_parallel_size make the spec invalid: the
    operator says so in the Ready condition, naming the field to use."""


class TokenPrice(ApiModel):
    """Price in USD per one million tokens."""

    inputPer1M: float = Field(ge=0, le=100000)
    """inputPer1M is the price of one million prompt tokens, in USD."""
    outputPer1M: float = Field(ge=0, le=100000)
    """outputPer1M is the price of one million generated tokens, in USD."""


ReplicaRouting = Literal["Auto", "PrefixCacheAffinity", "PowerOfTwoChoices", "LeastQueuedTokens"]
PREFIX_CACHE_AFFINITY_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
"""Ray Serve LLM's prefix-cache-affinity request router (replicaRouting PrefixCacheAffinity)."""
LEAST_QUEUED_TOKENS_ROUTER = "tokenyard.serving.replica_routing.LeastQueuedTokensRouter"
"""tokenyard's request router that balances queued prompt tokens (replicaRouting
LeastQueuedTokens)."""


class LoraAdapter(ApiModel):
    """A LoRA adapter served on the model's base weights."""

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """name of the adapter, unique in the model. Clients call the adapter by this name in
    the request's model field; RoutingPolicy targets name it MODEL:NAME (the
    ModelDeployment's name, a colon, this name). Keep it unique in the namespace: a name
    two models use is called on the first of them in the router's catalogue."""
    source: str = Field(pattern=ADAPTER_SOURCE_URI, max_length=1024)
    """source of the adapter's weights (adapter_config.json and adapter_model.safetensors):
    file:///local/path, pvc://claim/path (mounted in the Ray workers) or hf://org/name
    (fetched by vLLM from the Hugging Face Hub)."""
    quality: float | None = Field(default=None, ge=0, le=1)
    """quality in [0, 1] routing assumes for the adapter; defaults to the model's."""
    price: TokenPrice | None = None
    """price charged per 1M tokens through this adapter; defaults to the base model's
    effective cost."""


class InClusterSpec(ApiModel):
    """A model served inside the pool by vLLM on Ray Serve."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            RULE_AFFINITY_NEEDS_PREFIX_CACHING,
            RULE_IMBALANCE_NEEDS_AFFINITY,
            RULE_MAX_LORAS_WITH_ADAPTERS,
            RULE_GPUS_FOR_PARALLELISM,
        )
    }

    source: str = Field(pattern=SOURCE_URI, max_length=1024)
    """source of the weights: hf://org/name, s3://bucket/path, gs://bucket/path,
    pvc://claim/path or file:///local/path."""
    revision: str | None = Field(default=None, max_length=256)
    """revision (branch, tag or commit) of an hf:// source."""
    accelerator: str = Field(pattern=DNS_LABEL, max_length=40)
    """accelerator is the name of an accelerator class of the pool this model runs on."""
    gpusPerReplica: int | None = Field(default=None, ge=0, le=64)
    """gpusPerReplica is the GPUs one replica takes; defaults to tensorParallelSize x
    pipelineParallelSize (0 on a CPU-only class). When set, at least that product, or 0."""
    engine: EngineSpec = Field(default_factory=EngineSpec)
    """engine holds the vLLM engine settings."""
    nominalTokensPerSecond: float = Field(default=1000.0, gt=0, le=10_000_000)
    """nominalTokensPerSecond is the throughput one replica is expected to reach; it
    estimates the cost per 1M tokens until the autoscaler measures it, and the router's
    spill-over (RoutingPolicy spec.spillover) takes it as the replica's prefill speed."""
    replicaRouting: ReplicaRouting = "Auto"
    """replicaRouting is how Ray Serve picks one of the model's replicas for a request.
    PrefixCacheAffinity sends a request to the replica that served the longest prefix of
    its prompt (multi-turn conversations and shared system prompts find their KV cache
    there) while replicas are evenly loaded; PowerOfTwoChoices sends it to the less busy
    of two random replicas (fewer requests in flight); LeastQueuedTokens sends it to the
    one of two random replicas with fewer prompt tokens queued for prefill (estimated by
    the router, drained at nominalTokensPerSecond), so short prompts do not wait behind a
    long one: for long prompts of varied length that share no prefix (documents,
    retrieval). Auto (the default) is PrefixCacheAffinity when engine.enablePrefixCaching
    is true, else PowerOfTwoChoices."""
    prefixAffinityMaxImbalance: int | None = Field(default=None, ge=0, le=100000)
    """prefixAffinityMaxImbalance is the difference in queued requests between the
    busiest and the idlest replica above which prefix-cache affinity gives way to the
    less busy of two replicas (Ray's imbalanced_threshold). Unset: affinity always wins,
    so conversations sharing a system prompt may all go to one replica."""
    loraAdapters: list[LoraAdapter] | None = Field(
        default=None, max_length=64, json_schema_extra=list_map("name")
    )
    """loraAdapters are LoRA adapters served on these base weights by every replica (vLLM
    multi-LoRA); each is callable by its name and routable as a target MODEL:NAME."""
    maxLoraRank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 16
    """maxLoraRank is the highest LoRA rank (r) among the adapters; vLLM reserves memory
    for it."""
    maxLoras: int | None = Field(default=None, ge=1, le=64)
    """maxLoras is how many different adapters one batch may use at once; defaults to the
    number of loraAdapters."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(
            self.replicaRouting != "PrefixCacheAffinity" or self.engine.enablePrefixCaching,
            RULE_AFFINITY_NEEDS_PREFIX_CACHING[1],
        )
        require(
            self.prefixAffinityMaxImbalance is None
            or self.replica_router() == PREFIX_CACHE_AFFINITY_ROUTER,
            RULE_IMBALANCE_NEEDS_AFFINITY[1],
        )
        require(self.maxLoras is None or bool(self.loraAdapters), RULE_MAX_LORAS_WITH_ADAPTERS[1])
        e = self.engine
        require(
            not self.gpusPerReplica
            or self.gpusPerReplica >= e.tensorParallelSize * e.pipelineParallelSize,
            RULE_GPUS_FOR_PARALLELISM[1],
        )
        require_unique((a.name for a in self.loraAdapters or []), "loraAdapters[].name")
        return self

    def replica_router(self) -> str | None:
        """The Ray Serve request router class replicaRouting resolves to; None: Serve's
        default (power of two choices)."""
        if self.replicaRouting == "LeastQueuedTokens":
            return LEAST_QUEUED_TOKENS_ROUTER
        affinity = self.replicaRouting == "PrefixCacheAffinity" or (
            self.replicaRouting == "Auto" and self.engine.enablePrefixCaching
        )
        return PREFIX_CACHE_AFFINITY_ROUTER if affinity else None


class ExternalSpec(ApiModel):
    """A model served by an external OpenAI-compatible provider."""

    baseURL: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """baseURL of the provider's OpenAI-compatible API, including /v1 (for example
    https://api.openai.com/v1)."""
    providerModel: str = Field(min_length=1, max_length=256)
    """providerModel is the model name the provider expects in requests."""
    apiKeySecretRef: SecretKeyRef | None = None
    """apiKeySecretRef names the Secret key holding the provider's API key; it reaches
    the router as an environment variable, never inlined."""
    price: TokenPrice
    """price the provider charges per 1M tokens."""
    timeoutSeconds: float = Field(default=60.0, gt=0, le=3600)
    """timeoutSeconds bounds one call to the provider."""


class AutoscalingSpec(ApiModel):
    """Bounds and targets the autoscaler sizes this model by."""

    model_config = ApiModel.model_config | {"json_schema_extra": cel(RULE_AUTOSCALING_MIN_MAX)}

    mode: Literal["Tokenyard", "Manual", "External"] = "Tokenyard"
    """mode says who owns spec.replicas: Tokenyard (the tokenyard autoscaler), Manual
    (kubectl scale; the autoscaler only reports) or External (an HPA or KEDA scaling
    the scale subresource)."""
    minReplicas: int = Field(default=1, ge=0, le=1000)
    """minReplicas is never undercut, even when GPUs are short; 0 allows scale to zero."""
    maxReplicas: int = Field(default=1, ge=1, le=1000)
    """maxReplicas is never exceeded."""
    targetOngoingRequests: float = Field(default=16.0, gt=0, le=10000)
    """targetOngoingRequests is the running plus waiting requests one replica should
    carry."""
    targetKVCacheUsage: float = Field(default=0.8, gt=0, le=1)
    """targetKVCacheUsage is the KV-cache fill above which the model scales up."""
    targetGPUUtilization: float = Field(default=0.8, gt=0, le=1)
    """targetGPUUtilization is the GPU busy fraction above which the model scales up."""
    ttftSLOSeconds: float = Field(default=2.0, gt=0, le=600)
    """ttftSLOSeconds is the p95 time-to-first-token objective; the router's spill-over
    (RoutingPolicy spec.spillover) also keeps requests within it."""
    scaleToZeroAfterSeconds: int | None = Field(default=None, ge=30, le=604800)
    """scaleToZeroAfterSeconds removes the last replica after this long without requests
    (only when minReplicas is 0)."""
    coldStartSeconds: float = Field(default=120.0, ge=0, le=7200)
    """coldStartSeconds is how long a new replica takes to serve (image, weights, warm-up)."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """priority decides who gets GPUs first when the pool is short (higher first)."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(self.minReplicas <= self.maxReplicas, RULE_AUTOSCALING_MIN_MAX[1])
        return self


class ModelDeploymentSpec(ApiModel):
    """ModelDeploymentSpec describes one model: where it runs and what it is good for."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            RULE_EXACTLY_ONE_BACKEND, RULE_POOL_FOR_IN_CLUSTER, RULE_REPLICAS_IN_BOUNDS
        )
    }

    pool: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    """pool is the ServingPool (same namespace) whose Ray cluster serves this model;
    required for inCluster models."""
    servedModelName: str | None = Field(default=None, min_length=1, max_length=256)
    """servedModelName is the name clients may use in the request's model field to call
    this model directly; defaults to metadata.name."""
    tier: Tier = "standard"
    """tier labels the model economy, standard or frontier; it sets the default quality."""
    quality: float | None = Field(default=None, ge=0, le=1)
    """quality in [0, 1] is the hardest estimated request difficulty this model is good
    enough for; defaults by tier (economy 0.3, standard 0.6, frontier 1.0)."""
    inCluster: InClusterSpec | None = None
    """inCluster serves the model with vLLM inside the pool."""
    external: ExternalSpec | None = None
    """external sends requests to an OpenAI-compatible provider."""
    replicas: int | None = Field(default=None, ge=0, le=1000)
    """replicas is the desired number of replicas (scale subresource); written by the
    autoscaler, kubectl scale or an HPA depending on autoscaling.mode."""
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    """autoscaling holds the bounds and targets the autoscaler uses."""
    dataClasses: list[DataClass] | None = Field(
        default=None, max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """dataClasses the model may receive (for example public, internal, pii); defaults
    to every class for inCluster models and only public for external ones."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require((self.inCluster is None) != (self.external is None), RULE_EXACTLY_ONE_BACKEND[1])
        require(self.inCluster is None or self.pool is not None, RULE_POOL_FOR_IN_CLUSTER[1])
        a = self.autoscaling
        require(
            self.replicas is None
            or self.inCluster is None
            or a.minReplicas <= self.replicas <= a.maxReplicas
            or a.mode != "Tokenyard",
            RULE_REPLICAS_IN_BOUNDS[1],
        )
        require_unique(self.dataClasses or [], "dataClasses")
        return self

    def effective_quality(self) -> float:
        """The quality score routing uses."""
        return self.quality if self.quality is not None else TIER_QUALITY[self.tier]

    def gpus_per_replica(self) -> int:
        """GPUs one replica takes (0 for external models)."""
        if self.inCluster is None:
            return 0
        if self.inCluster.gpusPerReplica is not None:
            return self.inCluster.gpusPerReplica
        e = self.inCluster.engine
        return e.tensorParallelSize * e.pipelineParallelSize

    def desired_replicas(self) -> int:
        """spec.replicas, or the autoscaling minimum (at least 1 unless scale to zero)."""
        if self.replicas is not None:
            return self.replicas
        return self.autoscaling.minReplicas


class ServedBy(ApiModel):
    """Where the model is served."""

    pool: str | None = None
    """pool is the ServingPool serving the model."""
    rayService: str | None = None
    """rayService is the KubeRay RayService serving the model."""
    application: str | None = None
    """application is the Ray Serve application name of the model."""
    baseURL: str | None = None
    """baseURL of an external provider."""


class AutoscalingStatus(ApiModel):
    """The autoscaler's latest decision."""

    desiredReplicas: int | None = None
    """desiredReplicas the autoscaler wants."""
    minReplicas: int | None = None
    """minReplicas bound the autoscaler hands Ray Serve."""
    maxReplicas: int | None = None
    """maxReplicas bound the autoscaler hands Ray Serve."""
    reason: str | None = None
    """reason explains the decision."""
    lastDecisionTime: str | None = None
    """lastDecisionTime is when the decision was made (RFC 3339)."""
    lastScaleTime: str | None = None
    """lastScaleTime is when the autoscaler last changed replicas (RFC 3339)."""
    kvCacheTokens: int | None = None
    """kvCacheTokens is the KV cache one replica holds, in tokens, as its vLLM engines
    report it (cache_config_info: blocks times block size; the smallest engine's). The
    autoscaler's SLO model limits a replica's prefill rate to what this cache admits at
    the measured prompt and output lengths and decode speed. Unset until it is read."""


class AdapterStatus(ApiModel):
    """The observed state of one LoRA adapter of the model."""

    name: str
    """name of the adapter (the model name clients call)."""
    target: str
    """target is how RoutingPolicy targets name the adapter (MODEL:ADAPTER)."""
    source: str | None = None
    """source the adapter's weights load from."""
    ready: bool = False
    """ready is true when the model's replicas serve the adapter (vLLM loads every
    adapter when its engine starts, so it follows the model's Ready condition)."""
    quality: float | None = None
    """quality score routing uses for the adapter."""
    costPer1MTokens: float | None = None
    """costPer1MTokens is the adapter's blended price (its own, or the model's cost)."""
    message: str | None = None
    """message explains why the adapter is not ready."""


class ModelDeploymentStatus(ApiModel):
    """ModelDeploymentStatus is the observed state of the model."""

    observedGeneration: int | None = None
    """observedGeneration is the spec generation this status reflects."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    """conditions: Ready says whether the model serves, with reasons such as
    ValidationFailed, PoolNotFound, AcceleratorNotFound, GPULimitExceeded, Deploying."""
    replicas: int | None = None
    """replicas currently asked of Ray Serve."""
    readyReplicas: int | None = None
    """readyReplicas that serve requests."""
    desiredReplicas: int | None = None
    """desiredReplicas the autoscaler wants."""
    selector: str | None = None
    """selector of the model's pods, for the scale subresource."""
    servedBy: ServedBy | None = None
    """servedBy tells where the model is served."""
    costPer1MTokens: float | None = None
    """costPer1MTokens is the effective USD cost of one million tokens (blended)."""
    costSource: Literal["Price", "Estimated", "Measured"] | None = None
    """costSource: Price (external list price), Estimated (from nominal throughput) or
    Measured (by the autoscaler from GPU-hours and tokens served)."""
    quality: float | None = None
    """quality score routing uses."""
    model: str | None = None
    """model is the weights source or provider model, for kubectl get."""
    autoscaling: AutoscalingStatus | None = None
    """autoscaling is the autoscaler's latest decision."""
    adapters: list[AdapterStatus] | None = Field(default=None, json_schema_extra=list_map("name"))
    """adapters reports each of spec.inCluster.loraAdapters."""


class ModelDeployment(ApiModel):
    """ModelDeployment is one model served by vLLM in a pool or by an external provider."""

    KIND: ClassVar[str] = "ModelDeployment"
    PLURAL: ClassVar[str] = "modeldeployments"
    SHORT_NAMES: ClassVar[list[str]] = ["md"]

    apiVersion: str = "tokenyard.dev/v1alpha1"
    kind: str = "ModelDeployment"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
