"""Every PromQL query the autoscaler runs, in one place, with its exporter's label conventions.

Called by :mod:`tokenyard.autoscaler.signals`. Each query returns one series per key
label so that one round trip serves every model of the cluster:

* vLLM's own exporter (``/metrics`` of the OpenAI server) names series ``vllm:<name>``
  and labels them ``model_name`` (the served model name).
* Under Ray Serve LLM the same engine metrics go through Ray's metrics agent, which
  replaces ``:`` by ``_`` and prefixes ``ray_``: ``ray_vllm_<name>{model_name=...}``
  (plus ``ReplicaId``, ``WorkerId``, ``SessionName``). Each query sums both spellings
  with ``or``, so it works under either exporter.
* Ray Serve's own gauges are ``ray_serve_*`` with the labels ``application``,
  ``deployment`` and ``replica``; tokenyard's model apps are named ``model-<name>``.
* NVIDIA's DCGM exporter labels ``DCGM_FI_DEV_GPU_UTIL`` (0-100) with ``pod`` and
  ``namespace`` of the pod holding the GPU. kube-state-metrics' ``kube_pod_labels``
  joins those pods to their labels: KubeRay puts ``ray.io/group`` (the worker group,
  named after the accelerator class by the operator) on every Ray pod and the operator
  adds ``tokenyard.dev/pool``. GPU use is therefore known per pool and accelerator
  class, not per model: Ray places replicas of several models in one pod.
* The router counts spend in ``tokenyard_cost_usd_total{endpoint,target,tenant}``; the
  scrape (a PodMonitor of the Ray pods) adds ``namespace``.
"""

from __future__ import annotations

# Label names as exporters write them.
MODEL_LABEL = "model_name"
APPLICATION_LABEL = "application"
POOL_LABEL = "label_tokenyard_dev_pool"
GROUP_LABEL = "label_ray_io_group"
ENDPOINT_LABEL = "endpoint"


def _both(metric: str, agg: str = "sum", by: str = MODEL_LABEL) -> str:
    """``agg by (by)`` over the vLLM spelling of a metric or its Ray Serve copy."""
    ray = "ray_" + metric.replace(":", "_")
    return f"{agg} by ({by}) ({metric}) or {agg} by ({by}) ({ray})"


def _rate_both(metric: str, window: str) -> str:
    ray = "ray_" + metric.replace(":", "_")
    return (
        f"sum by ({MODEL_LABEL}) (rate({metric}[{window}])) "
        f"or sum by ({MODEL_LABEL}) (rate({ray}[{window}]))"
    )


def running() -> str:
    """Requests in the engine's running batch, per model."""
    return _both("vllm:num_requests_running")


def waiting() -> str:
    """Requests queued in the engine, per model."""
    return _both("vllm:num_requests_waiting")


def kv_cache_usage() -> str:
    """KV-cache fill in [0, 1], per model: the fullest replica decides."""
    return _both("vllm:kv_cache_usage_perc", agg="max")


def kv_cache_config() -> str:
    """Each engine's cache configuration, with its model joined in.

    ``vllm:cache_config_info`` is an info gauge (always 1): the KV cache's size is in its
    labels (``num_gpu_blocks``, ``block_size``), and it has no ``model_name``, so each
    series takes the model of the running-requests series it shares a scrape target and
    engine with (vLLM's exporter), or a Serve replica with (``ReplicaId``, under Ray).
    PromQL cannot read a label as a number; the signal source does."""
    direct = (
        f"vllm:cache_config_info * on (instance, engine) group_left ({MODEL_LABEL}) "
        f"group by (instance, engine, {MODEL_LABEL}) (vllm:num_requests_running)"
    )
    ray = (
        f"ray_vllm_cache_config_info * on (ReplicaId) group_left ({MODEL_LABEL}) "
        f"group by (ReplicaId, {MODEL_LABEL}) (ray_vllm_num_requests_running)"
    )
    return f"{direct} or {ray}"


def request_rate(window: str) -> str:
    """Finished requests per second, per model."""
    return _rate_both("vllm:request_success_total", window)


def prompt_tokens_rate(window: str) -> str:
    """Prompt tokens per second, per model."""
    return _rate_both("vllm:prompt_tokens_total", window)


def generation_tokens_rate(window: str) -> str:
    """Generated tokens per second, per model."""
    return _rate_both("vllm:generation_tokens_total", window)


def ttft_p95(window: str) -> str:
    """95th percentile time to first token in seconds, per model."""
    m = "vllm:time_to_first_token_seconds_bucket"
    ray = "ray_vllm_time_to_first_token_seconds_bucket"
    by = f"{MODEL_LABEL}, le"
    return (
        f"histogram_quantile(0.95, sum by ({by}) (rate({m}[{window}]))) "
        f"or histogram_quantile(0.95, sum by ({by}) (rate({ray}[{window}])))"
    )


def ttft_buckets(window: str) -> str:
    """Requests per second by TTFT histogram bucket (cumulative, label ``le``), per
    model: the share of them over a model's SLO (signals.ttft_over_slo)."""
    m = "vllm:time_to_first_token_seconds_bucket"
    ray = "ray_vllm_time_to_first_token_seconds_bucket"
    by = f"{MODEL_LABEL}, le"
    return f"sum by ({by}) (rate({m}[{window}])) or sum by ({by}) (rate({ray}[{window}]))"


def last_sample_time() -> str:
    """Unix time of the newest running-requests sample, per model (staleness check)."""
    m = "vllm:num_requests_running"
    ray = "ray_vllm_num_requests_running"
    return f"max by ({MODEL_LABEL}) (timestamp({m})) or max by ({MODEL_LABEL}) (timestamp({ray}))"


def serve_ongoing() -> str:
    """Requests being processed by a Ray Serve application's replicas, per application."""
    return f"sum by ({APPLICATION_LABEL}) (ray_serve_replica_processing_queries)"


def _gpu_join() -> str:
    return (
        "DCGM_FI_DEV_GPU_UTIL * on (namespace, pod) "
        f"group_left ({POOL_LABEL}, {GROUP_LABEL}) "
        f"max by (namespace, pod, {POOL_LABEL}, {GROUP_LABEL}) "
        f'(kube_pod_labels{{{POOL_LABEL}!=""}})'
    )


def gpu_utilization_by_class() -> str:
    """Mean GPU busy percentage (0-100) per pool and accelerator class."""
    return f"avg by (namespace, {POOL_LABEL}, {GROUP_LABEL}) ({_gpu_join()})"


def gpus_in_use_by_class() -> str:
    """GPUs present per pool and accelerator class (one DCGM series per GPU)."""
    return f"count by (namespace, {POOL_LABEL}, {GROUP_LABEL}) ({_gpu_join()})"


def spend_usd_per_hour(window: str) -> str:
    """USD per hour each endpoint (RoutingPolicy) is spending, from the router's counter;
    by namespace too (the scrape's target namespace), as endpoints of two namespaces may
    share a name."""
    return f"sum by (namespace, {ENDPOINT_LABEL}) (rate(tokenyard_cost_usd_total[{window}])) * 3600"
