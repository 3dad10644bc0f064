"""The aggregated (fluid) engine: days of load in seconds, for rate traces.

The per-request engine (:mod:`~tokenyard.autoscaler.sim.engine`) steps every request
through its replica every 0.5 s: exact, but 14 days of a scaled production service are
tens of millions of requests. This engine steps time in ``step_s`` slices (10 s by
default) and moves work, not requests, with the same serving model per model:

* Arrivals per step come from :func:`~tokenyard.autoscaler.sim.rates.fluid_demand`
  (Poisson or bursty counts, prompt tokens summed around the window's mean).
* The ready replicas serve ``ready x rate`` prompt tokens per second, where ``rate`` is
  the smaller of prefillTokensPerSecond and what the KV cache admits at the step's
  token means (Little's law: kvCacheTokens / (prompt + output) sequences, each resident
  for its prefill and its decode of output / decodeTokensPerSecond).
* The backlog is one FIFO fluid queue: within a step arrivals come at an even rate, so
  the backlog moves linearly and the backlog ahead of a request over the service rate is
  its deterministic wait. Work that would wait longer than maxQueueSeconds is dropped
  (and misses).
* Queueing within a step (fluctuations shorter than a step, which the fluid backlog
  cannot see): on top of that wait a request waits for others on its replica, as in an
  M/G/n queue at the prompt-token rate smoothed over :data:`ARRIVAL_SMOOTH_S`: with the
  probability of waiting of Erlang C, ``C(n, lambda / mu)``, and, given that it waits,
  an exponential tail of rate ``(n mu - lambda) * 2 / (1 + cs2)`` (Kingman and
  Allen-Cunneen; Poisson arrivals, ``cs2`` the prompts' squared CV). At or beyond
  saturation of the smoothed rate the term is left out: the fluid backlog is the queue.
* A request's TTFT is that wait plus its own prefill on one replica,
  ``prompt / prefillTokensPerSecond`` (a replica prefills its requests one after the
  other, as the per-request engine's separate replicas do). The share of the step's
  arrivals within the SLO is integrated in closed form over the step
  (:func:`_met_share`).

What it leaves out: the router's imperfect balance (power of two choices queues a little
more than the pooled M/G/n term; ``benchmarks/autoscaler_trace.py --calibrate`` prints
both engines' miss shares beside the queueing model's) and spill-over between models
(each model serves its own routed share). Policies see the same
:class:`~tokenyard.autoscaler.signals.ModelSignals` fields, derived from the fluid
state, and decide every ``interval`` rounded up to whole steps. The requests running
relax to their Little's-law level over a request's time in the engine (its prefill and
decode), and the counters follow vLLM's: prompt tokens when prefilled, a request when it
finishes (those started less the growth of those running), so the decisions' flow
conservation recovers the started requests as it does from a real engine.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from tokenyard.autoscaler.decide import DecisionConfig
from tokenyard.autoscaler.signals import ModelSignals
from tokenyard.autoscaler.sim.baselines import HPA_SCALE_STEPS, _class_cap, hpa_scaled
from tokenyard.autoscaler.sim.engine import Policy, RunResult, Server, _result
from tokenyard.autoscaler.sim.policies import HPAPolicy, TokenyardPolicy, hold
from tokenyard.autoscaler.sim.rates import FluidDemand
from tokenyard.autoscaler.sim.report import Report
from tokenyard.autoscaler.sim.scenario import ModelProfile, Scenario, price_order


def route_shares(scenario: Scenario, draws: int = 100_000) -> list[float]:
    """Each model's share of requests under CheapestSufficient routing (as
    :func:`~tokenyard.autoscaler.sim.scenario.route` sends them), from the scenario's
    difficulty distribution and seed."""
    order = price_order(scenario)
    best = max(range(len(scenario.models)), key=lambda i: scenario.models[i].quality)
    rng = random.Random(scenario.seed)
    a, b = scenario.difficultyBeta
    hits = [0] * len(scenario.models)
    for _ in range(draws):
        d = rng.betavariate(a, b)
        hits[next((i for i in order if scenario.models[i].quality >= d), best)] += 1
    return [h / draws for h in hits]


def replica_token_rate(p: ModelProfile, prompt: float, output: float) -> float:
    """Prompt tokens per second one replica serves at these token means: prefill, or
    what its KV cache admits when sequences hold it longer (Little's law)."""
    prompt = max(prompt, 1.0)
    residency = prompt / p.prefillTokensPerSecond + output / p.decodeTokensPerSecond
    kv_rate = p.kvCacheTokens / (prompt + output) / residency * prompt
    return min(p.prefillTokensPerSecond, kv_rate)


ARRIVAL_SMOOTH_S = 600.0
"""Time constant of the prompt-token rate that the queueing within a step is evaluated
at: a rate trace's window (faster swings are the fluid backlog's)."""

TTFT_WINDOW_S = 30.0
"""The window of arrivals over which the TTFT p95 signal is read (as the per-request
engine's)."""


def _exp_neg(x: float) -> float:
    """exp(-x), 0 for large x and capped at exp(700) for very negative x (a backlog far
    beyond the slack): neither end overflows."""
    return math.exp(-max(x, -700.0)) if x < 700 else 0.0


def erlang_c(n: int, load: float) -> float:
    """The probability that an arrival waits in an M/M/n queue with offered ``load``
    (arrival rate over one server's service rate), by the Erlang B recursion; 1 when
    ``load >= n``."""
    if load >= n:
        return 1.0
    b = 1.0
    for k in range(1, n + 1):
        b = load * b / (k + load * b)
    rho = load / n
    return b / (1.0 - rho * (1.0 - b))


def _tail_integral(d0: float, d1: float, length: float, slack: float, theta: float) -> float:
    """Over a share ``length`` of a step's arrivals whose backlog wait moves linearly from
    ``d0`` to ``d1`` seconds: the integral of exp(-theta (slack - d)) over the arrivals
    with d <= slack (the waiting tail each leaves inside the SLO)."""
    lo, hi = min(d0, d1), min(max(d0, d1), slack)
    if length <= 0 or lo > slack:
        return 0.0
    if hi - lo < 1e-12:
        return length * math.exp(-theta * (slack - lo)) if d0 == d1 else 0.0
    if theta * (hi - lo) < 1e-9:
        part = hi - lo
    else:
        part = (math.exp(-theta * (slack - hi)) - math.exp(-theta * (slack - lo))) / theta
    return part * length / abs(d1 - d0)


# Positional, as fluid_step calls it; each argument is one part of the step.
def _met_share(  # noqa: PLR0917
    q0: float, slope: float, rate: float, slack: float, wait_p: float, theta: float
) -> float:
    """The share of a step's arrivals whose TTFT is within the SLO: the backlog ahead of
    an arrival moves linearly from ``q0`` by ``slope`` tokens over the step (not below
    zero) at ``rate`` tokens/s, ``slack`` is the SLO less the own prefill, and on top of
    the backlog a request waits beyond t with probability ``wait_p * exp(-theta t)``."""
    if slack < 0:
        return 0.0
    pieces: list[tuple[float, float, float]] = []  # (backlog wait from, to, share)
    if slope >= 0 or q0 + slope >= 0:
        pieces.append((q0 / rate, (q0 + slope) / rate, 1.0))
    else:
        x0 = q0 / -slope
        pieces += [(q0 / rate, 0.0, x0), (0.0, 0.0, 1.0 - x0)]
    met = 0.0
    for d0, d1, length in pieces:
        lo, hi = min(d0, d1), max(d0, d1)
        inside = (
            length if hi <= slack else (0.0 if lo > slack else length * (slack - lo) / (hi - lo))
        )
        tail = _tail_integral(d0, d1, length, slack, theta) if wait_p > 0 else 0.0
        met += inside - wait_p * tail
    return min(1.0, max(0.0, met))


class FluidServer(Server):
    """One model's replicas as a fluid FIFO queue (see the module's docstring)."""

    def __init__(self, prof: ModelProfile, price: float) -> None:
        super().__init__(prof, price)
        self.backlog = 0.0
        """Prompt tokens waiting."""
        self.mean_prompt = 1000.0
        self.mean_output = 100.0
        self.served_rps = 0.0
        self.steps: deque[tuple[float, float, float, float, float, float, float, float]] = deque()
        """The last TTFT_WINDOW_S of steps: (end, arrivals, backlog at the start, its
        change, service rate, own prefill, wait probability, tail decay), from which
        :meth:`ttft_p95` reads the window's percentile."""
        self.last_rate = 0.0
        self.requests_f = self.met_f = self.dropped_f = 0.0
        self.windows: dict[int, list[float]] = {}
        """Per 10-minute window: [requests, met], for the static fleet sized for the peak."""
        self.smooth_tps: float | None = None
        self.cs2 = 1.0
        """Squared coefficient of variation of prefill times (that of the prompts)."""
        self.running: float | None = None
        """Requests in the engines' batches: relaxes to its Little's-law level over a
        request's time in the engine, and requests leave it as they finish (None before
        the first step)."""

    def fluid_step(self, now: float, dt: float, n: int, tokens: float, output: float) -> None:
        p = self.p
        ready = self.ready(now)
        if n > 0:
            self.mean_prompt = tokens / n
            self.mean_output = output
        mp, mo = self.mean_prompt, self.mean_output
        per_replica = replica_token_rate(p, mp, mo)
        rate = ready * per_replica
        self.last_rate = rate
        cap = rate * dt
        q0 = self.backlog
        # The prompt-token rate the queueing within a step sees: smoothed over
        # ARRIVAL_SMOOTH_S (the step's own count and tokens move the backlog already).
        w = 1.0 - math.exp(-dt / ARRIVAL_SMOOTH_S)
        self.smooth_tps = (
            tokens / dt
            if self.smooth_tps is None
            else (self.smooth_tps + (tokens / dt - self.smooth_tps) * w)
        )
        own = mp / p.prefillTokensPerSecond  # a request's prefill runs on one replica
        wait_p, theta = self.within_step(ready, per_replica, mp)
        met_share = 0.0
        if n > 0 and rate > 0:
            slack = self.slo - own
            if (
                wait_p > 0
                and wait_p * _exp_neg(theta * (slack - max(q0, q0 + tokens - cap) / rate)) < 1e-9
            ):
                wait_p = 0.0  # the tail leaves every arrival of the step within the SLO
            if wait_p == 0 and q0 <= 0 and tokens <= cap and slack >= 0:
                met_share = 1.0  # no backlog, no wait: the common light-load step
            else:
                met_share = _met_share(q0, tokens - cap, rate, slack, wait_p, theta)
        served = min(q0 + tokens, cap)
        q1 = q0 + tokens - served
        limit = (rate if rate > 0 else tokens / dt) * self.p_max_queue
        dropped = 0.0
        if q1 > limit:
            dropped = (q1 - limit) / max(mp, 1.0)
            q1 = limit
        self.backlog = q1
        self.requests_f += n
        self.met_f += n * met_share
        self.i_first += n
        self.i_late += n * (1 - met_share)
        win = self.windows.setdefault(int(now // 600), [0.0, 0.0])
        win[0] += n
        win[1] += n * met_share
        self.dropped_f += dropped
        served_req = served / max(mp, 1.0)
        self.served_rps = served_req / dt
        if n > 0:
            self.steps.append((now + dt, n, q0, tokens - cap, rate, own, wait_p, theta))
        while self.steps and self.steps[0][0] < now + dt - TTFT_WINDOW_S:
            self.steps.popleft()
        # vLLM counts a request when it finishes, its prompt tokens when they are
        # prefilled: the finished ones are the started ones less the growth of those
        # running (flow conservation, as the decisions read the counters), so a drop in
        # the load shows as the batches emptying, not as fewer requests finishing.
        level = self._little(ready)
        in_engine = own + mo / p.decodeTokensPerSecond
        a = 1.0 - math.exp(-dt / in_engine) if in_engine > 0 else 1.0
        # Before the first step the load has been running (a trace starts mid-service).
        before = level if self.running is None else self.running
        running = before + (level - before) * a
        self.i_done += max(0.0, served_req - (running - before))
        self.running = running
        self.i_arrivals += n
        self.i_prompt += served
        self.i_gen += served_req * mo
        if ready > 0:
            pre = served / (ready * p.prefillTokensPerSecond * dt)
            dec = min(1.0, self._decoding() / (ready * p.decodeSaturation))
            self.i_busy += min(1.0, pre + (1 - pre) * dec) * dt
        self.i_time += dt
        self.cost += self.asked * self.replica_cost * dt / 3600
        self.gpu_seconds += self.asked * p.gpusPerReplica * dt
        self.replica_seconds += self.asked * dt

    def within_step(self, ready: int, per_replica: float, prompt: float) -> tuple[float, float]:
        """The queueing within a step (see the module's docstring): the probability that
        a request waits behind others on its replica, and the decay rate (per second) of
        the tail of that wait, at the smoothed token rate on ``ready`` replicas of
        ``per_replica`` prompt tokens per second each, for requests of ``prompt`` tokens.
        None at or beyond saturation: the fluid backlog is the queue there."""
        load = (self.smooth_tps or 0.0) / per_replica if per_replica > 0 else math.inf
        if ready <= 0 or load <= 0 or load >= ready:
            return 0.0, math.inf
        spare = (ready * per_replica - (self.smooth_tps or 0.0)) / max(prompt, 1.0)
        return erlang_c(ready, load), spare * 2.0 / (1.0 + self.cs2)

    def ttft_p95(self) -> float | None:
        """The 95th percentile of the TTFT of the last :data:`TTFT_WINDOW_S` of arrivals
        (what a histogram over the window gives, and what the per-request engine
        reports): the smallest t that at most 5% of them exceed, each step's share
        beyond t as in :func:`_met_share`, found by bisection. None without arrivals."""
        total = sum(x[1] for x in self.steps)
        if total <= 0:
            return None

        def beyond(t: float) -> float:
            late = 0.0
            for _, n, q0, slope, rate, own, wait_p, theta in self.steps:
                if rate <= 0 or t < own:
                    late += n
                elif q0 > 0 or slope > 0 or wait_p > 0:
                    late += n * (1.0 - _met_share(q0, slope, rate, t - own, wait_p, theta))
            return late / total

        # Each step's own bound: its largest backlog wait, the own prefill and the
        # wait within the step that 5% exceed; the window's percentile is at most the
        # largest of them (exactly it where no step queues: the common light load).
        hi = 0.0
        queues = False
        for _, _, q0, slope, rate, own, wait_p, theta in self.steps:
            if rate <= 0:
                return self.p_max_queue
            tail = 0.0
            if wait_p > 0.05:
                tail = math.log(wait_p / 0.05) / theta if theta > 0 else self.p_max_queue
            back = max(q0, q0 + slope, 0.0) / rate
            queues = queues or back > 0 or tail > 0
            hi = max(hi, back + own + tail)
        if not queues:
            return hi
        lo = 0.0
        while hi - lo > max(0.01, 0.01 * hi):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if beyond(mid) > 0.05 else (lo, mid)
        return hi

    def _decoding(self) -> float:
        return self.served_rps * self.mean_output / self.p.decodeTokensPerSecond

    def _little(self, ready: int) -> float:
        """Requests in the batches at the served rate, by Little's law."""
        return self._decoding() + self.served_rps * self.mean_prompt / max(
            1.0, ready * self.p.prefillTokensPerSecond
        )

    def signals(self, now: float) -> ModelSignals:
        t = max(self.i_time, 1e-9)
        ready = self.ready(now)
        running = self.running or 0.0
        kv = running * (self.mean_prompt + self.mean_output)
        return ModelSignals(
            observed_at=now,
            running=running,
            waiting=self.backlog / max(self.mean_prompt, 1.0),
            kv_cache_usage=min(1.0, kv / (ready * self.p.kvCacheTokens)) if ready else None,
            request_rate=self.i_done / t,
            prompt_tokens_per_s=self.i_prompt / t,
            generation_tokens_per_s=self.i_gen / t,
            ttft_p95_s=self.ttft_p95(),
            first_tokens_per_s=self.i_first / t,
            late_first_tokens_per_s=self.i_late / t,
            gpu_utilization=self.i_busy / t if ready else None,
        )


def run_fluid(
    scenario: Scenario,
    demand: FluidDemand,
    *,
    policy_name: str,
    policy: Policy,
    interval: float,
    initial: Sequence[int],
    only: set[int] | None = None,
    sample_every: float = 600.0,
) -> RunResult:
    """Replays the demand under one policy on the fluid engine."""
    start = time.perf_counter()
    price = {a.name: a.hourlyCostPerGPU for a in scenario.accelerators}
    fluid = [FluidServer(m, price[m.accelerator]) for m in scenario.models]
    servers: list[Server] = list(fluid)
    for s, n in zip(fluid, initial, strict=True):
        s.p_max_queue = scenario.maxQueueSeconds
        s.cs2 = demand.prompt_cv**2
        s.scale(n, 0.0, warm=True)
        s.events = 0
    dt = demand.step_s
    every = max(1, math.ceil(interval / dt - 1e-9)) if interval < 1e8 else 0
    sample = max(1, round(sample_every / dt))
    series: dict[str, list[float]] = {"t": [], "cost": []}
    for m in scenario.models:
        series[f"demand:{m.name}"] = []
        series[f"replicas:{m.name}"] = []
    bucket = [0.0] * len(servers)
    active = [j for j in range(len(servers)) if only is None or j in only]
    now = 0.0
    for k in range(demand.steps):
        for j in active:
            n = demand.counts[j][k]
            tok = demand.prompt_tokens[j][k]
            out = demand.mean_output[j][k]
            fluid[j].fluid_step(now, dt, n, tok, out)
            bucket[j] += tok + n * out
        now += dt
        if every and (k + 1) % every == 0:
            policy(now, servers)
            for srv in servers:
                srv.reset_interval()
        if (k + 1) % sample == 0:
            series["t"].append(now)
            series["cost"].append(sum(s.cost for s in servers))
            for j, (m, srv) in enumerate(zip(scenario.models, servers, strict=True)):
                series[f"demand:{m.name}"].append(bucket[j] / (sample * dt))
                series[f"replicas:{m.name}"].append(float(srv.asked))
                bucket[j] = 0.0
    for s in fluid:
        s.requests = round(s.requests_f)
        s.met = min(s.requests, round(s.met_f))
        s.dropped = round(s.dropped_f)
    res = _result(scenario, servers, only, now, policy_name, series, start)
    for s in fluid:
        if s.p.name in res.models:
            res.models[s.p.name]["worstWindowSLO"] = round(
                min((m / r for r, m in s.windows.values() if r > 0), default=1.0), 4
            )
    return res


def pool_rate(scenario: Scenario, shares: Sequence[float], prompt: float, output: float) -> float:
    """Requests per second at which the first model reaches the most replicas its class
    and maxReplicas allow (at these token means and routing shares): the pool's capacity,
    to which ``tokenyard simulate`` scales a rate trace's peak (see
    :data:`POOL_PEAK_SHARE`)."""
    caps = [
        _class_cap(scenario, i) * replica_token_rate(m, prompt, output) / (share * prompt)
        for i, (m, share) in enumerate(zip(scenario.models, shares, strict=True))
        if share > 0
    ]
    return min(caps) if caps else 0.0


POOL_PEAK_SHARE = 0.7
"""A rate trace without --rate-scale or --target-mean-rps is scaled so that its busiest
window needs this share of the pool's capacity (:func:`pool_rate`): the peak fits the
pool with room for queueing, as a pool would be sized for it."""


def static_fluid(
    scenario: Scenario,
    demand: FluidDemand,
    *,
    peak: bool = False,
    at_least: Sequence[int] | None = None,
) -> list[int]:
    """Per model on its own share, the fewest fixed replicas that reach the SLO target
    over the whole trace (an oracle: the hindsight-cheapest static fleet), or with
    ``peak`` in every 10-minute window (the fleet provisioned for the peak). The search
    starts at ``at_least`` where given: the whole-trace fleet bounds the peak's from
    below (a fleet at the target in every window is at it over the trace)."""
    sizes: list[int] = []
    for i, m in enumerate(scenario.models):
        hi = max(1, m.autoscaling.minReplicas, _class_cap(scenario, i))
        lo = min(hi, max(1, m.autoscaling.minReplicas, at_least[i] if at_least else 0))

        def ok(n: int, i: int = i, name: str = m.name) -> bool:
            initial = [0] * len(scenario.models)
            initial[i] = n
            res = run_fluid(scenario, demand, policy_name="static", policy=hold,
                            interval=1e9, initial=initial, only={i})  # fmt: skip
            if peak:
                return res.models[name]["worstWindowSLO"] >= scenario.sloTarget
            return res.slo_attainment >= scenario.sloTarget

        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        sizes.append(lo)
    return sizes


def _hpa_slo_fluid(
    scenario: Scenario, demand: FluidDemand, initial: Sequence[int]
) -> tuple[float, RunResult]:
    """hpa-slo on the fluid engine: the highest factor of HPA_SCALE_STEPS that reaches the
    SLO target pool-wide: the stated targets when they reach it, else found by
    bisection (attainment grows as targets fall)."""
    steps = HPA_SCALE_STEPS
    cache: dict[int, RunResult] = {}

    def at(k: int) -> RunResult:
        if k not in cache:
            scaled = hpa_scaled(scenario, steps[k])
            cache[k] = run_fluid(scaled, demand, policy_name="hpa-slo", policy=HPAPolicy(scaled),
                                 interval=scenario.hpaSyncSeconds, initial=initial)  # fmt: skip
        return cache[k]

    lo, hi = 0, len(steps) - 1
    if at(lo).slo_attainment >= scenario.sloTarget:
        return steps[lo], at(lo)
    if at(hi).slo_attainment < scenario.sloTarget:
        best = max(cache, key=lambda k: cache[k].slo_attainment)
        return steps[best], cache[best]
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid).slo_attainment >= scenario.sloTarget:
            hi = mid
        else:
            lo = mid + 1
    return steps[lo], at(lo)


def simulate_fluid(
    scenario: Scenario,
    demand: FluidDemand,
    cfg: DecisionConfig | None = None,
    *,
    warm_start: bool = False,
) -> Report:
    """Static for the peak, HPA-style (stated targets and at the SLO target) and
    tokenyard over the demand, on the fluid engine. The adaptive policies start at the
    models' minimum replicas, or with ``warm_start`` at the static fleet (as if the load
    had been running: the static oracle starts warm too)."""
    static = static_fluid(scenario, demand)
    static_peak = static_fluid(scenario, demand, peak=True, at_least=static)
    initial = [max(1, m.autoscaling.minReplicas) for m in scenario.models]
    ty_initial = [m.autoscaling.minReplicas for m in scenario.models]
    if warm_start:
        initial = ty_initial = list(static)
    factor, hpa_slo = _hpa_slo_fluid(scenario, demand, initial)
    hpa = (
        replace(hpa_slo, policy="hpa")
        if factor == 1.0  # the stated targets reached it: the same run
        else run_fluid(
            scenario,
            demand,
            policy_name="hpa",
            policy=HPAPolicy(scenario),
            interval=scenario.hpaSyncSeconds,
            initial=initial,
        )
    )
    results = [
        run_fluid(
            scenario, demand, policy_name="static", policy=hold, interval=1e9, initial=static
        ),
        run_fluid(
            scenario,
            demand,
            policy_name="static-peak",
            policy=hold,
            interval=1e9,
            initial=static_peak,
        ),
        hpa,
        hpa_slo,
        run_fluid(
            scenario,
            demand,
            policy_name="tokenyard",
            policy=TokenyardPolicy(scenario, cfg),
            interval=scenario.decisionIntervalSeconds,
            initial=ty_initial,
        ),
    ]
    return Report(
        scenario=scenario,
        results=results,
        static_replicas=static,
        static_pool_replicas=static_peak,
        hpa_slo_factor=factor,
        trace_seconds=demand.steps * demand.step_s,
        trace_requests=demand.requests(),
    )


__all__ = [
    "FluidServer",
    "erlang_c",
    "pool_rate",
    "replica_token_rate",
    "route_shares",
    "run_fluid",
    "simulate_fluid",
    "static_fluid",
]
