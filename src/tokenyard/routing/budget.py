"""Tenant budgets as the routing decision sees them: fixed windows, spend, the verdict.

Budget windows are fixed windows from the Unix epoch (``60m``, ``24h``, ``30d``), so every
router replica and every restart agrees on where a window starts; the spend ledger
(:mod:`tokenyard.accounting.ledger`) buckets spend by the same arithmetic. The decision
reads a tenant's spend through :class:`TenantSpendView`, which the ledger, its Ray
actor's client and :class:`StaticSpend` (``tokenyard explain``, tests) all answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tokenyard.api.policy import Budget, RoutingPolicySpec

WILDCARD = "*"

_UNITS = {"m": 60, "h": 3600, "d": 86400}
_WINDOW_RE = re.compile(r"^([1-9][0-9]*)(m|h|d)$")


def window_seconds(window: str) -> int:
    """Length of a window such as ``60m``, ``24h`` or ``30d`` in seconds."""
    m = _WINDOW_RE.match(window)
    if not m:
        raise ValueError(f"invalid window {window!r}: expected a number then m, h or d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def window_bounds(window: str, now: float) -> tuple[float, float]:
    """The fixed window (from the Unix epoch) containing ``now``: ``(start, end)``."""
    length = window_seconds(window)
    start = math.floor(now / length) * length
    return float(start), float(start + length)


class TenantSpendView(Protocol):
    """What the policy engine reads of spend (a :class:`~tokenyard.accounting.ledger.SpendLedger`,
    the ledger actor's client, or :class:`StaticSpend`)."""

    def spend(self, tenant: str, endpoint: str | None, window: str, now: float) -> float: ...


class StaticSpend:
    """A fixed spend per tenant (any window): for ``tokenyard explain`` and tests."""

    def __init__(self, spend: Mapping[str, float] | None = None) -> None:
        self._spend = dict(spend or {})

    def spend(self, tenant: str, endpoint: str | None, window: str, now: float) -> float:
        return self._spend.get(tenant, 0.0)


@dataclass(frozen=True)
class BudgetStatus:
    """The tenant's budget for the current window."""

    limit_usd: float
    spent_usd: float
    window: str
    window_end: float
    on_exceeded: str
    exceeded: bool

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.limit_usd - self.spent_usd)


def budget_for(budgets: Iterable[Budget], tenant: str) -> Budget | None:
    """The tenant's own budget, else the ``*`` entry, else None."""
    wildcard: Budget | None = None
    for b in budgets:
        if b.tenant == tenant:
            return b
        if b.tenant == WILDCARD:
            wildcard = b
    return wildcard


def budget_status(
    spec: RoutingPolicySpec, tenant: str, endpoint: str, spend: TenantSpendView, now: float
) -> BudgetStatus | None:
    """The tenant's budget state on this endpoint now; None if it has no budget."""
    budget = budget_for(spec.budgets, tenant)
    if budget is None:
        return None
    spent = spend.spend(tenant, endpoint, budget.window, now)
    _, end = window_bounds(budget.window, now)
    return BudgetStatus(
        limit_usd=budget.limitUSD,
        spent_usd=spent,
        window=budget.window,
        window_end=end,
        on_exceeded=budget.onExceeded,
        exceeded=spent >= budget.limitUSD,
    )


__all__ = [
    "WILDCARD",
    "BudgetStatus",
    "StaticSpend",
    "TenantSpendView",
    "budget_for",
    "budget_status",
    "window_bounds",
    "window_seconds",
]
