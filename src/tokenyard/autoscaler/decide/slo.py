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

That pooled queue is what a router that balances prefill work gives: tokenyard's
LeastQueuedTokens (``ReplicaProfile.router``; the per-request engine agrees within a
factor 1.2 at the loads sizing aims for). Every replica still has its own queue, and Ray
Serve's default router (power of two choices) compares requests in flight, most of
them decoding: it sees a replica prefilling a long prompt hardly busier than an idle
one. So for it, and for a router blind to load (prefix-cache affinity), the wait is one
replica's: the request finds its replica prefilling with probability ``busy``
(:func:`_busy_chosen`: ``rho`` for a blind router; for power of two, conditioned on the
requests resident there, Poisson by M/G/infinity, of which it picks the fewer of two),
and then waits for the larger of that replica's two known tails, the residual of the
prefill in progress (a log-normal's ``E[(S - t)+] / E[S]``, which dominates at light
load: the rest of a long prompt) and Kingman's exponential at one replica's spare rate
(heavy load)::

    P(TTFT > slo) ~= P(s > slo)
                     + E[busy * max(residual(slo - s), exp(-(slo - s) theta_1)); s <= slo]

with ``theta_1 = (mu - rate / n) * 2 / (1 + (ca2 - 1) / n + cs2)``. The autoscaler sizes
with the pooled queue unless ``DecisionConfig.replica_queues`` is on
(docs/autoscaling-measurements.md
has why).

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

That mean leaves out how a replica's KV cache fills by chance. vLLM admits a waiting
request only when its whole prompt fits in the free KV cache, first come first served
(``scheduler_reserve_full_isl``), so a request that finds its replica's cache too full
waits for sequences there to finish decoding: each replica's cache on its own, whatever
the others hold and however the prefill queue is balanced. :func:`kv_blocked` is the
share of requests that find it so: the sequences resident on a replica are those of an
M/G/infinity queue (Poisson in number, mean ``rate / n`` times their mean residency), the
router picks a replica among ``choices`` by requests in flight (Serve's default: the
fewer of two random replicas, hence the fewest residents; a router blind to them picks
one as at random), the tokens they hold are a sum of that many residency-weighted
sequence sizes, and the request is blocked when that sum plus its own prompt and output
exceed ``kv_tokens`` (the sum a gamma of the same mean and variance; prompt and output
lengths log-normal and independent, with the workload's squared CV). A blocked request
waits for a decode to finish, seconds that the TTFT SLO rarely has to spare, so every
blocked request counts as a miss. ``benchmarks/autoscaler_trace.py --calibrate`` prints
this term beside the per-request engine's KV-added misses. ``ReplicaProfile.kv_admission``
turns it on; the autoscaler's ``DecisionConfig.kv_admission`` leaves it off (see
docs/autoscaling.md).

In the live loop the inputs are vLLM's own counters: ``rate`` from
``vllm:request_success_total``, ``prompt`` and ``output`` from
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` per request, and the
replica's throughput profile from ``spec.inCluster.nominalTokensPerSecond``; the
prediction's TTFT is the quantity ``vllm:time_to_first_token_seconds`` measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Router = Literal["LeastQueuedTokens", "PowerOfTwoChoices", "PrefixCacheAffinity"]
"""Ray Serve request routers, by the replicaRouting value that renders them."""


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
    kv_load: tuple[float, float, float] | None = None
    """Requests per second and mean prompt and output tokens for the KV-cache admission
    term (:func:`kv_blocked`), measured over a longer window than the others (the term
    rises steeply with them, so a short window's sampling error would move it, and a
    fast rise is the measured KV-cache use's to guard); None: ``rate``, ``prompt`` and
    ``output``."""

    def at_rate(self, rate: float) -> Workload:
        """The same workload at another arrival rate (what sizing varies most often)."""
        return Workload(rate, self.prompt, self.output, self.ca2, self.cs2, self.kv_load)


@dataclass(frozen=True)
class ReplicaProfile:
    """What one replica serves."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None = None
    """Tokens per second per decoding sequence (None: KV cache not modelled)."""
    kv_tokens: float | None = None
    """Tokens of KV cache (None: not modelled; the measured use guards instead)."""
    router: Router = "LeastQueuedTokens"
    """How Ray Serve's request router picks one of the model's replicas (the
    ModelDeployment's resolved spec.inCluster.replicaRouting): it decides how the
    replicas' prefill queues and KV caches are shared (see the module's docstring)."""

    kv_admission: bool = True
    """Whether the miss share counts the requests that find their replica's KV cache
    too full to admit them (:func:`kv_blocked`)."""

    @property
    def kv_choices(self) -> int:
        """Random replicas the router compares by their load before it picks one."""
        return 1 if self.router == "PrefixCacheAffinity" else 2

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
    kv = kv_blocked(w, profile, n)
    if profile.router != "LeastQueuedTokens":
        busy = _busy_chosen(rho, _residents(w, prompt, profile, n), profile, n)
        # Kingman's decay rate of one replica's wait: its spare rate over half the
        # variability of its arrivals and of its prefill times.
        theta = (mu - w.rate / n) * 2 / max(_replica_ca2(w, n) + w.cs2, 1e-6)

        def own_queue(slack: float) -> float:
            return busy * max(_residual_above(own, w.cs2, slack), math.exp(-theta * slack))

        miss = floor + _over_own_prefill(own_queue, own, w.cs2, slo_s) + kv
        mean_wait = busy * max(own * (1 + w.cs2) / 2, 1 / theta)
        return Prediction(n, rho, min(1.0, miss), mean_wait, floor)
    var = max(w.ca2 + w.cs2, 1e-6) / 2
    spare = n * mu - w.rate

    def pooled(slack: float) -> float:
        return rho * math.exp(-slack * spare / var)

    miss = floor + _over_own_prefill(pooled, own, w.cs2, slo_s) + kv
    return Prediction(n, rho, min(1.0, miss), rho * var / spare, floor)


def _replica_ca2(w: Workload, n: int) -> float:
    """Squared CV of one replica's inter-arrival times: a random share of the model's
    arrivals, so closer to Poisson (``1 + (ca2 - 1) / n``)."""
    return 1 + (w.ca2 - 1) / n


def _residents(w: Workload, prompt: float, profile: ReplicaProfile, n: int) -> float:
    """Mean requests resident on one replica (M/G/infinity: its arrival rate times their
    stay, the prefill and, where the decode speed is known, the decode)."""
    decode = w.output / profile.decode_tokens_per_s if profile.decode_tokens_per_s else 0.0
    return w.rate / n * (prompt / profile.prefill_tokens_per_s + decode)


def _busy_chosen(rho: float, residents: float, profile: ReplicaProfile, n: int) -> float:
    """The probability that the replica the router picks is prefilling another request.

    A replica prefills with probability ``rho``. Its residents (requests admitted and
    not yet finished) number N ~ Poisson(``residents``) (M/G/infinity); given N = k,
    each is prefilling independently, so the replica is busy with probability
    ``1 - (1 - f) ** k``, with ``f`` such that the average over N is ``rho``. Power of
    two choices sends the request to the one of two random replicas with fewer
    requests in flight, hence fewer residents (``P(N >= k) ** 2``): a busy replica is
    avoided only as far as its count shows it, which long decodes hide. A router blind
    to load picks a replica busy with probability ``rho``."""
    if rho >= 1:
        return 1.0
    if rho <= 0:
        return 0.0
    if profile.router != "PowerOfTwoChoices" or residents <= 0 or n <= 1:
        return rho
    # P(busy | k) = 1 - q ** k with E[q ** N] = exp(-residents (1 - q)) = 1 - rho.
    q = max(0.0, 1 + math.log1p(-rho) / residents)
    if residents > 10:
        # The picked count as a normal: E[q ** N] = E[exp(N ln q)] in closed form
        # (within 0.005 of the sum below from ten residents on).
        if q <= 0:
            return rho
        lq = math.log(q)
        mean, sd = _picked_normal(residents, 2)
        return min(rho, max(0.0, 1 - math.exp(lq * mean + lq * lq * sd * sd / 2)))
    total = sum(picked * (1 - q**k) for k, picked in _picked_counts(residents, 2))
    return min(rho, total)


def _picked_normal(residents: float, choices: int) -> tuple[float, float]:
    """Mean and standard deviation of the resident count of the replica the router picks,
    as a normal: the fewer of two Poisson counts of mean ``a`` has mean
    ``a - sqrt(a / pi)`` and variance ``a (1 - 1 / pi)``; one count, ``a`` and ``a``."""
    if choices >= 2:
        return residents - math.sqrt(residents / math.pi), math.sqrt(residents * (1 - 1 / math.pi))
    return residents, math.sqrt(residents)


def _count_bulk(residents: float) -> tuple[int, int]:
    """The counts k >= 1 that matter of a Poisson of mean ``residents`` (seven standard
    deviations either side)."""
    spread = 7 * math.sqrt(residents) + 5
    return max(1, math.floor(residents - spread)), math.ceil(residents + spread)


def _picked_counts(residents: float, choices: int) -> Iterator[tuple[int, float]]:
    """(k, P(the picked replica has k residents)) over the bulk of k >= 1: the fewest of
    ``choices`` Poisson counts has at least k with probability ``P(N >= k) ** choices``."""
    k_lo, k_hi = _count_bulk(residents)
    pmf = math.exp(k_lo * math.log(residents) - residents - math.lgamma(k_lo + 1))
    at_least = 1.0 - math.exp(-residents) if k_lo == 1 else 1.0  # P(N >= k_lo)
    for k in range(k_lo, k_hi + 1):
        at_least_next = max(0.0, at_least - pmf)  # P(N >= k + 1)
        yield k, at_least**choices - at_least_next**choices
        at_least = at_least_next
        pmf *= residents / (k + 1)


def _residual_above(own: float, cs2: float, t: float) -> float:
    """P(the rest of the prefill in progress > t): the equilibrium residual of a
    log-normal prefill time of mean ``own`` and squared CV ``cs2``,
    ``E[(S - t)+] / E[S]`` (uniform residual of a fixed time for ``cs2 = 0``)."""
    if t <= 0:
        return 1.0
    if cs2 <= 1e-9:
        return max(0.0, 1 - t / own)
    s = math.sqrt(math.log1p(cs2))
    d1 = (math.log(own / t) + s * s / 2) / s
    d2 = d1 - s
    above = own * _phi(d1) - t * _phi(d2)
    return min(1.0, max(0.0, above / own))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / _SQRT2)


def unavoidable_miss(w: Workload, profile: ReplicaProfile, slo_s: float) -> float:
    """The share of requests that miss the SLO on an idle replica (their own prefill is
    longer): what no replica count removes, so sizing leaves it out of the budget."""
    if w.rate <= 0:
        return 0.0
    return _beyond(max(w.prompt, 1.0) / profile.prefill_tokens_per_s, w.cs2, slo_s)


def kv_blocked(w: Workload, profile: ReplicaProfile, n: int) -> float:
    """The share of requests that find their replica's KV cache too full to admit them
    (see the module's docstring); 0 where the KV cache is not modelled.

    With ``P`` and ``O`` a request's prompt and output tokens, its sequence holds
    ``K = P + O`` tokens for ``R = P / prefill + O / decode`` seconds. A replica's
    residents number ``N ~ Poisson(rate / n * E[R])``; the router's pick has at least
    ``k`` of them with probability ``P(N >= k) ** choices``. Given ``k``, the tokens held
    are ``k`` draws of ``K`` weighted by ``R`` (mean ``E[K R] / E[R]``, second moment
    ``E[K**2 R] / E[R]``), and the request is blocked when they and its own ``K`` exceed
    ``kv_tokens``; a replica with no resident admits any request."""
    kv, decode = profile.kv_tokens, profile.decode_tokens_per_s
    if not profile.kv_admission or not kv or not decode or w.rate <= 0 or n <= 0:
        return 0.0
    rate, prompt, output = w.kv_load if w.kv_load is not None else (w.rate, w.prompt, w.output)
    m = _SizeMoments(max(prompt, 1.0), max(output, 0.0), w.cs2, profile)
    residents = rate / n * m.residency
    if residents <= 0:
        return 0.0
    choices = max(1, min(profile.kv_choices, n))  # one replica: no choice
    held_mean, held_var = m.held_mean, m.held_var
    own_mean, own_var = m.own_mean, m.own_var
    k_hi = _count_bulk(residents)[1]
    if _gamma_above(kv, k_hi * held_mean + own_mean, k_hi * held_var + own_var) < 1e-9:
        return 0.0  # not even the fullest plausible replica blocks a request
    if residents > 20:
        # Many residents: the picked replica's count as a normal, integrated by a
        # sixteen-node Gauss-Hermite rule (within 10% of the sum below from 20 on).
        mean_n, sd_n = _picked_normal(residents, choices)
        total = sum(
            wt * _gamma_above(kv, k * held_mean + own_mean, k * held_var + own_var)
            for z, wt in _GH16
            if (k := mean_n + sd_n * z) > 0
        )
        return min(1.0, total)
    total = sum(
        picked * _gamma_above(kv, k * held_mean + own_mean, k * held_var + own_var)
        for k, picked in _picked_counts(residents, choices)
    )
    return min(1.0, total)


@dataclass(frozen=True)
class _SizeMoments:
    """Moments of a sequence's KV tokens ``K = P + O`` and residency ``R`` for prompt and
    output tokens log-normal and independent, of means ``prompt`` and ``output`` and
    squared CV ``scv`` (``E[X**j] = mean**j (1 + scv) ** (j (j - 1) / 2)``)."""

    prompt: float
    output: float
    scv: float
    profile: ReplicaProfile

    def _moment(self, mean: float, j: int) -> float:
        return float(mean**j * (1 + self.scv) ** (j * (j - 1) / 2))

    @property
    def residency(self) -> float:
        """E[R]: seconds a sequence holds its KV cache."""
        return self.prompt / self.profile.prefill_tokens_per_s + self.output / self._decode

    @property
    def _decode(self) -> float:
        return self.profile.decode_tokens_per_s or math.inf

    @property
    def own_mean(self) -> float:
        return self.prompt + self.output

    @property
    def own_var(self) -> float:
        p2, o2 = self._moment(self.prompt, 2), self._moment(self.output, 2)
        return p2 + o2 - self.prompt**2 - self.output**2

    @property
    def held_mean(self) -> float:
        """E[K R] / E[R]: the mean size of a resident (a long stay is more often met)."""
        return self._kr(1) / self.residency

    @property
    def held_var(self) -> float:
        return self._kr(2) / self.residency - self.held_mean**2

    def _kr(self, j: int) -> float:
        """E[K**j R] for j = 1, 2."""
        f, d = self.profile.prefill_tokens_per_s, self._decode
        p = [self._moment(self.prompt, i) for i in range(4)]
        o = [self._moment(self.output, i) for i in range(4)]
        # K**j R = sum over binomial terms of P**a O**b times (P / f + O / d).
        return sum(
            math.comb(j, a) * (p[a + 1] * o[j - a] / f + p[a] * o[j - a + 1] / d)
            for a in range(j + 1)
        )


def _gamma_above(x: float, mean: float, var: float) -> float:
    """P(G > x) for a gamma G of this mean and variance (Wilson and Hilferty: the cube
    root of a gamma is close to normal)."""
    if mean <= 0:
        return 0.0
    if var <= 1e-12 * mean * mean:
        return 1.0 if mean > x else 0.0
    shape = mean * mean / var
    scale = var / mean
    z3 = (x / scale / shape) ** (1 / 3)
    z = (z3 - (1 - 1 / (9 * shape))) / math.sqrt(1 / (9 * shape))
    return 0.5 * math.erfc(z / _SQRT2)


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


# Gauss-Hermite rule of sixteen nodes for a standard normal (as _GH8).
_GH16 = tuple(
    (sign * math.sqrt(2) * x, wt / math.sqrt(math.pi))
    for x, wt in (
        (0.2734810461381525, 5.079294790166137e-01),
        (0.8229514491446559, 2.806474585285337e-01),
        (1.3802585391988808, 8.381004139898583e-02),
        (1.9517879909162540, 1.288031153550997e-02),
        (2.5462021578474814, 9.322840086241805e-04),
        (3.1769991619799560, 2.711860092537882e-05),
        (3.8694479048601227, 2.320980844865211e-07),
        (4.6887389393058184, 2.654807474011182e-10),
    )
    for sign in (-1, 1)
)


def _beyond(own: float, cs2: float, slo_s: float) -> float:
    """P(own prefill > slo) for a log-normal own prefill of mean ``own`` and squared CV
    ``cs2`` (the prompts'); a step at the mean for ``cs2 = 0``."""
    if cs2 <= 1e-9:
        return 1.0 if own >= slo_s else 0.0
    s2 = math.log1p(cs2)
    return 0.5 * math.erfc((math.log(slo_s) - math.log(own) + s2 / 2) / math.sqrt(2 * s2))


def _over_own_prefill(
    tail: Callable[[float], float], own: float, cs2: float, slo_s: float
) -> float:
    """E[tail(slo - s); s <= slo] over the request's own prefill ``s``, log-normal of mean
    ``own`` and squared CV ``cs2`` as in :func:`_beyond` (a step at the mean for
    ``cs2 = 0``): a wait whose tail beyond t is ``tail(t)`` leaves a long prompt less
    room."""
    if cs2 <= 1e-9:
        return 0.0 if own >= slo_s else tail(slo_s - own)
    s2 = math.log1p(cs2)
    loc = math.log(own) - s2 / 2
    sd = math.sqrt(s2)
    return sum(wt * tail(slo_s - x) for z, wt in _GH8 if (x := math.exp(loc + sd * z)) < slo_s)


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
    return _expected_miss(w, profile, n, slo_s, sigma, horizon_s, math.inf)


# Positional, as its two callers pass them; each argument is one input of the average.
def _expected_miss(  # noqa: PLR0917
    w: Workload,
    profile: ReplicaProfile,
    n: int,
    slo_s: float,
    sigma: float,
    horizon_s: float,
    stop_above: float,
) -> float:
    """:func:`expected_miss`, or, as soon as a part of it exceeds ``stop_above``, that
    part. The terms are not negative and the sum adds them in the same order either
    way, so the part exceeds ``stop_above`` exactly when the whole does; the node above
    the estimate (where the miss share is largest) is scored first."""
    if sigma <= 0:
        return horizon_miss(w, profile, n, slo_s, horizon_s)

    def term(k: int) -> float:
        z, weight = _NODES[k]
        return weight * horizon_miss(
            w.at_rate(max(0.0, w.rate * (1 + z * sigma))), profile, n, slo_s, horizon_s
        )

    above = term(1)
    if above > stop_above:
        return above
    total = 0.0 + term(0) + above
    if total > stop_above:
        return total
    return total + term(2)


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
    never accumulates. For separate replicas (a router that does not pool them, as in
    :func:`predict`) the motion is one replica's (variance
    ``(1 + (ca2 - 1) / n + cs2) / mu``), the request finds its replica busy with
    :func:`predict`'s ``busy``, and the residual of the prefill in progress bounds its
    tail from below. The KV-cache term (:func:`kv_blocked`) is added as it stands: a
    replica's residents turn over within their residency, seconds, not a horizon.
    ``horizon_s = math.inf`` returns :func:`predict`'s miss."""
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
    kv = kv_blocked(w, profile, n)
    if profile.router == "LeastQueuedTokens":
        var = max(w.ca2 + w.cs2, 1e-6) / (n * mu)
        waits = min(rho, 1.0)
        motion = _Motion(drift, var, horizon_s)

        def late(slack: float) -> float:
            return waits * motion.above(slack)

    else:
        # One replica's queue (see predict): its work in seconds moves with the same
        # drift and the variance of one replica, 2 / theta per unit of (1 - rho).
        var = max(_replica_ca2(w, n) + w.cs2, 1e-6) / mu
        waits = _busy_chosen(min(rho, 1.0), _residents(w, prompt, profile, n), profile, n)
        motion = _Motion(drift, var, horizon_s)

        def late(slack: float) -> float:
            return waits * max(motion.above(slack), _residual_above(own, w.cs2, slack))

    return min(1.0, floor + _over_own_prefill(late, own, w.cs2, slo_s) + kv)


class _Motion:
    """A reflected Brownian motion W with ``drift`` and variance ``var`` per unit time,
    started at 0, over the arrival times of a horizon (the six-node Gauss-Legendre rule);
    what depends on the time alone is computed once per horizon."""

    __slots__ = ("drift", "nodes", "var")

    def __init__(self, drift: float, var: float, horizon_s: float) -> None:
        self.drift = drift
        self.var = var
        self.nodes = tuple(
            (wt / 2, t, math.sqrt(var * t), drift * t)
            for t, wt in ((horizon_s * (1 + x) / 2, wt) for x, wt in _GL6)
        )

    def above(self, x: float) -> float:
        """The horizon's average of P(W(t) > x): at each time, the free motion beyond x
        plus the paths the reflection at 0 pushes there."""
        drift, var = self.drift, self.var
        reflect = None
        out = []
        for wt, t, sd, mt in self.nodes:
            free = 0.5 * math.erfc((x - mt) / sd / _SQRT2)
            b = (x + mt) / sd
            if b > 20:  # exp(2 m x / v) Phi(-b) by Mills' ratio: the exponent cancels
                pushed = math.exp(-((x - mt) ** 2) / (2 * var * t)) / (b * _SQRT_2PI)
            else:
                if reflect is None:  # the same at every time: once per x
                    reflect = math.exp(2 * drift * x / var)
                pushed = reflect * 0.5 * math.erfc(b / _SQRT2)
            out.append(wt * min(1.0, free + pushed))
        return sum(out)


_SQRT2 = math.sqrt(2)
_SQRT_2PI = math.sqrt(2 * math.pi)

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
    # Only whether each count's average exceeds the budget matters: a count whose first
    # nodes already do is passed over without the rest.
    while n < limit and _expected_miss(w, profile, n, slo_s, sigma, horizon_s, budget) > budget:
        n += 1
    return min(n, max(limit, 1))


__all__ = [
    "Prediction",
    "ReplicaProfile",
    "Workload",
    "expected_miss",
    "horizon_miss",
    "kv_blocked",
    "predict",
    "replicas_for_expected_slo",
    "replicas_for_slo",
    "unavoidable_miss",
]
