"""Latency the tokenyard router adds over calling a backend directly, and its top rate.

Run: ``.venv/bin/python benchmarks/router_overhead.py [--rounds 30] [--litellm-bin PATH]``

One run starts, side by side, against the same backend that answers instantly (a tiny
OpenAI-compatible starlette server on 127.0.0.1, in its own process):
  * direct:        client -> backend
  * Ray Serve, one local cluster per ingress (each in its own process), each with the
    tokenyard router (one External target = the backend) and a trivial deployment (the
    floor, which calls nothing):
      - ``proxy``:   client -> Serve's Python proxy -> actor call -> Router replica
      - ``haproxy``: client -> HAProxy -> the Router replica's own HTTP server
        (Serve's HAProxy mode, spec.router.ingress: HAProxy)
      - ``direct``:  client -> the Router replica's own port (direct ingress, no
        load balancer at all: the lower bound of the HAProxy path; the port is
        allocated per replica, so it is no stable address for a Service)
  * litellm:       client -> LiteLLM proxy -> backend (skipped if `litellm` is not
    installed; ``pip install 'litellm[proxy]'`` in its own virtualenv, then pass
    ``--litellm-bin``)

The machine this runs on is usually shared and noisy, so the systems are never measured
one after the other: each round sends a short burst of sequential requests to every
system in a rotating order, and every ratio (added latency over LiteLLM's added latency,
rate over LiteLLM's rate) is taken within one round. The report is the median and the
interquartile range of the per-round ratios, and each bar of issue 14 as met or not:
added p50 <= 0.5x LiteLLM's, added p99 <= 0.75x LiteLLM's, top rate >= 2x LiteLLM's.
A streaming row gives added time to first token and added inter-token latency over the
backend called directly, for a 256-token stream the backend paces at ``--token-ms``.
All loops are bounded; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ANSWER = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,'
    b'"total_tokens":4}}'
)
STREAM_TOKENS = 256
INGRESSES = ("proxy", "haproxy")
# Variants one can add with --ingress, for comparison only: Serve's own throughput switch
# on top of HAProxy (user code and the handle router on the replica's main event loop,
# interdeployment gRPC, GC frozen after start; see ray/serve/_private/constants.py).
VARIANTS = {"haproxy-tp": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}

LITELLM_KEY = "sk-" + secrets.token_hex(32)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chunk(i: int, content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    obj = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def serve_backend(port: int, token_ms: float) -> None:
    """The instant backend: a fixed chat completion for any POST; with ``"stream": true``,
    STREAM_TOKENS chunks paced ``token_ms`` apart (a fast model), then usage and [DONE]."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body())
        if not body.get("stream"):
            return Response(ANSWER, media_type="application/json")

        async def events() -> Any:
            for i in range(STREAM_TOKENS):
                # Distinct tokens: LiteLLM cuts a stream that repeats one chunk 100 times.
                yield _chunk(i, f"t{i} ")
                await asyncio.sleep(token_ms / 1000)
            yield _chunk(STREAM_TOKENS, None, "length")
            usage = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "bench",
                "choices": [],
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": STREAM_TOKENS,
                    "total_tokens": STREAM_TOKENS + 3,
                },
            }
            yield b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(_: Request) -> Response:
        return Response(b"ok")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/health", health),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_http(
    url: str, timeout_s: float = 120.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout_s}s")


@dataclass
class System:
    """One thing the client calls: a name, a chat-completions URL and its headers."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    streams: bool = True  # the floor answers one fixed body, it does not stream


@dataclass
class Samples:
    """Per-round figures of one system."""

    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


async def _burst(c: httpx.AsyncClient, s: System, n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        r = await c.post(s.url, json=BODY, headers=s.headers)
        out.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"{s.name}: HTTP {r.status_code}: {r.text[:200]}")
    return out


async def latency_rounds(
    systems: list[System], rounds: int, per_round: int, out: dict[str, Samples]
) -> None:
    """Each round: ``per_round`` sequential requests to every system, order rotated."""
    clients = {s.name: httpx.AsyncClient(timeout=30) for s in systems}
    try:
        for s in systems:  # warm-up: connections, code paths, Serve's first-call setup
            await _burst(clients[s.name], s, 30)
        for r in range(rounds):
            k = r % len(systems)
            for s in systems[k:] + systems[:k]:
                lat = await _burst(clients[s.name], s, per_round)
                out[s.name].p50.append(statistics.median(lat) * 1000)
                out[s.name].p99.append(_pct(lat, 0.99) * 1000)
            if (r + 1) % 5 == 0:
                print(f"  latency round {r + 1}/{rounds} done", flush=True)
    finally:
        for c in clients.values():
            await c.aclose()


async def _rate(s: System, concurrency: int, total: int) -> tuple[float, int]:
    """Closed loop: ``concurrency`` workers share ``total`` requests; (req/s, errors)."""
    errors = 0
    left = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:

        async def worker() -> None:
            nonlocal errors, left
            while left > 0:
                left -= 1
                try:
                    r = await c.post(s.url, json=BODY, headers=s.headers)
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(min(concurrency, 4))))  # connect
        left = total
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t
    return total / elapsed, errors


async def rate_rounds(
    systems: list[System], rounds: int, levels: list[int], out: dict[str, Samples]
) -> None:
    """Each round: every system at every concurrency level (order rotated); the round's
    top rate of a system is its best error-free level."""
    for r in range(rounds):
        k = r % len(systems)
        for s in systems[k:] + systems[:k]:
            best = 0.0
            for conc in levels:
                rps, errors = await _rate(s, conc, max(150, conc * 6))
                if errors == 0:
                    best = max(best, rps)
            out[s.name].rps.append(best)
        line = ", ".join(f"{s.name} {out[s.name].rps[-1]:.0f}" for s in systems)
        print(f"  rate round {r + 1}/{rounds}: {line}", flush=True)


async def _one_stream(c: httpx.AsyncClient, s: System) -> tuple[float, float]:
    """(time to first token, mean inter-token gap) in ms of one 256-token stream."""
    body = {**BODY, "stream": True, "max_tokens": STREAM_TOKENS}
    t0 = time.perf_counter()
    stamps: list[float] = []
    async with c.stream("POST", s.url, json=body, headers=s.headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{s.name}: stream HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if line.startswith("data:") and '"content"' in line:
                stamps.append(time.perf_counter())
    if len(stamps) < STREAM_TOKENS:
        raise RuntimeError(f"{s.name}: stream ended after {len(stamps)} tokens")
    gaps = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return (stamps[0] - t0) * 1000, gaps * 1000


async def stream_rounds(
    systems: list[System], rounds: int, per_round: int, out: dict[str, Samples]
) -> None:
    streaming = [s for s in systems if s.streams]
    clients = {s.name: httpx.AsyncClient(timeout=60) for s in streaming}
    try:
        for s in streaming:
            await _one_stream(clients[s.name], s)
        for r in range(rounds):
            k = r % len(streaming)
            for s in streaming[k:] + streaming[:k]:
                got = [await _one_stream(clients[s.name], s) for _ in range(per_round)]
                out[s.name].ttft.append(statistics.median(g[0] for g in got))
                out[s.name].itl.append(statistics.median(g[1] for g in got))
    finally:
        for c in clients.values():
            await c.aclose()


def bench_config(backend_url: str) -> Any:
    """A router config with one External target (the backend) behind endpoint "bench"."""
    from tokenyard.api.policy import RoutingPolicySpec
    from tokenyard.contract import (
        CatalogueEntry,
        ExternalEndpoint,
        PolicyEntry,
        RouterConfig,
    )

    spec = RoutingPolicySpec.model_validate(
        {
            "pool": "bench",
            "targets": [{"model": "backend"}],
            "strategy": "Ordered",
            "egress": {"defaultDataClass": "public"},
        }
    )
    cfg = RouterConfig(
        pool="bench",
        namespace="bench",
        models=[
            CatalogueEntry(
                name="backend",
                servedModelName="backend",
                kind="External",
                quality=1.0,
                inputPer1M=1.0,
                outputPer1M=2.0,
                dataClasses=["public"],
                external=ExternalEndpoint(baseURL=backend_url, providerModel="bench"),
            )
        ],
        policies=[PolicyEntry(name="bench", namespace="bench", endpoint="bench", spec=spec.dump())],
    )
    return cfg


def core_latency(n: int) -> tuple[float, float]:
    """p50/p99 ms of the router's own logic: RouterCore in process, backend faked in memory."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tokenyard.accounting.audit import AuditLog
    from tokenyard.accounting.ledger_actor import LedgerClient
    from tokenyard.contract import RouterAppArgs
    from tokenyard.serving.providers import ProviderClient
    from tokenyard.serving.router import RouterCore

    state = Path(tempfile.mkdtemp(prefix="tokenyard-bench-core-"))
    fake = httpx.MockTransport(lambda r: httpx.Response(200, content=ANSWER))

    async def run() -> list[float]:
        core = RouterCore(
            RouterAppArgs(pool="bench", namespace="bench"),
            ledger=LedgerClient(None),
            provider=ProviderClient(transport=fake),
            audit=AuditLog(str(state / "audit.jsonl")),
            env={},
            watch_apps=False,
        )
        core.apply_config(bench_config("http://backend.invalid/v1"))
        app = Starlette(routes=[Route("/{path:path}", core.handle, methods=["GET", "POST"])])
        out: list[float] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            for i in range(n + 50):
                t = time.perf_counter()
                r = await c.post("/v1/chat/completions", json=BODY)
                if i >= 50:
                    out.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        await core.aclose()
        return sorted(out)

    # Audit lines still get written (their cost counts), just not onto this terminal.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        lat = asyncio.run(run())
    return statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000


def _floor_app() -> Any:
    """Ray Serve's own floor: a deployment that answers at once, calling nothing."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0.1})
    class Floor:
        async def __call__(self, request: Request) -> Response:
            await request.body()
            return Response(ANSWER, media_type="application/json")

    return Floor.bind()  # type: ignore[attr-defined]


def _replica_port(app: str) -> int | None:
    """The HTTP port of an app's ingress replica (direct ingress), from Serve's controller."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    for _ in range(60):
        groups = ray.get(controller.get_target_groups.remote(app, True))
        for g in groups:
            if str(getattr(g, "protocol", "")).upper().endswith("HTTP") and g.targets:
                return int(g.targets[0].port)
        time.sleep(0.5)
    return None


def serve_cluster(ingress: str, port: int, backend_url: str, info: Path) -> None:
    """One local Ray cluster with the router and the floor behind one ingress; writes the
    URLs to ``info`` and serves until SIGTERM. Runs in its own process: Serve reads its
    ingress flags once per cluster, so each ingress needs its own cluster."""
    from tokenyard.contract import INGRESS_HAPROXY, INGRESS_PROXY, RouterAppArgs
    from tokenyard.serving.local import ingress_process_env, stop_haproxy

    state = Path(tempfile.mkdtemp(prefix=f"tokenyard-bench-{ingress}-"))
    mode = INGRESS_HAPROXY if ingress.startswith("haproxy") else INGRESS_PROXY
    ingress_vars = ingress_process_env(mode)
    os.environ.update(ingress_vars | VARIANTS.get(ingress, {}))

    import ray
    from ray import serve

    from tokenyard.serving.router_app import build_app_with_config

    cfg = bench_config(backend_url)
    args = RouterAppArgs(
        pool="bench",
        namespace="bench",
        ledgerPath=str(state / "ledger.json"),
        auditPath=str(state / "audit.jsonl"),
    )
    stop = False

    def _stop(_s: int, _f: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        namespace=f"tokenyard-bench-{ingress}",
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app_with_config(args, cfg), name="tokenyard-router", route_prefix="/")
        serve.run(_floor_app(), name="serve-floor", route_prefix="/floor")
        root = f"http://127.0.0.1:{port}"
        urls = {"tokenyard": f"{root}/v1/chat/completions", "floor": f"{root}/floor"}
        if ingress.startswith("haproxy"):
            rport = _replica_port("tokenyard-router")
            if rport is not None:
                urls["replica"] = f"http://127.0.0.1:{rport}/v1/chat/completions"
        info.write_text(json.dumps(urls))
        while not stop:
            time.sleep(0.2)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        stop_haproxy(ingress_vars)


def start_litellm(bin_path: str, backend_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cfg = log.with_suffix(".yaml")
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: {backend_url}\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    # LiteLLM refuses to start without a master key; clients send it as a bearer token.
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": LITELLM_KEY}
    return subprocess.Popen(
        [
            bin_path,
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _spread(xs: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile)."""
    if len(xs) < 2:
        return (xs[0], xs[0], xs[0]) if xs else (float("nan"),) * 3
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def _fmt(xs: list[float], digits: int = 2) -> str:
    m, lo, hi = _spread(xs)
    return f"{m:.{digits}f} [IQR {lo:.{digits}f}..{hi:.{digits}f}]"


def report(out: dict[str, Samples], names: list[str], floors: dict[str, str], rounds: int) -> None:
    """Per-round added latency and ratios; medians and IQRs over rounds; the bars."""
    d = out["direct"]

    def added(name: str, attr: str) -> list[float]:
        return [a - b for a, b in zip(getattr(out[name], attr), getattr(d, attr), strict=True)]

    print()
    print(f"per-round figures over {rounds} rounds: median [interquartile range]")
    print(f"{'system':<18} {'p50 ms':>24} {'added p50 ms':>24} {'added p99 ms':>24}")
    for n in names:
        s = out[n]
        p50 = _fmt(s.p50)
        a50 = _fmt(added(n, "p50")) if n != "direct" else "-"
        a99 = _fmt(added(n, "p99")) if n != "direct" else "-"
        print(f"{n:<18} {p50:>24} {a50:>24} {a99:>24}")
    if any(out[n].rps for n in names):
        print()
        print(f"{'system':<18} {'top rate req/s':>26}")
        for n in names:
            if out[n].rps:
                print(f"{n:<18} {_fmt(out[n].rps, 0):>26}")
    if "litellm" not in out or not out["litellm"].p50:
        print("\nno LiteLLM in this run: no ratios, no bars")
        return
    ll50, ll99 = added("litellm", "p50"), added("litellm", "p99")
    print()
    print("ratios to LiteLLM, taken per round (median [IQR]); bar: met / NOT met")
    for n in names:
        if not n.startswith("tokenyard"):
            continue
        r50 = [a / b for a, b in zip(added(n, "p50"), ll50, strict=True)]
        r99 = [a / b for a, b in zip(added(n, "p99"), ll99, strict=True)]
        print(f"  {n}:")
        _bar("added p50 / LiteLLM's", r50, "<=", 0.5)
        _bar("added p99 / LiteLLM's", r99, "<=", 0.75)
        if out[n].rps and out["litellm"].rps:
            rr = [a / b for a, b in zip(out[n].rps, out["litellm"].rps, strict=True)]
            _bar("top rate / LiteLLM's", rr, ">=", 2.0)
        floor = floors.get(n)
        if floor is not None:
            fr = [
                (a - b) / c
                for a, b, c in zip(added(n, "p50"), added(floor, "p50"), ll50, strict=True)
            ]
            print(f"    (router minus its Serve floor, p50, / LiteLLM's added p50: {_fmt(fr)})")
    if d.ttft:
        print()
        print(f"streaming, {STREAM_TOKENS} tokens: added over the backend called directly")
        print(f"{'system':<18} {'added TTFT ms':>26} {'added inter-token ms':>28}")
        for n in names:
            if n == "direct" or not out[n].ttft:
                continue
            print(f"{n:<18} {_fmt(added(n, 'ttft')):>26} {_fmt(added(n, 'itl'), 3):>28}")
        print(f"{'(direct)':<18} {'TTFT ' + _fmt(d.ttft):>26} {'gap ' + _fmt(d.itl, 3):>28}")


def _bar(label: str, ratios: list[float], op: str, bar: float) -> None:
    m, _lo, _hi = _spread(ratios)
    ok = m <= bar if op == "<=" else m >= bar
    verdict = "met" if ok else f"NOT met (by {abs(m - bar):.2f})"
    print(f"    {label:<24} {_fmt(ratios)}  bar {op} {bar}: {verdict}")


def _terminate(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="latency rounds")
    ap.add_argument("--per-round", type=int, default=100, help="sequential requests per round")
    ap.add_argument("--rate-rounds", type=int, default=5, help="top-rate rounds")
    ap.add_argument("--levels", default="16,64", help="concurrency levels for the rate test")
    ap.add_argument("--stream-rounds", type=int, default=8, help="streaming rounds")
    ap.add_argument("--token-ms", type=float, default=2.0, help="backend's gap between tokens")
    ap.add_argument("--ingress", default=",".join(INGRESSES), help="Serve ingresses to run")
    ap.add_argument("--litellm-bin", default=None, help="the `litellm` proxy executable")
    ap.add_argument("--serve-backend", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve-cluster", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cluster-args", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_backend is not None:
        serve_backend(a.serve_backend, a.token_ms)
        return 0
    if a.serve_cluster is not None:
        port, backend_url, info = json.loads(a.cluster_args)
        serve_cluster(a.serve_cluster, port, backend_url, Path(info))
        return 0
    levels = [int(x) for x in a.levels.split(",")]
    ingresses = [x for x in a.ingress.split(",") if x]
    core50, core99 = core_latency(500)
    print(f"router logic alone (in process, no HTTP): p50 {core50:.2f} ms, p99 {core99:.2f} ms")

    bport = free_port()
    me = [sys.executable, __file__]
    backend = subprocess.Popen(
        [*me, "--serve-backend", str(bport), "--token-ms", str(a.token_ms)],
        start_new_session=True,
    )
    procs: list[subprocess.Popen[bytes]] = [backend]
    systems: list[System] = []
    floors: dict[str, str] = {}
    try:
        wait_http(f"http://127.0.0.1:{bport}/health", proc=backend)
        backend_v1 = f"http://127.0.0.1:{bport}/v1"
        systems.append(System("direct", f"{backend_v1}/chat/completions"))
        tmp = Path(tempfile.mkdtemp(prefix="tokenyard-bench-"))
        pending: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        for ing in ingresses:  # one after the other: two Ray starts at once on 2 cores time out
            info = tmp / f"{ing}.json"
            cargs = json.dumps([free_port(), backend_v1, str(info)])
            p = subprocess.Popen(
                [*me, "--serve-cluster", ing, "--cluster-args", cargs],
                stdout=(tmp / f"{ing}.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(p)
            print(f"Ray Serve with the router, ingress {ing} ...", flush=True)
            deadline = time.monotonic() + 300
            while not info.exists():
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{ing} cluster failed; see {tmp / (ing + '.log')}")
                time.sleep(0.5)
            pending.append((ing, info, p))
        for ing, info, _p in pending:
            urls = json.loads(info.read_text())
            systems.append(System(f"floor-{ing}", urls["floor"], streams=False))
            systems.append(System(f"tokenyard-{ing}", urls["tokenyard"]))
            floors[f"tokenyard-{ing}"] = f"floor-{ing}"
            if "replica" in urls:
                # The same replica's own port (direct ingress): no load balancer at all.
                di = "tokenyard-direct" + ing.removeprefix("haproxy")
                systems.append(System(di, urls["replica"]))

        litellm = a.litellm_bin or shutil.which("litellm")
        if litellm is None:
            print(
                "litellm: skipped (not installed; pip install 'litellm[proxy]' in a "
                "virtualenv and pass --litellm-bin PATH)"
            )
        else:
            lport = free_port()
            proc = start_litellm(litellm, backend_v1, lport, tmp / "litellm.log")
            procs.append(proc)
            print(f"litellm proxy ({litellm}) ...", flush=True)
            wait_http(f"http://127.0.0.1:{lport}/health/liveliness", timeout_s=180, proc=proc)
            systems.append(
                System(
                    "litellm",
                    f"http://127.0.0.1:{lport}/v1/chat/completions",
                    {"authorization": f"Bearer {LITELLM_KEY}"},
                )
            )

        out = {s.name: Samples() for s in systems}
        names = [s.name for s in systems]
        load0 = os.getloadavg()
        t0 = time.monotonic()
        print(f"latency: {a.rounds} rounds x {a.per_round} requests per system ...", flush=True)
        asyncio.run(latency_rounds(systems, a.rounds, a.per_round, out))
        if a.rate_rounds > 0:
            print(f"top rate: {a.rate_rounds} rounds at concurrency {levels} ...", flush=True)
            asyncio.run(rate_rounds(systems, a.rate_rounds, levels, out))
        if a.stream_rounds > 0:
            print(f"streaming: {a.stream_rounds} rounds of 3 streams ...", flush=True)
            asyncio.run(stream_rounds(systems, a.stream_rounds, 3, out))
        load1 = os.getloadavg()
        print(
            f"measured in {time.monotonic() - t0:.0f} s; load average (1/5/15 min) "
            f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} before, "
            f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} after, on {os.cpu_count()} CPUs"
        )
    finally:
        for p in reversed(procs):
            _terminate(p)

    report(out, names, floors, a.rounds)
    print(f"\nrouter logic alone (in process, no HTTP): p50 {core50:.2f} ms, p99 {core99:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
