"""Exploration (tokenyard.routing.exploration) over many random policies and requests:
it only reorders what decide() already allows, so it never crosses an egress rule, a
budget downgrade, a context limit or fallback.maxAttempts, and its recorded
probabilities are the frequencies it draws with."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tokenyard.api.policy import ExplorationSpec, RoutingPolicySpec
from tokenyard.contract import CatalogueEntry
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.decision import BackendState
from tokenyard.routing.errors import RouterError
from tokenyard.routing.exploration import explore, first_probabilities
from tokenyard.routing.features import RequestFeatures
from tokenyard.routing.policy_engine import decide

NOW = 1_700_000_000.0
CLASSES = ("public", "internal", "pii", "pci")


def entry(name: str, rng: random.Random) -> CatalogueEntry:
    external = rng.random() < 0.5
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="External" if external else "InCluster",
        quality=round(rng.uniform(0.1, 1.0), 2),
        inputPer1M=round(rng.uniform(0.1, 10), 2),
        outputPer1M=round(rng.uniform(0.1, 10), 2),
        maxModelLen=rng.choice([None, 512, 4096]),
        dataClasses=(sorted(rng.sample(CLASSES, rng.randint(1, 3))) if external else None),
        ready=rng.random() < 0.9,
    )


def features(rng: random.Random, tenant: str) -> RequestFeatures:
    return RequestFeatures(
        endpoint="chat",
        tenant=tenant,
        prompt_tokens=rng.choice([50, 400, 2000]),
        max_tokens=rng.choice([None, 64, 1024]),
        messages=1,
        difficulty=rng.random(),
        difficulty_source="classifier",
        data_classes=frozenset(rng.sample(CLASSES, rng.randint(1, 2))),
        tags=frozenset(),
        headers={},
        stream=False,
        prompt_text="x",
    )


def egress_ok(e: CatalogueEntry, classes: frozenset[str], allowed: set[str]) -> bool:
    if e.kind != "External":
        return True
    return classes <= allowed and classes <= set(e.dataClasses or ())


@pytest.mark.parametrize("seed", range(300))
def test_exploration_stays_within_what_the_policy_allows(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(rng.randint(1, 5))]
    catalogue = {n: entry(n, rng) for n in names}
    allowed_ext = set(rng.sample(CLASSES, rng.randint(1, 2)))
    budget_limit = rng.choice([None, 1.0])
    spec = RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "targets": [{"model": n} for n in names],
            "egress": {"allowedExternalDataClasses": sorted(allowed_ext)},
            "fallback": {"maxAttempts": rng.randint(1, 3)},
            "budgets": [{"tenant": "t", "limitUSD": budget_limit, "onExceeded": "Downgrade"}]
            if budget_limit is not None
            else [],
            "learning": {"exploration": {"share": rng.choice([0.05, 0.2, 0.5])}},
        }
    )
    spent = StaticSpend({"t": rng.choice([0.0, 5.0])})
    backends = {n: BackendState(circuit_open=rng.random() < 0.1) for n in names}
    share = spec.exploration
    assert share is not None
    for _ in range(20):
        f = features(rng, "t")
        try:
            d = decide(f, spec, catalogue, backends, spent, NOW, random.Random(seed))
        except RouterError:
            continue
        allowed = set(d.models)
        for draw in range(10):
            x = explore(d, share, random.Random(seed * 1000 + draw))
            first = x.decision.targets[0].model
            # Only a reordering of decide()'s own targets: egress, context, budget,
            # availability and maxAttempts are all decide's, and none is added.
            assert sorted(x.decision.models) == sorted(d.models)
            assert first in allowed
            assert egress_ok(catalogue[first], f.data_classes, allowed_ext)
            assert len(x.decision.targets) <= spec.fallback.maxAttempts
            if d.downgraded:
                assert not x.explored and x.probabilities == {d.models[0]: 1.0}
            if x.explored:
                assert x.decision.models[1] == d.models[0]  # the policy's choice is next
            assert sum(x.probabilities.values()) == pytest.approx(1.0)
            assert x.propensity(first) is not None and x.propensity(first) > 0


def test_recorded_probabilities_are_the_draw_frequencies() -> None:
    from tokenyard.routing.decision import Candidate, Decision

    d = Decision(
        endpoint="e",
        difficulty=0.1,
        targets=[Candidate("a", ""), Candidate("b", ""), Candidate("c", "")],
        skipped=[],
        rule=None,
        strategy="CheapestSufficient",
        downgraded=False,
    )
    rng = random.Random(7)
    n = 20_000
    firsts = Counter(
        explore(d, ExplorationSpec(share=0.2), rng).decision.models[0] for _ in range(n)
    )
    probs = first_probabilities(d, 0.2)
    assert probs == pytest.approx({"a": 0.8, "b": 0.1, "c": 0.1})
    for m, p in probs.items():
        assert firsts[m] / n == pytest.approx(p, abs=0.01)


def test_no_exploration_without_spec_single_target_or_after_spillover() -> None:
    from dataclasses import replace

    from tokenyard.routing.decision import Candidate, Decision

    one = Decision("e", 0.1, [Candidate("a", "")], [], None, "Ordered", False)
    two = replace(one, targets=[Candidate("a", ""), Candidate("b", "")])
    spec = ExplorationSpec(share=0.5)
    rng = random.Random(1)
    assert explore(two, None, rng).probabilities == {"a": 1.0}
    assert all(not explore(one, spec, rng).explored for _ in range(50))
    spilled = replace(two, spilled_from="b")
    assert all(not explore(spilled, spec, rng).explored for _ in range(50))
    assert any(explore(two, spec, rng).explored for _ in range(50))
