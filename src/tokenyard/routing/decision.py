"""The routing decision's result: the ordered targets, the skipped ones and why.

:func:`tokenyard.routing.policy_engine.decide` builds a :class:`Decision` from the
backends' live :class:`BackendState`; :mod:`tokenyard.routing.spillover` may move one of
its targets first; the router tries them in order and ``tokenyard explain`` prints
:meth:`Decision.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenyard.routing.budget import BudgetStatus


@dataclass(frozen=True)
class BackendState:
    """What the router knows live about one backend."""

    ready: bool = True
    circuit_open: bool = False
    """True while the backend's circuit refuses requests (open, or half-open with its
    probe in flight)."""
    half_open: bool = False
    """True when the circuit lets one probe through."""
    retry_after: float | None = None
    """Seconds until the circuit lets a request through, when it refuses now."""


@dataclass(frozen=True)
class Candidate:
    """A target in a decision and why it is there (or why it was skipped)."""

    model: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """The ordered targets for one request, the skipped ones and how they were chosen."""

    endpoint: str
    difficulty: float
    targets: list[Candidate]
    skipped: list[Candidate]
    rule: str | None
    strategy: str
    downgraded: bool
    tenant: str = ""
    data_classes: tuple[str, ...] = ()
    budget: BudgetStatus | None = None
    spilled_from: str | None = None
    """The model the policy put first, when spill-over moved another target ahead of it."""
    capacity_downgrade: bool = False
    """True when the target moved first is weaker: the first was capped and saturated
    (spillover.downgradeWhenCapped)."""

    @property
    def models(self) -> list[str]:
        return [c.model for c in self.targets]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as explain prints it."""
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "tenant": self.tenant,
            "difficulty": self.difficulty,
            "dataClasses": list(self.data_classes),
            "rule": self.rule,
            "strategy": self.strategy,
            "downgraded": self.downgraded,
            "targets": [{"model": c.model, "reason": c.reason} for c in self.targets],
            "skipped": [{"model": c.model, "reason": c.reason} for c in self.skipped],
        }
        if self.spilled_from is not None:
            out["spilledFrom"] = self.spilled_from
        if self.capacity_downgrade:
            out["capacityDowngrade"] = True
        if self.budget is not None:
            out["budget"] = {
                "limitUSD": self.budget.limit_usd,
                "spentUSD": round(self.budget.spent_usd, 6),
                "window": self.budget.window,
                "windowEnd": self.budget.window_end,
                "onExceeded": self.budget.on_exceeded,
                "exceeded": self.budget.exceeded,
            }
        return out


__all__ = ["BackendState", "Candidate", "Decision"]
