"""tokenyard's custom resources as pydantic models: the one source of truth for the CRDs.

Nothing here imports kopf or a Kubernetes client; the operator, router, autoscaler and
CLI all read and write resources through these types.
"""

from tokenyard.api.common import (
    API_VERSION,
    GROUP,
    VERSION,
    ApiModel,
    Condition,
    SecretKeyRef,
)
from tokenyard.api.model import (
    TIER_QUALITY,
    AutoscalingSpec,
    EngineSpec,
    ExternalSpec,
    InClusterSpec,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    TokenPrice,
)
from tokenyard.api.policy import (
    Budget,
    Match,
    RateLimit,
    RoutingPolicy,
    RoutingPolicySpec,
    RoutingPolicyStatus,
    Rule,
    Target,
)
from tokenyard.api.pool import AcceleratorClass, ServingPool, ServingPoolSpec, ServingPoolStatus

RESOURCES = (ServingPool, ModelDeployment, RoutingPolicy)

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "TIER_QUALITY",
    "VERSION",
    "AcceleratorClass",
    "ApiModel",
    "AutoscalingSpec",
    "Budget",
    "Condition",
    "EngineSpec",
    "ExternalSpec",
    "InClusterSpec",
    "Match",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "RateLimit",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "RoutingPolicyStatus",
    "Rule",
    "SecretKeyRef",
    "ServingPool",
    "ServingPoolSpec",
    "ServingPoolStatus",
    "Target",
    "TokenPrice",
]
