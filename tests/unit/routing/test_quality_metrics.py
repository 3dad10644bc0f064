"""Routing-quality metrics against curves computed by hand (ties, all-correct, tiny sets)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tokenyard.routing.quality.metrics import (
    apgr,
    cost_saving,
    cpt,
    quality_curve,
    random_range,
    share_for_quality,
    summarize,
)

# Four prompts: the strong model gains on the first two, loses on the last.
WEAK = [0, 0, 1, 1]
STRONG = [1, 1, 1, 0]  # q_weak 0.5, q_strong 0.75, gap 0.25


@pytest.mark.parametrize(
    ("scores", "shares", "quality", "expected_apgr"),
    [
        # No ties, best order: PGR 0, 1, 2, 2, 1 at c = 0, .25, .5, .75, 1.
        ([4, 3, 2, 1], [0, 0.25, 0.5, 0.75, 1], [0.5, 0.75, 1.0, 1.0, 0.75], 1.375),
        # Worst order: the losing prompt first. PGR 0, -1, -1, 0, 1.
        ([1, 2, 3, 4], [0, 0.25, 0.5, 0.75, 1], [0.5, 0.25, 0.25, 0.5, 0.75], -0.375),
        # All tied: one straight segment from q_weak to q_strong, like random routing.
        ([7, 7, 7, 7], [0, 1], [0.5, 0.75], 0.5),
        # Two tie groups: {0, 1} (gain 2) then {2, 3} (gain -1): PGR 0, 2, 1.
        ([5, 5, 1, 1], [0, 0.5, 1], [0.5, 1.0, 0.75], 1.25),
        # A tie group in the middle: 4 | {3, 3} | 1 -> PGR 0, 1, 2, 1.
        ([4, 3, 3, 1], [0, 0.25, 0.75, 1], [0.5, 0.75, 1.0, 0.75], 1.25),
    ],
)
def test_curve_and_apgr(
    scores: list[float], shares: list[float], quality: list[float], expected_apgr: float
) -> None:
    curve = quality_curve(scores, WEAK, STRONG)
    assert curve.share.tolist() == pytest.approx(shares)
    assert curve.quality.tolist() == pytest.approx(quality)
    assert (curve.q_weak, curve.q_strong) == (0.5, 0.75)
    assert apgr(curve) == pytest.approx(expected_apgr)


def test_cpt_and_quality_target_by_hand() -> None:
    curve = quality_curve([4, 3, 2, 1], WEAK, STRONG)
    # PGR rises 0 -> 1 over c in [0, .25]: PGR x is reached at c = x / 4.
    assert cpt(curve, 0.5) == pytest.approx(0.125)
    assert cpt(curve, 0.8) == pytest.approx(0.2)
    # 95% of q_strong = 0.7125, reached at c = (0.7125 - 0.5) / 0.25 * 0.25.
    assert share_for_quality(curve, 0.95) == pytest.approx(0.2125)
    m = summarize(curve, strong_price=10, weak_price=1)
    assert m.strong_share_at_target == pytest.approx(0.2125)
    assert m.cost_saving_at_target == pytest.approx(1 - (2.125 + 0.7875) / 10)


def test_tied_router_is_random_in_expectation() -> None:
    curve = quality_curve([0.3] * 4, WEAK, STRONG)
    assert cpt(curve, 0.5) == pytest.approx(0.5)
    assert cpt(curve, 0.8) == pytest.approx(0.8)
    assert share_for_quality(curve, 0.95) == pytest.approx((0.95 * 0.75 - 0.5) / 0.25)


def test_all_correct_has_no_gap() -> None:
    curve = quality_curve([1, 2, 3], [1, 1, 1], [1, 1, 1])
    m = summarize(curve, strong_price=10, weak_price=1)
    assert m.apgr is None and m.cpt50 is None and m.cpt80 is None
    # The weak model already has all of the strong one's quality: no strong calls needed.
    assert m.strong_share_at_target == 0.0
    assert m.cost_saving_at_target == pytest.approx(0.9)


def test_weak_better_than_strong_has_no_apgr() -> None:
    curve = quality_curve([1, 2], [1, 1], [0, 1])
    assert apgr(curve) is None
    assert share_for_quality(curve, 0.95) == 0.0


@pytest.mark.parametrize(("weak", "strong", "expected"), [(0, 1, 0.5), (0, 0.5, 0.5)])
def test_single_prompt(weak: float, strong: float, expected: float) -> None:
    curve = quality_curve([0.9], [weak], [strong])
    assert apgr(curve) == pytest.approx(expected)
    assert cpt(curve, 0.8) == pytest.approx(0.8)


def test_soft_outcomes() -> None:
    curve = quality_curve([2, 1], [0.2, 0.6], [0.8, 0.6])
    # q_weak 0.4, q_strong 0.7; the first prompt recovers the whole gap.
    assert curve.quality.tolist() == pytest.approx([0.4, 0.7, 0.7])
    assert apgr(curve) == pytest.approx(0.75)


def test_oracle_bounds_every_order() -> None:
    weak = np.array([0, 1, 0, 1, 0, 1])
    strong = np.array([1, 1, 0, 0, 1, 1])
    best = apgr(quality_curve(strong - weak, weak, strong))
    assert best is not None
    for perm in itertools.permutations(range(6)):
        other = apgr(quality_curve(np.array(perm, dtype=float), weak, strong))
        assert other is not None and other <= best + 1e-12


def test_cost_saving() -> None:
    assert cost_saving(0.0, 24.7, 0.24) == pytest.approx(1 - 0.24 / 24.7)
    assert cost_saving(1.0, 24.7, 0.24) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("scores", "weak", "strong"),
    [([], [], []), ([1, 2], [0], [1, 1]), ([np.nan], [0], [1]), ([[1]], [[0]], [[1]])],
)
def test_rejects_bad_input(scores: list[float], weak: list[float], strong: list[float]) -> None:
    with pytest.raises(ValueError):
        quality_curve(scores, weak, strong)


def test_random_range_brackets_one_half() -> None:
    rng = np.random.default_rng(3)
    weak = (rng.random(400) < 0.6).astype(float)
    strong = np.maximum(weak, (rng.random(400) < 0.5).astype(float))
    rr = random_range(weak, strong, draws=200, seed=1)
    assert rr.apgr is not None and rr.apgr[0] < 0.5 < rr.apgr[1]
    assert rr.cost_saving_at_target is not None
    assert rr.cost_saving_at_target[0] <= rr.cost_saving_at_target[1]
    assert random_range(weak, strong, draws=50, seed=1) == random_range(
        weak, strong, draws=50, seed=1
    )


def test_weights_count_a_prompt_that_many_times() -> None:
    # Weight 2 on the second prompt is the same curve as that prompt listed twice.
    scores, weights = [4, 3, 2, 1], [1, 2, 1, 1]
    weighted = quality_curve(scores, WEAK, STRONG, weights)
    repeated = quality_curve([4, 3, 3, 2, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 0])
    # Knots: the repeated rows tie (one knot), so compare the curves where both have knots.
    assert weighted.q_weak == pytest.approx(repeated.q_weak) == pytest.approx(0.4)
    assert weighted.q_strong == pytest.approx(repeated.q_strong) == pytest.approx(0.8)
    np.testing.assert_allclose(weighted.share, repeated.share)
    np.testing.assert_allclose(weighted.quality, repeated.quality)
    assert apgr(weighted) == pytest.approx(apgr(repeated))
    # By hand: shares 0, .2, .6, .8, 1; quality .4, .6, 1.0, 1.0, .8.
    np.testing.assert_allclose(weighted.share, [0, 0.2, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(weighted.quality, [0.4, 0.6, 1.0, 1.0, 0.8])
    # Equal weights change nothing.
    same = quality_curve(scores, WEAK, STRONG, [3, 3, 3, 3])
    plain = quality_curve(scores, WEAK, STRONG)
    np.testing.assert_allclose(same.quality, plain.quality)
    assert apgr(same) == pytest.approx(apgr(plain))


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 0, 1, 1], [1, -1, 1, 1], [1, np.nan, 1, 1]])
def test_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        quality_curve([4, 3, 2, 1], WEAK, STRONG, weights)
