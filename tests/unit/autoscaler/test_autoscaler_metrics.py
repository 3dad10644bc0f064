"""The autoscaler's /metrics: a real pass over the fake API, served by the health server."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tokenyard.autoscaler.health import Heartbeat, serve_health
from tokenyard.autoscaler.metrics import AutoscalerMetrics

from .test_loop import FakeApi, _scaler, _seed


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def test_metrics_describe_the_last_pass_over_http() -> None:
    api = FakeApi()
    _seed(api)
    api.pools[("ns", "pool")]["status"] = {
        "conditions": [{"type": "Ready", "status": "False", "reason": "Deploying"}]
    }
    api.models[("ns", "auto")]["status"] = {"readyReplicas": 1}
    tick = _scaler(api, 200).tick(1000.0)  # asks 4; the manual model keeps 1 of 4 GPUs
    metrics = AutoscalerMetrics()
    metrics.record(1000.0, leader=True, tick=tick, error=None)
    server = serve_health(Heartbeat(), 60, 0, host="127.0.0.1", metrics=metrics)
    try:
        r = httpx.get(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert r.status_code == 200
    got = _samples(r.text)
    auto = (("model", "auto"), ("namespace", "ns"))
    assert got[("tokenyard_autoscaler_desired_replicas", auto)] == 3
    assert got[("tokenyard_autoscaler_recommended_replicas", auto)] == 4
    assert got[("tokenyard_autoscaler_ready_replicas", auto)] == 1
    assert got[("tokenyard_autoscaler_capped", (*auto, ("reason", "GPUCapped")))] == 1
    assert got[("tokenyard_autoscaler_capped", (*auto, ("reason", "BudgetCapped")))] == 0
    assert got[("tokenyard_autoscaler_metrics_available", auto)] == 1
    assert got[("tokenyard_autoscaler_scaled_total", auto)] == 1
    pool = (("namespace", "ns"), ("pool", "pool"), ("reason", "Deploying"))
    assert got[("tokenyard_autoscaler_pool_ready", pool)] == 0
    assert got[("tokenyard_autoscaler_leader", ())] == 1
    assert got[("tokenyard_autoscaler_last_decision_timestamp_seconds", ())] == 1000


def test_a_failed_pass_drops_model_series_and_counts_the_error() -> None:
    api = FakeApi()
    _seed(api)
    metrics = AutoscalerMetrics()
    metrics.record(1000.0, leader=True, tick=_scaler(api, 25).tick(1000.0), error=None)
    metrics.record(1015.0, leader=True, tick=None, error="ConnectError: refused")
    got = _samples(metrics.exposition()[0].decode())
    assert not [k for k in got if k[0] == "tokenyard_autoscaler_desired_replicas"]
    assert got[("tokenyard_autoscaler_pass_errors_total", ())] == 1
    assert got[("tokenyard_autoscaler_last_pass_timestamp_seconds", ())] == 1015
    assert got[("tokenyard_autoscaler_last_decision_timestamp_seconds", ())] == 1000
    metrics.record(1030.0, leader=False, tick=None, error=None)
    got = _samples(metrics.exposition()[0].decode())
    assert got[("tokenyard_autoscaler_leader", ())] == 0
