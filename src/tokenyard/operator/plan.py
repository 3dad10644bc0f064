"""Decide, then act: compare a desired child with the existing one and say what to do.

Pure; called by the reconciler before it touches the API. Only fields tokenyard owns
are compared: the spec (through the spec-hash annotation, because the API server and
KubeRay's webhook default fields we never set), our labels, our annotation and the
owner reference. KubeRay's status and any label, annotation or finalizer others add
are never looked at, so the operator never fights KubeRay over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenyard.api.common import ANNOTATION_SPEC_HASH, LABEL_MANAGED_BY, LABEL_POOL
from tokenyard.operator.builders import MANAGED_BY

_MISSING = object()


def merge_diff(old: Any, new: Any) -> Any:
    """An RFC 7386 merge patch turning ``old`` into ``new``: maps are diffed key by key
    (removed keys become null), anything else (lists included) is replaced whole.
    Equal maps give an empty dict."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for k, v in new.items():
        o = old.get(k, _MISSING)
        if o is _MISSING:
            patch[k] = v
        elif isinstance(o, Mapping) and isinstance(v, Mapping):
            sub = merge_diff(o, v)
            if sub:
                patch[k] = sub
        elif o != v:
            patch[k] = v
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


@dataclass(frozen=True)
class Create:
    """The child does not exist: create this body."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """The child exists but is out of date: apply this merge patch."""

    patch: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Noop:
    """The child is up to date."""


@dataclass(frozen=True)
class Conflict:
    """An object of the child's name exists but tokenyard does not manage it."""

    message: str


Action = Create | Update | Noop | Conflict


def is_managed(existing: Mapping[str, Any], pool_name: str) -> bool:
    """Ours if it carries our managed-by and pool labels (restarts, other replicas and a
    re-created pool all find their RayService this way)."""
    labels = (existing.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_POOL) == pool_name)


def plan(desired: Mapping[str, Any], existing: Mapping[str, Any] | None) -> Action:
    """Create, Update (with the merge patch), Noop, or Conflict for one child object."""
    if existing is None:
        return Create(dict(desired))
    dmeta: Mapping[str, Any] = desired.get("metadata") or {}
    emeta: Mapping[str, Any] = existing.get("metadata") or {}
    pool_name = str((dmeta.get("labels") or {}).get(LABEL_POOL, ""))
    if not is_managed(existing, pool_name):
        return Conflict(
            f"{existing.get('kind', 'object')} {emeta.get('name')!r} exists but is not "
            f"managed by tokenyard (no {LABEL_MANAGED_BY}={MANAGED_BY}, "
            f"{LABEL_POOL}={pool_name} labels); delete or rename it"
        )

    reasons: list[str] = []
    meta_patch: dict[str, Any] = {}
    want_hash = (dmeta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
    have_hash = (emeta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
    if want_hash != have_hash:
        reasons.append(f"spec-hash {have_hash} -> {want_hash}")
        meta_patch["annotations"] = {ANNOTATION_SPEC_HASH: want_hash}
    labels = {
        k: v
        for k, v in (dmeta.get("labels") or {}).items()
        if (emeta.get("labels") or {}).get(k) != v
    }
    if labels:
        reasons.append("labels")
        meta_patch["labels"] = labels
    want_owners = dmeta.get("ownerReferences") or []
    have_owners = emeta.get("ownerReferences") or []
    have_uids = {o.get("uid") for o in have_owners}
    if any(o.get("uid") not in have_uids for o in want_owners):
        reasons.append("ownerReferences")
        # Merge patches replace lists whole: keep owners others added.
        others = [o for o in have_owners if o.get("uid") not in {w.get("uid") for w in want_owners}]
        meta_patch["ownerReferences"] = [*others, *want_owners]
    if not reasons:
        return Noop()

    patch: dict[str, Any] = {}
    if meta_patch:
        patch["metadata"] = meta_patch
    if want_hash != have_hash:
        spec_patch = merge_diff(existing.get("spec") or {}, desired.get("spec") or {})
        if spec_patch:
            patch["spec"] = spec_patch
    return Update(patch=patch, reason=", ".join(reasons))
