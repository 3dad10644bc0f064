"""train-router --from-state's training set (tokenyard.routing.learned.from_state):
captured prompts joined with their latest rating, inverse propensity weights, and a
model trained on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenyard.routing.learned.from_state import (
    MIN_PROPENSITY,
    latest_scores,
    load_state,
    rated_prompts,
    training_set,
)
from tokenyard.routing.learned.state_files import CAPTURE_DIR, FEEDBACK_FILE, endpoint_dir
from tokenyard.routing.learned.train import fit


def cap(
    rid: str, target: str, propensity: float | None, text: str = "q", **kw: Any
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "endpoint": "ep",
        "kind": "chat",
        "messages": [{"role": "user", "content": text}],
        "target": target,
        "baseline_target": "strong",
        "propensity": propensity,
        "explored": propensity is not None and propensity < 0.5,
        **kw,
    }


def test_the_latest_rating_wins_and_junk_is_skipped() -> None:
    fb = [
        {"request_id": "a", "score": 0.0, "time": 1},
        {"request_id": "a", "score": 1.0, "time": 2},
        {"request_id": "b", "score": "x"},
        {"score": 1},
        {"request_id": "c", "score": 0.5, "time": 5},
        {"request_id": "c", "score": 0.1, "time": 4},
    ]
    assert latest_scores(fb) == {"a": 1.0, "c": 0.5}


def test_rows_are_cheaper_answers_weighted_by_inverse_propensity() -> None:
    caps = [
        cap("w1", "cheap", 0.9),  # the policy's choice: weight 1 / 0.9
        cap("w2", "cheap", 0.1),  # explored onto cheap: weight 10
        cap("w3", "cheap", 0.001),  # clipped at 1 / MIN_PROPENSITY
        cap("fb", "cheap", None),  # a fallback answered: no propensity, left out
        cap("s1", "strong", 0.9),
        cap("s2", "strong", 0.1),
        cap("unrated", "cheap", 0.9),
        cap("other", "cheap", 0.9, endpoint="elsewhere"),
    ]
    scores = {"w1": 1.0, "w2": 0.0, "w3": 1.0, "fb": 1.0, "s1": 1.0, "s2": 0.0, "other": 1.0}
    rated = rated_prompts(caps, scores, endpoint="ep")
    assert [r.request_id for r in rated] == ["w1", "w2", "w3", "fb", "s1", "s2"]
    ts = training_set(rated)
    raw = np.array([1 / 0.9, 10.0, 1 / MIN_PROPENSITY])
    assert ts.weights == pytest.approx(raw * 3 / raw.sum())
    assert list(ts.weak) == [1.0, 0.0, 1.0]
    # The strongest target's IPW mean: (1 * 1/0.9 + 0 * 10) / (1/0.9 + 10).
    assert ts.strong == pytest.approx(np.full(3, (1 / 0.9) / (1 / 0.9 + 10)))
    assert ts.summary["fallbacksLeftOut"] == 1 and ts.summary["rows"] == 3


def test_no_cheaper_answer_is_a_clear_error() -> None:
    rated = rated_prompts([cap("s", "strong", 1.0)], {"s": 1.0})
    with pytest.raises(ValueError, match="cheaper target"):
        training_set(rated)


def test_weighting_moves_the_model_toward_the_explored_evidence() -> None:
    """The same prompts and ratings; only the propensities differ. A topic the policy
    sends to the cheap model rarely (explored, p = 0.05) and that was bad there must
    count 1/p times, not once: with weights its score rises above the other topic's by
    more than without."""
    topics = {"tax": "how do I file my tax return form", "cook": "how do I boil pasta well"}
    caps, scores = [], {}
    for i in range(120):
        topic = "tax" if i % 4 == 0 else "cook"
        rid = f"r{i}"
        caps.append(cap(rid, "cheap", 0.05 if topic == "tax" else 0.95, f"{topics[topic]} {i}"))
        scores[rid] = 0.0 if topic == "tax" and i % 8 == 0 else 1.0
    ts = training_set(rated_prompts(caps, scores))
    weighted = fit(ts.parsed, ts.weak, ts.strong, weights=ts.weights, calibrate=False)
    flat = fit(ts.parsed, ts.weak, ts.strong, weights=np.ones_like(ts.weights), calibrate=False)
    tax, cook = ts.parsed[0], ts.parsed[1]
    gap_w = weighted.raw(tax) - weighted.raw(cook)
    gap_flat = flat.raw(tax) - flat.raw(cook)
    assert gap_w > gap_flat > 0


def test_load_state_reads_the_router_s_files(tmp_path: Path) -> None:
    d = tmp_path / CAPTURE_DIR / endpoint_dir("ep")
    d.mkdir(parents=True)
    lines = [cap(f"r{i}", "cheap" if i % 3 else "strong", 0.9, f"prompt {i}") for i in range(60)]
    (d / "500000.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{torn")
    fb = [{"request_id": f"r{i}", "score": float(i % 2), "time": 1} for i in range(60)]
    (tmp_path / FEEDBACK_FILE).write_text("".join(json.dumps(x) + "\n" for x in fb))
    ts = load_state(tmp_path)
    assert len(ts.parsed) == 40 and ts.summary["strongRated"] == 20
    # A damaged byte (a disk error, a torn multi-byte write) costs its line, not the run.
    with (tmp_path / FEEDBACK_FILE).open("ab") as fh:
        fh.write(b'{"request_id": "r1", "score": 1, "time": 2, "note": "\xff"}\n')
    assert len(load_state(tmp_path).parsed) == 40
    model = fit(ts.parsed, ts.weak, ts.strong, weights=ts.weights)
    assert 0.0 <= model.score(ts.parsed[0]) <= 1.0
    with pytest.raises(ValueError, match="no feedback"):
        load_state(tmp_path / CAPTURE_DIR)
