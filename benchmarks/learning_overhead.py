"""What learning from the pool's own traffic adds to a request's time in the router.

Run: ``.venv/bin/python benchmarks/learning_overhead.py [--requests 1000]``

Three routers (``RouterCore`` over ASGI, the in-cluster model faked at the backend seam,
each with its state directory in a temporary folder) serve the same prompts in the same
process, in a shuffled turn: one with a plain policy, one with ``spec.learning``
capturing every request (``sampleRate: 1``) and exploring 5%, and one with that plus a
shadow candidate (``spec.classifier.shadow``, the test fixture artifact).
All write the decision journal every answered request gets. The script prints p50/p99
of each and what each adds to the plain router's p50.

Then the decision journal alone: how long noting one answered request holds the
request's thread, queued to the journal's writer thread (what the router does) against
appending it there and then under the file lock (what it did before), in the same
process and folder, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.routing import Route

from tokenyard.accounting.audit import AuditLog
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import (
    CatalogueEntry,
    PolicyEntry,
    RouterAppArgs,
    RouterConfig,
    learned_classifier_entry,
)
from tokenyard.serving.backends import Backend
from tokenyard.serving.router import RouterCore

FIXTURE = (
    Path(__file__).resolve().parents[1] / "tests" / "unit" / "fixtures" / "difficulty-model.json"
)
ANSWER = {
    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}  # fmt: skip


class Instant:
    def __init__(self, name: str) -> None:
        self.name = name

    async def complete(self, kind: str, body: dict[str, Any], t: float) -> dict[str, Any]:
        return dict(ANSWER)

    async def stream(self, kind: str, body: dict[str, Any], t: float) -> AsyncIterator[Any]:
        yield dict(ANSWER)


def backends(
    entries: Mapping[str, CatalogueEntry], client: Any, prev: Any
) -> Mapping[str, Backend]:
    return {n: Instant(n) for n in entries}


def config(learning: bool, shadow: bool = False) -> RouterConfig:
    spec: dict[str, Any] = {"pool": "p", "targets": [{"model": "small"}, {"model": "big"}]}
    entry: dict[str, Any] = {}
    if learning:
        spec["learning"] = {
            "capture": {"sampleRate": 1, "dataClasses": ["public", "internal"]},
            "exploration": {"share": 0.05},
        }
    if shadow:
        spec["classifier"] = {"shadow": {"name": "candidate"}}
        entry["shadow"] = learned_classifier_entry(FIXTURE.read_text(), 0.95)
    models = [
        CatalogueEntry(name=n, servedModelName=n, kind="InCluster", quality=q, inputPer1M=p,
                       outputPer1M=p, app=f"model-{n}", deployment="LLMServer")
        for n, q, p in (("small", 0.5, 0.2), ("big", 0.9, 5.0))
    ]  # fmt: skip
    pol = PolicyEntry(
        name="chat",
        namespace="ns",
        endpoint="chat",
        spec=RoutingPolicySpec.model_validate(spec).dump(),
        **entry,
    )
    return RouterConfig(pool="p", namespace="ns", models=models, policies=[pol])


def router(
    state: Path, learning: bool, shadow: bool = False
) -> tuple[RouterCore, httpx.AsyncClient]:
    core = RouterCore(
        RouterAppArgs(pool="p", namespace="ns", ledgerPath=str(state / "ledger.json")),
        ledger=LedgerClient(None),
        audit=AuditLog(None),
        env={},
        watch_apps=False,
        backend_factory=backends,
        rng=random.Random(1),
    )
    core.apply_config(config(learning, shadow))
    app = Starlette(routes=[Route("/{path:path}", core.handle, methods=["GET", "POST"])])
    return core, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


async def main(n: int) -> None:
    import logging

    logging.getLogger("tokenyard.audit").disabled = True
    rng = random.Random(0)
    words = [
        "tax",
        "pasta",
        "bike",
        "garden",
        "chess",
        "poem",
        "train",
        "sweater",
        "deduction",
        "marathon",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        routers = {
            "plain": router(Path(tmp) / "plain", learning=False),
            "capture+explore": router(Path(tmp) / "learn", learning=True),
            "+shadow": router(Path(tmp) / "shadow", learning=True, shadow=True),
        }
        times: dict[str, list[float]] = {k: [] for k in routers}
        for _ in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
            body = {"model": "chat", "messages": [{"role": "user", "content": text}]}
            order = list(routers.items())
            rng.shuffle(order)  # no router always runs first (warm caches)
            for name, (_, client) in order:
                t = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                times[name].append(time.perf_counter() - t)
                assert r.status_code == 200
        for core, client in routers.values():
            await client.aclose()
            await core.aclose()
    p = {k: (np.percentile(v, 50) * 1e3, np.percentile(v, 99) * 1e3) for k, v in times.items()}
    base = p["plain"]
    for k, (p50, p99) in p.items():
        print(
            f"{k:16s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
            f"added p50 {p50 - base[0]:+.3f} ms  ratio {p50 / base[0]:.2f}  ({n} requests)"
        )


def journal_hold(n: int) -> None:
    """Time ``note_decision`` on the caller's thread: queued vs a synchronous append."""
    from tokenyard.accounting.learning import DecisionNote, LearningStore, _Journal
    from tokenyard.routing.learned.state_files import DECISIONS_FILE

    with tempfile.TemporaryDirectory() as tmp:
        store = LearningStore(Path(tmp) / "queued")
        direct = _Journal(Path(tmp) / "sync" / DECISIONS_FILE, 32 << 20)
        held: dict[str, list[float]] = {"queued": [], "synchronous": []}
        for i in range(n):
            note = DecisionNote(
                request_id=f"req-{i:08d}",
                time=1.8e9 + i,
                tenant="team-a",
                endpoint="chat",
                target="economy",
                difficulty=0.42,
            )
            for kind in ("queued", "synchronous") if i % 2 else ("synchronous", "queued"):
                t = time.perf_counter()
                if kind == "queued":
                    store.note_decision(note)
                else:
                    direct.append(note.to_dict())
                held[kind].append(time.perf_counter() - t)
            if i % 50 == 49:
                time.sleep(0.005)  # requests arrive spread out, not in one burst
        store.close()
        direct.close()
    q = {k: (np.percentile(v, 50) * 1e6, np.percentile(v, 99) * 1e6) for k, v in held.items()}
    sync50, sync99 = q["synchronous"]
    for k, (p50, p99) in q.items():
        print(
            f"journal {k:11s} holds the request p50 {p50:6.1f} us  p99 {p99:7.1f} us  "
            f"(÷ synchronous: p50 {p50 / sync50:.2f}, p99 {p99 / sync99:.2f}; {n} decisions)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--decisions", type=int, default=5000)
    args = ap.parse_args()
    asyncio.run(main(args.requests))
    journal_hold(args.decisions)
