"""Pure scaling decisions: per model replicas from its signals, then a per-pool allocation.

Called by the loop (:mod:`tokenyard.autoscaler.loop`) and by the simulator with the same
arguments: the pool and its models as views, the signals, the state carried from the last
decision, and ``now``. Nothing here reads a clock, Prometheus or the Kubernetes API.

Per model (:func:`recommend`), KPA-style: the load in replicas' worth (requests running
per target, or tokens per second plus queued prompts against the nominal throughput)
averaged over a stable window (60 s) and a panic window (6 s); panic mode when the panic
window reaches 1.5x the ready replicas, during which the model never scales down.
KV-cache use, GPU use (with a queue) and TTFT over its SLO each ask for at least some
replicas; while the SLO is at risk, the model also asks for what would prefill all it
has in flight within the SLO (the next burst's capacity). The largest ask wins. Scaling
down waits for a cool-down after the last scale-up, takes the largest recommendation of
the last ``scale_down_delay_s`` and removes at most half of the replicas at once; a 10%
dead band keeps a steady load from flapping, and replicas still starting are not
stacked on. Two rules weigh replicas against their cold start: keep-warm holds what the
last burst needed for as long as ``keep_warm_usd`` pays for a replica (cheap replicas
longer), and a replica whose cold start exceeds the stable window is not added while the
ready ones clear all in flight before it could serve. A model with ``minReplicas: 0``
and ``scaleToZeroAfterSeconds`` goes to zero after that long without requests, and back
to one as soon as a request waits.

Per pool (:func:`allocate`): every model first gets its minimum (never undercut), then
replicas are handed out one at a time, highest priority first, then by value per dollar
(tokens per GPU-hour per USD) weighted by SLO pressure and by how much of its ask a model
still lacks, while each accelerator class stays within maxGPUs and the pool within its
hourly budget. A model that gets less than it asked is Capped (GPUCapped/BudgetCapped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tokenyard.api.common import REASON_BUDGET_CAPPED, REASON_GPU_CAPPED
from tokenyard.api.model import AutoscalingSpec, ModelDeployment
from tokenyard.api.pool import ServingPool
from tokenyard.autoscaler.signals import ModelSignals

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
    LLM traffic comes in bursts shorter than a replica's cold start."""
    max_scale_down_rate: float = 2.0
    """At most current / rate replicas are removed at once (halving)."""
    max_scale_up_rate: float = 10.0
    """At most current x rate replicas (at least +4) per decision."""
    remember_bursts: bool = True
    """Scale-down keeps what the panic-window load asked for within scale_down_delay_s."""
    restack_fraction: float = 1.0
    """While replicas start, scale up again only for an ask this much above the current
    (1.0: twice the replicas): one burst makes one scale event, not one per interval."""
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
    tolerance: float = 0.1
    """Dead band: no change while the ask is within 10% of the current replicas."""
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
        )


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


@dataclass(frozen=True)
class ModelState:
    """What one model's decisions carry from one interval to the next."""

    samples: tuple[tuple[float, float], ...] = ()
    """(time, requests in flight) over the stable window."""
    bursts: tuple[tuple[float, float], ...] = ()
    """(time, replicas a burst needs) over the panic window."""
    recommendations: tuple[tuple[float, int], ...] = ()
    """(time, recommended replicas) over the scale-down delay."""
    peaks: tuple[tuple[float, float], ...] = ()
    """(time, replicas a burst needed) over the keep-warm window, a sliding maximum: each
    entry is larger than every later one, so the first is the window's maximum."""
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


@dataclass(frozen=True)
class Decision:
    """The outcome for one model: what to write and why."""

    name: str
    desired: int
    """Replicas the model should have (written to the scale subresource when owned)."""
    reason: str
    write: bool
    """True when tokenyard owns replicas and desired differs from the current value."""
    band_min: int
    band_max: int
    """Bounds handed to Ray Serve's own autoscaler between decisions."""
    capped: str | None = None
    """REASON_GPU_CAPPED or REASON_BUDGET_CAPPED when the pool gave less than asked."""
    capped_message: str = ""
    recommended: int = 0
    metrics_available: bool = True
    metrics_detail: str = ""
    panic: bool = False
    cost_per_1m_tokens: float | None = None


def _ceil(x: float) -> int:
    # Float noise such as 2.0000000001 must not add a replica.
    return math.ceil(x - 1e-9)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def recommend(
    view: ModelView,
    signals: ModelSignals,
    state: ModelState,
    now: float,
    cfg: DecisionConfig,
) -> tuple[Recommendation, ModelState]:
    """One model's ask from its signals; the new state carries the windows forward."""
    current = view.current_replicas
    lo, hi = view.min_replicas, view.max_replicas
    if not signals.available:
        held = state.last_desired if state.last_desired is not None else current
        held = min(max(held, lo), hi)
        reason = f"MetricsUnavailable: holding {held} replicas ({signals.detail})"
        return (
            Recommendation(
                desired=held, reason=reason, floor=min(held, max(lo, 0)), metrics_available=False
            ),
            state,
        )

    running = signals.running or 0.0
    waiting = signals.waiting or 0.0
    rps = signals.request_rate or 0.0
    prompt_rate = signals.prompt_tokens_per_s or 0.0
    active = signals.ongoing > 0 or rps > 0
    last_active = now if active or state.last_active is None else state.last_active
    ready = view.ready_replicas if view.ready_replicas is not None else current
    ready = min(ready, current) if current > 0 else 0

    # The load in replicas' worth, from two views of the same work:
    # - concurrency: requests in the engines' batches per targetOngoingRequests;
    # - tokens: tokens processed per second, plus the queued prompts (priced at the mean
    #   prompt so far) spread over one cold start, per nominal replica throughput at the
    #   utilisation target. A backlog that the ready replicas clear before a new replica
    #   could serve adds little; one that outlasts a cold start adds replicas.
    # Queued requests count as tokens when the prompt size is known (their number says
    # little about the work), else as requests in flight.
    conc = running if rps > 0 and prompt_rate > 0 else signals.ongoing
    load_conc = conc / view.target_ongoing
    tokens = signals.tokens_per_s
    backlog = waiting * prompt_rate / rps if waiting > 0 and rps > 0 and prompt_rate > 0 else 0.0
    tokens += backlog / max(view.cold_start_s, view.ttft_slo_s)
    replica_rate = view.nominal_tokens_per_s * view.target_gpu_util
    load_tok = tokens / replica_rate
    # What would prefill every request in flight (running ones include those still in
    # prefill) within the TTFT SLO: the capacity to keep warm for the next burst like
    # this one (see the burst memory below).
    in_flight = (running + waiting) * prompt_rate / rps if rps > 0 and prompt_rate > 0 else 0.0
    burst_need = in_flight / view.ttft_slo_s / replica_rate
    load = max(load_conc, load_tok)
    samples = (*(x for x in state.samples if x[0] > now - cfg.stable_window_s), (now, load))
    bursts = (
        *(x for x in state.bursts if x[0] > now - cfg.panic_window_s),
        (now, max(load, load_conc, burst_need)),
    )
    stable = _mean([v for t, v in samples])
    panic_avg = _mean([v for t, v in samples if t > now - cfg.panic_window_s])
    basis = (
        f"{running:.0f} running, {waiting:.0f} waiting, {tokens:.0f} tokens/s "
        f"= {stable:.2f} replicas of load (60s avg)"
    )

    # Each rule says how many replicas it wants (a float); the largest wins.
    asks: list[tuple[float, str]] = [(stable, basis)]
    if ready > 0:
        if signals.kv_cache_usage is not None:
            asks.append(
                (
                    ready * signals.kv_cache_usage / view.target_kv,
                    f"KV cache {signals.kv_cache_usage:.0%} vs target {view.target_kv:.0%}",
                )
            )
        # A busy GPU with nothing queued is well used, not overloaded: decode keeps a GPU
        # "utilised" at any batch size, so utilisation only counts with a queue.
        if (
            signals.gpu_utilization is not None
            and signals.gpu_utilization > view.target_gpu_util
            and waiting > 0
        ):
            asks.append(
                (
                    ready * signals.gpu_utilization / view.target_gpu_util,
                    f"GPU {signals.gpu_utilization:.0%} vs target {view.target_gpu_util:.0%}",
                )
            )
    slo_pressure = 1.0
    if signals.ttft_p95_s is not None and signals.ongoing > 0:
        slo_pressure = max(1.0, signals.ttft_p95_s / view.ttft_slo_s)
        # One more replica per decision while requests queue and none is starting: the
        # p95 looks back over a window, so without a queue it describes the past.
        if signals.ttft_p95_s > view.ttft_slo_s and ready >= current > 0 and waiting > 0:
            asks.append(
                (ready + 1.0, f"TTFT p95 {signals.ttft_p95_s:.2f}s over SLO {view.ttft_slo_s:g}s")
            )
    want, why = max(asks, key=lambda a: a[0])

    # Dead band: scale up past +tolerance, and down only to a count that keeps the
    # tolerance as headroom, so a steady noisy load sits still.
    if want > current * (1 + cfg.tolerance) or (current == 0 and want > 0):
        n = _ceil(want)
    else:
        n_down = _ceil(want / (1 - cfg.tolerance))
        n = n_down if n_down < current else current
        if n == current:
            why = f"steady: {why}"

    panic_until = state.panic_until
    panic_want = _ceil(panic_avg)
    if (ready > 0 and panic_avg >= cfg.panic_threshold * ready) or (ready == 0 and active):
        panic_until = now + cfg.stable_window_s
    panic = panic_until is not None and now < panic_until
    if panic and panic_want >= n:
        n, why = panic_want, f"panic: {panic_avg:.2f} replicas of load (6s avg)"
    if panic:
        n = max(n, current)

    # Floor: the minimum, or zero for a model allowed to idle out.
    floor = lo
    if lo == 0:
        idle_for = now - last_active
        allowed = view.scale_to_zero_after_s is not None and idle_for >= view.scale_to_zero_after_s
        floor = 0 if allowed or (current == 0 and not active) else 1
        if floor == 0 and n == 0 and current > 0:
            why = f"idle {idle_for:.0f}s >= {view.scale_to_zero_after_s or 0:g}s: scale to zero"
    if active and n == 0:
        n, why = 1, "activating: requests waiting at zero replicas"

    # Scale-down remembers the short bursts too: the window's replicas are the most that
    # either the decision or the 6s load asked for, so a load that comes in bursts keeps
    # the capacity its bursts need until it has been calm for scale_down_delay_s.
    burst_avg = _mean([v for _, v in bursts])
    burst = _ceil(burst_avg * (1 - cfg.tolerance)) if cfg.remember_bursts else 0
    # Pre-provision for the next burst like this one, but only while the SLO is at risk:
    # a model whose p95 TTFT keeps well inside its SLO absorbs bursts in its queue.
    at_risk = (
        signals.ttft_p95_s is not None
        and signals.ttft_p95_s > cfg.burst_slo_fraction * view.ttft_slo_s
    )
    if burst > n and burst > current and at_risk:
        n, why = burst, f"burst: {burst_avg:.2f} replicas prefill what is in flight within SLO"
    # Keep-warm: the largest burst need within the model's keep-warm window (as long as
    # keep_warm_usd pays for one replica) bounds scale-down, so a model keeps what its
    # last burst needed through the calm between two active periods.
    keep_warm_s = (
        cfg.keep_warm_usd * 3600 / view.replica_cost_per_hour
        if cfg.keep_warm_usd > 0 and view.replica_cost_per_hour > 0
        else 0.0
    )
    peaks: tuple[tuple[float, float], ...] = ()
    warm = 0
    if keep_warm_s > 0:
        kept = (p for p in state.peaks if p[0] > now - keep_warm_s and p[1] > burst_avg)
        peaks = (*kept, (now, burst_avg))
        warm = _ceil(peaks[0][1] * (1 - cfg.tolerance))
    n_capped = min(max(n, burst, warm, floor), hi)
    recs = (
        *(r for r in state.recommendations if r[0] > now - cfg.scale_down_delay_s),
        (now, n_capped),
    )
    if n < current:
        in_cooldown = (
            state.last_scale_up is not None and now - state.last_scale_up < cfg.scale_down_delay_s
        )
        if in_cooldown:
            n, why = current, f"cool-down after scale-up: {why}"
        else:
            stabilised = max(r[1] for r in recs)
            step_floor = current - max(1, int(current - current / cfg.max_scale_down_rate))
            target = max(n, stabilised, step_floor, warm)
            if floor == 0 and n == 0 and current == 1:
                target = max(0, stabilised)
            if target > n and warm >= target:
                why = f"{why}; keep-warm: a burst of the last {keep_warm_s:.0f}s needed {warm}"
            elif target > n:
                why = f"{why}; scale-down limited to {target}"
            n = min(target, current)
    elif n > current:
        n = min(n, max(current + 4, _ceil(current * cfg.max_scale_up_rate)))
        # Replicas asked for are still starting: add more before they serve only for a
        # clearly larger ask, so one burst is one scale event, not one per interval.
        starting = current - ready
        clear_s = in_flight / (ready * view.nominal_tokens_per_s) if ready > 0 else math.inf
        if starting > 0 and n < current + max(1, _ceil(cfg.restack_fraction * current)):
            n, why = current, f"waiting for {starting} starting replica(s): {why}"
        elif (
            cfg.cold_start_aware
            and in_flight > 0
            and clear_s < view.cold_start_s
            and view.cold_start_s > cfg.stable_window_s
            and stable <= ready
        ):
            # A new replica costs from now but serves only after its cold start; when the
            # ready ones clear all in flight before then and the steady load fits them,
            # it would start to an empty queue. A backlog that outlasts a cold start, or
            # a steady load beyond the ready replicas, still scales up. Only for cold
            # starts beyond the stable window: a shorter one is likely to meet the next
            # burst of the same active period.
            n, why = (
                current,
                (
                    f"cold-start-aware: {ready} ready clear what is in flight in {clear_s:.0f}s"
                    f" < {view.cold_start_s:g}s cold start; {why}"
                ),
            )

    # Pre-warm: for a cheap model (keep-warm lasts several cold starts) the capacity the
    # last burst needed is worth having, not only worth keeping; added once nothing is
    # starting, so a burst still in progress is not restacked.
    if (
        cfg.prewarm_cold_starts > 0
        and keep_warm_s >= cfg.prewarm_cold_starts * view.cold_start_s
        and warm > max(n, current)
        and ready >= current
    ):
        n, why = warm, f"pre-warm: a burst of the last {keep_warm_s:.0f}s needed {warm}"
    n = min(max(n, floor), hi)
    new_state = replace(
        state,
        samples=samples,
        bursts=bursts,
        recommendations=recs,
        peaks=peaks,
        panic_until=panic_until,
        last_active=last_active,
    )
    per_replica = tokens / ready if ready > 0 and tokens > 0 else None
    return (
        Recommendation(
            desired=n,
            reason=f"{why} -> {n}",
            floor=floor,
            panic=panic,
            slo_pressure=slo_pressure,
            tokens_per_replica_s=per_replica,
        ),
        new_state,
    )


@dataclass(frozen=True)
class Grant:
    """What the pool gives one model."""

    replicas: int
    capped: str | None = None
    message: str = ""
    band_max: int = 0


def _value_per_dollar(view: ModelView, rec: Recommendation) -> float:
    tps = rec.tokens_per_replica_s or view.nominal_tokens_per_s
    cost = view.replica_cost_per_hour
    # CPU-only classes cost nothing per GPU-hour: rank them by throughput alone.
    return tps * 3600 / cost if cost > 0 else tps * 3600 * 1e6


def allocate(
    pool: PoolView,
    views: Mapping[str, ModelView],
    recs: Mapping[str, Recommendation],
) -> dict[str, Grant]:
    """Fit every model's ask into the pool's GPU limits and hourly budget."""
    # Models someone else owns, and models held for lack of metrics, keep their replicas.
    owned = [n for n, v in views.items() if v.mode == "Tokenyard" and recs[n].metrics_available]
    grant: dict[str, int] = {}
    gpus_used: dict[str, int] = {}
    spend = 0.0

    def take(v: ModelView, k: int) -> None:
        nonlocal spend
        if v.accelerator is not None:
            gpus_used[v.accelerator] = gpus_used.get(v.accelerator, 0) + k * v.gpus_per_replica
        spend += k * v.replica_cost_per_hour

    for name, v in views.items():
        if name not in owned:
            take(v, v.current_replicas)
    for name in owned:
        v, r = views[name], recs[name]
        grant[name] = min(r.desired, max(r.floor, 0))
        take(v, grant[name])

    def blocker(v: ModelView) -> str | None:
        if v.accelerator is not None and v.gpus_per_replica > 0:
            limit = pool.classes.get(v.accelerator)
            if limit is not None and limit.max_gpus is not None:
                used = gpus_used.get(v.accelerator, 0)
                if used + v.gpus_per_replica > limit.max_gpus:
                    return REASON_GPU_CAPPED
        if (
            pool.hourly_budget_usd is not None
            and v.replica_cost_per_hour > 0
            and spend + v.replica_cost_per_hour > pool.hourly_budget_usd + 1e-9
        ):
            return REASON_BUDGET_CAPPED
        return None

    capped: dict[str, str] = {}
    wanting = {n for n in owned if grant[n] < recs[n].desired}
    while wanting:

        def key(n: str) -> tuple[int, float]:
            v, r = views[n], recs[n]
            unmet = (r.desired - grant[n]) / max(r.desired, 1)
            return (v.priority, unmet * r.slo_pressure * _value_per_dollar(v, r))

        best = max(sorted(wanting), key=key)
        why = blocker(views[best])
        if why is not None:
            capped[best] = why
            wanting.discard(best)
            continue
        grant[best] += 1
        take(views[best], 1)
        if grant[best] >= recs[best].desired:
            wanting.discard(best)

    # Minimums alone may already break a limit: say so, but never go below them.
    for name in owned:
        v = views[name]
        if name not in capped and grant[name] > 0:
            limit = pool.classes.get(v.accelerator or "")
            if (
                limit is not None
                and limit.max_gpus is not None
                and v.gpus_per_replica > 0
                and gpus_used.get(v.accelerator or "", 0) > limit.max_gpus
            ):
                capped[name] = REASON_GPU_CAPPED
            elif (
                pool.hourly_budget_usd is not None
                and v.replica_cost_per_hour > 0
                and spend > pool.hourly_budget_usd + 1e-9
            ):
                capped[name] = REASON_BUDGET_CAPPED

    # Spare room is split evenly among a class's models as Ray Serve's upper bound.
    out: dict[str, Grant] = {}
    per_class: dict[str, int] = {}
    for name in owned:
        cls_name = views[name].accelerator or ""
        per_class[cls_name] = per_class.get(cls_name, 0) + 1
    for name in owned:
        v, g = views[name], grant[name]
        extra = v.max_replicas - g
        if v.gpus_per_replica > 0:
            limit = pool.classes.get(v.accelerator or "")
            if limit is not None and limit.max_gpus is not None:
                spare = max(0, limit.max_gpus - gpus_used.get(v.accelerator or "", 0))
                extra = min(extra, spare // v.gpus_per_replica // per_class[v.accelerator or ""])
        if pool.hourly_budget_usd is not None and v.replica_cost_per_hour > 0:
            room = max(0.0, pool.hourly_budget_usd - spend)
            extra = min(extra, int(room // v.replica_cost_per_hour) // max(1, len(owned)))
        msg = ""
        if name in capped:
            what = (
                "GPU limit of class " + str(v.accelerator)
                if capped[name] == REASON_GPU_CAPPED
                else f"hourly budget {pool.hourly_budget_usd:g} USD"
            )
            msg = f"asked {recs[name].desired} replicas, got {g}: {what}"
        out[name] = Grant(
            replicas=g, capped=capped.get(name), message=msg, band_max=g + max(0, extra)
        )
    return out


def update_cost(
    state: ModelState,
    *,
    now: float,
    replicas: int,
    view: ModelView,
    tokens_per_s: float,
    cfg: DecisionConfig,
) -> ModelState:
    """Fold the last interval's GPU cost and tokens into exponentially fading sums."""
    if state.cost_updated is None:
        return replace(state, cost_updated=now)
    dt = max(0.0, now - state.cost_updated)
    fade = math.exp(-dt / cfg.cost_time_constant_s)
    cost = state.cost_usd * fade + replicas * view.replica_cost_per_hour * dt / 3600
    tokens = state.tokens * fade + tokens_per_s * dt
    return replace(state, cost_usd=cost, tokens=tokens, cost_updated=now)


def cost_per_1m(state: ModelState, cfg: DecisionConfig) -> float | None:
    """Measured USD per 1M tokens, or None until enough tokens were served."""
    if state.tokens < cfg.min_tokens_for_cost or state.cost_usd <= 0:
        return None
    return round(state.cost_usd / state.tokens * 1e6, 6)


def decide_pool(
    pool: PoolView,
    views: Mapping[str, ModelView],
    signals: Mapping[str, ModelSignals],
    states: Mapping[str, ModelState],
    *,
    now: float,
    cfg: DecisionConfig | None = None,
) -> tuple[dict[str, Decision], dict[str, ModelState]]:
    """Decide every model of one pool; returns decisions and the states to carry."""
    cfg = cfg or DecisionConfig()
    recs: dict[str, Recommendation] = {}
    new_states: dict[str, ModelState] = {}
    for name, v in views.items():
        recs[name], new_states[name] = recommend(
            v, signals[name], states.get(name, ModelState()), now, cfg
        )
    grants = allocate(pool, views, recs)
    out: dict[str, Decision] = {}
    for name, v in views.items():
        r, st, sig = recs[name], new_states[name], signals[name]
        owned = v.mode == "Tokenyard"
        if owned and not r.metrics_available:
            # Hold: the replicas asked for now are the last decision written; never act
            # on an absence of data.
            g = Grant(replicas=v.current_replicas)
            desired = band_max = v.current_replicas
            reason = r.reason
        elif owned:
            g = grants[name]
            desired, band_max = g.replicas, g.band_max
            reason = r.reason
            if g.capped is not None:
                reason = f"{g.capped}: {g.message}; {r.reason}"
            elif desired < r.desired:
                reason = f"{r.reason}; pool gives {desired}"
        else:
            g = Grant(replicas=v.current_replicas)
            desired = band_max = v.current_replicas
            owner = "kubectl scale" if v.mode == "Manual" else "an HPA or KEDA"
            reason = (
                f"{v.mode}: replicas owned by {owner}, left at {desired}; "
                f"tokenyard would ask {r.desired} ({r.reason})"
            )
        write = owned and r.metrics_available and desired != v.current_replicas
        if write:
            st = replace(
                st,
                last_scale_time=now,
                last_scale_up=now if desired > v.current_replicas else st.last_scale_up,
            )
        if owned and r.metrics_available:
            st = replace(st, last_desired=desired)
        st = update_cost(
            st,
            now=now,
            replicas=v.current_replicas,
            view=v,
            tokens_per_s=sig.tokens_per_s if sig.available else 0.0,
            cfg=cfg,
        )
        new_states[name] = st
        out[name] = Decision(
            name=name,
            desired=desired,
            reason=reason,
            write=write,
            band_min=desired,
            band_max=max(desired, band_max),
            capped=g.capped,
            capped_message=g.message,
            recommended=r.desired,
            metrics_available=r.metrics_available,
            metrics_detail=sig.detail,
            panic=r.panic,
            cost_per_1m_tokens=cost_per_1m(st, cfg),
        )
    return out, new_states


def summary(decisions: Mapping[str, Decision]) -> dict[str, Any]:
    """A compact view of decisions for logs and the simulator's JSON."""
    return {
        n: {"desired": d.desired, "reason": d.reason, "capped": d.capped}
        for n, d in decisions.items()
    }
