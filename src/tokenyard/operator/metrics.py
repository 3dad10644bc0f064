"""The operator's Prometheus metrics, served at ``/metrics`` on ``metrics_port``.

:func:`tokenyard.operator.handlers.startup` starts the server (only when
``TOKENYARD_OPERATOR__METRICS_PORT`` is set; the chart sets it) over the running
:class:`~tokenyard.operator.controller.Controller`, whose counters are read at each
scrape: reconcile passes and failures, writes, the work queue and the objects it knows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tokenyard.operator.controller import Controller

KINDS = ("pool", "model", "policy")


class OperatorMetrics(Collector):
    """``tokenyard_operator_*``, read from the controller at each scrape."""

    def __init__(self, controller: Controller, registry: CollectorRegistry | None = None) -> None:
        self.controller = controller
        self.registry = registry or CollectorRegistry()
        self.registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand

    def collect(self) -> Iterator[Metric]:
        c = self.controller
        st = c.stats
        for name, doc, value in (
            ("reconcile_passes", "Passes over a pool or a namespace's orphans.", st.passes),
            ("reconcile_errors", "Passes that failed (retried after retryDelay).", st.errors),
            ("status_patches", "Status writes to pools, models and policies.", st.status_patches),
            ("children_created", "RayServices and state claims created.", st.created),
            ("children_updated", "RayServices patched to a new spec.", st.updated),
        ):
            m = CounterMetricFamily(f"tokenyard_operator_{name}", doc)
            m.add_metric([], value)
            yield m
        yield GaugeMetricFamily(
            "tokenyard_operator_queue_depth",
            "Pools and namespaces waiting for a pass (due now or later, retries included).",
            value=len(c.queue),
        )
        objects = GaugeMetricFamily(
            "tokenyard_operator_objects",
            "ServingPools, ModelDeployments and RoutingPolicies the operator watches.",
            labels=["kind"],
        )
        count = getattr(c.store, "count", None)
        if count is not None:
            for kind in KINDS:
                objects.add_metric([kind], count(kind))
        yield objects

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["OperatorMetrics"]
