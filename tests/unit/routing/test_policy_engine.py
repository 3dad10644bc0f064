"""Table tests of the pure routing decision (tokenyard.routing.policy_engine.decide)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from tokenyard.accounting.ledger import SpendLedger
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import CatalogueEntry, PolicyEntry
from tokenyard.routing.budget import StaticSpend, budget_for, window_bounds
from tokenyard.routing.decision import BackendState, Candidate, Decision
from tokenyard.routing.errors import RouterError
from tokenyard.routing.features import RequestFeatures
from tokenyard.routing.policy_engine import decide

NOW = 1_700_000_000.0


def entry(
    name: str,
    quality: float,
    price: float,
    *,
    external: bool = False,
    max_len: int | None = None,
    classes: list[str] | None = None,
    ready: bool = True,
) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="External" if external else "InCluster",
        quality=quality,
        inputPer1M=price,
        outputPer1M=price,
        maxModelLen=max_len,
        dataClasses=classes,
        ready=ready,
    )


CATALOGUE = {
    "economy": entry("economy", 0.3, 0.1, max_len=1024),
    "standard": entry("standard", 0.6, 0.5, max_len=8192),
    "frontier": entry("frontier", 1.0, 6.0, external=True, classes=["public", "internal"]),
}


def spec(**kw: Any) -> RoutingPolicySpec:
    base: dict[str, Any] = {
        "pool": "p",
        "targets": [{"model": "economy"}, {"model": "standard"}, {"model": "frontier"}],
        "egress": {"allowedExternalDataClasses": ["public", "internal"]},
    }
    base.update(kw)
    return RoutingPolicySpec.model_validate(base)


def feat(
    difficulty: float = 0.1,
    *,
    tenant: str = "team-a",
    classes: tuple[str, ...] = ("internal",),
    prompt_tokens: int = 100,
    max_tokens: int | None = None,
    tags: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> RequestFeatures:
    return RequestFeatures(
        endpoint="chat",
        tenant=tenant,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        messages=1,
        difficulty=difficulty,
        difficulty_source="classifier",
        data_classes=frozenset(classes),
        tags=frozenset(tags),
        headers=headers or {},
        stream=False,
        prompt_text="",
    )


def run(
    f: RequestFeatures,
    policy: RoutingPolicySpec | PolicyEntry | None = None,
    *,
    backends: dict[str, BackendState] | None = None,
    spend: dict[str, float] | None = None,
    catalogue: dict[str, CatalogueEntry] | None = None,
    seed: int = 0,
) -> Decision:
    return decide(
        f,
        policy if policy is not None else spec(),
        catalogue if catalogue is not None else CATALOGUE,
        backends or {},
        StaticSpend(spend),
        NOW,
        random.Random(seed),
    )


def reasons(d: Decision) -> dict[str, str]:
    return {c.model: c.reason for c in d.skipped}


@pytest.mark.parametrize(
    ("difficulty", "expected"),
    [
        (0.0, ["economy", "standard", "frontier"]),
        (0.3, ["economy", "standard", "frontier"]),  # quality == difficulty is sufficient
        (0.31, ["standard", "frontier", "economy"]),
        (0.6, ["standard", "frontier", "economy"]),
        (0.9, ["frontier", "standard", "economy"]),
        (1.0, ["frontier", "standard", "economy"]),
    ],
)
def test_cheapest_sufficient_orders_by_price_then_quality_fallback(
    difficulty: float, expected: list[str]
) -> None:
    d = run(feat(difficulty))
    assert d.models == expected
    assert d.strategy == "CheapestSufficient"
    assert d.rule is None and not d.downgraded and d.skipped == []


def test_cheapest_sufficient_whole_decision() -> None:
    d = run(feat(0.5))
    assert d == Decision(
        endpoint="chat",
        difficulty=0.5,
        targets=[
            Candidate("standard", "cheapest sufficient: quality 0.6 >= difficulty 0.5, $0.5/1M"),
            Candidate("frontier", "next cheapest sufficient: quality 1 >= difficulty 0.5, $6/1M"),
            Candidate("economy", "fallback: quality 0.3 < difficulty 0.5, strongest first"),
        ],
        skipped=[],
        rule=None,
        strategy="CheapestSufficient",
        downgraded=False,
        tenant="team-a",
        data_classes=("internal",),
        budget=None,
    )


def test_ordered_keeps_listed_order() -> None:
    p = spec(
        strategy="Ordered",
        targets=[{"model": "frontier"}, {"model": "economy"}, {"model": "standard"}],
    )
    d = run(feat(0.9), p)
    assert d.models == ["frontier", "economy", "standard"]
    assert [c.reason for c in d.targets] == [
        "ordered: position 1",
        "ordered: position 2",
        "ordered: position 3",
    ]


def weighted_spec() -> RoutingPolicySpec:
    return spec(
        strategy="Weighted",
        targets=[
            {"model": "economy", "weight": 80},
            {"model": "standard", "weight": 20},
            {"model": "frontier"},
        ],
    )


def test_weighted_split_over_10k_draws_within_tolerance() -> None:
    rng = random.Random(42)
    p = weighted_spec()
    counts: Counter[str] = Counter()
    for _ in range(10_000):
        d = decide(feat(), p, CATALOGUE, {}, StaticSpend(), NOW, rng)
        counts[d.models[0]] += 1
        # The others follow in listed order as fallbacks.
        assert d.models[1:] == [m for m in ("economy", "standard", "frontier") if m != d.models[0]]
    assert counts["frontier"] == 0  # no weight, never first
    assert abs(counts["economy"] / 10_000 - 0.8) < 0.02
    assert abs(counts["standard"] / 10_000 - 0.2) < 0.02


def test_weighted_draws_only_among_available_targets() -> None:
    backends = {"economy": BackendState(circuit_open=True)}
    for seed in range(50):
        d = run(feat(), weighted_spec(), backends=backends, seed=seed)
        assert d.models == ["standard", "frontier"]
        assert d.targets[0].reason == "weighted pick: weight 20 of 20"


RULES = [
    {"name": "vip", "match": {"tenants": ["vip"]}, "targets": ["frontier"]},
    {"name": "hard", "match": {"difficulty": {"min": 0.8}}, "targets": ["frontier", "standard"]},
    {"name": "beta", "match": {"headers": {"X-Beta": "on"}}, "targets": ["standard"]},
    {"name": "tagged", "match": {"tags": ["cheap", "batch"]}, "targets": ["economy"]},
    {"name": "pii", "match": {"dataClasses": ["pii"]}, "targets": ["standard", "economy"]},
    {"name": "long", "match": {"promptTokens": {"min": 2000}}, "targets": ["standard"]},
]


@pytest.mark.parametrize(
    ("features", "rule", "models"),
    [
        (feat(0.9, tenant="vip"), "vip", ["frontier"]),  # first match wins over "hard"
        (feat(0.85), "hard", ["frontier", "standard"]),
        (feat(0.1, headers={"x-beta": "on"}), "beta", ["standard"]),
        (feat(0.1, headers={"x-beta": "off"}), None, ["economy", "standard", "frontier"]),
        (feat(0.5, tags=("batch", "other")), "tagged", ["economy"]),
        (feat(0.1, classes=("pii",)), "pii", ["standard", "economy"]),
        (feat(0.1, prompt_tokens=3000), "long", ["standard"]),
        (feat(0.1), None, ["economy", "standard", "frontier"]),
    ],
)
def test_rules_first_match_wins(
    features: RequestFeatures, rule: str | None, models: list[str]
) -> None:
    d = run(features, spec(rules=RULES))
    assert d.rule == rule
    assert d.models == models
    assert d.strategy == ("Rule" if rule else "CheapestSufficient")


def test_rule_with_all_conditions_needs_all() -> None:
    rules = [
        {
            "name": "both",
            "match": {"tenants": ["a"], "difficulty": {"max": 0.5}},
            "targets": ["frontier"],
        }
    ]
    assert run(feat(0.4, tenant="a"), spec(rules=rules)).rule == "both"
    assert run(feat(0.6, tenant="a"), spec(rules=rules)).rule is None
    assert run(feat(0.4, tenant="b"), spec(rules=rules)).rule is None


def test_policy_entry_is_accepted() -> None:
    pe = PolicyEntry(name="chat", namespace="ns", endpoint="chat", spec=spec().dump())
    assert run(feat(0.9), pe).models == ["frontier", "standard", "economy"]


def test_pii_never_goes_external_even_as_fallback() -> None:
    d = run(feat(0.9, classes=("pii",)))
    assert d.models == ["standard", "economy"]
    assert "egress denied: data class pii may not leave the cluster" in reasons(d)["frontier"]


def test_pii_rule_to_external_only_is_denied_403() -> None:
    rules = [{"name": "ext", "match": {}, "targets": ["frontier"]}]
    with pytest.raises(RouterError) as exc:
        run(feat(0.2, classes=("internal", "pii")), spec(rules=rules))
    assert exc.value.status == 403 and exc.value.code == "egress_denied"
    assert "pii" in exc.value.message


def test_only_external_targets_and_confidential_data_fails_closed() -> None:
    p = spec(targets=[{"model": "frontier"}])
    assert run(feat(classes=("public",)), p).models == ["frontier"]
    with pytest.raises(RouterError) as exc:
        run(feat(classes=("secret",)), p)
    assert exc.value.to_body()["error"]["code"] == "egress_denied"


def test_unknown_data_class_fails_closed_everywhere_it_is_listed() -> None:
    catalogue = dict(CATALOGUE)
    # An in-cluster model that names its classes refuses one it does not list.
    catalogue["standard"] = entry("standard", 0.6, 0.5, classes=["public", "internal", "pii"])
    d = run(feat(0.5, classes=("internal", "made-up")), catalogue=catalogue)
    assert d.models == ["economy"]  # dataClasses None: an in-cluster model takes every class
    assert reasons(d)["standard"] == "data class made-up not in the model's dataClasses"
    assert reasons(d)["frontier"].startswith("egress denied: data class made-up")


def test_context_length_skips_short_models() -> None:
    d = run(feat(0.1, prompt_tokens=900, max_tokens=200))
    assert d.models == ["standard", "frontier"]
    assert reasons(d) == {"economy": "context too long: ~1100 tokens > maxModelLen 1024"}


def test_context_within_the_estimates_error_is_noted_without_reordering() -> None:
    """~310 tokens fit economy's 1024 by the estimate, but a tokenizer may count up to
    4 x 300 + 10: the order stays, and explain says the estimate is uncertain there."""
    d = run(feat(0.1, prompt_tokens=300, max_tokens=10))
    assert d.models == ["economy", "standard", "frontier"]
    why = {c.model: c.reason for c in d.targets}
    assert why["economy"].endswith(
        "prompt estimate uncertain here: ~310 tokens estimated, up to 1210 by the "
        "estimate's error, maxModelLen 1024"
    )
    assert "uncertain" not in why["standard"] and "uncertain" not in why["frontier"]


def test_context_length_413_when_every_allowed_target_is_too_short() -> None:
    with pytest.raises(RouterError) as exc:
        run(feat(0.1, classes=("pii",), prompt_tokens=9000))
    assert exc.value.status == 413
    assert exc.value.code == "context_length_exceeded"
    # The same request may leave the cluster when it is public: the external model has room.
    assert run(feat(0.1, classes=("public",), prompt_tokens=9000)).models == ["frontier"]


def test_budget_downgrade_keeps_only_the_cheapest() -> None:
    p = spec(budgets=[{"tenant": "*", "limitUSD": 1.0, "window": "24h", "onExceeded": "Downgrade"}])
    assert run(feat(0.9), p, spend={"team-a": 0.99}).downgraded is False
    d = run(feat(0.9), p, spend={"team-a": 1.0})
    assert d.downgraded is True
    assert d.models == ["economy"]
    assert d.targets[0].reason.startswith("budget downgrade: $1.0000 of $1 spent")
    assert reasons(d) == {
        "frontier": "budget spent: downgraded to the cheapest",
        "standard": "budget spent: downgraded to the cheapest",
    }
    assert d.budget is not None and d.budget.remaining_usd == 0


def test_budget_downgrade_respects_egress_and_availability() -> None:
    p = spec(budgets=[{"tenant": "team-a", "limitUSD": 1.0, "onExceeded": "Downgrade"}])
    backends = {"economy": BackendState(ready=False)}
    d = run(feat(0.9, classes=("pii",)), p, spend={"team-a": 5.0}, backends=backends)
    assert d.models == ["standard"]  # economy is down; frontier may not see pii


def test_budget_reject_429_with_retry_after_to_window_end() -> None:
    p = spec(
        budgets=[
            {"tenant": "*", "limitUSD": 100.0},
            {"tenant": "team-a", "limitUSD": 1.0, "window": "60m", "onExceeded": "Reject"},
        ]
    )
    with pytest.raises(RouterError) as exc:
        run(feat(), p, spend={"team-a": 2.0})
    err = exc.value
    assert (err.status, err.code) == (429, "budget_exceeded")
    assert err.retry_after == window_bounds("60m", NOW)[1] - NOW
    assert err.headers() == {"Retry-After": str(int(err.retry_after))}
    # Another tenant falls under the wildcard budget and is not over it.
    assert run(feat(tenant="team-b"), p, spend={"team-b": 2.0}).models[0] == "economy"


def test_budget_reads_the_ledger_for_this_tenant_and_endpoint() -> None:
    ledger = SpendLedger()
    ledger.record("team-a", "chat", "frontier", 3.0, 1000, 1000, NOW - 10)
    ledger.record("team-a", "other-endpoint", "frontier", 50.0, 1000, 1000, NOW - 10)
    p = spec(budgets=[{"tenant": "team-a", "limitUSD": 5.0, "onExceeded": "Reject"}])
    d = decide(feat(0.9), p, CATALOGUE, {}, ledger, NOW, random.Random(0))
    assert d.budget is not None and d.budget.spent_usd == 3.0
    ledger.record("team-a", "chat", "standard", 2.0, 10, 10, NOW - 5)
    with pytest.raises(RouterError):
        decide(feat(0.9), p, CATALOGUE, {}, ledger, NOW, random.Random(0))


def test_budget_for_prefers_own_entry_over_wildcard() -> None:
    p = spec(budgets=[{"tenant": "*", "limitUSD": 1}, {"tenant": "a", "limitUSD": 2}])
    own, wild = budget_for(p.budgets, "a"), budget_for(p.budgets, "b")
    assert own is not None and own.limitUSD == 2
    assert wild is not None and wild.limitUSD == 1
    assert budget_for([], "a") is None


@pytest.mark.parametrize(
    ("backends", "catalogue_ready", "models", "skipped"),
    [
        ({"economy": BackendState(circuit_open=True)}, True, ["standard", "frontier"],
         {"economy": "circuit open"}),
        ({"standard": BackendState(ready=False)}, True, ["economy", "frontier"],
         {"standard": "not ready"}),
        ({}, False, ["standard", "frontier"], {"economy": "not ready"}),
    ],
)  # fmt: skip
def test_unavailable_backends_are_skipped(
    backends: dict[str, BackendState],
    catalogue_ready: bool,
    models: list[str],
    skipped: dict[str, str],
) -> None:
    catalogue = dict(CATALOGUE)
    catalogue["economy"] = entry("economy", 0.3, 0.1, max_len=1024, ready=catalogue_ready)
    d = run(feat(0.1), backends=backends, catalogue=catalogue)
    assert d.models == models
    assert reasons(d) == skipped


def test_half_open_target_is_tried_as_probe() -> None:
    d = run(feat(0.1), backends={"economy": BackendState(half_open=True)})
    assert d.models[0] == "economy"
    assert d.targets[0].reason.endswith("; circuit half-open: probe")


def test_all_circuits_open_503_with_earliest_retry() -> None:
    backends = {
        "economy": BackendState(circuit_open=True, retry_after=12.0),
        "standard": BackendState(circuit_open=True, retry_after=3.5),
        "frontier": BackendState(circuit_open=True, retry_after=20.0),
    }
    with pytest.raises(RouterError) as exc:
        run(feat(0.1), backends=backends)
    assert exc.value.status == 503
    assert exc.value.retry_after == 3.5
    assert exc.value.headers() == {"Retry-After": "4"}


def test_nothing_ready_503() -> None:
    backends = {n: BackendState(ready=False) for n in CATALOGUE}
    with pytest.raises(RouterError) as exc:
        run(feat(0.1), backends=backends)
    assert exc.value.status == 503 and exc.value.retry_after is not None


def test_targets_cut_to_max_attempts() -> None:
    d = run(feat(0.1), spec(fallback={"maxAttempts": 2}))
    assert d.models == ["economy", "standard"]
    assert reasons(d) == {"frontier": "beyond fallback.maxAttempts (2)"}


def test_target_missing_from_catalogue_is_skipped() -> None:
    catalogue = {k: v for k, v in CATALOGUE.items() if k != "standard"}
    d = run(feat(0.5), catalogue=catalogue)
    assert d.models == ["frontier", "economy"]
    assert reasons(d) == {"standard": "unknown model: not in the router's catalogue"}


def test_to_dict_is_json_ready() -> None:
    p = spec(budgets=[{"tenant": "*", "limitUSD": 1.0}])
    out = run(feat(0.5), p, spend={"team-a": 0.25}).to_dict()
    assert out["targets"][0] == {
        "model": "standard",
        "reason": "cheapest sufficient: quality 0.6 >= difficulty 0.5, $0.5/1M",
    }
    assert out["budget"]["spentUSD"] == 0.25 and out["budget"]["exceeded"] is False
    assert out["dataClasses"] == ["internal"]
