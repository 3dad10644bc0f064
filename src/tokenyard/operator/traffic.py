"""Observed traffic for RoutingPolicy status, read from the router's stats endpoint.

The operator calls :func:`fetch_stats` on :func:`stats_url` (through KubeRay's serve
Service) and turns the document into status fields with the pure :func:`traffic_fields`.
The router side is ``tokenyard.accounting.stats`` (which the operator does not import: only
the serving contract crosses the layer); both must agree on :data:`STATS_PATH`, which a
unit test checks. Nothing here raises on a router that is down, old or garbled: status
then simply carries no traffic figures.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from tokenyard.contract import SERVE_PORT
from tokenyard.operator.builders import ray_service_name
from tokenyard.settings import OperatorSettings

STATS_PATH = "/v1/tokenyard/stats"
# Shares are rounded so status changes (and is written) only when traffic really moves.
SHARE_DIGITS = 3
SPEND_DIGITS = 6


def stats_url(pool_name: str, namespace: str) -> str:
    """The router's stats endpoint through KubeRay's serve Service of the pool's RayService
    (KubeRay names it ``<rayservice>-serve-svc``)."""
    service = f"{ray_service_name(pool_name)}-serve-svc"
    return f"http://{service}.{namespace}.svc:{SERVE_PORT}{STATS_PATH}"


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _counts(value: Any) -> dict[str, int] | None:
    if not isinstance(value, Mapping):
        return None
    out: dict[str, int] = {}
    for k, v in value.items():
        n = _count(v)
        if not isinstance(k, str) or n is None:
            return None
        out[k] = n
    return out


def traffic_fields(stats: Any, endpoint: str, targets: Sequence[str]) -> dict[str, Any]:
    """RoutingPolicy status fields from the router's stats document.

    Returns ``{"requests", "fallbacks", "spendUSD", "targets": {model: {"trafficShare",
    "requests"}}}`` with an entry for each of ``targets``: trafficShare is the target's
    fraction of the requests targets answered in the recent window (0 when there were
    none), requests its count since the router's ledger started. Returns {} when the
    document is missing, garbled or does not know the endpoint; never raises.
    """
    try:
        return _traffic_fields(stats, endpoint, targets)
    except Exception:
        # Status is best effort: a surprise in the document must not fail a reconcile.
        return {}


def _traffic_fields(stats: Any, endpoint: str, targets: Sequence[str]) -> dict[str, Any]:
    if not isinstance(stats, Mapping):
        return {}
    endpoints = stats.get("endpoints")
    if not isinstance(endpoints, Mapping):
        return {}
    ep = endpoints.get(endpoint)
    if not isinstance(ep, Mapping):
        return {}
    requests = _count(ep.get("requests"))
    fallbacks = _count(ep.get("fallbacks"))
    by_target = _counts(ep.get("byTarget"))
    recent = ep.get("recent")
    recent_by_target = _counts(recent.get("byTarget")) if isinstance(recent, Mapping) else None
    spend = ep.get("spendUSD")
    if (
        requests is None
        or fallbacks is None
        or by_target is None
        or recent_by_target is None
        or isinstance(spend, bool)
        or not isinstance(spend, int | float)
        or not math.isfinite(spend)
        or spend < 0
    ):
        return {}
    served_recently = sum(recent_by_target.values())
    per_target: dict[str, dict[str, Any]] = {}
    for model in targets:
        share = recent_by_target.get(model, 0) / served_recently if served_recently else 0.0
        per_target[model] = {
            "trafficShare": round(min(max(share, 0.0), 1.0), SHARE_DIGITS),
            "requests": by_target.get(model, 0),
        }
    out: dict[str, Any] = {
        "requests": requests,
        "fallbacks": fallbacks,
        "spendUSD": round(float(spend), SPEND_DIGITS),
        "targets": per_target,
    }
    shadow = _shadow_fields(ep.get("shadow"))
    if shadow is not None:
        out["shadow"] = shadow
    return out


_SHADOW_SHARES = ("disagreement", "strongShare", "liveStrongShare")
_SHADOW_COSTS = ("estimatedCostUSDPer1K", "liveEstimatedCostUSDPer1K")


def _shadow_fields(doc: Any) -> dict[str, Any] | None:
    """status.shadow from the stats document's ``shadow`` entry; None when it is absent
    or anything in it is not what the router writes."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("version"), str):
        return None
    requests = _count(doc.get("requests"))
    values: dict[str, float] = {}
    for k in (*_SHADOW_SHARES, *_SHADOW_COSTS):
        v = doc.get(k)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        if v < 0 or (k in _SHADOW_SHARES and v > 1):
            return None
        values[k] = float(v)
    if requests is None:
        return None
    out: dict[str, Any] = {"version": doc["version"][:80], "requests": requests}
    out.update({k: round(values[k], SHARE_DIGITS) for k in _SHADOW_SHARES})
    out.update({k: round(values[k], SPEND_DIGITS) for k in _SHADOW_COSTS})
    return out


async def fetch_stats(
    url: str, client: httpx.AsyncClient, timeout_s: float, token: str | None = None
) -> dict[str, Any] | None:
    """The router's stats document, or None on any failure (unreachable, not 200, not a
    JSON object): the router may be starting, restarting or older than the endpoint.

    ``token`` (the operator's admin token) is sent as ``Authorization: Bearer``: routers
    rendered with its hash answer the stats only to it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = await client.get(url, timeout=timeout_s, headers=headers)
        if response.status_code != 200:
            return None
        data = response.json()
    except Exception:
        # Any failure means "no figures this time"; the next reconcile tries again.
        return None
    return data if isinstance(data, dict) else None


def stats_fetcher(
    client: httpx.AsyncClient, settings: OperatorSettings
) -> Callable[[str], Awaitable[dict[str, Any] | None]]:
    """The operator's stats read: :func:`fetch_stats` with its timeout and admin token."""
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None

    async def fetch(url: str) -> dict[str, Any] | None:
        return await fetch_stats(url, client, settings.router_stats_timeout_s, token)

    return fetch


__all__ = ["STATS_PATH", "fetch_stats", "stats_fetcher", "stats_url", "traffic_fields"]
