"""The autoscaler's Prometheus metrics, served at ``/metrics`` of its health port.

:func:`tokenyard.autoscaler.loop.run_forever` hands every pass to :meth:`record`; the
chart's PodMonitor scrapes the result and its alerts and pool dashboard read it. The
series describe the last pass as a whole (a snapshot swapped under a lock, collected by
a custom collector), so a model or pool that disappears loses its series at the next
pass instead of keeping its last value forever, and a scrape never sees half a pass.

Only the leader decides; a replica that does not lead reports ``leader 0`` and no
per-model series, so ``max by (namespace, model)`` over the replicas is the decision.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenyard.api.common import REASON_BUDGET_CAPPED, REASON_GPU_CAPPED

if TYPE_CHECKING:
    from tokenyard.autoscaler.loop import Tick

CAPPED_REASONS = (REASON_GPU_CAPPED, REASON_BUDGET_CAPPED)


@dataclass
class _Snapshot:
    leader: bool = False
    last_pass: float | None = None
    last_tick: float | None = None
    errors: int = 0
    scaled: dict[tuple[str, str], int] = field(default_factory=dict)
    tick: Tick | None = None


class AutoscalerMetrics(Collector):
    """What the last pass decided, as Prometheus series (names ``tokenyard_autoscaler_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._snap = _Snapshot()
        self.registry.register(self)

    def record(self, now: float, *, leader: bool, tick: Tick | None, error: str | None) -> None:
        """One pass of the loop: ``tick`` is None when this replica did not lead or the
        pass failed (then the per-model series of the last good pass are dropped: a
        failed pass knows nothing current)."""
        with self._lock:
            s = self._snap
            scaled = dict(s.scaled)
            if tick is not None:
                # Every decided model's counter exists from its first decision, at 0,
                # so increase() and rate() see the first write.
                for key in tick.decisions:
                    scaled.setdefault(key, 0)
                for key in tick.scaled:
                    scaled[key] = scaled.get(key, 0) + 1
            self._snap = _Snapshot(
                leader=leader,
                last_pass=now,
                last_tick=now if tick is not None and error is None else s.last_tick,
                errors=s.errors + (1 if error is not None else 0),
                scaled=scaled,
                tick=tick if leader and error is None else None,
            )

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand: the registry must not call collect() at register

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            s = self._snap
        yield _gauge("leader", "1 while this replica holds the lease and decides.", s.leader)
        if s.last_pass is not None:
            yield _gauge(
                "last_pass_timestamp_seconds",
                "Unix time of the loop's last pass, leader or not.",
                s.last_pass,
            )
        if s.last_tick is not None:
            yield _gauge(
                "last_decision_timestamp_seconds",
                "Unix time of the last pass that decided every pool without an error.",
                s.last_tick,
            )
        errors = CounterMetricFamily(
            "tokenyard_autoscaler_pass_errors",
            "Passes that failed (API server or Prometheus unreachable); retried next interval.",
        )
        errors.add_metric([], s.errors)
        yield errors
        scaled = CounterMetricFamily(
            "tokenyard_autoscaler_scaled",
            "Writes of a model's replicas through the scale subresource.",
            labels=["namespace", "model"],
        )
        for (ns, name), n in sorted(s.scaled.items()):
            scaled.add_metric([ns, name], n)
        yield scaled
        t = s.tick
        if t is None:
            return
        yield from _model_families(t)
        pool_ready = GaugeMetricFamily(
            "tokenyard_autoscaler_pool_ready",
            "1 when the pool's Ready condition is True (its RayService serves every "
            "application), by the condition's reason.",
            labels=["namespace", "pool", "reason"],
        )
        for (ns, name), (ready, reason) in sorted(t.pool_ready.items()):
            pool_ready.add_metric([ns, name, reason], 1.0 if ready else 0.0)
        yield pool_ready

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"tokenyard_autoscaler_{name}", doc, value=float(value))


def _model_families(t: Tick) -> Iterator[Metric]:
    labels = ["namespace", "model"]
    desired = GaugeMetricFamily(
        "tokenyard_autoscaler_desired_replicas",
        "Replicas the autoscaler decided for the model (written when it owns replicas).",
        labels=labels,
    )
    recommended = GaugeMetricFamily(
        "tokenyard_autoscaler_recommended_replicas",
        "Replicas the load alone asks for, before the pool's GPU and budget caps.",
        labels=labels,
    )
    ready = GaugeMetricFamily(
        "tokenyard_autoscaler_ready_replicas",
        "Replicas serving requests, as the model's status.readyReplicas says.",
        labels=labels,
    )
    band_min = GaugeMetricFamily(
        "tokenyard_autoscaler_band_min_replicas",
        "Lower bound handed to Ray Serve's own autoscaler between decisions.",
        labels=labels,
    )
    band_max = GaugeMetricFamily(
        "tokenyard_autoscaler_band_max_replicas",
        "Upper bound handed to Ray Serve's own autoscaler between decisions.",
        labels=labels,
    )
    capped = GaugeMetricFamily(
        "tokenyard_autoscaler_capped",
        "1 when the pool gave the model fewer replicas than its load asks for, by reason "
        "(GPUCapped or BudgetCapped); 0 for the other reason.",
        labels=[*labels, "reason"],
    )
    available = GaugeMetricFamily(
        "tokenyard_autoscaler_metrics_available",
        "1 when the model's signals were fresh in Prometheus; 0 when the model holds its "
        "replicas for lack of them (condition MetricsAvailable=False).",
        labels=labels,
    )
    panic = GaugeMetricFamily(
        "tokenyard_autoscaler_panic",
        "1 while the model is in panic mode (a burst: scale-down suspended).",
        labels=labels,
    )
    for (ns, name), d in sorted(t.decisions.items()):
        key = [ns, name]
        desired.add_metric(key, d.desired)
        recommended.add_metric(key, d.recommended)
        band_min.add_metric(key, d.band_min)
        band_max.add_metric(key, d.band_max)
        for reason in CAPPED_REASONS:
            capped.add_metric([*key, reason], 1.0 if d.capped == reason else 0.0)
        available.add_metric(key, 1.0 if d.metrics_available else 0.0)
        panic.add_metric(key, 1.0 if d.panic else 0.0)
        r = t.ready_replicas.get((ns, name))
        if r is not None:
            ready.add_metric(key, r)
    yield from (desired, recommended, ready, band_min, band_max, capped, available, panic)


__all__ = ["AutoscalerMetrics"]
