"""Prefix-cache-aware replica picking on CPU vLLM: vLLM's own prefix-cache hit rate and
time to first token, with Ray Serve LLM's PrefixCacheAffinityRouter (a ModelDeployment's
``replicaRouting: PrefixCacheAffinity``, the default with prefix caching on) and without
it (``PowerOfTwoChoices``, Serve's default router), side by side.

Run: ``python benchmarks/prefix_affinity.py [--conversations 8] [--turns 5]`` with vLLM
(the cpu extra) and ray[serve] installed; it builds a tiny model (no download).

Both variants are deployed at once through the model app ``tokenyard up`` and the operator
render (``contract.build_llm_config`` -> ``tokenyard.serving.model_app``), two replicas
each, and called the way the router calls them (``InClusterBackend``: a deployment handle,
streaming). The workload: several conversations that share one system prompt and grow
turn by turn (each turn appends the model's reply and a new user message). Each turn is
a round: every conversation's next message goes to both variants (which one goes first
alternates), so load from anything else on the machine hits both in the same round; the
TTFT ratio is taken per round and its median and spread printed.

Hit rates: (1) vLLM's Prometheus counters ``vllm:prefix_cache_hits`` /
``vllm:prefix_cache_queries`` (exported by Ray as ``ray_vllm_prefix_cache_*``, per
variant by its model name), and (2) the ``cached_tokens`` vLLM reports per response
(``usage.prompt_tokens_details``, enabled with the engine's
``enable_prompt_tokens_details``). Nothing is tuned here: the router runs with Ray's
defaults, the workload is fixed by --seed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS = ("PrefixCacheAffinity", "PowerOfTwoChoices")
WORDS = [
    "route",
    "request",
    "model",
    "replica",
    "cache",
    "prefix",
    "token",
    "budget",
    "policy",
    "tenant",
    "latency",
    "quality",
    "cost",
    "cluster",
    "engine",
    "batch",
    "stream",
    "queue",
    "serve",
    "vector",
    "table",
    "query",
    "answer",
    "summary",
    "contract",
    "clause",
    "customer",
    "payment",
    "ledger",
    "audit",
    "metric",
    "window",
    "limit",
]


@dataclass
class Conversation:
    messages: list[dict[str, str]]


@dataclass
class Samples:
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    errors: int = 0
    per_round_ttft: list[float] = field(default_factory=list)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def conversations(seed: int, n: int, system_words: int) -> list[Conversation]:
    rng = random.Random(seed)
    system = "You are a careful assistant. " + _sentence(rng, system_words)
    return [Conversation([{"role": "system", "content": system}]) for _ in range(n)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_app(
    name: str, routing: str, model_path: Path, max_len: int, block_size: int
) -> dict[str, Any]:
    from tokenyard import contract
    from tokenyard.api.model import ModelDeployment

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "pool": "local",
                "inCluster": {
                    "source": f"file://{model_path}",
                    "accelerator": "cpu",
                    "replicaRouting": routing,
                    "engine": {
                        "dtype": "float32",
                        "maxModelLen": max_len,
                        "enforceEager": True,
                        "enablePrefixCaching": True,
                        "extraArgs": {
                            "enable_prompt_tokens_details": True,
                            "block_size": block_size,
                        },
                    },
                },
                "autoscaling": {"mode": "Manual", "minReplicas": 2, "maxReplicas": 2},
                "replicas": 2,
            },
        }
    )
    cfg = contract.build_llm_config(
        name,
        md.spec,
        None,
        min_replicas=2,
        max_replicas=2,
        initial_replicas=2,
        autoscale=False,
        env_vars={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
    )
    return {
        "name": contract.model_app_name(name),
        "route_prefix": contract.model_route_prefix(name),
        "import_path": contract.MODEL_IMPORT_PATH,
        "args": {"llm_config": cfg},
    }


def _backend(name: str) -> Any:
    from tokenyard import contract
    from tokenyard.serving.backends import InClusterBackend

    entry = contract.CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="InCluster",
        quality=0.5,
        inputPer1M=0,
        outputPer1M=0,
        app=contract.model_app_name(name),
        deployment=contract.MODEL_DEPLOYMENT,
    )
    return InClusterBackend(entry)


async def _one(backend: Any, conv: Conversation, max_tokens: int, out: Samples) -> str:
    body = {
        "messages": conv.messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    try:
        async for chunk in backend.stream("chat", body, 120.0):
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if first is None:
                        first = time.perf_counter() - start
                    text.append(delta)
            usage = chunk.get("usage")
            if usage:
                out.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                details = usage.get("prompt_tokens_details") or {}
                out.cached_tokens += int(details.get("cached_tokens") or 0)
    except Exception as exc:
        out.errors += 1
        print(f"  request failed: {exc!r}"[:300], file=sys.stderr)
        return ""
    if first is not None:
        out.ttft.append(first)
    return "".join(text)


async def _round(
    backend: Any, convs: list[Conversation], max_tokens: int, concurrency: int, out: Samples
) -> None:
    sem = asyncio.Semaphore(concurrency)
    before = len(out.ttft)

    async def run(c: Conversation) -> None:
        async with sem:
            reply = await _one(backend, c, max_tokens, out)
        c.messages.append({"role": "assistant", "content": reply or "ok"})

    await asyncio.gather(*(run(c) for c in convs))
    got = out.ttft[before:]
    out.per_round_ttft.append(statistics.median(got) if got else float("nan"))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


METRIC_RE = re.compile(
    r"^ray_vllm_prefix_cache_(hits|queries)(?:_total)?\{(?P<labels>[^}]*)\}\s+(?P<v>[0-9.eE+-]+)$"
)


def prefix_counters(text: str, model: str) -> tuple[float, float]:
    """(hits, queries) summed over the replicas serving ``model``."""
    hits = queries = 0.0
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m is None or f'model_name="{model}"' not in m.group("labels"):
            continue
        if m.group(1) == "hits":
            hits += float(m.group("v"))
        else:
            queries += float(m.group("v"))
    return hits, queries


def _wait_counters(port: int, models: list[str], timeout: float) -> dict[str, tuple[float, float]]:
    """The counters once they stop moving (Ray exports metrics every few seconds)."""
    last: dict[str, tuple[float, float]] = {}
    stable = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _scrape(port)
        now = {m: prefix_counters(text, m) for m in models}
        if now == last and all(q > 0 for _, q in now.values()):
            stable += 1
            if stable >= 2:
                return now
        else:
            stable = 0
        last = now
        time.sleep(5)
    return last


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--system-words", type=int, default=40)
    ap.add_argument("--user-words", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=14)
    # vLLM on CPU caches whole blocks of 128 tokens by default: more than this workload's
    # shared system prompt. 32 (the CPU backend wants multiples of 32) makes the cache
    # granularity of a GPU engine (16) at the tiny model's scale.
    ap.add_argument("--block-size", type=int, default=32)
    args = ap.parse_args(argv)

    try:
        import ray
        from ray import serve
    except ImportError:
        print("needs ray[serve] and vLLM (the cpu extra)")
        return 0
    from tokenyard.serving.local import deploy, wait_running
    from tokenyard.serving.tiny import build_tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="tokenyard-prefix-"))
    model_path = build_tiny_model(tmp / "tiny", seed=3)
    names = {"PrefixCacheAffinity": "tiny-affinity", "PowerOfTwoChoices": "tiny-p2c"}
    metrics_port = _free_port()
    ray.init(
        num_cpus=12,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        apps = [
            _model_app(names[v], v, model_path, args.max_model_len, args.block_size)
            for v in VARIANTS
        ]
        deploy({"applications": apps})
        import threading

        t0 = time.monotonic()
        if not wait_running([a["name"] for a in apps], threading.Event(), timeout_s=900):
            print("the model apps did not start")
            return 1
        print(f"4 replicas RUNNING after {time.monotonic() - t0:.0f}s")
        from ray.serve.context import _get_global_client

        from tokenyard.contract import MODEL_DEPLOYMENT

        for v in VARIANTS:
            info, _ = _get_global_client().get_deployment_info(
                MODEL_DEPLOYMENT, f"model-{names[v]}"
            )
            cls = info.deployment_config.request_router_config.request_router_class
            print(f"  {v}: request router {cls}")

        backends = {v: _backend(names[v]) for v in VARIANTS}
        samples = {v: Samples() for v in VARIANTS}
        rng = random.Random(args.seed + 1)

        async def run() -> None:
            rounds = 0
            for session in range(args.sessions):
                # A new set of conversations, with a system prompt of its own.
                seed = args.seed + 100 * session
                convs = {
                    v: conversations(seed, args.conversations, args.system_words) for v in VARIANTS
                }
                for _turn in range(args.turns):
                    users = [_sentence(rng, args.user_words) for _ in range(args.conversations)]
                    for v in VARIANTS:
                        for c, u in zip(convs[v], users, strict=True):
                            c.messages.append({"role": "user", "content": u})
                    order = VARIANTS if rounds % 2 == 0 else VARIANTS[::-1]
                    rounds += 1
                    for v in order:
                        await _round(
                            backends[v], convs[v], args.max_tokens, args.concurrency, samples[v]
                        )

        asyncio.run(run())
        counters = _wait_counters(metrics_port, list(names.values()), timeout=120)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()

    load = os.getloadavg()
    print()
    print(
        f"workload: {args.sessions} sessions of {args.conversations} conversations x "
        f"{args.turns} turns, each session's conversations sharing a "
        f"{args.system_words}-word system prompt, {args.user_words}-word user turns, "
        f"{args.max_tokens} output tokens, concurrency {args.concurrency}, KV block "
        f"{args.block_size} tokens; 2 replicas each; "
        f"load average now {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs"
    )
    header = (
        f"{'':22}{'hit rate (Prometheus)':>23}{'hit rate (cached_tokens)':>26}"
        f"{'TTFT p50':>11}{'TTFT p90':>11}{'errors':>8}"
    )
    print(header)
    for v in VARIANTS:
        s = samples[v]
        hits, queries = counters.get(names[v], (0.0, 0.0))
        prom = f"{hits / queries:.1%} ({hits:.0f}/{queries:.0f})" if queries else "n/a"
        usage = (
            f"{s.cached_tokens / s.prompt_tokens:.1%} ({s.cached_tokens}/{s.prompt_tokens})"
            if s.prompt_tokens
            else "n/a"
        )
        print(
            f"{v:22}{prom:>23}{usage:>26}{_p(s.ttft, 0.5) * 1000:>9.1f}ms"
            f"{_p(s.ttft, 0.9) * 1000:>9.1f}ms{s.errors:>8}"
        )
    a, b = samples["PrefixCacheAffinity"], samples["PowerOfTwoChoices"]
    ratios = [
        x / y
        for x, y in zip(a.per_round_ttft, b.per_round_ttft, strict=True)
        if y > 0 and not math.isnan(x)
    ]
    if ratios:
        print(
            "TTFT p50 affinity / power-of-two per round (one turn of a session): median "
            f"{statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
            f"max {max(ratios):.2f} over {len(ratios)} rounds: "
            + ", ".join(f"{r:.2f}" for r in ratios)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
