"""The feedback loop of issue 12, in process against the router's real code: RouterCore
over ASGI (the in-cluster economy model and the external frontier provider faked at the
backend seam), the real ``tokenyard train-router --from-state`` CLI on the router's own
state directory, and the policy update through the operator's own builder
(``policy_entry`` with the artifact's ConfigMap).

A scripted client rates every answer by a rule the router cannot see: prompts about tax
are "bad" when the economy model answers them, every other answer is "good". With
capture and exploration on, a few hundred requests are rated; the classifier trained
from them must move tax prompts it never saw to the frontier model and leave the other
topics' economy share within 5 points. Shares are printed (run with -s) for the report.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="needs the serving extra (ray[serve])")

from starlette.applications import Starlette
from starlette.routing import Route
from tests.serving.fakes import completion as fake_completion

from tokenyard.accounting.audit import AuditLog
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.api.policy import RoutingPolicy
from tokenyard.cli import main as cli
from tokenyard.contract import (
    CatalogueEntry,
    ExternalEndpoint,
    RouterAppArgs,
    RouterConfig,
)
from tokenyard.operator.builders.serve_config import policy_entry
from tokenyard.serving.backends import Backend, build_backends
from tokenyard.serving.providers import ProviderClient
from tokenyard.serving.router import RouterCore

pytestmark = pytest.mark.timeout(300)

TAX = [
    "tax", "tax return", "deduction", "VAT", "withholding", "capital gains", "IRS",
    "tax bracket", "write-off", "audit notice", "tax credit", "depreciation schedule",
]  # fmt: skip
OTHER = [
    "pasta", "hiking boots", "a birthday card", "a football match", "my garden", "a poem",
    "a bike chain", "a train ticket", "sourdough", "a chess opening", "a guitar chord",
    "a houseplant", "a marathon", "a recipe", "a holiday", "a sweater",
]  # fmt: skip
FRAMES = [
    "Can you help me with {}?", "Explain {} in simple words.", "I have a question about {}.",
    "What should I know about {}?", "Give me three tips on {}.", "Quick one: {}",
    "Tell me something useful about {}.", "How does {} work?",
]  # fmt: skip


def prompts(rng: random.Random, n: int, tax_share: float = 0.25) -> list[tuple[str, bool]]:
    out = []
    for _ in range(n):
        tax = rng.random() < tax_share
        words = TAX if tax else OTHER
        out.append((rng.choice(FRAMES).format(rng.choice(words)), tax))
    return out


def completion(model: str) -> dict[str, Any]:
    return fake_completion(model, prompt_tokens=12, completion_tokens=8)


class Economy:
    name = "economy"

    async def complete(self, kind: str, body: dict[str, Any], t: float) -> dict[str, Any]:
        return completion(self.name)

    async def stream(self, kind: str, body: dict[str, Any], t: float) -> AsyncIterator[Any]:
        yield completion(self.name)


def backends(
    entries: Mapping[str, CatalogueEntry], client: ProviderClient, previous: Any
) -> Mapping[str, Backend]:
    ext = {n: e for n, e in entries.items() if n != "economy"}
    return {**build_backends(ext, client, previous), "economy": Economy()}


MODELS = [
    CatalogueEntry(
        name="economy",
        servedModelName="economy",
        kind="InCluster",
        quality=0.5,
        inputPer1M=0.2,
        outputPer1M=0.2,
        app="model-economy",
        deployment="LLMServer",
    ),
    CatalogueEntry(
        name="frontier",
        servedModelName="frontier",
        kind="External",
        quality=0.9,
        inputPer1M=5.0,
        outputPer1M=15.0,
        dataClasses=["public", "internal"],
        external=ExternalEndpoint(
            baseURL="http://frontier.test/v1", providerModel="f", apiKeyEnv="KEY_F"
        ),
    ),
]


def policy(learning: dict[str, Any], classifier: dict[str, Any] | None = None) -> RoutingPolicy:
    return RoutingPolicy.model_validate(
        {
            "metadata": {"name": "chat", "namespace": "ns", "generation": 1},
            "spec": {
                "pool": "p",
                "targets": [{"model": "economy"}, {"model": "frontier"}],
                "egress": {"allowedExternalDataClasses": ["public", "internal"]},
                "learning": learning,
                **({"classifier": classifier} if classifier else {}),
            },
        }
    )


def config(
    p: RoutingPolicy, configmaps: Mapping[str, Mapping[str, str]] | None = None
) -> RouterConfig:
    return RouterConfig(
        pool="p", namespace="ns", models=MODELS, policies=[policy_entry(p, configmaps)]
    )


async def run(
    client: httpx.AsyncClient, batch: list[tuple[str, bool]], rate: bool
) -> list[tuple[bool, str]]:
    """Send each prompt; rate the answer by the hidden rule when ``rate``."""
    out = []
    for text, tax in batch:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": text}]},
        )
        assert r.status_code == 200, r.text
        target = r.headers["x-tokenyard-target"]
        out.append((tax, target))
        if rate:
            good = not (tax and target == "economy")
            f = await client.post(
                "/v1/tokenyard/feedback",
                json={"request_id": r.headers["x-request-id"], "score": "good" if good else "bad"},
            )
            assert f.status_code == 200, f.text
    return out


def frontier_share(results: list[tuple[bool, str]], tax: bool) -> float:
    sel = [t for is_tax, t in results if is_tax == tax]
    return sum(t == "frontier" for t in sel) / len(sel)


def quality(results: list[tuple[bool, str]]) -> float:
    """The share of answers the hidden rule rates good (the frontier model's is 1)."""
    return sum(not (tax and t == "economy") for tax, t in results) / len(results)


# The default aim. At 0.99 (measured once: every tax prompt moves, and 10% of the other
# topics too, the quality table's next step) the other topics' share is not kept.
@pytest.mark.parametrize("aim", [0.95])
async def test_rated_topic_moves_to_the_frontier_model(tmp_path: Path, aim: float) -> None:
    core = RouterCore(
        RouterAppArgs(pool="p", namespace="ns", ledgerPath=str(tmp_path / "ledger.json")),
        ledger=LedgerClient(None),
        provider=ProviderClient(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json=completion("f"))),
            env={"KEY_F": "k"},
        ),
        audit=AuditLog(None),
        env={},
        watch_apps=False,
        backend_factory=backends,
        rng=random.Random(5),
    )
    app = Starlette(routes=[Route("/{path:path}", core.handle, methods=["GET", "POST"])])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
    held_out = prompts(random.Random(2), 300)  # never captured: measured before and after
    try:
        core.apply_config(config(policy({})))
        before = await run(client, held_out, rate=False)

        learning = {"capture": {"sampleRate": 1.0, "dataClasses": ["public", "internal"]},
                    "exploration": {"share": 0.2}}  # fmt: skip
        core.apply_config(config(policy(learning)))
        trained_on = await run(client, prompts(random.Random(1), 400), rate=True)

        artifact = tmp_path / "model.json"
        assert cli(["train-router", "--from-state", str(tmp_path), "--out", str(artifact)]) == 0
        learned = {
            "type": "Learned",
            "artifactRef": {"name": "router-model"},
            "keepStrongQuality": aim,
        }
        cm = {"router-model": {"model.json": artifact.read_text()}}
        core.apply_config(config(policy({}, learned), cm))
        assert core.state.policies["chat"].classifier is not None
        after = await run(client, held_out, rate=False)
    finally:
        await client.aclose()
        await core.aclose()

    explored = sum(t != "economy" for tax, t in trained_on if not tax) / sum(
        not tax for tax, _ in trained_on
    )
    shares = {
        "tax_frontier_before": frontier_share(before, True),
        "tax_frontier_after": frontier_share(after, True),
        "other_economy_before": 1 - frontier_share(before, False),
        "other_economy_after": 1 - frontier_share(after, False),
        "other_frontier_while_exploring": explored,
        "quality_before": quality(before),
        "quality_after": quality(after),
    }
    print(
        f"feedback loop, keepStrongQuality {aim} (held-out prompts):",
        {k: round(v, 3) for k, v in shares.items()},
    )
    assert shares["tax_frontier_before"] < 0.1
    # The artifact keeps the aim with the fewest frontier calls: the tax prompts move,
    # up to what the aim lets stay on the economy model (1 - aim of all answers).
    assert shares["tax_frontier_after"] > 0.8
    assert shares["quality_after"] >= aim - 0.02
    assert abs(shares["other_economy_after"] - shares["other_economy_before"]) <= 0.05
