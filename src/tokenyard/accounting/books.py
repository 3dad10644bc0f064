"""The last step of a request's path: what it did goes into the ledger, metrics and audit.

:class:`~tokenyard.serving.router.core.RouterCore` calls :meth:`Books.finish` exactly once
per request, whatever ended it (an answer, a rejection, a broken stream), with the
:class:`Outcome` the attempts recorded. Accounting never fails a request: an error here
is logged and the audit line is still written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenyard.accounting.audit import AuditLog, AuditRecord
from tokenyard.accounting.learning import DecisionNote, LearningStore
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.accounting.metrics import RouterMetrics
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.routing.budget import budget_for

logger = logging.getLogger("tokenyard.router")

# Tenant names come from clients: past this many distinct values per replica, metrics
# label further tenants "_other" so a client cannot blow up series cardinality.
MAX_TENANT_LABELS = 200


class Endpoint(Protocol):
    """The endpoint a request was routed under (the router's per-endpoint policy)."""

    @property
    def endpoint(self) -> str: ...
    @property
    def spec(self) -> RoutingPolicySpec: ...
    @property
    def scope(self) -> str:
        """The endpoint whose budgets the request spends (a model called by name spends
        its owning policy's)."""
        ...


@dataclass
class Outcome:
    """What one request did, for the ledger, metrics and audit line."""

    status: int = 200
    target: str | None = None
    reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    error: str | None = None
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    baseline_target: str | None = None
    """The endpoint's strongest target (highest quality), the baseline of savings."""
    baseline_cost: float = 0.0
    """What the same tokens would have cost on ``baseline_target``."""
    budget_key: str | None = None
    """The tenant's key in the ledger when it is not its name (one shared by tenants
    past the router's per-endpoint bound); None: the tenant's name."""
    reservation: int | None = None
    """The budget reservation admission took (:meth:`LedgerClient.reserve`), released
    when the real cost is recorded."""
    first: str | None = None
    """The target tried first (after exploration)."""
    first_probabilities: dict[str, float] = field(default_factory=dict)
    """Probability of each target being tried first (:mod:`tokenyard.routing.exploration`)."""
    capture: dict[str, Any] | None = None
    """The request's prompt and decision when it was sampled for capture
    (spec.learning.capture); written with its outcome once answered."""


class Books:
    """One router replica's accounting: the shared ledger, its metrics, its audit log."""

    def __init__(
        self,
        ledger: LedgerClient,
        metrics: RouterMetrics,
        audit: AuditLog,
        clock: Callable[[], float],
        learning: LearningStore | None = None,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.audit = audit
        self.learning = learning or LearningStore(None)
        self._clock = clock
        self._tenant_labels: set[str] = set()

    def finish(
        self, record: AuditRecord, pol: Endpoint | None, started: float, out: Outcome
    ) -> None:
        """Account one finished request: ledger, metrics, audit."""
        now = self._clock()
        latency = time.perf_counter() - started
        record.status = out.status
        record.latency_ms = round(latency * 1000, 3)
        record.target = out.target
        record.reason = out.reason
        record.tokens_in = out.tokens_in
        record.tokens_out = out.tokens_out
        record.cost_usd = round(out.cost, 10)
        record.fallbacks = out.fallbacks
        record.baseline_target = out.baseline_target
        record.baseline_cost_usd = round(out.baseline_cost, 10)
        if out.error and not record.error:
            record.error = out.error
        if out.target is not None and out.first_probabilities:
            record.propensity = (
                out.first_probabilities.get(out.target) if out.target == out.first else None
            )
        # Settle: the real cost replaces the reservation in one step (no await between).
        self.ledger.release(out.reservation)
        out.reservation = None
        try:
            self._record(record, pol, out, latency, now)
        except Exception:
            logger.exception("accounting failed", extra={"request_id": record.request_id})
        if pol is None or pol.spec.audit.enabled:
            self.audit.write(record)
        if pol is not None and out.status == 200 and out.target is not None:
            try:
                self._learn(record, pol, out, now)
            except Exception:
                logger.exception("learning store failed", extra={"request_id": record.request_id})

    def _learn(self, record: AuditRecord, pol: Endpoint, out: Outcome, now: float) -> None:
        """Keep an answered request for feedback and, when sampled, its captured prompt."""
        note = DecisionNote(
            request_id=record.request_id,
            time=record.time,
            tenant=record.tenant,
            endpoint=pol.endpoint,
            target=out.target or "",
            chosen=record.chosen_target,
            explored=record.explored,
            propensity=record.propensity,
            difficulty=record.difficulty,
            classifier=record.classifier or "heuristic",
        )
        self.learning.note_decision(note)
        if out.capture is not None:
            self.learning.capture(
                {**note.to_dict(), "baseline_target": out.baseline_target, **out.capture},
                pol.endpoint,
                now,
            )
            self.metrics.captures.labels(pol.endpoint).inc()

    # Positional, as finish calls it; each argument is one part of the finished request.
    def _record(
        self, record: AuditRecord, pol: Endpoint | None, out: Outcome, latency: float, now: float
    ) -> None:
        endpoint = pol.endpoint if pol is not None else "-"
        tenant = self.tenant_label(record.tenant)
        target = out.target or "-"
        # Tokens a target produced are spent even if the request then failed (a
        # stream that broke midway): providers bill them.
        if pol is not None and out.target is not None and out.tokens_in + out.tokens_out:
            self.ledger.record(
                tenant=out.budget_key or record.tenant,
                endpoint=pol.scope,
                model=out.target,
                cost_usd=out.cost,
                tokens_in=out.tokens_in,
                tokens_out=out.tokens_out,
                now=now,
            )
        if pol is not None:
            self.ledger.record_traffic(
                endpoint=pol.endpoint,
                target=out.target,
                fallbacks=len(out.fallbacks),
                now=now,
            )
        if pol is not None and out.target is not None:
            self.metrics.tokens_in.labels(endpoint, target, tenant).inc(out.tokens_in)
            if out.baseline_target is not None:
                self.metrics.baseline_cost_usd.labels(endpoint, tenant, out.baseline_target).inc(
                    out.baseline_cost
                )
            self.metrics.tokens_out.labels(endpoint, target, tenant).inc(out.tokens_out)
            self.metrics.cost_usd.labels(endpoint, target, tenant).inc(out.cost)
        self.metrics.requests.labels(endpoint, target, tenant, str(out.status)).inc()
        if pol is not None:
            self.metrics.request_latency.labels(endpoint=endpoint).observe(latency)
            self._update_budget_gauge(pol, record.tenant, now, out.budget_key)

    def tenant_label(self, tenant: str) -> str:
        """The tenant as a metrics label: "-" for none, "_other" past MAX_TENANT_LABELS."""
        if not tenant:
            return "-"
        if tenant in self._tenant_labels:
            return tenant
        if len(self._tenant_labels) < MAX_TENANT_LABELS:
            self._tenant_labels.add(tenant)
            return tenant
        return "_other"

    def _update_budget_gauge(
        self, pol: Endpoint, tenant: str, now: float, key: str | None = None
    ) -> None:
        budget = budget_for(pol.spec.budgets, tenant)
        if budget is None:
            return
        spent = self.ledger.spend(key or tenant, pol.scope, budget.window, now)
        label = self.tenant_label(tenant)
        self.metrics.budget_remaining.labels(endpoint=pol.endpoint, tenant=label).set(
            max(0.0, budget.limitUSD - spent)
        )
        self.metrics.budget_limit.labels(endpoint=pol.endpoint, tenant=label).set(budget.limitUSD)


__all__ = ["MAX_TENANT_LABELS", "Books", "Endpoint", "Outcome"]
