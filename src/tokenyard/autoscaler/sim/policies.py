"""The scaling policies a replay runs: hold, HPA-style, and tokenyard's own decisions.

Each is called every interval with the servers: hold (a static fleet), Kubernetes HPA
defaults on GPU utilisation, and :func:`~tokenyard.autoscaler.decide.decide_pool` on the
simulated signals.
"""

from __future__ import annotations

import math
from collections import deque

from tokenyard.autoscaler.decide import (
    ClassLimit,
    DecisionConfig,
    ModelState,
    ModelView,
    PoolView,
    autoscaling_fields,
    decide_pool,
)
from tokenyard.autoscaler.decide.forecast import SeasonalForecast
from tokenyard.autoscaler.sim.engine import Server
from tokenyard.autoscaler.sim.scenario import Scenario


def hold(now: float, servers: list[Server]) -> None:
    return None


class HPAPolicy:
    """Kubernetes HPA defaults on GPU utilisation, one model at a time."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.history: list[deque[tuple[float, int]]] = [deque() for _ in scenario.models]

    def __call__(self, now: float, servers: list[Server]) -> None:
        window = self.scenario.hpaScaleDownStabilizationSeconds
        free = {a.name: a.maxGPUs for a in self.scenario.accelerators}
        for srv in servers:
            free[srv.p.accelerator] -= srv.asked * srv.p.gpusPerReplica
        for j, srv in enumerate(servers):
            a = srv.p.autoscaling
            ready = srv.ready(now)
            sig = srv.signals(now)
            current = srv.asked
            desired = current
            if ready > 0 and sig.gpu_utilization is not None:
                ratio = sig.gpu_utilization / a.targetGPUUtilization
                if abs(ratio - 1) > 0.1:
                    desired = math.ceil(ready * ratio - 1e-9)
                    if desired < current and ready < current:
                        desired = current  # pods still starting: HPA waits for them
            hist = self.history[j]
            hist.append((now, desired))
            while hist and hist[0][0] < now - window:
                hist.popleft()
            if desired < current:
                desired = min(current, max(d for _, d in hist))
            desired = min(desired, max(2 * current, current + 4))
            desired = max(1, a.minReplicas, min(a.maxReplicas, desired))
            if desired > current:  # beyond the class's GPUs a pod would stay Pending
                room = max(0, free[srv.p.accelerator]) // srv.p.gpusPerReplica
                desired = min(desired, current + room)
            free[srv.p.accelerator] -= (desired - current) * srv.p.gpusPerReplica
            srv.scale(desired, now)


class TokenyardPolicy:
    """tokenyard's decide_pool on the simulated signals; with ``forecasts`` (one fitted
    :class:`SeasonalForecast` per model), each model's view carries the rate forecast one
    cold start ahead from the rates it measured per forecast slot."""

    def __init__(
        self,
        scenario: Scenario,
        cfg: DecisionConfig | None = None,
        forecasts: dict[str, SeasonalForecast] | None = None,
        t0: float = 0.0,
    ) -> None:
        self.forecasts = forecasts or {}
        self.t0 = t0
        """The simulation's time 0 in the forecast's clock (seconds from 00:00 of day 0)."""
        self.slots: dict[str, list[float]] = {}
        """Per model: [slot start, rate x seconds, seconds, forecast for the slot, last]."""
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.scenario = scenario
        self.cfg = cfg or DecisionConfig()
        self.states: dict[str, ModelState] = {}
        self.pool = PoolView(
            name=scenario.name,
            classes={
                a.name: ClassLimit(a.maxGPUs, a.hourlyCostPerGPU) for a in scenario.accelerators
            },
            hourly_budget_usd=scenario.hourlyBudgetUSD,
        )
        self.capped_decisions = 0

    def _forecast(self, srv: Server, now: float) -> float | None:
        """The model's rate forecast one cold start ahead, fed by its measured rates."""
        fc = self.forecasts.get(srv.p.name)
        if fc is None:
            return None
        t = now + self.t0
        slot = self.slots.setdefault(srv.p.name, [t - t % fc.bin_s, 0.0, 0.0, 0.0, 0.0])
        hist = self.history.setdefault(srv.p.name, [])
        if t >= slot[0] + fc.bin_s:
            rate = slot[1] / slot[2] if slot[2] > 0 else 0.0
            if slot[3] > 0:
                fc.observe(slot[0], slot[3], rate, slot[4])
            hist.append((slot[0], rate))
            del hist[:-6]
            slot[:] = [t - t % fc.bin_s, 0.0, 0.0, 0.0, rate]
        sig = srv.signals(now)
        dt = srv.i_time
        slot[1] += (sig.request_rate or 0.0) * dt
        slot[2] += dt
        if not hist:
            return None
        recent = hist[-1:]
        ahead = t + srv.p.autoscaling.coldStartSeconds
        if slot[3] == 0.0:
            slot[3] = fc.predict(slot[0], recent)
        return fc.upper_over(ahead, ahead + self.scenario.decisionIntervalSeconds, recent)

    def view(self, srv: Server, now: float) -> ModelView:
        p = srv.p
        price = self.pool.classes[p.accelerator].price_per_gpu_hour
        return ModelView(
            name=p.name,
            current_replicas=srv.asked,
            ready_replicas=srv.ready(now),
            mode="Tokenyard",
            gpus_per_replica=p.gpusPerReplica,
            accelerator=p.accelerator,
            price_per_gpu_hour=price,
            **autoscaling_fields(p.autoscaling),
            nominal_tokens_per_s=p.prefillTokensPerSecond,
            quality=p.quality,
            decode_tokens_per_s=p.decodeTokensPerSecond,
            kv_cache_tokens=float(p.kvCacheTokens),
            replica_router=p.replicaRouting,
            forecast_rps=self._forecast(srv, now),
        )

    def __call__(self, now: float, servers: list[Server]) -> None:
        views = {s.p.name: self.view(s, now) for s in servers}
        sigs = {s.p.name: s.signals(now) for s in servers}
        decisions, self.states = decide_pool(
            self.pool, views, sigs, self.states, now=now, cfg=self.cfg
        )
        for s in servers:
            d = decisions[s.p.name]
            s.capped = d.capped
            if d.capped:
                self.capped_decisions += 1
            if d.write:
                s.scale(d.desired, now)


__all__ = ["HPAPolicy", "TokenyardPolicy", "hold"]
