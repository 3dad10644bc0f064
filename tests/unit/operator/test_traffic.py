"""Traffic figures for RoutingPolicy status from the router's stats document."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenyard.operator import traffic
from tokenyard.operator.traffic import (
    STATS_PATH,
    fetch_stats,
    stats_fetcher,
    stats_url,
    traffic_fields,
)
from tokenyard.settings import OperatorSettings


def endpoint(**over: Any) -> dict[str, Any]:
    ep: dict[str, Any] = {
        "requests": 10,
        "fallbacks": 2,
        "byTarget": {"economy": 6, "frontier": 3},
        "windowSeconds": 600,
        "recent": {"requests": 3, "byTarget": {"economy": 2, "frontier": 1}},
        "spendUSD": 0.12345678,
        "spendWindow": "24h",
    }
    ep.update(over)
    return ep


def stats(**endpoints: Any) -> dict[str, Any]:
    return {
        "pool": "p",
        "namespace": "ns",
        "generatedAt": "2026-01-01T00:00:00Z",
        "endpoints": endpoints,
    }


def test_stats_url_goes_through_kuberays_serve_service() -> None:
    assert stats_url("prod", "llm") == "http://prod-serve-svc.llm.svc:8000/v1/tokenyard/stats"


def test_the_router_serves_the_path_the_operator_reads() -> None:
    from tokenyard.accounting.stats import STATS_PATH as ROUTER_STATS_PATH

    assert STATS_PATH == ROUTER_STATS_PATH


def test_traffic_fields() -> None:
    fields = traffic_fields(stats(chat=endpoint()), "chat", ["economy", "frontier", "spare"])
    assert fields == {
        "requests": 10,
        "fallbacks": 2,
        "spendUSD": 0.123457,
        "targets": {
            "economy": {"trafficShare": 0.667, "requests": 6},
            "frontier": {"trafficShare": 0.333, "requests": 3},
            "spare": {"trafficShare": 0.0, "requests": 0},
        },
    }


def test_share_counts_targets_no_longer_listed() -> None:
    recent = {"requests": 4, "byTarget": {"economy": 1, "removed": 3}}
    fields = traffic_fields(stats(chat=endpoint(recent=recent)), "chat", ["economy"])
    assert fields["targets"] == {"economy": {"trafficShare": 0.25, "requests": 6}}


def test_no_recent_traffic_is_a_zero_share() -> None:
    quiet = endpoint(recent={"requests": 0, "byTarget": {}})
    fields = traffic_fields(stats(chat=quiet), "chat", ["economy"])
    assert fields["targets"]["economy"] == {"trafficShare": 0.0, "requests": 6}
    assert fields["requests"] == 10


def test_fields_from_the_routers_own_document() -> None:
    """The serving side's shaping and this parser agree on the shape."""
    from tokenyard.accounting.ledger import SpendLedger
    from tokenyard.accounting.stats import build_stats
    from tokenyard.api.policy import RoutingPolicySpec

    led = SpendLedger()
    for target in ("a", "a", "b", None):
        led.record_traffic("chat", target, 1 if target == "b" else 0, 1000.0)
    led.record("t", "chat", "a", 0.5, 1, 1, 1000.0)
    policy = RoutingPolicySpec.model_validate({"pool": "p", "targets": [{"model": "a"}]})
    doc = build_stats(
        pool="p", namespace="ns", now=1001.0, policies={"chat": policy}, direct={}, source=led
    )
    assert traffic_fields(doc, "chat", ["a", "b"]) == {
        "requests": 4,
        "fallbacks": 1,
        "spendUSD": 0.5,
        "targets": {
            "a": {"trafficShare": 0.667, "requests": 2},
            "b": {"trafficShare": 0.333, "requests": 1},
        },
    }


@pytest.mark.parametrize(
    "doc",
    [
        None,
        "not a dict",
        [],
        {},
        {"endpoints": None},
        {"endpoints": []},
        stats(),  # the router does not know the endpoint (yet)
        stats(chat=None),
        stats(chat=endpoint(requests="10")),
        stats(chat=endpoint(requests=-1)),
        stats(chat=endpoint(requests=True)),
        stats(chat=endpoint(fallbacks=None)),
        stats(chat=endpoint(byTarget=[1, 2])),
        stats(chat=endpoint(byTarget={"economy": 1.5})),
        stats(chat=endpoint(recent=None)),
        stats(chat=endpoint(recent={"byTarget": {"economy": "x"}})),
        stats(chat=endpoint(spendUSD="0.1")),
        stats(chat=endpoint(spendUSD=math.nan)),
        stats(chat=endpoint(spendUSD=-1.0)),
        stats(chat=endpoint(spendUSD=None)),
        {"endpoints": {"chat": endpoint(byTarget={1: 2})}},
    ],
)
def test_missing_or_garbled_input_gives_no_fields(doc: Any) -> None:
    assert traffic_fields(doc, "chat", ["economy"]) == {}


def test_never_raises_on_hostile_mappings() -> None:
    class Exploding(dict[str, Any]):
        def get(self, *_: Any, **__: Any) -> Any:
            raise RuntimeError("boom")

    assert traffic_fields(Exploding(), "chat", ["economy"]) == {}


def client_for(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_fetch_stats_returns_the_document() -> None:
    doc = stats(chat=endpoint())
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=doc)

    url = stats_url("p", "ns")
    async with client_for(handler) as client:
        assert await fetch_stats(url, client, 2.0) == doc
    assert str(seen[0].url) == url and seen[0].method == "GET"
    assert seen[0].extensions["timeout"]["read"] == 2.0


async def test_fetch_stats_sends_the_admin_token_as_bearer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("authorization") != "Bearer tok-123":
            return httpx.Response(401, json={"error": {"message": "no"}})
        return httpx.Response(200, json=stats(chat=endpoint()))

    url = stats_url("p", "ns")
    async with client_for(handler) as client:
        assert await fetch_stats(url, client, 2.0, "tok-123") is not None
        # Without the token a guarded router answers 401: no figures, no exception.
        assert await fetch_stats(url, client, 2.0) is None
    assert seen[0].headers["authorization"] == "Bearer tok-123"
    assert "authorization" not in seen[1].headers


async def test_the_operators_fetcher_sends_its_setting_stripped() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=stats(chat=endpoint()))

    # As a Secret made from a file gives it: with a trailing newline.
    with_token = OperatorSettings(admin_token="0123456789abcdef-token\n", router_stats_timeout_s=3)
    async with client_for(handler) as client:
        assert await stats_fetcher(client, with_token)(stats_url("p", "ns")) is not None
        assert await stats_fetcher(client, OperatorSettings())(stats_url("p", "ns")) is not None
    assert seen[0].headers["authorization"] == "Bearer 0123456789abcdef-token"
    assert seen[0].extensions["timeout"]["read"] == 3
    assert "authorization" not in seen[1].headers


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("slow", request=request)


@pytest.mark.parametrize(
    "handler",
    [
        _refuse,
        _time_out,
        lambda r: httpx.Response(503, json={"error": {"message": "starting"}}),
        lambda r: httpx.Response(404, text="no route"),
        lambda r: httpx.Response(200, text="{not json"),
        lambda r: httpx.Response(200, json=[1, 2]),
    ],
)
async def test_fetch_stats_is_none_on_any_failure(handler: Any) -> None:
    async with client_for(handler) as client:
        assert await fetch_stats(stats_url("p", "ns"), client, 1.0) is None


def test_imports_no_kopf_no_client_no_serving_beyond_the_contract() -> None:
    tree = ast.parse(Path(traffic.__file__).read_text())
    modules = {
        m
        for node in ast.walk(tree)
        for m in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
    }
    assert not {m for m in modules if m.split(".")[0] in ("kopf", "kubernetes", "ray")}
    data_plane = ("tokenyard.serving", "tokenyard.routing", "tokenyard.accounting")
    assert {m for m in modules if m.startswith(data_plane)} == set()
