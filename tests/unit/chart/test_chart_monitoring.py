"""The chart's monitoring: PodMonitors, the PrometheusRule and the Grafana dashboards.

Each part renders only when switched on; the monitors select the pods the operator's
builders and the chart's Deployment really label and name their ports as those pods do;
the rules pass `promtool check rules`; each alert's runbook exists in the docs; the
dashboards are the ones scripts/dashboards.py writes. Whether every expression refers to
metrics and labels that exist is checked against a real Prometheus scraping a real
router in tests/integration/observability.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes_validate import validate as k8s_validate

from tokenyard.api.manifests import load
from tokenyard.operator.builders import build_ray_service

from .test_chart_render import CHART, K8S_VERSION, REPO, by_kind, helm, render

ALL_ON = [
    "--set",
    "monitoring.podMonitors.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.dashboards.enabled=true",
]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DOCS = REPO / "docs" / "observability.md"

pytestmark = pytest.mark.skipif(
    not (REPO / ".tools" / "helm" / "helm").exists() and shutil.which("helm") is None,
    reason="helm is not installed: run `make tools` (installs .tools/helm/helm)",
)


def rendered_rules(*extra: str) -> dict[str, Any]:
    (rule,) = by_kind(render(*ALL_ON, *extra), "PrometheusRule")
    return rule


def test_everything_is_off_by_default() -> None:
    docs = render()
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    assert not [
        d
        for d in by_kind(docs, "ConfigMap")
        if "grafana_dashboard" in d["metadata"].get("labels", {})
    ]


@pytest.mark.parametrize(
    ("flag", "kind", "count"),
    [
        ("monitoring.podMonitors.enabled", "PodMonitor", 3),
        ("monitoring.prometheusRule.enabled", "PrometheusRule", 1),
        ("monitoring.dashboards.enabled", "ConfigMap", 2),
    ],
)
def test_each_part_renders_alone(flag: str, kind: str, count: int) -> None:
    docs = render("--set", f"{flag}=true")
    assert len(by_kind(docs, kind)) == count
    others = {"PodMonitor", "PrometheusRule", "ConfigMap"} - {kind}
    assert not [d for d in docs if d["kind"] in others]


def test_lint_strict_with_everything_on() -> None:
    result = helm("lint", "--strict", str(CHART), *ALL_ON)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("extra", [[], ["--set", "watchNamespaces={team-a}"]])
def test_built_in_objects_stay_valid_kubernetes(extra: list[str]) -> None:
    for doc in render(*ALL_ON, *extra):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a custom resource: checked field by field below
        k8s_validate(doc, K8S_VERSION, strict=True)


def _ray_pod_templates() -> list[dict[str, Any]]:
    m = load([REPO / "examples"])
    (pool,) = m.pools
    rs = build_ray_service(pool, m.models, m.policies)
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"] for g in groups]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "Exists", e
        if e["key"] not in labels:
            return False
    return True


def test_ray_podmonitor_selects_every_pod_the_operator_builds() -> None:
    monitors = {d["metadata"]["name"]: d for d in by_kind(render(*ALL_ON), "PodMonitor")}
    ray = monitors["t-tokenyard-ray"]["spec"]
    templates = _ray_pod_templates()
    assert len(templates) >= 2  # a head and at least one worker group
    for t in templates:
        assert _selects(ray["selector"], t["metadata"]["labels"])
    # The router endpoint's port is the head container's Serve port, by name.
    head_ports = {p["name"] for p in templates[0]["spec"]["containers"][0]["ports"]}
    endpoints = {e["port"]: e for e in ray["podMetricsEndpoints"]}
    assert set(endpoints) == {"metrics", "serve"}
    assert "serve" in head_ports
    # tokenyard's own `endpoint` label must survive the scrape.
    assert {"action": "labeldrop", "regex": "endpoint"} in endpoints["serve"]["relabelings"]
    assert ray["namespaceSelector"] == {"any": True}


def test_ray_podmonitor_watches_only_the_watched_namespaces() -> None:
    docs = render(*ALL_ON, "--set", "watchNamespaces={team-a,team-b}")
    (ray,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith("-ray")]
    assert ray["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


@pytest.mark.parametrize("component", ["operator", "autoscaler"])
def test_component_podmonitor_matches_its_deployment(component: str) -> None:
    docs = render(*ALL_ON)
    suffix = f"-{component}"
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(suffix)]
    (pm,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith(suffix)]
    pod = dep["spec"]["template"]
    assert _selects(pm["spec"]["selector"], pod["metadata"]["labels"])
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # The autoscaler's series are labelled with the models' namespaces, which must win.
    assert endpoint.get("honorLabels", False) is (component == "autoscaler")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["tokenyard-system"]}


def test_operator_serves_metrics_on_the_port_the_monitor_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render(*ALL_ON, "--set", "operator.metricsPort=9100")
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-operator")]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9100
    for e in container["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    from tokenyard.settings import load_settings

    assert load_settings().operator.metrics_port == 9100


def test_no_autoscaler_no_autoscaler_monitor_or_alerts() -> None:
    docs = render(*ALL_ON, "--set", "autoscaler.enabled=false")
    names = [d["metadata"]["name"] for d in by_kind(docs, "PodMonitor")]
    assert names == ["t-tokenyard-ray", "t-tokenyard-operator"]
    (rule,) = by_kind(docs, "PrometheusRule")
    groups = [g["name"] for g in rule["spec"]["groups"]]
    assert groups == ["tokenyard.router", "tokenyard.operator"]


def test_monitors_and_the_autoscalers_prometheus_agree_out_of_the_box() -> None:
    """The default prometheusURL is kube-prometheus-stack's Prometheus (Service
    prometheus-operated) in namespace monitoring, installed as release
    kube-prometheus-stack: it selects PodMonitors and rules labelled release=<release>."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    url = urlparse(values["autoscaler"]["prometheusURL"])
    assert url.hostname == "prometheus-operated.monitoring" and url.port == 9090
    docs = render(*ALL_ON)
    for d in [*by_kind(docs, "PodMonitor"), *by_kind(docs, "PrometheusRule")]:
        assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    docs = render(*ALL_ON, "--set", "monitoring.labels.release=prom")
    assert {d["metadata"]["labels"]["release"] for d in by_kind(docs, "PodMonitor")} == {"prom"}


@pytest.mark.skipif(not Path(PROMTOOL).is_file(), reason="promtool not installed (make tools)")
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rule = rendered_rules()
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_rule_thresholds_come_from_values() -> None:
    rule = rendered_rules(
        "--set-json", "monitoring.prometheusRule.fallbackRatio=0.25",
        "--set", "monitoring.prometheusRule.alertLabels.team=llm",
    )  # fmt: skip
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "> 0.25" in rules["TokenyardFallbackRateHigh"]["expr"]
    assert all(r["labels"]["team"] == "llm" for r in rules.values())


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return out


def test_every_alert_has_a_runbook_in_the_docs() -> None:
    anchors = _anchors(DOCS.read_text())
    rule = rendered_rules()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            url = r["annotations"]["runbook_url"]
            assert url.split("#")[0].endswith("docs/observability.md")
            assert url.split("#")[1] in anchors, r["alert"]


def test_dashboards_are_labelled_for_the_sidecar_and_generated() -> None:
    docs = render(
        "--set", "monitoring.dashboards.enabled=true",
        "--set", "monitoring.dashboards.namespace=grafana",
        "--set", "monitoring.dashboards.annotations.grafana_folder=LLM",
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location("dashboards", REPO / "scripts" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    generated = gen.render()
    maps = by_kind(docs, "ConfigMap")
    assert len(maps) == len(generated) == 2
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
        ((key, text),) = cm["data"].items()
        name = key.removeprefix("tokenyard-")
        # The chart ships what the generator writes (rerun scripts/dashboards.py).
        assert json.loads(text) == json.loads(generated[name])
        assert (CHART / "dashboards" / name).read_text() == generated[name]


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        ("monitoring.podMonitors.interval=often", "interval"),
        ("monitoring.prometheusRule.fallbackRatio=2", "fallbackRatio"),
        ("monitoring.prometheusRule.runbookBaseURL=docs", "runbookBaseURL"),
        ("monitoring.dashboards.namespace=Not_A_Name", "namespace"),
        ("monitoring.podMonitors.rayMetricsPort=Metrics", "rayMetricsPort"),
        ("monitoring.serviceMonitor.enabled=true", "serviceMonitor"),
    ],
)
def test_values_schema_rejects_bad_monitoring_values(flag: str, why: str) -> None:
    result = helm("template", "t", str(CHART), "--set", flag)
    assert result.returncode != 0
    assert why in result.stderr


@pytest.mark.skipif(not Path(PROMTOOL).is_file(), reason="promtool not installed (make tools)")
def test_the_documented_scrape_config_is_valid(tmp_path: Path) -> None:
    """The set-up without the Prometheus Operator, as docs/observability.md gives it."""
    text = DOCS.read_text().split("## Without the Prometheus Operator", 1)[1]
    snippet = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = yaml.safe_load(snippet)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {
        "tokenyard-ray",
        "tokenyard-router",
        "tokenyard-operator",
        "tokenyard-autoscaler",
    }
    assert jobs["tokenyard-autoscaler"]["honor_labels"] is True
    # The router answers /metrics only to its admin bearer token.
    auth = jobs["tokenyard-router"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"].endswith("/token")
    # Debian's Prometheus is built without Kubernetes service discovery, so promtool
    # checks everything else (relabelling included) with a static target in its place.
    for job in jobs.values():
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(path)],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
