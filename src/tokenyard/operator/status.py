"""Pure status builders: what ModelDeployment, ServingPool and RoutingPolicy status say.

Called by the operator's reconciler with the objects, the admission result and the
observed RayService status; ``now`` is passed in (RFC 3339), never read from a clock.
Each builder returns only the status fields the operator owns, so a merge patch of its
result never clobbers what the autoscaler or the router write (desiredReplicas,
autoscaling, traffic figures, their own condition types).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenyard import contract
from tokenyard.api.common import (
    COND_MIXED_TENANT_ACCESS,
    COND_READY,
    LABEL_POOL,
    REASON_ARTIFACT_UNAVAILABLE,
    REASON_DEPLOYING,
    REASON_EXTERNAL_PROVIDER,
    REASON_KEYED_AND_OPEN,
    REASON_NO_READY_TARGETS,
    REASON_POOL_NOT_FOUND,
    REASON_RAYSERVICE_CRD_MISSING,
    REASON_RUNNING,
    REASON_SECRET_NOT_FOUND,
    REASON_TARGET_NOT_FOUND,
    REASON_TARGETS_READY,
    REASON_UNHEALTHY,
    REASON_VALIDATION_FAILED,
)
from tokenyard.api.model import LoraAdapter, ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator.builders import (
    Admission,
    ConfigMaps,
    Decision,
    Secrets,
    accelerator,
    model_replicas,
    obj_generation,
    obj_name,
    obj_namespace,
    policy_classifier,
    ray_service_name,
    secret_message,
    secret_missing,
)
from tokenyard.operator.plan import merge_diff

# Not in tokenyard.api.common yet: a RayService of the pool's name that tokenyard does
# not manage (no managed-by label); the operator leaves it alone.
REASON_RAYSERVICE_CONFLICT = "RayServiceConflict"

# A Learned classifier's delivery (only on policies with spec.classifier type Learned).
COND_CLASSIFIER_READY = "ClassifierReady"
REASON_CLASSIFIER_DELIVERED = "ArtifactDelivered"
REASON_CLASSIFIER_UNAVAILABLE = REASON_ARTIFACT_UNAVAILABLE

# Ray Serve application states as KubeRay copies them into RayService status.
APP_RUNNING = "RUNNING"
APP_UNHEALTHY = "UNHEALTHY"
APP_DEPLOY_FAILED = "DEPLOY_FAILED"

KUBERAY_HINT = (
    "install KubeRay (helm install kuberay-operator kuberay-operator "
    "--repo https://ray-project.github.io/kuberay-helm/)"
)


# --------------------------------------------------------------------------- conditions


def condition(
    type_: str, status: bool | str, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    """A condition without its lastTransitionTime (see :func:`merge_conditions`)."""
    st = status if isinstance(status, str) else ("True" if status else "False")
    c: dict[str, Any] = {"type": type_, "status": st, "reason": reason, "message": message}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def merge_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """The whole condition list to write: ``new`` replaces conditions of its types,
    other types (written by someone else) stay as they are and where they are.

    lastTransitionTime moves to ``now`` only when a condition's status flips (or it is
    new); a changed reason or message alone keeps the old time.
    """
    by_type = {c["type"]: c for c in new}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for old in existing or []:
        t = old.get("type")
        if not isinstance(t, str) or t in seen:
            continue
        seen.add(t)
        if t not in by_type:
            out.append(dict(old))
            continue
        c = dict(by_type[t])
        same = old.get("status") == c["status"] and old.get("lastTransitionTime")
        c["lastTransitionTime"] = old["lastTransitionTime"] if same else now
        out.append(c)
    for t, fresh in by_type.items():
        if t not in seen:
            out.append({**fresh, "lastTransitionTime": now})
    return out


def ready_condition(conditions: Sequence[Mapping[str, Any]] | None) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == COND_READY:
            return c
    return None


# --------------------------------------------------------------------------- observed


@dataclass(frozen=True)
class AppStatus:
    """One Ray Serve application in a RayService's status."""

    status: str
    message: str = ""
    deployments: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObservedRayService:
    """What KubeRay reports about a RayService (status only; we never read its spec)."""

    ready: bool = False
    message: str = ""
    active: Mapping[str, AppStatus] = field(default_factory=dict)
    pending: Mapping[str, AppStatus] = field(default_factory=dict)

    def app(self, name: str) -> AppStatus | None:
        """The application on the serving (active) cluster, else on the one being
        prepared during an upgrade, reported as still deploying."""
        if name in self.active:
            return self.active[name]
        if name in self.pending:
            p = self.pending[name]
            return AppStatus("DEPLOYING", p.message or "on the pending RayCluster", p.deployments)
        return None


def _apps(raw: Any) -> dict[str, AppStatus]:
    out: dict[str, AppStatus] = {}
    if not isinstance(raw, Mapping):
        return out
    for name, app in raw.items():
        if not isinstance(app, Mapping):
            continue
        deps = app.get("serveDeploymentStatuses") or {}
        out[str(name)] = AppStatus(
            status=str(app.get("status") or ""),
            message=str(app.get("message") or ""),
            deployments={
                str(k): str(v.get("status") or "")
                for k, v in deps.items()
                if isinstance(v, Mapping)
            },
        )
    return out


def observe_ray_service(rs: Mapping[str, Any] | None) -> ObservedRayService | None:
    """Parse a RayService's status: KubeRay >= 1.3 sets a Ready condition, older ones
    only serviceStatus; application states live under active/pendingServiceStatus."""
    if rs is None:
        return None
    st = rs.get("status") or {}
    if not isinstance(st, Mapping):
        st = {}
    cond = ready_condition(st.get("conditions"))
    if cond is not None:
        ready = cond.get("status") == "True"
        message = str(cond.get("message") or cond.get("reason") or "")
    else:
        service_status = str(st.get("serviceStatus") or "")
        ready = service_status == "Running"
        message = f"serviceStatus {service_status}" if service_status else "no status yet"
    return ObservedRayService(
        ready=ready,
        message=message,
        active=_apps((st.get("activeServiceStatus") or {}).get("applicationStatuses")),
        pending=_apps((st.get("pendingServiceStatus") or {}).get("applicationStatuses")),
    )


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelContext:
    """What the operator knows around one ModelDeployment."""

    pool: ServingPool | None = None
    """The model's pool, None if it names none or the pool does not exist."""
    decision: Decision | None = None
    """Admission of an in-cluster member (None before its pool renders)."""
    observed: ObservedRayService | None = None
    """The pool's RayService status (None: not created yet)."""
    crd_missing: bool = False
    """The RayService CRD is not installed."""
    secrets: Secrets | None = None
    """Secrets known in the namespace (None: unknown, assume present)."""


def _pool_not_found(md: ModelDeployment) -> str:
    return f"spec.pool: ServingPool {md.spec.pool!r} not found in namespace {obj_namespace(md)!r}"


def model_readiness(md: ModelDeployment, ctx: ModelContext) -> tuple[bool, str, str]:
    """(ready, reason, message) of a valid ModelDeployment."""
    spec = md.spec
    name = obj_name(md)
    if spec.external is not None:
        if spec.pool is not None and ctx.pool is None:
            return False, REASON_POOL_NOT_FOUND, _pool_not_found(md)
        ref = spec.external.apiKeySecretRef
        if ref is not None and secret_missing(ref, ctx.secrets):
            return (
                False,
                REASON_SECRET_NOT_FOUND,
                secret_message(ref, "spec.external.apiKeySecretRef", ctx.secrets),
            )
        return (
            True,
            REASON_EXTERNAL_PROVIDER,
            f"served by {spec.external.baseURL} as {spec.external.providerModel}",
        )
    if ctx.pool is None:
        return False, REASON_POOL_NOT_FOUND, _pool_not_found(md)
    if ctx.crd_missing:
        return (
            False,
            REASON_RAYSERVICE_CRD_MISSING,
            f"the RayService CRD (ray.io/v1) is not installed: {KUBERAY_HINT}",
        )
    if ctx.decision is not None and not ctx.decision.admitted:
        return False, ctx.decision.reason, ctx.decision.message
    app_name = contract.model_app_name(name)
    rs = ray_service_name(obj_name(ctx.pool))
    app = ctx.observed.app(app_name) if ctx.observed is not None else None
    if app is None:
        return (
            False,
            REASON_DEPLOYING,
            f"waiting for RayService {rs} to deploy application {app_name}",
        )
    if app.status == APP_RUNNING:
        return True, REASON_RUNNING, f"application {app_name} is RUNNING in RayService {rs}"
    if app.status in (APP_UNHEALTHY, APP_DEPLOY_FAILED):
        detail = f": {app.message}" if app.message else ""
        return False, REASON_UNHEALTHY, f"application {app_name} is {app.status}{detail}"
    detail = f": {app.message}" if app.message else ""
    return False, REASON_DEPLOYING, f"application {app_name} is {app.status or 'pending'}{detail}"


def model_cost(md: ModelDeployment, pool: ServingPool | None) -> tuple[float | None, str | None]:
    """(costPer1MTokens, costSource): the external list price (blended), else what the
    autoscaler measured, else an estimate from GPU price and nominal throughput."""
    spec = md.spec
    if spec.external is not None:
        p = spec.external.price
        return contract.blended_price(p.inputPer1M, p.outputPer1M), "Price"
    st = md.status
    if st is not None and st.costSource == "Measured" and st.costPer1MTokens is not None:
        return st.costPer1MTokens, "Measured"
    assert spec.inCluster is not None
    acc = accelerator(pool, spec.inCluster.accelerator) if pool is not None else None
    if acc is None:
        return None, None
    return contract.estimated_cost_per_1m(spec, acc), "Estimated"


def model_location(md: ModelDeployment) -> str:
    if md.spec.external is not None:
        return md.spec.external.baseURL
    return contract.model_app_name(obj_name(md))


def build_model_status(md: ModelDeployment, ctx: ModelContext, *, now: str) -> dict[str, Any]:
    """The operator-owned status fields of a valid ModelDeployment (None = remove)."""
    spec = md.spec
    name = obj_name(md)
    gen = obj_generation(md)
    ready, reason, message = model_readiness(md, ctx)
    existing = md.status.dump().get("conditions") if md.status is not None else None
    conds = merge_conditions(existing, [condition(COND_READY, ready, reason, message, gen)], now)
    cost, source = model_cost(md, ctx.pool)
    out: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conds,
        "quality": spec.effective_quality(),
        "costPer1MTokens": cost,
        "costSource": source,
    }
    if spec.external is not None:
        out.update(
            model=spec.external.providerModel,
            replicas=None,
            readyReplicas=None,
            selector=None,
            servedBy={
                k: v
                for k, v in {"pool": spec.pool, "baseURL": spec.external.baseURL}.items()
                if v is not None
            },
        )
        return out
    assert spec.inCluster is not None
    r = model_replicas(md)
    admitted = ctx.pool is not None and (ctx.decision is None or ctx.decision.admitted)
    out.update(
        model=spec.inCluster.source,
        replicas=r.initial if admitted else 0,
        readyReplicas=r.initial if ready else 0,
        selector=f"{LABEL_POOL}={spec.pool},ray.io/group={spec.inCluster.accelerator}",
        servedBy=(
            {
                "pool": spec.pool,
                "rayService": ray_service_name(str(spec.pool)),
                "application": contract.model_app_name(name),
            }
            if admitted and not ctx.crd_missing
            else {"pool": spec.pool}
        ),
    )
    adapters = spec.inCluster.loraAdapters or []
    if adapters or (md.status is not None and md.status.adapters):
        out["adapters"] = [
            adapter_status(name, a, ready, f"{reason}: {message}", cost, spec.effective_quality())
            for a in adapters
        ] or None
    return out


def adapter_status(  # noqa: PLR0917
    model: str,
    a: LoraAdapter,
    ready: bool,
    not_ready: str,
    model_cost: float | None,
    model_quality: float,
) -> dict[str, Any]:
    """One LoRA adapter's status: served exactly when the model is (vLLM loads every
    adapter when the engine starts; one it cannot load fails the replica)."""
    cost = (
        contract.blended_price(a.price.inputPer1M, a.price.outputPer1M)
        if a.price is not None
        else model_cost
    )
    out: dict[str, Any] = {
        "name": a.name,
        "target": contract.adapter_target(model, a.name),
        "source": a.source,
        "ready": ready,
        "quality": a.quality if a.quality is not None else model_quality,
    }
    if cost is not None:
        out["costPer1MTokens"] = cost
    if not ready:
        out["message"] = not_ready
    return out


def not_ready_status(
    existing_conditions: Sequence[Mapping[str, Any]] | None,
    reason: str,
    message: str,
    generation: int | None,
    *,
    now: str,
) -> dict[str, Any]:
    """Status fields of an object the operator cannot serve at all: Ready=False."""
    conds = merge_conditions(
        existing_conditions,
        [condition(COND_READY, False, reason, message, generation)],
        now,
    )
    return {"observedGeneration": generation, "conditions": conds}


def invalid_status(
    existing_conditions: Sequence[Mapping[str, Any]] | None,
    message: str,
    generation: int | None,
    *,
    now: str,
) -> dict[str, Any]:
    """Status fields for an object whose spec does not validate."""
    return not_ready_status(
        existing_conditions, REASON_VALIDATION_FAILED, message, generation, now=now
    )


def pool_not_found_status(
    existing_conditions: Sequence[Mapping[str, Any]] | None,
    message: str,
    generation: int | None,
    *,
    now: str,
) -> dict[str, Any]:
    """Status fields for a model or policy whose spec.pool does not exist."""
    return not_ready_status(
        existing_conditions, REASON_POOL_NOT_FOUND, message, generation, now=now
    )


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class PoolContext:
    """What the operator knows around one ServingPool."""

    admission: Admission | None = None
    members: Collection[str] = ()
    """Every ModelDeployment naming the pool (admitted or not)."""
    policies: Collection[str] = ()
    observed: ObservedRayService | None = None
    crd_missing: bool = False
    conflict: str | None = None
    """Why the RayService of the pool's name is not ours, if it is not."""
    excluded: Collection[str] = ()
    """'name (Reason)' of members that did not get in."""


def build_pool_status(pool: ServingPool, ctx: PoolContext, *, now: str) -> dict[str, Any]:
    """The operator-owned status fields of a valid ServingPool."""
    name = obj_name(pool)
    gen = obj_generation(pool)
    rs = ray_service_name(name)
    usage = ctx.admission.usage if ctx.admission is not None else {}
    accels = []
    hourly = 0.0
    for acc in pool.spec.accelerators:
        u = usage.get(acc.name)
        requested = u.requested_gpus if u is not None else 0
        hourly += requested * acc.hourlyCostPerGPU
        accels.append({"name": acc.name, "requestedGPUs": requested, "maxGPUs": acc.maxGPUs})
    gpus = ", ".join(f"{a['name']} {a['requestedGPUs']}/{a['maxGPUs']}" for a in accels)

    if ctx.crd_missing:
        ready, reason = False, REASON_RAYSERVICE_CRD_MISSING
        message = f"the RayService CRD (ray.io/v1) is not installed: {KUBERAY_HINT}"
    elif ctx.conflict is not None:
        ready, reason, message = False, REASON_RAYSERVICE_CONFLICT, ctx.conflict
    elif ctx.observed is None:
        ready, reason, message = False, REASON_DEPLOYING, f"creating RayService {rs}"
    elif ctx.observed.ready:
        ready, reason, message = True, REASON_RUNNING, f"RayService {rs} is ready"
    else:
        ready, reason = False, REASON_DEPLOYING
        message = f"waiting for RayService {rs}: {ctx.observed.message}"
    if ctx.excluded:
        message += "; excluded: " + ", ".join(sorted(ctx.excluded))
    existing = pool.status.dump().get("conditions") if pool.status is not None else None
    conds = merge_conditions(existing, [condition(COND_READY, ready, reason, message, gen)], now)
    members = sorted(ctx.members)
    return {
        "observedGeneration": gen,
        "conditions": conds,
        "accelerators": accels,
        "gpus": gpus or None,
        "hourlyCostUSD": round(hourly, 4),
        "models": members,
        "policies": sorted(ctx.policies),
        "modelCount": len(members),
        "rayService": None if ctx.crd_missing or ctx.conflict else rs,
    }


def pool_invalid_status(
    pool_status: Mapping[str, Any] | None, message: str, gen: int | None, *, now: str
) -> dict[str, Any]:
    existing = (pool_status or {}).get("conditions")
    return invalid_status(existing, message, gen, now=now)


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class PolicyContext:
    """What the operator knows around one RoutingPolicy."""

    pool: ServingPool | None = None
    models: Mapping[str, ModelDeployment] = field(default_factory=dict)
    """Valid ModelDeployments of the namespace that the policy may target, by name."""
    invalid: Collection[str] = ()
    """Names of ModelDeployments that exist but do not validate."""
    admission: Admission | None = None
    observed: ObservedRayService | None = None
    crd_missing: bool = False
    secrets: Secrets | None = None
    configmaps: ConfigMaps | None = None
    """ConfigMaps that Learned classifiers name (None: could not be read)."""
    traffic: Mapping[str, Any] | None = None
    """Observed traffic from the router (``traffic.traffic_fields``); None keeps the
    figures already in status (router unreachable or not running yet)."""


def lora_adapter(md: ModelDeployment, name: str) -> LoraAdapter | None:
    """The model's LoRA adapter of that name, if it has one."""
    ic = md.spec.inCluster
    return next((a for a in (ic.loraAdapters if ic else None) or [] if a.name == name), None)


def _missing_target(target: str, ctx: PolicyContext, namespace: str) -> str | None:
    """Why a policy target names nothing (a model not found, or a LoRA adapter its
    model does not have); None when it names something (valid or not)."""
    name, adapter = contract.split_target(target)
    md = ctx.models.get(name)
    if md is None:
        if name in ctx.invalid:
            return None
        return f"ModelDeployment {name!r} not found in namespace {namespace!r}"
    if adapter is not None and lora_adapter(md, adapter) is None:
        return (
            f"ModelDeployment {name!r} has no LoRA adapter {adapter!r} "
            "(spec.inCluster.loraAdapters)"
        )
    return None


def _target_status(
    policy: RoutingPolicy, model: str, ctx: PolicyContext, old: Mapping[str, Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "ready": False, "external": False}
    name, adapter_name = contract.split_target(model)
    md = ctx.models.get(name)
    adapter = lora_adapter(md, adapter_name) if md is not None and adapter_name else None
    if md is None:
        msg = "does not validate" if name in ctx.invalid else "not found"
        out["message"] = f"ModelDeployment {name!r} {msg}"
    elif adapter_name is not None and adapter is None:
        out["message"] = f"ModelDeployment {name!r} has no LoRA adapter {adapter_name!r}"
    else:
        out["external"] = md.spec.external is not None
        out["location"] = model_location(md)
        out["quality"] = md.spec.effective_quality()
        cost, _ = model_cost(md, ctx.pool if md.spec.pool == policy.spec.pool else None)
        if adapter is not None and adapter.quality is not None:
            out["quality"] = adapter.quality
        if adapter is not None and adapter.price is not None:
            p = adapter.price
            cost = contract.blended_price(p.inputPer1M, p.outputPer1M)
        if cost is not None:
            out["costPer1MTokens"] = cost
        if md.spec.inCluster is not None and md.spec.pool != policy.spec.pool:
            out["message"] = (
                f"in-cluster model of pool {md.spec.pool!r}; this policy's router runs in "
                f"pool {policy.spec.pool!r}"
            )
        else:
            decision = ctx.admission.decisions.get(name) if ctx.admission is not None else None
            mctx = ModelContext(
                pool=ctx.pool,
                decision=decision,
                observed=ctx.observed,
                crd_missing=ctx.crd_missing,
                secrets=ctx.secrets,
            )
            ready, reason, message = model_readiness(md, mctx)
            out["ready"] = ready
            if not ready:
                out["message"] = f"{reason}: {message}"
    # Traffic figures come from the router; without a fresh reading keep the last one.
    fresh = (ctx.traffic or {}).get("targets", {}).get(model)
    for k in ("trafficShare", "requests"):
        if fresh is not None and fresh.get(k) is not None:
            out[k] = fresh[k]
        elif old is not None and old.get(k) is not None:
            out[k] = old[k]
    return out


def _classifier_condition(
    entry: contract.LearnedClassifierEntry | None, problem: str | None, gen: int | None
) -> dict[str, Any]:
    if entry is None:
        return condition(
            COND_CLASSIFIER_READY,
            False,
            REASON_CLASSIFIER_UNAVAILABLE,
            problem or "the learned classifier is not delivered; using the heuristic",
            gen,
        )
    share = (
        f", {entry.expectedStrongShare:.0%} strong calls expected"
        if entry.expectedStrongShare is not None
        else ""
    )
    return condition(
        COND_CLASSIFIER_READY,
        True,
        REASON_CLASSIFIER_DELIVERED,
        f"learned classifier {entry.version} delivered to the router: threshold "
        f"{entry.threshold:g} keeps {entry.keepStrongQuality:g} of the strong model's "
        f"quality{share}",
        gen,
    )


def mixed_tenant_access(policy: RoutingPolicy) -> str | None:
    """The warning for a policy that has tenant API keys but serves callers without one
    (``requireKnownTenant: false`` set explicitly); None when it does not."""
    tenants = policy.spec.tenants
    if tenants.apiKeysSecretRef is None or tenants.require_known():
        return None
    return (
        "spec.tenants: apiKeysSecretRef is set but requireKnownTenant is false: a caller "
        f"without a key is served as the tenant its {tenants.header} header names (or "
        f"{tenants.defaultTenant!r}); tenants that have a key are refused by header alone"
    )


def build_policy_status(policy: RoutingPolicy, ctx: PolicyContext, *, now: str) -> dict[str, Any]:
    """The operator-owned status fields of a valid RoutingPolicy."""
    gen = obj_generation(policy)
    old_status = policy.status.dump() if policy.status is not None else {}
    old_targets = {t.get("model"): t for t in old_status.get("targets") or []}
    targets = [
        _target_status(policy, t.model, ctx, old_targets.get(t.model)) for t in policy.spec.targets
    ]
    ready_count = sum(1 for t in targets if t["ready"])
    missing = [
        f"spec.targets[{i}].model: {problem}"
        for i, t in enumerate(policy.spec.targets)
        if (problem := _missing_target(t.model, ctx, obj_namespace(policy))) is not None
    ]
    summary = f"{ready_count}/{len(targets)}"
    if ctx.pool is None:
        ready, reason = False, REASON_POOL_NOT_FOUND
        message = (
            f"spec.pool: ServingPool {policy.spec.pool!r} not found in namespace "
            f"{obj_namespace(policy)!r}"
        )
    elif missing:
        ready, reason, message = False, REASON_TARGET_NOT_FOUND, "; ".join(missing)
    elif ready_count == 0:
        ready, reason = False, REASON_NO_READY_TARGETS
        message = f"none of {len(targets)} targets is ready"
    else:
        ready, reason = True, REASON_TARGETS_READY
        message = f"{summary} targets ready"
    new_conds = [condition(COND_READY, ready, reason, message, gen)]
    old_conds = old_status.get("conditions")
    mixed = mixed_tenant_access(policy)
    if mixed is not None:
        new_conds.append(
            condition(COND_MIXED_TENANT_ACCESS, True, REASON_KEYED_AND_OPEN, mixed, gen)
        )
    entry, problem = policy_classifier(policy, ctx.configmaps)
    if policy.spec.classifier.type == "Learned":
        new_conds.append(_classifier_condition(entry, problem, gen))
    else:  # back to the heuristic: the Learned classifier's condition no longer applies
        old_conds = [c for c in old_conds or [] if c.get("type") != COND_CLASSIFIER_READY]
    conds = merge_conditions(old_conds, new_conds, now)
    if mixed is None:  # ours, and no longer true: dropped rather than left stale
        conds = [c for c in conds if c.get("type") != COND_MIXED_TENANT_ACCESS]
    live: dict[str, Any] = {"type": "Heuristic"}
    if entry is not None:
        live = {
            "type": "Learned",
            "version": entry.version,
            "threshold": entry.threshold,
            "expectedStrongShare": entry.expectedStrongShare,
        }
    out: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conds,
        "endpoint": policy.spec.endpoint or obj_name(policy),
        "targets": targets,
        "readyTargets": summary,
        "classifier": {k: v for k, v in live.items() if v is not None},
    }
    for k in ("requests", "fallbacks", "spendUSD"):
        if ctx.traffic and ctx.traffic.get(k) is not None:
            out[k] = ctx.traffic[k]
    if policy.spec.classifier.shadow is None:
        out["shadow"] = None  # removed with the candidate
    elif ctx.traffic and ctx.traffic.get("shadow") is not None:
        out["shadow"] = ctx.traffic["shadow"]
    return out


# --------------------------------------------------------------------------- diffing


def status_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The merge patch that makes ``current`` carry ``desired`` (owned fields only), or
    None when nothing changes. None values in ``desired`` remove the field; nested maps
    are diffed so keys we no longer set are removed too."""
    current = current or {}
    patch: dict[str, Any] = {}
    for k, v in desired.items():
        o = current.get(k)
        if v is None:
            if o is not None:
                patch[k] = None
        elif isinstance(o, Mapping) and isinstance(v, Mapping):
            sub = merge_diff(o, v)
            if sub:
                patch[k] = sub
        elif o != v:
            patch[k] = v
    return patch or None
