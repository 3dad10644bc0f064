"""Every PromQL query of the autoscaler, run by a real Prometheus over exporter-shaped text.

A local HTTP server plays four exporters at once, in their own naming and labels: vLLM's
OpenAI server (``vllm:*{model_name}``), the Ray metrics agent's copies under Ray Serve
(``ray_vllm_*`` with ReplicaId/WorkerId, ``ray_serve_*`` with application/deployment/
replica), NVIDIA's DCGM exporter with kube-state-metrics' ``kube_pod_labels``, and the
tokenyard router's cost counter. Counters grow at known rates, so the rate queries have
known answers.
"""

# Exposition lines are as long as exporters write them.
# ruff: noqa: E501
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenyard.autoscaler.signals import ModelRef, PrometheusSignalSource

from .conftest import StartPrometheus, wait_window_full

T0 = time.monotonic()


def exposition() -> str:
    t = time.monotonic() - T0 + 100.0
    # TTFT histogram: 10 first tokens per second, 5 under 0.1 s, 4 under 0.5 s, 1 under 2.5 s.
    buckets = {"0.1": 5 * t, "0.5": 9 * t, "2.5": 10 * t, "+Inf": 10 * t}
    hist_v = "".join(
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",model_name="direct"}} {v}\n'
        for le, v in buckets.items()
    )
    hist_r = "".join(
        'ray_vllm_time_to_first_token_seconds_bucket{ReplicaId="r1",WorkerId="w",'
        f'le="{le}",model_name="served-by-ray"}} {v}\n'
        for le, v in buckets.items()
    )
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="direct"}} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="direct"}} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="direct"}} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="direct"}} {1000 * t}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="direct"}} {200 * t}
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="length",model_name="direct"}} {4 * t}
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="direct"}} {6 * t}
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
{hist_v}vllm:time_to_first_token_seconds_count{{engine="0",model_name="direct"}} {10 * t}
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="direct"}} {1.5 * t}
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",num_cpu_blocks="None",num_gpu_blocks="3750",num_gpu_blocks_override="None",prefix_caching_hash_algo="sha256",sliding_window="None",swap_space="4"}} 1.0
# TYPE ray_vllm_cache_config_info gauge
ray_vllm_cache_config_info{{ReplicaId="r1",WorkerId="w",block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="8000"}} 1.0
ray_vllm_cache_config_info{{ReplicaId="r2",WorkerId="w",block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="7500"}} 1.0
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{{ReplicaId="r1",WorkerId="w",model_name="served-by-ray"}} 2.0
ray_vllm_num_requests_running{{ReplicaId="r2",WorkerId="w",model_name="served-by-ray"}} 3.0
# TYPE ray_vllm_num_requests_waiting gauge
ray_vllm_num_requests_waiting{{ReplicaId="r1",WorkerId="w",model_name="served-by-ray"}} 1.0
ray_vllm_num_requests_waiting{{ReplicaId="r2",WorkerId="w",model_name="served-by-ray"}} 0.0
# TYPE ray_vllm_kv_cache_usage_perc gauge
ray_vllm_kv_cache_usage_perc{{ReplicaId="r1",WorkerId="w",model_name="served-by-ray"}} 0.3
ray_vllm_kv_cache_usage_perc{{ReplicaId="r2",WorkerId="w",model_name="served-by-ray"}} 0.9
# TYPE ray_vllm_prompt_tokens_total counter
ray_vllm_prompt_tokens_total{{ReplicaId="r1",WorkerId="w",model_name="served-by-ray"}} {300 * t}
ray_vllm_prompt_tokens_total{{ReplicaId="r2",WorkerId="w",model_name="served-by-ray"}} {200 * t}
# TYPE ray_vllm_time_to_first_token_seconds histogram
{hist_r}# TYPE ray_serve_replica_processing_queries gauge
ray_serve_replica_processing_queries{{application="model-ray-model",deployment="LLMServer",replica="a"}} 4.0
ray_serve_replica_processing_queries{{application="model-ray-model",deployment="LLMServer",replica="b"}} 5.0
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-1",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="n1",container="ray-worker",namespace="team-a",pod="shared-h100-w1"}} 90
DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-2",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="n1",container="ray-worker",namespace="team-a",pod="shared-h100-w1"}} 70
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-3",device="nvidia0",modelName="NVIDIA L4",Hostname="n2",container="ray-worker",namespace="team-a",pod="shared-l4-w1"}} 20
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-4",device="nvidia0",modelName="NVIDIA L4",Hostname="n3",container="trainer",namespace="other",pod="not-ours"}} 100
# TYPE kube_pod_labels gauge
kube_pod_labels{{namespace="team-a",pod="shared-h100-w1",uid="u1",label_tokenyard_dev_pool="shared",label_ray_io_group="h100"}} 1
kube_pod_labels{{namespace="team-a",pod="shared-l4-w1",uid="u2",label_tokenyard_dev_pool="shared",label_ray_io_group="l4"}} 1
kube_pod_labels{{namespace="other",pod="not-ours",uid="u3"}} 1
# HELP tokenyard_cost_usd_total Spend in USD (tokens times the target's price).
# TYPE tokenyard_cost_usd_total counter
tokenyard_cost_usd_total{{endpoint="chat",target="economy",tenant="acme"}} {0.01 * t}
tokenyard_cost_usd_total{{endpoint="chat",target="frontier",tenant="acme"}} {0.02 * t}
tokenyard_cost_usd_total{{endpoint="code",target="economy",tenant="acme"}} {0.001 * t}
tokenyard_cost_usd_total{{endpoint="chat",namespace="team-b",target="economy",tenant="acme"}} {0.004 * t}
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = exposition().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def exporter() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_queries_read_every_exporter(prometheus: StartPrometheus, exporter: str) -> None:
    url = prometheus([exporter])
    source = PrometheusSignalSource(url, rate_window="5s", stale_after_s=30)
    models = [
        ModelRef("direct", "direct", "team-a", "shared", "l4", ttft_slo_s=1.5),
        ModelRef("ray-model", "served-by-ray", "team-a", "shared", "h100", ttft_slo_s=2.5),
        ModelRef("ghost", "ghost", "team-a", "shared", "l4"),
    ]
    # rate() over 5 s needs the window full of 1 s scrapes, or it under-extrapolates.
    wait_window_full(url, "vllm:num_requests_running", "6s", 6)
    sig = source.model_signals(models, time.time())

    d = sig["direct"]
    assert d.available
    assert (d.running, d.waiting, d.kv_cache_usage) == (7.0, 3.0, 0.42)
    assert d.prompt_tokens_per_s == pytest.approx(1000, rel=0.1)
    assert d.generation_tokens_per_s == pytest.approx(200, rel=0.1)
    assert d.request_rate == pytest.approx(10, rel=0.1)
    # p95 falls in the (0.5, 2.5] bucket: Prometheus interpolates to 1.5 s.
    assert d.ttft_p95_s == pytest.approx(1.5, rel=0.1)
    # Late first tokens: those over the 1.5 s SLO, half of the (0.5, 2.5] bucket's one.
    assert d.first_tokens_per_s == pytest.approx(10, rel=0.1)
    assert d.late_first_tokens_per_s == pytest.approx(0.5, rel=0.1)
    assert d.gpu_utilization == pytest.approx(0.20)
    assert d.ongoing == 10.0
    assert d.kv_cache_tokens == 3750 * 16  # the info gauge's labels, model joined in

    r = sig["ray-model"]
    assert r.available
    assert (r.running, r.waiting) == (5.0, 1.0)
    assert r.kv_cache_usage == 0.9  # the fullest replica
    assert r.prompt_tokens_per_s == pytest.approx(500, rel=0.1)
    assert r.serve_ongoing == 9.0
    assert r.first_tokens_per_s == pytest.approx(10, rel=0.1)
    assert r.late_first_tokens_per_s == pytest.approx(0.0, abs=1e-6)  # all within 2.5 s
    assert r.ongoing == 9.0  # Ray Serve sees more in flight than the engines report
    assert r.gpu_utilization == pytest.approx(0.80)
    assert r.kv_cache_tokens == 7500 * 16  # the smaller replica's cache

    ghost = sig["ghost"]
    assert not ghost.available
    assert "ghost" in ghost.detail

    pool = source.pool_signals("team-a", "shared", time.time())
    assert pool.gpus_in_use == {"h100": 2.0, "l4": 1.0}
    assert pool.gpu_utilization == pytest.approx({"h100": 0.8, "l4": 0.2})

    spend = source.spend_usd_per_hour(time.time())
    assert spend is not None
    # Series without a namespace (this scrape adds none) are keyed by endpoint alone; a
    # series with one (as a PodMonitor's target labels add) keeps its namespace.
    assert spend[("", "chat")] == pytest.approx(0.03 * 3600, rel=0.1)
    assert spend[("", "code")] == pytest.approx(0.001 * 3600, rel=0.1)
    assert spend[("team-b", "chat")] == pytest.approx(0.004 * 3600, rel=0.1)


def test_unreachable_prometheus_means_unavailable() -> None:
    source = PrometheusSignalSource("http://127.0.0.1:9", timeout_s=1)
    sig = source.model_signals([ModelRef("m", "m")], time.time())
    assert not sig["m"].available
    assert "Prometheus query failed" in sig["m"].detail
    assert source.spend_usd_per_hour(time.time()) is None
    assert not source.pool_signals("ns", "pool", time.time()).available
