"""Every PromQL expression of the chart's rules and dashboards, asked of a real Prometheus.

Real parts: vLLM's OpenAI server on CPU (tiny model), the tokenyard router (RouterCore
over uvicorn, no Ray) calling it as two priced targets plus one that refuses every
connection, the autoscaler's decision loop and ``/metrics`` (its Kubernetes API is an
in-memory store; its signals come from this Prometheus), the operator's ``/metrics``
over an idle reconciler, under a generated load of
completions from three tenants, one of them over its budget. Prometheus scrapes them
every second with the target labels the chart's PodMonitors give (``namespace``,
``pod``, ``pool``; the autoscaler with honorLabels) and loads the rendered rules.

Metrics that no process here can export (NVIDIA's DCGM, kube-state-metrics, Ray's
metrics agent: ``ray_vllm_*`` and ``ray_serve_*``) come from an exporter-shaped page,
named in NOT_RUN_HERE; every ``tokenyard_*`` and ``vllm:*`` metric must come from a
real process. Each selector's metric must exist (an unknown metric fails even where the
expression would just be empty), each matcher must match a series of it, each grouping
label must be on the metrics it groups, each dashboard query must answer (unless it
ends in a threshold) with the labels its legend names, and Prometheus must evaluate
every rule without an error.
"""

# Exposition lines are as long as exporters write them.
# ruff: noqa: E501
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.integration.realparts import free_port, stop, vllm_openai_server, wait_http

from .promql import ends_in_filter, refs

pytestmark = [pytest.mark.serving, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "tokenyard"
HELM = REPO / ".tools" / "helm" / "helm"
PROMETHEUS = (
    os.environ.get("TOKENYARD_PROMETHEUS_BIN")
    or shutil.which("prometheus")
    or "/usr/bin/prometheus"
)
SERVED = "tiny"
NS = "team-a"
# The router's admin bearer token: Prometheus scrapes /metrics with it, as the chart's
# PodMonitor does (the router gets only its SHA-256, as the operator renders it).
ADMIN_TOKEN = "observability-test-admin-token-0123456789"

# Grafana's variables as a user with every namespace selected would send them.
VARIABLES = {"$namespace": ".*", "$__rate_interval": "30s", "$__range": "10m"}

NOT_RUN_HERE = {
    "DCGM_FI_DEV_GPU_UTIL",
    "kube_pod_labels",
    "ray_serve_replica_processing_queries",
    "ray_vllm_time_to_first_token_seconds_bucket",
    "ray_vllm_generation_tokens_total",
    "ray_vllm_prompt_tokens_total",
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
}
T0 = time.monotonic()


def _exposition() -> str:
    """Exporter-shaped series of the exporters this machine cannot run, in their own
    names and labels (as tests/integration/autoscaler/test_autoscaler_queries.py)."""
    t = time.monotonic() - T0 + 100.0
    buckets = "".join(
        f'ray_vllm_time_to_first_token_seconds_bucket{{ReplicaId="r1",WorkerId="w",le="{le}",model_name="big"}} {v * t}\n'
        for le, v in (("0.1", 5), ("0.5", 9), ("+Inf", 10))
    )
    return f"""# TYPE ray_vllm_time_to_first_token_seconds histogram
{buckets}ray_vllm_time_to_first_token_seconds_count{{ReplicaId="r1",WorkerId="w",model_name="big"}} {10 * t}
ray_vllm_time_to_first_token_seconds_sum{{ReplicaId="r1",WorkerId="w",model_name="big"}} {2 * t}
# TYPE ray_vllm_generation_tokens_total counter
ray_vllm_generation_tokens_total{{ReplicaId="r1",WorkerId="w",model_name="big"}} {200 * t}
# TYPE ray_vllm_prompt_tokens_total counter
ray_vllm_prompt_tokens_total{{ReplicaId="r1",WorkerId="w",model_name="big"}} {900 * t}
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{{ReplicaId="r1",WorkerId="w",model_name="big"}} 3
# TYPE ray_vllm_num_requests_waiting gauge
ray_vllm_num_requests_waiting{{ReplicaId="r1",WorkerId="w",model_name="big"}} 1
# TYPE ray_serve_replica_processing_queries gauge
ray_serve_replica_processing_queries{{application="model-big",deployment="LLMServer",replica="a"}} 4
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-1",device="nvidia0",modelName="NVIDIA L4",Hostname="n1",container="ray-worker",namespace="{NS}",pod="shared-l4-w1"}} 55
# TYPE kube_pod_labels gauge
kube_pod_labels{{namespace="{NS}",pod="shared-l4-w1",uid="u1",label_tokenyard_dev_pool="shared",label_ray_io_group="l4"}} 1
"""


# --- processes -------------------------------------------------------------------------


@pytest.fixture
def vllm(tmp_path: Path) -> Iterator[str]:
    with vllm_openai_server(tmp_path, SERVED) as base:
        yield base


def router_config(vllm: str, dead: str) -> Any:
    from tokenyard.api.policy import RoutingPolicySpec
    from tokenyard.contract import CatalogueEntry, ExternalEndpoint, PolicyEntry, RouterConfig

    def entry(name: str, base: str, price: float, quality: float) -> CatalogueEntry:
        return CatalogueEntry(
            name=name, servedModelName=name, kind="External", quality=quality,
            inputPer1M=price, outputPer1M=2 * price, dataClasses=["public"],
            external=ExternalEndpoint(baseURL=f"http://{base}/v1", providerModel=SERVED, apiKeyEnv="KEY"),
        )  # fmt: skip

    def policy(endpoint: str, targets: list[str], **spec: Any) -> PolicyEntry:
        body = RoutingPolicySpec.model_validate(
            {
                "pool": "shared",
                "endpoint": endpoint,
                "targets": [{"model": t} for t in targets],
                "strategy": "Ordered",
                "egress": {"defaultDataClass": "public"},
                **spec,
            }
        )
        return PolicyEntry(name=endpoint, namespace=NS, endpoint=endpoint, spec=body.dump())

    return RouterConfig(
        pool="shared",
        namespace=NS,
        models=[
            entry("flaky", dead, 0.1, 0.3),
            entry("economy", vllm, 0.5, 0.6),
            entry("frontier", vllm, 10.0, 0.95),
        ],
        policies=[
            policy("chat", ["flaky", "economy", "frontier"], strategy="CheapestSufficient", budgets=[{"tenant": "*", "limitUSD": 100, "window": "24h"}]),
            policy("capped", ["economy"], budgets=[{"tenant": "*", "limitUSD": 0.00002, "window": "24h", "onExceeded": "Reject"}]),
        ],
    )  # fmt: skip


@dataclass
class Router:
    base: str
    audit: Path


@pytest.fixture
def router(vllm: str, tmp_path: Path) -> Iterator[Router]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tokenyard.accounting.audit import AuditLog
    from tokenyard.accounting.ledger_actor import LedgerClient
    from tokenyard.contract import RouterAppArgs, admin_token_sha256
    from tokenyard.serving.providers import ProviderClient
    from tokenyard.serving.router import RouterCore

    audit = tmp_path / "audit.jsonl"
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every call is refused
    holder: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        core = RouterCore(
            RouterAppArgs(
                pool="shared",
                namespace=NS,
                auditPath=str(audit),
                adminTokenSha256=admin_token_sha256(ADMIN_TOKEN),
            ),
            ledger=LedgerClient(None),
            provider=ProviderClient(env={"KEY": "sk-test"}),
            audit=AuditLog(str(audit)),
            env={},
            watch_apps=False,
        )
        core.apply_config(router_config(vllm, dead))
        holder["core"] = core
        yield
        await core.aclose()

    async def handle(request: Any) -> Any:
        return await holder["core"].handle(request)

    app = Starlette(
        routes=[Route("/{path:path}", handle, methods=["GET", "POST"])], lifespan=lifespan
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_http(f"http://127.0.0.1:{port}/healthz", 30)
    try:
        yield Router(f"127.0.0.1:{port}", audit)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class MemoryApi:
    """The Kubernetes API the autoscaler reads and writes, kept in memory: one pool (its
    RayService still deploying) and one model served by the vLLM above."""

    def __init__(self) -> None:
        self.pools = [
            {
                "metadata": {"name": "shared", "namespace": NS},
                "spec": {"accelerators": [{"name": "l4", "maxGPUs": 2, "hourlyCostPerGPU": 1.0}]},
                "status": {
                    "conditions": [{"type": "Ready", "status": "False", "reason": "Deploying"}]
                },
            }
        ]
        self.models = [
            {
                "metadata": {"name": "economy", "namespace": NS, "generation": 1},
                "spec": {
                    "pool": "shared",
                    "servedModelName": SERVED,
                    "inCluster": {"source": "hf://x/y", "accelerator": "l4"},
                    "replicas": 1,
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetOngoingRequests": 1},
                },
                "status": {"readyReplicas": 1},
            }
        ]

    def list_pools(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.pools

    def list_models(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.models

    def list_policies(self, namespace: str | None) -> list[dict[str, Any]]:
        return []

    def patch_scale(self, namespace: str, name: str, replicas: int) -> None:
        self.models[0]["spec"]["replicas"] = replicas

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.models[0]["status"].update(status)

    def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.pools[0]["status"].update(status)

    def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        return None

    def create_event(
        self, obj: dict[str, Any], reason: str, note: str, type_: str = "Normal"
    ) -> None:
        return None


@contextlib.contextmanager
def autoscaler(prometheus_url: str, port: int) -> Iterator[None]:
    """The real decision loop and ``/metrics``, reading signals from ``prometheus_url``."""
    from tokenyard.autoscaler.health import Heartbeat, serve_health
    from tokenyard.autoscaler.loop import Autoscaler, run_forever
    from tokenyard.autoscaler.metrics import AutoscalerMetrics
    from tokenyard.autoscaler.signals import PrometheusSignalSource
    from tokenyard.settings import AutoscalerSettings

    metrics = AutoscalerMetrics()
    heartbeat = Heartbeat()
    server = serve_health(heartbeat, 60, port, host="127.0.0.1", metrics=metrics)
    source = PrometheusSignalSource(prometheus_url, rate_window="5s", stale_after_s=30)
    scaler = Autoscaler(MemoryApi(), source, AutoscalerSettings())  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever,
        args=(scaler, None, 1.0, stop),
        kwargs={"heartbeat": heartbeat, "metrics": metrics},
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        server.shutdown()
        server.server_close()


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = _exposition().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def exporter() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def helm_template(*values: str) -> list[dict[str, Any]]:
    binary = str(HELM) if HELM.exists() else shutil.which("helm")
    if binary is None:
        pytest.skip("helm is not installed: run `make tools`")
    out = subprocess.run(
        [binary, "template", "t", str(CHART), *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@contextlib.contextmanager
def operator_metrics(port: int) -> Iterator[None]:
    """The operator's ``/metrics`` over an idle reconciler (its API in memory), on the
    server the operator starts (prometheus_client's)."""
    from prometheus_client import start_http_server

    from tokenyard.operator.controller import Controller
    from tokenyard.operator.kube import FakeKubeApi
    from tokenyard.operator.metrics import OperatorMetrics
    from tokenyard.operator.store import WatchedStore
    from tokenyard.settings import OperatorSettings

    metrics = OperatorMetrics(Controller(FakeKubeApi(), WatchedStore(), OperatorSettings()))
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def prometheus_config(
    rules: Path,
    *,
    router: str,
    router_token: Path,
    vllm: str,
    autoscaler: str,
    exporter: str,
    operator: str,
) -> str:
    """Scrape jobs with the target labels the chart's PodMonitors give each target."""

    def job(name: str, target: str, labels: dict[str, str], honor: bool = False) -> dict[str, Any]:
        return {
            "job_name": name,
            "honor_labels": honor,
            "static_configs": [{"targets": [target], "labels": labels}],
        }

    ray_pod = {
        "namespace": NS,
        "pod": "shared-head-abcde",
        "pool": "shared",
        "ray_group": "headgroup",
    }
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            # PodMonitor <release>-ray, endpoint `serve` (its `endpoint` target label dropped).
            # With the router's admin token, as docs/observability.md's plain-Prometheus job.
            {
                **job("router", router, ray_pod),
                "authorization": {"type": "Bearer", "credentials_file": str(router_token)},
            },
            # vLLM's own OpenAI server (under Ray Serve its metrics come as ray_vllm_*).
            job("vllm", vllm, {"namespace": NS, "pod": "vllm-0"}),
            # PodMonitor <release>-autoscaler: honorLabels keeps the models' namespaces.
            job(
                "autoscaler",
                autoscaler,
                {"namespace": "tokenyard-system", "pod": "t-tokenyard-autoscaler-0"},
                honor=True,
            ),
            # PodMonitor <release>-operator.
            job(
                "operator",
                operator,
                {"namespace": "tokenyard-system", "pod": "t-tokenyard-operator-0"},
            ),
            job("not-run-here", exporter, {}, honor=True),
        ],
    }
    return yaml.safe_dump(cfg)


@dataclass
class Prometheus:
    """A Prometheus to start once its config (``cfg``) is written; stopped by the fixture."""

    url: str
    cfg: Path
    port: int
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            PROMETHEUS,
            f"--config.file={self.cfg}",
            f"--storage.tsdb.path={self.tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self.tmp / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/-/ready", 30, self.proc)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).is_file():
        pytest.skip(f"prometheus not found at {PROMETHEUS}: run scripts/install-prometheus.sh")
    port = free_port()
    prom = Prometheus(f"http://127.0.0.1:{port}", tmp_path / "prometheus.yml", port, tmp_path)
    yield prom
    if prom.proc is not None:
        stop(prom.proc)


# --- load ------------------------------------------------------------------------------


def generate_load(base: str, seconds: float) -> dict[str, int]:
    """Completions from three tenants on `chat` and one over its budget on `capped`."""
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(endpoint: str, tenant: str, stream: bool) -> None:
        with httpx.Client(base_url=f"http://{base}", timeout=120) as c:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                body = {
                    "model": endpoint,
                    "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
                    "max_tokens": 8,
                    "stream": stream,
                }
                r = c.post("/v1/chat/completions", json=body, headers={"X-Tenant": tenant})
                r.read()
                with lock:
                    key = f"{endpoint}:{r.status_code}"
                    statuses[key] = statuses.get(key, 0) + 1
                if r.status_code == 429:
                    time.sleep(0.2)  # a client backing off, as Retry-After asks

    jobs = [
        ("chat", "acme", False),
        ("chat", "globex", True),
        ("chat", "initech", False),
        ("capped", "acme", False),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(worker, *j) for j in jobs]:
            f.result()
    return statuses


# Easy to hard for the heuristic classifier: the hard ones go to the frontier target.
PROMPTS = [
    "hi there",
    "count to five please",
    "Summarize why the sky is blue in one sentence.",
    "Prove step by step that the sum of the first n odd numbers is n^2, then derive a "
    "closed form for the sum of squares and explain each step of the induction carefully.",
    "Implement a Python function that parses a CSV file with quoted fields, write unit "
    "tests for it, explain the algorithm and its complexity, and refactor it:\n```python\n"
    "def parse(path):\n    return [l.split(',') for l in open(path)]\n```",
]

# --- checks ----------------------------------------------------------------------------


def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert r["status"] == "success", f"{expr}: {r}"
    result: list[dict[str, Any]] = r["data"]["result"]
    return result


def series(url: str, metric: str) -> list[dict[str, str]]:
    r = httpx.get(
        f"{url}/api/v1/series",
        params={"match[]": f'{{__name__="{metric}"}}', "start": str(time.time() - 3600)},
        timeout=30,
    ).json()
    assert r["status"] == "success", r
    found: list[dict[str, str]] = r["data"]
    return found


def check_refs(url: str, expr: str, where: str) -> list[str]:
    """What ``expr`` refers to that does not exist; empty when all of it does."""
    problems: list[str] = []
    r = refs(expr)
    known: dict[str, list[dict[str, str]]] = {}
    for metric in r.metrics:
        known[metric] = series(url, metric)
        if not known[metric]:
            problems.append(f"{where}: unknown metric {metric}")
            continue
        jobs = {s["job"] for s in known[metric]}
        if metric not in NOT_RUN_HERE and jobs == {"not-run-here"}:
            problems.append(f"{where}: {metric} comes only from the exporter-shaped page")
        if metric in NOT_RUN_HERE and jobs != {"not-run-here"}:
            problems.append(f"{where}: {metric} is exported for real; drop it from NOT_RUN_HERE")
    for sel in r.selectors:
        for m in sel.matchers:
            have = known.get(sel.metric) or []
            if (
                not any(m.label in s for s in have)
                and m.op in ("=", "=~")
                and m.value not in ("", ".*")
            ):
                problems.append(f"{where}: {sel.metric} has no label {m.label}")
                continue
            if m.op == "=" and not any(s.get(m.label) == m.value for s in have):
                problems.append(f'{where}: no {sel.metric}{{{m.label}="{m.value}"}}')
            if m.op == "=~" and not any(re.fullmatch(m.value, s.get(m.label, "")) for s in have):
                problems.append(f'{where}: no {sel.metric}{{{m.label}=~"{m.value}"}}')
    for g in r.groupings:
        for label in g.labels:
            if not any(label in s for metric in g.metrics for s in known.get(metric, [])):
                problems.append(
                    f"{where}: `{g.keyword} ({label})` but no series of {g.metrics} has it"
                )
    return problems


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(where, expression, legend) of every dashboard query and variable."""
    out = []
    for cm in [
        d
        for d in helm_template("--set", "monitoring.dashboards.enabled=true")
        if d["kind"] == "ConfigMap"
    ]:
        for key, text in cm["data"].items():
            dash = json.loads(text)
            for var in dash["templating"]["list"]:
                if var["type"] == "query":
                    out.append((f"{key} variable {var['name']}", var["query"], ""))
            for p in dash["panels"]:
                for t in p["targets"]:
                    out.append(
                        (f"{key} panel {p['title']!r} {t['refId']}", t["expr"], t["legendFormat"])
                    )
    return out


def test_every_rule_and_panel_reads_metrics_that_exist(
    router: Router, vllm: str, exporter: str, prometheus: Prometheus, tmp_path: Path
) -> None:
    url, cfg = prometheus.url, prometheus.cfg
    (rule,) = [
        d
        for d in helm_template("--set", "monitoring.prometheusRule.enabled=true")
        if d["kind"] == "PrometheusRule"
    ]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    autoscaler_port, operator_port = free_port(), free_port()
    token_file = tmp_path / "router-admin-token"
    token_file.write_text(ADMIN_TOKEN)
    # Without the token the router's metrics are refused; Prometheus sends it.
    assert httpx.get(f"http://{router.base}/metrics").status_code == 401
    cfg.write_text(
        prometheus_config(
            rules_file,
            router=router.base,
            router_token=token_file,
            vllm=vllm,
            autoscaler=f"127.0.0.1:{autoscaler_port}",
            exporter=exporter,
            operator=f"127.0.0.1:{operator_port}",
        )
    )
    prometheus.start()

    with autoscaler(url, autoscaler_port), operator_metrics(operator_port):
        statuses = generate_load(router.base, 25)
        # Every counter's first increase is in the rate windows; the loop has decided.
        time.sleep(5)
        assert statuses.get("chat:200", 0) > 0 and statuses.get("capped:429", 0) > 0, statuses

        # Controls: the checks tell an unknown metric, a missing label and an unmatched
        # value from a metric that exists with the value 0.
        assert check_refs(url, "sum(rate(tokenyard_no_such_total[1m]))", "c")
        assert check_refs(url, "sum by (no_such_label) (tokenyard_requests_total)", "c")
        assert check_refs(url, 'tokenyard_rejections_total{reason="no_such"}', "c")
        zero = 'max by (namespace, model) (tokenyard_autoscaler_capped{reason="BudgetCapped"})'
        assert not check_refs(url, zero, "c")
        assert [float(r["value"][1]) for r in query(url, zero)] == [0.0]

        problems: list[str] = []
        # The alerts: what they read exists, and Prometheus evaluates them cleanly.
        alerts = [(r["alert"], r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]
        assert len(alerts) == 9
        for name, expr in alerts:
            problems += check_refs(url, expr, f"alert {name}")
            query(url, expr)  # evaluates without an error
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        evaluated = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(evaluated) == {n for n, _ in alerts}
        for name, r in evaluated.items():
            assert r["health"] == "ok", f"{name}: {r['health']} {r.get('lastError')}"

        # The dashboards: what they read exists, and every query answers.
        targets = dashboard_targets()
        assert len(targets) > 20
        for where, raw, legend in targets:
            expr = substitute(raw)
            if where.endswith("variable namespace"):
                m = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)
                assert m, expr
                if not any(m.group(2) in s for s in series(url, m.group(1))):
                    problems.append(f"{where}: no {m.group(1)} with label {m.group(2)}")
                continue
            problems += check_refs(url, expr, where)
            result = query(url, expr)
            if not result and not ends_in_filter(expr):
                problems.append(f"{where}: no answer from {expr}")
            for label in re.findall(r"\{\{(\w+)\}\}", legend):
                if result and not all(label in s["metric"] for s in result):
                    problems.append(f"{where}: legend names {label}, not in the answer")
        assert not problems, "\n".join(problems)

        # The rules see what happened: the capped endpoint's tenant is over its budget.
        firing = httpx.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        over = [a for a in firing if a["labels"]["alertname"] == "TokenyardTenantBudgetExhausted"]
        assert {(a["labels"]["endpoint"], a["labels"]["tenant"]) for a in over} >= {
            ("capped", "acme")
        }
        assert all(a["labels"]["namespace"] == NS for a in over)
    # `tokenyard report` on this run's audit log: every plot drawn, the numbers the log's.
    lines = router.audit.read_text().splitlines()
    assert len(lines) >= sum(statuses.values())
    keep = os.environ.get("TOKENYARD_KEEP_AUDIT")
    if keep:  # how tests/unit/accounting/data/audit-real-run.jsonl was made
        shutil.copy(router.audit, keep)
    page = tmp_path / "report.html"
    from tokenyard.cli import main as cli

    assert cli(["report", str(router.audit), "-o", str(page)]) == 0
    text = page.read_text()
    for key in (
        "cost-vs-strongest",
        "spend-tenant",
        "spend-model",
        "share",
        "fallbacks",
        "difficulty",
    ):
        figure = text.split(f'data-plot="{key}"', 1)[1].split("</figure>", 1)[0]
        assert 'class="mark"' in figure, key
    records = [json.loads(x) for x in lines]
    spent = sum(r["cost_usd"] for r in records if r["baseline_target"])
    assert f"Spent <b>${spent:,.2f}</b>" in text or f"Spent <b>${spent:.2e}</b>" in text
