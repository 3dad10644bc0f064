"""TTFT of a model's replicas from a queueing model, and the fewest replicas that meet its SLO.

:func:`~tokenyard.autoscaler.decide.recommend.recommend` sizes every model with it; the
loop and the simulator call that with the same arguments. Pure arithmetic.

The model (G/G/c, Allen-Cunneen with Kingman's exponential tail). Requests arrive at
``rate`` per second with squared coefficient of variation ``ca2`` (1 for Poisson); one
replica prefills ``tokens_per_s`` prompt tokens per second, so it serves
``mu = tokens_per_s / prompt`` requests per second, with squared coefficient of variation
``cs2`` (that of the prompt lengths). With ``n`` replicas the load is
``rho = rate / (n mu)``; a request waits with probability at most ``rho`` (the
probability of waiting of one pooled server, which bounds Erlang C for ``n`` separate
ones) and, given that it waits, for an approximately exponential time of mean
``(ca2 + cs2) / 2 / (n mu - rate)`` (the heavy-traffic waiting time of Kingman and
Allen-Cunneen). Its TTFT is that wait plus its own prefill, ``prompt / tokens_per_s``.
So::

    P(TTFT > slo) ~= rho * exp(-(slo - prompt / tokens_per_s) * (n mu - rate) * 2 / (ca2 + cs2))

Decode does not delay the first token (vLLM schedules prefill chunks beside decodes),
but sequences hold KV cache while they decode: when ``kv_tokens`` and
``decode_tokens_per_s`` of a replica are known, ``tokens_per_s`` is the smaller of the
prefill rate and what the KV cache admits (Little's law: ``kv_tokens / (prompt + output)``
sequences, each resident for its prefill and its decode). Where they are not (the live
loop), the measured KV-cache use is a guard instead.

In the live loop the inputs are vLLM's own counters: ``rate`` from
``vllm:request_success_total``, ``prompt`` and ``output`` from
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` per request, and the
replica's throughput profile from ``spec.inCluster.nominalTokensPerSecond``; the
prediction's TTFT is the quantity ``vllm:time_to_first_token_seconds`` measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """What a model is asked to serve, as measured."""

    rate: float
    """Requests per second."""
    prompt: float
    """Mean prompt tokens."""
    output: float = 0.0
    """Mean output tokens."""
    ca2: float = 1.0
    """Squared coefficient of variation of inter-arrival times (Poisson: 1)."""
    cs2: float = 1.0
    """Squared coefficient of variation of prompt lengths (hence prefill times)."""


@dataclass(frozen=True)
class ReplicaProfile:
    """What one replica serves."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None = None
    """Tokens per second per decoding sequence (None: KV cache not modelled)."""
    kv_tokens: float | None = None
    """Tokens of KV cache (None: not modelled; the measured use guards instead)."""

    def tokens_per_s(self, prompt: float, output: float) -> float:
        """Prompt tokens per second one replica serves at these means."""
        rate = self.prefill_tokens_per_s
        if self.kv_tokens and self.decode_tokens_per_s and prompt > 0:
            residency = prompt / self.prefill_tokens_per_s + output / self.decode_tokens_per_s
            rate = min(rate, self.kv_tokens / (prompt + output) / residency * prompt)
        return rate


@dataclass(frozen=True)
class Prediction:
    """What n replicas give the workload."""

    replicas: int
    utilisation: float
    miss: float
    """Predicted share of requests whose TTFT exceeds the SLO (1.0 when overloaded)."""
    mean_wait_s: float


def predict(w: Workload, profile: ReplicaProfile, n: int, slo_s: float) -> Prediction:
    """The predicted utilisation, SLO miss share and mean queueing wait with n replicas."""
    if w.rate <= 0:
        return Prediction(n, 0.0, 0.0, 0.0)
    if n <= 0:
        return Prediction(n, math.inf, 1.0, math.inf)
    prompt = max(w.prompt, 1.0)
    tokens = profile.tokens_per_s(prompt, w.output)
    mu = tokens / prompt
    rho = w.rate / (n * mu)
    own = prompt / profile.prefill_tokens_per_s
    if rho >= 1 or own >= slo_s:
        return Prediction(n, rho, 1.0, math.inf)
    var = max(w.ca2 + w.cs2, 1e-6) / 2
    spare = n * mu - w.rate
    miss = rho * math.exp(-(slo_s - own) * spare / var)
    return Prediction(n, rho, min(1.0, miss), rho * var / spare)


def replicas_for_slo(
    w: Workload, profile: ReplicaProfile, slo_s: float, miss_budget: float, limit: int
) -> int:
    """The fewest replicas (up to ``limit``) whose predicted miss share is within the
    budget; ``limit`` when none is."""
    if w.rate <= 0:
        return 0
    prompt = max(w.prompt, 1.0)
    # Start at the replicas that keep the load below one: fewer are overloaded.
    n = max(1, math.floor(w.rate * prompt / profile.tokens_per_s(prompt, w.output)))
    while n < limit and predict(w, profile, n, slo_s).miss > miss_budget:
        n += 1
    return min(n, max(limit, 1))


# Three-point Gauss-Hermite rule for a normal error: nodes 0 and +-sqrt(3) standard
# deviations, weights 2/3 and 1/6 each (exact for polynomials up to degree five).
_NODES = ((0.0, 2 / 3), (math.sqrt(3), 1 / 6), (-math.sqrt(3), 1 / 6))


def expected_miss(
    w: Workload, profile: ReplicaProfile, n: int, slo_s: float, sigma: float
) -> float:
    """The predicted miss share with n replicas averaged over the rate's uncertainty: the
    rate is the estimate times (1 + e), e normal with standard deviation ``sigma``
    (relative). Near saturation the miss share rises steeply with the rate, so the
    average weighs the plausible overloads without sizing for the worst of them."""
    if sigma <= 0:
        return predict(w, profile, n, slo_s).miss
    total = 0.0
    for z, weight in _NODES:
        scaled = Workload(max(0.0, w.rate * (1 + z * sigma)), w.prompt, w.output, w.ca2, w.cs2)
        total += weight * predict(scaled, profile, n, slo_s).miss
    return total


def replicas_for_expected_slo(  # noqa: PLR0917
    w: Workload,
    profile: ReplicaProfile,
    slo_s: float,
    miss_budget: float,
    limit: int,
    sigma: float,
) -> int:
    """The fewest replicas (up to ``limit``) whose :func:`expected_miss` is within the
    budget; ``limit`` when none is."""
    if w.rate <= 0:
        return 0
    n = replicas_for_slo(w, profile, slo_s, miss_budget, limit)
    while n < limit and expected_miss(w, profile, n, slo_s, sigma) > miss_budget:
        n += 1
    return min(n, max(limit, 1))


__all__ = [
    "Prediction",
    "ReplicaProfile",
    "Workload",
    "expected_miss",
    "predict",
    "replicas_for_expected_slo",
    "replicas_for_slo",
]
