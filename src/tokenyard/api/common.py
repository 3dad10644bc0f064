"""Shared API types: the base model, Conditions, references and CRD-schema markers.

Imported by every resource module in ``tokenyard.api``; nothing here talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


def validation_problems(err: ValidationError) -> list[str]:
    """Each problem of a validation error as ``field.path: message``, for the messages
    that name the fields a user has to fix (conditions, manifests, scenario files)."""
    return [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()]


GROUP = "tokenyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Label and annotation keys the operator puts on what it creates.
LABEL_POOL = "tokenyard.dev/pool"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL = "tokenyard.dev/model"
ANNOTATION_SPEC_HASH = "tokenyard.dev/spec-hash"

# Condition types and reasons (CamelCase, as Kubernetes conventions ask).
COND_READY = "Ready"
COND_METRICS_AVAILABLE = "MetricsAvailable"
COND_CAPPED = "Capped"
# A RoutingPolicy with tenant API keys that still serves callers without one (a warning,
# present only while it holds).
COND_MIXED_TENANT_ACCESS = "MixedTenantAccess"
REASON_KEYED_AND_OPEN = "KeyedAndOpen"

REASON_VALIDATION_FAILED = "ValidationFailed"
REASON_POOL_NOT_FOUND = "PoolNotFound"
REASON_ACCELERATOR_NOT_FOUND = "AcceleratorNotFound"
REASON_GPU_LIMIT_EXCEEDED = "GPULimitExceeded"
REASON_RAYSERVICE_CRD_MISSING = "RayServiceCRDMissing"
REASON_DEPLOYING = "Deploying"
REASON_RUNNING = "Running"
REASON_UNHEALTHY = "Unhealthy"
REASON_EXTERNAL_PROVIDER = "ExternalProvider"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_CLAIM_NOT_FOUND = "ClaimNotFound"
REASON_TARGET_NOT_FOUND = "TargetNotFound"
REASON_NO_READY_TARGETS = "NoReadyTargets"
REASON_TARGETS_READY = "TargetsReady"
REASON_RECONCILED = "Reconciled"
REASON_METRICS_UNAVAILABLE = "MetricsUnavailable"
REASON_BUDGET_CAPPED = "BudgetCapped"
REASON_GPU_CAPPED = "GPUCapped"
REASON_NOT_CAPPED = "NotCapped"
# A Learned classifier (or a shadow candidate) whose ConfigMap artifact cannot be used.
REASON_ARTIFACT_UNAVAILABLE = "ArtifactUnavailable"


class ApiModel(BaseModel):
    """Base of every API type: camelCase field names as written, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_assignment=False,
    )

    def dump(self) -> dict[str, Any]:
        """The object as it is written in YAML, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra that becomes ``x-kubernetes-validations`` in the CRD."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def list_map(*keys: str) -> dict[str, Any]:
    """JSON-schema extra for a list the API server treats as a map keyed by ``keys``."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def require(ok: bool, message: str) -> None:
    """Raise the message of a CEL rule that pydantic enforces too (offline validation)."""
    if not ok:
        raise ValueError(message)


def require_unique(values: Iterable[object], field: str) -> None:
    """Reject duplicates the API server rejects in a list-map or set list."""
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field}: duplicate value {value!r}")
        seen.add(value)


PRESERVE_UNKNOWN: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
QUALIFIED_NAME = rf"^({_PREFIX})?{_NAME}$"
"""A label or taint key (core/v1): an optional DNS-subdomain prefix and '/', then a name
of at most 63 letters, digits, '-', '_' and '.', beginning and ending with a letter or
digit."""
TAINT_KEY = rf"^(({_PREFIX})?{_NAME})?$"
"""A taint key: a qualified name, or empty (with operator Exists, every taint)."""
PREFIXED_NAME = rf"^{_PREFIX}{_NAME}$"
"""A qualified name with its domain prefix, as an extended resource's (nvidia.com/gpu)."""
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
"""A label value (core/v1): empty, or at most 63 letters, digits, '-', '_' and '.',
beginning and ending with a letter or digit."""
DATA_CLASS = r"^[a-z][a-z0-9-]{0,62}$"

DataClass = Annotated[str, Field(pattern=DATA_CLASS, max_length=63)]
"""A data class name such as public, internal, pii, pci or secret."""
TARGET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
"""A ModelDeployment name, or MODEL:ADAPTER for one of its LoRA adapters."""
ModelName = Annotated[str, Field(pattern=TARGET_NAME, max_length=127)]
"""The name of a ModelDeployment in the same namespace, or MODEL:ADAPTER for one of its
spec.inCluster.loraAdapters."""


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(max_length=316)
    """type of the condition, in CamelCase, for example Ready."""
    status: Literal["True", "False", "Unknown"]
    """status of the condition: True, False or Unknown."""
    reason: str = Field(default="", max_length=1024)
    """reason is a CamelCase word saying why the condition has this status."""
    message: str = Field(default="", max_length=32768)
    """message is a human-readable explanation, naming the field at fault if any."""
    observedGeneration: int | None = Field(default=None, ge=0)
    """observedGeneration is the metadata.generation the condition was computed from."""
    lastTransitionTime: str | None = None
    """lastTransitionTime is when status last changed (RFC 3339)."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """name of the Secret, in the same namespace as the object that refers to it."""
    key: str = Field(min_length=1, max_length=253)
    """key inside the Secret's data."""


# The API server's own rules for a Pod's tolerations (core/v1 validation): KubeRay copies
# these into the Ray worker pods, where a broken one would fail only at the first scale-up.
RULE_TOLERATION_EMPTY_KEY = (
    "(has(self.key) && size(self.key) > 0) || (has(self.operator) && self.operator == 'Exists')",
    "operator must be Exists when key is empty (a toleration of every taint)",
)
RULE_TOLERATION_EXISTS_NO_VALUE = (
    "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || size(self.value) == 0",
    "value must be empty when operator is Exists",
)
RULE_TOLERATION_SECONDS_NO_EXECUTE = (
    "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
    "effect must be NoExecute when tolerationSeconds is set",
)


class Toleration(ApiModel):
    """A pod toleration, as in core/v1 Toleration."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(
            RULE_TOLERATION_EMPTY_KEY,
            RULE_TOLERATION_EXISTS_NO_VALUE,
            RULE_TOLERATION_SECONDS_NO_EXECUTE,
        )
    }

    key: str | None = Field(default=None, pattern=TAINT_KEY, max_length=317)
    """key is the taint key the toleration applies to (a label key such as
    nvidia.com/gpu); empty, with operator Exists, matches all keys."""
    operator: Literal["Exists", "Equal"] | None = None
    """operator is Exists or Equal (default Equal)."""
    value: str | None = Field(default=None, pattern=LABEL_VALUE, max_length=63)
    """value the taint must have when operator is Equal (a label value); empty with
    Exists."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """effect of the taint to tolerate; empty matches all effects."""
    tolerationSeconds: int | None = None
    """tolerationSeconds bounds how long a NoExecute taint is tolerated (effect must be
    NoExecute)."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(bool(self.key) or self.operator == "Exists", RULE_TOLERATION_EMPTY_KEY[1])
        require(self.operator != "Exists" or not self.value, RULE_TOLERATION_EXISTS_NO_VALUE[1])
        require(
            self.tolerationSeconds is None or self.effect == "NoExecute",
            RULE_TOLERATION_SECONDS_NO_EXECUTE[1],
        )
        return self
