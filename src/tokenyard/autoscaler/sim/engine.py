"""The simulator's serving model and replay: one server per model, one policy per run.

Each model is a set of separate vLLM replicas behind Ray Serve's request router
(:class:`Server`): every replica has its own FIFO waiting queue, admits a request while
its prompt and output fit the replica's free KV cache, prefills one request after the
other at one replica's ``prefillTokensPerSecond`` (TTFT = the end of its prefill) and
decodes at ``decodeTokensPerSecond`` per sequence. A request goes, on arrival, to the
replica Ray Serve's default router picks: of two ready replicas drawn at random, the
one with fewer ongoing requests (power of two choices); while none is ready the router
holds it. So a long prompt takes ``prompt / prefillTokensPerSecond`` on its replica
however many replicas the model has, and requests queue behind the ones on their own
replica, as on vLLM. The replay steps every replica each tick: linear in requests and
replicas. A replica scaled away stops receiving requests and finishes the ones it has
(uncharged); replicas still starting are cancelled first.

:func:`run` drives the servers over the routed trace under one scaling policy, with
spill-over routed by the router's own code (:mod:`tokenyard.routing.spillover`). The
baselines and :func:`simulate` call it.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tokenyard.autoscaler.signals import ModelSignals
from tokenyard.autoscaler.sim.scenario import ModelProfile, Scenario, fits_context, price_order
from tokenyard.autoscaler.sim.trace import TraceRequest
from tokenyard.routing.replicas import PrefillQueues
from tokenyard.routing.spillover import Capacity, Option, QueueClock, choose


class Replica:
    """One vLLM replica: its own FIFO waiting queue, KV cache and prefill at one
    replica's rate, and the sequences it decodes."""

    __slots__ = ("decoding", "kv", "prefill", "queue", "ready_at")

    def __init__(self, ready_at: float) -> None:
        self.ready_at = ready_at
        self.queue: deque[tuple[float, int, int]] = deque()
        self.prefill: deque[list[float]] = deque()
        self.decoding: list[tuple[float, float, int]] = []
        self.kv = 0.0

    def ongoing(self) -> int:
        """Requests at the replica (waiting, prefilling or decoding): what Ray Serve's
        router compares."""
        return len(self.queue) + len(self.prefill) + len(self.decoding)


class Server:
    """One model's replicas behind Ray Serve's request router (see the module's
    docstring): each replica its own FIFO with a KV-cache admission limit and one
    replica's prefill rate."""

    def __init__(self, prof: ModelProfile, price: float, seed: int = 0) -> None:
        self.p = prof
        self.replica_cost = prof.gpusPerReplica * price
        self.replicas: list[Replica] = []
        """Replicas asked for, ready or starting, in the order they were asked."""
        self.draining: list[Replica] = []
        """Replicas scaled away that still finish the requests sent to them."""
        self.held: deque[tuple[float, int, int]] = deque()
        """Requests the router holds while the model has no ready replica."""
        self.rng = random.Random(seed)
        self.queued = (
            PrefillQueues(prof.prefillTokensPerSecond, self.rng)
            if prof.replicaRouting == "LeastQueuedTokens"
            else None
        )
        """The router's queued-token estimate (replicaRouting LeastQueuedTokens)."""
        self.ttfts: deque[tuple[float, float]] = deque()
        self.slo = prof.autoscaling.ttftSLOSeconds
        self.clock: QueueClock | None = None
        self.known_replicas = 0
        """Ready replicas as the router last read them from Ray Serve's status."""
        self.requests = self.met = self.dropped = self.spilled_in = self.events = 0
        self.downgraded_in = 0
        self.capped: str | None = None
        """GPUCapped or BudgetCapped while the autoscaler's allocation gives the model
        less than it asks (tokenyard's policy sets it; the router reads the condition)."""
        self.cost = self.gpu_seconds = self.replica_seconds = 0.0
        self._ready, self._ready_from = 0, 0.0
        self._ready_until: float | None = None
        self.count_from = 0.0
        """Requests that arrive before this time (a warm-up replay) are served but not
        counted, nor is the time before it charged."""
        self.reset_interval()

    @property
    def asked(self) -> int:
        return len(self.replicas)

    def reset_interval(self) -> None:
        self.i_time = self.i_arrivals = self.i_done = self.i_prompt = self.i_gen = self.i_busy = 0.0
        self.i_first = self.i_late = 0.0

    def ready(self, now: float) -> int:
        # Cached until the next replica's start completes (the fluid engine asks every
        # step); scale() clears it.
        if self._ready_until is None or not self._ready_from <= now < self._ready_until:
            self._ready = sum(1 for r in self.replicas if r.ready_at <= now)
            self._ready_from = now
            self._ready_until = min(
                (r.ready_at for r in self.replicas if r.ready_at > now), default=math.inf
            )
        return self._ready

    def scale(self, n: int, now: float, warm: bool = False) -> None:
        if n == self.asked:
            return
        self._ready_until = None
        self.events += 1
        if n > self.asked:
            at = now if warm else now + self.p.autoscaling.coldStartSeconds
            self.replicas.extend(Replica(at) for _ in range(n - self.asked))
            return
        # Replicas still starting are cancelled first (the latest asked first), then the
        # ready ones with the fewest requests, which drain what was sent to them.
        drop = self.asked - n
        starting = sorted((r for r in self.replicas if r.ready_at > now), key=lambda r: -r.ready_at)
        gone = starting[:drop]
        if len(gone) < drop:
            ready = sorted((r for r in self.replicas if r.ready_at <= now), key=Replica.ongoing)
            drained = ready[: drop - len(gone)]
            self.draining.extend(drained)
            gone += drained
        ids = {id(r) for r in gone}
        self.replicas = [r for r in self.replicas if id(r) not in ids]

    def route(self, req: tuple[float, int, int], now: float) -> None:
        """Ray Serve's default request router: of two ready replicas drawn at random, the
        one with fewer ongoing requests; held while none is ready."""
        ready = [r for r in self.replicas if r.ready_at <= now]
        if not ready:
            self.held.append(req)
            return
        if len(ready) == 1:
            ready[0].queue.append(req)
            return
        if self.queued is not None:
            # The router's estimate, as tokenyard's LeastQueuedTokensRouter keeps it: the
            # prompt tokens it sent, drained at the prefill rate, reset once the replica
            # has finished everything (one router sends every request here).
            for r in ready:
                if not r.ongoing():
                    self.queued.forget(id(r))
            key = {id(r): r for r in ready}
            chosen = key[self.queued.choose(list(key), now)[0]]
            self.queued.sent(id(chosen), None, req[1], now)
            chosen.queue.append(req)
            return
        a, b = self.rng.sample(ready, 2)
        (a if a.ongoing() <= b.ongoing() else b).queue.append(req)

    def step(self, now: float, dt: float) -> None:
        p = self.p
        while self.held and now - self.held[0][0] > self.p_max_queue:
            self._drop(now, self.held.popleft()[0])
        if self.held and any(r.ready_at <= now for r in self.replicas):
            held, self.held = self.held, deque()
            for req in held:
                self.route(req, now)
        ready = 0
        busy = 0.0
        for rep in self.replicas:
            if rep.ready_at <= now:
                ready += 1
                busy += self._serve(rep, now, dt)
        for rep in self.draining:
            self._serve(rep, now, dt)
        self.draining = [r for r in self.draining if r.ongoing()]
        if ready > 0:
            self.i_busy += busy / ready * dt
        self.i_time += dt
        if now >= self.count_from:
            self.cost += self.asked * self.replica_cost * dt / 3600
            self.gpu_seconds += self.asked * p.gpusPerReplica * dt
            self.replica_seconds += self.asked * dt
        while self.ttfts and self.ttfts[0][0] < now - 30:
            self.ttfts.popleft()

    def _drop(self, now: float, arrival: float) -> None:
        if arrival >= self.count_from:
            self.dropped += 1
        if self.clock is not None:
            self.clock.started(self.p.name, now)

    def _serve(self, rep: Replica, now: float, dt: float) -> float:
        """One step of one replica; its busy share (prefill, else decode saturation)."""
        p = self.p
        while rep.decoding and rep.decoding[0][0] <= now:
            _, kv, out = heapq.heappop(rep.decoding)
            rep.kv -= kv
            self.i_gen += out
            self.i_done += 1
        while rep.queue and now - rep.queue[0][0] > self.p_max_queue:
            self._drop(now, rep.queue.popleft()[0])
        cap = p.kvCacheTokens
        while rep.queue:
            arrival, prompt, out = rep.queue[0]
            need = prompt + out
            if rep.kv + need > cap and rep.kv > 0:
                break
            rep.queue.popleft()
            rep.kv += need
            rep.prefill.append([arrival, float(prompt), float(prompt), float(out)])
        full = p.prefillTokensPerSecond * dt
        budget = full
        while rep.prefill and budget > 0:
            head = rep.prefill[0]
            take = min(head[1], budget)
            head[1] -= take
            budget -= take
            if head[1] <= 0:
                rep.prefill.popleft()
                done = now + dt * (full - budget) / full
                ttft = max(done - head[0], head[2] / p.prefillTokensPerSecond)
                self.ttfts.append((done, ttft))
                self.i_first += 1
                if ttft > self.slo:
                    self.i_late += 1
                if ttft <= self.slo and head[0] >= self.count_from:
                    self.met += 1
                if self.clock is not None:
                    self.clock.started(p.name, done)
                heapq.heappush(
                    rep.decoding,
                    (done + head[3] / p.decodeTokensPerSecond, head[2] + head[3], int(head[3])),
                )
        used = full - budget
        self.i_prompt += used
        pre = used / full
        dec = min(1.0, len(rep.decoding) / p.decodeSaturation)
        return min(1.0, pre + (1 - pre) * dec)

    p_max_queue = 60.0

    def capacity(self) -> Capacity:
        """The model's capacity as the router knows it."""
        return Capacity(self.known_replicas, self.p.prefillTokensPerSecond, self.slo)

    def signals(self, now: float) -> ModelSignals:
        t = max(self.i_time, 1e-9)
        reps = [r for r in self.replicas if r.ready_at <= now]
        ttft = None
        if self.ttfts:
            vals = sorted(v for _, v in self.ttfts)
            ttft = vals[min(len(vals) - 1, int(0.95 * len(vals)))]
        return ModelSignals(
            observed_at=now,
            running=float(sum(len(r.prefill) + len(r.decoding) for r in reps + self.draining)),
            waiting=float(sum(len(r.queue) for r in reps + self.draining) + len(self.held)),
            kv_cache_usage=(
                sum(r.kv for r in reps) / (len(reps) * self.p.kvCacheTokens) if reps else None
            ),
            request_rate=self.i_done / t,  # vLLM counts finished requests
            prompt_tokens_per_s=self.i_prompt / t,
            generation_tokens_per_s=self.i_gen / t,
            ttft_p95_s=ttft,
            first_tokens_per_s=self.i_first / t,
            late_first_tokens_per_s=self.i_late / t,
            gpu_utilization=self.i_busy / t if reps else None,
        )


Policy = Callable[[float, list[Server]], None]
"""Called every policy interval with the time and the servers; scales them."""


@dataclass
class RunResult:
    """What one policy did over the trace."""

    policy: str
    cost_usd: float
    gpu_hours: float
    requests: int
    slo_met: int
    dropped: int
    scale_events: int
    models: dict[str, dict[str, float]]
    series: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def slo_attainment(self) -> float:
        return self.slo_met / self.requests if self.requests else 1.0

    @property
    def min_model_slo(self) -> float:
        """The worst model's attainment: the criterion the static oracle meets."""
        return min((float(m["sloAttainment"]) for m in self.models.values()), default=1.0)

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "costUSD": round(self.cost_usd, 2),
            "gpuHours": round(self.gpu_hours, 2),
            "sloAttainment": round(self.slo_attainment, 4),
            "minModelSLOAttainment": round(self.min_model_slo, 4),
            "requests": self.requests,
            "dropped": self.dropped,
            "scaleEvents": self.scale_events,
            "models": self.models,
            "wallSeconds": round(self.seconds, 2),
        }


def _servers(
    scenario: Scenario, initial: Sequence[int], only: set[int] | None
) -> tuple[list[Server], QueueClock | None]:
    """The servers at their initial replicas (warm), and the router's queue clock when
    requests spill over (never for a run of some models alone: spill-over needs all)."""
    price = {a.name: a.hourlyCostPerGPU for a in scenario.accelerators}
    servers = [
        Server(m, price[m.accelerator], seed=scenario.seed * 1000 + j)
        for j, m in enumerate(scenario.models)
    ]
    for s, n in zip(servers, initial, strict=True):
        s.p_max_queue = scenario.maxQueueSeconds
        s.scale(n, 0.0, warm=True)
        s.events = 0
    clock = QueueClock() if scenario.spillover else None
    if only is None:  # spill-over needs every model
        for srv in servers:
            srv.clock = clock
            srv.known_replicas = srv.ready(0.0)
    return servers, clock


def _spill_targets(scenario: Scenario) -> dict[int, list[int]]:
    # Per model, the targets in a routing decision's order: the model itself, then the
    # models at least as good, cheapest first (as CheapestSufficient lists them; spill-over
    # goes there), then the weaker ones, strongest first (its fallbacks: the candidates of
    # a capacity downgrade).
    order = price_order(scenario)
    return {
        i: [i]
        + [j for j in order if j != i and scenario.models[j].quality >= m.quality]
        + sorted(
            (j for j in order if scenario.models[j].quality < m.quality),
            key=lambda j: -scenario.models[j].quality,
        )
        for i, m in enumerate(scenario.models)
    }


# Positional, as run calls it; each argument is one part of the replay's state.
def _spill(  # noqa: PLR0917
    scenario: Scenario,
    servers: list[Server],
    clock: QueueClock,
    targets: list[int],
    r: TraceRequest,
    now: float,
) -> int:
    """The model a request goes to once spill-over had its say (as the router decides),
    its prompt counted in the queue clock. The other targets whose context the request
    does not fit are not candidates (the router's hard filter; :func:`route` picked the
    first among those it fits)."""
    targets = targets[:1] + [j for j in targets[1:] if fits_context(scenario.models[j], r)]
    i = targets[0]
    options = [
        Option(
            servers[j].p.name,
            servers[j].p.quality,
            True,
            servers[j].capacity(),
            servers[j].capped,
        )
        for j in targets
    ]
    spill = choose(options, clock, r.prompt, now, scenario.spilloverThreshold,
                   downgrade=scenario.downgradeWhenCapped)  # fmt: skip
    if spill is not None:
        i = targets[spill.index]
        if spill.downgrade:
            servers[i].downgraded_in += 1
        else:
            servers[i].spilled_in += 1
    clock.sent(servers[i].p.name, servers[i].capacity(), r.prompt, now)
    return i


# Positional, as run calls it; each argument is one part of the replay's state.
def _sample(  # noqa: PLR0917
    scenario: Scenario,
    servers: list[Server],
    series: dict[str, list[float]],
    bucket: list[float],
    now: float,
    sample_every: float,
) -> None:
    series["t"].append(now)
    series["cost"].append(sum(s.cost for s in servers))
    for j, (m, srv) in enumerate(zip(scenario.models, servers, strict=True)):
        series[f"demand:{m.name}"].append(bucket[j] / sample_every)
        series[f"replicas:{m.name}"].append(float(srv.asked))
        bucket[j] = 0.0


# Positional, as run calls it; each argument is one part of the finished replay.
def _result(  # noqa: PLR0917
    scenario: Scenario,
    servers: list[Server],
    only: set[int] | None,
    now: float,
    policy_name: str,
    series: dict[str, list[float]],
    start: float,
) -> RunResult:
    models = {
        m.name: {
            "costUSD": round(s.cost, 3),
            "requests": s.requests,
            "sloAttainment": round(s.met / s.requests, 4) if s.requests else 1.0,
            "dropped": s.dropped,
            "spilledIn": s.spilled_in,
            "downgradedIn": s.downgraded_in,
            "meanReplicas": round(s.replica_seconds / now, 2) if now else 0.0,
            "scaleEvents": s.events,
        }
        for m, s in zip(scenario.models, servers, strict=True)
        if only is None or scenario.models.index(m) in only
    }
    chosen = [s for j, s in enumerate(servers) if only is None or j in only]
    return RunResult(
        policy=policy_name,
        cost_usd=sum(s.cost for s in chosen),
        gpu_hours=sum(s.gpu_seconds for s in chosen) / 3600,
        requests=sum(s.requests for s in chosen),
        slo_met=sum(s.met for s in chosen),
        dropped=sum(s.dropped for s in chosen),
        scale_events=sum(s.events for s in chosen),
        models=models,
        series=series,
        seconds=time.perf_counter() - start,
    )


def run(
    scenario: Scenario,
    routed: Sequence[tuple[TraceRequest, int]],
    *,
    policy_name: str,
    policy: Policy,
    interval: float,
    initial: Sequence[int],
    only: set[int] | None = None,
    sample_every: float = 10.0,
    warmup_s: float = 0.0,
) -> RunResult:
    """Replays the routed trace under one policy. With ``warmup_s``, the trace's first
    ``warmup_s`` seconds are replayed once before it, unmeasured, so the policy starts the
    measured trace in the state its own rules reach on the opening load (as a fixed
    fleet starts with its replicas): requests, SLO, cost and scale events count from
    the trace's start."""
    start = time.perf_counter()
    servers, clock = _servers(scenario, initial, only)
    reqs = [(r, i) for r, i in routed if only is None or i in only]
    if warmup_s > 0:
        opening = [(r, i) for r, i in reqs if r.t < warmup_s]
        reqs = opening + [(replace(r, t=r.t + warmup_s), i) for r, i in reqs]
        for srv in servers:
            srv.count_from = warmup_s
    horizon = (reqs[-1][0].t if reqs else 0.0) + scenario.maxQueueSeconds + 30
    dt = scenario.tickSeconds
    series: dict[str, list[float]] = {"t": [], "cost": []}
    for m in scenario.models:
        series[f"demand:{m.name}"] = []
        series[f"replicas:{m.name}"] = []
    bucket = [0.0] * len(servers)
    targets = _spill_targets(scenario)
    k, now, next_policy, next_sample = 0, 0.0, interval, warmup_s
    next_refresh = scenario.replicaRefreshSeconds
    measuring = warmup_s <= 0
    while now < horizon:
        if not measuring and now >= warmup_s:
            measuring = True
            for srv in servers:
                srv.events = srv.spilled_in = srv.downgraded_in = 0
        # A tick routes the arrivals nearest to it (within half a tick either side), so
        # the tick's granularity adds no delay on average to a request's TTFT.
        while k < len(reqs) and reqs[k][0].t < now + dt / 2:
            r, i = reqs[k]
            if clock is not None and only is None:
                i = _spill(scenario, servers, clock, targets[i], r, now)
            srv = servers[i]
            srv.route((r.t, r.prompt, r.output), now)
            if r.t >= warmup_s:
                srv.requests += 1
            srv.i_arrivals += 1
            bucket[i] += r.prompt + r.output
            k += 1
        for srv in servers:
            srv.step(now, dt)
        now += dt
        if now >= next_refresh:
            for srv in servers:
                srv.known_replicas = srv.ready(now)
            next_refresh += scenario.replicaRefreshSeconds
        if now >= next_policy:
            policy(now, servers)
            for srv in servers:
                srv.reset_interval()
            next_policy += interval
        if now >= next_sample:
            _sample(scenario, servers, series, bucket, now - warmup_s, sample_every)
            next_sample += sample_every
    return _result(scenario, servers, only, now - warmup_s, policy_name, series, start)


__all__ = ["Policy", "RunResult", "Server", "run"]
