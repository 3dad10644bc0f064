"""Latency the tokenyard router adds over calling a backend directly, and its top rate.

Run: ``.venv/bin/python benchmarks/router_overhead.py [--requests 500] [--litellm-bin PATH]``

One run measures side by side, against the same backend that answers instantly (a tiny
OpenAI-compatible starlette server on 127.0.0.1, in its own process):
  * direct:    client -> backend
  * tokenyard: client -> Ray Serve proxy -> Router replica -> backend (an External target)
  * litellm:   client -> LiteLLM proxy -> backend (skipped if `litellm` is not installed;
               ``pip install 'litellm[proxy]'``, ideally in its own virtualenv, then pass
               ``--litellm-bin``)
Sequential requests give p50/p99 latency; closed-loop runs at rising concurrency give the
highest request rate served without errors. All loops are bounded; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


LITELLM_KEY = "sk-" + secrets.token_hex(32)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_backend(port: int) -> None:
    """The instant backend: a fixed chat completion for any POST."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def completions(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

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
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    max_rps: float
    at_concurrency: int
    errors_at_max: int


async def _latencies(url: str, n: int, headers: dict[str, str]) -> list[float]:
    out: list[float] = []
    async with httpx.AsyncClient(timeout=30) as c:
        for _ in range(max(20, n // 10)):  # warm-up: connections, code paths
            await c.post(url, json=BODY, headers=headers)
        for _ in range(n):
            t = time.perf_counter()
            r = await c.post(url, json=BODY, headers=headers)
            out.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
    return out


async def _rate(
    url: str, concurrency: int, total: int, headers: dict[str, str]
) -> tuple[float, int]:
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
                    r = await c.post(url, json=BODY, headers=headers)
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t
    return total / elapsed, errors


def measure(name: str, url: str, n: int, levels: list[int], headers: dict[str, str]) -> Result:
    lat = sorted(asyncio.run(_latencies(url, n, headers)))
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    best, best_c, best_err = 0.0, 0, 0
    for conc in levels:
        rps, errors = asyncio.run(_rate(url, conc, max(200, conc * 20), headers))
        print(f"  {name:<11} concurrency {conc:>3}: {rps:8.0f} req/s, {errors} errors", flush=True)
        if errors == 0 and rps > best:
            best, best_c, best_err = rps, conc, errors
    return Result(name, p50, p99, best, best_c, best_err)


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


def start_router(backend_url: str, port: int) -> str:
    """Ray Serve with the tokenyard router only; one External target = the backend."""
    import ray
    from ray import serve

    from tokenyard.contract import RouterAppArgs
    from tokenyard.serving.router_app import build_app_with_config

    state = Path(tempfile.mkdtemp(prefix="tokenyard-bench-"))
    cfg = bench_config(backend_url)
    args = RouterAppArgs(
        pool="bench",
        namespace="bench",
        ledgerPath=str(state / "ledger.json"),
        auditPath=str(state / "audit.jsonl"),
    )
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="tokenyard-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app_with_config(args, cfg), name="tokenyard-router", route_prefix="/")
    serve.run(_floor_app(), name="serve-floor", route_prefix="/floor")
    return f"http://127.0.0.1:{port}"


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500, help="sequential requests per target")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrency levels for the rate test")
    ap.add_argument("--litellm-bin", default=None, help="the `litellm` proxy executable")
    ap.add_argument("--serve-backend", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_backend is not None:
        serve_backend(a.serve_backend)
        return 0
    levels = [int(x) for x in a.levels.split(",")]
    core50, core99 = core_latency(a.requests)
    print(f"router logic alone (in process, no HTTP): p50 {core50:.2f} ms, p99 {core99:.2f} ms")

    bport = free_port()
    backend = subprocess.Popen(
        [sys.executable, __file__, "--serve-backend", str(bport)], start_new_session=True
    )
    procs: list[subprocess.Popen[bytes]] = [backend]
    results: list[Result] = []
    try:
        wait_http(f"http://127.0.0.1:{bport}/health", proc=backend)
        backend_v1 = f"http://127.0.0.1:{bport}/v1"
        print("direct backend ...", flush=True)
        results.append(measure("direct", f"{backend_v1}/chat/completions", a.requests, levels, {}))

        print("tokenyard router (Ray Serve, 1 replica) ...", flush=True)
        serve_root = start_router(backend_v1, free_port())
        results.append(
            measure("tokenyard", f"{serve_root}/v1/chat/completions", a.requests, levels, {})
        )
        print("Ray Serve floor (trivial deployment, no backend call) ...", flush=True)
        results.append(measure("serve-floor", f"{serve_root}/floor", a.requests, levels, {}))

        litellm = a.litellm_bin or shutil.which("litellm")
        if litellm is None:
            print(
                "litellm: skipped (not installed; pip install 'litellm[proxy]' in a "
                "virtualenv and pass --litellm-bin PATH)"
            )
        else:
            lport = free_port()
            log = Path(tempfile.mkdtemp(prefix="tokenyard-bench-litellm-")) / "litellm.log"
            proc = start_litellm(litellm, backend_v1, lport, log)
            procs.append(proc)
            print(f"litellm proxy ({litellm}) ...", flush=True)
            wait_http(f"http://127.0.0.1:{lport}/health/liveliness", timeout_s=180, proc=proc)
            results.append(
                measure(
                    "litellm",
                    f"http://127.0.0.1:{lport}/v1/chat/completions",
                    a.requests,
                    levels,
                    {"authorization": f"Bearer {LITELLM_KEY}"},
                )
            )
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
                p.wait(20)
        try:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
        except ImportError:
            pass

    direct = results[0]
    print()
    print(
        f"{'target':<11} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
        f"{'max req/s':>10} {'at conc':>8}"
    )
    for r in results:
        print(
            f"{r.name:<11} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.p50_ms - direct.p50_ms:8.2f} "
            f"{r.p99_ms - direct.p99_ms:8.2f} {r.max_rps:10.0f} {r.at_concurrency:>8}"
        )
    print(f"router logic alone (in process, no HTTP): p50 {core50:.2f} ms, p99 {core99:.2f} ms")
    by = {r.name: r for r in results}
    if "tokenyard" in by and "litellm" in by:
        ty, ll = by["tokenyard"], by["litellm"]
        add_ty50, add_ll50 = ty.p50_ms - direct.p50_ms, ll.p50_ms - direct.p50_ms
        add_ty99, add_ll99 = ty.p99_ms - direct.p99_ms, ll.p99_ms - direct.p99_ms
        print()
        print(
            f"added p50: tokenyard {add_ty50:.2f} ms vs litellm {add_ll50:.2f} ms "
            f"(ratio {add_ty50 / add_ll50:.2f})"
        )
        print(
            f"added p99: tokenyard {add_ty99:.2f} ms vs litellm {add_ll99:.2f} ms "
            f"(ratio {add_ty99 / add_ll99:.2f})"
        )
        print(
            f"max rate:  tokenyard {ty.max_rps:.0f} req/s vs litellm {ll.max_rps:.0f} req/s "
            f"(ratio {ty.max_rps / ll.max_rps:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
