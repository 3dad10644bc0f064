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
The shapes of the result are in :mod:`tokenyard.routing.decision`, budgets in
:mod:`tokenyard.routing.budget`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

from tokenyard.api.policy import Match, Range, RoutingPolicySpec, Rule, SpilloverSpec
from tokenyard.contract import CatalogueEntry, PolicyEntry, blended_price
from tokenyard.routing.budget import BudgetStatus, TenantSpendView, budget_status
from tokenyard.routing.decision import BackendState, Candidate, Decision
from tokenyard.routing.errors import (
    DEFAULT_RETRY_AFTER_S,
    RouterError,
    budget_exceeded,
    egress_denied,
    no_backend,
    prompt_too_long,
)
from tokenyard.routing.features import RequestFeatures, spec_of
from tokenyard.routing.request import prompt_tokens_bound
from tokenyard.routing.spillover import Capacity, Option, QueueClock, choose

RULE_STRATEGY = "Rule"


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
    entry: CatalogueEntry,
    classes: frozenset[str],
    allowed_external: frozenset[str],
    unscannable: tuple[str, ...] = (),
) -> str | None:
    """Why the request may not reach this model, or None. Fails closed."""
    if entry.kind == "External":
        if unscannable:
            return f"egress denied: {'; '.join(unscannable)}"
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


def _context_uncertain(entry: CatalogueEntry, f: RequestFeatures) -> str | None:
    """A note when the target's context lies within the prompt estimate's error: the
    estimate fits, but the engine's count may not (the router then moves on when the
    engine refuses, see ``serving.router.attempts``)."""
    if entry.maxModelLen is None:
        return None
    out = f.max_tokens if f.max_tokens is not None else 1
    most = prompt_tokens_bound(f.prompt_tokens) + out
    if most <= entry.maxModelLen:
        return None
    return (
        f"prompt estimate uncertain here: ~{f.prompt_tokens + out} tokens estimated, up "
        f"to {most} by the estimate's error, maxModelLen {entry.maxModelLen}"
    )


def _state(backends: Mapping[str, BackendState], name: str) -> BackendState:
    return backends.get(name, BackendState())


def _hard_filters(
    spec: RoutingPolicySpec,
    candidates: Sequence[str],
    catalogue: Mapping[str, CatalogueEntry],
    f: RequestFeatures,
) -> tuple[dict[str, str], set[str]]:
    """Why the request must never reach each blocked candidate (not a policy target, not
    in the catalogue, egress, context length), and which of them egress blocks."""
    allowed_external = frozenset(spec.egress.allowedExternalDataClasses)
    policy_targets = {t.model for t in spec.targets}
    blocked: dict[str, str] = {}
    egress_blocked: set[str] = set()
    for n in candidates:
        if n not in policy_targets:
            blocked[n] = "not in the policy's spec.targets"
            continue
        entry = catalogue.get(n)
        if entry is None:
            blocked[n] = "unknown model: not in the router's catalogue"
            continue
        why = _egress_block(entry, f.data_classes, allowed_external, f.unscannable)
        if why is not None:
            blocked[n] = why
            egress_blocked.add(n)
            continue
        why = _context_block(entry, f)
        if why is not None:
            blocked[n] = why
    return blocked, egress_blocked


# Positional, as decide calls it; each argument is one input of the ordering.
def _order(  # noqa: PLR0917
    rule: Rule | None,
    spec: RoutingPolicySpec,
    f: RequestFeatures,
    catalogue: Mapping[str, CatalogueEntry],
    eligible: set[str],
    rng: random.Random,
    candidates: Sequence[str],
) -> tuple[list[Candidate], str]:
    """Step 1: the candidates in the matching rule's order, else the strategy's, and the
    name of what ordered them."""
    if rule is not None:
        ordered = [Candidate(n, f"rule {rule.name}: position {i + 1}")
                   for i, n in enumerate(dict.fromkeys(rule.targets))]  # fmt: skip
        return ordered, RULE_STRATEGY
    ordered = _order_by_strategy(spec, f, catalogue, eligible, rng)
    listed = {c.model for c in ordered}
    ordered += [Candidate(n, "") for n in candidates if n not in listed]
    return ordered, spec.strategy


# Positional, as decide calls it; each argument is one part of the failed filtering.
def _refusal(  # noqa: PLR0917
    f: RequestFeatures,
    candidates: Sequence[str],
    blocked: Mapping[str, str],
    egress_blocked: set[str],
    skipped: Sequence[Candidate],
    catalogue: Mapping[str, CatalogueEntry],
) -> RouterError:
    """Why no candidate may serve the request at all: 403 egress, 413 context, or 503."""
    reachable = [n for n in candidates if n not in egress_blocked and n in catalogue]
    if egress_blocked and not reachable:
        return egress_denied(
            f"no target of endpoint '{f.endpoint}' may receive data of class "
            f"{', '.join(sorted(f.data_classes))}: "
            + "; ".join(f"{c.model}: {c.reason}" for c in skipped)
        )
    too_long = [n for n in reachable if blocked.get(n, "").startswith("context")]
    if too_long:
        need = f.prompt_tokens + (f.max_tokens or 0)
        longest = max(catalogue[n].maxModelLen or 0 for n in too_long)
        return prompt_too_long(
            f"the request needs about {need} tokens (prompt plus max_tokens) but the "
            f"longest context of any allowed target of '{f.endpoint}' is {longest}"
        )
    return no_backend(f"endpoint '{f.endpoint}' has no usable target", DEFAULT_RETRY_AFTER_S)


# Positional, as decide calls it; each argument is one input of the budget step.
def _budget_spent(  # noqa: PLR0917
    budget: BudgetStatus,
    keep: Sequence[Candidate],
    allowed: Sequence[str],
    eligible: set[str],
    catalogue: Mapping[str, CatalogueEntry],
    f: RequestFeatures,
    now: float,
    skipped: list[Candidate],
) -> list[Candidate]:
    """Step 3 with the budget spent: 429 (Reject), or only the cheapest allowed target
    (Downgrade), the others added to ``skipped``."""
    if budget.on_exceeded == "Reject":
        raise budget_exceeded(
            f"tenant '{f.tenant}' has spent ${budget.spent_usd:.4f} of its "
            f"${budget.limit_usd:g} budget for this {budget.window} window",
            max(0.0, budget.window_end - now),
        )
    # Downgrade: the cheapest allowed target that can serve now (or, if none can,
    # the cheapest allowed one, so the request still gets a probe or a clear 503).
    pool = [n for n in allowed if n in eligible] or list(allowed)
    cheapest = min(pool, key=lambda n: (_price(catalogue[n]), -catalogue[n].quality, n))
    for c in keep:
        if c.model != cheapest:
            skipped.append(Candidate(c.model, "budget spent: downgraded to the cheapest"))
    return [
        Candidate(
            cheapest,
            f"budget downgrade: ${budget.spent_usd:.4f} of ${budget.limit_usd:g} spent "
            f"this {budget.window} window; cheapest allowed target "
            f"{_fmt_price(catalogue[cheapest])}",
        )
    ]


def _available(
    keep: Sequence[Candidate],
    catalogue: Mapping[str, CatalogueEntry],
    backends: Mapping[str, BackendState],
    f: RequestFeatures,
) -> tuple[list[Candidate], list[Candidate]]:
    """Step 4: the targets that can take the request now and the unavailable ones; 503
    with the earliest Retry-After when none can."""
    targets: list[Candidate] = []
    unavailable: list[Candidate] = []
    waits: list[float] = []
    for c in keep:
        st = _state(backends, c.model)
        if not catalogue[c.model].ready or not st.ready:
            unavailable.append(Candidate(c.model, "not ready"))
            waits.append(DEFAULT_RETRY_AFTER_S)
        elif st.circuit_open:
            unavailable.append(Candidate(c.model, "circuit open"))
            waits.append(st.retry_after if st.retry_after is not None else DEFAULT_RETRY_AFTER_S)
        else:
            reason = c.reason + ("; circuit half-open: probe" if st.half_open else "")
            if (note := _context_uncertain(catalogue[c.model], f)) is not None:
                reason = f"{reason}; {note}" if reason else note
            targets.append(Candidate(c.model, reason))
    if not targets:
        raise no_backend(
            f"no target of endpoint '{f.endpoint}' is available now: "
            + "; ".join(f"{c.model}: {c.reason}" for c in unavailable),
            max(min(waits), 0.0),
        )
    return targets, unavailable


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
    rule = first_matching_rule(spec.rules, f)

    # Hard filters first: they do not depend on the order, and the Weighted draw must
    # only pick among targets that can serve.
    candidates = list(rule.targets) if rule is not None else [t.model for t in spec.targets]
    blocked, egress_blocked = _hard_filters(spec, candidates, catalogue, f)
    allowed = [n for n in dict.fromkeys(candidates) if n not in blocked]
    eligible = {
        n
        for n in allowed
        if catalogue[n].ready and _state(backends, n).ready and not _state(backends, n).circuit_open
    }
    ordered, strategy = _order(rule, spec, f, catalogue, eligible, rng, candidates)
    skipped = [Candidate(c.model, blocked[c.model]) for c in ordered if c.model in blocked]
    if not allowed:
        raise _refusal(f, candidates, blocked, egress_blocked, skipped, catalogue)

    budget = budget_status(spec, f.tenant, f.endpoint, tenant_spend, now)
    keep = [c for c in ordered if c.model in set(allowed)]
    downgraded = budget is not None and budget.exceeded
    if budget is not None and budget.exceeded:
        keep = _budget_spent(budget, keep, allowed, eligible, catalogue, f, now, skipped)

    targets, unavailable = _available(keep, catalogue, backends, f)
    skipped.extend(unavailable)
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


# Positional like decide; the clock and prompt size are the live inputs spill-over adds.
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
    (:func:`~tokenyard.routing.spillover.choose`) goes first, with the reason appended;
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
                queue=entry.adapterOf,
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
    "RULE_STRATEGY",
    "apply_spillover",
    "capacity_of",
    "decide",
    "first_matching_rule",
    "rule_matches",
]
