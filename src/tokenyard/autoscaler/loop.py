"""The autoscaler loop: each interval, list pools and models, read signals, decide, then act.

Run by ``tokenyard autoscaler`` (:mod:`tokenyard.autoscaler.main`); tests drive
:meth:`Autoscaler.tick` with their own clock, API and signals. Acting means: the desired
replicas through the scale subresource (only for ``autoscaling.mode: Tokenyard`` and only
when they change), ``status.autoscaling``, the measured cost per 1M tokens and the
conditions MetricsAvailable and Capped through the status subresource (only when they
change), and an Event for every scale and every change of the Capped condition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tokenyard.api.common import (
    COND_CAPPED,
    COND_METRICS_AVAILABLE,
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
from tokenyard.autoscaler.health import Heartbeat
from tokenyard.autoscaler.kube import KubeApi, rfc3339
from tokenyard.autoscaler.leader import LeaderElector
from tokenyard.autoscaler.signals import ModelRef, SignalSource
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


@dataclass
class Tick:
    """What one interval did, for logs and tests."""

    decisions: dict[Key, Decision] = field(default_factory=dict)
    scaled: list[Key] = field(default_factory=list)
    status_written: list[Key] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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
        for raw in self._list(self.api.list_pools):
            try:
                pools[_meta(raw)] = ServingPool.model_validate(raw)
            except ValidationError as exc:
                result.skipped.append(f"ServingPool {_meta(raw)}: {exc.error_count()} errors")
        members: dict[Key, list[tuple[dict[str, Any], ModelDeployment]]] = {}
        for raw in self._list(self.api.list_models):
            ns, name = _meta(raw)
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
        return result

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
                )
            )
        sigs = self.signals.model_signals(refs, now)
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
        conditions: list[dict[str, Any]] = list(old_status.get("conditions") or [])
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
        was_capped = any(
            c.get("type") == COND_CAPPED and c.get("status") == "True"
            for c in old_status.get("conditions") or []
        )
        if d.capped:
            conditions = set_condition(
                conditions,
                COND_CAPPED,
                "True",
                reason=d.capped,
                message=d.capped_message,
                now=now,
                generation=generation,
            )
        else:
            conditions = set_condition(
                conditions,
                COND_CAPPED,
                "False",
                reason=REASON_NOT_CAPPED,
                message="the pool gives every replica asked for",
                now=now,
                generation=generation,
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


def run_forever(
    autoscaler: Autoscaler,
    elector: LeaderElector | None,
    interval_s: float,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.time,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Decides every interval while leading, until ``stop`` is set; beats ``heartbeat``
    after every pass (leader or not) for the health endpoint."""
    while not stop.is_set():
        started = clock()
        leader = elector is None or elector.try_acquire(started)
        error: str | None = None
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
        stop.wait(max(0.0, interval_s - (clock() - started)))
