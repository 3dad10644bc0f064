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
Allen-Cunneen). Its TTFT is that wait plus its own prefill on one replica,
``s = prompt_i / prefill_tokens_per_s``, log-normal with the prompts' squared CV ``cs2``
around ``prompt / prefill_tokens_per_s`` (vLLM prefills a request on the replica that
serves it, whatever the model's other replicas do). So::

    P(TTFT > slo) ~= P(s > slo)
                     + E[rho * exp(-(slo - s) * (n mu - rate) * 2 / (ca2 + cs2)); s <= slo]

(the expectation over ``s`` by an eight-node Gauss-Hermite rule): a prompt too long to
prefill within the SLO misses however idle the replicas are, and a long prompt has less
room to wait. ``cs2 = 0`` gives the single own prefill of the mean prompt. The first
term is unavoidable (:func:`unavoidable_miss`): no replica count removes it, so the
sizing functions hold the miss budget to the rest, not to it.

The scale-down averages the miss share over the rate's error (:func:`expected_miss`);
a node of that error is a load the fleet meets for a horizon (until a decision can add a
replica), not forever, so it is scored by the transient of the same queue from an empty
start (:func:`horizon_miss`: a reflected Brownian motion whose stationary tail is
Kingman's), which is defined past saturation and tends to the stationary miss as the
horizon grows.

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
    unavoidable: float = 0.0
    """The part of ``miss`` no replica count removes: prompts too long to prefill within
    the SLO on an idle replica."""


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
    floor = _beyond(own, w.cs2, slo_s)
    if rho >= 1:
        return Prediction(n, rho, 1.0, math.inf, floor)
    var = max(w.ca2 + w.cs2, 1e-6) / 2
    spare = n * mu - w.rate
    miss = floor + _wait_miss(rho, spare / var, own, w.cs2, slo_s)
    return Prediction(n, rho, min(1.0, miss), rho * var / spare, floor)


def unavoidable_miss(w: Workload, profile: ReplicaProfile, slo_s: float) -> float:
    """The share of requests that miss the SLO on an idle replica (their own prefill is
    longer): what no replica count removes, so sizing leaves it out of the budget."""
    if w.rate <= 0:
        return 0.0
    return _beyond(max(w.prompt, 1.0) / profile.prefill_tokens_per_s, w.cs2, slo_s)


# Gauss-Hermite rule of eight nodes for a standard normal (nodes sqrt(2) x_k, weights
# w_k / sqrt(pi) of the physicists' rule): the own prefill's log-normal spread.
_GH8 = tuple(
    (math.sqrt(2) * x, wt / math.sqrt(math.pi))
    for x, wt in (
        (-2.930637420257244, 1.996040722113676e-04),
        (-1.981656756695843, 1.707798300741348e-02),
        (-1.157193712446780, 2.078023258148919e-01),
        (-0.381186990207322, 6.611470125582413e-01),
        (0.381186990207322, 6.611470125582413e-01),
        (1.157193712446780, 2.078023258148919e-01),
        (1.981656756695843, 1.707798300741348e-02),
        (2.930637420257244, 1.996040722113676e-04),
    )
)


def _beyond(own: float, cs2: float, slo_s: float) -> float:
    """P(own prefill > slo) for a log-normal own prefill of mean ``own`` and squared CV
    ``cs2`` (the prompts'); a step at the mean for ``cs2 = 0``."""
    if cs2 <= 1e-9:
        return 1.0 if own >= slo_s else 0.0
    s2 = math.log1p(cs2)
    return 0.5 * math.erfc((math.log(slo_s) - math.log(own) + s2 / 2) / math.sqrt(2 * s2))


def _wait_miss(rho: float, theta: float, own: float, cs2: float, slo_s: float) -> float:
    """P(wait > slo - own prefill, own prefill <= slo): the wait exceeds t with
    probability ``rho * exp(-theta t)``; the own prefill is log-normal as in
    :func:`_beyond`, so the wait leaves a long prompt less room."""
    if cs2 <= 1e-9:
        return 0.0 if own >= slo_s else rho * math.exp(-(slo_s - own) * theta)
    s2 = math.log1p(cs2)
    mu = math.log(own) - s2 / 2
    s = math.sqrt(s2)
    return sum(
        wt * rho * math.exp(-(slo_s - x) * theta)
        for z, wt in _GH8
        if (x := math.exp(mu + s * z)) < slo_s
    )


def replicas_for_slo(
    w: Workload, profile: ReplicaProfile, slo_s: float, miss_budget: float, limit: int
) -> int:
    """The fewest replicas (up to ``limit``) whose predicted miss share, beyond the
    :func:`unavoidable_miss`, is within the budget; ``limit`` when none is."""
    if w.rate <= 0:
        return 0
    prompt = max(w.prompt, 1.0)
    budget = miss_budget + unavoidable_miss(w, profile, slo_s)
    # Start at the replicas that keep the load below one: fewer are overloaded.
    n = max(1, math.floor(w.rate * prompt / profile.tokens_per_s(prompt, w.output)))
    while n < limit and predict(w, profile, n, slo_s).miss > budget:
        n += 1
    return min(n, max(limit, 1))


# Three-point Gauss-Hermite rule for a normal error: nodes 0 and +-sqrt(3) standard
# deviations, weights 2/3 and 1/6 each (exact for polynomials up to degree five).
_NODES = ((0.0, 2 / 3), (math.sqrt(3), 1 / 6), (-math.sqrt(3), 1 / 6))


def expected_miss(  # noqa: PLR0917
    w: Workload,
    profile: ReplicaProfile,
    n: int,
    slo_s: float,
    sigma: float,
    horizon_s: float = math.inf,
) -> float:
    """The predicted miss share with n replicas averaged over the rate's uncertainty: the
    rate is the estimate times (1 + e), e normal with standard deviation ``sigma``
    (relative). Near saturation the miss share rises steeply with the rate, so the
    average weighs the plausible overloads without sizing for the worst of them.

    ``horizon_s`` is how long a rate above the estimate lasts before more capacity can
    serve it (the caller's detection delay plus a cold start). A node of the rate's
    error is a load that arrives at the fleet's current, short queue; within a finite
    horizon its queue is that of :func:`horizon_miss`, not the stationary one, so a
    node just past saturation scores the share of the horizon's requests that its
    growing backlog delays past the SLO, not 100%. ``math.inf`` (the default) is the
    stationary model (:func:`predict`)."""
    if sigma <= 0:
        return horizon_miss(w, profile, n, slo_s, horizon_s)
    total = 0.0
    for z, weight in _NODES:
        scaled = Workload(max(0.0, w.rate * (1 + z * sigma)), w.prompt, w.output, w.ca2, w.cs2)
        total += weight * horizon_miss(scaled, profile, n, slo_s, horizon_s)
    return total


def horizon_miss(
    w: Workload, profile: ReplicaProfile, n: int, slo_s: float, horizon_s: float
) -> float:
    """The share of requests arriving within ``horizon_s`` of an empty queue whose TTFT
    exceeds the SLO with n replicas: defined at any load, overloads included.

    Kingman's exponential tail is the stationary law of a reflected Brownian motion
    (the heavy-traffic limit of the pooled queue's work, in seconds) with drift
    ``m = rho - 1`` and variance ``v = (ca2 + cs2) / (n mu)`` per second
    (``-2 m / v`` is :func:`predict`'s decay rate). Started empty, that motion exceeds
    ``x`` at time ``t`` with probability
    ``Phi((m t - x) / sqrt(v t)) + exp(2 m x / v) Phi((-x - m t) / sqrt(v t))``, which
    tends to the stationary tail for ``rho < 1`` and to 1 for ``rho >= 1``; a request
    waits with probability ``min(rho, 1)`` times that (as in :func:`predict`). The miss
    share is its average over the arrival time (a six-node Gauss-Legendre rule on
    ``[0, horizon_s]``) and over the own prefill (as in :func:`predict`). At the edge of
    saturation the stationary queue takes ``v / m**2`` seconds to build, longer than a
    horizon of a few minutes: the stationary answer would count a backlog the horizon
    never accumulates. ``horizon_s = math.inf`` returns :func:`predict`'s miss."""
    if w.rate <= 0:
        return 0.0
    if n <= 0:
        return 1.0
    if not math.isfinite(horizon_s):
        return predict(w, profile, n, slo_s).miss
    prompt = max(w.prompt, 1.0)
    mu = profile.tokens_per_s(prompt, w.output) / prompt
    rho = w.rate / (n * mu)
    own = prompt / profile.prefill_tokens_per_s
    floor = _beyond(own, w.cs2, slo_s)
    drift = rho - 1
    var = max(w.ca2 + w.cs2, 1e-6) / (n * mu)
    times = tuple((horizon_s * (1 + x) / 2, wt / 2) for x, wt in _GL6)
    waits = min(rho, 1.0)

    def late(slack: float) -> float:
        return waits * sum(wt * _rbm_above(drift, var, t, slack) for t, wt in times)

    if w.cs2 <= 1e-9:
        return 1.0 if own >= slo_s else min(1.0, late(slo_s - own))
    s2 = math.log1p(w.cs2)
    loc = math.log(own) - s2 / 2
    sd = math.sqrt(s2)
    total = floor + sum(
        wt * late(slo_s - x) for z, wt in _GH8 if (x := math.exp(loc + sd * z)) < slo_s
    )
    return min(1.0, total)


def _rbm_above(drift: float, var: float, t: float, x: float) -> float:
    """P(W(t) > x) for a reflected Brownian motion W with ``drift`` and variance ``var``
    per unit time, started at 0 (the first term: the free motion beyond x; the second:
    the paths the reflection at 0 pushes there)."""
    sd = math.sqrt(var * t)
    free = 0.5 * math.erfc((x - drift * t) / sd / _SQRT2)
    b = (x + drift * t) / sd
    if b > 20:  # exp(2 m x / v) Phi(-b) by Mills' ratio: the exponent cancels
        pushed = math.exp(-((x - drift * t) ** 2) / (2 * var * t)) / (b * math.sqrt(2 * math.pi))
    else:
        pushed = math.exp(2 * drift * x / var) * 0.5 * math.erfc(b / _SQRT2)
    return min(1.0, free + pushed)


_SQRT2 = math.sqrt(2)

# Gauss-Legendre rule of six nodes on [-1, 1]: the average over the horizon.
_GL6 = (
    (-0.932469514203152, 0.171324492379170),
    (-0.661209386466265, 0.360761573048139),
    (-0.238619186083197, 0.467913934550566),
    (0.238619186083197, 0.467913934550566),
    (0.661209386466265, 0.360761573048139),
    (0.932469514203152, 0.171324492379170),
)


def replicas_for_expected_slo(  # noqa: PLR0917
    w: Workload,
    profile: ReplicaProfile,
    slo_s: float,
    miss_budget: float,
    limit: int,
    sigma: float,
    horizon_s: float = math.inf,
) -> int:
    """The fewest replicas (up to ``limit``), no fewer than :func:`replicas_for_slo`'s at
    the estimate, whose :func:`expected_miss` over ``horizon_s``, beyond the
    :func:`unavoidable_miss`, is within the budget; ``limit`` when none is."""
    if w.rate <= 0:
        return 0
    n = replicas_for_slo(w, profile, slo_s, miss_budget, limit)
    budget = miss_budget + unavoidable_miss(w, profile, slo_s)
    while n < limit and expected_miss(w, profile, n, slo_s, sigma, horizon_s) > budget:
        n += 1
    return min(n, max(limit, 1))


__all__ = [
    "Prediction",
    "ReplicaProfile",
    "Workload",
    "expected_miss",
    "horizon_miss",
    "predict",
    "replicas_for_expected_slo",
    "replicas_for_slo",
    "unavoidable_miss",
]
