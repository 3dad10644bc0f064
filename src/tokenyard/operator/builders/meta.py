"""What every builder shares: names, labels and owners of children, and known Secrets."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from typing import Any

from tokenyard.api.common import API_VERSION, LABEL_MANAGED_BY, LABEL_POOL, SecretKeyRef
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool

RAY_API_VERSION = "ray.io/v1"
RAY_SERVICE_KIND = "RayService"
RAY_SERVICE_PLURAL = "rayservices"
MANAGED_BY = "tokenyard"

Secrets = Mapping[str, Collection[str]]
"""Secrets known to exist in the namespace: Secret name -> its data keys."""


RAY_SERVICE_NAME_MAX = 47
"""KubeRay refuses to reconcile a RayService whose name is longer (ValidateRayServiceMetadata:
its RayCluster takes the name plus six characters, and that cluster's longest Service
suffix, ``-serve-svc``, must still fit a 63-character DNS label)."""
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def ray_service_name(pool_name: str) -> str:
    """The RayService of a pool has the pool's name (KubeRay derives its Services from it)."""
    return pool_name


def ray_service_name_problem(pool_name: str) -> str | None:
    """Why KubeRay would refuse a pool's name as its RayService's, or None. The API server
    accepts any DNS subdomain as the pool's name; KubeRay then leaves such a RayService
    unreconciled (an InvalidRayServiceMetadata Event on it, and the pool never ready)."""
    if len(pool_name) > RAY_SERVICE_NAME_MAX:
        return (
            f"at most {RAY_SERVICE_NAME_MAX} characters ({len(pool_name)} given): the pool's "
            "RayService has its name, and KubeRay refuses a longer one"
        )
    if not _DNS_1035_LABEL.match(pool_name):
        return (
            "must start with a letter and hold only lower-case letters, digits and '-' (a "
            "DNS-1035 label): the pool's RayService has its name, and KubeRay refuses others"
        )
    return None


def obj_name(obj: ServingPool | ModelDeployment | RoutingPolicy) -> str:
    return str(obj.metadata.get("name", ""))


def obj_namespace(
    obj: ServingPool | ModelDeployment | RoutingPolicy, default: str = "default"
) -> str:
    ns = obj.metadata.get("namespace")
    return str(ns) if ns else default


def obj_generation(obj: ServingPool | ModelDeployment | RoutingPolicy) -> int | None:
    gen = obj.metadata.get("generation")
    return gen if isinstance(gen, int) else None


def pool_labels(pool_name: str) -> dict[str, str]:
    """Labels on everything the operator creates for a pool (and on its Ray pods)."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_POOL: pool_name}


def volume_name_for_claim(claim: str) -> str:
    """A DNS-label volume name for a PVC (claims may be longer or contain dots)."""
    base = "pvc-" + re.sub(r"[^a-z0-9-]", "-", claim.lower())
    if len(base) <= 63:
        return base.rstrip("-") or "pvc"
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-')}-{digest}"


def owner_references(pool: ServingPool) -> list[dict[str, Any]]:
    """The pool owns its RayService, so deleting the pool garbage-collects it.

    No uid (kmock, `tokenyard render`) means no reference: the API server rejects one
    without a uid. blockOwnerDeletion stays unset, which spares the operator the
    servingpools/finalizers permission that admission would otherwise demand.
    """
    uid = pool.metadata.get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": ServingPool.KIND,
            "name": obj_name(pool),
            "uid": str(uid),
            "controller": True,
        }
    ]


def secret_missing(ref: SecretKeyRef | None, secrets: Secrets | None) -> bool:
    """True when ``ref`` names a Secret key known to be absent (None: nothing known)."""
    if ref is None or secrets is None:
        return False
    keys = secrets.get(ref.name)
    return keys is None or ref.key not in keys


def secret_message(ref: SecretKeyRef, field_path: str, secrets: Secrets | None) -> str:
    if secrets is not None and ref.name in secrets:
        return f"{field_path}: Secret {ref.name!r} has no key {ref.key!r}"
    return f"{field_path}: Secret {ref.name!r} not found"
