"""The operator's /metrics: counters of the reconciler, read at each scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from tests.unit.operator.factories import model_doc, pool_doc
from tests.unit.operator.test_controller import World

from tokenyard.operator.metrics import OperatorMetrics
from tokenyard.operator.store import WatchedStore
from tokenyard.settings import OperatorSettings


def samples(m: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.exposition()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_metrics_follow_the_reconciler() -> None:
    w = World()
    metrics = OperatorMetrics(w.ctrl)
    before = samples(metrics)
    assert before[("tokenyard_operator_reconcile_passes_total", ())] == 0
    w.add(pool_doc(), model_doc("economy"))
    await w.settle()
    after = samples(metrics)
    assert after[("tokenyard_operator_reconcile_passes_total", ())] > 0
    assert after[("tokenyard_operator_children_created_total", ())] >= 1
    assert after[("tokenyard_operator_status_patches_total", ())] > 0
    assert after[("tokenyard_operator_reconcile_errors_total", ())] == 0
    assert after[("tokenyard_operator_queue_depth", ())] == 0


def test_objects_per_kind_from_the_watched_store() -> None:
    from tokenyard.operator.controller import Controller
    from tokenyard.operator.kube import FakeKubeApi

    store = WatchedStore()
    ctrl = Controller(FakeKubeApi(), store, OperatorSettings())
    got = samples(OperatorMetrics(ctrl))
    assert got[("tokenyard_operator_objects", (("kind", "pool"),))] == 0
    assert OperatorSettings().metrics_port == 0  # off unless configured (the chart sets it)
