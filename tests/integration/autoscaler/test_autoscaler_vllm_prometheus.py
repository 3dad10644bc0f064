"""End to end on real parts: vLLM (CPU, tiny model) -> Prometheus -> signals -> decide_pool.

The test starts vLLM's OpenAI server, a Prometheus scraping it every second, and a load
of concurrent completions. The autoscaler's Prometheus signal source reads the engine's
series and the real decision code, with short windows, must ask for more replicas while
the load runs and come back to the minimum after it stops. There is one engine, so the
test checks the sizing decisions, not new replicas serving (the kmock test checks that
decisions are written; the simulator checks their effect on latency).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.integration.realparts import vllm_openai_server

from tokenyard.autoscaler.decide import DecisionConfig, ModelState, ModelView, PoolView, decide_pool
from tokenyard.autoscaler.signals import ModelRef, PrometheusSignalSource

from .conftest import StartPrometheus, wait_window_full

pytestmark = [pytest.mark.serving, pytest.mark.timeout(420)]

MODEL = "tiny-autoscaled"


@pytest.fixture
def vllm_server(tmp_path: Path) -> Iterator[str]:
    with vllm_openai_server(tmp_path, MODEL, timeout_s=240) as base:
        yield base


def _load(base: str, stop: threading.Event, workers: int) -> ThreadPoolExecutor:
    def worker() -> None:
        with httpx.Client(base_url=f"http://{base}", timeout=60) as c:
            while not stop.is_set():
                c.post(
                    "/v1/completions",
                    json={
                        "model": MODEL,
                        "prompt": "Explain how autoscaling works " * 8,
                        "max_tokens": 96,
                        "ignore_eos": True,
                    },
                )

    pool = ThreadPoolExecutor(max_workers=workers)
    for _ in range(workers):
        pool.submit(worker)
    return pool


def _engine_kv_tokens(base: str) -> float:
    """num_gpu_blocks x block_size, read from the engine's /metrics text directly."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:cache_config_info":
                labels = sample.labels
                return float(labels["num_gpu_blocks"]) * float(labels["block_size"])
    raise AssertionError("vLLM exports no vllm:cache_config_info")


def test_scales_up_under_load_and_back_down(prometheus: StartPrometheus, vllm_server: str) -> None:
    url = prometheus([vllm_server])
    wait_window_full(url, "vllm:num_requests_running", "6s", 5)
    source = PrometheusSignalSource(url, rate_window="5s", stale_after_s=30)
    cfg = DecisionConfig(stable_window_s=6, panic_window_s=2, scale_down_delay_s=4)
    pool = PoolView(name="cpu")
    ref = ModelRef(MODEL, MODEL)
    current = 1
    states: dict[str, ModelState] = {}
    history: list[tuple[str, int, float, str]] = []

    def decide(phase: str) -> int:
        nonlocal current, states
        now = time.time()
        sig = source.model_signals([ref], now)
        # The SLO model sizes from vLLM's own counters (finished requests, prompt and
        # generated tokens, the queue): a replica profile of 200 prompt tokens/s is far
        # below what twelve clients push, so it must grow the model, and once the load
        # stops (no requests) return it to the minimum.
        # As the live loop does: the measured decode speed and the KV cache's size.
        view = ModelView(
            name=MODEL, min_replicas=1, max_replicas=8, current_replicas=current,
            ready_replicas=current, gpus_per_replica=0, target_ongoing=2,
            cold_start_s=0, nominal_tokens_per_s=200.0, ttft_slo_s=2.0,
            decode_tokens_per_s=sig[MODEL].decode_tokens_per_sequence,
            kv_cache_tokens=sig[MODEL].kv_cache_tokens,
        )  # fmt: skip
        decisions, states = decide_pool(pool, {MODEL: view}, sig, states, now=now, cfg=cfg)
        d = decisions[MODEL]
        history.append((phase, d.desired, sig[MODEL].ongoing, d.reason))
        if d.write:
            current = d.desired
        return d.desired

    assert decide("idle") == 1
    # The KV cache's size: vLLM's cache_config_info labels, joined to the model name by
    # Prometheus, equal to what the engine's own /metrics page says.
    kv = source.model_signals([ref], time.time())[MODEL].kv_cache_tokens
    assert kv is not None and kv == _engine_kv_tokens(vllm_server)

    stop = threading.Event()
    load = _load(vllm_server, stop, workers=12)
    peak = 1
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and peak < 3:
            time.sleep(2)
            peak = max(peak, decide("load"))
    finally:
        stop.set()
        load.shutdown(wait=True)
    assert peak >= 3, history
    assert any("SLO model" in h[3] for h in history if h[0] == "load"), history

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and current > 1:
        time.sleep(2)
        decide("after")
    assert current == 1, history
    after = [h for h in history if h[0] == "after"]
    # Scale-down is gradual (step limit) and never below the minimum.
    assert all(h[1] >= 1 for h in after)
