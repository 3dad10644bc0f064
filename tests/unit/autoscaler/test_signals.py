"""Signal sources: Prometheus results to signals, missing and stale series, injected signals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenyard.autoscaler import queries
from tokenyard.autoscaler.signals import (
    ModelRef,
    ModelSignals,
    PrometheusSignalSource,
    StaticSignalSource,
    by_label,
    kv_cache_tokens,
    ttft_over_slo,
)

NOW = 1_700_000_000.0


def _vec(label: str, values: dict[str, float], ts: float = NOW) -> list[dict[str, Any]]:
    return [{"metric": {label: k}, "value": [ts, str(v)]} for k, v in values.items()]


def _cache_info(model: str, blocks: object, block_size: object, **more: str) -> dict[str, Any]:
    labels = {"model_name": model, "num_gpu_blocks": str(blocks), "block_size": str(block_size)}
    return {"metric": {**labels, "engine": "0", "cache_dtype": "auto", **more},
            "value": [NOW, "1"]}  # fmt: skip


# Cumulative first tokens per second by vLLM's TTFT bucket bound (seconds).
TTFT_BUCKETS = {"1.0": 1.0, "2.5": 1.6, "5.0": 1.9, "7.5": 1.94, "10.0": 1.98, "+Inf": 2.0}


def _buckets(model: str, counts: dict[str, float]) -> list[dict[str, Any]]:
    m = queries.MODEL_LABEL
    return [{"metric": {m: model, "le": le}, "value": [NOW, str(v)]} for le, v in counts.items()]


class FakeProm:
    """Answers each query by which builder in ``queries`` produced it."""

    def __init__(self, seen_at: float = NOW, fail: bool = False) -> None:
        self.seen_at = seen_at
        self.fail = fail
        self.asked: list[str] = []

    def __call__(self, q: str) -> list[dict[str, Any]]:
        self.asked.append(q)
        if self.fail:
            raise ConnectionError("connection refused")
        m = queries.MODEL_LABEL
        table = {
            queries.running(): _vec(m, {"llama": 4}),
            queries.waiting(): _vec(m, {"llama": 6}),
            queries.last_sample_time(): _vec(m, {"llama": self.seen_at}),
            queries.kv_cache_usage(): _vec(m, {"llama": 0.5}),
            queries.request_rate("1m"): _vec(m, {"llama": 2.0}),
            queries.prompt_tokens_rate("1m"): _vec(m, {"llama": 900.0}),
            queries.generation_tokens_rate("1m"): _vec(m, {"llama": 100.0}),
            queries.ttft_p95("1m"): _vec(m, {"llama": float("nan")}),
            queries.serve_ongoing(): _vec(queries.APPLICATION_LABEL, {"model-llama": 12}),
            queries.kv_cache_config(): [_cache_info("llama", 3750, 16)],
            queries.ttft_buckets("1m"): _buckets("llama", TTFT_BUCKETS),
            queries.gpu_utilization_by_class(): [
                {
                    "metric": {
                        "namespace": "ns",
                        queries.POOL_LABEL: "pool",
                        queries.GROUP_LABEL: "l4",
                    },
                    "value": [NOW, "75"],
                }
            ],
        }
        return table.get(q, [])


REFS = [ModelRef("llama", "llama", "ns", "pool", "l4", ttft_slo_s=5.0), ModelRef("gone", "gone")]


def test_signals_from_prometheus_results() -> None:
    src = PrometheusSignalSource("http://unused", query=FakeProm())
    out = src.model_signals(REFS, NOW)
    s = out["llama"]
    assert s.available
    assert (s.running, s.waiting, s.kv_cache_usage) == (4, 6, 0.5)
    assert s.tokens_per_s == 1000.0
    assert s.ttft_p95_s is None  # NaN (no first tokens in the window) is no value
    assert s.serve_ongoing == 12
    assert s.ongoing == 12  # Ray Serve counts more in flight than the engine
    assert s.gpu_utilization == 0.75
    assert s.kv_cache_tokens == 60_000  # 3,750 blocks of 16 tokens
    assert s.first_tokens_per_s == 2.0
    assert s.late_first_tokens_per_s == pytest.approx(0.1)  # over 5 s: 2.0 - 1.9
    assert not out["gone"].available
    assert "model_name=gone" in out["gone"].detail


def test_stale_series_are_unavailable() -> None:
    src = PrometheusSignalSource("http://unused", query=FakeProm(NOW - 600), stale_after_s=120)
    s = src.model_signals(REFS, NOW)["llama"]
    assert not s.available
    assert "600s old" in s.detail


def test_query_failure_is_unavailable_not_zero() -> None:
    src = PrometheusSignalSource("http://unused", query=FakeProm(fail=True))
    out = src.model_signals(REFS, NOW)
    assert not any(s.available for s in out.values())
    assert out["llama"].running is None
    assert src.spend_usd_per_hour(NOW) is None  # unknown, not zero
    pool = src.pool_signals("ns", "pool", NOW)
    assert not pool.available and pool.gpus_in_use == {}
    assert "connection refused" in pool.detail


def test_spend_is_keyed_by_namespace_and_endpoint() -> None:
    q = queries.spend_usd_per_hour("1m")
    assert "namespace" in q and "tokenyard_cost_usd_total" in q
    result = [
        {"metric": {"namespace": "a", "endpoint": "chat"}, "value": [NOW, "1.5"]},
        {"metric": {"namespace": "b", "endpoint": "chat"}, "value": [NOW, "2"]},
        {"metric": {"endpoint": "code"}, "value": [NOW, "0.25"]},  # scrape adds no namespace
        {"metric": {"namespace": "a"}, "value": [NOW, "9"]},  # no endpoint: not a spend
        {"metric": {"namespace": "a", "endpoint": "nan"}, "value": [NOW, "NaN"]},
    ]
    src = PrometheusSignalSource("http://unused", query=lambda _q: result)
    assert src.spend_usd_per_hour(NOW) == {("a", "chat"): 1.5, ("b", "chat"): 2.0,
                                           ("", "code"): 0.25}  # fmt: skip
    # No router reports spend yet: unknown, not zero.
    assert (
        PrometheusSignalSource("http://unused", query=lambda _q: []).spend_usd_per_hour(NOW) is None
    )


def test_by_label_drops_nan_and_unlabelled() -> None:
    res = [
        {"metric": {"model_name": "a"}, "value": [0, "1.5"]},
        {"metric": {"model_name": "b"}, "value": [0, "NaN"]},
        {"metric": {}, "value": [0, "3"]},
        {"metric": {"model_name": "c"}, "value": [0, "+Inf"]},
    ]
    assert by_label(res, "model_name") == {"a": 1.5}


def test_every_query_reads_both_vllm_spellings() -> None:
    for q in (queries.running(), queries.waiting(), queries.kv_cache_usage()):
        assert "vllm:" in q and "ray_vllm_" in q
    for q in (
        queries.request_rate("1m"),
        queries.prompt_tokens_rate("1m"),
        queries.ttft_p95("1m"),
        queries.ttft_buckets("1m"),
    ):
        assert "[1m]" in q and "ray_vllm_" in q


def test_static_source_reads_file_each_time(tmp_path: Path) -> None:
    f = tmp_path / "signals.json"
    spend = {"e": 2, "ns/chat": 0.5}
    f.write_text(json.dumps({"models": {"llama": {"running": 3}}, "spendUSDPerHour": spend}))
    src = StaticSignalSource(path=str(f))
    assert src.model_signals(REFS, NOW)["llama"].running == 3
    assert not src.model_signals(REFS, NOW)["gone"].available
    assert src.spend_usd_per_hour(NOW) == {("", "e"): 2.0, ("ns", "chat"): 0.5}
    f.write_text(json.dumps({"models": {}}))
    assert src.spend_usd_per_hour(NOW) is None
    f.write_text("not json")
    assert not src.model_signals(REFS, NOW)["llama"].available


def test_static_source_in_memory() -> None:
    src = StaticSignalSource({"llama": ModelSignals(observed_at=0, running=1, waiting=2)})
    s = src.model_signals(REFS, NOW)["llama"]
    assert s.observed_at == NOW
    assert s.ongoing == 3


def test_kv_cache_tokens_from_the_info_gauges_labels() -> None:
    res = [
        _cache_info("a", 1000, 16),
        _cache_info("a", 900, 16),  # the smallest engine of a model bounds a replica
        _cache_info("b", "None", 16, kv_cache_size_tokens="4096"),  # blocks unknown
        _cache_info("c", "None", 16),  # engine not yet sized
        _cache_info("d", "nan", "inf"),
        _cache_info("e", "lots", 16),
        {"metric": {"num_gpu_blocks": "10", "block_size": "16"}, "value": [NOW, "1"]},
    ]
    assert kv_cache_tokens(res) == {"a": 14_400, "b": 4096}


def test_kv_cache_query_joins_the_model_name_for_both_exporters() -> None:
    q = queries.kv_cache_config()
    assert "vllm:cache_config_info" in q and "ray_vllm_cache_config_info" in q
    assert "on (instance, engine) group_left (model_name)" in q
    assert "on (ReplicaId) group_left (model_name)" in q


def test_kv_cache_query_failure_leaves_the_other_signals() -> None:
    # An older Prometheus (or a broken join) must not blind the autoscaler: the size
    # only refines the SLO model.
    fake = FakeProm()

    def query(q: str) -> list[dict[str, Any]]:
        if q == queries.kv_cache_config():
            raise ValueError("bad_data: parse error")
        return fake(q)

    s = PrometheusSignalSource("http://unused", query=query).model_signals(REFS, NOW)["llama"]
    assert s.available and s.running == 4
    assert s.kv_cache_tokens is None


def test_late_first_tokens_are_read_between_vllms_bucket_bounds() -> None:
    # An SLO between two bounds (8 s between 7.5 and 10) is interpolated, as
    # histogram_quantile does; one past the last finite bound counts what is beyond it.
    m = queries.MODEL_LABEL
    res = [*_buckets("a", TTFT_BUCKETS), *_buckets("b", TTFT_BUCKETS), *_buckets("c", TTFT_BUCKETS)]
    res.append({"metric": {m: "d", "le": "5.0"}, "value": [NOW, "1"]})  # no +Inf: unread
    res.append({"metric": {m: "a", "le": "bogus"}, "value": [NOW, "9"]})
    out = ttft_over_slo(res, m, {"a": 8.0, "b": 0.5, "c": 30.0, "d": 5.0})
    assert out["a"] == pytest.approx((2.0, 2.0 - (1.94 + 0.04 * 0.5 / 2.5)))
    assert out["b"] == pytest.approx((2.0, 2.0 - 0.5))  # below the first bound: from 0
    assert out["c"] == pytest.approx((2.0, 0.02))  # beyond 10 s: what +Inf adds
    assert "d" not in out
    assert ttft_over_slo(res, m, {}) == {}  # no SLO: nothing is late


def test_ttft_histogram_failure_leaves_the_other_signals() -> None:
    fake = FakeProm()

    def query(q: str) -> list[dict[str, Any]]:
        if q == queries.ttft_buckets("1m"):
            raise ValueError("bad_data: parse error")
        return fake(q)

    s = PrometheusSignalSource("http://unused", query=query).model_signals(REFS, NOW)["llama"]
    assert s.available and s.running == 4
    assert s.first_tokens_per_s is None and s.late_first_tokens_per_s is None
