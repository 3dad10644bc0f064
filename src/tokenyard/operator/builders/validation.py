"""The CRDs' CEL rules, checked in Python by the operator's parse step and `tokenyard render`.

For API servers that do not run them (the kmock emulator, an older CRD); and what CEL
cannot check (the keys of ``engine.extraArgs``, a free-form object), for every server.
Also the keys of an accelerator class's ``nodeSelector`` (a map's keys: a CEL rule over
them has no bounded cost), and the pool's name as KubeRay requires it of the
RayService's: a CEL rule on
``metadata.name`` would be evaluated on every later update of an object created before
it, and a pool already holding such a name could then not even shed its finalizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tokenyard.api.common import QUALIFIED_NAME
from tokenyard.api.model import ModelDeploymentSpec
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.contract import ENGINE_ARGS_SET_BY_FIELDS, ENGINE_ARGS_UNSUPPORTED
from tokenyard.operator.builders.meta import ray_service_name_problem

_QUALIFIED_NAME = re.compile(QUALIFIED_NAME)


@dataclass(frozen=True)
class FieldProblem:
    """An invalid field: the path as kubectl explain spells it, and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def model_semantic_problems(spec: ModelDeploymentSpec) -> list[FieldProblem]:
    """The CRD's CEL rules for ModelDeployment, for API servers that do not run them
    (the kmock emulator, an older CRD) and for `tokenyard render`."""
    out: list[FieldProblem] = []
    if (spec.inCluster is None) == (spec.external is None):
        out.append(FieldProblem("spec", "exactly one of inCluster or external must be set"))
    if spec.inCluster is not None and spec.pool is None:
        out.append(FieldProblem("spec.pool", "pool is required for inCluster models"))
    a = spec.autoscaling
    if a.minReplicas > a.maxReplicas:
        out.append(
            FieldProblem(
                "spec.autoscaling.minReplicas",
                f"minReplicas ({a.minReplicas}) must be <= maxReplicas ({a.maxReplicas})",
            )
        )
    elif (
        spec.replicas is not None
        and spec.inCluster is not None
        and a.mode == "Tokenyard"
        and not a.minReplicas <= spec.replicas <= a.maxReplicas
    ):
        out.append(
            FieldProblem(
                "spec.replicas",
                f"replicas ({spec.replicas}) must lie within autoscaling.minReplicas "
                f"({a.minReplicas}) and maxReplicas ({a.maxReplicas})",
            )
        )
    return out + _extra_args_problems(spec)


def _extra_args_problems(spec: ModelDeploymentSpec) -> list[FieldProblem]:
    """engine.extraArgs that a field sets, or that change what a replica is. The API
    server cannot check them (CEL does not see the keys of a free-form object), so the
    operator reports them as an invalid spec, naming the field to use instead."""
    if spec.inCluster is None:
        return []
    out: list[FieldProblem] = []
    for key in sorted(spec.inCluster.engine.extraArgs):
        where = f"spec.inCluster.engine.extraArgs.{key}"
        if key in ENGINE_ARGS_SET_BY_FIELDS:
            out.append(FieldProblem(where, f"set by {ENGINE_ARGS_SET_BY_FIELDS[key]}; use it"))
        elif key in ENGINE_ARGS_UNSUPPORTED:
            out.append(FieldProblem(where, f"not supported: {ENGINE_ARGS_UNSUPPORTED[key]}"))
    return out


def pool_semantic_problems(pool: ServingPool) -> list[FieldProblem]:
    """The CRD's CEL rules for ServingPool (see :func:`model_semantic_problems`), and the
    pool's name as its RayService's (:func:`~.meta.ray_service_name_problem`)."""
    out: list[FieldProblem] = []
    name = pool.metadata.get("name")
    name_problem = ray_service_name_problem(str(name)) if name else None
    if name_problem is not None:
        out.append(FieldProblem("metadata.name", name_problem))
    spec = pool.spec
    if spec.router.minReplicas > spec.router.maxReplicas:
        out.append(
            FieldProblem(
                "spec.router.minReplicas", "router.minReplicas must be <= router.maxReplicas"
            )
        )
    seen: set[str] = set()
    for i, acc in enumerate(spec.accelerators):
        for key in sorted(acc.nodeSelector):
            if not _QUALIFIED_NAME.match(key) or len(key.rpartition("/")[0]) > 253:
                out.append(
                    FieldProblem(
                        f"spec.accelerators[{i}].nodeSelector",
                        f"{key!r} is not a label key (an optional DNS-subdomain prefix and "
                        "'/', then at most 63 letters, digits, '-', '_' and '.', beginning "
                        "and ending with a letter or digit); the worker pods would be refused",
                    )
                )
        if acc.name in seen:
            out.append(FieldProblem(f"spec.accelerators[{i}].name", f"duplicate name {acc.name!r}"))
        seen.add(acc.name)
        if acc.gpusPerNode == 0 and acc.maxWorkers is None:
            out.append(
                FieldProblem(
                    f"spec.accelerators[{i}].maxWorkers",
                    "maxWorkers is required when gpusPerNode is 0 (a CPU-only class)",
                )
            )
    return out


def policy_semantic_problems(policy: RoutingPolicy) -> list[FieldProblem]:
    """The CRD's CEL rules for RoutingPolicy (see :func:`model_semantic_problems`)."""
    out: list[FieldProblem] = []
    spec = policy.spec
    targets = [t.model for t in spec.targets]
    for i, t in enumerate(targets):
        if t in targets[:i]:
            out.append(FieldProblem(f"spec.targets[{i}].model", f"duplicate target {t!r}"))
    rule_names: set[str] = set()
    for i, rule in enumerate(spec.rules):
        if rule.name in rule_names:
            out.append(FieldProblem(f"spec.rules[{i}].name", f"duplicate rule name {rule.name!r}"))
        rule_names.add(rule.name)
        for j, t in enumerate(rule.targets):
            if t not in targets:
                out.append(
                    FieldProblem(
                        f"spec.rules[{i}].targets[{j}]",
                        f"{t!r} is not a model in spec.targets",
                    )
                )
    if spec.strategy == "Weighted" and not any((t.weight or 0) > 0 for t in spec.targets):
        out.append(
            FieldProblem(
                "spec.targets", "the Weighted strategy needs at least one target with weight > 0"
            )
        )
    return out
