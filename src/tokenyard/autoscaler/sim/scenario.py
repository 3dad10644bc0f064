"""The simulated pool and its workload: the :class:`Scenario` and each request's model.

Accelerator classes, model profiles and the simulation's knobs (from YAML or the
built-in scenario), and each request's model as a CheapestSufficient RoutingPolicy would
pick it (:func:`route`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenyard.api.common import validation_problems
from tokenyard.api.model import AutoscalingSpec
from tokenyard.autoscaler.sim.trace import TraceRequest


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcceleratorProfile(_Model):
    """One accelerator class of the simulated pool."""

    name: str
    maxGPUs: int = Field(ge=0)
    hourlyCostPerGPU: float = Field(ge=0)


class ModelProfile(_Model):
    """One model: its quality, where it runs, how fast one replica is, how it scales."""

    name: str
    description: str = ""
    quality: float = Field(ge=0, le=1)
    accelerator: str
    gpusPerReplica: int = Field(default=1, ge=1)
    prefillTokensPerSecond: float = Field(gt=0)
    """Prompt tokens one replica prefills per second (all sequences together)."""
    decodeTokensPerSecond: float = Field(gt=0)
    """Tokens each sequence generates per second."""
    kvCacheTokens: int = Field(gt=0)
    """Tokens of KV cache one replica holds."""
    decodeSaturation: int = Field(default=16, ge=1)
    """Decoding sequences per replica that keep its GPU fully busy."""
    replicaRouting: Literal["PowerOfTwoChoices", "LeastQueuedTokens"] = "PowerOfTwoChoices"
    """How a request is sent to one of the model's replicas (the ModelDeployment's
    spec.inCluster.replicaRouting): the fewer requests of two random replicas (Serve's
    default), or the fewer prompt tokens queued by the router's estimate
    (:class:`~tokenyard.routing.replicas.PrefillQueues`). Prefix caching is not modelled,
    so PrefixCacheAffinity is not offered here."""
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)


class Scenario(_Model):
    """A pool, its models and the simulation's knobs."""

    name: str = "custom"
    description: str = ""
    accelerators: list[AcceleratorProfile]
    hourlyBudgetUSD: float | None = None
    models: list[ModelProfile] = Field(min_length=1)
    difficultyBeta: tuple[float, float] = (1.0, 3.0)
    """Beta(a, b) distribution of request difficulty in [0, 1]."""
    tickSeconds: float = Field(default=0.5, gt=0)
    decisionIntervalSeconds: float = Field(default=5.0, gt=0)
    hpaSyncSeconds: float = Field(default=15.0, gt=0)
    hpaScaleDownStabilizationSeconds: float = Field(default=300.0, ge=0)
    maxQueueSeconds: float = Field(default=60.0, gt=0)
    sloTarget: float = Field(default=0.99, gt=0, le=1)
    spillover: bool = True
    """Route as a RoutingPolicy with spec.spillover enabled (the default) would: a request
    whose model is expected to miss its TTFT SLO goes to the next better model expected to
    meet its own (the router's estimate, tokenyard.routing.spillover). Applies to every
    policy alike."""
    spilloverThreshold: float = Field(default=1.0, gt=0)
    downgradeWhenCapped: bool = False
    """Route as a policy with spec.spillover.downgradeWhenCapped would: a capped model
    (only tokenyard's allocation reports one) that would miss its SLO sends the request
    to the strongest weaker model with room. Counted per model as downgradedIn."""
    warmupSeconds: float = Field(default=600.0, ge=0)
    """Per-request traces: HPA-style and tokenyard first replay the trace's opening
    warmupSeconds, unmeasured, and start the measured trace in the state their own rules
    reach on that load (the static fleets start with their replicas). 0: they start
    cold at minReplicas."""
    replicaRefreshSeconds: float = Field(default=2.0, gt=0)
    """How often the router re-reads the replicas Ray Serve runs (its status watch)."""
    seed: int = 0


BUILTIN_SCENARIO: dict[str, Any] = {
    "name": "three-tier-code",
    "description": (
        "Economy 8B on one L4, standard 32B (AWQ) on one A100-80GB, frontier 70B (FP8) on "
        "two H100s; prefill rates are rough vLLM figures for 2k-token prompts; cold starts "
        "assume weights cached on the node; TTFT SLO 5 s (economy, standard), 8 s (frontier)."
    ),
    "accelerators": [
        {"name": "l4", "maxGPUs": 16, "hourlyCostPerGPU": 0.80},
        {"name": "a100", "maxGPUs": 8, "hourlyCostPerGPU": 1.80},
        {"name": "h100", "maxGPUs": 16, "hourlyCostPerGPU": 4.00},
    ],
    "hourlyBudgetUSD": 120.0,
    "models": [
        {
            "name": "economy-8b",
            "description": "Llama-3.1-8B-Instruct, 1x L4",
            "quality": 0.3,
            "accelerator": "l4",
            "gpusPerReplica": 1,
            "prefillTokensPerSecond": 8000,
            "decodeTokensPerSecond": 35,
            "kvCacheTokens": 60000,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 12,
                "targetOngoingRequests": 16,
                "targetKVCacheUsage": 0.8,
                "targetGPUUtilization": 0.7,
                "ttftSLOSeconds": 5,
                "coldStartSeconds": 30,
                "priority": 0,
            },
        },
        {
            "name": "standard-32b",
            "description": "Qwen2.5-32B-Instruct-AWQ, 1x A100-80GB",
            "quality": 0.6,
            "accelerator": "a100",
            "gpusPerReplica": 1,
            "prefillTokensPerSecond": 7000,
            "decodeTokensPerSecond": 30,
            "kvCacheTokens": 150000,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 8,
                "targetOngoingRequests": 16,
                "targetKVCacheUsage": 0.8,
                "targetGPUUtilization": 0.7,
                "ttftSLOSeconds": 5,
                "coldStartSeconds": 60,
                "priority": 10,
            },
        },
        {
            "name": "frontier-70b",
            "description": "Llama-3.1-70B-Instruct FP8, 2x H100 (tensor parallel 2)",
            "quality": 1.0,
            "accelerator": "h100",
            "gpusPerReplica": 2,
            "prefillTokensPerSecond": 9000,
            "decodeTokensPerSecond": 30,
            "kvCacheTokens": 150000,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 6,
                "targetOngoingRequests": 16,
                "targetKVCacheUsage": 0.8,
                "targetGPUUtilization": 0.7,
                "ttftSLOSeconds": 8,
                "coldStartSeconds": 120,
                "priority": 20,
            },
        },
    ],
    "difficultyBeta": [1.2, 2.0],
}


def builtin_scenario() -> Scenario:
    return Scenario.model_validate(BUILTIN_SCENARIO)


def load_scenario(path: str | None) -> Scenario:
    """The scenario in a YAML file (the built-in one for None). A file that cannot be
    read, is not YAML or does not describe a scenario is a ValueError naming the file
    and, for a scenario that does not validate, each field that is wrong."""
    if path is None:
        return builtin_scenario()
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"scenario {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"scenario {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ValueError(f"scenario {path}: not YAML ({problem}{at})") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"scenario {path}: expected a mapping of scenario fields (models, accelerators, "
            f"...), got {type(doc).__name__ if doc is not None else 'an empty file'}"
        )
    try:
        return Scenario.model_validate(doc)
    except ValidationError as exc:  # a mapping: every problem has a field path
        raise ValueError(f"scenario {path}: {'; '.join(validation_problems(exc))}") from None


def price_order(scenario: Scenario) -> list[int]:
    """The models' indices by price per token, cheapest first (CheapestSufficient's order)."""
    price = {a.name: a.hourlyCostPerGPU for a in scenario.accelerators}

    def per_token(m: ModelProfile) -> float:
        return m.gpusPerReplica * price[m.accelerator] / m.prefillTokensPerSecond

    return sorted(range(len(scenario.models)), key=lambda i: per_token(scenario.models[i]))


def fits_context(m: ModelProfile, r: TraceRequest) -> bool:
    """Whether the request's prompt and output fit the model's context: its engine's
    max_model_len, which vLLM holds to what one replica's KV cache holds
    (``kvCacheTokens``)."""
    return r.prompt + r.output <= m.kvCacheTokens


def route(scenario: Scenario, trace: Sequence[TraceRequest]) -> list[tuple[TraceRequest, int]]:
    """CheapestSufficient: each request to the cheapest model whose quality covers it,
    among the models whose context fits it (the router's hard filter; the best of those
    where none covers it). A request no model's context fits is refused (HTTP 413, as
    the router answers) and left out."""
    order = price_order(scenario)
    models = scenario.models
    best_first = sorted(range(len(models)), key=lambda i: -models[i].quality)
    rng = random.Random(scenario.seed)
    a, b = scenario.difficultyBeta
    out: list[tuple[TraceRequest, int]] = []
    for r in trace:
        d = rng.betavariate(a, b)
        target = next((i for i in order if models[i].quality >= d and fits_context(models[i], r)),
                      None)  # fmt: skip
        if target is None:
            target = next((i for i in best_first if fits_context(models[i], r)), None)
        if target is not None:
            out.append((r, target))
    return out


__all__ = [
    "BUILTIN_SCENARIO",
    "AcceleratorProfile",
    "ModelProfile",
    "Scenario",
    "builtin_scenario",
    "fits_context",
    "load_scenario",
    "price_order",
    "route",
]
