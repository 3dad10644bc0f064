#!/usr/bin/env python3
"""Writes the chart's Grafana dashboards (charts/tokenyard/dashboards/*.json).

The dashboards are data: this script is their source, the JSON is generated and checked
in (the chart reads it with .Files.Get), and tests/unit/chart/test_chart_monitoring.py
fails when the two differ. Run it after editing a panel:

    python scripts/dashboards.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "tokenyard" / "dashboards"
NS = 'namespace=~"$namespace"'
RI = "$__rate_interval"


def _both(expr: str) -> str:
    """``expr`` over vLLM's own spelling (``vllm:``) or Ray's copy (``ray_vllm_``)."""
    return f"({expr.format(m='vllm:')}) or ({expr.format(m='ray_vllm_')})"


def panel(
    title: str,
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    kind: str = "timeseries",
    description: str = "",
    stack: bool = False,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if stack:
        p["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}}
    return p


def dashboard(uid: str, title: str, rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for row in rows:
        w = 24 // len(row)
        for i, p in enumerate(row):
            p["id"] = len(panels) + 1
            p["gridPos"] = {"h": 8, "w": w, "x": i * w, "y": y}
            panels.append(p)
        y += 8
    return {
        "uid": uid,
        "title": title,
        "tags": ["tokenyard"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                },
                {
                    "name": "namespace",
                    "type": "query",
                    "label": "Namespace",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(tokenyard_requests_total, namespace)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def pool() -> dict[str, Any]:
    return dashboard(
        "tokenyard-pool",
        "tokenyard / pool",
        [
            [
                panel(
                    "Requests per endpoint and target",
                    [
                        (
                            f"sum by (namespace, endpoint, target) "
                            f"(rate(tokenyard_requests_total{{{NS}}}[{RI}]))",
                            "{{namespace}}/{{endpoint}} → {{target}}",
                        )
                    ],
                    unit="reqps",
                    stack=True,
                ),
                panel(
                    "Traffic split (share of each endpoint's requests per target)",
                    [
                        (
                            f"sum by (namespace, endpoint, target) "
                            f"(rate(tokenyard_requests_total{{{NS}}}[{RI}])) "
                            f"/ ignoring (target) group_left "
                            f"sum by (namespace, endpoint) "
                            f"(rate(tokenyard_requests_total{{{NS}}}[{RI}]))",
                            "{{endpoint}} → {{target}}",
                        )
                    ],
                    unit="percentunit",
                    stack=True,
                ),
            ],
            [
                panel(
                    "Fallbacks by reason",
                    [
                        (
                            f"sum by (namespace, endpoint, from_target, reason) "
                            f"(rate(tokenyard_fallbacks_total{{{NS}}}[{RI}]))",
                            "{{endpoint}}: {{from_target}} ({{reason}})",
                        )
                    ],
                    unit="reqps",
                ),
                panel(
                    "Answers by HTTP status",
                    [
                        (
                            f"sum by (namespace, endpoint, status) "
                            f"(rate(tokenyard_requests_total{{{NS}}}[{RI}]))",
                            "{{endpoint}} {{status}}",
                        )
                    ],
                    unit="reqps",
                ),
                panel(
                    "Circuit breakers (0 closed, 1 half-open, 2 open)",
                    [
                        (
                            f"max by (namespace, target) (tokenyard_circuit_state{{{NS}}})",
                            "{{namespace}}/{{target}}",
                        )
                    ],
                ),
            ],
            [
                panel(
                    "Time to first token p95 per model",
                    [
                        (
                            _both(
                                "histogram_quantile(0.95, sum by (model_name, le) "
                                f"(rate({{m}}time_to_first_token_seconds_bucket[{RI}])))"
                            ),
                            "{{model_name}}",
                        )
                    ],
                    unit="s",
                ),
                panel(
                    "Tokens per second per model",
                    [
                        (
                            _both(
                                f"sum by (model_name) (rate({{m}}generation_tokens_total[{RI}]))"
                            ),
                            "{{model_name}} generated",
                        ),
                        (
                            _both(f"sum by (model_name) (rate({{m}}prompt_tokens_total[{RI}]))"),
                            "{{model_name}} prompt",
                        ),
                    ],
                    unit="short",
                ),
                panel(
                    "Router request latency p95 per endpoint",
                    [
                        (
                            "histogram_quantile(0.95, sum by (namespace, endpoint, le) "
                            f"(rate(tokenyard_request_latency_seconds_bucket{{{NS}}}[{RI}])))",
                            "{{namespace}}/{{endpoint}}",
                        )
                    ],
                    unit="s",
                ),
            ],
            [
                panel(
                    "Engine queue per model",
                    [
                        (
                            _both("sum by (model_name) ({m}num_requests_running)"),
                            "{{model_name}} running",
                        ),
                        (
                            _both("sum by (model_name) ({m}num_requests_waiting)"),
                            "{{model_name}} waiting",
                        ),
                    ],
                ),
                panel(
                    "GPU use per pool and accelerator class",
                    [
                        (
                            "avg by (namespace, label_tokenyard_dev_pool, label_ray_io_group) "
                            "(DCGM_FI_DEV_GPU_UTIL * on (namespace, pod) group_left "
                            "(label_tokenyard_dev_pool, label_ray_io_group) max by "
                            "(namespace, pod, label_tokenyard_dev_pool, label_ray_io_group) "
                            '(kube_pod_labels{label_tokenyard_dev_pool!=""}))',
                            "{{label_tokenyard_dev_pool}} {{label_ray_io_group}}",
                        )
                    ],
                    unit="percent",
                    description="DCGM exporter joined to kube-state-metrics' pod labels "
                    "(--metric-labels-allowlist=pods=[tokenyard.dev/pool,ray.io/group]).",
                ),
            ],
            [
                panel(
                    "Replicas: desired, recommended, ready",
                    [
                        (
                            f"max by (namespace, model) "
                            f"(tokenyard_autoscaler_desired_replicas{{{NS}}})",
                            "{{model}} desired",
                        ),
                        (
                            f"max by (namespace, model) "
                            f"(tokenyard_autoscaler_recommended_replicas{{{NS}}})",
                            "{{model}} recommended (uncapped)",
                        ),
                        (
                            f"max by (namespace, model) "
                            f"(tokenyard_autoscaler_ready_replicas{{{NS}}})",
                            "{{model}} ready",
                        ),
                    ],
                ),
                panel(
                    "Autoscaler decisions: scale writes, caps, missing signals",
                    [
                        (
                            f"sum by (namespace, model) "
                            f"(increase(tokenyard_autoscaler_scaled_total{{{NS}}}[{RI}]))",
                            "{{model}} scaled",
                        ),
                        (
                            f"max by (namespace, model, reason) "
                            f"(tokenyard_autoscaler_capped{{{NS}}}) == 1",
                            "{{model}} {{reason}}",
                        ),
                        (
                            f"max by (namespace, model) "
                            f"(tokenyard_autoscaler_metrics_available{{{NS}}}) == 0",
                            "{{model}} no signals",
                        ),
                        (
                            f"max by (namespace, model) (tokenyard_autoscaler_panic{{{NS}}}) == 1",
                            "{{model}} panic",
                        ),
                    ],
                    description="The full reason of each decision is in the model's "
                    "status.autoscaling.reason and its ScaledUp/ScaledDown Events.",
                ),
                panel(
                    "Ray Serve requests in flight per application",
                    [
                        (
                            "sum by (application) (ray_serve_replica_processing_queries)",
                            "{{application}}",
                        )
                    ],
                ),
            ],
        ],
    )


def money() -> dict[str, Any]:
    spend = f"rate(tokenyard_cost_usd_total{{{NS}}}[{RI}])"
    baseline = f"rate(tokenyard_baseline_cost_usd_total{{{NS}}}[{RI}])"
    tokens_in = f"rate(tokenyard_tokens_in_total{{{NS}}}[{RI}])"
    tokens_out = f"rate(tokenyard_tokens_out_total{{{NS}}}[{RI}])"
    return dashboard(
        "tokenyard-money",
        "tokenyard / money",
        [
            [
                panel(
                    "Spend per tenant (USD per hour)",
                    [(f"sum by (namespace, tenant) ({spend}) * 3600", "{{namespace}}/{{tenant}}")],
                    unit="currencyUSD",
                    stack=True,
                ),
                panel(
                    "Spend per model (USD per hour)",
                    [(f"sum by (namespace, target) ({spend}) * 3600", "{{namespace}}/{{target}}")],
                    unit="currencyUSD",
                    stack=True,
                ),
            ],
            [
                panel(
                    "Spend in the selected range per tenant",
                    [
                        (
                            f"sum by (namespace, tenant) "
                            f"(increase(tokenyard_cost_usd_total{{{NS}}}[$__range]))",
                            "{{namespace}}/{{tenant}}",
                        )
                    ],
                    unit="currencyUSD",
                    kind="bargauge",
                ),
                panel(
                    "Budget remaining per tenant",
                    [
                        (
                            f"min by (namespace, endpoint, tenant) "
                            f"(tokenyard_budget_remaining_usd{{{NS}}})",
                            "{{endpoint}}/{{tenant}}",
                        )
                    ],
                    unit="currencyUSD",
                    kind="bargauge",
                ),
                panel(
                    "Budget spent (share of the window's limit)",
                    [
                        (
                            f"1 - min by (namespace, endpoint, tenant) "
                            f"(tokenyard_budget_remaining_usd{{{NS}}}) "
                            f"/ max by (namespace, endpoint, tenant) "
                            f"(tokenyard_budget_limit_usd{{{NS}}} > 0)",
                            "{{endpoint}}/{{tenant}}",
                        )
                    ],
                    unit="percentunit",
                    kind="bargauge",
                ),
            ],
            [
                panel(
                    "Effective USD per 1M tokens per model",
                    [
                        (
                            f"sum by (namespace, target) ({spend}) "
                            f"/ (sum by (namespace, target) ({tokens_in}) "
                            f"+ sum by (namespace, target) ({tokens_out})) * 1e6",
                            "{{namespace}}/{{target}}",
                        )
                    ],
                    unit="currencyUSD",
                ),
                panel(
                    "Spend vs everything on the strongest target (USD per hour)",
                    [
                        (f"sum by (namespace, endpoint) ({spend}) * 3600", "{{endpoint}} spent"),
                        (
                            f"sum by (namespace, endpoint) ({baseline}) * 3600",
                            "{{endpoint}} on the strongest target alone",
                        ),
                    ],
                    unit="currencyUSD",
                    description="The baseline prices the same tokens at the endpoint's "
                    "highest-quality target (tokenyard_baseline_cost_usd_total).",
                ),
                panel(
                    "Spend avoided by routing in the selected range",
                    [
                        (
                            f"sum by (namespace, endpoint) "
                            f"(increase(tokenyard_baseline_cost_usd_total{{{NS}}}[$__range])) "
                            f"- sum by (namespace, endpoint) "
                            f"(increase(tokenyard_cost_usd_total{{{NS}}}[$__range]))",
                            "{{namespace}}/{{endpoint}}",
                        )
                    ],
                    unit="currencyUSD",
                    kind="stat",
                ),
            ],
        ],
    )


DASHBOARDS = {"pool.json": pool, "money.json": money}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(fn(), indent=1) + "\n" for name, fn in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
