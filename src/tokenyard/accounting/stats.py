"""The router's observed-traffic statistics: the JSON of ``GET /v1/tokenyard/stats``.

Pure shaping of the shared ledger's counters (``SpendLedger.traffic`` and
``endpoint_spend``) into the document the operator reads for RoutingPolicy status
(``tokenyard.operator.traffic``). Called by the router's ``GET /v1/tokenyard/stats``
(:func:`tokenyard.serving.router.http.stats`) with its ledger mirror, so every replica
answers for the whole pool. Shape::

    {"pool": str, "namespace": str, "generatedAt": RFC 3339 UTC,
     "endpoints": {ENDPOINT: {
         "requests": int,        # since the ledger started, every outcome
         "fallbacks": int,       # targets given up on (tokenyard_fallbacks_total)
         "byTarget": {model: int},   # requests a target answered (x-tokenyard-target)
         "windowSeconds": int,   # the span of "recent"
         "recent": {"requests": int, "byTarget": {model: int}},
         "spendUSD": float,      # all tenants, in the current window of spendWindow
         "spendWindow": str,     # the policy's "*" budget window, else 24h
         "shadow": {...}}}}      # only with spec.classifier.shadow: THIS replica's
                                 # counts (accounting.shadow.ShadowStats.summary)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tokenyard.accounting.ledger import TRAFFIC_WINDOW_S, TrafficCounts, TrafficSummary
from tokenyard.api.policy import RoutingPolicySpec

STATS_PATH = "/v1/tokenyard/stats"
# The spend window of an endpoint whose policy has no "*" budget: a day, as in
# RoutingPolicy's budget default.
DEFAULT_SPEND_WINDOW = "24h"


class TrafficSource(Protocol):
    """What the stats read from the ledger (a :class:`SpendLedger` fits)."""

    def traffic(self, endpoint: str, now: float) -> TrafficSummary | None: ...
    def endpoint_spend(self, endpoint: str, window: str, now: float) -> float: ...
    def traffic_endpoints(self) -> list[str]: ...


def spend_window(spec: RoutingPolicySpec) -> str:
    """The window an endpoint's spend is reported in: its ``*`` budget's, else 24h."""
    return next((b.window for b in spec.budgets if b.tenant == "*"), DEFAULT_SPEND_WINDOW)


def iso_time(now: float) -> str:
    """``now`` (Unix seconds) as RFC 3339 UTC with a Z, as Kubernetes writes times."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _by_target(counts: TrafficCounts) -> dict[str, int]:
    return dict(sorted(counts.by_target.items()))


def endpoint_stats(
    summary: TrafficSummary | None,
    spend_usd: float,
    window: str,
    shadow: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One endpoint's entry; an endpoint nothing was sent to yet reads all zeros.
    ``shadow``: the candidate classifier's counts on this replica, when it has one."""
    total = summary.total if summary is not None else TrafficCounts()
    recent = summary.recent if summary is not None else TrafficCounts()
    out = {
        "requests": total.requests,
        "fallbacks": total.fallbacks,
        "byTarget": _by_target(total),
        "windowSeconds": summary.window_s if summary is not None else TRAFFIC_WINDOW_S,
        "recent": {"requests": recent.requests, "byTarget": _by_target(recent)},
        # Sums of float buckets: rounded so equal spend reads equal on every replica.
        "spendUSD": round(spend_usd, 10),
        "spendWindow": window,
    }
    if shadow is not None:
        out["shadow"] = dict(shadow)
    return out


def build_stats(
    *,
    pool: str,
    namespace: str,
    now: float,
    policies: Mapping[str, RoutingPolicySpec],
    direct: Mapping[str, RoutingPolicySpec],
    source: TrafficSource,
    shadow: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The stats document: every policy endpoint (zeros until it sees traffic) and each
    model called directly by name that has counted traffic."""
    counted = set(source.traffic_endpoints())
    specs = {**{e: s for e, s in direct.items() if e in counted}, **policies}
    endpoints: dict[str, Any] = {}
    for endpoint in sorted(specs):
        window = spend_window(specs[endpoint])
        endpoints[endpoint] = endpoint_stats(
            source.traffic(endpoint, now),
            source.endpoint_spend(endpoint, window, now),
            window,
            shadow(endpoint) if shadow is not None else None,
        )
    return {
        "pool": pool,
        "namespace": namespace,
        "generatedAt": iso_time(now),
        "endpoints": endpoints,
    }


__all__ = [
    "DEFAULT_SPEND_WINDOW",
    "STATS_PATH",
    "TrafficSource",
    "build_stats",
    "endpoint_stats",
    "iso_time",
    "spend_window",
]
