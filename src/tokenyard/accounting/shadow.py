"""How a candidate classifier (``spec.classifier.shadow``) would have routed live traffic.

The router scores each routed request with the candidate too, asks the policy engine
what it would then have decided (:func:`tokenyard.routing.policy_engine.decide`, the
same inputs but the candidate's difficulty) and counts it here with
:meth:`ShadowStats.add`: whether the first target differs, whether either sends it to
the endpoint's strongest target, and the estimated cost of each first target.
``GET /v1/tokenyard/stats`` shows :meth:`ShadowStats.summary` per endpoint (this
replica's counts, since it loaded the candidate), the operator copies it into
``status.shadow``, and the same counts go to the ``tokenyard_shadow_*`` metrics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class ShadowCounts:
    """One endpoint's counts for one candidate version."""

    version: str
    requests: int = 0
    disagreements: int = 0
    strong: int = 0
    live_strong: int = 0
    cost_usd: float = 0.0
    live_cost_usd: float = 0.0


class ShadowStats:
    """Per endpoint, the current candidate's counts (reset when its version changes)."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, ShadowCounts] = {}
        self._lock = threading.Lock()

    # Positional, as the router calls it once per request; each is one observation.
    def add(  # noqa: PLR0917
        self,
        endpoint: str,
        version: str,
        live_target: str,
        shadow_target: str,
        strongest: str | None,
        live_cost: float,
        shadow_cost: float,
    ) -> None:
        with self._lock:
            c = self._by_endpoint.get(endpoint)
            if c is None or c.version != version:
                c = self._by_endpoint[endpoint] = ShadowCounts(version)
            c.requests += 1
            c.disagreements += live_target != shadow_target
            c.strong += shadow_target == strongest
            c.live_strong += live_target == strongest
            c.cost_usd += shadow_cost
            c.live_cost_usd += live_cost

    def forget_except(self, endpoints: set[str]) -> None:
        """Drop endpoints that no longer have a candidate."""
        with self._lock:
            for e in set(self._by_endpoint) - endpoints:
                del self._by_endpoint[e]

    def summary(self, endpoint: str) -> dict[str, Any] | None:
        """The stats document's ``shadow`` entry of an endpoint; None without counts."""
        with self._lock:
            c = self._by_endpoint.get(endpoint)
            if c is None or c.requests == 0:
                return None
            n = c.requests
            return {
                "version": c.version,
                "scope": "replica",
                "requests": n,
                "disagreement": round(c.disagreements / n, 4),
                "strongShare": round(c.strong / n, 4),
                "liveStrongShare": round(c.live_strong / n, 4),
                "estimatedCostUSDPer1K": round(1000 * c.cost_usd / n, 6),
                "liveEstimatedCostUSDPer1K": round(1000 * c.live_cost_usd / n, 6),
            }


__all__ = ["ShadowCounts", "ShadowStats"]
