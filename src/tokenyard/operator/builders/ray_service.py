"""A pool's whole render (:func:`render_pool`): its RayService, state claim and problems.

From the pool, its members and its policies; the problems are what `tokenyard render`
prints and the operator reports as conditions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenyard import contract
from tokenyard.api.common import (
    ANNOTATION_SPEC_HASH,
    REASON_POOL_NOT_FOUND,
    REASON_SECRET_NOT_FOUND,
)
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator.builders.admission import Admission, admit, in_cluster_members
from tokenyard.operator.builders.cluster import (
    build_head_group,
    build_state_claim,
    build_worker_group,
    ingress_env_vars,
    secret_env_vars,
)
from tokenyard.operator.builders.meta import (
    RAY_API_VERSION,
    RAY_SERVICE_KIND,
    Secrets,
    obj_name,
    obj_namespace,
    owner_references,
    pool_labels,
    ray_service_name,
    secret_message,
    secret_missing,
)
from tokenyard.operator.builders.serve_config import (
    ConfigMaps,
    build_serve_config,
    router_config,
    serve_config_text,
    spec_hash,
)
from tokenyard.settings import OperatorSettings


@dataclass(frozen=True)
class Problem:
    """Something `tokenyard render` reports and the operator turns into a condition."""

    kind: str
    name: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.reason}: {self.message}"


@dataclass(frozen=True)
class PoolRender:
    """Everything the operator derives from one pool's inputs."""

    ray_service: dict[str, Any]
    admission: Admission
    models: list[ModelDeployment]
    """In-cluster members that got an application (admitted), by name."""
    externals: list[ModelDeployment]
    """External models in the router's catalogue, by name."""
    policies: list[RoutingPolicy]
    """The pool's policies, by name."""
    problems: list[Problem] = field(default_factory=list)
    state_claim: dict[str, Any] | None = None
    """The PersistentVolumeClaim of the router's spend ledger (None when not persistent)."""


def _pool_policies(pool: ServingPool, policies: Iterable[RoutingPolicy]) -> list[RoutingPolicy]:
    name, ns = obj_name(pool), obj_namespace(pool)
    out = [p for p in policies if p.spec.pool == name and obj_namespace(p, ns) == ns]
    return sorted(out, key=obj_name)


def _catalogue_externals(
    pool: ServingPool, models: Iterable[ModelDeployment], policies: Sequence[RoutingPolicy]
) -> list[ModelDeployment]:
    """External models the pool's router must know: those in the pool and any external
    target of the pool's policies (an external model needs no GPUs, any router calls it)."""
    name, ns = obj_name(pool), obj_namespace(pool)
    wanted = {t.model for p in policies for t in p.spec.targets}
    out = [
        m
        for m in models
        if m.spec.external is not None
        and obj_namespace(m, ns) == ns
        and (m.spec.pool == name or obj_name(m) in wanted)
    ]
    return sorted(out, key=obj_name)


def _problems(
    members: Sequence[ModelDeployment],
    admission: Admission,
    externals: Sequence[ModelDeployment],
    policies: Sequence[RoutingPolicy],
    secrets: Secrets | None,
) -> list[Problem]:
    """Members admission left out, and external models and policies whose Secret is missing."""
    problems: list[Problem] = []
    for m in members:
        d = admission.decisions[obj_name(m)]
        if not d.admitted:
            problems.append(Problem(ModelDeployment.KIND, obj_name(m), d.reason, d.message))
    for m in externals:
        assert m.spec.external is not None
        ref = m.spec.external.apiKeySecretRef
        if ref is not None and secret_missing(ref, secrets):
            msg = secret_message(ref, "spec.external.apiKeySecretRef", secrets)
            problems.append(
                Problem(ModelDeployment.KIND, obj_name(m), REASON_SECRET_NOT_FOUND, msg)
            )
    for p in policies:
        ref = p.spec.tenants.apiKeysSecretRef
        if ref is not None and secret_missing(ref, secrets):
            msg = secret_message(ref, "spec.tenants.apiKeysSecretRef", secrets)
            problems.append(Problem(RoutingPolicy.KIND, obj_name(p), REASON_SECRET_NOT_FOUND, msg))
    return problems


def render_pool(
    pool: ServingPool,
    models: Iterable[ModelDeployment],
    policies: Iterable[RoutingPolicy],
    *,
    secrets: Secrets | None = None,
    settings: OperatorSettings | None = None,
    configmaps: ConfigMaps | None = None,
    claims: Collection[str] | None = None,
) -> PoolRender:
    """Render a pool's RayService and say which members got in and which did not.

    ``models`` and ``policies`` may hold more than the pool's members (for example a
    whole namespace); members are picked here. ``secrets`` None means "unknown":
    every referenced Secret is assumed present. ``configmaps`` holds the ConfigMaps that
    Learned classifiers name (None: none read, every policy gets the heuristic).
    ``claims`` names the PersistentVolumeClaims of the namespace that exist (None:
    unknown, every claim a model loads from assumed present).
    """
    settings = settings or OperatorSettings()
    models = list(models)
    name, ns = obj_name(pool), obj_namespace(pool)
    image = pool.spec.image or settings.default_ray_image
    admission = admit(pool, models, claims)
    members = in_cluster_members(pool, models)
    admitted = [m for m in members if admission.admitted(obj_name(m))]
    pol = _pool_policies(pool, policies)
    externals = _catalogue_externals(pool, models, pol)

    problems = _problems(members, admission, externals, pol, secrets)
    env = ingress_env_vars(pool) + secret_env_vars(externals, pol)
    router = router_config(pool, admitted, externals, pol, secrets, configmaps=configmaps)
    token = settings.admin_token
    token_sha256 = (
        contract.admin_token_sha256(token.get_secret_value()) if token is not None else None
    )
    serve = build_serve_config(pool, admitted, router, token_sha256)
    used = {m.spec.inCluster.accelerator for m in admitted if m.spec.inCluster is not None}
    groups = [
        build_worker_group(
            pool,
            acc,
            image,
            env,
            [m for m in admitted if m.spec.inCluster and m.spec.inCluster.accelerator == acc.name],
        )
        for acc in sorted(pool.spec.accelerators, key=lambda a: a.name)
        if acc.name in used
    ]
    spec: dict[str, Any] = {
        "serveConfigV2": serve_config_text(serve),
        "rayClusterConfig": {
            "rayVersion": pool.spec.rayVersion,
            "enableInTreeAutoscaling": True,
            "headGroupSpec": build_head_group(pool, image, env),
            "workerGroupSpecs": groups,
        },
    }
    metadata: dict[str, Any] = {
        "name": ray_service_name(name),
        "namespace": ns,
        "labels": pool_labels(name),
        "annotations": {ANNOTATION_SPEC_HASH: spec_hash(spec, serve)},
    }
    owners = owner_references(pool)
    if owners:
        metadata["ownerReferences"] = owners
    ray_service = {
        "apiVersion": RAY_API_VERSION,
        "kind": RAY_SERVICE_KIND,
        "metadata": metadata,
        "spec": spec,
    }
    return PoolRender(
        ray_service=ray_service,
        admission=admission,
        models=admitted,
        externals=externals,
        policies=pol,
        problems=problems,
        state_claim=build_state_claim(pool),
    )


def build_ray_service(
    pool: ServingPool,
    models: Iterable[ModelDeployment],
    policies: Iterable[RoutingPolicy],
    secrets: Secrets | None = None,
    settings: OperatorSettings | None = None,
) -> dict[str, Any]:
    """The RayService for a pool (see :func:`render_pool`)."""
    return render_pool(pool, models, policies, secrets=secrets, settings=settings).ray_service


def orphan_problems(
    pools: Iterable[ServingPool],
    models: Iterable[ModelDeployment],
    policies: Iterable[RoutingPolicy],
) -> list[Problem]:
    """Models and policies that name a pool that does not exist (in their namespace)."""
    known = {(obj_namespace(p), obj_name(p)) for p in pools}
    out: list[Problem] = []
    for m in models:
        pool = m.spec.pool
        if pool is not None and (obj_namespace(m), pool) not in known:
            out.append(
                Problem(
                    ModelDeployment.KIND,
                    obj_name(m),
                    REASON_POOL_NOT_FOUND,
                    f"spec.pool: ServingPool {pool!r} not found in namespace {obj_namespace(m)!r}",
                )
            )
    for p in policies:
        if (obj_namespace(p), p.spec.pool) not in known:
            out.append(
                Problem(
                    RoutingPolicy.KIND,
                    obj_name(p),
                    REASON_POOL_NOT_FOUND,
                    f"spec.pool: ServingPool {p.spec.pool!r} not found in namespace "
                    f"{obj_namespace(p)!r}",
                )
            )
    return out
