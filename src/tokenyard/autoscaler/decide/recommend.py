"""One model's ask from its signals (:func:`recommend`), rule by rule.

The SLO model (:func:`slo_replicas`, :mod:`~tokenyard.autoscaler.decide.slo`) sizes for
the workload of the stable and panic windows (:func:`_measure`); KV-cache use, GPU use
(with a queue) and TTFT over its SLO are guards that each ask for at least some replicas
(:func:`_asks`); then, in order, the dead band and hysteresis, panic mode, the floor
(scale to zero), the burst memory, keep-warm, the scale-down limits (with the
stabilisation window that the cost of churn learns, :func:`_returns`, :func:`_hold_s`,
and the replicas a return of the last hour's load needs beyond what the miss budget can
pay, :func:`return_risk`), the scale-up limits and pre-warm adjust the count. Pure:
``now`` comes in, no clock is read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from tokenyard.autoscaler.decide.slo import (
    ReplicaProfile,
    Workload,
    predict,
    replicas_for_expected_slo,
    replicas_for_slo,
)
from tokenyard.autoscaler.decide.views import (
    DecisionConfig,
    ModelState,
    ModelView,
    Recommendation,
    ReturnPeak,
)
from tokenyard.autoscaler.signals import ModelSignals


def _ceil(x: float) -> int:
    # Float noise such as 2.0000000001 must not add a replica.
    return math.ceil(x - 1e-9)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


_T = TypeVar("_T", bound=tuple[float, ...])


def _after(items: tuple[_T, ...], since: float) -> tuple[_T, ...]:
    """The samples of a window taken after ``since``. The windows hold their samples in
    the order they were taken, so those dropped are a prefix: one or none per decision,
    found from the front. (After the clock steps back, a sample leaves only with those
    taken before it: the window may hold a few old samples until then.)"""
    i = 0
    while i < len(items) and items[i][0] <= since:
        i += 1
    return items[i:] if i else items


@dataclass(frozen=True)
class _Load:
    """What the signals say, in replicas' worth, with the windows carried forward."""

    running: float
    waiting: float
    active: bool
    ready: int
    tokens: float
    """Tokens per second the model processes, plus its queued prompts spread over one
    cold start."""
    in_flight: float
    """Prompt tokens of every request in flight (running and waiting)."""
    stable: float
    """Replicas the SLO model asks for at the stable window's workload."""
    stable_up: Callable[[], float]
    """The same at (1 + tolerance) times the rate's estimate: where a scale-up goes
    (computed when a scale-up asks for it)."""
    stable_down: Callable[[], float]
    """The fewest replicas whose miss share, averaged over the rate's error over the
    scale-down delay (:func:`_down_estimate`), is within the budget: how far a
    scale-down may go. Computed when asked for, and only below the current replicas
    (the current count where none fewer do): a scale-down is all it decides."""
    panic_avg: float
    """Replicas the SLO model asks for at the panic window's workload."""
    up_pileup: Callable[[], float]
    """Replicas the SLO model asks for at the stable window's workload, as
    ``stable_up``, plus the queue that the arrivals beyond the ready replicas pile up
    over one cold start (:func:`_pileup`): the size of a scale-up the stable window
    triggered (computed when asked for)."""
    panic_pileup: Callable[[], float]
    """The same for a panic: the size of a panic scale-up on a level that moved, read
    from the last interval's arrivals at their point estimate. The panic test reads
    the panic window at the low end of its counting noise, so the load is past the
    ready replicas; sized at that low end and over the samples covering the window
    (10 s at decisions every 5 s, half of them before a step), the first ask fell
    short and was raised twice while its replicas started (the sweep's step: 4
    frontier replicas, then 5)."""
    level: bool
    """The last hour's arrivals were no burstier than Poisson (the pooled ``ca2``): a
    load past the ready replicas is a level that moved, not a burst the queueing model
    prices. The pile-up and the raised ask while replicas start apply to it alone."""
    piles_up: bool
    """The pile-up applies (``DecisionConfig.pileup`` on a ``level`` load): a scale-up
    drains its cold start's queue, and the cold-start-aware rule lets a panic past the
    band go."""
    profile: ReplicaProfile
    """What one replica serves (:func:`_profile`), for the rules that price a count."""
    panic_band: float
    """The same at (1 - tolerance) x the panic window's workload, where the panic test
    or the burst memory reads it; else ``panic_avg``."""
    by_concurrency: bool
    """No rate measured: ``stable`` is the requests in flight per targetOngoingRequests."""
    samples: tuple[tuple[float, float], ...]
    rates: tuple[tuple[float, float, float, float, float, float], ...]
    bursts: tuple[tuple[float, float], ...]
    minutes: tuple[tuple[float, float, float, float, float, float], ...]
    drift: float | None
    last_prompt: float
    first_seen: float
    basis: str
    arrivals: float = 0.0
    """The stable window's arrivals per second, without the queue's term, at the lower
    bound of their counting noise (0 where too few requests were counted)."""
    full_load: float = 0.0
    """Those arrivals in replicas at full utilisation: over the requests per second one
    replica serves at the window's token means (what a return of this load needs
    without a queue growing)."""
    arrivals_workload: Workload | None = None
    """The window's workload at those arrivals, as the SLO model prices it."""


def _workload(
    view: ModelView,
    rates: tuple[tuple[float, float, float, float, float, float], ...],
    since: float,
    waiting: float,
    cfg: DecisionConfig,
) -> tuple[Workload, float, float]:
    """The workload of the samples after ``since``, how many requests started in them
    (the token means' sample size) and the part of its rate that is the queue spread
    over a cold start (counted, not estimated): mean rate and token means, the
    arrivals' burstiness from the dispersion of the per-interval counts (at least
    Poisson's), plus the queued requests spread over one cold start (a backlog that the
    ready replicas clear before a new one could serve adds little)."""
    sel = [x for x in rates if x[0] > since] or list(rates[-1:])
    rps = _mean([x[1] for x in sel])
    # vLLM counts requests when they finish but prompt tokens when they are prefilled
    # (and output tokens as they are generated), so the tokens of a window belong to
    # the requests that started in it: the finished ones plus the growth of those
    # running. Arrivals are the started ones plus the queue's growth (under overload
    # completions are the capacity, not the demand). Flow conservation, both.
    start = ([x for x in rates if x[0] <= since][-1:] or sel)[0]
    span = sel[-1][0] - start[0]
    started = rps + (sel[-1][5] - start[5]) / span if span > 0 else rps
    if started <= 0:
        started = rps
    arrivals = max(rps, started + (sel[-1][4] - start[4]) / span) if span > 0 else rps
    prompt_rate = _mean([x[2] for x in sel])
    gen_rate = _mean([x[3] for x in sel])
    prompt = prompt_rate / started if started > 0 else 0.0
    output = gen_rate / started if started > 0 else 0.0
    ca2 = 1.0
    if len(sel) >= 3 and rps > 0:
        gap = (sel[-1][0] - sel[0][0]) / (len(sel) - 1)
        var = _mean([(x[1] - rps) ** 2 for x in sel])
        # The index of dispersion of the counts per interval, less two of its standard
        # errors (sqrt(2 / (k - 1)) for k counts): burstier than Poisson only where the
        # samples show it beyond their own noise.
        idc = var * gap / rps
        ca2 = max(1.0, idc - 2 * math.sqrt(2 / (len(sel) - 1)))
    backlog = _spread(waiting, view)
    # One sample's rate covers at least the panic window (the shortest the loop reads).
    count = started * max(span, cfg.panic_window_s)
    w = Workload(rate=arrivals + backlog, prompt=prompt, output=output, ca2=ca2, cs2=cfg.prompt_scv)
    return w, count, backlog


def _spread(queued: float, view: ModelView) -> float:
    """A queue of ``queued`` requests as a rate: spread over one cold start (at least
    the TTFT SLO), the time a replica asked for now takes to serve it."""
    return queued / max(view.cold_start_s, view.ttft_slo_s)


def _scaled(w: Workload, backlog: float, factor: float) -> Workload:
    """The workload with its estimated arrival rate (not the counted backlog) scaled."""
    return w.at_rate(max(0.0, (w.rate - backlog) * factor) + backlog)


def _pileup(
    w: Workload, arrivals: float, ready: int, profile: ReplicaProfile, view: ModelView
) -> Workload:
    """``w`` with the queue that a scale-up asked for now finds when its replicas are
    ready added to its rate, spread over one cold start like the measured queue
    (:func:`_spread`). Until then only the ``ready`` replicas serve: the ``arrivals``
    (per second, the point estimate) beyond what they carry at the workload's token
    means pile up for ``cold_start_s``. Replicas sized for the arrivals alone find that
    queue and drain it at their spare rate: a step from one frontier replica to 21.6
    req/s (9 req/s each, 120 s cold start) piles up 1,500 requests, which three replicas
    drain in 280 s with every arrival late; four drain it within the cold start. A
    load within the ready replicas' capacity piles up nothing."""
    if w.prompt <= 0 or arrivals <= 0:
        return w
    carried = ready * profile.tokens_per_s(w.prompt, w.output) / w.prompt
    return w.at_rate(w.rate + _spread(max(0.0, arrivals - carried) * view.cold_start_s, view))


def _piled_reason(more: int) -> str:
    return f"{more} more to drain what arrives beyond the ready replicas in a cold start"


def _panic_piled_reason(n: int) -> str:
    return (
        f"{n} for its arrivals as measured and what they pile up beyond the ready"
        " replicas in a cold start"
    )


def _relative_error(
    w: Workload, count: float, cfg: DecisionConfig, z: float | None = None
) -> float:
    """``z`` (``confidence_z`` by default) standard errors of the measured work rate,
    relative to it. The prompt tokens of a window are a sum over its arrivals: with the
    counts' index of dispersion ``ca2`` and the prompt lengths' squared CV ``cs2``, the
    variance of that sum over its mean squared is (ca2 + cs2) / count (compound Poisson
    for ca2 = 1)."""
    if count <= 0:
        return 0.0
    return (cfg.confidence_z if z is None else z) * math.sqrt((w.ca2 + w.cs2) / count)


def scale_up_z(looks: int, cfg: DecisionConfig) -> float:
    """The standard errors below the measured rate at which the stable window's load
    adds a replica: at least ``confidence_z``, and enough that a steady load at the
    edge of a count crosses that bound by counting noise about once per
    ``false_scale_up_s``.

    The window is read ``looks`` times over its length (once per decision interval), so
    successive readings share all but one interval's arrivals: a moving sum of
    ``looks`` counts, whose readings one interval apart correlate at 1 - 1/looks. By
    Rice's formula for such a sequence, its standardised value upcrosses ``z`` about
    phi(z) / sqrt(pi x looks) times per reading, that is phi(z) x sqrt(looks / pi) /
    ``stable_window_s`` per second (phi: the standard normal density; checked against a
    simulated moving sum: 6.2 crossings an hour at z = 2 with 12 readings a minute, 0.96
    at 2.75). A one-sided 2 sigma band read every 5 s is crossed six times an hour:
    each crossing a replica added and, minutes later, taken away. A load that truly
    outgrows its replicas still scales up: its queue grows (the backlog term adds to
    the load, noise does not accumulate one), and a burst past the panic threshold is
    the panic rule's."""
    if cfg.confidence_z <= 0 or cfg.false_scale_up_s <= 0:
        return cfg.confidence_z
    density = cfg.stable_window_s * math.sqrt(math.pi / max(looks, 1)) / cfg.false_scale_up_s
    if density * math.sqrt(2 * math.pi) >= 1:  # a crossing more often than that at z = 0
        return cfg.confidence_z
    return max(cfg.confidence_z, math.sqrt(-2 * math.log(density * math.sqrt(2 * math.pi))))


def _pooled_ca2(
    minutes: tuple[tuple[float, float, float, float, float, float], ...], cfg: DecisionConfig
) -> float:
    """The arrivals' burstiness over ``minutes`` (the ``drift_window_s`` history; at
    least Poisson's): the one-minute windows' ``ca2`` (each the dispersion of its
    per-interval counts, stored with the prompts' ``cs2``), weighted by the requests
    each counted. 1.0 when off or before any minute was counted (see
    ``DecisionConfig.pooled_burstiness``)."""
    if not cfg.pooled_burstiness:
        return 1.0
    counted = sum([m[3] for m in minutes if m[3] > 0], 0.0)
    if counted <= 0:
        return 1.0
    scv = cfg.prompt_scv
    return max(1.0, sum([(m[4] - scv) * m[3] for m in minutes if m[3] > 0], 0.0) / counted)


def _kv_load(
    minutes: tuple[tuple[float, float, float, float, float, float], ...],
    now: float,
    w: Workload,
    counted: float,
    cfg: DecisionConfig,
) -> tuple[float, float, float]:
    """Arrivals per second and mean prompt and output tokens over the scale-down delay
    (the stable window's and the earlier minutes' in it; token means weighted by the
    requests each counted): the KV-cache term's load
    (:attr:`~tokenyard.autoscaler.decide.slo.Workload.kv_load`)."""
    since = now - cfg.scale_down_delay_s
    recent = [m for m in minutes if m[0] > since]
    rate = (sum(m[1] for m in recent) + w.rate) / (len(recent) + 1)
    parts = [(m[3], m[2], m[5]) for m in recent if m[3] > 0]
    parts.append((counted, w.prompt, w.output))
    total = sum(c for c, _, _ in parts)
    return (
        rate,
        sum(c * p for c, p, _ in parts) / total,
        sum(c * o for c, _, o in parts) / total,
    )


def _drift(
    minutes: tuple[tuple[float, float, float, float, float, float], ...], lag: int
) -> float | None:
    """The variance of the relative change of one-minute work rates ``lag`` samples
    apart, less the counting noise of the two (at least 0): how far the load itself
    moves within one scale-down delay. None until six such changes have been seen."""
    moves = [
        (b[1] * b[2], a[1] * a[2], a[4] / max(a[3], 1.0) + b[4] / max(b[3], 1.0))
        for a, b in zip(minutes, minutes[lag:], strict=False)
        if a[1] * a[2] + b[1] * b[2] > 0
    ]
    if len(moves) < 6:
        return None
    change = _mean([((x - y) / ((x + y) / 2)) ** 2 for x, y, _ in moves])
    return max(0.0, change - _mean([noise for *_, noise in moves]))


def _down_window(
    minutes: tuple[tuple[float, float, float, float, float, float], ...], lag: int, drift: float
) -> tuple[int, float]:
    """How many of the latest one-minute windows a scale-down's estimate averages, and
    that mean's squared relative error. From the delay window (``lag`` minutes) back to
    the whole history: more minutes count more requests (counting noise
    ``sum((ca2 + cs2) n) / N**2``), but their mean lies further from the delay window's
    level when the load moves. The load's measured drift (the variance of its relative
    change over ``lag`` minutes) taken as a steady trend bounds that: a mean of ``k``
    minutes is centred ``(k - lag) / 2`` minutes before the delay window's, so off by
    ``drift * ((k - lag) / (2 lag))**2`` squared. The count with the least sum wins (the
    delay window itself where the load moves; the whole history where it does not)."""
    n = len(minutes)
    best_k, best = min(lag, n), math.inf
    counted = noise = 0.0
    for k in range(1, n + 1):
        bias = drift * ((k - lag) / (2 * lag)) ** 2 if k > lag else 0.0
        if bias >= best:
            break  # the bias only grows with k, and the noise is not negative
        m = minutes[-k]
        counted += m[3]
        noise += m[4] * m[3]
        if k < min(lag, n) or counted <= 0:
            continue
        var = noise / counted / counted + bias
        if var < best:
            best_k, best = k, var
    return best_k, best


def _down_estimate(  # noqa: PLR0917
    w: Workload,
    backlog: float,
    count: float,
    minutes: tuple[tuple[float, float, float, float, float, float], ...],
    drift: float,
    cfg: DecisionConfig,
) -> tuple[Workload, float]:
    """The workload a scale-down sizes for and the relative standard deviation of its
    rate over the scale-down delay. A replica removed now is missed if the load within
    the delay window comes back, so the estimate is a mean over at least the delay
    window's minutes (more requests counted than the stable window's: a narrower error;
    a rising load is the scale-up rule's, which reads the stable window), over more of
    the last hour's where the load's drift says their mean still tells the delay
    window's level (:func:`_down_window`), and its error adds to that mean's the load's
    own drift over one delay (:func:`_drift`; until it is measured, (tolerance /
    confidence_z) squared). A steady load is then known ever more precisely and sized
    close to its need; a load that moves keeps the band it shows."""
    rate, prompt = max(0.0, w.rate - backlog), w.prompt
    lag = max(1, round(cfg.scale_down_delay_s / cfg.stable_window_s))
    k, var = _down_window(minutes, lag, drift)
    if not math.isfinite(var):  # no minute counted a request: this window's noise
        var = (w.ca2 + w.cs2) / count if count > 0 else 0.0
    else:
        recent = minutes[-k:]
        long_rate = _mean([m[1] for m in recent])
        long_work = _mean([m[1] * m[2] for m in recent])
        if long_rate > 0:
            rate, prompt = long_rate, long_work / long_rate
    return replace(w, rate=rate + backlog, prompt=prompt), math.sqrt(var + drift)


def _profile(view: ModelView, cfg: DecisionConfig) -> ReplicaProfile:
    return ReplicaProfile(
        prefill_tokens_per_s=view.nominal_tokens_per_s,
        decode_tokens_per_s=view.decode_tokens_per_s,
        kv_tokens=view.kv_cache_tokens,
        # Off (the default), the replicas' prefill queues are taken as one pooled queue:
        # what a router that balances prefill work (LeastQueuedTokens) realises.
        router=view.replica_router if cfg.replica_queues else "LeastQueuedTokens",
        kv_admission=cfg.kv_admission,
    )


def slo_replicas(
    view: ModelView,
    w: Workload,
    cfg: DecisionConfig,
    headroom: float = 1.0,
    *,
    margin: float | None = None,
) -> int:
    """The fewest replicas the queueing model says meet the model's TTFT SLO with the
    margin (``cfg.slo_margin``, or ``margin``), at ``headroom`` times the workload's rate."""
    if w.rate <= 0 or w.prompt <= 0:
        return 0
    budget = (1 - cfg.slo_target) * (cfg.slo_margin if margin is None else margin)
    scaled = w if headroom == 1.0 else w.at_rate(w.rate * headroom)
    limit = max(view.max_replicas, view.current_replicas) + 1
    return replicas_for_slo(scaled, _profile(view, cfg), view.ttft_slo_s, budget, limit)


def slo_down(
    view: ModelView, w: Workload, cfg: DecisionConfig, sigma: float, below: int | None = None
) -> int:
    """The fewest replicas whose SLO miss averaged over a relative rate error ``sigma``
    is within the margin (:func:`~tokenyard.autoscaler.decide.slo.expected_miss`); with
    ``below`` (at least 1), the search stops there: the count where it is under
    ``below``, else ``below``."""
    if w.rate <= 0 or w.prompt <= 0:
        return 0
    budget = (1 - cfg.slo_target) * cfg.slo_margin
    limit = max(view.max_replicas, view.current_replicas) + 1
    if below is not None and below >= 1:
        limit = min(limit, below)
    # A load above the fleet is seen within a stable window and served a cold start later.
    horizon = cfg.stable_window_s + view.cold_start_s
    return replicas_for_expected_slo(
        w, _profile(view, cfg), view.ttft_slo_s, budget, limit, sigma, horizon
    )


# Positional, as recommend calls it; each argument is one input of the measurement.
def _measure(  # noqa: PLR0917
    view: ModelView,
    signals: ModelSignals,
    state: ModelState,
    now: float,
    cfg: DecisionConfig,
    margin: float,
) -> _Load:
    running = signals.running or 0.0
    waiting = signals.waiting or 0.0
    rps = signals.request_rate or 0.0
    prompt_rate = signals.prompt_tokens_per_s or 0.0
    current = view.current_replicas
    ready = view.ready_replicas if view.ready_replicas is not None else current
    ready = min(ready, current) if current > 0 else 0

    # The load in replicas: the fewest the queueing model (decide/slo.py) says meet the
    # TTFT SLO for the rate and token means of the stable window (and of the panic
    # window, for bursts). Before any request has finished, the rate is unknown:
    # requests in the engines' batches per targetOngoingRequests stand in.
    rates = (
        *(x for x in state.rates if x[0] > now - cfg.stable_window_s),
        (now, rps, prompt_rate, signals.generation_tokens_per_s or 0.0, waiting, running),
    )
    w_stable, counted, backlog = _workload(view, rates, now - cfg.stable_window_s, waiting, cfg)
    w_seen, seen_backlog = w_stable, backlog  # as measured, before a forecast replaces it
    w_panic, counted_panic, _ = _workload(view, rates, now - cfg.panic_window_s, waiting, cfg)
    measured = counted >= cfg.min_requests_measured
    if measured and counted_panic < cfg.min_requests_measured:
        # Too few requests started in the panic window for their token means (the same
        # rule as the stable window's): a 6 s window of long prompts may count one, and
        # its prompt tokens over a fraction of a started request read as a prompt tens
        # of times the mean. The stable window's means stand in; the rate stays the
        # panic window's.
        w_panic = replace(w_panic, prompt=w_stable.prompt, output=w_stable.output)
    if measured and cfg.kv_admission:  # the KV-cache term's load: read by nothing else
        kv_load = _kv_load(state.minutes, now, w_stable, counted, cfg)
        w_stable, w_panic = replace(w_stable, kv_load=kv_load), replace(w_panic, kv_load=kv_load)
    # A short window counts few requests: only a load above the lower confidence bound
    # of its work rate (counting noise and the prompt lengths' spread) is a burst.
    rel_panic = _relative_error(w_panic, counted_panic, cfg)
    panic_arrivals = max(0.0, w_panic.rate - backlog)  # the point estimate: see _pileup
    w_panic = _scaled(w_panic, backlog, max(0.0, 1 - rel_panic))
    load_conc = 0.0
    if rps <= 0 or prompt_rate <= 0 or not measured:
        load_conc = signals.ongoing / view.target_ongoing
    if not measured:  # too few requests for their token means: concurrency stands in
        w_stable = w_panic = replace(w_stable, rate=0.0)
    # The last measured prompt mean stands in while too few requests come (an idle
    # model, overnight at zero replicas), so a forecast can wake it before its load.
    last_prompt = w_stable.prompt if measured and w_stable.prompt > 0 else state.last_prompt
    prompt = last_prompt
    forecast = False
    if view.forecast_rps is not None and view.forecast_rps > w_stable.rate and prompt > 0:
        # Size for the load a cold start ahead: replicas started now serve it.
        # The forecast's upper quantile already allows for its error: no further bound.
        w_stable = replace(w_stable, rate=view.forecast_rps, prompt=prompt)
        backlog, forecast = 0.0, True
    samples = (*(x for x in state.samples if x[0] > now - cfg.stable_window_s), (now, load_conc))
    conc_stable = _mean([v for _, v in samples])
    conc_panic = _mean([v for t, v in samples if t > now - cfg.panic_window_s])
    # The rate and the token means are estimates from the requests the window counted:
    # the work they bring (prompt tokens per second) is a compound count whose relative
    # standard error is sqrt((ca2 + cs2) / count). A replica is added only when the load
    # at the lower confidence bound needs it, and the fleet is sized (up or down) for the
    # upper bound: counting noise alone neither adds nor removes one. The band is never
    # narrower than the tolerance, so a load that drifts slowly does not flap either.
    rel = 0.0
    if measured and not forecast:
        rel = _relative_error(w_stable, counted, cfg, scale_up_z(len(rates), cfg))
    # One sample per stable window, measured or not: the quiet minutes of a bursty load
    # (few or no requests) are part of how far it moves.
    minutes = _after(state.minutes, now - cfg.drift_window_s)
    # The queue prices the burstiness of the last hour, not only of this minute; the
    # band above keeps this window's (DecisionConfig.pooled_burstiness).
    pooled = _pooled_ca2(minutes, cfg)

    def bursty(w: Workload) -> Workload:
        return w if w.ca2 >= pooled else replace(w, ca2=pooled)

    lo = _scaled(w_stable, backlog, max(0.0, 1 - rel))
    # A scale-up may spend the reserve that the measured attainment left unspent
    # (``margin``, DecisionConfig.budget_feedback); a scale-down keeps slo_margin's.
    stable = max(float(slo_replicas(view, bursty(lo), cfg, margin=margin)), conc_stable)
    up = _scaled(w_stable, backlog, 1 + cfg.tolerance)

    def stable_up() -> float:
        return max(float(slo_replicas(view, bursty(up), cfg, margin=margin)), conc_stable)

    profile = _profile(view, cfg)
    # A load that grows past its ready replicas piles up a queue while the replicas
    # asked for start, unless its excess is a burst of the kind the queueing model
    # already prices: where the last hour's arrivals were burstier than Poisson, it
    # sizes for that burstiness (``pooled``), and a burst is over before a cold start
    # (the Azure code trace: every such pile-up bought replicas that served no late
    # request). No burstier than Poisson, a load past the ready replicas is a level
    # that moved (a step, the start of an active period).
    level = pooled <= 1.0
    seen_arrivals = max(0.0, w_seen.rate - seen_backlog) if measured else 0.0

    def up_pileup() -> float:
        piled = _pileup(up, seen_arrivals, ready, profile, view)
        return max(float(slo_replicas(view, bursty(piled), cfg, margin=margin)), conc_stable)

    drift = state.drift
    first_seen = state.first_seen if state.first_seen is not None else now
    # Only whole windows: the first one after start-up counted from empty counters.
    if now - first_seen >= cfg.stable_window_s and (
        not minutes or now - minutes[-1][0] >= cfg.stable_window_s
    ):
        minutes = (
            *minutes,
            (now, max(0.0, w_seen.rate - seen_backlog), w_seen.prompt, counted,
             w_seen.ca2 + w_seen.cs2, w_seen.output),
        )  # fmt: skip
        drift = _drift(minutes, max(1, round(cfg.scale_down_delay_s / cfg.stable_window_s)))
    if measured and not forecast and cfg.confidence_z > 0:
        if drift is None:  # not measured yet: the tolerance as one band's worth
            drift = (cfg.tolerance / cfg.confidence_z) ** 2
        center, sigma = _down_estimate(w_stable, backlog, counted, minutes, drift, cfg)

        def stable_down() -> float:
            below = view.current_replicas
            return max(float(slo_down(view, bursty(center), cfg, sigma, below)), conc_stable)

    else:

        def stable_down() -> float:
            return max(float(slo_replicas(view, bursty(up), cfg)), conc_stable)

    panic_avg = max(float(slo_replicas(view, bursty(w_panic), cfg, margin=margin)), conc_panic)

    def panic_pileup() -> float:
        # A level that moved is measured by the last interval alone: the panic window
        # (the samples that cover its 6 s: 10 s at decisions every 5 s) still holds
        # some of the level before. At its point estimate: the panic test already read
        # the window at the low end of its counting noise.
        last, arrivals = w_panic, panic_arrivals
        if measured and len(rates) > 1:
            last, counted_last, _ = _workload(view, rates, rates[-2][0], waiting, cfg)
            if counted_last < cfg.min_requests_measured:  # as the panic window's
                last = replace(last, prompt=w_seen.prompt, output=w_seen.output)
            last = replace(last, kv_load=w_panic.kv_load)
            arrivals = max(0.0, last.rate - backlog)
        piled = _pileup(last, arrivals, ready, profile, view)
        return max(float(slo_replicas(view, bursty(piled), cfg, margin=margin)), conc_panic)

    # The panic window's count at (1 - tolerance) x its load: the dead band on the load, not
    # on the count (one replica's count is 2 at any load past what it carries, noise
    # included). Computed only where a rule reads it: the panic test (the count alone
    # would panic) and, on Poisson arrivals, the burst memory (the count is past the
    # stable one).
    panic_band = panic_avg
    if (ready > 0 and panic_avg >= cfg.panic_threshold * ready) or (
        pooled <= 1.0 and panic_avg > stable
    ):
        shrink = 1 - cfg.tolerance
        band = slo_replicas(view, bursty(w_panic), cfg, shrink, margin=margin)
        panic_band = max(float(band), conc_panic * shrink)
    tokens = signals.tokens_per_s
    # The prompt tokens in flight, at this interval's prompt mean, or, in an interval
    # that prefilled none (a decode finishing), the last measured one; 0 where neither is
    # known (the rules that read it then stay out).
    in_flight = (running + waiting) * (
        prompt_rate / rps if rps > 0 and prompt_rate > 0 else last_prompt
    )
    # The burst memory pre-provisions for the next burst like the last: where the last
    # hour's arrivals are no burstier than Poisson (``pooled``), a panic window past
    # the stable count is counting noise met once per few hundred windows, not a burst
    # to come, unless its load is past the band.
    burst_need = max(stable, panic_band if pooled <= 1.0 else panic_avg)
    bursts = (
        *(x for x in state.bursts if x[0] > now - cfg.panic_window_s),
        (now, burst_need),
    )
    pred = predict(bursty(w_stable), profile, max(ready, 1), view.ttft_slo_s)
    basis = (
        f"{'forecast ' if forecast else ''}{w_stable.rate:.2f} req/s x "
        f"{w_stable.prompt:.0f} prompt tokens "
        f"(60s avg, ca2 {w_stable.ca2:.1f}, last hour's {pooled:.1f}): "
        f"SLO model needs {stable:.0f} "
        f"(predicted miss {pred.miss:.1%} at {max(ready, 1)}; "
        f"adding replicas past {margin:.0%} of the miss budget)"
    )
    by_concurrency = conc_stable > 0 and conc_stable >= stable
    if by_concurrency:
        basis = (
            f"{signals.ongoing:.0f} in flight, no rate measured: "
            f"{conc_stable:.2f} replicas of load at {view.target_ongoing:g} per replica (60s avg)"
        )
    # The load a scale-down risks should it return (return_risk): the arrivals as
    # measured, less the queue's term, at the lower bound of their counting noise, as a
    # scale-up reads them.
    arrivals = full_load = 0.0
    arrivals_workload = None
    if measured and w_seen.prompt > 0:
        arrivals = max(0.0, w_seen.rate - seen_backlog)
        arrivals *= max(0.0, 1 - _relative_error(w_seen, counted, cfg))
        per_replica = profile.tokens_per_s(w_seen.prompt, w_seen.output)
        full_load = arrivals * w_seen.prompt / per_replica if per_replica > 0 else 0.0
        arrivals_workload = bursty(w_seen.at_rate(arrivals))
    return _Load(
        arrivals=arrivals,
        full_load=full_load,
        arrivals_workload=arrivals_workload,
        running=running,
        waiting=waiting,
        active=signals.ongoing > 0 or rps > 0,
        ready=ready,
        tokens=tokens,
        in_flight=in_flight,
        stable=stable,
        stable_up=stable_up,
        stable_down=stable_down,
        panic_avg=panic_avg,
        up_pileup=up_pileup,
        panic_pileup=panic_pileup,
        level=level,
        piles_up=cfg.pileup and level,
        profile=profile,
        panic_band=panic_band,
        by_concurrency=by_concurrency,
        samples=samples,
        rates=rates,
        bursts=bursts,
        minutes=minutes,
        drift=drift,
        last_prompt=last_prompt,
        first_seen=first_seen,
        basis=basis,
    )


def _asks(view: ModelView, signals: ModelSignals, ld: _Load) -> tuple[float, str, float]:
    """The largest of the per-signal asks (load, KV cache, GPU, TTFT), its reason, and
    the SLO pressure."""
    current = view.current_replicas
    ready, waiting = ld.ready, ld.waiting
    # Each rule says how many replicas it wants (a float); the largest wins.
    asks: list[tuple[float, str]] = [(ld.stable, ld.basis)]
    # The guards below read a queue as work the SLO model missed. One that shrank since
    # the last sample is being cleared by the ready replicas (the backlog of a cold
    # start, which the SLO model counts): no guard adds to it; one that holds or grows
    # is work they do not keep up with.
    draining = len(ld.rates) >= 2 and waiting < ld.rates[-2][4]
    if ready > 0:
        if signals.kv_cache_usage is not None:
            asks.append(
                (
                    ready * signals.kv_cache_usage / view.target_kv,
                    f"KV cache {signals.kv_cache_usage:.0%} vs target {view.target_kv:.0%}",
                )
            )
        # A busy GPU with nothing queued is well used, not overloaded: decode keeps a GPU
        # "utilised" at any batch size, so utilisation only counts (as a guard against
        # a model that underestimates the work) with a queue that the ready replicas
        # do not clear within the TTFT SLO.
        queued_s = (
            ld.in_flight * waiting / max(ld.running + waiting, 1e-9)
            / (ready * view.nominal_tokens_per_s)
        )  # fmt: skip
        if (
            signals.gpu_utilization is not None
            and signals.gpu_utilization > view.target_gpu_util
            and waiting > 0
            and not draining
            and (ld.in_flight == 0 or queued_s > view.ttft_slo_s)
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
        if (
            signals.ttft_p95_s > view.ttft_slo_s
            and ready >= current > 0
            and waiting > 0
            and not draining
        ):
            asks.append(
                (ready + 1.0, f"TTFT p95 {signals.ttft_p95_s:.2f}s over SLO {view.ttft_slo_s:g}s")
            )
    want, why = max(asks, key=lambda a: a[0])
    return want, why, slo_pressure


def _dead_band(
    want: float, why: str, current: int, ld: _Load, cfg: DecisionConfig
) -> tuple[int, str]:
    """The SLO model's count at the rate's lower confidence bound scales up as soon as
    it exceeds the current replicas, to what meets the SLO at (1 + tolerance) times the
    estimate; a scale-down goes only to what still meets it at the upper confidence
    bound (at least 1 + tolerance times the estimate): the band between the two is
    where counting noise cannot tell the counts apart (hysteresis). A guard (KV cache,
    GPU with a queue, TTFT) scales up past +tolerance and down only to a count that
    keeps the tolerance as headroom; so does the requests-in-flight stand-in before a
    rate is measured (one count of a fluctuating number, with no confidence band of its
    own: 16.3 in flight at 16 per replica is no reason for a second replica)."""
    if want <= ld.stable and not ld.by_concurrency:  # the SLO model's ask wins
        if ld.stable > current or (current == 0 and ld.stable > 0):
            # Up to what meets the SLO at (1 + tolerance) times the load, inside the
            # band a scale-down keeps, so a ramp takes fewer, larger steps; and what
            # drains the queue the cold start piles up (DecisionConfig.pileup).
            n = _ceil(max(ld.stable, ld.stable_up()))
            if ld.piles_up:
                piled = _ceil(ld.up_pileup())
                if piled > n:
                    return piled, f"{why}; {_piled_reason(piled - n)}"
            return n, why
        n = _ceil(ld.stable_down())
        if n < current:
            return n, why
        return current, f"steady: {why}"
    want = max(want, ld.stable)
    if want > current * (1 + cfg.tolerance) or (current == 0 and want > 0):
        return _ceil(want), why
    n_down = max(_ceil(want / (1 - cfg.tolerance)), _ceil(ld.stable_down()))
    n = n_down if n_down < current else current
    if n == current:
        why = f"steady: {why}"
    return n, why


# Positional, as recommend calls it; each argument is one input of the panic rule.
def _panic(  # noqa: PLR0917
    n: int, why: str, ld: _Load, state: ModelState, now: float, current: int, cfg: DecisionConfig
) -> tuple[int, str, bool, float | None]:
    """Panic mode while the panic window's count reaches ``panic_threshold`` x the ready
    replicas and its load is past what they carry by more than ``tolerance`` (or
    requests come to none): scale to it, never down."""
    panic_until = state.panic_until
    panic_want = _ceil(ld.panic_avg)
    over = ld.panic_avg >= cfg.panic_threshold * ld.ready and ld.panic_band > ld.ready
    if (ld.ready > 0 and over) or (ld.ready == 0 and ld.active):
        panic_until = now + cfg.stable_window_s
    panic = panic_until is not None and now < panic_until
    piled = _ceil(ld.panic_pileup()) if panic and ld.piles_up else 0
    if panic and max(panic_want, piled) >= n:
        # The count asked for (rounded up), not the load rounded: "needs 0 -> 1" read
        # as a contradiction under a trickle.
        why = f"panic: SLO model needs {panic_want} at the 6s workload"
        if piled > panic_want:
            why, panic_want = f"{why}; {_panic_piled_reason(piled)}", piled
        n = panic_want
    if panic:
        n = max(n, current)
    return n, why, panic, panic_until


# Positional, as recommend calls it; each argument is one input of the floor rule.
def _floor(  # noqa: PLR0917
    view: ModelView, n: int, why: str, ld: _Load, last_active: float, now: float
) -> tuple[int, str, int]:
    """The fewest replicas allowed: the minimum, or zero for a model allowed to idle out;
    one as soon as a request waits at zero."""
    current = view.current_replicas
    floor = view.min_replicas
    if view.min_replicas == 0:
        idle_for = now - last_active
        allowed = view.scale_to_zero_after_s is not None and idle_for >= view.scale_to_zero_after_s
        floor = 0 if allowed or (current == 0 and not ld.active) else 1
        if floor == 0 and n == 0 and current > 0:
            why = f"idle {idle_for:.0f}s >= {view.scale_to_zero_after_s or 0:g}s: scale to zero"
    if ld.active and n == 0:
        # At zero replicas this wakes the model; above it, it only says why the count
        # stops at one (the reason is read on scale-downs too).
        n = 1
        why = (
            "activating: requests waiting at zero replicas"
            if current == 0
            else f"{why}; at least 1 while requests come"
        )
    return n, why, floor


def _keep_warm(
    view: ModelView, state: ModelState, burst_avg: float, now: float, cfg: DecisionConfig
) -> tuple[float, tuple[tuple[float, float], ...], int]:
    """Keep-warm: the largest burst need within the model's keep-warm window (as long as
    keep_warm_usd pays for one replica) bounds scale-down, so a model keeps what its
    last burst needed through the calm between two active periods. Returns the window,
    the peaks to carry and the replicas to keep."""
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
    return keep_warm_s, peaks, warm


def _returns(
    state: ModelState, n: int, now: float, cfg: DecisionConfig
) -> tuple[tuple[float, ...], tuple[tuple[float, float], ...]]:
    """Cost of churn, the record: for each replica count up to ``n`` (recommended now),
    how long ago it was last recommended. A calm longer than the scale-down delay (the
    default window would have scaled down through it) and within ``churn_horizon_s``
    (the scale-down would have saved at most that much replica-time, then cost a cold
    start with the SLO at risk) is a calm the load returned from: it is recorded, kept
    as a sliding maximum over ``churn_memory_s``. Returns when each count was last
    needed, and the calms."""
    calms = tuple(c for c in state.calms if c[0] > now - cfg.churn_memory_s)
    needed = state.needed
    if cfg.churn_horizon_s <= 0:
        return needed, calms
    gaps = [now - t for t in needed[:n]]
    returned = [g for g in gaps if cfg.scale_down_delay_s < g <= cfg.churn_horizon_s]
    if returned:
        calm = max(returned)
        calms = (*(c for c in calms if c[1] > calm), (now, calm))
    return (now,) * n + needed[n:], calms


def _peaks_to_return(
    state: ModelState, ld: _Load, now: float, cfg: DecisionConfig
) -> tuple[ReturnPeak, ...]:
    """The return risk's record (``ModelState.returns``): the measured loads of the last
    ``budget_window_s`` as a sliding maximum of their replicas at full utilisation,
    with this interval's."""
    if not cfg.return_risk or cfg.budget_window_s <= 0:
        return ()
    kept = (r for r in state.returns if r[0] > now - cfg.budget_window_s)
    if ld.full_load <= 0:
        return tuple(kept)
    entry = (now, ld.full_load, ld.arrivals, ld.stable, ld.arrivals_workload)
    return (*(r for r in kept if r[1] > ld.full_load), entry)


def return_misses(  # noqa: PLR0917
    load: float, rate: float, need: float, m: int, cold_start_s: float, slo_s: float
) -> float:
    """Requests that a return of ``rate`` (``load`` replicas at full utilisation, which
    the SLO model sized at ``need``) to ``m`` replicas would make wait past ``slo_s``.

    The queue grows at what the rate exceeds the ``m`` replicas by until the replicas
    asked for then (``need``) are ready one cold start later; from the moment it holds
    more than ``slo_s`` of their work, arrivals miss. After the cold start it drains at
    ``need``'s spare rate, and arrivals keep missing until it is back under ``slo_s``
    of ``need``'s work. A fluid model: the queueing noise around it is the SLO model's
    (measured: it undercounts a return near full utilisation,
    docs/autoscaling-measurements.md)."""
    if m >= load or rate <= 0:
        return 0.0
    mu = rate / load
    excess = rate - m * mu
    backlog = excess * cold_start_s
    until_late = m * mu * slo_s / excess
    during = rate * max(0.0, cold_start_s - until_late)
    spare = need * mu - rate
    if spare <= 0:
        return math.inf
    return max(backlog, during + rate * max(0.0, backlog - need * mu * slo_s) / spare)


def return_risk(  # noqa: PLR0917
    peak: ReturnPeak | None,
    counted: tuple[float, float] | None,
    n: int,
    cold_start_s: float,
    slo_s: float,
    cfg: DecisionConfig,
    miss_share: Callable[[Workload, int], float] | None = None,
) -> tuple[int, str]:
    """The fewest replicas a scale-down to ``n`` keeps so that a return of the load
    ``peak`` (time, replicas at full utilisation, arrivals per second, the SLO model's
    count for them and their workload: the largest load of the last
    ``budget_window_s``) would cost no more misses than the miss budget has left, and
    why; (0, "") where the scale-down risks nothing the budget cannot pay.

    The misses of a return to m replicas are the larger of the fluid queue's
    (:func:`return_misses`) and, where the workload is recorded and ``miss_share``
    (the SLO model's predicted miss share of a workload at m replicas) is given, that
    share of the arrivals over one cold start: the m replicas serve alone until the
    ones asked for then are ready, so m that carry the load but fall short of the SLO
    model's count still cost their share, and past full utilisation the queueing noise
    makes arrivals late before the fluid queue would.

    The budget is the reserve that scale-downs keep, ``slo_margin x (1 - slo_target)``
    of the requests whose first token came within ``budget_window_s``, less the late
    ones (``counted``, as measured; None where the engines report no first-token counts:
    then the rule stays out). A return within that window spends the same budget. A
    model that has served many requests within its SLO can pay for a replica's cold
    start; one whose first burst filled little budget keeps the replicas that burst
    needed through a calm the cost of churn has not learned yet, until
    ``budget_window_s`` has passed without the load."""
    if peak is None or counted is None:
        return 0, ""
    _, load, rate, need, w = peak
    most = max(load, need) if w is not None and miss_share is not None else load
    if most <= n or rate <= 0 or cold_start_s <= 0:
        return 0, ""
    first, late = counted
    budget = max(0.0, cfg.slo_margin * (1 - cfg.slo_target) * first - late)

    def misses(m: int) -> float:
        fluid = return_misses(load, rate, need, m, cold_start_s, slo_s)
        if w is None or miss_share is None:
            return fluid
        # Until the replicas asked for then are ready, the m replicas miss the SLO
        # model's share of the load (all of it past full utilisation, where the fluid
        # queue still counts the first seconds as on time): the larger of the two.
        return max(fluid, miss_share(w, m) * rate * cold_start_s)

    keep = n
    while keep < most and misses(keep) > budget:
        keep += 1
    if keep == n:
        return 0, ""
    return keep, (
        f"return risk: a return of the {rate:.2f} req/s of the last"
        f" {cfg.budget_window_s:.0f}s to fewer than {keep} would miss more requests"
        f" in a {cold_start_s:g}s cold start and its drain than the miss budget has"
        f" left ({budget:.0f})"
    )


def _hold_s(calms: tuple[tuple[float, float], ...], now: float, cfg: DecisionConfig) -> float:
    """Cost of churn, the rule: the scale-down stabilisation window. The scale-down
    delay, or, where the load returned after a calm within the last
    ``churn_memory_s``, the longest such calm plus one stable window (the load is seen
    through a window that long, so a calm's ends are known to within it): a scale-down
    then waits out a calm as long as those the load came back from, instead of removing
    a replica that a scale-up puts back a cold start too late."""
    recent = [c for t, c in calms if t > now - cfg.churn_memory_s]
    if cfg.churn_horizon_s <= 0 or not recent:
        return cfg.scale_down_delay_s
    return max(cfg.scale_down_delay_s, max(recent) + cfg.stable_window_s)


# Positional, as recommend calls it; each argument is one input of the scale-down limits.
def _scale_down(  # noqa: PLR0917
    n: int,
    why: str,
    current: int,
    floor: int,
    warm: int,
    keep_warm_s: float,
    recs: tuple[tuple[float, int], ...],
    hold_s: float,
    state: ModelState,
    now: float,
    cfg: DecisionConfig,
    risk: tuple[int, str],
) -> tuple[int, str]:
    """A scale-down waits for the cool-down after a scale-up, keeps the largest
    recommendation of the stabilisation window (:func:`_hold_s`), keep-warm's count and
    the return risk's (``risk``: :func:`return_risk`'s count and reason), and halves at
    most."""
    in_cooldown = (
        state.last_scale_up is not None and now - state.last_scale_up < cfg.scale_down_delay_s
    )
    if in_cooldown:
        return current, f"cool-down after scale-up: {why}"
    stabilised = max(r[1] for r in recs if r[0] > now - hold_s)
    delayed = max(r[1] for r in recs if r[0] > now - cfg.scale_down_delay_s)
    step_floor = current - max(1, int(current - current / cfg.max_scale_down_rate))
    target = max(n, stabilised, step_floor, warm, risk[0])
    if floor == 0 and n == 0 and current == 1:
        target = max(0, stabilised, risk[0])
    if target > n and risk[0] >= target and risk[0] > max(stabilised, step_floor, warm):
        why = f"{why}; {risk[1]}"
    elif target > n and warm >= target:
        why = f"{why}; keep-warm: a burst of the last {keep_warm_s:.0f}s needed {warm}"
    elif target > n and stabilised > delayed and stabilised >= target:
        calm = hold_s - cfg.stable_window_s
        why = (
            f"{why}; churn: the load came back after calms of up to {calm:.0f}s,"
            f" holding the {stabilised} needed within the last {hold_s:.0f}s"
        )
    elif target > n:
        why = f"{why}; scale-down limited to {target}"
    return min(target, current), why


# Positional, as recommend calls it; each argument is one input of the scale-up limits.
def _scale_up(  # noqa: PLR0917
    n: int, why: str, view: ModelView, ld: _Load, current: int, cfg: DecisionConfig
) -> tuple[int, str]:
    """A scale-up adds at most max(4, rate x current), does not stack on replicas still
    starting, and (cold-start-aware) adds none that would start to an empty queue."""
    n = min(n, max(current + 4, _ceil(current * cfg.max_scale_up_rate)))
    # Replicas asked for are still starting: add more before they serve only for a
    # clearly larger ask, so one burst is one scale event, not one per interval.
    ready = ld.ready
    starting = current - ready
    clear_s = ld.in_flight / (ready * view.nominal_tokens_per_s) if ready > 0 else math.inf
    fraction = cfg.level_restack_fraction if ld.level else cfg.restack_fraction
    if starting > 0 and n < current + max(1, _ceil(fraction * current)):
        return current, f"waiting for {starting} starting replica(s): {why}"
    # Nothing in flight at all: the queue is already empty (in_flight is also 0 when
    # requests are in flight but no prompt mean is known: then the rule stays out).
    idle = ld.running + ld.waiting <= 0
    if (
        cfg.cold_start_aware
        and (ld.in_flight > 0 or idle)
        and clear_s < view.cold_start_s
        and view.cold_start_s > cfg.stable_window_s
        and ld.stable <= ready
        and not (ld.piles_up and ld.panic_band > ready)
    ):
        # A new replica costs from now but serves only after its cold start; when the
        # ready ones clear all in flight before then (or nothing is in flight: a burst
        # that is over) and the steady load fits them, it would start to an empty
        # queue. A backlog that outlasts a cold start, or a steady load beyond the
        # ready replicas, still scales up; so does a level that moved (the pile-up's
        # condition: no burstier than Poisson) with the panic window's load past the
        # ready replicas at the low end of its band, as its queue grows through the
        # cold start whatever is in flight now (the sweep's step held the frontier
        # model's first ask 10 s). Only for cold starts beyond the stable window: a
        # shorter one is likely to meet the next burst of the same active period.
        cleared = (
            f"nothing is in flight, and a replica would start in {view.cold_start_s:g}s"
            if idle
            else f"{ready} ready clear what is in flight in {clear_s:.0f}s"
            f" < {view.cold_start_s:g}s cold start"
        )
        return current, f"cold-start-aware: {cleared}; {why}"
    return n, why


def _counted(attained: tuple[tuple[float, float, float], ...]) -> tuple[float, float]:
    """The requests whose first token came over the samples, and the late ones: each
    sample's rates times the time since the one before (the first only starts the
    count)."""
    first = late = 0.0
    for prev, cur in itertools.pairwise(attained):
        first += cur[1] * (cur[0] - prev[0])
        late += cur[2] * (cur[0] - prev[0])
    return first, late


def _attained(
    state: ModelState, signals: ModelSignals, now: float, cfg: DecisionConfig
) -> tuple[tuple[tuple[float, float, float], ...], tuple[float, float]]:
    """The (time, first tokens per second, late ones per second) samples of the last
    ``budget_window_s``, with this interval's where the engines report them, and what
    they count (:func:`_counted`). The count is carried in the state and moved at its
    ends: the terms of the samples that leave the window (and of the one that becomes
    its first) are taken off, the new sample's added, so a decision does not sum an
    hour of samples again."""
    old = state.attained
    kept = _after(old, now - cfg.budget_window_s)
    if state.attained_count is None:
        first, late = _counted(kept)
    elif not kept:
        first = late = 0.0
    else:
        gone_first, gone_late = _counted(old[: len(old) - len(kept) + 1])
        # Rounding, not requests: what is taken off was added once.
        first = max(0.0, state.attained_count[0] - gone_first)
        late = max(0.0, state.attained_count[1] - gone_late)
    if signals.first_tokens_per_s is None:
        return kept, (first, late)
    sample = (now, signals.first_tokens_per_s, signals.late_first_tokens_per_s or 0.0)
    if kept:
        new_first, new_late = _counted((kept[-1], sample))
        first, late = first + new_first, late + new_late
    return (*kept, sample), (first, late)


def budget_margin(attained: tuple[tuple[float, float, float], ...], cfg: DecisionConfig) -> float:
    """The share of the miss budget a scale-up aims at (``DecisionConfig.budget_feedback``).

    The requests whose first token came, and the late ones, are the samples' rates times
    the time between samples (the first sample only starts the count). Their late share,
    with ``budget_prior_requests`` at the target's share ``b = 1 - slo_target``, is
    ``s``; ``slo_margin`` keeps ``(1 - slo_margin) b`` in reserve, of which
    ``b - s`` went unspent. A scale-up aims at ``slo_margin`` plus that unspent fraction
    of ``slo_margin_max - slo_margin``: the whole of it when the last hour missed no
    more than ``slo_margin b``, none of it at ``b`` or beyond."""
    return _margin(*_counted(attained), cfg)


def _margin(first: float, late: float, cfg: DecisionConfig) -> float:
    """:func:`budget_margin` from the requests counted and the late ones."""
    if not cfg.budget_feedback or cfg.slo_margin_max <= cfg.slo_margin:
        return cfg.slo_margin
    b = 1 - cfg.slo_target
    share = (late + cfg.budget_prior_requests * b) / (first + cfg.budget_prior_requests)
    unspent = min(1.0, max(0.0, (b - share) / (b * (1 - cfg.slo_margin))))
    return cfg.slo_margin + (cfg.slo_margin_max - cfg.slo_margin) * unspent


def _held(view: ModelView, signals: ModelSignals, state: ModelState) -> Recommendation:
    """Without metrics: hold the last safe decision (else the current replicas)."""
    lo, hi = view.min_replicas, view.max_replicas
    held = state.last_desired if state.last_desired is not None else view.current_replicas
    held = min(max(held, lo), hi)
    reason = f"MetricsUnavailable: holding {held} replicas ({signals.detail})"
    return Recommendation(
        desired=held, reason=reason, floor=min(held, max(lo, 0)), metrics_available=False
    )


def recommend(
    view: ModelView,
    signals: ModelSignals,
    state: ModelState,
    now: float,
    cfg: DecisionConfig,
) -> tuple[Recommendation, ModelState]:
    """One model's ask from its signals; the new state carries the windows forward."""
    if not signals.available:
        return _held(view, signals, state), state
    current, hi = view.current_replicas, view.max_replicas
    # The measured attainment decides how much of the miss budget's reserve a scale-up
    # may spend (DecisionConfig.budget_feedback).
    attained, count = _attained(state, signals, now, cfg)
    ld = _measure(view, signals, state, now, cfg, _margin(*count, cfg))
    last_active = now if ld.active or state.last_active is None else state.last_active
    want, why, slo_pressure = _asks(view, signals, ld)
    n, why = _dead_band(want, why, current, ld, cfg)
    n, why, panic, panic_until = _panic(n, why, ld, state, now, current, cfg)
    n, why, floor = _floor(view, n, why, ld, last_active, now)

    # Scale-down remembers the short bursts too: the window's replicas are the most that
    # either the decision or the 6s load asked for, so a load that comes in bursts keeps
    # the capacity its bursts need until it has been calm for scale_down_delay_s.
    burst_avg = _mean([v for _, v in ld.bursts])
    burst = _ceil(burst_avg * (1 - cfg.tolerance)) if cfg.remember_bursts else 0
    # Pre-provision for the next burst like this one, but only while the SLO is at risk:
    # a model whose p95 TTFT keeps well inside its SLO absorbs bursts in its queue.
    at_risk = (
        signals.ttft_p95_s is not None
        and signals.ttft_p95_s > cfg.burst_slo_fraction * view.ttft_slo_s
    )
    if burst > n and burst > current and at_risk:
        n, why = burst, f"burst: the SLO model asked {burst_avg:.2f} over the panic window"
    keep_warm_s, peaks, warm = _keep_warm(view, state, burst_avg, now, cfg)
    n_capped = min(max(n, burst, warm, floor), hi)
    # A sliding maximum over the longest window the stabilisation may use.
    longest = max(cfg.scale_down_delay_s, cfg.churn_horizon_s + cfg.stable_window_s)
    recs = (
        *(r for r in state.recommendations if r[0] > now - longest and r[1] > n_capped),
        (now, n_capped),
    )
    needed, calms = _returns(state, n_capped, now, cfg)
    hold_s = _hold_s(calms, now, cfg)
    returns = _peaks_to_return(state, ld, now, cfg)
    if n < current:
        profile = ld.profile
        risk = return_risk(
            returns[0] if returns else None,
            count if signals.first_tokens_per_s is not None else None,
            n,
            view.cold_start_s,
            view.ttft_slo_s,
            cfg,
            lambda w, m: predict(w, profile, m, view.ttft_slo_s).miss,
        )
        n, why = _scale_down(
            n, why, current, floor, warm, keep_warm_s, recs, hold_s, state, now, cfg, risk
        )
    elif n > current:
        n, why = _scale_up(n, why, view, ld, current, cfg)

    # Pre-warm: for a cheap model (keep-warm lasts several cold starts) the capacity the
    # last burst needed is worth having, not only worth keeping; added once nothing is
    # starting, so a burst still in progress is not restacked.
    if (
        cfg.prewarm_cold_starts > 0
        and keep_warm_s >= cfg.prewarm_cold_starts * view.cold_start_s
        and warm > max(n, current)
        and ld.ready >= current
    ):
        n, why = warm, f"pre-warm: a burst of the last {keep_warm_s:.0f}s needed {warm}"
    n = min(max(n, floor), hi)
    new_state = replace(
        state,
        samples=ld.samples,
        rates=ld.rates,
        bursts=ld.bursts,
        minutes=ld.minutes,
        attained=attained,
        attained_count=count,
        drift=ld.drift,
        last_prompt=ld.last_prompt,
        first_seen=ld.first_seen,
        recommendations=recs,
        needed=needed,
        calms=calms,
        peaks=peaks,
        returns=returns,
        panic_until=panic_until,
        last_active=last_active,
    )
    per_replica = ld.tokens / ld.ready if ld.ready > 0 and ld.tokens > 0 else None
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


__all__ = [
    "budget_margin",
    "recommend",
    "return_misses",
    "return_risk",
    "scale_up_z",
    "slo_replicas",
]
