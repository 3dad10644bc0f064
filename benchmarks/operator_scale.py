"""How the operator scales: N ModelDeployments over several pools, its memory and the
time to converge.

For each N (100, 1,000 and 5,000 by default) this starts a fresh API server (the kmock
emulator, in this process) and the real operator as a child process (`tokenyard
operator`, logging in through a kubeconfig, exactly as in a cluster), creates N models
spread over the pools (10 a pool up to 20 pools, then 100 a pool: 1,000 over 20, 5,000
over 50) with one RoutingPolicy per pool, and measures:

- converge: seconds from the first create until every pool's RayService lists every
  one of its models (and the router), read from the API server;
- requests: API requests the operator made in that time (kmock records each one);
- idle and peak RSS: the operator's resident memory once started and its high-water
  mark (VmHWM), and what 1,000 models add;
- restart: a second operator started against the N objects (it lists them all in
  pages and re-reconciles every pool): its peak memory and when it went quiet.

The objects are shaped as a real API server returns them after `kubectl apply`
(last-applied-configuration, managedFields, uid, resourceVersion, generation, every
default filled in): kmock adds none of these, and they made the operator's memory on a
real server several times kmock's. The bars of the issue are printed as met or not.

With KUBECONFIG set, the same runs against that cluster instead (tokenyard's CRDs are
applied, a namespace per N is deleted afterwards; request counts are not observable there
and show as n/a).

Usage: python benchmarks/operator_scale.py [--sizes 100,1000,5000] [--timeout 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GROUP = "tokenyard.dev/v1alpha1"
MAX_POOLS = 20
PER_POOL = 10


@dataclass
class Result:
    models: int
    pools: int
    converge_s: float | None
    """Seconds from the first create until every RayService lists all its models."""
    requests: int | None
    """The operator's API requests until then."""
    peak_rss_mb: float | None
    rayservice_writes: int | None
    """RayService creates and patches until convergence (a pool renders a few times
    while its models arrive; the spec-hash keeps it from writing more)."""
    settle_s: float | None = None
    """Seconds until the operator went quiet (every status written)."""
    settle_requests: int | None = None
    """The operator's API requests until quiet: statuses and kopf's own bookkeeping."""
    cpu_s: float | None = None
    """CPU seconds the operator process used in all."""
    idle_rss_mb: float | None = None
    """The operator's resident memory once started, before the first object."""
    restart_peak_rss_mb: float | None = None
    """Peak memory of a second operator started against the N existing objects (it
    lists them all and re-reconciles every pool)."""
    restart_quiet_s: float | None = None
    """Seconds until that second operator went quiet."""
    created_s: float | None = None
    """Seconds until the last create returned: on a busy machine the API server itself
    takes most of the convergence time, and converge - created is the operator's lag."""

    @property
    def rss_per_1000_mb(self) -> float | None:
        """What 1,000 models add to the operator's peak memory."""
        if self.peak_rss_mb is None or self.idle_rss_mb is None or not self.models:
            return None
        return (self.peak_rss_mb - self.idle_rss_mb) * 1000 / self.models


# The bars (issue: an operator that stays small): (models, pools) -> peak RSS limit in MB;
# convergence within CONVERGE_BAR_S at 1,000 models.
RSS_BARS = {(1000, 20): 150.0, (5000, 50): 250.0}
CONVERGE_BAR = (1000, 30.0)


def pool_count(n: int) -> int:
    """N/10 pools of 10 up to 20 pools, then 100 models a pool: 1,000 models over 20
    pools and 5,000 over 50, the sizes the memory bars are set for."""
    return max(1, min(math.ceil(n / PER_POOL), max(MAX_POOLS, math.ceil(n / 100))))


def layout(n: int) -> list[tuple[str, list[str]]]:
    """Pools and the models in each (see pool_count)."""
    pools = pool_count(n)
    out: list[tuple[str, list[str]]] = [(f"pool-{p:02d}", []) for p in range(pools)]
    for i in range(n):
        out[i % pools][1].append(f"model-{i:04d}")
    return out


def manifests(ns: str, n: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for pool, models in layout(n):
        docs.append(
            {
                "apiVersion": GROUP,
                "kind": "ServingPool",
                "metadata": {"name": pool, "namespace": ns},
                "spec": {
                    "accelerators": [
                        {"name": "l4", "gpusPerNode": 1, "maxGPUs": 1000, "hourlyCostPerGPU": 0.8}
                    ]
                },
            }
        )
        for m in models:
            docs.append(
                {
                    "apiVersion": GROUP,
                    "kind": "ModelDeployment",
                    "metadata": {"name": m, "namespace": ns},
                    "spec": {
                        "pool": pool,
                        "tier": "economy",
                        "inCluster": {"source": f"hf://org/{m}", "accelerator": "l4"},
                        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
                    },
                }
            )
        docs.append(
            {
                "apiVersion": GROUP,
                "kind": "RoutingPolicy",
                "metadata": {"name": f"{pool}-chat", "namespace": ns},
                "spec": {"pool": pool, "targets": [{"model": m} for m in models[:3]]},
            }
        )
    return docs


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_T0 = "2026-01-01T00:00:00Z"


def fields_v1(value: Any) -> Any:
    """The FieldsV1 set a real API server records in managedFields for a JSON value
    (maps field by field, lists of named maps by key, other lists whole)."""
    if isinstance(value, dict):
        return {".": {}, **{f"f:{k}": fields_v1(v) for k, v in value.items()}}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        key = next((k for k in ("name", "type", "model") if k in value[0]), None)
        if key is not None:
            return {
                ".": {},
                **{f'k:{{"{key}":{json.dumps(v[key])}}}': fields_v1(v) for v in value if key in v},
            }
    return {}


# What the operator and autoscaler write into a model's status: managedFields records it.
_MODEL_STATUS = {
    "observedGeneration": 1,
    "model": "hf://org/model",
    "replicas": 1,
    "readyReplicas": 1,
    "selector": "tokenyard.dev/model=model",
    "costPer1MTokens": 0.09,
    "costSource": "Nominal",
    "autoscaling": {"desiredReplicas": 1, "reason": "Steady", "lastScaleTime": _T0},
    "conditions": [
        {"type": t, "status": "True", "reason": "Running", "message": "serving",
         "lastTransitionTime": _T0, "observedGeneration": 1}
        for t in ("Ready", "Capped")
    ],
}  # fmt: skip


def server_defaulted_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The spec as the API server stores it: every CRD default filled in (the CRD
    defaults are the API models' defaults, which tests/unit/api prove)."""
    from tokenyard.api.manifests import KINDS

    obj = KINDS[doc["kind"]].model_validate(doc)
    spec: dict[str, Any] = obj.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return spec


def as_applied(doc: dict[str, Any], i: int, *, server_fields: bool = True) -> dict[str, Any]:
    """``doc`` shaped as a real API server holds it after `kubectl apply` and a few
    status writes: the last-applied-configuration annotation (the whole object again, as
    kubectl writes it), and with ``server_fields`` what the server itself adds (uid,
    resourceVersion, generation, creationTimestamp, managedFields for kubectl and for
    the status writers). kmock adds none of these, so the benchmark does; a real server
    assigns its own, so for it ``server_fields`` is off. Objects of this shape are what
    made the operator's memory on a real server about 4x kmock's."""
    out = json.loads(json.dumps(doc))
    if server_fields:
        out["spec"] = server_defaulted_spec(doc)
    meta = out["metadata"]
    meta["annotations"] = {LAST_APPLIED: json.dumps(doc, separators=(",", ":")) + "\n"}
    if not server_fields:
        return out
    meta["uid"] = f"{i:08x}-0000-4000-8000-{i:012x}"
    meta["resourceVersion"] = str(10_000 + i)
    meta["generation"] = 1
    meta["creationTimestamp"] = _T0
    kubectl = {
        "f:metadata": {"f:annotations": {".": {}, f"f:{LAST_APPLIED}": {}}},
        "f:spec": fields_v1(doc["spec"]),
    }
    meta["managedFields"] = [
        {
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "apiVersion": GROUP,
            "time": _T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": kubectl,
        },
        *(
            {
                "manager": manager,
                "operation": "Update",
                "apiVersion": GROUP,
                "time": _T0,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": fields_v1(_MODEL_STATUS)},
                "subresource": "status",
            }
            for manager in ("kopf", "tokenyard-autoscaler")
        ),
    ]
    return out


def plural(kind: str) -> str:
    return {
        "ServingPool": "servingpools",
        "ModelDeployment": "modeldeployments",
        "RoutingPolicy": "routingpolicies",
    }[kind]


def expected_apps(n: int) -> dict[str, set[str]]:
    return {
        pool: {f"model-{m}" for m in models} | {"tokenyard-router"} for pool, models in layout(n)
    }


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_APPS: dict[str, set[str]] = {}


def apps_of(rs: dict[str, Any] | None) -> set[str]:
    """Application names in a RayService's serveConfigV2, parsed once per spec-hash (the
    poll loop shares the emulator's event loop, so it must stay cheap)."""
    if not rs:
        return set()
    key = (rs.get("metadata", {}).get("annotations") or {}).get("tokenyard.dev/spec-hash", "")
    if key not in _APPS:
        text = rs.get("spec", {}).get("serveConfigV2") or ""
        cfg = yaml.load(text, Loader=_LOADER) or {}
        _APPS[key] = {a["name"] for a in cfg.get("applications", [])}
    return _APPS[key]


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:
        return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def operator_process(kubeconfig: str, log_path: Path) -> Any:
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "TOKENYARD_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "TOKENYARD_LOG_FORMAT": "text",
        "TOKENYARD_OPERATOR__HEALTH_PORT": str(free_port()),
        "TOKENYARD_OPERATOR__RESYNC_INTERVAL_S": "30",
        "PYTHONWARNINGS": "ignore",
    }
    with log_path.open("w") as log:
        prefix = os.environ.get("BENCH_OPERATOR_PREFIX", "").split()
        proc = subprocess.Popen(
            [sys.executable, *prefix, "-m", "tokenyard.cli", "operator"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def restart_figures(
    kubeconfig: str, log_path: Path, limit_s: float, *, quiet_s: float = 3.0
) -> tuple[float | None, float | None]:
    """Start a fresh operator against the objects already there; (peak RSS in MB,
    seconds until its CPU use stopped growing for ``quiet_s``), None on timeout."""
    with operator_process(kubeconfig, log_path) as proc:
        t0 = time.monotonic()
        last_cpu, still_since = cpu_seconds(proc.pid) or 0.0, time.monotonic()
        while time.monotonic() - t0 < limit_s:
            time.sleep(0.5)
            cpu = cpu_seconds(proc.pid) or 0.0
            if cpu - last_cpu > 0.05:
                last_cpu, still_since = cpu, time.monotonic()
            elif time.monotonic() - still_since >= quiet_s:
                return peak_rss_mb(proc.pid), still_since - t0
        return peak_rss_mb(proc.pid), None


# --------------------------------------------------------------------------- kmock


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[Any]:
    import kmock

    speed_up_kmock()
    async with kmock.KubernetesEmulator() as k, kmock.Server(k):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            k.resources.load_bundled()
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        for p, kind, subs in (
            ("servingpools", "ServingPool", {"status"}),
            ("modeldeployments", "ModelDeployment", {"status", "scale"}),
            ("routingpolicies", "RoutingPolicy", {"status"}),
        ):
            k.resources[f"{GROUP}/{p}"] = kmock.ResourceInfo(
                kind=kind, namespaced=True, verbs=verbs, subresources=subs
            )
        k.resources["ray.io/v1/rayservices"] = kmock.ResourceInfo(
            kind="RayService", namespaced=True, verbs=verbs, subresources={"status"}
        )
        yield k


def kubeconfig_for(url: str, path: Path) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                "users": [{"name": "kmock", "user": {"token": "benchmark"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                "current-context": "kmock",
            }
        )
    )


def speed_up_kmock() -> None:
    """Make the emulator's request matching O(1) per request instead of O(requests).

    kmock decides which reaction serves a request by testing ``request in view``, which
    walks the whole request log through every filter: an emulated API server that is
    O(requests^2). At N=1000 the emulator, not the operator, would dominate the figures
    (the operator used ~5 s of CPU while kmock used the whole run). For a request known
    to be in the log (the one being served), membership in a chain of filters is just
    "every filter's criteria accept it", which is what this computes; anything else
    (slices, unions, exclusions) goes through kmock's own code.
    """
    from kmock._internal import dsl, rendering

    original = dsl.View.__contains__
    if getattr(original, "_tokenyard_fast", False):
        return

    def contains(self: Any, item: Any) -> bool:
        if not isinstance(item, rendering.Request):
            return bool(original(self, item))
        criteria = []
        node = self
        while True:
            kind = type(node)
            if kind is dsl.Filter:
                criteria.append(node.criteria)
                node = node._source
            elif kind in (dsl.Priority, dsl.Chained):
                node = node._source
            elif isinstance(node, dsl.Root):
                return all(c(item) for c in criteria)
            else:
                return bool(original(self, item))

    contains._tokenyard_fast = True  # type: ignore[attr-defined]
    dsl.View.__contains__ = contains  # type: ignore[method-assign]


class RequestLog:
    """Counts the emulator's requests: all, the operator's (kopf's user agent), and the
    operator's RayService writes; and which resources are being watched."""

    def __init__(self, k: Any) -> None:
        self.k = k
        self.seen = 0
        self.total = 0
        self.operator = 0
        self.operator_rayservice_writes = 0
        self.watched: set[str] = set()

    def drain(self) -> None:
        log: list[Any] = self.k._requests
        new, self.seen = log[self.seen :], len(log)
        for r in new:
            self.total += 1
            res = r.resource
            if res is not None and r.params.get("watch") == "true":
                self.watched.add(res.plural)
            if r.headers.get("User-Agent", "").startswith("kopf"):
                self.operator += 1
                if res is not None and res.plural == "rayservices" and str(r.method.value) != "GET":
                    self.operator_rayservice_writes += 1

    async def run(self) -> None:
        while True:
            self.drain()
            await asyncio.sleep(0.02)


async def run_kmock(n: int, limit_s: float, workdir: Path) -> Result:

    ns = "bench"
    async with emulator() as k:
        url = str(k.url).rstrip("/")
        kubeconfig_for(url, workdir / "kubeconfig")
        log = RequestLog(k)
        drainer = asyncio.create_task(log.run())
        try:
            with operator_process(
                str(workdir / "kubeconfig"), workdir / f"operator-{n}.log"
            ) as proc:
                result = await _measure(
                    k, url, ns, n, limit_s=limit_s, log=log, proc=proc, workdir=workdir
                )
            # The emulator serves from this event loop: the restart runs in a thread.
            peak, quiet = await asyncio.to_thread(
                restart_figures,
                str(workdir / "kubeconfig"),
                workdir / f"operator-{n}-restart.log",
                limit_s,
            )
            result.restart_peak_rss_mb, result.restart_quiet_s = peak, quiet
            return result
        finally:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer


async def _measure(
    k: Any,
    url: str,
    ns: str,
    n: int,
    *,
    limit_s: float,
    log: RequestLog,
    proc: Any,
    workdir: Path,
) -> Result:
    import aiohttp

    deadline = time.monotonic() + float(os.environ.get("BENCH_START_TIMEOUT_S", "60"))
    while not {"servingpools", "modeldeployments", "routingpolicies"} <= log.watched:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"operator did not start; see {workdir}/operator-{n}.log")
        await asyncio.sleep(0.05)

    await asyncio.sleep(1.0)  # kopf's first lists answered
    idle = peak_rss_mb(proc.pid, "VmRSS")
    docs = [as_applied(d, i) for i, d in enumerate(manifests(ns, n))]
    log.drain()
    before, before_rs = log.operator, log.operator_rayservice_writes
    t0 = time.monotonic()
    sem = asyncio.Semaphore(32)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": "bench"}) as s:

        async def create(doc: dict[str, Any]) -> None:
            path = f"{url}/apis/{GROUP}/namespaces/{ns}/{plural(doc['kind'])}"
            async with sem, s.post(path, json=doc) as r:
                assert r.status < 300, await r.text()

        await asyncio.gather(*(create(d) for d in docs))
    created = time.monotonic() - t0

    want = expected_apps(n)
    converge: float | None = None
    while time.monotonic() - t0 < limit_s:
        have = {}
        for (res, ons, name), obj in list(k.objects.items()):
            if res.plural == "rayservices" and ons == ns and not obj.deleted:
                have[name] = apps_of(obj.raw)
        if all(have.get(p) == apps for p, apps in want.items()):
            converge = time.monotonic() - t0
            break
        await asyncio.sleep(0.1)
    log.drain()
    requests = log.operator - before
    rs_writes = log.operator_rayservice_writes - before_rs
    # Then until the operator goes quiet (2 s without a request): every status written.
    settle: float | None = None
    last, quiet_since = log.operator, time.monotonic()
    while time.monotonic() - t0 < limit_s:
        await asyncio.sleep(0.1)
        log.drain()
        if log.operator != last:
            last, quiet_since = log.operator, time.monotonic()
        elif time.monotonic() - quiet_since >= 2.0:
            settle = quiet_since - t0
            break
    return Result(
        n,
        len(want),
        converge,
        requests,
        peak_rss_mb(proc.pid),
        rs_writes,
        settle,
        log.operator - before if settle is not None else None,
        cpu_seconds(proc.pid),
        idle,
        created_s=created,
    )


# --------------------------------------------------------------------------- real cluster


def ensure_crds(client: Any) -> None:
    """Server-side apply tokenyard's CRDs (the operator needs them before it starts) and
    wait until they are Established."""
    from tokenyard.api.crd import build_crds

    ext = client.ApiextensionsV1Api()
    for crd in build_crds():
        ext.patch_custom_resource_definition(
            crd["metadata"]["name"],
            crd,
            field_manager="tokenyard-bench",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    deadline = time.monotonic() + 60
    for crd in build_crds():
        while True:
            live = ext.read_custom_resource_definition(crd["metadata"]["name"])
            conds = {c.type: c.status for c in (live.status.conditions or [])}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {crd['metadata']['name']} not Established")
            time.sleep(0.5)


def run_cluster(n: int, timeout: float, workdir: Path) -> Result:
    from kubernetes import client, config

    config.load_kube_config()
    ensure_crds(client)
    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    earlier = {
        i.metadata.name
        for i in core.list_namespace().items
        if i.metadata.name.startswith("tokenyard-bench-")
    }
    wait_namespaces_gone(core, earlier)
    ns = f"tokenyard-bench-{n}-{int(time.time())}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        with operator_process(os.environ["KUBECONFIG"], workdir / f"operator-{n}.log") as proc:
            time.sleep(5)
            idle = peak_rss_mb(proc.pid, "VmRSS")
            t0 = time.monotonic()

            def create(item: tuple[int, dict[str, Any]]) -> None:
                i, d = item
                api.create_namespaced_custom_object(
                    "tokenyard.dev",
                    "v1alpha1",
                    ns,
                    plural(d["kind"]),
                    as_applied(d, i, server_fields=False),
                )

            # 16 at a time, as `kubectl apply` of a directory by several users would.
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, enumerate(manifests(ns, n))))
            created = time.monotonic() - t0
            want = expected_apps(n)
            converge = None
            while time.monotonic() - t0 < timeout:
                items = api.list_namespaced_custom_object("ray.io", "v1", ns, "rayservices")[
                    "items"
                ]
                have = {i["metadata"]["name"]: apps_of(i) for i in items}
                if all(have.get(p) == apps for p, apps in want.items()):
                    converge = time.monotonic() - t0
                    break
                time.sleep(0.5)
            result = Result(
                n,
                len(want),
                converge,
                None,
                peak_rss_mb(proc.pid),
                None,
                cpu_s=cpu_seconds(proc.pid),
                idle_rss_mb=idle,
                created_s=created,
            )
        peak, quiet = restart_figures(
            os.environ["KUBECONFIG"], workdir / f"operator-{n}-restart.log", timeout
        )
        result.restart_peak_rss_mb, result.restart_quiet_s = peak, quiet
        return result
    finally:
        core.delete_namespace(ns)
        # The next size's operator watches the whole cluster: it must not also see this
        # size's objects being deleted.
        wait_namespaces_gone(core, {ns})


def wait_namespaces_gone(core: Any, names: set[str], limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        left = {i.metadata.name for i in core.list_namespace().items} & names
        if not left:
            return
        time.sleep(2)
    raise RuntimeError(f"namespaces {sorted(names)} still there after {limit_s:.0f}s")


# --------------------------------------------------------------------------- main


def table(results: list[Result]) -> str:
    def fmt(v: Any, spec: str = "") -> str:
        return "n/a" if v is None else format(v, spec)

    rows = [
        (
            "models",
            "pools",
            "created (s)",
            "converge (s)",
            "API requests",
            "RayService writes",
            "settled (s)",
            "requests to settle",
            "operator CPU (s)",
            "idle RSS (MB)",
            "peak RSS (MB)",
            "MB per 1,000 models",
            "restart: peak RSS (MB)",
            "restart: quiet (s)",
        )
    ]
    rows += [
        (
            str(r.models),
            str(r.pools),
            fmt(r.created_s, ".2f"),
            fmt(r.converge_s, ".2f") if r.converge_s is not None else "timeout",
            fmt(r.requests),
            fmt(r.rayservice_writes),
            fmt(r.settle_s, ".2f"),
            fmt(r.settle_requests),
            fmt(r.cpu_s, ".1f"),
            fmt(r.idle_rss_mb, ".0f"),
            fmt(r.peak_rss_mb, ".0f"),
            fmt(r.rss_per_1000_mb, ".1f"),
            fmt(r.restart_peak_rss_mb, ".0f"),
            fmt(r.restart_quiet_s, ".1f"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bar_lines(results: list[Result]) -> list[str]:
    """The issue's bars, each as met or not, for the sizes that ran."""
    lines: list[str] = []
    for r in results:
        limit = RSS_BARS.get((r.models, r.pools))
        if limit is not None:
            for what, peak in (
                ("peak RSS", r.peak_rss_mb),
                ("after a restart", r.restart_peak_rss_mb),
            ):
                ok = peak is not None and peak < limit
                lines.append(
                    f"bar: {what} under {limit:.0f} MB with {r.models:,} models over "
                    f"{r.pools} pools: {'met' if ok else 'NOT met'} ({peak or 0:.0f} MB)"
                )
        if r.models == CONVERGE_BAR[0]:
            ok = r.converge_s is not None and r.converge_s < CONVERGE_BAR[1]
            got = "timeout" if r.converge_s is None else f"{r.converge_s:.1f} s"
            if r.converge_s is not None and r.created_s is not None:
                got += f"; the last create returned at {r.created_s:.1f} s"
            lines.append(
                f"bar: converge under {CONVERGE_BAR[1]:.0f} s with {r.models:,} models: "
                f"{'met' if ok else 'NOT met'} ({got})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tokenyard-bench-") as tmp:
        work = Path(tmp)
        for n in sizes:
            if os.environ.get("KUBECONFIG"):
                r = run_cluster(n, args.timeout, work)
            else:
                r = asyncio.run(run_kmock(n, args.timeout, work))
            results.append(r)
            print(f"N={n}: {asdict(r)}", file=sys.stderr, flush=True)
            if r.converge_s is None:
                print((work / f"operator-{n}.log").read_text()[-3000:], file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table(results))
        print("\n".join(bar_lines(results)))
    return 0 if all(r.converge_s is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
