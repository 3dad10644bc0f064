"""The router under hostile but fair traffic (issue 16), over ASGI in process.

Providers are faked with httpx.MockTransport (they count what reaches them); the router
is the real :class:`RouterCore`. Covers: no input gets a 5xx (a seeded fuzz of 2,400
request bodies and headers), malformed bodies never reach a backend, a backend's 4xx
never opens a circuit, echoed names are truncated, budgets hold under concurrency and
whatever name reaches the model, a refused request charges nothing, a keyed tenant
cannot be locked out from an open endpoint, abandoned requests are audited and charged.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="needs the serving extra (ray[serve])")

from starlette.applications import Starlette
from starlette.routing import Route
from tests.serving.fakes import completion as fake_completion
from tests.serving.fuzz import case
from tests.unit.accounting.inline_actor import InlineHandle

from tokenyard.accounting.audit import AuditLog
from tokenyard.accounting.ledger_actor import LedgerActor, LedgerClient
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import (
    CatalogueEntry,
    ExternalEndpoint,
    PolicyEntry,
    RouterAppArgs,
    RouterConfig,
)
from tokenyard.routing.request import decode_body
from tokenyard.serving.providers import ProviderClient
from tokenyard.serving.router import RouterCore

pytestmark = pytest.mark.timeout(120)

PRICE = 100.0  # USD per 1M tokens, in and out
ANSWER_USAGE = (3, 2)  # tokens the fake provider reports per answer


def entry(name: str, context: int = 4096) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="External",
        quality=1.0,
        inputPer1M=PRICE,
        outputPer1M=PRICE,
        maxModelLen=context,
        dataClasses=["public"],
        external=ExternalEndpoint(
            baseURL=f"http://{name}.test/v1", providerModel=f"{name}-model", apiKeyEnv="KEY"
        ),
    )


def config(targets: list[str], max_request_bytes: int = 1 << 20, **spec: Any) -> RouterConfig:
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
        models=[entry("a"), entry("b")],
        policies=[PolicyEntry(name="ep", namespace="ns", endpoint="ep", spec=policy.dump())],
        maxRequestBytes=max_request_bytes,
    )


def completion(model: str) -> dict[str, Any]:
    return fake_completion(model, *ANSWER_USAGE)


class Provider:
    """Fake providers by host; records every body that reached one."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.delay = 0.0
        self.status = 200

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "bad request"}})
        answer = completion(request.url.host)
        if json.loads(request.content).get("stream"):
            answer["choices"][0]["delta"] = answer["choices"][0].pop("message")
            sse = f"data: {json.dumps(answer)}\n\ndata: [DONE]\n\n"
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=answer)


@pytest.fixture
def provider() -> Provider:
    return Provider()


Make = Callable[..., tuple[RouterCore, httpx.AsyncClient]]


@pytest.fixture
async def make_router(provider: Provider, tmp_path: Any) -> AsyncIterator[Make]:
    made: list[tuple[RouterCore, httpx.AsyncClient]] = []

    def make(
        cfg: RouterConfig, env: dict[str, str] | None = None, ledger: LedgerClient | None = None
    ) -> tuple[RouterCore, Any]:
        core = RouterCore(
            RouterAppArgs(pool="p", namespace="ns"),
            ledger=ledger or LedgerClient(None),
            provider=ProviderClient(transport=httpx.MockTransport(provider), env={"KEY": "k"}),
            audit=AuditLog(str(tmp_path / "audit.jsonl")),
            env=env or {},
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
    path = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# -- section 4: no input gets a 5xx -------------------------------------------------------

FUZZ_CASES = 2400


async def test_fuzz_no_input_gets_a_5xx(
    provider: Provider, make_router: Make, tmp_path: Any
) -> None:
    rng = random.Random(16)
    _, client = make_router(config(["a", "b"]))
    statuses: dict[int, int] = {}
    five_xx: list[str] = []
    oversized: list[str] = []
    for _ in range(FUZZ_CASES):
        path, raw, hdrs = case(rng)
        try:
            r = await client.post(path, content=raw, headers=hdrs)
        except Exception as exc:  # the app raised: the client would see no answer or a 500
            five_xx.append(f"no answer {path} {raw[:300]!r}: {exc!r}"[:500])
            continue
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            five_xx.append(f"{r.status_code} {path} {raw[:300]!r} -> {r.text[:200]}")
        elif r.status_code >= 400:
            assert isinstance(r.json()["error"]["message"], str)
            if len(r.content) > 4096:
                oversized.append(f"{r.status_code} {path}: {len(r.content)} bytes")
    print(f"fuzz: {FUZZ_CASES} cases, statuses {sorted(statuses.items())}, 5xx {len(five_xx)}")
    assert not five_xx, "\n".join(five_xx[:20])
    assert not oversized, "\n".join(oversized[:20])
    # Whatever the router forwarded is strict JSON a backend parser accepts.
    for sent in provider.bodies:
        decode_body(sent)
    assert (await client.get("/healthz")).status_code == 200
    assert all(len(json.dumps(line)) < 8192 for line in audit_lines(tmp_path))


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (
            b'{"model": "ep", "messages": [{"role": "user", "content": "hi"}], '
            b'"max_tokens": 1e400}',
            None,
        ),
        (b'{"model": "ep", "messages": [{"role": "assistant", "content": "\\udfff"}]}', None),
        (
            b'{"model": "ep", "messages": [{"role": "user", "content": "hi"}], '
            b'"logit_bias": {"1": NaN}}',
            None,
        ),
        (
            b'{"model": "ep", "model": "ep", "messages": [{"role": "user", "content": "hi"}]}',
            "model",
        ),
        (
            b'{"model": "ep", "messages": [{"role": "user", "content": "hi"}], "metadata": '
            + b'{"k":' * 900
            + b'"v"'
            + b"}" * 901,
            None,
        ),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (
            b'{"model": "ep", "messages": [{"role": "user", "content": "hi", "tool_calls": 5}]}',
            "messages",
        ),
        (
            b'{"model": "ep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": '
            b"99999999999999}",
            "max_tokens",
        ),
    ],
)
async def test_malformed_bodies_are_400_and_never_reach_a_backend(
    provider: Provider, make_router: Make, raw: bytes, param: str | None
) -> None:
    _, client = make_router(config(["a"]))
    r = await client.post("/v1/chat/completions", content=raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert r.json()["error"]["param"] == param
    assert provider.bodies == []


async def test_body_over_the_limit_is_413_before_parsing(
    provider: Provider, make_router: Make
) -> None:
    _, client = make_router(config(["a"], max_request_bytes=4096))
    big = {"model": "ep", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = await client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: limit while reading
        for _ in range(10):
            yield b" " * 1000

    r = await client.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    assert provider.bodies == []


# -- section 5: one tenant's bad requests never take an endpoint down ---------------------

CHAT = {"model": "ep", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_bad_requests_never_open_a_circuit(provider: Provider, make_router: Make) -> None:
    cfg = config(["a", "b"], fallback={"circuitBreaker": {"failureThreshold": 2}})
    _, client = make_router(cfg)
    nan = b'{"model": "ep", "messages": [{"role": "user", "content": "hi"}], '
    for raw in [nan + b'"logit_bias": {"1": NaN}}', nan + b'"metadata": ' + b"[" * 900]:
        for _ in range(5):
            assert (await client.post("/v1/chat/completions", content=raw)).status_code == 400
    provider.status = 400  # the backend itself refuses what it is sent: the caller's fault
    for _ in range(5):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 400
    provider.status = 200
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.headers["x-tokenyard-target"] == "a"
    assert 'tokenyard_circuit_state{target="a"} 0.0' in (await client.get("/metrics")).text


async def test_an_unencodable_body_is_the_callers_fault(make_router: Make) -> None:
    from tokenyard.serving.backends import ExternalBackend

    core, _ = make_router(config(["a"]))
    backend = core.state.backends["a"]
    assert isinstance(backend, ExternalBackend)
    with pytest.raises(Exception) as info:
        await backend.complete("chat", {**CHAT, "logit_bias": {"1": float("nan")}}, 5.0)
    assert getattr(info.value, "kind", "?") is None and getattr(info.value, "status", 0) == 400


async def test_echoed_model_names_are_truncated(make_router: Make, tmp_path: Any) -> None:
    _, client = make_router(config(["a"]))
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "m" * 1_000_000})
    assert r.status_code == 404 and len(r.content) < 1024
    r = await client.post("/v1/chat/completions", json={**CHAT, "x" * 100_000: 1})
    assert r.status_code == 400 and len(r.content) < 1024
    assert all(len(json.dumps(line)) < 2048 for line in audit_lines(tmp_path))


# -- section 1: budgets hold under concurrency and whatever name reaches the model --------

ONE_REQUEST_USD = sum(ANSWER_USAGE) * PRICE / 1e6


def budget_config(limit_requests: int) -> RouterConfig:
    return config(
        ["a"],
        budgets=[
            {"tenant": "t1", "limitUSD": limit_requests * ONE_REQUEST_USD, "onExceeded": "Reject"}
        ],
    )


async def run_clients(
    client: httpx.AsyncClient, bodies: list[dict[str, Any]], clients: int, tenant: str = "t1"
) -> list[int]:
    queue = list(bodies)
    statuses: list[int] = []

    async def one() -> None:
        while queue:
            body = queue.pop()
            r = await client.post("/v1/chat/completions", json=body, headers={"x-tenant": tenant})
            statuses.append(r.status_code)

    await asyncio.gather(*(one() for _ in range(clients)))
    return statuses


async def test_budget_holds_under_32_concurrent_clients(
    provider: Provider, make_router: Make
) -> None:
    provider.delay = 0.05
    core, client = make_router(budget_config(10))
    # max_tokens 2: the estimate (prompt ~5 + 4 overhead + 2) is about twice the real cost.
    body = {**CHAT, "max_tokens": 2}
    statuses = await run_clients(client, [body] * 200, clients=32)
    served = statuses.count(200)
    spent = core.ledger.spend("t1", "ep", "24h", core.clock())
    limit = 10 * ONE_REQUEST_USD
    overspend = max(0.0, spent - limit) / ONE_REQUEST_USD
    print(
        f"budget: 200 requests, 32 clients, limit 10: served {served}, "
        f"spend {spent / limit:.0%} of the limit, overspend {overspend:.1f} requests"
    )
    assert statuses.count(429) == 200 - served
    # Before the first answer every client passed the check: 32 or more were served.
    assert served <= 11 and overspend <= 1
    assert core.ledger.reservations() == 0


async def test_budget_holds_across_two_router_replicas(
    provider: Provider, make_router: Make
) -> None:
    provider.delay = 0.3
    actor = InlineHandle(LedgerActor(None))
    routers = [make_router(budget_config(10), ledger=LedgerClient(actor)) for _ in range(2)]
    body = {**CHAT, "max_tokens": 2}
    statuses = await asyncio.gather(
        *(run_clients(client, [body] * 100, clients=16) for _, client in routers)
    )
    served = sum(s.count(200) for s in statuses)
    for core, _ in routers:
        await core.ledger.refresh()
    await routers[0][0].ledger.refresh()
    core = routers[0][0]
    assert all(c.ledger.reservations() == 0 for c, _ in routers)
    spent = core.ledger.mirror.spend("t1", "ep", "24h", core.clock())  # settled, both
    limit = 10 * ONE_REQUEST_USD
    overspend = max(0.0, spent - limit) / ONE_REQUEST_USD
    # What one replica has in flight at most: requests whose estimates fit the budget.
    est = core.state.catalogue["a"]
    from tokenyard.routing.request import parse_request
    from tokenyard.serving.router.estimate import estimated_cost

    one_estimate = estimated_cost(est, parse_request(body, {}, "chat"))
    in_flight_one_replica = int(limit // one_estimate) + 1
    print(
        f"budget, 2 replicas: 200 requests, 32 clients, limit 10: served {served}, "
        f"spend {spent / limit:.0%} of the limit, overspend {overspend:.1f} requests "
        f"(bound: {in_flight_one_replica} in flight on one replica)"
    )
    assert overspend <= in_flight_one_replica
    assert served <= 10 + in_flight_one_replica


async def test_one_budget_whatever_name_reaches_the_model(
    provider: Provider, make_router: Make
) -> None:
    core, client = make_router(budget_config(10))
    bodies = [{**CHAT, "model": "ep"}, {**CHAT, "model": "a"}] * 20
    statuses = await run_clients(client, bodies, clients=1)
    assert statuses.count(200) == 10
    assert core.ledger.spend("t1", "ep", "24h", core.clock()) == pytest.approx(10 * ONE_REQUEST_USD)


# -- section 3: nobody else can lock a tenant out ------------------------------------------


async def test_a_refused_request_charges_nothing_and_retry_after_stays_in_the_window(
    provider: Provider, make_router: Make
) -> None:
    limits = [{"tenant": "*", "tokensPerMinute": 1000, "requestsPerMinute": 5}]
    _, client = make_router(config(["a"], rateLimits=limits))
    victim = {"x-tenant": "victim"}
    pii = {**CHAT, "messages": [{"role": "user", "content": "mail me: bob@example.com"}]}
    for _ in range(20):  # refused (egress): neither requests nor tokens are taken
        r = await client.post(
            "/v1/chat/completions", json={**pii, "max_tokens": 10**9}, headers=victim
        )
        assert r.status_code == 403
    r = await client.post("/v1/chat/completions", json=CHAT, headers=victim)
    assert r.status_code == 200
    # An enormous max_tokens is charged what the context (4096) can hold, never more:
    # whatever is answered, no Retry-After goes past the limit's one-minute window.
    for body in [{**CHAT, "max_tokens": 10**9}, CHAT, {**CHAT, "max_tokens": 10**9}]:
        r = await client.post("/v1/chat/completions", json=body, headers=victim)
        assert r.status_code in (200, 429)
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 60


def keyed_config(require: bool | None = None) -> RouterConfig:
    tenants: dict[str, Any] = {"apiKeysSecretRef": {"name": "keys", "key": "k"}}
    if require is not None:
        tenants["requireKnownTenant"] = require
    keyed = RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": "a"}], "tenants": tenants,
         "egress": {"defaultDataClass": "public"}}
    )  # fmt: skip
    open_ = RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": "b"}], "egress": {"defaultDataClass": "public"},
         "budgets": [{"tenant": "*", "limitUSD": 1.0, "onExceeded": "Reject"}]}
    )  # fmt: skip
    return RouterConfig(
        pool="p",
        namespace="ns",
        models=[entry("a"), entry("b")],
        policies=[
            PolicyEntry(
                name="ep", namespace="ns", endpoint="ep", spec=keyed.dump(), tenantKeysEnv="KEYS"
            ),
            PolicyEntry(name="open", namespace="ns", endpoint="open", spec=open_.dump()),
        ],
    )


KEYS_ENV = {"KEYS": "sk-victim: victim\nsk-other: other\n"}


async def test_keys_configured_means_unknown_callers_are_refused(make_router: Make) -> None:
    _, client = make_router(keyed_config(), env=KEYS_ENV)
    for h in [{}, {"authorization": "Bearer wrong"}, {"x-tenant": "victim"}]:
        r = await client.post("/v1/chat/completions", json=CHAT, headers=h)
        assert r.status_code == 401, h
    r = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-victim"}
    )
    assert r.status_code == 200
    # The policy may say otherwise, explicitly: then a caller without a key is served.
    _, client = make_router(keyed_config(require=False), env=KEYS_ENV)
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": "someone"})
    assert r.status_code == 200


async def test_an_open_endpoint_cannot_name_a_keyed_tenant(make_router: Make) -> None:
    core, client = make_router(keyed_config(require=False), env=KEYS_ENV)
    for endpoint in ("open", "ep", "b"):
        r = await client.post(
            "/v1/chat/completions", json={**CHAT, "model": endpoint}, headers={"x-tenant": "victim"}
        )
        assert r.status_code == 401, endpoint
    assert core.ledger.spend("victim", None, "24h", core.clock()) == 0
    r = await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "open"}, headers={"x-tenant": "anyone"}
    )
    assert r.status_code == 200


# -- section 6: a request its client abandons is audited and charged -----------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_abandoned_requests_are_audited_and_charged(
    provider: Provider, make_router: Make, tmp_path: Any, stream: bool
) -> None:
    provider.delay = 5.0  # the provider is slow; every client gives up first
    core, client = make_router(config(["a"]))
    for _ in range(10):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                client.post(
                    "/v1/chat/completions",
                    json={**CHAT, "stream": stream},
                    headers={"x-tenant": "t1"},
                ),
                0.05,
            )
    assert len(provider.bodies) == 10  # all reached the provider
    lines = [x for x in audit_lines(tmp_path) if x["status"] == 499]
    assert len(lines) == 10
    assert all(x["tenant"] == "t1" and x["cost_usd"] > 0 for x in lines)
    spent = core.ledger.spend("t1", "ep", "24h", core.clock())
    assert spent == pytest.approx(sum(x["cost_usd"] for x in lines))
    assert core.ledger.reservations() == 0


# -- section 7: one x-request-id --------------------------------------------------------


async def test_behind_serves_proxy_the_router_adds_no_second_request_id(
    provider: Provider, make_router: Make, tmp_path: Any
) -> None:
    core, client = make_router(config(["a"]))
    core.echo_request_id = False  # as the Ray Serve deployment runs it
    # Serve's proxy sets the id on the request and adds it to the response itself.
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "rid-1"})
    assert r.status_code == 200 and "x-request-id" not in r.headers
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404 and "x-request-id" not in r.headers
    assert audit_lines(tmp_path)[0]["request_id"] == "rid-1"


# -- section 7: a dead replica is unavailable at once ---------------------------------------


class ActorDiedError(Exception):
    """Named as Ray's: the replica actor died under the request."""


class DyingModel:
    """An in-cluster model whose only replica dies under the first request; Ray Serve
    then queues the next requests until it has replaced the replica (about 10 s)."""

    name = "m"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise ActorDiedError("The actor died unexpectedly before finishing this task.")
        await asyncio.sleep(60)  # queued in Serve's router: no replica to take it
        return completion("m")

    def stream(self, kind: str, body: dict[str, Any], attempt_timeout: float) -> Any:
        raise NotImplementedError


async def test_a_dead_replica_is_unavailable_at_once(
    provider: Provider, make_router: Make, tmp_path: Any
) -> None:
    from tokenyard.serving.backends import build_backends

    dying = DyingModel()
    in_cluster = CatalogueEntry(
        name="m", servedModelName="m", kind="InCluster", quality=1.0, inputPer1M=1.0,
        outputPer1M=1.0, app="model-m", replicas=1,
    )  # fmt: skip

    def backends(catalogue: Any, client: Any, previous: Any) -> dict[str, Any]:
        external = {n: e for n, e in catalogue.items() if e.kind == "External"}
        return {**build_backends(external, client, None), "m": dying}

    cfg = config(["m", "a"], fallback={"perAttemptTimeoutSeconds": 20})
    cfg = cfg.model_copy(update={"models": [in_cluster, *cfg.models]})
    core = RouterCore(
        RouterAppArgs(pool="p", namespace="ns"),
        ledger=LedgerClient(None),
        provider=ProviderClient(transport=httpx.MockTransport(provider), env={"KEY": "k"}),
        audit=AuditLog(str(tmp_path / "audit.jsonl")),
        env={},
        watch_apps=False,
        backend_factory=backends,
    )
    core.apply_config(cfg)
    app = Starlette(routes=[Route("/{path:path}", core.handle, methods=["GET", "POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.headers["x-tokenyard-target"] == "a"
    # Only the request its replica died under reached it: the next ones went to "a"
    # at once instead of waiting in Serve's queue for the per-attempt timeout.
    assert dying.calls == 1
    await core.aclose()


def test_a_replica_death_holds_until_serves_status_catches_up() -> None:
    from tokenyard.serving.router.serve_status import REPLICA_DEATH_HOLD_S, ServeStatus

    now = [0.0]
    st = ServeStatus("router", clock=lambda: now[0])
    entry = CatalogueEntry(
        name="m", servedModelName="m", kind="InCluster", quality=1.0, inputPer1M=1.0,
        outputPer1M=1.0, app="model-m",
    )  # fmt: skip
    st.note_running({"model-m": 2})
    st.replica_died("model-m")
    assert st.ready(entry)  # one of two replicas: Serve routes to the other
    st.replica_died("model-m")
    assert not st.ready(entry)  # both gone
    st.note_running({"model-m": 2})  # a stale read (same count): still down
    assert not st.ready(entry)
    st.note_running({"model-m": 1})  # Serve's status changed: trusted again
    assert st.ready(entry)
    st.replica_died("model-m")
    assert not st.ready(entry)
    now[0] += REPLICA_DEATH_HOLD_S + 1  # Serve never said: the hold ends
    assert st.ready(entry)


async def test_a_stream_its_client_left_before_the_first_byte_is_audited_and_charged(
    make_router: Make, tmp_path: Any
) -> None:
    core, _ = make_router(config(["a"]))
    body = json.dumps({**CHAT, "stream": True}).encode()
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "headers":
        [(b"content-type", b"application/json"), (b"x-tenant", b"t1")], "query_string": b"",
        "http_version": "1.1", "scheme": "http", "server": ("r", 80), "root_path": "",
    }  # fmt: skip
    from starlette.requests import Request

    sent: list[bool] = []

    async def receive_body() -> dict[str, Any]:
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}  # the client is gone before any byte

    response = await core.handle(Request(scope, receive_body))
    assert response.status_code == 200

    async def send(message: dict[str, Any]) -> None:
        raise OSError("client gone")  # nothing can be written to it

    with pytest.raises(OSError):
        await response(scope, receive_body, send)
    (line,) = [x for x in audit_lines(tmp_path) if x["status"] == 499]
    assert line["tenant"] == "t1" and line["cost_usd"] > 0
    assert core.ledger.reservations() == 0


# -- section 8: per-tenant state stays bounded ----------------------------------------------


async def test_tenant_names_past_the_bound_share_one_budget_key(
    provider: Provider, make_router: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tokenyard.serving.router.core as core_mod

    monkeypatch.setattr(core_mod, "MAX_BUDGET_TENANTS", 5)
    star = [{"tenant": "*", "limitUSD": 1.0, "onExceeded": "Reject"}]
    core, client = make_router(config(["a"], budgets=star))
    for i in range(50):  # an open endpoint: the client picks the tenant names
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": f"t{i}"})
        assert r.status_code == 200
    assert core.ledger.mirror.tenant_count("ep") == 6  # five tenants, then one shared key
    assert core.ledger.spend("_other", "ep", "24h", core.clock()) == pytest.approx(
        45 * ONE_REQUEST_USD
    )
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": "t1"})
    assert r.status_code == 200  # a tenant known before the bound keeps its own
