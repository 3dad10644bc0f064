"""The contract between the operator's rendered ``serveConfigV2`` and the serving code.

One module, imported by both planes (the operator renders these shapes; the router,
the model app, the routing decision and accounting read them), so an import path or
argument name cannot drift. It imports no Ray, kopf or Kubernetes client, and nothing of
tokenyard but ``tokenyard.api`` and spill-over's :class:`Capacity` (a standard-library-only
module: a catalogue entry states its capacity in the type spill-over reads); its pure
builders turn API objects into the Serve application arguments.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenyard.api.common import COND_CAPPED
from tokenyard.api.model import ModelDeployment, ModelDeploymentSpec
from tokenyard.api.policy import RoutingPolicySpec, Target
from tokenyard.api.pool import AcceleratorClass
from tokenyard.routing.spillover import Capacity

ROUTER_APP_NAME = "tokenyard-router"
ROUTER_IMPORT_PATH = "tokenyard.serving.router_app:build_app"
ROUTER_DEPLOYMENT = "Router"
ROUTER_ROUTE_PREFIX = "/"
ROUTER_TARGET_ONGOING_REQUESTS = 100
"""Requests in flight per router replica at which Ray Serve adds a router replica. The
router only awaits backends (its max_ongoing_requests is 1000), so Serve's default of 2
would scale it out at the third concurrent request; every extra replica makes rate
limits, spill-over estimates and budgets per-replica approximations for a moment."""

MODEL_IMPORT_PATH = "tokenyard.serving.model_app:build_app"
MODEL_DEPLOYMENT = "LLMServer"
MODEL_INGRESS_DEPLOYMENT = "ModelIngress"
"""The zero-replica placeholder ingress of a model app with a custom request router."""
MODEL_APP_PREFIX = "model-"

SERVE_PORT = 8000

# What serves SERVE_PORT (spec.router.ingress). "HAProxy": Ray Serve's HAProxy mode, a C
# load balancer on every Ray pod forwarding straight to the router replicas' own HTTP
# servers (Serve's direct ingress); "Proxy": Serve's Python proxy actor, which hands each
# request to a router replica over a Ray actor call (one more hop, measured in
# benchmarks/router_overhead.py). Both serve the same port, routes and /-/healthz.
INGRESS_HAPROXY = "HAProxy"
INGRESS_PROXY = "Proxy"
RouterIngress = Literal["HAProxy", "Proxy"]
DEFAULT_INGRESS: RouterIngress = "HAProxy"
ENV_SERVE_HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
# The replicas' own ports (direct ingress); HAProxy finds them through Serve's controller.
# Ray's default range, named so that the pod's port list and Ray agree.
DIRECT_INGRESS_MIN_PORT = 30000
DIRECT_INGRESS_MAX_PORT = 31000
HAPROXY_STATS_PORT = 8404
HAPROXY_METRICS_PORT = 9101


def ingress_env(ingress: RouterIngress) -> dict[str, str]:
    """Environment of every Ray process (head and workers) for one ingress: Serve reads
    these flags once, at import, in its controller and replicas."""
    if ingress == INGRESS_HAPROXY:
        return {ENV_SERVE_HA_PROXY: "1"}
    return {ENV_SERVE_HA_PROXY: "0"}


# Output tokens the router assumes for a request that sets no max_tokens (rate limits,
# budget reservations, abandoned requests); settled with the real count when known.
DEFAULT_OUTPUT_ESTIMATE = 256
# Largest request body a router reads when the pool sets none (spec.router.maxRequestBytes).
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024

# Ray custom resource that pins a replica to one accelerator class's worker group.
ACCEL_RESOURCE_PREFIX = "tokenyard.dev/accel-"

ENV_APIKEY_PREFIX = "TOKENYARD_APIKEY_"
ENV_TENANT_KEYS_PREFIX = "TOKENYARD_TENANT_KEYS_"

# Where pvc:// sources are mounted in Ray worker pods.
PVC_MOUNT_ROOT = "/mnt/models"

# The router's state (spend ledger) on the Ray head: a volume mounted here, which is
# a PersistentVolumeClaim when the pool's spec.router.state.persistent is true.
STATE_MOUNT = "/var/lib/tokenyard"
STATE_VOLUME = "tokenyard-state"
LEDGER_PATH = f"{STATE_MOUNT}/ledger.json"


def state_claim_name(pool: str) -> str:
    """Name of the PersistentVolumeClaim holding a pool's router state."""
    return f"{pool}-router-state"


ADAPTER_SEPARATOR = ":"


def adapter_target(model: str, adapter: str) -> str:
    """The target (and catalogue) name of a ModelDeployment's LoRA adapter: MODEL:ADAPTER."""
    return f"{model}{ADAPTER_SEPARATOR}{adapter}"


def split_target(target: str) -> tuple[str, str | None]:
    """(ModelDeployment name, adapter name or None) of a RoutingPolicy target."""
    model, sep, adapter = target.partition(ADAPTER_SEPARATOR)
    return model, (adapter if sep else None)


def model_app_name(model: str) -> str:
    """Ray Serve application name of an in-cluster ModelDeployment."""
    return f"{MODEL_APP_PREFIX}{model}"


def model_route_prefix(model: str) -> str:
    """Route prefix of a model app (not used by clients; the router calls handles)."""
    return f"/tokenyard/models/{model}"


def accel_resource(accelerator: str) -> str:
    """Custom Ray resource name advertised by one accelerator class's workers."""
    return f"{ACCEL_RESOURCE_PREFIX}{accelerator}"


def _env_suffix(name: str) -> str:
    """The name as an environment variable's suffix: upper case, '-' as '_'. A name with
    a dot also gets ``_d`` and 8 hex digits of its SHA-256: 'gpt.4o' and 'gpt-4o' would
    otherwise share one variable, and one model would call its provider with the other's
    key (no dot-free name gives a lower-case letter, so the two kinds never meet)."""
    suffix = re.sub(r"[^A-Z0-9]", "_", name.upper())
    if "." in name:
        suffix += "_d" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return suffix


def api_key_env(model: str) -> str:
    """Environment variable holding an external model's API key in router pods."""
    return f"{ENV_APIKEY_PREFIX}{_env_suffix(model)}"


def tenant_keys_env(policy: str) -> str:
    """Environment variable holding a policy's API-key-to-tenant map in router pods."""
    return f"{ENV_TENANT_KEYS_PREFIX}{_env_suffix(policy)}"


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExternalEndpoint(_Contract):
    """How the router calls an external provider."""

    baseURL: str
    providerModel: str
    apiKeyEnv: str | None = None
    timeoutSeconds: float = 60.0


class CatalogueEntry(_Contract):
    """One model as the router sees it."""

    name: str
    """ModelDeployment name."""
    servedModelName: str
    """Name clients may use to call the model directly."""
    kind: Literal["InCluster", "External"]
    quality: float
    inputPer1M: float
    """USD per 1M prompt tokens (list price or effective in-cluster cost)."""
    outputPer1M: float
    maxModelLen: int | None = None
    dataClasses: list[str] | None = None
    """Data classes the model may receive; None means every class (in-cluster only)."""
    app: str | None = None
    """Ray Serve application of an in-cluster model."""
    deployment: str | None = None
    """Ray Serve deployment of an in-cluster model."""
    external: ExternalEndpoint | None = None
    ready: bool = True
    """False while the model is known not to serve (the router skips it)."""
    replicas: int | None = None
    """Replicas of an in-cluster model the router counts on for spill-over: the count
    the operator asks Ray Serve for (spec, not observed status, so the rendered
    RayService does not change with every status update)."""
    tokensPerSecond: float | None = None
    """Prompt tokens one replica prefills per second (spec.inCluster.nominalTokensPerSecond)."""
    ttftSLOSeconds: float | None = None
    """The model's time-to-first-token objective (spec.autoscaling.ttftSLOSeconds)."""
    adapterOf: str | None = None
    """For a LoRA adapter (name MODEL:ADAPTER): the ModelDeployment whose replicas serve
    it on their base weights (the same app, deployment and capacity)."""
    capped: str | None = None
    """GPUCapped or BudgetCapped while the autoscaler gives the model fewer replicas than
    it asks for (its Capped condition). Rendered only for pools where a policy sets
    spillover.downgradeWhenCapped, so other pools' RayServices do not change with it."""

    def capacity(self) -> Capacity | None:
        """The model's capacity for spill-over; None for External or unknown models."""
        if (
            self.kind != "InCluster"
            or self.replicas is None
            or self.tokensPerSecond is None
            or self.ttftSLOSeconds is None
        ):
            return None
        return Capacity(self.replicas, self.tokensPerSecond, self.ttftSLOSeconds)


LEARNED_ARTIFACT_KIND = "tokenyard.dev/DifficultyModel"
LEARNED_FORMAT_VERSION = 1
MAX_LEARNED_ARTIFACT_BYTES = 1 << 20


class LearnedClassifierEntry(_Contract):
    """A policy's learned classifier as the operator delivers it: the artifact as it is
    in the ConfigMap, and the threshold the operator read from its quality table for the
    policy's ``keepStrongQuality``. The router checks the artifact in full when it loads
    it (version against content, weights) and keeps the heuristic if it cannot."""

    version: str
    threshold: float
    keepStrongQuality: float
    expectedStrongShare: float | None = None
    artifact: str = Field(repr=False)


def learned_classifier_entry(text: str, keep_strong_quality: float) -> LearnedClassifierEntry:
    """The entry for an artifact's text, or a ValueError saying what is wrong with it.

    Checked here (the operator has no numpy model): size, JSON, kind, format version,
    a version string, and a quality-table point that keeps ``keep_strong_quality``. The
    threshold is the highest whose held-out quality reached the aim (the fewest strong
    calls), as :meth:`DifficultyModel.threshold_for_quality` picks it. An operator pass
    asks for the same artifact for the router's config and for status: the artifact is
    parsed once (the last few valid ones are remembered), each caller gets its own entry.
    """
    version, threshold, share = _artifact_threshold(text, keep_strong_quality)
    return LearnedClassifierEntry(
        version=version,
        threshold=threshold,
        keepStrongQuality=keep_strong_quality,
        expectedStrongShare=share,
        artifact=text,
    )


@functools.lru_cache(maxsize=8)
def _artifact_threshold(text: str, keep_strong_quality: float) -> tuple[str, float, float | None]:
    size = len(text.encode())
    if size > MAX_LEARNED_ARTIFACT_BYTES:
        raise ValueError(f"the artifact is {size} bytes, over 1 MiB")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the artifact is not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(doc, dict) or doc.get("kind") != LEARNED_ARTIFACT_KIND:
        raise ValueError(f"the artifact is not a difficulty model (kind {LEARNED_ARTIFACT_KIND})")
    if doc.get("formatVersion") != LEARNED_FORMAT_VERSION:
        raise ValueError(
            f"artifact formatVersion {doc.get('formatVersion')!r} is not supported "
            f"(this release reads {LEARNED_FORMAT_VERSION})"
        )
    version = doc.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9a-z:-]{4,80}", version):
        raise ValueError("the artifact has no valid version")
    best: tuple[float, float | None] | None = None
    reached = 0.0
    table = doc.get("qualityTable")
    for point in table if isinstance(table, list) else []:
        if not isinstance(point, dict):
            continue
        t, q, share = (
            _number(point.get("threshold")),
            _number(point.get("qualityOfStrong")),
            _number(point.get("strongShare")),
        )
        if t is None or q is None:
            continue
        reached = max(reached, q)
        if q >= keep_strong_quality and (best is None or t > best[0]):
            best = (t, share)
    if best is None:
        raise ValueError(
            f"no threshold in the artifact's qualityTable keeps {keep_strong_quality:g} of "
            f"the strong model's quality (the table reaches {reached:g})"
        )
    return version, best[0], best[1]


def _number(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


class PolicyEntry(_Contract):
    """One RoutingPolicy as the router sees it."""

    name: str
    namespace: str
    endpoint: str
    generation: int | None = None
    spec: dict[str, Any]
    """The RoutingPolicy spec as written (validate with :meth:`policy_spec`)."""
    tenantKeysEnv: str | None = None
    classifier: LearnedClassifierEntry | None = None
    """The learned classifier (spec.classifier type Learned, artifact delivered); None:
    the heuristic."""
    shadow: LearnedClassifierEntry | None = None
    """The candidate classifier of spec.classifier.shadow, when delivered: scored beside
    the live one, never routing."""

    def policy_spec(self) -> RoutingPolicySpec:
        return RoutingPolicySpec.model_validate(self.spec)


class RouterConfig(_Contract):
    """The Router deployment's ``user_config``: changes reach replicas via reconfigure."""

    pool: str
    namespace: str
    models: list[CatalogueEntry] = Field(default_factory=list)
    policies: list[PolicyEntry] = Field(default_factory=list)
    routerReplicas: int = Field(default=1, ge=1)
    """Router replicas the pool runs at least (spec.router.minReplicas): each replica
    takes 1 / routerReplicas of the traffic (rate limits, queue estimate) until it has
    read the router's RUNNING replicas from Ray Serve's status."""
    maxRequestBytes: int | None = Field(default=None, ge=1024)
    """Largest request body the router reads (spec.router.maxRequestBytes); a larger one
    is answered 413 before it is parsed. None (rendered when the pool keeps the default,
    so existing RayServices do not change): DEFAULT_MAX_REQUEST_BYTES."""

    @property
    def max_request_bytes(self) -> int:
        return self.maxRequestBytes or DEFAULT_MAX_REQUEST_BYTES


def direct_policy(config: RouterConfig, served_name: str) -> PolicyEntry | None:
    """The endpoint of a model called by its servedModelName, as the router serves it.

    Routed to that model only, under the tenants, budgets, rate limits, egress and audit
    of the first policy that lists it as a target, or the defaults (only public data may
    leave the cluster). None when a policy owns the name or no model has it.
    """
    if any(p.endpoint == served_name for p in config.policies):
        return None
    model = next((m for m in config.models if m.servedModelName == served_name), None)
    if model is None:
        return None
    owner = next(
        (p for p in config.policies if any(t.model == model.name for t in p.policy_spec().targets)),
        None,
    )
    base = (
        owner.policy_spec()
        if owner is not None
        else RoutingPolicySpec(pool=config.pool, targets=[Target(model=model.name)])
    )
    spec = base.model_copy(
        update={"targets": [Target(model=model.name)], "rules": [], "strategy": "Ordered"}
    )
    return PolicyEntry(
        name=owner.name if owner is not None else model.name,
        namespace=owner.namespace if owner is not None else config.namespace,
        endpoint=served_name,
        generation=owner.generation if owner is not None else None,
        spec=spec.dump(),
        tenantKeysEnv=owner.tenantKeysEnv if owner is not None else None,
    )


class RouterAppArgs(_Contract):
    """``args`` of the router application (fixed for the replica's life)."""

    pool: str
    namespace: str
    ledgerPath: str | None = None
    """Where the spend ledger persists (a volume path); None keeps it in a ConfigMap
    or, in local mode, under the user's state directory."""
    auditPath: str | None = None
    """A file for audit lines in addition to stdout."""
    adminTokenSha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the bearer token that ``GET /metrics`` and ``GET /v1/tokenyard/stats``
    require (the operator's ``admin_token`` setting); only the hash is rendered, so whoever
    reads the RayService cannot read those endpoints. None: they answer anyone (local
    mode, where the router listens on 127.0.0.1 only)."""


def admin_token_sha256(token: str) -> str:
    """The hex SHA-256 of an admin bearer token, as ``RouterAppArgs.adminTokenSha256``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def blended_price(in_per_1m: float, out_per_1m: float) -> float:
    """One number per model for kubectl get: a 3:1 input:output token mix."""
    return round((3 * in_per_1m + out_per_1m) / 4, 6)


def estimated_cost_per_1m(spec: ModelDeploymentSpec, accel: AcceleratorClass | None) -> float:
    """USD per 1M tokens of an in-cluster model from GPU price and nominal throughput."""
    if spec.inCluster is None or accel is None:
        return 0.0
    hourly = spec.gpus_per_replica() * accel.hourlyCostPerGPU
    tokens_per_hour = spec.inCluster.nominalTokensPerSecond * 3600
    return round(hourly / tokens_per_hour * 1_000_000, 6)


def model_source(spec: ModelDeploymentSpec) -> str | dict[str, Any]:
    """The LLMConfig model_source for a weights URI."""
    assert spec.inCluster is not None
    uri = spec.inCluster.source
    scheme, rest = uri.split("://", 1)
    if scheme == "hf":
        return rest
    if scheme in ("s3", "gs"):
        return {"bucket_uri": uri}
    if scheme == "pvc":
        return f"{PVC_MOUNT_ROOT}/{rest}"
    return rest  # file:///abs/path -> /abs/path


def adapter_path(uri: str) -> str:
    """Where the engine reads a LoRA adapter's source: a local path (file://), the pool's
    claim mount (pvc://) or a Hugging Face repository id (hf://, fetched by vLLM)."""
    scheme, rest = uri.split("://", 1)
    if scheme == "pvc":
        return f"{PVC_MOUNT_ROOT}/{rest}"
    return rest  # file:///abs/path -> /abs/path; hf://org/name -> org/name


LORA_MODULES_ARG = "lora_modules"
"""The engine argument carrying the adapters (vLLM's static LoRA modules, loaded when the
engine starts): a list of {"name", "path"} that the model app turns
into vLLM's ``LoRAModulePath`` (the serve config is JSON and cannot carry it)."""


def lora_engine_kwargs(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """vLLM's multi-LoRA arguments for the model's adapters ({} without adapters)."""
    assert spec.inCluster is not None
    adapters = spec.inCluster.loraAdapters or []
    if not adapters:
        return {}
    return {
        "enable_lora": True,
        "max_lora_rank": spec.inCluster.maxLoraRank,
        "max_loras": spec.inCluster.maxLoras or len(adapters),
        LORA_MODULES_ARG: [{"name": a.name, "path": adapter_path(a.source)} for a in adapters],
    }


ENGINE_ARGS_SET_BY_FIELDS: dict[str, str] = {
    "model": "spec.inCluster.source",
    "served_model_name": "spec.servedModelName",
    "revision": "spec.inCluster.revision",
    "tensor_parallel_size": "spec.inCluster.engine.tensorParallelSize",
    "pipeline_parallel_size": "spec.inCluster.engine.pipelineParallelSize",
    "dtype": "spec.inCluster.engine.dtype",
    "gpu_memory_utilization": "spec.inCluster.engine.gpuMemoryUtilization",
    "enable_prefix_caching": "spec.inCluster.engine.enablePrefixCaching",
    "enforce_eager": "spec.inCluster.engine.enforceEager",
    "max_model_len": "spec.inCluster.engine.maxModelLen",
    "quantization": "spec.inCluster.engine.quantization",
    "enable_lora": "spec.inCluster.loraAdapters",
    LORA_MODULES_ARG: "spec.inCluster.loraAdapters",
    "max_lora_rank": "spec.inCluster.maxLoraRank",
    "max_loras": "spec.inCluster.maxLoras",
}
"""vLLM engine arguments that a field of the spec sets: in ``extraArgs`` they would
override the field silently (and the replica's GPUs are counted from the fields)."""

ENGINE_ARGS_UNSUPPORTED: dict[str, str] = {
    "data_parallel_size": "each replica runs one engine; scale with replicas instead",
}
"""vLLM engine arguments that change what a replica is, which tokenyard does not support."""


def engine_kwargs(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """vLLM engine arguments from the spec (Python names, as vLLM takes them)."""
    assert spec.inCluster is not None
    e = spec.inCluster.engine
    kw: dict[str, Any] = {
        "tensor_parallel_size": e.tensorParallelSize,
        "pipeline_parallel_size": e.pipelineParallelSize,
        "dtype": e.dtype,
        "gpu_memory_utilization": e.gpuMemoryUtilization,
        "enable_prefix_caching": e.enablePrefixCaching,
        "enforce_eager": e.enforceEager,
    }
    if e.maxModelLen is not None:
        kw["max_model_len"] = e.maxModelLen
    if e.quantization is not None:
        kw["quantization"] = e.quantization
    if spec.inCluster.revision is not None:
        kw["revision"] = spec.inCluster.revision
    kw.update(lora_engine_kwargs(spec))
    kw.update(e.extraArgs)
    return kw


def build_llm_config(
    name: str,
    spec: ModelDeploymentSpec,
    accel: AcceleratorClass | None,
    *,
    min_replicas: int,
    max_replicas: int,
    initial_replicas: int,
    autoscale: bool,
    env_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Ray Serve LLM ``LLMConfig`` (as a dict) for one in-cluster ModelDeployment.

    The model app deploys it under the fixed deployment name ``MODEL_DEPLOYMENT``.

    ``accel`` None or a CPU-only class (gpusPerNode 0) runs the engine on CPU.
    With ``autoscale`` Ray Serve moves replicas within [min, max]; without it the
    replica count is fixed at ``initial_replicas`` (Manual or External ownership).
    """
    assert spec.inCluster is not None
    served = spec.servedModelName or name
    gpus = spec.gpus_per_replica()
    cpu_only = accel is None or accel.gpusPerNode == 0 or gpus == 0
    bundle: dict[str, float] = {"GPU": 1} if not cpu_only else {"CPU": 1}
    if accel is not None:
        bundle[accel_resource(accel.name)] = 0.001
    bundles = [dict(bundle) for _ in range(max(gpus, 1))]
    deployment_config: dict[str, Any] = {}
    if autoscale:
        deployment_config["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "max_replicas": max(max_replicas, 1),
            "initial_replicas": max(min(initial_replicas, max_replicas), min_replicas),
            "target_ongoing_requests": spec.autoscaling.targetOngoingRequests,
        }
    else:
        deployment_config["num_replicas"] = initial_replicas
    router = spec.inCluster.replica_router()
    if router is not None:
        rc: dict[str, Any] = {"request_router_class": router}
        if spec.inCluster.prefixAffinityMaxImbalance is not None:
            rc["request_router_kwargs"] = {
                "imbalanced_threshold": spec.inCluster.prefixAffinityMaxImbalance
            }
        if spec.inCluster.replicaRouting == "LeastQueuedTokens":
            rc["request_router_kwargs"] = {
                "prefill_tokens_per_s": spec.inCluster.nominalTokensPerSecond
            }
        deployment_config["request_router_config"] = rc
    cfg: dict[str, Any] = {
        "model_loading_config": {"model_id": served, "model_source": model_source(spec)},
        "engine_kwargs": engine_kwargs(spec),
        "placement_group_config": {"bundles": bundles, "strategy": "STRICT_PACK"},
        "deployment_config": deployment_config,
        "log_engine_metrics": True,
        "runtime_env": {"env_vars": dict(sorted((env_vars or {}).items()))},
    }
    if cpu_only:
        cfg["accelerator_config"] = {"kind": "cpu"}
    return cfg


def catalogue_entry(
    md: ModelDeployment,
    *,
    ready: bool,
    accel: AcceleratorClass | None = None,
    replicas: int | None = None,
    with_capped: bool = False,
) -> CatalogueEntry:
    """The router's view of one ModelDeployment.

    ``replicas`` is the count the router assumes serve an in-cluster model (the operator
    passes what it asks Ray Serve for); default: ``spec.desired_replicas()``. Observed
    status (readyReplicas) is deliberately not read: the entry is rendered into the
    RayService, which must change only when specs do. ``with_capped`` adds the Capped
    condition's reason (for spillover.downgradeWhenCapped): only then does the entry
    follow that status condition.
    """
    name = str(md.metadata.get("name", ""))
    spec = md.spec
    served = spec.servedModelName or name
    status = md.status
    if spec.external is not None:
        ext = spec.external
        return CatalogueEntry(
            name=name,
            servedModelName=served,
            kind="External",
            quality=spec.effective_quality(),
            inputPer1M=ext.price.inputPer1M,
            outputPer1M=ext.price.outputPer1M,
            dataClasses=spec.dataClasses if spec.dataClasses is not None else ["public"],
            external=ExternalEndpoint(
                baseURL=ext.baseURL,
                providerModel=ext.providerModel,
                apiKeyEnv=api_key_env(name) if ext.apiKeySecretRef else None,
                timeoutSeconds=ext.timeoutSeconds,
            ),
            ready=ready,
        )
    assert spec.inCluster is not None
    measured = status.costPer1MTokens if status and status.costSource == "Measured" else None
    cost = measured if measured is not None else estimated_cost_per_1m(spec, accel)
    return CatalogueEntry(
        name=name,
        servedModelName=served,
        kind="InCluster",
        quality=spec.effective_quality(),
        inputPer1M=cost,
        outputPer1M=cost,
        maxModelLen=spec.inCluster.engine.maxModelLen,
        dataClasses=spec.dataClasses,
        app=model_app_name(name),
        deployment=MODEL_DEPLOYMENT,
        ready=ready,
        replicas=replicas if replicas is not None else spec.desired_replicas(),
        tokensPerSecond=spec.inCluster.nominalTokensPerSecond,
        ttftSLOSeconds=spec.autoscaling.ttftSLOSeconds,
        capped=capped_reason(md) if with_capped else None,
    )


def catalogue_entries(
    md: ModelDeployment,
    *,
    ready: bool,
    accel: AcceleratorClass | None = None,
    replicas: int | None = None,
    with_capped: bool = False,
) -> list[CatalogueEntry]:
    """The router's view of one ModelDeployment and of each of its LoRA adapters.

    An adapter is served by the model's own replicas: its entry shares the model's app,
    deployment, readiness and capacity, and differs in name (MODEL:ADAPTER), the name
    clients call (the adapter's, which is also its LoRA name in vLLM), quality and price.
    """
    base = catalogue_entry(md, ready=ready, accel=accel, replicas=replicas, with_capped=with_capped)
    out = [base]
    ic = md.spec.inCluster
    for a in (ic.loraAdapters if ic is not None else None) or []:
        out.append(
            base.model_copy(
                update={
                    "name": adapter_target(base.name, a.name),
                    "servedModelName": a.name,
                    "quality": a.quality if a.quality is not None else base.quality,
                    "inputPer1M": a.price.inputPer1M if a.price else base.inputPer1M,
                    "outputPer1M": a.price.outputPer1M if a.price else base.outputPer1M,
                    "adapterOf": base.name,
                }
            )
        )
    return out


def capped_reason(md: ModelDeployment) -> str | None:
    """The reason of the model's Capped=True condition (GPUCapped, BudgetCapped), or None."""
    if md.status is None:
        return None
    for c in md.status.conditions:
        if c.type == COND_CAPPED and c.status == "True":
            return c.reason or COND_CAPPED
    return None
