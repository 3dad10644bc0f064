"""spec.classifier.shadow through the operator: the candidate artifact delivered to the
router beside the live classifier, and the router's shadow counts into status.shadow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.unit.operator.factories import NOW, policy_doc, with_

from tokenyard.api.policy import RoutingPolicy
from tokenyard.operator import status
from tokenyard.operator.builders.serve_config import policy_entry, shadow_classifier
from tokenyard.operator.status import PolicyContext
from tokenyard.operator.traffic import traffic_fields

ARTIFACT = (Path(__file__).parents[1] / "fixtures" / "difficulty-model.json").read_text()
SHADOW = {"name": "candidate", "key": "model.json"}


def shadowed(**classifier: Any) -> RoutingPolicy:
    doc = with_(policy_doc(), "spec.classifier", {"shadow": SHADOW, **classifier})
    return RoutingPolicy.model_validate(doc)


def test_the_candidate_is_delivered_beside_the_heuristic() -> None:
    entry = policy_entry(shadowed(), {"candidate": {"model.json": ARTIFACT}})
    assert entry.classifier is None
    assert entry.shadow is not None and entry.shadow.artifact == ARTIFACT
    assert entry.shadow.keepStrongQuality == 0.95


def test_a_missing_candidate_is_not_delivered_and_says_why() -> None:
    entry, why = shadow_classifier(shadowed(), {})
    assert entry is None
    assert why == (
        "spec.classifier.shadow: ConfigMap 'candidate' not found in namespace 'team-a'; "
        "nothing is scored"
    )
    assert policy_entry(shadowed(), {}).shadow is None
    assert shadow_classifier(shadowed(), {"candidate": {"model.json": "{"}})[0] is None


SHADOW_DOC = {
    "version": "860785566355519a",
    "scope": "replica",
    "requests": 40,
    "disagreement": 0.25,
    "strongShare": 0.3,
    "liveStrongShare": 0.05,
    "estimatedCostUSDPer1K": 0.0123456789,
    "liveEstimatedCostUSDPer1K": 0.004,
}


def stats_with(shadow: Any) -> dict[str, Any]:
    ep = {
        "requests": 40,
        "fallbacks": 0,
        "byTarget": {"economy": 40},
        "recent": {"requests": 40, "byTarget": {"economy": 40}},
        "spendUSD": 0.1,
        "spendWindow": "24h",
        "shadow": shadow,
    }
    return {"endpoints": {"chat": ep}}


def test_shadow_counts_become_status_fields() -> None:
    fields = traffic_fields(stats_with(SHADOW_DOC), "chat", ["economy"])
    assert fields["shadow"] == {
        "version": "860785566355519a",
        "requests": 40,
        "disagreement": 0.25,
        "strongShare": 0.3,
        "liveStrongShare": 0.05,
        "estimatedCostUSDPer1K": 0.012346,
        "liveEstimatedCostUSDPer1K": 0.004,
    }
    ctx = PolicyContext(pool=None, traffic=fields)
    assert status.build_policy_status(shadowed(), ctx, now=NOW)["shadow"] == fields["shadow"]
    # Without a candidate in spec, status.shadow is removed (None in a merge patch).
    plain = RoutingPolicy.model_validate(policy_doc())
    assert status.build_policy_status(plain, ctx, now=NOW)["shadow"] is None


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "x",
        {**SHADOW_DOC, "version": 3},
        {**SHADOW_DOC, "requests": -1},
        {**SHADOW_DOC, "disagreement": 1.5},
        {**SHADOW_DOC, "strongShare": True},
        {**SHADOW_DOC, "estimatedCostUSDPer1K": float("nan")},
        {k: v for k, v in SHADOW_DOC.items() if k != "liveStrongShare"},
    ],
)
def test_a_garbled_shadow_entry_gives_no_shadow_but_keeps_the_rest(bad: Any) -> None:
    fields = traffic_fields(stats_with(bad), "chat", ["economy"])
    assert "shadow" not in fields and fields["requests"] == 40
