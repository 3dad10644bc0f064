"""The routing decision, as a pure function: features + policy + live state -> targets.

:func:`decide` takes the request's features, the RoutingPolicy, the model catalogue,
the backends' live state, the tenant's spend and ``now`` and returns an ordered list of
targets, each with the reason it is there, and the targets left out with the reason
why. It does no I/O and reads no clock; randomness (the Weighted strategy) comes from
the ``rng`` passed in. The router tries the targets in order; ``tokenyard explain``
and ``POST /v1/tokenyard/explain`` print them.

Order of the decision:
1. the first matching rule, else the strategy, orders the policy's targets;
2. hard filters drop targets the request must never reach: egress (an External target
   only if every data class of the request may leave the cluster, and a model only if
   its own dataClasses list covers every class; unknown classes are never allowed) and
   context length. Nothing left: 403 ``egress_denied`` or 413;
3. the tenant's budget: when spent, Reject answers 429, Downgrade keeps only the
   cheapest allowed target;
4. availability: targets not ready or whose circuit refuses now are skipped; nothing
   left: 503 with Retry-After;
5. the list is cut to ``fallback.maxAttempts``.

:func:`apply_spillover` then reorders a decision by live load (``spec.spillover``): it is
kept apart so :func:`decide` stays a function of the request and the policy, and offline
``tokenyard explain`` (no load) runs exactly the same decision.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tokenyard.api.policy import Budget, Match, Range, RoutingPolicySpec, Rule, SpilloverSpec
from tokenyard.serving.contract import CatalogueEntry, PolicyEntry, blended_price
from tokenyard.serving.errors import (
    DEFAULT_RETRY_AFTER_S,
    budget_exceeded,
    egress_denied,
    no_backend,
    prompt_too_long,
)
from tokenyard.serving.features import RequestFeatures, spec_of
from tokenyard.serving.ledger import window_bounds
from tokenyard.serving.spillover import Capacity, Option, QueueClock, choose

WILDCARD = "*"
RULE_STRATEGY = "Rule"


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


class TenantSpendView(Protocol):
    """Read access to the spend ledger (a :class:`~tokenyard.serving.ledger.SpendLedger`)."""

    def spend(self, tenant: str, endpoint: str | None, window: str, now: float) -> float: ...


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


def _in_range(r: Range | None, value: float) -> bool:
    if r is None:
        return True
    return (r.min is None or value >= r.min) and (r.max is None or value <= r.max)


def rule_matches(match: Match, f: RequestFeatures) -> bool:
    """Whether every condition the rule gives holds for the request."""
    if not _in_range(match.difficulty, f.difficulty):
        return False
    if not _in_range(match.promptTokens, f.prompt_tokens):
        return False
    if match.tenants and f.tenant not in match.tenants:
        return False
    for name, value in match.headers.items():
        if f.headers.get(name.lower()) != value:
            return False
    if match.tags and not (set(match.tags) & f.tags):
        return False
    return not (match.dataClasses and not (set(match.dataClasses) & f.data_classes))


def first_matching_rule(rules: Sequence[Rule], f: RequestFeatures) -> Rule | None:
    for rule in rules:
        if rule_matches(rule.match, f):
            return rule
    return None


def _price(entry: CatalogueEntry) -> float:
    return blended_price(entry.inputPer1M, entry.outputPer1M)


def _fmt_price(entry: CatalogueEntry) -> str:
    return f"${_price(entry):g}/1M"


def _order_by_strategy(
    spec: RoutingPolicySpec,
    f: RequestFeatures,
    catalogue: Mapping[str, CatalogueEntry],
    eligible: set[str],
    rng: random.Random,
) -> list[Candidate]:
    """The policy's targets in strategy order, with reasons (unknown models last)."""
    names = [t.model for t in spec.targets]
    known = [n for n in names if n in catalogue]
    if spec.strategy == "CheapestSufficient":
        d = f.difficulty
        good = sorted(
            (n for n in known if catalogue[n].quality >= d),
            key=lambda n: (_price(catalogue[n]), -catalogue[n].quality, n),
        )
        weak = sorted(
            (n for n in known if catalogue[n].quality < d),
            key=lambda n: (-catalogue[n].quality, _price(catalogue[n]), n),
        )
        out = [
            Candidate(
                n,
                f"{'cheapest' if i == 0 else 'next cheapest'} sufficient: quality "
                f"{catalogue[n].quality:g} >= difficulty {d:g}, {_fmt_price(catalogue[n])}",
            )
            for i, n in enumerate(good)
        ]
        out += [
            Candidate(
                n,
                f"fallback: quality {catalogue[n].quality:g} < difficulty {d:g}, strongest first",
            )
            for n in weak
        ]
    elif spec.strategy == "Weighted":
        weights = {t.model: (t.weight or 0) for t in spec.targets}
        # Draw among targets that can take the request now, so an unavailable canary
        # does not silently shift its share onto whatever follows it in the list.
        pool = [n for n in known if weights[n] > 0 and n in eligible]
        out = []
        pick: str | None = None
        if pool:
            pick = rng.choices(pool, weights=[weights[n] for n in pool], k=1)[0]
            total = sum(weights[n] for n in pool)
            out.append(Candidate(pick, f"weighted pick: weight {weights[pick]} of {total}"))
        out += [Candidate(n, "fallback: in listed order") for n in known if n != pick]
    else:
        out = [Candidate(n, f"ordered: position {i + 1}") for i, n in enumerate(known)]
    return out


def _egress_block(
    entry: CatalogueEntry, classes: frozenset[str], allowed_external: frozenset[str]
) -> str | None:
    """Why the request may not reach this model, or None. Fails closed."""
    if entry.kind == "External":
        leaving = sorted(classes - allowed_external)
        if leaving:
            return (
                f"egress denied: data class {', '.join(leaving)} may not leave the cluster "
                "(egress.allowedExternalDataClasses)"
            )
    if entry.dataClasses is not None:
        refused = sorted(classes - set(entry.dataClasses))
        if refused:
            return f"data class {', '.join(refused)} not in the model's dataClasses"
    return None


def _context_block(entry: CatalogueEntry, f: RequestFeatures) -> str | None:
    if entry.maxModelLen is None:
        return None
    # Without max_tokens the engine fills the rest of the context; one token is the least
    # it must have room for.
    need = f.prompt_tokens + (f.max_tokens if f.max_tokens is not None else 1)
    if need > entry.maxModelLen:
        return f"context too long: ~{need} tokens > maxModelLen {entry.maxModelLen}"
    return None


# Positional, as the router calls it; every argument is a distinct input of the decision.
def decide(  # noqa: PLR0917
    features: RequestFeatures,
    policy: PolicyEntry | RoutingPolicySpec,
    catalogue: Mapping[str, CatalogueEntry],
    backends: Mapping[str, BackendState],
    tenant_spend: TenantSpendView,
    now: float,
    rng: random.Random,
) -> Decision:
    """The ordered targets for a request; raises :class:`RouterError` when none may serve.

    Raises 403 ``egress_denied`` when data-class rules exclude every target, 413 when
    every target the request may reach is too short for it, 429 ``budget_exceeded``
    when the tenant's budget is spent and the policy says Reject, and 503 when every
    allowed target is not ready or behind an open circuit.
    """
    spec = spec_of(policy)
    f = features
    skipped: list[Candidate] = []
    allowed_external = frozenset(spec.egress.allowedExternalDataClasses)
    policy_targets = {t.model for t in spec.targets}

    rule = first_matching_rule(spec.rules, f)

    def state(n: str) -> BackendState:
        return backends.get(n, BackendState())

    def available(n: str) -> bool:
        return catalogue[n].ready and state(n).ready and not state(n).circuit_open

    # Hard filters first: they do not depend on the order, and the Weighted draw must
    # only pick among targets that can serve.
    hard_block: dict[str, str] = {}
    egress_blocked: set[str] = set()
    candidates_all = list(rule.targets) if rule is not None else [t.model for t in spec.targets]
    for n in candidates_all:
        if n not in policy_targets:
            hard_block[n] = "not in the policy's spec.targets"
            continue
        entry = catalogue.get(n)
        if entry is None:
            hard_block[n] = "unknown model: not in the router's catalogue"
            continue
        why = _egress_block(entry, f.data_classes, allowed_external)
        if why is not None:
            hard_block[n] = why
            egress_blocked.add(n)
            continue
        why = _context_block(entry, f)
        if why is not None:
            hard_block[n] = why
    allowed = [n for n in dict.fromkeys(candidates_all) if n not in hard_block]
    eligible = {n for n in allowed if available(n)}

    if rule is not None:
        ordered = [Candidate(n, f"rule {rule.name}: position {i + 1}")
                   for i, n in enumerate(dict.fromkeys(rule.targets))]  # fmt: skip
        strategy = RULE_STRATEGY
    else:
        ordered = _order_by_strategy(spec, f, catalogue, eligible, rng)
        strategy = spec.strategy
        listed = {c.model for c in ordered}
        ordered += [Candidate(n, "") for n in candidates_all if n not in listed]

    for c in ordered:
        if c.model in hard_block:
            skipped.append(Candidate(c.model, hard_block[c.model]))

    if not allowed:
        reachable = [n for n in candidates_all if n not in egress_blocked and n in catalogue]
        if egress_blocked and not reachable:
            raise egress_denied(
                f"no target of endpoint '{f.endpoint}' may receive data of class "
                f"{', '.join(sorted(f.data_classes))}: "
                + "; ".join(f"{c.model}: {c.reason}" for c in skipped)
            )
        too_long = [n for n in reachable if hard_block.get(n, "").startswith("context")]
        if too_long:
            need = f.prompt_tokens + (f.max_tokens or 0)
            longest = max(catalogue[n].maxModelLen or 0 for n in too_long)
            raise prompt_too_long(
                f"the request needs about {need} tokens (prompt plus max_tokens) but the "
                f"longest context of any allowed target of '{f.endpoint}' is {longest}"
            )
        raise no_backend(f"endpoint '{f.endpoint}' has no usable target", DEFAULT_RETRY_AFTER_S)

    budget = budget_status(spec, f.tenant, f.endpoint, tenant_spend, now)
    downgraded = False
    keep = [c for c in ordered if c.model in set(allowed)]
    if budget is not None and budget.exceeded:
        if budget.on_exceeded == "Reject":
            raise budget_exceeded(
                f"tenant '{f.tenant}' has spent ${budget.spent_usd:.4f} of its "
                f"${budget.limit_usd:g} budget for this {budget.window} window",
                max(0.0, budget.window_end - now),
            )
        # Downgrade: the cheapest allowed target that can serve now (or, if none can,
        # the cheapest allowed one, so the request still gets a probe or a clear 503).
        pool = [n for n in allowed if n in eligible] or allowed
        cheapest = min(pool, key=lambda n: (_price(catalogue[n]), -catalogue[n].quality, n))
        for c in keep:
            if c.model != cheapest:
                skipped.append(Candidate(c.model, "budget spent: downgraded to the cheapest"))
        keep = [
            Candidate(
                cheapest,
                f"budget downgrade: ${budget.spent_usd:.4f} of ${budget.limit_usd:g} spent "
                f"this {budget.window} window; cheapest allowed target "
                f"{_fmt_price(catalogue[cheapest])}",
            )
        ]
        downgraded = True

    targets: list[Candidate] = []
    unavailable: list[Candidate] = []
    waits: list[float] = []
    for c in keep:
        st = state(c.model)
        if not catalogue[c.model].ready or not st.ready:
            unavailable.append(Candidate(c.model, "not ready"))
            waits.append(DEFAULT_RETRY_AFTER_S)
        elif st.circuit_open:
            unavailable.append(Candidate(c.model, "circuit open"))
            waits.append(st.retry_after if st.retry_after is not None else DEFAULT_RETRY_AFTER_S)
        else:
            reason = c.reason + ("; circuit half-open: probe" if st.half_open else "")
            targets.append(Candidate(c.model, reason))
    skipped.extend(unavailable)
    if not targets:
        raise no_backend(
            f"no target of endpoint '{f.endpoint}' is available now: "
            + "; ".join(f"{c.model}: {c.reason}" for c in unavailable),
            max(min(waits), 0.0),
        )

    limit = spec.fallback.maxAttempts
    for c in targets[limit:]:
        skipped.append(Candidate(c.model, f"beyond fallback.maxAttempts ({limit})"))
    targets = targets[:limit]

    return Decision(
        endpoint=f.endpoint,
        difficulty=f.difficulty,
        targets=targets,
        skipped=skipped,
        rule=rule.name if rule is not None else None,
        strategy=strategy,
        downgraded=downgraded,
        tenant=f.tenant,
        data_classes=tuple(sorted(f.data_classes)),
        budget=budget,
    )


# Positional like decide; the clock and prompt size are the live inputs spill-over adds.
def capacity_of(
    entry: CatalogueEntry, live_replicas: Mapping[str, int] | None = None
) -> Capacity | None:
    """A model's capacity for spill-over: the catalogue's, with the replicas Ray Serve
    reports running when the router knows them (a replica still starting serves nothing,
    so counting it would hide the very queue a burst builds while it starts)."""
    cap = entry.capacity()
    if cap is None or live_replicas is None or entry.name not in live_replicas:
        return cap
    return replace(cap, replicas=live_replicas[entry.name])


def apply_spillover(  # noqa: PLR0917
    decision: Decision,
    catalogue: Mapping[str, CatalogueEntry],
    clock: QueueClock,
    prompt_tokens: float,
    now: float,
    spec: SpilloverSpec,
    *,
    live_replicas: Mapping[str, int] | None = None,
) -> Decision:
    """The decision with its spill-over target moved first, or unchanged.

    ``live_replicas`` (model name to replicas Ray Serve reports RUNNING) overrides the
    catalogue's count, which includes replicas still starting (see :func:`capacity_of`).

    When the first target is an in-cluster model whose expected time to first token
    (``clock``) exceeds ``spec.threshold`` x its SLO, the next target that is in-cluster,
    of at least the same quality and expected to start the request with spare capacity
    (:func:`~tokenyard.serving.spillover.choose`) goes first, with the reason appended;
    the others keep their order, so the original is its fallback. With
    ``spec.downgradeWhenCapped`` a capped first target with no better one free goes to
    the strongest weaker in-cluster target with room (``capacity_downgrade``).
    """
    if not spec.enabled or len(decision.targets) < 2:
        return decision
    options: list[Option] = []
    for c in decision.targets:
        entry = catalogue.get(c.model)
        if entry is None:  # not routable anyway; never a spill-over target
            options.append(Option(c.model, float("-inf"), False))
            continue
        options.append(
            Option(
                c.model,
                entry.quality,
                entry.kind == "InCluster",
                capacity_of(entry, live_replicas),
                entry.capped,
            )
        )
    spill = choose(
        options, clock, prompt_tokens, now, spec.threshold, downgrade=spec.downgradeWhenCapped
    )
    if spill is None:
        return decision
    targets = list(decision.targets)
    moved = targets.pop(spill.index)
    reason = f"{moved.reason}; {spill.reason}" if moved.reason else spill.reason
    targets.insert(0, Candidate(moved.model, reason))
    return replace(
        decision,
        targets=targets,
        spilled_from=decision.targets[0].model,
        capacity_downgrade=spill.downgrade,
    )


__all__ = [
    "BackendState",
    "BudgetStatus",
    "Candidate",
    "Decision",
    "TenantSpendView",
    "apply_spillover",
    "budget_for",
    "budget_status",
    "capacity_of",
    "decide",
    "first_matching_rule",
    "rule_matches",
]
