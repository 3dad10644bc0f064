"""The router's request handling without Ray: RouterCore over ASGI, providers faked with
httpx.MockTransport and in-cluster models with held fakes behind the backend seam.
Covers what the real-engine tests cannot provoke on demand: a stream that breaks after
its first chunk, timeouts, the circuit breaker, a config swap under a request in flight,
spill-over under a pile of concurrent requests, and that provider keys are sent but never
logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="needs the serving extra (ray[serve])")

from starlette.applications import Starlette
from starlette.routing import Route
from tests.serving.fakes import completion

from tokenyard.accounting.audit import AUDIT_LOGGER, AuditLog
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import (
    CatalogueEntry,
    ExternalEndpoint,
    PolicyEntry,
    RouterAppArgs,
    RouterConfig,
    admin_token_sha256,
)
from tokenyard.routing.request import parse_request
from tokenyard.serving.backends import Backend, BackendFailure, build_backends
from tokenyard.serving.providers import ProviderClient
from tokenyard.serving.router import BackendFactory, RouterCore

pytestmark = pytest.mark.timeout(60)

SECRET = "sk-very-secret-provider-key"
Handler = Callable[[httpx.Request], Any]


def entry(name: str, price: float, quality: float = 1.0) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="External",
        quality=quality,
        inputPer1M=price,
        outputPer1M=price,
        dataClasses=["public"],
        external=ExternalEndpoint(
            baseURL=f"http://{name}.test/v1", providerModel=f"{name}-model", apiKeyEnv="KEY_A"
        ),
    )


def config(targets: list[str], **spec: Any) -> RouterConfig:
    policy = RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "targets": [{"model": t} for t in targets],
            "strategy": "Ordered",
            "egress": {"defaultDataClass": "public"},
            **spec,
        }
    )
    return RouterConfig(
        pool="p",
        namespace="ns",
        models=[entry("a", 1.0), entry("b", 2.0)],
        policies=[PolicyEntry(name="ep", namespace="ns", endpoint="ep", spec=policy.dump())],
    )


def chunk(content: str) -> bytes:
    body = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Backends:
    """Per-host fake providers; records every request."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.calls: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        result = self.handlers[request.url.host.removesuffix(".test")](request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result

    def hits(self, host: str) -> int:
        return sum(1 for r in self.calls if r.url.host == f"{host}.test")


@pytest.fixture
def backends() -> Backends:
    return Backends()


@pytest.fixture
async def make_router(
    backends: Backends, tmp_path: Any
) -> AsyncIterator[Callable[..., tuple[RouterCore, httpx.AsyncClient]]]:
    made: list[tuple[RouterCore, httpx.AsyncClient]] = []

    def make(
        cfg: RouterConfig, admin_token_sha256: str | None = None, **core_kw: Any
    ) -> tuple[RouterCore, httpx.AsyncClient]:
        core = RouterCore(
            RouterAppArgs(
                pool="p",
                namespace="ns",
                auditPath=str(tmp_path / "audit.jsonl"),
                adminTokenSha256=admin_token_sha256,
            ),
            ledger=LedgerClient(None),
            provider=ProviderClient(transport=httpx.MockTransport(backends), env={"KEY_A": SECRET}),
            audit=AuditLog(str(tmp_path / "audit.jsonl")),
            env={},
            watch_apps=False,
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


def audit_lines(tmp_path: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


BODY = {"model": "ep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_fallback_on_error_and_provider_model_and_key(
    backends: Backends, make_router: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backends.handlers["a"] = lambda r: httpx.Response(500, json={"error": {"message": "boom"}})
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b-model"))
    _, client = make_router(config(["a", "b"]))
    with caplog.at_level(logging.DEBUG):
        r = await client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200
    assert r.json()["model"] == "b" and r.headers["x-tokenyard-target"] == "b"
    sent = [json.loads(c.content) for c in backends.calls]
    assert [s["model"] for s in sent] == ["a-model", "b-model"]
    assert all(c.headers["authorization"] == f"Bearer {SECRET}" for c in backends.calls)
    line = audit_lines(tmp_path)[-1]
    assert line["fallbacks"][0]["target"] == "a" and line["fallbacks"][0]["reason"] == "Error"
    assert line["cost_usd"] == pytest.approx(5 * 2.0 / 1e6)
    assert SECRET not in caplog.text and SECRET not in (tmp_path / "audit.jsonl").read_text()


async def test_backend_4xx_is_passed_through_without_fallback(
    backends: Backends, make_router: Any
) -> None:
    backends.handlers["a"] = lambda r: httpx.Response(
        400, json={"error": {"message": "too long", "type": "invalid_request_error"}}
    )
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    _, client = make_router(config(["a", "b"]))
    r = await client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 400 and r.json()["error"]["message"] == "too long"
    assert backends.hits("b") == 0


async def test_per_attempt_timeout_falls_back(backends: Backends, make_router: Any) -> None:
    async def slow(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=completion("a"))

    backends.handlers["a"] = slow
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    _, client = make_router(config(["a", "b"], fallback={"perAttemptTimeoutSeconds": 0.2}))
    r = await client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200 and r.json()["model"] == "b"


async def test_all_targets_down_is_503_with_retry_after(
    backends: Backends, make_router: Any
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    backends.handlers["a"] = refuse
    backends.handlers["b"] = refuse
    _, client = make_router(config(["a", "b"]))
    r = await client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_backend_available"
    assert int(r.headers["retry-after"]) >= 1


async def test_circuit_breaker_stops_calling_a_dead_backend(
    backends: Backends, make_router: Any
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    backends.handlers["a"] = refuse
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    cfg = config(
        ["a", "b"],
        fallback={"circuitBreaker": {"failureThreshold": 2, "cooldownSeconds": 600}},
    )
    _, client = make_router(cfg)
    for _ in range(5):
        r = await client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 200 and r.json()["model"] == "b"
    assert backends.hits("a") == 2
    metrics = (await client.get("/metrics")).text
    assert 'tokenyard_circuit_state{target="a"} 2.0' in metrics


async def test_stream_broken_after_first_chunk_is_not_retried(
    backends: Backends, make_router: Any, tmp_path: Any
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield chunk("Hel")
        raise httpx.ReadError("connection reset")

    backends.handlers["a"] = lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=_Stream(broken())
    )
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    _, client = make_router(config(["a", "b"]))
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hel"
    assert json.loads(events[1])["error"]["code"] == "stream_interrupted"
    assert events[-1] == "[DONE]"
    assert backends.hits("b") == 0
    assert audit_lines(tmp_path)[-1]["status"] == 502


async def test_stream_requests_usage_but_strips_it_unless_asked(
    backends: Backends, make_router: Any
) -> None:
    usage = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    async def ok() -> AsyncIterator[bytes]:
        yield chunk("Hi")
        yield b"data: " + json.dumps(usage).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream_options"] == {"include_usage": True}
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Stream(ok())
        )

    backends.handlers["a"] = handler
    _, client = make_router(config(["a"]))
    plain = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert '"usage"' not in plain.text and plain.text.endswith("data: [DONE]\n\n")
    asked = await client.post(
        "/v1/chat/completions",
        json={**BODY, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert '"completion_tokens":1' in asked.text


async def test_reconfigure_keeps_requests_in_flight(backends: Backends, make_router: Any) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def held(_: httpx.Request) -> httpx.Response:
        started.set()
        await release.wait()
        return httpx.Response(200, json=completion("a"))

    backends.handlers["a"] = held
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    core, client = make_router(config(["a"]))
    in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=BODY))
    await started.wait()
    core.apply_config(config(["b"]))  # the endpoint now routes to b only
    release.set()
    r = await in_flight
    assert r.status_code == 200 and r.json()["model"] == "a"
    assert (await client.post("/v1/chat/completions", json=BODY)).json()["model"] == "b"
    assert core.state.version == 2


async def test_models_health_and_unknown_route(make_router: Any) -> None:
    _, client = make_router(config(["a", "b"]))
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["ep", "a", "b"]
    assert (await client.get("/healthz")).json()["endpoints"] == ["ep"]
    assert (await client.get("/nope")).status_code == 404


async def test_stats_count_requests_fallbacks_targets_and_spend(
    backends: Backends, make_router: Any
) -> None:
    backends.handlers["a"] = lambda r: httpx.Response(500, json={"error": {"message": "boom"}})
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    star = [{"tenant": "*", "limitUSD": 1.0, "window": "60m"}]
    _, client = make_router(config(["a", "b"], budgets=star))
    empty = (await client.get("/v1/tokenyard/stats")).json()
    assert empty["endpoints"]["ep"]["requests"] == 0 and set(empty["endpoints"]) == {"ep"}

    seen = [(await client.post("/v1/chat/completions", json=BODY)).headers["x-tokenyard-target"]]
    backends.handlers["a"] = lambda r: httpx.Response(200, json=completion("a"))
    seen.append(
        (await client.post("/v1/chat/completions", json=BODY)).headers["x-tokenyard-target"]
    )
    direct = await client.post("/v1/chat/completions", json={**BODY, "model": "b"})
    assert direct.status_code == 200
    assert (
        await client.post("/v1/chat/completions", json={**BODY, "model": "x"})
    ).status_code == 404

    r = await client.get("/v1/tokenyard/stats")
    assert r.status_code == 200
    doc = r.json()
    assert (doc["pool"], doc["namespace"]) == ("p", "ns")
    assert doc["generatedAt"].endswith("Z")
    ep = doc["endpoints"]["ep"]
    assert seen == ["b", "a"]
    assert (ep["requests"], ep["fallbacks"]) == (2, 1)
    assert ep["byTarget"] == ep["recent"]["byTarget"] == {"a": 1, "b": 1}
    assert ep["spendWindow"] == "60m"
    # The model called by name spends its policy's budget: counted in ep's spend.
    assert ep["spendUSD"] == pytest.approx(2 * 5 * 2.0 / 1e6 + 5 * 1.0 / 1e6)
    # A model called by name is its own endpoint for traffic; unknown names are not.
    assert set(doc["endpoints"]) == {"ep", "b"}
    assert doc["endpoints"]["b"]["byTarget"] == {"b": 1}


ADMIN_TOKEN = "a-40-character-admin-token-for-the-router"


@pytest.mark.parametrize("path", ["/metrics", "/v1/tokenyard/stats"])
async def test_admin_endpoints_need_the_bearer_token_whose_hash_is_configured(
    make_router: Any, path: str
) -> None:
    _, client = make_router(
        config(["a", "b"], budgets=[{"tenant": "*", "limitUSD": 1.0, "window": "60m"}]),
        admin_token_sha256=admin_token_sha256(ADMIN_TOKEN),
    )
    refused = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {admin_token_sha256(ADMIN_TOKEN)}"},  # the hash itself
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    ]
    bodies = []
    for headers in refused:
        r = await client.get(path, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
        err = r.json()["error"]
        assert err["type"] == "authentication_error"
        bodies.append(err)
    # The same answer whatever was sent: it tells nothing about the token.
    assert all(b == bodies[0] for b in bodies)
    ok = await client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200
    assert ok.content and ADMIN_TOKEN.encode() not in ok.content
    # The OpenAI listing and health stay open (OpenAI clients list models unauthenticated).
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/v1/tokenyard/stats"])
async def test_admin_endpoints_are_open_without_a_configured_token(
    make_router: Any, path: str
) -> None:
    _, client = make_router(config(["a", "b"]))
    assert (await client.get(path)).status_code == 200
    assert (await client.get(path, headers={"Authorization": "Bearer x"})).status_code == 200


def test_audit_logger_writes_one_json_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenyard.accounting.audit import AuditRecord

    log = AuditLog(str(tmp_path / "a.jsonl"))
    log.write(AuditRecord(time=0.0, request_id="r", tenant="t", endpoint="e", kind="chat",
                          status=200, latency_ms=1.0))  # fmt: skip
    log.close()
    out = capsys.readouterr().out.strip()
    assert json.loads(out)["time"] == "1970-01-01T00:00:00.000+00:00"
    assert json.loads((tmp_path / "a.jsonl").read_text())["request_id"] == "r"
    assert logging.getLogger(AUDIT_LOGGER).propagate is False


class _Stream(httpx.AsyncByteStream):
    def __init__(self, it: AsyncIterator[bytes]) -> None:
        self._it = it

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for b in self._it:
            yield b


# -- spill-over ------------------------------------------------------------------------

NOW = 1_700_000_000.0
# The estimate the router makes of BODY's prompt (what the queue clock counts).
PROMPT = parse_request(BODY, {}, "chat").prompt_tokens
# economy prefills 4 of these prompts a second: each one queued adds 0.25 s, so with a
# TTFT SLO of 1.1 s it takes 4 at once (0.25 .. 1.0 s) and the 5th would wait 1.25 s.
ECONOMY_TPS = 4.0 * PROMPT


class HeldModel:
    """An in-cluster model (a Ray Serve handle in production) that answers only when
    released, so requests pile up in flight; optionally fails instead."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.release = asyncio.Event()
        self.failure: BaseException | None = None
        self.between_chunks: Callable[[], None] | None = None

    async def complete(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> dict[str, Any]:
        self.calls += 1
        await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return completion(self.name)

    async def stream(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls += 1
        await self.release.wait()
        if self.failure is not None:
            raise self.failure
        yield json.loads(chunk("Hel").removeprefix(b"data: "))
        if self.between_chunks is not None:
            self.between_chunks()
        yield json.loads(chunk("lo").removeprefix(b"data: "))


def held_models(*models: HeldModel) -> BackendFactory:
    """The backend seam: these fakes for the in-cluster models, providers as usual."""
    fakes = {m.name: m for m in models}

    def make(
        entries: Mapping[str, CatalogueEntry],
        client: ProviderClient,
        previous: Mapping[str, Backend] | None,
    ) -> Mapping[str, Backend]:
        external = {n: e for n, e in entries.items() if n not in fakes}
        out: dict[str, Backend] = dict(build_backends(external, client, previous))
        out.update({n: m for n, m in fakes.items() if n in entries})
        return out

    return make


def in_cluster(name: str, quality: float, price: float, tps: float, slo: float) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="InCluster",
        quality=quality,
        inputPer1M=price,
        outputPer1M=price,
        app=f"model-{name}",
        deployment="LLMServer",
        replicas=1,
        tokensPerSecond=tps,
        ttftSLOSeconds=slo,
    )


def spill_config(router_replicas: int = 1, **spec: Any) -> RouterConfig:
    """economy (slow), then an external provider, then frontier (fast), in that order."""
    policy = RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "targets": [{"model": "economy"}, {"model": "b"}, {"model": "frontier"}],
            "strategy": "Ordered",
            "egress": {"defaultDataClass": "public"},
            **spec,
        }
    )
    return RouterConfig(
        pool="p",
        namespace="ns",
        models=[
            in_cluster("economy", 0.3, 0.1, ECONOMY_TPS, 1.1),
            entry("b", 2.0),  # external, quality 1: never a spill-over target
            in_cluster("frontier", 1.0, 5.0, 1000.0 * PROMPT, 2.0),
        ],
        policies=[PolicyEntry(name="ep", namespace="ns", endpoint="ep", spec=policy.dump())],
        routerReplicas=router_replicas,
    )


async def all_sent(*models: HeldModel, n: int) -> None:
    """Wait (bounded) until the fakes have received ``n`` calls in all."""
    for _ in range(1000):
        if sum(m.calls for m in models) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {sum(m.calls for m in models)} of {n} requests arrived")


@pytest.fixture
def models() -> tuple[HeldModel, HeldModel]:
    return HeldModel("economy"), HeldModel("frontier")


async def test_a_saturated_model_spills_later_requests_to_the_better_one(
    backends: Backends, make_router: Any, tmp_path: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    core, client = make_router(
        spill_config(), backend_factory=held_models(economy, frontier), clock=lambda: NOW
    )
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(10)]
    await all_sent(economy, frontier, n=10)
    # economy took what it can start within its SLO; the rest went to frontier, passing
    # over the external target b.
    assert (economy.calls, frontier.calls, backends.hits("b")) == (4, 6, 0)
    assert (core.load.in_flight("economy"), core.load.in_flight("frontier")) == (4, 6)

    economy.release.set()
    frontier.release.set()
    answers = await asyncio.gather(*posts)
    assert all(r.status_code == 200 for r in answers)
    served = sorted(r.headers["x-tokenyard-target"] for r in answers)
    assert served == ["economy"] * 4 + ["frontier"] * 6
    # Every attempt started: nothing in flight, no queue left behind.
    assert (core.load.in_flight("economy"), core.load.in_flight("frontier")) == (0, 0)
    assert core.load.backlog_s("economy", NOW) == 0.0

    metrics = (await client.get("/metrics")).text
    assert (
        'tokenyard_spillovers_total{endpoint="ep",from_target="economy",to_target="frontier"} 6.0'
        in metrics
    )
    lines = audit_lines(tmp_path)
    spilled = [x for x in lines if x["spilled_from"] == "economy"]
    assert len(spilled) == 6 and {x["target"] for x in spilled} == {"frontier"}
    assert all("spill-over: economy expected TTFT" in x["reason"] for x in spilled)
    # Charged at the price of the model that served (frontier, 5 $/1M), 3 + 2 tokens.
    assert [x["cost_usd"] for x in spilled] == [pytest.approx(5 * 5.0 / 1e6)] * 6
    kept = [x for x in lines if x["spilled_from"] is None]
    assert {x["target"] for x in kept} == {"economy"}
    assert [x["cost_usd"] for x in kept] == [pytest.approx(5 * 0.1 / 1e6)] * 4

    # With the queue drained economy is first again.
    assert (await client.post("/v1/chat/completions", json=BODY)).json()["model"] == "economy"


async def test_spillover_disabled_keeps_the_policys_order(
    backends: Backends, make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    core, client = make_router(
        spill_config(spillover={"enabled": False}),
        backend_factory=held_models(economy, frontier),
        clock=lambda: NOW,
    )
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(8)]
    await all_sent(economy, frontier, n=8)
    assert (economy.calls, frontier.calls) == (8, 0)
    # The load is still counted: another endpoint on the same model may spill.
    assert core.load.in_flight("economy") == 8
    economy.release.set()
    await asyncio.gather(*posts)
    assert core.load.in_flight("economy") == 0


async def test_router_replicas_share_the_load_and_a_new_config_keeps_it(
    make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    # Two router replicas: each request seen here stands for two, so economy takes 2.
    core, client = make_router(
        spill_config(router_replicas=2),
        backend_factory=held_models(economy, frontier),
        clock=lambda: NOW,
    )
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(4)]
    await all_sent(economy, frontier, n=4)
    assert (economy.calls, frontier.calls) == (2, 2)
    assert core._limiters["ep"].share == 0.5  # rate limits are the pool's too
    # A config change (a RoutingPolicy edit, a scale) keeps what is in flight.
    core.apply_config(spill_config(router_replicas=1))
    assert core.load.share == 1.0
    assert core._limiters["ep"].share == 1.0
    assert core.load.in_flight("economy") == 2
    economy.release.set()
    frontier.release.set()
    await asyncio.gather(*posts)
    assert core.load.in_flight("economy") == core.load.in_flight("frontier") == 0


async def test_a_stream_leaves_the_queue_at_its_first_chunk(
    make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    core, client = make_router(spill_config(), backend_factory=held_models(economy, frontier))
    seen: list[int] = []
    economy.between_chunks = lambda: seen.append(core.load.in_flight("economy"))
    post = asyncio.create_task(client.post("/v1/chat/completions", json={**BODY, "stream": True}))
    await all_sent(economy, n=1)
    assert core.load.in_flight("economy") == 1  # waiting for its first token
    economy.release.set()
    r = await post
    assert r.status_code == 200 and '"content":"lo"' in r.text
    # Counted as started once the first chunk came, while the answer still streamed.
    assert seen == [0]
    assert core.load.in_flight("economy") == 0


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_failed_and_timed_out_attempts_leave_nothing_in_flight(
    backends: Backends, make_router: Any, models: tuple[HeldModel, HeldModel], stream: bool
) -> None:
    economy, frontier = models
    economy.failure = BackendFailure("economy: engine died", kind="Error")
    economy.release.set()  # frontier is never released: it times out

    async def one_chunk() -> AsyncIterator[bytes]:
        yield chunk("ok")
        yield b"data: [DONE]\n\n"

    def answer(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            sse = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=sse, stream=_Stream(one_chunk()))
        return httpx.Response(200, json=completion("b"))

    backends.handlers["b"] = answer
    core, client = make_router(
        spill_config(fallback={"perAttemptTimeoutSeconds": 0.2, "maxAttempts": 3}),
        backend_factory=held_models(economy, frontier),
    )
    # economy fails, b (external) answers.
    r = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
    assert r.status_code == 200 and r.headers["x-tokenyard-target"] == "b"
    assert core.load.in_flight("economy") == 0
    # Direct to frontier, which times out.
    r = await client.post(
        "/v1/chat/completions", json={**BODY, "model": "frontier", "stream": stream}
    )
    assert r.status_code == 504
    assert frontier.calls == 1 and core.load.in_flight("frontier") == 0


async def test_a_cancelled_request_leaves_nothing_in_flight(
    make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    core, client = make_router(spill_config(), backend_factory=held_models(economy, frontier))
    for body in (BODY, {**BODY, "stream": True}):
        post = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await all_sent(economy, n=economy.calls + 1)
        assert core.load.in_flight("economy") == 1
        post.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await post
        assert core.load.in_flight("economy") == 0


async def test_explain_shows_the_spillover_the_live_load_would_cause(
    make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    core, client = make_router(
        spill_config(), backend_factory=held_models(economy, frontier), clock=lambda: NOW
    )
    idle = (await client.post("/v1/tokenyard/explain", json=BODY)).json()
    assert [t["model"] for t in idle["targets"]] == ["economy", "b", "frontier"]
    assert "spilledFrom" not in idle

    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(4)]
    await all_sent(economy, n=4)
    busy = (await client.post("/v1/tokenyard/explain", json=BODY)).json()
    assert [t["model"] for t in busy["targets"]] == ["frontier", "economy", "b"]
    assert busy["spilledFrom"] == "economy"
    assert "spill-over: economy expected TTFT 1.2s > 1 x SLO 1.1s" in busy["targets"][0]["reason"]
    # Explaining sends nothing: the load is unchanged.
    assert core.load.in_flight("economy") == 4 and core.load.in_flight("frontier") == 0
    economy.release.set()
    await asyncio.gather(*posts)


def test_running_replicas_come_from_serve_status(make_router: Any) -> None:
    from types import SimpleNamespace

    from ray.serve._private.common import ReplicaState

    from tokenyard.serving.router import running_replicas

    app = SimpleNamespace(
        deployments={
            "LLMServer": SimpleNamespace(
                replica_states={ReplicaState.RUNNING: 3, ReplicaState.STARTING: 2}
            )
        }
    )
    assert running_replicas(app) == 3
    assert running_replicas(SimpleNamespace(deployments={})) == 0
    core, _ = make_router(spill_config())
    assert core.live_replicas() is None  # the watch has not read Serve yet: the catalogue's
    core.note_running({"model-economy": 3, "model-other": 1})
    # By model name, only for the catalogue's in-cluster models.
    assert core.live_replicas() == {"economy": 3}
    core.note_running({"model-economy": 2})  # the next read: mapped again, not cached
    assert core.live_replicas() == {"economy": 2}


async def test_a_model_whose_replicas_are_starting_takes_no_spillover(
    make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    economy, frontier = models
    core, client = make_router(
        spill_config(), backend_factory=held_models(economy, frontier), clock=lambda: NOW
    )
    # Ray Serve reports frontier's replica still starting: economy queues instead.
    core.note_running({"model-economy": 1, "model-frontier": 0})
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(6)]
    await all_sent(economy, frontier, n=6)
    assert (economy.calls, frontier.calls) == (6, 0)
    economy.release.set()
    await asyncio.gather(*posts)


def test_a_model_called_by_name_uses_its_owner_policy_s_tenant_keys() -> None:
    from tokenyard.serving.router import build_state

    spec = RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": "a"}], "egress": {"defaultDataClass": "public"}}
    )
    cfg = RouterConfig(
        pool="p",
        namespace="ns",
        models=[entry("a", 1.0), entry("b", 2.0)],
        policies=[
            PolicyEntry(name="ep", namespace="ns", endpoint="ep", spec=spec.dump(),
                        tenantKeysEnv="KEYS_EP"),
            # Named like model b but not listing it: b's direct endpoint is not its.
            PolicyEntry(name="b", namespace="ns", endpoint="other", spec=spec.dump(),
                        tenantKeysEnv="KEYS_B"),
        ],
    )  # fmt: skip
    env = {"KEYS_EP": "sk-1: team-a", "KEYS_B": "sk-2: team-b"}
    state = build_state(cfg, None, None, env, make_backends=lambda c, p, prev: {})  # type: ignore[arg-type]
    assert state.direct["a"].name == "ep" and state.direct["a"].api_keys == {"sk-1": "team-a"}
    assert state.direct["b"].name == "b" and state.direct["b"].api_keys == {}
    assert [t.model for t in state.direct["a"].spec.targets] == ["a"]


async def test_each_replica_takes_its_share_from_the_router_s_running_replicas(
    backends: Backends, make_router: Any
) -> None:
    backends.handlers["a"] = lambda r: httpx.Response(200, json=completion("a-model"))
    cfg = config(["a"], rateLimits=[{"tenant": "*", "requestsPerMinute": 4}])
    assert cfg.routerReplicas == 1
    core, client = make_router(cfg, clock=lambda: NOW)
    assert core.share == 1.0  # spec.router.minReplicas until the status watch counts
    # Ray Serve scaled the router to two replicas: each takes half of the pool's limit.
    core.note_running({"tokenyard-router": 2, "model-a": 5})
    assert core.share == 0.5 and core.load.share == 0.5
    codes = [(await client.post("/v1/chat/completions", json=BODY)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    # A read without the router's count (or a new config) keeps what was counted.
    core.note_running({"model-a": 5})
    core.apply_config(cfg)
    assert core.share == 0.5
    # Back to one replica: the bucket grows to the whole limit, keeping what was used.
    core.note_running({"tokenyard-router": 1})
    assert core.share == 1.0 and core.load.share == 1.0
    codes = [(await client.post("/v1/chat/completions", json=BODY)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_the_share_counts_this_router_s_own_application_only(make_router: Any) -> None:
    core, _ = make_router(config(["a"]), app_name="router-two")
    core.note_running({"tokenyard-router": 4, "router-two": 2})
    assert core.share == 0.5


async def test_a_capped_saturated_model_downgrades_when_the_policy_allows(
    make_router: Any, tmp_path: Any
) -> None:
    economy, tiny = HeldModel("economy"), HeldModel("tiny")
    policy = RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "targets": [{"model": "economy"}, {"model": "tiny"}],
            "strategy": "Ordered",
            "egress": {"defaultDataClass": "public"},
            "spillover": {"downgradeWhenCapped": True},
        }
    )
    capped = in_cluster("economy", 0.3, 0.1, ECONOMY_TPS, 1.1).model_copy(
        update={"capped": "GPUCapped"}
    )
    cfg = RouterConfig(
        pool="p",
        namespace="ns",
        models=[capped, in_cluster("tiny", 0.1, 0.01, 1000.0 * PROMPT, 2.0)],
        policies=[PolicyEntry(name="ep", namespace="ns", endpoint="ep", spec=policy.dump())],
    )
    core, client = make_router(cfg, backend_factory=held_models(economy, tiny), clock=lambda: NOW)
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(10)]
    await all_sent(economy, tiny, n=10)
    # economy keeps what it starts within its SLO; being capped, the rest go to tiny.
    assert (economy.calls, tiny.calls) == (4, 6)
    economy.release.set()
    tiny.release.set()
    answers = await asyncio.gather(*posts)
    assert all(r.status_code == 200 for r in answers)
    lines = audit_lines(tmp_path)
    downgraded = [x for x in lines if x.get("capacity_downgrade")]
    assert len(downgraded) == 6 and {x["spilled_from"] for x in downgraded} == {"economy"}
    registry = core.metrics.registry
    labels = {"endpoint": "ep", "from_target": "economy", "to_target": "tiny"}
    assert registry.get_sample_value("tokenyard_capacity_downgrades_total", labels) == 6
    assert registry.get_sample_value("tokenyard_spillovers_total", labels) is None
    # Once the autoscaler lifts the cap, the same load queues on economy instead.
    core.apply_config(
        cfg.model_copy(
            update={"models": [capped.model_copy(update={"capped": None}), cfg.models[1]]}
        )
    )
    economy.release.clear()
    more = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(6)]
    await all_sent(economy, tiny, n=16)
    assert (economy.calls, tiny.calls) == (10, 6)
    economy.release.set()
    await asyncio.gather(*more)


async def test_baseline_cost_prices_the_same_tokens_on_the_strongest_target(
    backends: Backends, make_router: Any, tmp_path: Any
) -> None:
    backends.handlers["a"] = lambda r: httpx.Response(200, json=completion("a"))
    cfg = config(["a", "b"])
    cfg.models = [entry("a", 1.0, quality=0.5), entry("b", 3.0, quality=0.9)]
    _, client = make_router(cfg)
    r = await client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 200 and r.headers["x-tokenyard-target"] == "a"
    line = audit_lines(tmp_path)[-1]
    assert line["baseline_target"] == "b"
    assert line["cost_usd"] == pytest.approx(5 * 1.0 / 1e6)
    assert line["baseline_cost_usd"] == pytest.approx(5 * 3.0 / 1e6)
    text = (await client.get("/metrics")).text
    series = 'tokenyard_baseline_cost_usd_total{baseline_target="b",endpoint="ep",tenant="default"}'
    assert f"{series} 1.5e-05" in text


# vLLM's refusal of a prompt longer than the model's context (vllm/renderers/params.py).
VLLM_TOO_LONG = (
    "This model's maximum context length is {n} tokens. However, your prompt contains "
    "{m} input tokens, which exceeds this limit even without any output tokens. "
    "Please reduce the length of the input prompt."
)


def engine_too_long(n: int, m: int = 513) -> Handler:
    body = {
        "error": {
            "message": VLLM_TOO_LONG.format(n=n, m=m),
            "type": "BadRequestError",
            "param": "input_tokens",
            "code": 400,
        }
    }
    return lambda r: httpx.Response(400, json=body)


def context_config(lens: dict[str, int | None], **spec: Any) -> RouterConfig:
    cfg = config(list(lens), **spec)
    models = []
    for name, n in lens.items():
        m = entry(name, 1.0)
        m.maxModelLen = n
        models.append(m)
    return cfg.model_copy(update={"models": models})


async def test_context_refusal_moves_on_to_a_longer_context_target(
    backends: Backends, make_router: Any, tmp_path: Any
) -> None:
    """An engine's context-length 400 is not passed through: the router skips targets no
    longer than the one that refused and sends the request to a longer one, even when
    retryOn does not list it."""
    backends.handlers["a"] = engine_too_long(512)

    def answer(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            sse = chunk("ok") + b"data: [DONE]\n\n"
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse)
        return httpx.Response(200, json=completion("c"))

    backends.handlers["b"] = answer
    backends.handlers["c"] = answer
    cfg = context_config({"a": 512, "b": 512, "c": 4096}, fallback={"retryOn": ["Timeout"]})
    _, client = make_router(cfg)
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
        assert r.status_code == 200 and r.headers["x-tokenyard-target"] == "c"
        line = audit_lines(tmp_path)[-1]
        assert [(f["target"], f["reason"]) for f in line["fallbacks"]] == [
            ("a", "ContextLength"),
            ("b", "ContextLength"),
        ]
    assert backends.hits("b") == 0


async def test_context_refusal_with_no_longer_target_is_413(
    backends: Backends, make_router: Any
) -> None:
    backends.handlers["a"] = engine_too_long(512)
    backends.handlers["b"] = engine_too_long(1024, 1030)
    backends.handlers["c"] = lambda r: httpx.Response(200, json=completion("c"))
    _, client = make_router(context_config({"a": 512, "b": 1024, "c": 1024}))
    r = await client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    assert "longest context tried: 1024 tokens, b" in err["message"]
    assert "maximum context length 512 tokens, request 513 tokens" in err["message"]
    assert backends.hits("c") == 0


async def test_context_refusals_leave_the_circuit_closed(
    backends: Backends, make_router: Any
) -> None:
    backends.handlers["a"] = engine_too_long(512)
    backends.handlers["b"] = lambda r: httpx.Response(200, json=completion("b"))
    cfg = context_config(
        {"a": 512, "b": 4096},
        fallback={"circuitBreaker": {"failureThreshold": 2, "cooldownSeconds": 600}},
    )
    _, client = make_router(cfg)
    for _ in range(5):
        r = await client.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 200 and r.headers["x-tokenyard-target"] == "b"
    assert backends.hits("a") == 5  # never skipped as an open circuit
    metrics = (await client.get("/metrics")).text
    assert 'tokenyard_circuit_state{target="a"} 0.0' in metrics


async def test_a_lora_adapter_and_its_base_model_share_one_queue(
    backends: Backends, make_router: Any, models: tuple[HeldModel, HeldModel]
) -> None:
    # Issue 14: requests called by a LoRA adapter's name run on its base model's
    # replicas, so they fill the base model's queue: once the adapter's calls hold the
    # replicas, the base model's own endpoint spills over to frontier.
    economy, frontier = models
    sql = HeldModel("economy:sql")
    cfg = spill_config()
    base = next(m for m in cfg.models if m.name == "economy")
    adapter = base.model_copy(
        update={"name": "economy:sql", "servedModelName": "sql", "adapterOf": "economy"}
    )
    cfg = cfg.model_copy(update={"models": [*cfg.models, adapter]})
    core, client = make_router(
        cfg, backend_factory=held_models(economy, frontier, sql), clock=lambda: NOW
    )
    by_name = {**BODY, "model": "sql"}
    held = [
        asyncio.create_task(client.post("/v1/chat/completions", json=by_name)) for _ in range(4)
    ]
    await all_sent(sql, n=4)
    assert core.load.in_flight("economy") == 4 and core.load.in_flight("economy:sql") == 0
    posts = [asyncio.create_task(client.post("/v1/chat/completions", json=BODY)) for _ in range(2)]
    await all_sent(economy, frontier, n=2)
    assert (economy.calls, frontier.calls) == (0, 2)
    for m in (sql, economy, frontier):
        m.release.set()
    answers = await asyncio.gather(*held, *posts)
    assert [r.status_code for r in answers] == [200] * 6
    assert core.load.in_flight("economy") == 0
