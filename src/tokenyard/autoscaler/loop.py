"""The autoscaler loop: each interval, list pools and models, read signals, decide, then act.

Run by ``tokenyard autoscaler`` (:mod:`tokenyard.autoscaler.main`); tests drive
:meth:`Autoscaler.tick` with their own clock, API and signals. Acting means: the desired
replicas through the scale subresource (only for ``autoscaling.mode: Tokenyard`` and only
when they change), ``status.autoscaling``, the measured cost per 1M tokens and the
conditions MetricsAvailable and Capped through the status subresource (only when they
change), and an Event for every scale and every change of the Capped condition. Beside
the decisions it reports what it measures: each ServingPool's ``status.measured`` (GPUs
in use and their utilisation per class, the spend rate of its endpoints) and each
RoutingPolicy's ``status.spendUSDPerHour``, written only when they move (see
:func:`_moved`), so a steady pool costs the API server nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from tokenyard.api.common import (
    COND_CAPPED,
    COND_METRICS_AVAILABLE,
    COND_READY,
    REASON_METRICS_UNAVAILABLE,
    REASON_NOT_CAPPED,
)
from tokenyard.api.model import ModelDeployment
from tokenyard.api.pool import ServingPool
from tokenyard.autoscaler.decide import (
    Decision,
    DecisionConfig,
    ModelState,
    ModelView,
    PoolView,
    decide_pool,
)
from tokenyard.autoscaler.forecasting import LiveForecasts
from tokenyard.autoscaler.health import Heartbeat
from tokenyard.autoscaler.kube import KubeApi, rfc3339
from tokenyard.autoscaler.leader import LeaderElector
from tokenyard.autoscaler.metrics import AutoscalerMetrics
from tokenyard.autoscaler.signals import ModelRef, PoolSignals, SignalSource, SpendKey
from tokenyard.settings import AutoscalerSettings

log = logging.getLogger("tokenyard.autoscaler")

REASON_METRICS_OK = "MetricsAvailable"
REASON_SCALED_UP = "ScaledUp"
REASON_SCALED_DOWN = "ScaledDown"

Key = tuple[str, str]


def _meta(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "default")), str(meta.get("name", ""))


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    *,
    reason: str,
    message: str,
    now: float,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The list with one condition set; lastTransitionTime moves only when status flips."""
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(c)
            continue
        found = True
        changed = c.get("status") != status
        new = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": rfc3339(now) if changed else c.get("lastTransitionTime"),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    if not found:
        new = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": rfc3339(now),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


SPEND_STEP = 0.05
"""A spend rate is rewritten when it moves by more than this fraction (or 0.01 USD/h)."""
UTILIZATION_STEP = 5
"""A class's GPU utilisation is rewritten when it moves by this many points or more."""


def _moved(old: object, new: float | None) -> bool:
    """Whether a measured spend rate moved enough to be written again."""
    if new is None:
        return False
    if not isinstance(old, int | float) or isinstance(old, bool):
        return True
    return abs(new - old) > max(0.01, SPEND_STEP * abs(old))


def measured_accelerators(pool: ServingPool, sig: PoolSignals) -> list[dict[str, Any]]:
    """One entry per accelerator class of the pool, from Prometheus' view of its GPUs."""
    out: list[dict[str, Any]] = []
    for acc in pool.spec.accelerators:
        entry: dict[str, Any] = {
            "name": acc.name,
            "gpusInUse": round(sig.gpus_in_use.get(acc.name, 0.0)),
        }
        util = sig.gpu_utilization.get(acc.name)
        if util is not None:
            entry["gpuUtilizationPercent"] = round(100 * util)
        out.append(entry)
    return out


def _gpus_summary(accels: list[dict[str, Any]]) -> str | None:
    parts = []
    for a in accels:
        util = a.get("gpuUtilizationPercent")
        parts.append(f"{a['name']} {a['gpusInUse']}" + (f" ({util}%)" if util is not None else ""))
    return ", ".join(parts) or None


def _accelerators_moved(old: object, new: list[dict[str, Any]]) -> bool:
    if not isinstance(old, list) or len(old) != len(new):
        return True
    for o, n in zip(old, new, strict=True):
        if not isinstance(o, dict) or o.get("name") != n["name"]:
            return True
        if o.get("gpusInUse") != n["gpusInUse"]:
            return True
        ou, nu = o.get("gpuUtilizationPercent"), n.get("gpuUtilizationPercent")
        if (ou is None) != (nu is None):
            return True
        if isinstance(ou, int | float) and isinstance(nu, int) and abs(nu - ou) >= UTILIZATION_STEP:
            return True
    return False


@dataclass
class Tick:
    """What one interval did, for logs and tests."""

    decisions: dict[Key, Decision] = field(default_factory=dict)
    scaled: list[Key] = field(default_factory=list)
    status_written: list[Key] = field(default_factory=list)
    pools_measured: list[Key] = field(default_factory=list)
    """Pools whose status.measured was written."""
    spend_written: list[Key] = field(default_factory=list)
    """RoutingPolicies whose status.spendUSDPerHour was written."""
    skipped: list[str] = field(default_factory=list)
    pool_ready: dict[Key, tuple[bool, str]] = field(default_factory=dict)
    """Each listed pool's Ready condition (status, reason) as the operator wrote it."""
    ready_replicas: dict[Key, int] = field(default_factory=dict)
    """Each decided model's status.readyReplicas, where the operator wrote one."""


class Autoscaler:
    """Decides and acts for every pool the API lists."""

    def __init__(
        self,
        api: KubeApi,
        signals: SignalSource,
        settings: AutoscalerSettings,
        cfg: DecisionConfig | None = None,
    ) -> None:
        self.api = api
        self.signals = signals
        self.settings = settings
        self.cfg = cfg or DecisionConfig()
        self.states: dict[Key, ModelState] = {}
        self.kv_sizes: dict[Key, float] = {}
        """The last KV-cache size read per model: a scrape or query that misses it once
        does not switch the SLO model's KV limit off and on."""
        self.forecasts = LiveForecasts(
            signals,
            min_days=settings.forecast_min_days,
            history_days=settings.forecast_history_days,
            refit_s=settings.forecast_refit_s,
            ready_share=settings.forecast_ready_share,
        )

    def _list(self, fn: Callable[[str | None], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        if not self.settings.namespaces:
            return fn(None)
        out: list[dict[str, Any]] = []
        for ns in self.settings.namespaces:
            out.extend(fn(ns))
        return out

    def tick(self, now: float) -> Tick:
        """One interval: decide every pool's models and write what changed."""
        result = Tick()
        pools: dict[Key, ServingPool] = {}
        raw_pools: dict[Key, dict[str, Any]] = {}
        for raw in self._list(self.api.list_pools):
            try:
                pools[_meta(raw)] = ServingPool.model_validate(raw)
                raw_pools[_meta(raw)] = raw
                result.pool_ready[_meta(raw)] = _ready(raw)
            except ValidationError as exc:
                result.skipped.append(f"ServingPool {_meta(raw)}: {exc.error_count()} errors")
        members: dict[Key, list[tuple[dict[str, Any], ModelDeployment]]] = {}
        listed: set[Key] = set()
        for raw in self._list(self.api.list_models):
            ns, name = _meta(raw)
            listed.add((ns, name))
            try:
                md = ModelDeployment.model_validate(raw)
            except ValidationError as exc:
                result.skipped.append(f"ModelDeployment {ns}/{name}: {exc.error_count()} errors")
                continue
            if md.spec.inCluster is None or md.spec.pool is None:
                continue  # external models have no replicas to size
            members.setdefault((ns, md.spec.pool), []).append((raw, md))
        for (ns, pool_name), models in members.items():
            pool = pools.get((ns, pool_name))
            if pool is None:
                result.skipped.append(f"pool {ns}/{pool_name} not found")
                continue
            self._pool(ns, pool, models, now, result)
        self._forget(listed)
        try:
            pool_spend = self._policy_spend(now, result)
        except Exception as exc:  # reporting must not stop the decisions (or fail health)
            log.warning("reading or writing policy spend failed: %s", exc)
            pool_spend = {}
        for key, pool in pools.items():
            try:
                self._measure_pool(
                    key, raw_pools[key], pool, pool_spend=pool_spend, now=now, result=result
                )
            except Exception as exc:  # reporting must not stop the decisions
                log.warning("measuring pool %s/%s failed: %s", *key, exc)
        return result

    def _forget(self, listed: set[Key]) -> None:
        """Drops what is remembered of models the API no longer lists (deleted ones): their
        hysteresis state, last KV-cache size and forecast fit. A model listed again later
        starts afresh, as a new one would."""
        for key in [k for k in self.states if k not in listed]:
            del self.states[key]
        for key in [k for k in self.kv_sizes if k not in listed]:
            del self.kv_sizes[key]
        self.forecasts.forget(listed)

    def _policy_spend(self, now: float, result: Tick) -> dict[Key, float]:
        """Writes every RoutingPolicy's spend rate; returns the sum per pool. Spend is
        matched by (namespace, endpoint); a series without a namespace (a scrape that adds
        none) counts for the one policy serving that endpoint, if only one does."""
        spend = self.signals.spend_usd_per_hour(now)
        if spend is None:
            return {}
        policies: list[tuple[Key, str, str, dict[str, Any]]] = []
        for raw in self._list(self.api.list_policies):
            spec = raw.get("spec")
            if not isinstance(spec, dict) or not isinstance(spec.get("pool"), str):
                continue
            key = _meta(raw)
            endpoint = spec.get("endpoint") or key[1]
            policies.append((key, spec["pool"], str(endpoint), raw))
        per_ns: dict[SpendKey, int] = {}
        per_endpoint: dict[str, int] = {}
        for (ns, _), _, endpoint, _ in policies:
            per_ns[(ns, endpoint)] = per_ns.get((ns, endpoint), 0) + 1
            per_endpoint[endpoint] = per_endpoint.get(endpoint, 0) + 1
        pool_spend: dict[Key, float] = {}
        for key, pool, endpoint, raw in policies:
            ns = key[0]
            if per_ns[(ns, endpoint)] > 1:
                result.skipped.append(
                    f"RoutingPolicy {ns}/{key[1]}: endpoint {endpoint} is served by more than "
                    "one policy in its namespace, so its spend cannot be told apart"
                )
                continue
            rate = spend.get((ns, endpoint), 0.0)
            if per_endpoint[endpoint] == 1:
                rate += spend.get(("", endpoint), 0.0)
            rate = round(rate, 4)
            pool_spend[(ns, pool)] = pool_spend.get((ns, pool), 0.0) + rate
            old = (raw.get("status") or {}).get("spendUSDPerHour")
            if _moved(old, rate):
                try:
                    self.api.patch_policy_status(ns, key[1], {"spendUSDPerHour": rate})
                    result.spend_written.append(key)
                except Exception as exc:
                    log.warning("writing spend of %s/%s failed: %s", *key, exc)
        return pool_spend

    def _measure_pool(
        self,
        key: Key,
        raw: dict[str, Any],
        pool: ServingPool,
        *,
        pool_spend: dict[Key, float],
        now: float,
        result: Tick,
    ) -> None:
        """Writes status.measured of one pool when its GPUs or spend moved."""
        sig = self.signals.pool_signals(key[0], key[1], now)
        if not sig.available:
            return  # keep what was measured last; lastChangeTime tells its age
        old = (raw.get("status") or {}).get("measured")
        old = old if isinstance(old, dict) else {}
        accels = measured_accelerators(pool, sig)
        spend = pool_spend.get(key)
        spend = round(spend, 4) if spend is not None else None
        if not _accelerators_moved(old.get("accelerators"), accels) and not _moved(
            old.get("spendUSDPerHour"), spend
        ):
            return
        measured: dict[str, Any] = {
            "accelerators": accels,
            "gpus": _gpus_summary(accels),
            "lastChangeTime": rfc3339(now),
        }
        spend_now = spend if spend is not None else old.get("spendUSDPerHour")
        if spend_now is not None:
            measured["spendUSDPerHour"] = spend_now
        self.api.patch_pool_status(key[0], key[1], {"measured": measured})
        result.pools_measured.append(key)

    def _pool(
        self,
        ns: str,
        pool: ServingPool,
        models: list[tuple[dict[str, Any], ModelDeployment]],
        now: float,
        result: Tick,
    ) -> None:
        pool_name = str(pool.metadata.get("name", ""))
        views = {}
        refs = []
        for _raw, md in models:
            v = ModelView.from_resources(md, pool)
            views[v.name] = v
            refs.append(
                ModelRef(
                    name=v.name,
                    served_name=md.spec.servedModelName or v.name,
                    namespace=ns,
                    pool=pool_name,
                    accelerator=v.accelerator,
                    ttft_slo_s=v.ttft_slo_s,
                )
            )
        sigs = self.signals.model_signals(refs, now)
        for name, v in views.items():
            # How long requests stay on their replica (what Serve's power of two choices
            # sees of a replica's load) and how many tokens its KV cache holds: together
            # they bound what a replica admits (decide/slo.py).
            sig = sigs[name]
            if sig.kv_cache_tokens:
                self.kv_sizes[(ns, name)] = sig.kv_cache_tokens
            decode = sig.decode_tokens_per_sequence
            views[name] = replace(
                v,
                decode_tokens_per_s=decode if decode is not None else v.decode_tokens_per_s,
                kv_cache_tokens=self.kv_sizes.get((ns, name), v.kv_cache_tokens),
            )
        if self.forecasts.enabled:
            # The daily profile from Prometheus history, one cold start ahead.
            self.forecasts.refresh(ns, refs, now)
            for name, v in views.items():
                fc = self.forecasts.forecast(
                    ns, name, now, v.cold_start_s, sigs[name].request_rate,
                    span_s=self.settings.interval_s,
                )  # fmt: skip
                if fc is not None:
                    views[name] = replace(v, forecast_rps=fc)
        states = {n: self.states.get((ns, n), ModelState()) for n in views}
        decisions, new_states = decide_pool(
            PoolView.from_resource(pool), views, sigs, states, now=now, cfg=self.cfg
        )
        for raw, md in models:
            name = str(md.metadata.get("name", ""))
            d = decisions[name]
            key = (ns, name)
            self.states[key] = new_states[name]
            result.decisions[key] = d
            ready = (raw.get("status") or {}).get("readyReplicas")
            if isinstance(ready, int):
                result.ready_replicas[key] = ready
            try:
                self._act(raw, md, view=views[name], d=d, now=now, result=result)
            except Exception as exc:  # one model's API error must not stop the others
                log.warning("acting on %s/%s failed: %s", ns, name, exc)

    def _event(self, obj: dict[str, Any], reason: str, note: str, type_: str = "Normal") -> None:
        # Events are best effort: losing one must not stop the scale or status write.
        try:
            self.api.create_event(obj, reason, note, type_)
        except Exception as exc:
            log.warning("event %s for %s failed: %s", reason, _meta(obj), exc)

    def _act(
        self,
        raw: dict[str, Any],
        md: ModelDeployment,
        *,
        view: ModelView,
        d: Decision,
        now: float,
        result: Tick,
    ) -> None:
        ns, name = _meta(raw)
        old_status: dict[str, Any] = dict(raw.get("status") or {})
        old_auto: dict[str, Any] = dict(old_status.get("autoscaling") or {})
        scaled = False
        if d.write and view.mode == "Tokenyard":
            self.api.patch_scale(ns, name, d.desired)
            scaled = True
            result.scaled.append((ns, name))
            up = d.desired > view.current_replicas
            self._event(
                raw,
                REASON_SCALED_UP if up else REASON_SCALED_DOWN,
                f"replicas {view.current_replicas} -> {d.desired}: {d.reason}",
            )
            log.info(
                "scaled %s/%s %d -> %d: %s", ns, name, view.current_replicas, d.desired, d.reason
            )
        gen = md.metadata.get("generation")
        generation = gen if isinstance(gen, int) else None
        conditions = _conditions(list(old_status.get("conditions") or []), d, now, generation)
        was_capped = any(
            c.get("type") == COND_CAPPED and c.get("status") == "True"
            for c in old_status.get("conditions") or []
        )
        if d.capped and not was_capped:
            self._event(raw, d.capped, d.capped_message or d.reason, "Warning")
        auto = {
            "desiredReplicas": d.desired,
            "minReplicas": d.band_min,
            "maxReplicas": d.band_max,
            "reason": d.reason[:1024],
            "lastDecisionTime": old_auto.get("lastDecisionTime"),
            "lastScaleTime": rfc3339(now) if scaled else old_auto.get("lastScaleTime"),
            "kvCacheTokens": (
                round(view.kv_cache_tokens) if view.kv_cache_tokens is not None else None
            ),
        }
        new_status: dict[str, Any] = {
            "autoscaling": auto,
            "conditions": conditions,
            "desiredReplicas": d.desired,
        }
        if d.cost_per_1m_tokens is not None:
            new_status["costPer1MTokens"] = d.cost_per_1m_tokens
            new_status["costSource"] = "Measured"
        # Status is written only when something other than the decision time changed.
        changed = any(old_status.get(k) != v for k, v in new_status.items() if k != "autoscaling")
        changed = changed or {k: v for k, v in old_auto.items() if k != "lastDecisionTime"} != {
            k: v for k, v in auto.items() if k != "lastDecisionTime" and v is not None
        }
        if changed:
            auto["lastDecisionTime"] = rfc3339(now)
            new_status["autoscaling"] = {k: v for k, v in auto.items() if v is not None}
            self.api.patch_status(ns, name, new_status)
            result.status_written.append((ns, name))


def _conditions(
    conditions: list[dict[str, Any]], d: Decision, now: float, generation: int | None
) -> list[dict[str, Any]]:
    """A model's conditions with the MetricsAvailable and Capped a decision sets."""
    if d.metrics_available:
        conditions = set_condition(
            conditions,
            COND_METRICS_AVAILABLE,
            "True",
            reason=REASON_METRICS_OK,
            message="signals are fresh",
            now=now,
            generation=generation,
        )
    else:
        conditions = set_condition(
            conditions,
            COND_METRICS_AVAILABLE,
            "False",
            reason=REASON_METRICS_UNAVAILABLE,
            message=d.metrics_detail or "no signals",
            now=now,
            generation=generation,
        )
    if d.capped:
        return set_condition(
            conditions,
            COND_CAPPED,
            "True",
            reason=d.capped,
            message=d.capped_message,
            now=now,
            generation=generation,
        )
    return set_condition(
        conditions,
        COND_CAPPED,
        "False",
        reason=REASON_NOT_CAPPED,
        message="the pool gives every replica asked for",
        now=now,
        generation=generation,
    )


def _ready(raw: dict[str, Any]) -> tuple[bool, str]:
    for c in (raw.get("status") or {}).get("conditions") or []:
        if c.get("type") == COND_READY:
            return c.get("status") == "True", str(c.get("reason") or "")
    return False, "NoCondition"


def run_forever(
    autoscaler: Autoscaler,
    elector: LeaderElector | None,
    interval_s: float,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.time,
    heartbeat: Heartbeat | None = None,
    metrics: AutoscalerMetrics | None = None,
) -> None:
    """Decides every interval while leading, until ``stop`` is set; beats ``heartbeat``
    after every pass (leader or not) for the health endpoint and hands the pass to
    ``metrics`` for ``/metrics``."""
    while not stop.is_set():
        started = clock()
        leader = elector is None or elector.try_acquire(started)
        error: str | None = None
        t: Tick | None = None
        if leader:
            try:
                t = autoscaler.tick(started)
                if t.skipped:
                    log.warning("skipped: %s", "; ".join(t.skipped))
            except Exception as exc:  # the API server or Prometheus may be down; retry
                error = f"{type(exc).__name__}: {exc}"
                log.warning("autoscaler interval failed: %s", exc)
        if heartbeat is not None:
            heartbeat.beat(leader=leader, ticked=leader, error=error)
        if metrics is not None:
            metrics.record(started, leader=leader, tick=t, error=error)
        stop.wait(max(0.0, interval_s - (clock() - started)))
