"""Learning from the pool's own traffic, through RouterCore over ASGI (providers faked
with httpx.MockTransport): the request id on every response and audit line, feedback and
who may give it, the feedback and decision journals on the state volume (a restart keeps
them), prompt capture with its data-class exclusion and retention, and exploration's
propensities in the audit line."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="needs the serving extra (ray[serve])")

from starlette.applications import Starlette
from starlette.routing import Route
from tests.serving.fakes import completion

from tokenyard.accounting.audit import AuditLog
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import (
    CatalogueEntry,
    ExternalEndpoint,
    PolicyEntry,
    RouterAppArgs,
    RouterConfig,
)
from tokenyard.routing.learned.state_files import CAPTURE_DIR, FEEDBACK_FILE, read_lines
from tokenyard.serving.backends import Backend, build_backends
from tokenyard.serving.providers import ProviderClient
from tokenyard.serving.router import RouterCore

pytestmark = pytest.mark.timeout(60)

KEYS = "key-alice: alice\nkey-bob: bob\n"
T0 = 1_800_000_000.0


def external(name: str, price: float, quality: float, classes: list[str]) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="External",
        quality=quality,
        inputPer1M=price,
        outputPer1M=price,
        dataClasses=classes,
        external=ExternalEndpoint(
            baseURL=f"http://{name}.test/v1", providerModel=name, apiKeyEnv="KEY_A"
        ),
    )


class InstantModel:
    """The in-cluster "cheap" model (a Ray Serve handle in production): answers at once."""

    name = "cheap"

    async def complete(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> dict[str, Any]:
        return completion(self.name)

    async def stream(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        yield completion(self.name)


def with_cheap_in_cluster(
    entries: Mapping[str, CatalogueEntry],
    client: ProviderClient,
    previous: Mapping[str, Backend] | None,
) -> Mapping[str, Backend]:
    external = {n: e for n, e in entries.items() if n != "cheap"}
    return {**build_backends(external, client, previous), "cheap": InstantModel()}


def config(**spec: Any) -> RouterConfig:
    policy = RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "targets": [{"model": "cheap"}, {"model": "strong"}],
            "egress": {"defaultDataClass": "public", "allowedExternalDataClasses": ["public"]},
            **spec,
        }
    )
    return RouterConfig(
        pool="p",
        namespace="ns",
        models=[
            CatalogueEntry(
                name="cheap",
                servedModelName="cheap",
                kind="InCluster",
                quality=0.5,
                inputPer1M=1.0,
                outputPer1M=1.0,
                app="model-cheap",
                deployment="LLMServer",
            ),
            external("strong", 5.0, 0.9, ["public"]),
        ],
        policies=[
            PolicyEntry(
                name="ep", namespace="ns", endpoint="ep", spec=policy.dump(), tenantKeysEnv="KEYS"
            )
        ],
    )


KEYED = {"tenants": {"apiKeysSecretRef": {"name": "keys", "key": "keys"}}}


def provider(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=completion(request.url.host.removesuffix(".test")))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


Make = Callable[..., tuple[RouterCore, httpx.AsyncClient]]


@pytest.fixture
async def make_router(tmp_path: Path) -> AsyncIterator[Make]:
    made: list[tuple[RouterCore, httpx.AsyncClient]] = []

    def make(cfg: RouterConfig, **core_kw: Any) -> tuple[RouterCore, httpx.AsyncClient]:
        core = RouterCore(
            RouterAppArgs(
                pool="p",
                namespace="ns",
                ledgerPath=str(tmp_path / "ledger.json"),
                auditPath=str(tmp_path / "audit.jsonl"),
            ),
            ledger=LedgerClient(None),
            provider=ProviderClient(transport=httpx.MockTransport(provider), env={"KEY_A": "k"}),
            audit=AuditLog(str(tmp_path / "audit.jsonl")),
            env={"KEYS": KEYS},
            watch_apps=False,
            backend_factory=with_cheap_in_cluster,
            **core_kw,
        )
        core.apply_config(cfg)
        app = Starlette(routes=[Route("/{path:path}", core.handle, methods=["GET", "POST"])])
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
        made.append((core, client))
        return core, client

    yield make
    for core, client in made:
        await client.aclose()
        await core.aclose()


def body(content: str = "hi") -> dict[str, Any]:
    return {"model": "ep", "messages": [{"role": "user", "content": content}], "max_tokens": 4}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


LEARNING = Path("learning-ns-p")


async def test_every_response_carries_the_request_id_of_its_audit_line(
    make_router: Make, tmp_path: Path
) -> None:
    _, client = make_router(config())
    ok = await client.post("/v1/chat/completions", json=body())
    unknown = await client.post("/v1/chat/completions", json={**body(), "model": "nope"})
    bad = await client.post("/v1/chat/completions", content=b"{", headers={"x-request-id": "c-1"})
    ids = [r.headers["x-request-id"] for r in (ok, unknown, bad)]
    assert ok.status_code == 200 and unknown.status_code == 404 and bad.status_code == 400
    assert ids[2] == "c-1"  # a client's own id is kept
    assert [line["request_id"] for line in audit(tmp_path)] == ids


async def test_a_tenant_rates_its_own_request_and_no_other(
    make_router: Make, tmp_path: Path
) -> None:
    core, client = make_router(config(**KEYED))
    r = await client.post("/v1/chat/completions", json=body(), headers=auth("key-alice"))
    rid = r.headers["x-request-id"]
    assert r.status_code == 200

    own = await client.post(
        "/v1/tokenyard/feedback",
        json={"request_id": rid, "score": "bad"},
        headers=auth("key-alice"),
    )
    assert own.status_code == 200, own.text
    assert own.json() | {"request_id": rid} == {
        "object": "tokenyard.feedback",
        "request_id": rid,
        "score": 0.0,
        "endpoint": "ep",
        "target": "cheap",
        "stored": True,
    }
    assert own.headers["x-request-id"]

    # Another tenant, no key, an unknown key, a claimed tenant header, an unknown id:
    # one answer, so nobody learns that another tenant's request exists.
    others = [
        ({"request_id": rid, "score": 1}, auth("key-bob")),
        ({"request_id": rid, "score": 1}, {}),
        ({"request_id": rid, "score": 1}, auth("key-mallory")),
        ({"request_id": rid, "score": 1}, {"x-tenant": "alice"}),
        ({"request_id": "no-such-id", "score": 1}, auth("key-alice")),
    ]
    answers = []
    for payload, headers in others:
        resp = await client.post("/v1/tokenyard/feedback", json=payload, headers=headers)
        assert resp.status_code == 404
        err = resp.json()["error"]
        answers.append((err["type"], err["code"], err["param"], err["message"].split("'")[0]))
    assert len(set(answers)) == 1 and answers[0][1] == "request_not_found"

    lines = list(read_lines(tmp_path / LEARNING / FEEDBACK_FILE))
    assert len(lines) == 1
    assert lines[0] | {"time": 0, "request_time": 0} == {
        "time": 0,
        "request_id": rid,
        "score": 0.0,
        "source": "application",
        "tenant": "alice",
        "endpoint": "ep",
        "target": "cheap",
        "chosen": "cheap",
        "explored": False,
        "propensity": 1.0,
        "difficulty": audit(tmp_path)[0]["difficulty"],
        "classifier": "heuristic",
        "request_time": 0,
    }
    metrics = (await client.get("/metrics")).text
    labels = 'classifier="heuristic",endpoint="ep",explored="false",target="cheap"'
    assert f"tokenyard_feedback_total{{{labels}}} 1.0" in metrics
    assert f"tokenyard_feedback_score_total{{{labels}}} 0.0" in metrics
    del core


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ([1, 2], None),
        ({"score": 1}, "request_id"),
        ({"request_id": "", "score": 1}, "request_id"),
        ({"request_id": "x" * 129, "score": 1}, "request_id"),
        ({"request_id": "a"}, "score"),
        ({"request_id": "a", "score": 1.5}, "score"),
        ({"request_id": "a", "score": -0.1}, "score"),
        ({"request_id": "a", "score": True}, "score"),
        ({"request_id": "a", "score": "meh"}, "score"),
        ({"request_id": "a", "score": 1, "source": "Not Valid"}, "source"),
        ({"request_id": "a", "score": 1, "comment": "x"}, "comment"),
    ],
)
async def test_malformed_feedback_is_400_naming_the_field(
    make_router: Make, payload: Any, param: str | None
) -> None:
    _, client = make_router(config())
    r = await client.post("/v1/tokenyard/feedback", json=payload)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"] == param


async def test_feedback_not_json_or_too_large(make_router: Make) -> None:
    _, client = make_router(config())
    assert (await client.post("/v1/tokenyard/feedback", content=b"{x")).status_code == 400
    big = json.dumps({"request_id": "a", "score": 1, "source": "a" * 10_000}).encode()
    assert (await client.post("/v1/tokenyard/feedback", content=big)).status_code == 413


async def test_feedback_reaches_a_decision_made_before_a_restart_or_by_another_replica(
    make_router: Make, tmp_path: Path
) -> None:
    _, first = make_router(config())
    rid = (await first.post("/v1/chat/completions", json=body())).headers["x-request-id"]
    # A second replica (or this one restarted) on the same state volume: empty memory.
    core2, second = make_router(config())
    assert core2.learning._index == {}
    r = await second.post("/v1/tokenyard/feedback", json={"request_id": rid, "score": 0.25})
    assert r.status_code == 200 and r.json()["score"] == 0.25


async def test_a_request_takes_a_bounded_number_of_ratings(make_router: Make) -> None:
    _, client = make_router(config())
    rid = (await client.post("/v1/chat/completions", json=body())).headers["x-request-id"]
    codes = [
        (await client.post("/v1/tokenyard/feedback", json={"request_id": rid, "score": 1}))
        for _ in range(4)
    ]
    assert [r.status_code for r in codes] == [200, 200, 200, 409]
    assert codes[-1].json()["error"]["code"] == "too_many_ratings"


async def test_capture_samples_public_prompts_and_never_a_forbidden_class(
    make_router: Make, tmp_path: Path
) -> None:
    _, client = make_router(config(learning={"capture": {"sampleRate": 1}}))
    ok = await client.post("/v1/chat/completions", json=body("what is 2+2"))
    pii = await client.post(
        "/v1/chat/completions", json=body("mail me at jane@example.com")
    )  # the email detector marks pii: egress-restricted, so not captured by default
    declared = await client.post(
        "/v1/chat/completions", json=body("internal plan"), headers={"x-data-class": "internal"}
    )
    assert ok.status_code == pii.status_code == declared.status_code == 200
    files = list((tmp_path / LEARNING / CAPTURE_DIR).glob("*/*.jsonl"))
    records = [r for f in files for r in read_lines(f)]
    assert [r["request_id"] for r in records] == [ok.headers["x-request-id"]]
    rec = records[0]
    assert rec["messages"] == body("what is 2+2")["messages"]
    assert rec["target"] == "cheap" and rec["baseline_target"] == "strong"
    assert rec["propensity"] == 1.0 and rec["data_classes"] == ["public"]
    assert "jane@example.com" not in "".join(f.read_text() for f in files)
    metrics = (await client.get("/metrics")).text
    assert 'tokenyard_captures_total{endpoint="ep"} 1.0' in metrics


async def test_capture_data_classes_widen_it_and_sample_rate_thins_it(
    make_router: Make, tmp_path: Path
) -> None:
    cap = {"sampleRate": 0.25, "dataClasses": ["public", "internal"]}
    _, client = make_router(config(learning={"capture": cap}), rng=random.Random(3))
    for i in range(200):
        h = {"x-data-class": "internal"} if i % 2 else {}
        assert (await client.post("/v1/chat/completions", json=body(f"q{i}"), headers=h)).is_success
    records = [
        r for f in (tmp_path / LEARNING / CAPTURE_DIR).glob("*/*.jsonl") for r in read_lines(f)
    ]
    assert 30 <= len(records) <= 70  # 25% of 200, with room for the draw
    assert {tuple(r["data_classes"]) for r in records} == {("public",), ("internal",)}


async def test_capture_retention_deletes_old_records(make_router: Make, tmp_path: Path) -> None:
    clock = Clock()
    cap = {"sampleRate": 1, "retention": "2h"}
    _, client = make_router(config(learning={"capture": cap}), clock=clock)
    await client.post("/v1/chat/completions", json=body("old"))
    clock.now += 3600
    await client.post("/v1/chat/completions", json=body("recent"))
    root = tmp_path / LEARNING / CAPTURE_DIR

    def kept() -> list[str]:
        return sorted(
            r["messages"][0]["content"] for f in root.glob("*/*.jsonl") for r in read_lines(f)
        )

    assert kept() == ["old", "recent"]
    clock.now += 2 * 3600 + 1  # "old" is now past 2h (its whole hour is)
    await client.post("/v1/chat/completions", json=body("new"))
    assert kept() == ["new", "recent"]
    clock.now += 10 * 3600
    await client.post("/v1/chat/completions", json=body("newest"))
    assert kept() == ["newest"]


async def test_exploration_is_audited_with_its_propensity_and_never_crosses_egress(
    make_router: Make, tmp_path: Path
) -> None:
    _, client = make_router(config(learning={"exploration": {"share": 0.5}}), rng=random.Random(11))
    for i in range(80):
        await client.post("/v1/chat/completions", json=body(f"hello {i}"))
    for i in range(40):  # pii: only "cheap" may receive it (egress and its dataClasses)
        await client.post("/v1/chat/completions", json=body(f"write to a{i}@example.com"))
    lines = audit(tmp_path)
    public, pii = lines[:80], lines[80:]
    explored = [x for x in public if x["explored"]]
    assert 20 <= len(explored) <= 60
    assert {x["target"] for x in explored} == {"strong"}
    assert {x["propensity"] for x in explored} == {0.5}
    assert {x["propensity"] for x in public if not x["explored"]} == {0.5}
    assert all(x["chosen_target"] == "cheap" for x in public)
    assert {x["target"] for x in pii} == {"cheap"} and not any(x["explored"] for x in pii)
    assert {x["propensity"] for x in pii} == {1.0}
    metrics = (await client.get("/metrics")).text
    series = 'tokenyard_explorations_total{endpoint="ep",from_target="cheap",to_target="strong"}'
    assert f"{series} {float(len(explored))}" in metrics


FIXTURE = Path(__file__).parents[1] / "unit" / "fixtures" / "difficulty-model.json"
PROMPTS = [
    "hi",
    "Solve the integral of x^2 sin x dx and prove it converges",  # candidate score 0.616
    "what is the capital of France",
    "Write a long essay on the history of Rome with citations",
]


async def test_a_shadow_candidate_is_scored_beside_the_live_classifier(
    make_router: Make,
) -> None:
    from tokenyard.contract import LearnedClassifierEntry, learned_classifier_entry

    text = FIXTURE.read_text()
    # The artifact's own threshold for 0.95 sends none of these prompts to the strong
    # target; a policy aiming at less gives 0.6, between the scores of these prompts.
    version = learned_classifier_entry(text, 0.95).version
    candidate = LearnedClassifierEntry(
        version=version, threshold=0.6, keepStrongQuality=0.9, artifact=text
    )
    cfg = config()
    cfg.policies[0] = cfg.policies[0].model_copy(update={"shadow": candidate})
    core, client = make_router(cfg)
    assert core.state.policies["ep"].shadow is not None
    for p in PROMPTS:
        r = await client.post("/v1/chat/completions", json=body(p))
        assert r.headers["x-tokenyard-target"] == "cheap"  # the candidate never routes
    stats = (await client.get("/v1/tokenyard/stats")).json()["endpoints"]["ep"]["shadow"]
    assert stats | {"estimatedCostUSDPer1K": 0, "liveEstimatedCostUSDPer1K": 0} == {
        "version": version,
        "scope": "replica",
        "requests": 4,
        "disagreement": 0.25,
        "strongShare": 0.25,
        "liveStrongShare": 0.0,
        "estimatedCostUSDPer1K": 0,
        "liveEstimatedCostUSDPer1K": 0,
    }
    assert stats["estimatedCostUSDPer1K"] > stats["liveEstimatedCostUSDPer1K"] > 0
    metrics = (await client.get("/metrics")).text
    assert (
        f'tokenyard_shadow_requests_total{{disagree="true",endpoint="ep",version="{version}"}} 1.0'
        in metrics
    )
    labels = f'classifier="shadow",endpoint="ep",version="{version}"'
    series = f"tokenyard_shadow_strong_calls_total{{{labels}}}"
    assert f"{series} 1.0" in metrics

    # The candidate removed: its counts go with it.
    core.apply_config(config())
    after = (await client.get("/v1/tokenyard/stats")).json()["endpoints"]["ep"]
    assert "shadow" not in after
