"""What the scaling decisions read and carry: model and pool views, state, tunables.

The live autoscaler builds the views from resources (:meth:`ModelView.from_resources`,
:meth:`PoolView.from_resource`); the simulator builds them from its scenario with the
same :func:`autoscaling_fields`, so both decide on the same reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tokenyard.api.model import (
    LEAST_QUEUED_TOKENS_ROUTER,
    PREFIX_CACHE_AFFINITY_ROUTER,
    AutoscalingSpec,
    ModelDeployment,
)
from tokenyard.api.pool import ServingPool
from tokenyard.autoscaler.decide.slo import Router, Workload

Mode = Literal["Tokenyard", "Manual", "External"]


@dataclass(frozen=True)
class DecisionConfig:
    """Tunables of the decision rules (defaults as documented in docs/autoscaling.md)."""

    stable_window_s: float = 60.0
    """Window over which requests in flight are averaged (Knative KPA: 60 s)."""
    panic_window_s: float = 6.0
    """Short window that detects bursts (Knative KPA: 10% of 60 s)."""
    panic_threshold: float = 1.5
    """Panic when the panic window's load is this multiple of the ready replicas (KPA uses
    2.0; LLM replicas take 30-120 s to start, so a burst has to be met earlier)."""
    scale_down_delay_s: float = 300.0
    """Cool-down after a scale-up, and the window of recommendations (and burst loads) a
    scale-down respects; as long as Kubernetes HPA's scale-down stabilisation, because
    LLM traffic comes in bursts shorter than a replica's cold start. Where the load came
    back after longer calms, the window is learned longer (``churn_horizon_s``)."""
    max_scale_down_rate: float = 2.0
    """At most current / rate replicas are removed at once (halving)."""
    max_scale_up_rate: float = 10.0
    """At most current x rate replicas (at least +4) per decision."""
    remember_bursts: bool = True
    """Scale-down keeps what the panic-window load asked for within scale_down_delay_s."""
    restack_fraction: float = 1.0
    """While replicas start, scale up again only for an ask this much above the current
    (1.0: twice the replicas): one burst makes one scale event, not one per interval."""
    level_restack_fraction: float = 0.25
    """``restack_fraction`` for a load whose last hour was no burstier than Poisson, where
    a load past the ready replicas is a level that moved (see ``pileup``): a quarter
    more (at least one). The first ask, read from a few seconds of the new level, may
    be raised once its size is known, and each replica added then is ready a cold
    start earlier than after the first ones. On the sweep's step, twice held the
    standard model at 5 of the 8 it asked for 5 s later, for its 60 s cold start; on
    the bursty Azure code trace a quarter bought replicas for bursts that were over
    (routing seed 6: 1.064 -> 1.126 x static), hence bursty loads keep twice."""
    burst_slo_fraction: float = 0.5
    """Pre-provision for the last bursts only while p95 TTFT exceeds this share of the SLO."""
    keep_warm_usd: float = 0.1
    """Keep-warm: after a burst, scale-down keeps the replicas that burst needed for as
    long as this many USD per replica buy (0, or a replica without a price: off). LLM
    traffic comes in active periods minutes apart and a released replica returns only
    after its cold start, so cheap replicas are worth keeping longer: 0.1 USD keeps a
    0.80 USD/h replica 7.5 min, an 8 USD/h one 45 s."""
    cold_start_aware: bool = True
    """For a model whose cold start is longer than the stable window (the load the
    autoscaler can see), add no replica while the ready ones clear all in flight before a
    new one could serve and the steady load fits them: it would start to an empty queue,
    yet cost from the moment it is asked for."""
    prewarm_cold_starts: float = 4.0
    """Pre-warm: a model whose keep-warm window is at least this many cold starts long
    scales up to what its last burst needed (keep-warm's count) once its replicas are
    ready, instead of only keeping that many on the way down: the next burst of the same
    active period then finds them running. Cheap replicas qualify (0.80 USD/h with a
    30 s cold start: 7.5 min >= 2 min), dear or slow ones do not. 0: off."""
    churn_horizon_s: float = 1800.0
    """Cost of churn: a calm (the model's recommendation below some replica count) that
    ends with the count needed again within this long after it began would have made a
    scale-down that a scale-up puts back: the replica-time it saves is at most this, and
    it costs a cold start with the SLO at risk during it, plus two scale events. The
    scale-down stabilisation window grows to cover such calms (see ``churn_memory_s``);
    this is also the longest the window grows to (plus one stable window), so the most a
    held replica can cost per calm (0.40 USD at 0.80 USD/h, 4 USD at 8 USD/h). 0: off."""
    churn_memory_s: float = 7200.0
    """How long a returned calm keeps the stabilisation window long: the window is the
    longest calm that ended in a return within the last ``churn_memory_s`` plus one
    stable window (the calm's ends are known to within the window over which the load is
    measured), and at least ``scale_down_delay_s``. A model whose load stops returning
    goes back to ``scale_down_delay_s`` after this long (the backoff's reset): four
    times ``churn_horizon_s``, so a pattern is kept while it has recurred within four of
    the longest calms the rule holds through."""
    return_risk: bool = True
    """Return risk: a scale-down below what the largest load of the last
    ``budget_window_s`` needs (its replicas at full utilisation, or the SLO model's
    count for it) goes only as far as the miss budget can pay for that load's return.
    Were it to come back, the remaining replicas would serve it alone until the ones
    asked for then are ready, one cold start later: they miss the SLO model's share of
    it, and below full utilisation a queue grows that the new replicas then drain (a
    fluid queue: arrivals are late while it holds more than the TTFT SLO's worth of
    work, and at least the pile-up itself). A scale-down goes to the fewest replicas
    whose late requests fit in the budget's reserve: ``slo_margin`` of
    ``1 - slo_target`` over the requests whose first token came within
    ``budget_window_s``, less the late ones. So a model whose load has filled little
    budget (a first burst, a slow cold start) keeps a burst's replicas through a calm
    that the cost of churn has not learned yet, and a busy model that met its SLO may
    risk a short cold start. Needs the engines' first-token counts (vLLM's TTFT
    histogram); without them the rule stays out. Off: the stabilisation and churn
    rules alone."""
    tolerance: float = 0.1
    """Dead band: no change while the ask is within 10% of the current replicas; and the
    hysteresis of SLO sizing: a scale-down goes only to replicas that would still meet
    the SLO at this much more load."""
    confidence_z: float = 2.0
    """Standard errors of the measured work rate (requests x prompt tokens of the stable
    window; relative error sqrt((ca2 + cs2) / requests counted)) that SLO sizing allows
    for: a replica is added only when the rate's lower confidence bound needs it, and the
    fleet is sized for its upper bound, so counting noise does not move it (2: about
    98% one-sided). 0: size on the point estimate, with only ``tolerance`` as a band."""
    pileup: bool = True
    """Whether a scale-up (by the SLO model's count or by panic) also drains the queue
    its own cold start piles up: until the replicas asked for are ready, the arrivals
    beyond what the ready ones carry queue, and replicas sized for the arrivals alone
    drain that queue only at their spare rate, every arrival late meanwhile. On, the
    scale-up is sized for the arrivals plus that pile-up spread over one cold start
    (decide/recommend.py ``_pileup``); the extra replicas go with the next scale-down.
    Only for a load whose last hour was no burstier than Poisson (the pooled ``ca2``;
    see ``pooled_burstiness``): the queueing model prices a bursty load's bursts, which
    are over before a cold start. Off: sized for the arrivals and the measured queue
    alone."""
    false_scale_up_s: float = 3600.0
    """How rarely counting noise alone may add a replica to a steady load that sits at
    the edge of a replica count: the scale-up's lower confidence bound is set as many
    standard errors below the measured rate (at least ``confidence_z``) as make the
    stable window, read once per decision interval, cross it by noise about once per
    this long (decide/recommend.py ``scale_up_z``: 2.77 with a 60 s window read every
    5 s). The scale-down learns a steady load's level over ``drift_window_s``, so a
    replica added by noise is taken away within about as long. 0: ``confidence_z``."""
    drift_window_s: float = 3600.0
    """History of one-minute workloads from which a scale-down learns how far the load
    moves within ``scale_down_delay_s`` beyond counting noise (its drift): a scale-down
    goes to the replicas whose SLO miss, averaged over the rate's error (counting noise
    of the delay window plus that drift), is within the budget. Until six such moves
    have been seen, ``tolerance`` stands in for the drift (as one standard deviation
    over ``confidence_z``)."""
    pooled_burstiness: bool = True
    """Whether the queueing model prices the arrivals' burstiness pooled over the
    ``drift_window_s`` history: the larger of the stable window's ``ca2`` and the
    request-weighted mean of the one-minute windows' ``ca2`` there. One window holds a
    dozen per-interval counts, too few to show bursts that come minutes apart, and the
    queue a burst builds does not care whether this minute had one. The counting-noise
    band (``confidence_z``) keeps the window's own ``ca2``: it is the precision of this
    window's rate, and a wider band would hold back the scale-ups the bursts call for.
    Off: the window's ``ca2`` alone (docs/autoscaling-measurements.md has both measured)."""
    slo_target: float = 0.99
    """Share of requests whose TTFT should be within the model's ttftSLOSeconds."""
    replica_queues: bool = False
    """Whether SLO sizing takes each replica's prefill queue as its own, balanced only as
    far as the model's request router sees it (``ModelView.replica_router``;
    decide/slo.py), instead of one pooled queue. Off: it met the SLO on the
    long-context hours, but cost more than 1.10x the static fleet there and, on the
    14-day trace, took more scale events than HPA (1,609 against 1,521) and readied
    fewer ramp scale-ups in time (89.0%); docs/autoscaling-measurements.md has the measurements."""
    kv_admission: bool = False
    """Whether SLO sizing counts the requests that find their replica's KV cache too
    full to admit them (decide/slo.py ``kv_blocked``; only where the KV cache's size is
    known, the simulator's profiles). Off: on the 14-day trace it added scale events
    (1,723 against HPA's 1,521, with replica_queues) for KV blocking the aggregated
    engine does not show; docs/autoscaling-measurements.md has the measurements."""
    slo_margin: float = 0.5
    """SLO sizing aims at this share of the miss budget (1 - slo_target): the queueing
    model's prediction is approximate, so half the budget is kept in reserve (which a
    scale-up may spend after a clean hour, ``budget_feedback``)."""
    budget_feedback: bool = True
    """Whether a scale-up spends the reserve that ``slo_margin`` keeps once the measured
    attainment shows it unused: over the last ``budget_window_s``, the share of
    requests whose first token came later than the SLO (vLLM's TTFT histogram), shrunk
    towards the target's share by ``budget_prior_requests``, leaves some part of the
    reserve (1 - ``slo_margin``) of the miss budget unspent; a scale-up aims at
    ``slo_margin`` plus that part of (``slo_margin_max`` - ``slo_margin``). A
    scale-down keeps ``slo_margin`` (a clean hour says the fleet it had was enough, not
    that a smaller one would be), and nothing aims below it: a model that misses is the
    queueing model's and the guards' to size. Off: ``slo_margin`` always
    (docs/autoscaling-measurements.md has both measured)."""
    slo_margin_max: float = 1.0
    """The most of the miss budget a scale-up aims at when the last ``budget_window_s``
    left the whole reserve unspent (``budget_feedback``)."""
    budget_window_s: float = 3600.0
    """How far back the measured attainment is counted (``budget_feedback``)."""
    budget_prior_requests: float = 200.0
    """Requests' worth of weight on the target's miss share in the measured one (two
    misses at a 99% target), so a quiet model's few requests do not spend the reserve
    on their own (``budget_feedback``)."""
    min_requests_measured: float = 20.0
    """Fewer requests than this started in the stable window leave the workload
    unmeasured (the mean of 20 prompt lengths of CV 1 is within +-22% at one standard
    error; with fewer, and at start-up when counters still lag, running per
    targetOngoingRequests stands in)."""
    prompt_scv: float = 1.0
    """Squared coefficient of variation of prompt lengths in the queueing model (vLLM's
    counters give means only; 1.0 is that of an exponential, about the public traces')."""
    cost_time_constant_s: float = 1800.0
    """Age at which GPU cost and tokens fade to 1/e in the cost-per-1M-tokens estimate."""
    min_tokens_for_cost: float = 10_000.0
    """Fewer (decayed) tokens than this leave costPer1MTokens unmeasured."""


def autoscaling_fields(a: AutoscalingSpec) -> dict[str, Any]:
    """The :class:`ModelView` fields read from a model's spec.autoscaling. One mapping
    for the live autoscaler and the simulator, so both decide on the same reading."""
    return {
        "min_replicas": a.minReplicas,
        "max_replicas": a.maxReplicas,
        "priority": a.priority,
        "target_ongoing": a.targetOngoingRequests,
        "target_kv": a.targetKVCacheUsage,
        "target_gpu_util": a.targetGPUUtilization,
        "ttft_slo_s": a.ttftSLOSeconds,
        "scale_to_zero_after_s": (
            float(a.scaleToZeroAfterSeconds) if a.scaleToZeroAfterSeconds else None
        ),
        "cold_start_s": a.coldStartSeconds,
    }


@dataclass(frozen=True)
class ModelView:
    """What the decision needs of one ModelDeployment and its accelerator class."""

    name: str
    min_replicas: int = 1
    max_replicas: int = 1
    current_replicas: int = 1
    """Replicas asked for now (spec.replicas)."""
    ready_replicas: int | None = None
    mode: Mode = "Tokenyard"
    gpus_per_replica: int = 1
    accelerator: str | None = None
    price_per_gpu_hour: float = 0.0
    priority: int = 0
    target_ongoing: float = 16.0
    target_kv: float = 0.8
    target_gpu_util: float = 0.8
    ttft_slo_s: float = 2.0
    scale_to_zero_after_s: float | None = None
    cold_start_s: float = 120.0
    nominal_tokens_per_s: float = 1000.0
    quality: float = 0.6
    decode_tokens_per_s: float | None = None
    """Tokens per second per decoding sequence, where known (the simulator's profile; the
    live loop measures it: ModelSignals.decode_tokens_per_sequence)."""
    kv_cache_tokens: float | None = None
    """Tokens of KV cache per replica, where known; else the measured use guards."""
    replica_router: Router = "PowerOfTwoChoices"
    """How Ray Serve picks one of the model's replicas (spec.inCluster.replicaRouting as
    resolved; Serve's default power of two choices unless set): the SLO model's
    separate queues and KV caches depend on it (decide/slo.py), where
    DecisionConfig.replica_queues and kv_admission turn them on."""
    forecast_rps: float | None = None
    """Requests per second forecast one cold start ahead (decide/forecast.py), where a
    forecast is kept: the SLO model sizes for the larger of it and the measured rate,
    so replicas start before a ramp."""

    @property
    def replica_cost_per_hour(self) -> float:
        return self.gpus_per_replica * self.price_per_gpu_hour

    @classmethod
    def from_resources(cls, md: ModelDeployment, pool: ServingPool | None) -> ModelView:
        """The view of a ModelDeployment in its pool (pool None: no GPU price known)."""
        spec = md.spec
        a = spec.autoscaling
        accel = spec.inCluster.accelerator if spec.inCluster else None
        price = 0.0
        if pool is not None and accel is not None:
            for c in pool.spec.accelerators:
                if c.name == accel:
                    price = c.hourlyCostPerGPU
        ready = md.status.readyReplicas if md.status is not None else None
        return cls(
            name=str(md.metadata.get("name", "")),
            current_replicas=spec.desired_replicas(),
            ready_replicas=ready,
            mode=a.mode,
            gpus_per_replica=spec.gpus_per_replica(),
            accelerator=accel,
            price_per_gpu_hour=price,
            **autoscaling_fields(a),
            nominal_tokens_per_s=(
                spec.inCluster.nominalTokensPerSecond if spec.inCluster else 1000.0
            ),
            quality=spec.effective_quality(),
            replica_router=_replica_router(md),
        )


def _replica_router(md: ModelDeployment) -> Router:
    """The request router a ModelDeployment's replicaRouting resolves to."""
    router = md.spec.inCluster.replica_router() if md.spec.inCluster is not None else None
    if router == LEAST_QUEUED_TOKENS_ROUTER:
        return "LeastQueuedTokens"
    if router == PREFIX_CACHE_AFFINITY_ROUTER:
        return "PrefixCacheAffinity"
    return "PowerOfTwoChoices"


@dataclass(frozen=True)
class ClassLimit:
    """One accelerator class of a pool."""

    max_gpus: int | None
    """None: no limit (CPU-only classes)."""
    price_per_gpu_hour: float = 0.0


@dataclass(frozen=True)
class PoolView:
    """The limits a pool's allocation must fit."""

    name: str
    classes: dict[str, ClassLimit] = field(default_factory=dict)
    hourly_budget_usd: float | None = None

    @classmethod
    def from_resource(cls, pool: ServingPool) -> PoolView:
        return cls(
            name=str(pool.metadata.get("name", "")),
            classes={
                c.name: ClassLimit(
                    max_gpus=c.maxGPUs if c.gpusPerNode > 0 else None,
                    price_per_gpu_hour=c.hourlyCostPerGPU,
                )
                for c in pool.spec.accelerators
            },
            hourly_budget_usd=pool.spec.hourlyBudgetUSD,
        )


ReturnPeak = tuple[float, float, float, float, Workload | None]
"""One entry of ``ModelState.returns``."""


@dataclass(frozen=True)
class ModelState:
    """What one model's decisions carry from one interval to the next."""

    samples: tuple[tuple[float, float], ...] = ()
    """(time, requests in flight per targetOngoingRequests) over the stable window, for
    intervals without a measured rate (the SLO model's stand-in)."""
    rates: tuple[tuple[float, float, float, float, float, float], ...] = ()
    """(time, finished requests/s, prompt tokens/s, generated tokens/s, requests waiting,
    requests running) over the stable window: the workload the SLO model sizes for."""
    bursts: tuple[tuple[float, float], ...] = ()
    """(time, replicas a burst needs) over the panic window."""
    minutes: tuple[tuple[float, float, float, float, float, float], ...] = ()
    """(time, arrivals/s, mean prompt tokens, requests counted, ca2 + cs2, mean output
    tokens) of the stable window, one per stable window over ``drift_window_s`` (quiet
    ones too): the scale-down's longer estimate of the rate and of its drift, and the
    token means of the SLO model's KV-cache term."""
    drift: float | None = None
    """The load's measured drift over one scale-down delay (relative variance beyond
    counting noise), recomputed as each minute's sample comes; None until measured."""
    first_seen: float | None = None
    """When the model was first decided on: minute samples start one stable window later."""
    last_prompt: float = 0.0
    """The last measured mean prompt tokens: what a forecast wakes a model at zero
    replicas for."""
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, recommended replicas) over the longest stabilisation window (the
    scale-down delay, or ``churn_horizon_s`` plus a stable window), a sliding maximum:
    each entry is larger than every later one, so the first entry within a window is
    its maximum."""
    needed: tuple[float, ...] = ()
    """When each replica count was last recommended: entry k for k + 1 replicas (the
    cost-of-churn rule's record of when the load last needed them)."""
    calms: tuple[tuple[float, float], ...] = ()
    """(time it ended, length) of each calm longer than ``scale_down_delay_s`` and
    within ``churn_horizon_s`` after which the load needed the replicas again, over
    ``churn_memory_s``: what the learned stabilisation window covers."""
    peaks: tuple[tuple[float, float], ...] = ()
    """(time, replicas a burst needed) over the keep-warm window, a sliding maximum: each
    entry is larger than every later one, so the first is the window's maximum."""
    returns: tuple[ReturnPeak, ...] = ()
    """(time, replicas at full utilisation, arrivals per second, the SLO model's count,
    the workload at those arrivals) of each stable window's load over
    ``budget_window_s``, a sliding maximum of the replicas: each entry's is larger than
    every later one's, so the first is the load a scale-down risks should it return
    (``DecisionConfig.return_risk``)."""
    attained: tuple[tuple[float, float, float], ...] = ()
    """(time, requests per second whose first token came, those later than the SLO)
    over ``budget_window_s``: the measured attainment that decides how much of the
    miss budget's reserve a scale-up spends (``DecisionConfig.budget_feedback``)."""
    attained_count: tuple[float, float] | None = None
    """The requests whose first token came over ``attained``, and the late ones (each
    sample's rates times the time since the one before), carried with the samples so
    that a decision moves the count at the window's ends; None: counted from them."""
    panic_until: float | None = None
    last_active: float | None = None
    last_scale_up: float | None = None
    last_scale_time: float | None = None
    last_desired: int | None = None
    """The last safe decision, held while metrics are missing."""
    cost_usd: float = 0.0
    tokens: float = 0.0
    cost_updated: float | None = None


@dataclass(frozen=True)
class Recommendation:
    """A model's own ask, before the pool's limits."""

    desired: int
    reason: str
    floor: int
    """Fewest replicas the model may get (its minimum, or 0 when allowed and idle)."""
    panic: bool = False
    metrics_available: bool = True
    slo_pressure: float = 1.0
    tokens_per_replica_s: float | None = None


__all__ = [
    "ClassLimit",
    "DecisionConfig",
    "Mode",
    "ModelState",
    "ModelView",
    "PoolView",
    "Recommendation",
    "ReturnPeak",
    "autoscaling_fields",
]
