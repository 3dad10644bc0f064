"""The aggregated (fluid) engine: days of load in seconds, for rate traces.

The per-request engine (:mod:`~tokenyard.autoscaler.sim.engine`) steps every request
through a FIFO server every 0.5 s: exact, but 14 days of a scaled production service are
tens of millions of requests. This engine steps time in ``step_s`` slices (10 s by
default) and moves work, not requests, with the same serving model per model:

* Arrivals per step come from :func:`~tokenyard.autoscaler.sim.rates.fluid_demand`
  (Poisson or bursty counts, prompt tokens summed around the window's mean).
* The ready replicas serve ``ready x rate`` prompt tokens per second, where ``rate`` is
  the smaller of prefillTokensPerSecond and what the KV cache admits at the step's
  token means (Little's law: kvCacheTokens / (prompt + output) sequences, each resident
  for its prefill and its decode of output / decodeTokensPerSecond).
* The backlog is one FIFO fluid queue: within a step arrivals come at an even rate, so
  the backlog moves linearly and a request's TTFT is the backlog ahead of it over the
  service rate plus its own prefill on the pooled replicas (as the per-request engine
  pools them); the share of the step's arrivals whose TTFT is within the SLO meets it.
  Work that would wait longer than maxQueueSeconds is dropped (and misses).

What it leaves out: the order of requests inside one step (queueing from fluctuations
shorter than a step), so near saturation its attainment is higher than the per-request
engine's (the benchmark prints both on the per-request traces); spill-over between
models (each model serves its own routed share). Policies see the same
:class:`~tokenyard.autoscaler.signals.ModelSignals` fields, derived from the fluid
state (running and KV use by Little's law), and decide every ``interval`` rounded up to
whole steps.
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


class FluidServer(Server):
    """One model's replicas as a fluid FIFO queue (see the module's docstring)."""

    def __init__(self, prof: ModelProfile, price: float) -> None:
        super().__init__(prof, price)
        self.backlog = 0.0
        """Prompt tokens waiting."""
        self.mean_prompt = 1000.0
        self.mean_output = 100.0
        self.served_rps = 0.0
        self.waits: deque[tuple[float, float]] = deque()
        self.last_rate = 0.0
        self.requests_f = self.met_f = self.dropped_f = 0.0
        self.windows: dict[int, list[float]] = {}
        """Per 10-minute window: [requests, met], for the static fleet sized for the peak."""

    def fluid_step(self, now: float, dt: float, n: int, tokens: float, output: float) -> None:
        p = self.p
        ready = self.ready(now)
        if n > 0:
            self.mean_prompt = tokens / n
            self.mean_output = output
        mp, mo = self.mean_prompt, self.mean_output
        rate = ready * replica_token_rate(p, mp, mo)
        self.last_rate = rate
        cap = rate * dt
        q0 = self.backlog
        # Share of the step's arrivals whose backlog-ahead plus own prefill is in the SLO.
        met_share = 0.0
        if n > 0 and rate > 0:
            allowed = (self.slo - mp / (ready * p.prefillTokensPerSecond)) * rate
            if allowed >= 0:
                slope = tokens - cap
                if q0 <= allowed and slope <= 0:
                    met_share = 1.0
                elif slope > 0:
                    met_share = min(1.0, max(0.0, (allowed - q0) / slope))
                else:
                    met_share = 1.0 - min(1.0, max(0.0, (q0 - allowed) / -slope))
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
        win = self.windows.setdefault(int(now // 600), [0.0, 0.0])
        win[0] += n
        win[1] += n * met_share
        self.dropped_f += dropped
        served_req = served / max(mp, 1.0)
        self.served_rps = served_req / dt
        wait = (q1 / rate if rate > 0 else self.p_max_queue) + (
            mp / (ready * p.prefillTokensPerSecond) if ready else 0.0
        )
        self.waits.append((now + dt, wait))
        while self.waits and self.waits[0][0] < now + dt - 30:
            self.waits.popleft()
        self.i_done += served_req
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

    def _decoding(self) -> float:
        return self.served_rps * self.mean_output / self.p.decodeTokensPerSecond

    def signals(self, now: float) -> ModelSignals:
        t = max(self.i_time, 1e-9)
        ready = self.ready(now)
        running = self._decoding() + self.served_rps * self.mean_prompt / max(
            1.0, ready * self.p.prefillTokensPerSecond
        )
        kv = running * (self.mean_prompt + self.mean_output)
        return ModelSignals(
            observed_at=now,
            running=running,
            waiting=self.backlog / max(self.mean_prompt, 1.0),
            kv_cache_usage=min(1.0, kv / (ready * self.p.kvCacheTokens)) if ready else None,
            request_rate=self.i_done / t,
            prompt_tokens_per_s=self.i_prompt / t,
            generation_tokens_per_s=self.i_gen / t,
            ttft_p95_s=max(w for _, w in self.waits) if self.waits else None,
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


def static_fluid(scenario: Scenario, demand: FluidDemand, *, peak: bool = False) -> list[int]:
    """Per model on its own share, the fewest fixed replicas that reach the SLO target
    over the whole trace (an oracle: the hindsight-cheapest static fleet), or with
    ``peak`` in every 10-minute window (the fleet provisioned for the peak)."""
    sizes: list[int] = []
    for i, m in enumerate(scenario.models):
        lo = max(1, m.autoscaling.minReplicas)
        hi = max(lo, _class_cap(scenario, i))

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
    static_peak = static_fluid(scenario, demand, peak=True)
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
    "pool_rate",
    "replica_token_rate",
    "route_shares",
    "run_fluid",
    "simulate_fluid",
    "static_fluid",
]
