"""One reconcile pass over a ServingPool: its RayService, state claim and every status.

:meth:`tokenyard.operator.controller.Controller.process` runs :func:`reconcile_pool` for
a pool key: read the pool, its members and its policies' targets from the store, render
with the pure builders, create or patch the RayService as :mod:`~tokenyard.operator.plan`
decides, then write every status that changed. Idempotent: a pass run twice acts once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tokenyard import contract
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator import builders, plan, status, traffic
from tokenyard.operator.kube import (
    CLAIMS,
    MODELS,
    POLICIES,
    POOLS,
    RAY_SERVICES,
    Conflict,
    NotFound,
)
from tokenyard.operator.parsing import Parsed, parse
from tokenyard.operator.store import Body

if TYPE_CHECKING:
    from tokenyard.operator.controller import Controller


@dataclass(frozen=True)
class Members:
    """What a pool's pass reads: its valid models and policies, with their bodies, and
    the policies' targets outside the pool."""

    bodies: list[Body]
    """Every ModelDeployment naming the pool, valid or not."""
    models: list[tuple[Body, ModelDeployment]]
    policies: list[tuple[Body, RoutingPolicy]]
    targets: dict[str, ModelDeployment]
    """Targets of the pool's policies that are not members (external models of other
    pools or of none; in-cluster models of other pools, shown as not served here)."""
    invalid: set[str]
    """Names of invalid ModelDeployments among members and targets."""
    rejected: list[tuple[Any, str, Body, Parsed]]
    """Invalid members and policies: reported (ValidationFailed) and skipped, never
    disturbing the rest."""

    @property
    def all_models(self) -> list[ModelDeployment]:
        return [m for _, m in self.models] + list(self.targets.values())


@dataclass(frozen=True)
class Applied:
    """The RayService as the pass left it, and why it may not be what was rendered."""

    existing: dict[str, Any] | None
    crd_missing: bool
    conflict: str | None


async def reconcile_pool(ctrl: Controller, ns: str, name: str) -> None:
    """One pass over the pool ``ns/name`` (deleted: its members become orphans)."""
    body = ctrl.store.pool(ns, name)
    if body is None:
        # Deleted: the API server garbage-collects the RayService (owner reference);
        # the pool's members are now orphans.
        ctrl.enqueue_namespace(ns, 0.0)
        return
    now = ctrl.timestamp()
    parsed = parse(ServingPool, body)
    if parsed.obj is None:
        await ctrl.report_invalid(POOLS, "ServingPool", body, parsed)
        return
    pool: ServingPool = parsed.obj
    members = await _members(ctrl, ns, name)
    secret_names = [
        m.spec.external.apiKeySecretRef.name
        for m in members.all_models
        if m.spec.external is not None and m.spec.external.apiKeySecretRef is not None
    ] + [
        p.spec.tenants.apiKeysSecretRef.name
        for _, p in members.policies
        if p.spec.tenants.apiKeysSecretRef is not None
    ]
    secrets = await ctrl.secret_keys(secret_names, ns)
    configmaps = await ctrl.configmap_data(
        [
            p.spec.classifier.artifactRef.name
            for _, p in members.policies
            if p.spec.classifier.type == "Learned" and p.spec.classifier.artifactRef is not None
        ]
        + [
            p.spec.classifier.shadow.name
            for _, p in members.policies
            if p.spec.classifier.shadow is not None
        ],
        ns,
    )
    claims = await ctrl.claims_present(
        [c for m in members.all_models for _, c in builders.pvc_sources(m)], ns
    )
    render = builders.render_pool(
        pool,
        members.all_models,
        [p for _, p in members.policies],
        secrets=secrets,
        settings=ctrl.settings,
        configmaps=configmaps,
        claims=claims,
    )
    applied = await _apply_ray_service(ctrl, ns, body, render)
    observed = status.observe_ray_service(applied.existing)
    router_stats = await _router_stats(ctrl, ns, name, observed)
    if applied.crd_missing:
        ctrl.recheck_crd()  # look again next pass
        ctrl.enqueue_pool(ns, name, ctrl.settings.retry_delay_s)
    # Statuses: members and policies (concurrently: a pool of 50 models would
    # otherwise wait 50 round trips), then the pool.
    await ctrl.bounded(
        _member_writes(
            ctrl, pool, members, render, observed, applied, secrets, router_stats, now, configmaps
        )
    )
    await _write_pool_status(ctrl, body, pool, members, render, observed, applied, now)


async def _members(ctrl: Controller, ns: str, name: str) -> Members:
    member_bodies = ctrl.store.models_of_pool(ns, name)
    policy_bodies = ctrl.store.policies_of_pool(ns, name)
    # Invalid members and policies are reported and skipped, never disturbing the rest.
    rejected: list[tuple[Any, str, Body, Parsed]] = []
    members: list[tuple[Body, ModelDeployment]] = []
    for b in member_bodies:
        p = parse(ModelDeployment, b)
        if p.obj is not None:
            members.append((b, p.obj))
        else:
            rejected.append((MODELS, "ModelDeployment", b, p))
    policies: list[tuple[Body, RoutingPolicy]] = []
    for b in policy_bodies:
        p = parse(RoutingPolicy, b)
        if p.obj is not None:
            policies.append((b, p.obj))
        else:
            rejected.append((POLICIES, "RoutingPolicy", b, p))

    # Targets of the pool's policies that are not members (external models of other
    # pools or of none; in-cluster models of other pools, shown as not served here).
    member_names = {builders.obj_name(m) for _, m in members}
    invalid_models = {
        str((b.get("metadata") or {}).get("name")) for b in member_bodies
    } - member_names
    targets: dict[str, ModelDeployment] = {}
    for _, pol in policies:
        for t in pol.spec.targets:
            name = contract.split_target(t.model)[0]
            if name in member_names or name in targets or name in invalid_models:
                continue
            await ctrl.collect_target(ns, name, targets, invalid_models)
    return Members(member_bodies, members, policies, targets, invalid_models, rejected)


async def _apply_ray_service(
    ctrl: Controller, ns: str, body: Body, render: builders.PoolRender
) -> Applied:
    """Create or patch the pool's RayService (and its state claim) as rendered."""
    desired_rs = render.ray_service
    rs_name = desired_rs["metadata"]["name"]
    crd_missing = False
    conflict: str | None = None
    existing: dict[str, Any] | None
    try:
        existing = await ctrl.api.get(RAY_SERVICES, ns, rs_name)
    except NotFound:
        existing = None
    if existing is None and await ctrl.crd_missing():
        crd_missing = True
    else:
        existing, conflict = await _apply(ctrl, body, desired_rs, existing)
        if existing is None and conflict is None:
            crd_missing = True

    if existing is not None and render.state_claim is not None:
        await _ensure_claim(ctrl, body, render.state_claim)
    return Applied(existing, crd_missing, conflict)


# Positional, as reconcile_pool calls it; each argument is one input of the statuses.
def _member_writes(  # noqa: PLR0917
    ctrl: Controller,
    pool: ServingPool,
    members: Members,
    render: builders.PoolRender,
    observed: status.ObservedRayService | None,
    applied: Applied,
    secrets: dict[str, set[str]] | None,
    router_stats: dict[str, Any] | None,
    now: str,
    configmaps: builders.ConfigMaps | None = None,
) -> list[Callable[[], Awaitable[None]]]:
    """The status writes of the pool's models and policies (each made when it runs)."""
    writes: list[Callable[[], Awaitable[None]]] = [
        partial(ctrl.report_invalid, *args) for args in members.rejected
    ]
    for b, md in members.models:
        ctx = status.ModelContext(
            pool=pool,
            decision=render.admission.decisions.get(builders.obj_name(md)),
            observed=observed,
            crd_missing=applied.crd_missing,
            secrets=secrets,
        )
        desired = status.build_model_status(md, ctx, now=now)
        writes.append(partial(ctrl.write_status, MODELS, "ModelDeployment", b, desired))
    models_by_name = {builders.obj_name(m): m for m in members.all_models}
    for b, pol in members.policies:
        pctx = status.PolicyContext(
            pool=pool,
            models=models_by_name,
            invalid=members.invalid,
            admission=render.admission,
            observed=observed,
            crd_missing=applied.crd_missing,
            secrets=secrets,
            configmaps=configmaps,
            traffic=(
                traffic.traffic_fields(
                    router_stats,
                    pol.spec.endpoint or builders.obj_name(pol),
                    [t.model for t in pol.spec.targets],
                )
                or None
                if router_stats is not None
                else None
            ),
        )
        desired = status.build_policy_status(pol, pctx, now=now)
        writes.append(partial(_write_policy_status, ctrl, b, desired))
    return writes


def _classifier_condition(st: Any) -> tuple[Any, Any, Any] | None:
    for c in (st.get("conditions") if isinstance(st, dict) else None) or []:
        if c.get("type") == status.COND_CLASSIFIER_READY:
            return c.get("status"), c.get("reason"), c.get("message")
    return None


async def _write_policy_status(ctrl: Controller, body: Body, desired: dict[str, Any]) -> None:
    """The policy's status, and an Event when its learned classifier's delivery changes:
    a Warning naming the field when the artifact cannot be delivered (the policy keeps
    the heuristic), a Normal one when a version is delivered."""
    old = _classifier_condition(body.get("status"))
    await ctrl.write_status(POLICIES, "RoutingPolicy", body, desired)
    new = _classifier_condition(desired)
    if new is None or new == old:
        return
    st, reason, message = new
    if st == "True" and old is not None and old[0] == "True" and old[2] == message:
        return
    await ctrl.api.post_event(
        body, "Normal" if st == "True" else "Warning", str(reason), str(message)
    )


# Positional, as reconcile_pool calls it; each argument is one input of the pool's status.
async def _write_pool_status(  # noqa: PLR0917
    ctrl: Controller,
    body: Body,
    pool: ServingPool,
    members: Members,
    render: builders.PoolRender,
    observed: status.ObservedRayService | None,
    applied: Applied,
    now: str,
) -> None:
    excluded = [
        f"{n} ({d.reason})" for n, d in sorted(render.admission.decisions.items()) if not d.admitted
    ]
    pctx2 = status.PoolContext(
        admission=render.admission,
        members={str((b.get("metadata") or {}).get("name")) for b in members.bodies},
        policies={builders.obj_name(p) for _, p in members.policies},
        observed=observed if applied.existing is not None else None,
        crd_missing=applied.crd_missing,
        conflict=applied.conflict,
        excluded=excluded,
    )
    await ctrl.write_status(
        POOLS, "ServingPool", body, status.build_pool_status(pool, pctx2, now=now)
    )


async def _ensure_claim(ctrl: Controller, pool_body: Body, claim: dict[str, Any]) -> None:
    """Create the router's state claim if it does not exist; never patch it (a bound
    claim's spec is immutable, and resizing is the storage admin's call)."""
    ns, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
    try:
        await ctrl.api.get(CLAIMS, ns, name)
        return
    except NotFound:
        pass
    try:
        await ctrl.api.create(CLAIMS, ns, claim)
    except Conflict:
        return
    ctrl.log.info("created PersistentVolumeClaim %s/%s for the router's ledger", ns, name)
    await ctrl.api.post_event(
        pool_body, "Normal", "StateClaimCreated", f"created PersistentVolumeClaim {name}"
    )


async def _router_stats(
    ctrl: Controller, ns: str, pool: str, observed: status.ObservedRayService | None
) -> dict[str, Any] | None:
    """The router's traffic figures, only once KubeRay reports the router running
    (before that the Service has no endpoints and the call could only time out)."""
    if ctrl.stats_fetcher is None or observed is None:
        return None
    app = observed.app(contract.ROUTER_APP_NAME)
    if app is None or app.status != "RUNNING":
        return None
    return await ctrl.stats_fetcher(traffic.stats_url(pool, ns))


async def _apply(
    ctrl: Controller, pool_body: Body, desired: dict[str, Any], existing: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str | None]:
    """Create or patch the RayService as planned. Returns (the object as it now is,
    conflict message); (None, None) means the RayService resource is not served."""
    ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    for _ in range(2):
        action = plan.plan(desired, existing)
        if isinstance(action, plan.Noop):
            return existing, None
        if isinstance(action, plan.Conflict):
            ctrl.log.warning("ServingPool %s/%s: %s", ns, name, action.message)
            return existing, action.message
        if isinstance(action, plan.Create):
            try:
                created = await ctrl.api.create(RAY_SERVICES, ns, action.body)
            except Conflict:
                # Created by an earlier pass or another replica: look again, patch it.
                existing = await ctrl.api.get(RAY_SERVICES, ns, name)
                continue
            except NotFound:
                return None, None
            ctrl.stats.created += 1
            ctrl.log.info("created RayService %s/%s", ns, name)
            await ctrl.api.post_event(
                pool_body,
                "Normal",
                "RayServiceCreated",
                f"created RayService {name}",
            )
            return created, None
        assert isinstance(action, plan.Update)
        try:
            patched = await ctrl.api.patch(RAY_SERVICES, ns, name, action.patch)
        except NotFound:
            existing = None
            continue
        ctrl.stats.updated += 1
        ctrl.log.info("updated RayService %s/%s (%s)", ns, name, action.reason)
        return patched, None
    raise RuntimeError(f"RayService {ns}/{name} keeps changing under the operator")


__all__ = ["reconcile_pool"]
