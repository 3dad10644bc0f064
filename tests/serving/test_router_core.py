"""The router's request handling without Ray: RouterCore over ASGI, providers faked with
httpx.MockTransport. Covers what the real-engine tests cannot provoke on demand: a
stream that breaks after its first chunk, timeouts, the circuit breaker, a config swap
under a request in flight, and that provider keys are sent but never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="needs the serving extra (ray[serve])")

from starlette.applications import Starlette
from starlette.routing import Route

from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.serving.audit import AUDIT_LOGGER, AuditLog
from tokenyard.serving.contract import (
    CatalogueEntry,
    ExternalEndpoint,
    PolicyEntry,
    RouterAppArgs,
    RouterConfig,
)
from tokenyard.serving.ledger_actor import LedgerClient
from tokenyard.serving.providers import ProviderClient
from tokenyard.serving.router_app import RouterCore

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


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


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
) -> AsyncIterator[Callable[[RouterConfig], tuple[RouterCore, httpx.AsyncClient]]]:
    made: list[tuple[RouterCore, httpx.AsyncClient]] = []

    def make(cfg: RouterConfig) -> tuple[RouterCore, httpx.AsyncClient]:
        core = RouterCore(
            RouterAppArgs(pool="p", namespace="ns", auditPath=str(tmp_path / "audit.jsonl")),
            ledger=LedgerClient(None),
            provider=ProviderClient(transport=httpx.MockTransport(backends), env={"KEY_A": SECRET}),
            audit=AuditLog(str(tmp_path / "audit.jsonl")),
            env={},
            watch_apps=False,
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
    assert ep["spendUSD"] == pytest.approx(5 * 2.0 / 1e6 + 5 * 1.0 / 1e6)
    # A model called by name is its own endpoint; unknown names are not counted.
    assert set(doc["endpoints"]) == {"ep", "b"}
    assert doc["endpoints"]["b"]["byTarget"] == {"b": 1}


def test_audit_logger_writes_one_json_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenyard.serving.audit import AuditRecord

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
