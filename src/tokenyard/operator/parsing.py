"""Raw bodies into API objects, as the reconciler and the handlers validate them.

:func:`parse` checks metadata and spec strictly (pydantic, then the rules the CRDs'
CEL enforces) and status leniently; an invalid body becomes a :class:`Parsed` with the
reason, which the caller reports as ``ValidationFailed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokenyard.api.common import validation_problems
from tokenyard.api.model import ModelDeployment, ModelDeploymentStatus
from tokenyard.api.policy import RoutingPolicy, RoutingPolicyStatus
from tokenyard.api.pool import ServingPool, ServingPoolStatus
from tokenyard.operator import builders
from tokenyard.operator.store import Body


@dataclass(frozen=True)
class Parsed:
    """A body parsed into its API type, or why it does not validate."""

    obj: Any | None
    error: str | None


_STATUS_TYPES: dict[str, type[Any]] = {
    ServingPool.KIND: ServingPoolStatus,
    ModelDeployment.KIND: ModelDeploymentStatus,
    RoutingPolicy.KIND: RoutingPolicyStatus,
}


def _format(err: ValidationError) -> str:
    return "; ".join(validation_problems(err))


def parse(cls: type[Any], body: Body) -> Parsed:
    """Validate metadata and spec strictly; status leniently (others write it too, and a
    field we do not know must never make the object look invalid)."""
    doc = {
        "apiVersion": body.get("apiVersion", f"{cls.model_fields['apiVersion'].default}"),
        "kind": body.get("kind", cls.KIND),
        "metadata": dict(body.get("metadata") or {}),
        "spec": body.get("spec"),
    }
    try:
        obj = cls.model_validate(doc)
    except ValidationError as e:
        return Parsed(None, _format(e))
    problems: list[builders.FieldProblem] = []
    if isinstance(obj, ModelDeployment):
        problems = builders.model_semantic_problems(obj.spec)
    elif isinstance(obj, ServingPool):
        problems = builders.pool_semantic_problems(obj)
    elif isinstance(obj, RoutingPolicy):
        problems = builders.policy_semantic_problems(obj)
    if problems:
        return Parsed(None, "; ".join(str(p) for p in problems))
    raw_status = body.get("status")
    if isinstance(raw_status, Mapping):
        st_cls = _STATUS_TYPES[cls.KIND]
        known = {k: v for k, v in raw_status.items() if k in st_cls.model_fields}
        try:
            obj.status = st_cls.model_validate(known)
        except ValidationError:
            obj.status = None
    return Parsed(obj, None)


__all__ = ["Parsed", "parse"]
