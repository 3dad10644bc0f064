"""Routing-quality metrics (RouteLLM's definitions), pure numpy.

A router gives each prompt a score; sending the top fraction ``c`` of prompts (by score)
to the strong model and the rest to the weak one gives a quality ``q(c)``, the mean
outcome of the answers chosen. :func:`quality_curve` computes that curve exactly,
:func:`summarize` the figures reported by ``tokenyard eval-routing``: APGR (the area
under PGR(c) = (q(c) - q_weak) / (q_strong - q_weak) over c in [0, 1]), CPT(x) (the
smallest strong share reaching PGR x) and the strong share and cost saving at a quality
target.

Ties: prompts with equal scores cannot be ordered by the router, so the curve takes the
expectation over every order of a tied group. Taking m of a group of g tied prompts at
random adds m/g of the group's gain in expectation, so the curve is piecewise linear
between tie-group boundaries and the trapezoid rule gives its area exactly. A router
that gives every prompt the same score therefore scores APGR 0.5, like random routing.
Called by :mod:`tokenyard.routing.quality.evaluate`; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tokenyard.routing.quality import ROUTELLM_STRONG_PRICE, ROUTELLM_WEAK_PRICE

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class QualityCurve:
    """Quality against the share of strong calls, as knots of a piecewise-linear curve."""

    share: FloatArray
    """Strong-call shares at the knots, from 0 to 1 (tie-group boundaries)."""
    quality: FloatArray
    """Mean outcome at each knot."""
    q_weak: float
    q_strong: float

    @property
    def gap(self) -> float:
        return self.q_strong - self.q_weak

    def pgr(self) -> FloatArray | None:
        """PGR at each knot, or None when the strong model is not better (no gap)."""
        if not self.gap > 0:
            return None
        return (self.quality - self.q_weak) / self.gap

    def at(self, share: float) -> float:
        """q(share), interpolated between knots."""
        return float(np.interp(share, self.share, self.quality))


def _as_array(values: Sequence[float] | FloatArray, name: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def quality_curve(
    scores: Sequence[float] | FloatArray,
    weak: Sequence[float] | FloatArray,
    strong: Sequence[float] | FloatArray,
    weights: Sequence[float] | FloatArray | None = None,
) -> QualityCurve:
    """The exact quality curve of a router's scores (higher score: strong model first).

    ``weak`` and ``strong`` are each prompt's outcome with either model (0/1, or a score
    in [0, 1]). ``weights`` (optional, positive) count each prompt that many times: the
    shares and means are weighted (training on the pool's own feedback weights each
    prompt by the inverse of its propensity).
    """
    s = _as_array(scores, "scores")
    w = _as_array(weak, "weak")
    t = _as_array(strong, "strong")
    n = s.size
    if n == 0 or w.size != n or t.size != n:
        raise ValueError("scores, weak and strong must be non-empty and of equal length")
    m = np.ones(n) if weights is None else _as_array(weights, "weights")
    if m.size != n or not np.all(m > 0):
        raise ValueError("weights must be positive, one per prompt")
    total = float(m.sum())
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    gain = ((t - w) * m)[order]
    # Knots at the end of each tie group (descending scores).
    ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True)) + 1
    cum_gain = np.concatenate(([0.0], np.cumsum(gain)[ends - 1]))
    share = np.concatenate(([0.0], np.cumsum(m[order])[ends - 1] / total))
    share[-1] = 1.0  # exactly, whatever the rounding of the weights' sum
    mw = None if weights is None else m
    q_weak = float(np.average(w, weights=mw))
    quality = q_weak + cum_gain / total
    q_strong = float(np.average(t, weights=mw))
    return QualityCurve(share=share, quality=quality, q_weak=q_weak, q_strong=q_strong)


def apgr(curve: QualityCurve) -> float | None:
    """Area under PGR over the strong share in [0, 1]; None without a quality gap."""
    pgr = curve.pgr()
    if pgr is None:
        return None
    widths = np.diff(curve.share)
    return float(np.sum(widths * (pgr[1:] + pgr[:-1]) / 2))


def _first_share(share: FloatArray, values: FloatArray, target: float) -> float | None:
    """The smallest share where the piecewise-linear ``values`` reach ``target``."""
    # Round-off guard: a curve that reaches the target by arithmetic must count.
    eps = 1e-12
    if values[0] >= target - eps:
        return 0.0
    for i in range(1, values.size):
        if values[i] >= target - eps:
            v0, v1 = values[i - 1], values[i]
            c0, c1 = share[i - 1], share[i]
            frac = (target - v0) / (v1 - v0)
            return float(min(c1, max(c0, c0 + frac * (c1 - c0))))
    return None


def cpt(curve: QualityCurve, pgr_target: float) -> float | None:
    """CPT(x): the smallest strong share reaching PGR ``pgr_target`` (e.g. 0.5)."""
    pgr = curve.pgr()
    if pgr is None:
        return None
    return _first_share(curve.share, pgr, pgr_target)


def share_for_quality(curve: QualityCurve, fraction_of_strong: float) -> float | None:
    """The smallest strong share whose quality reaches ``fraction_of_strong`` of q_strong."""
    return _first_share(curve.share, curve.quality, fraction_of_strong * curve.q_strong)


def cost_saving(share: float, strong_price: float, weak_price: float) -> float:
    """Saving against all-strong at a strong share (equal tokens per prompt)."""
    cost = share * strong_price + (1 - share) * weak_price
    return 1.0 - cost / strong_price


@dataclass(frozen=True)
class RouterMetrics:
    """The figures reported for one router on one set."""

    apgr: float | None
    cpt50: float | None
    cpt80: float | None
    quality_target: float
    """The quality target as a fraction of the strong model's (default 0.95)."""
    strong_share_at_target: float | None
    cost_saving_at_target: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "apgr": self.apgr,
            "cpt50": self.cpt50,
            "cpt80": self.cpt80,
            "quality_target": self.quality_target,
            "strong_share_at_target": self.strong_share_at_target,
            "cost_saving_at_target": self.cost_saving_at_target,
        }


def summarize(
    curve: QualityCurve,
    *,
    quality_target: float = 0.95,
    strong_price: float = ROUTELLM_STRONG_PRICE,
    weak_price: float = ROUTELLM_WEAK_PRICE,
) -> RouterMetrics:
    """APGR, CPT(50%), CPT(80%), and the strong share and saving at the quality target."""
    share = share_for_quality(curve, quality_target)
    return RouterMetrics(
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
        quality_target=quality_target,
        strong_share_at_target=share,
        cost_saving_at_target=(
            None if share is None else cost_saving(share, strong_price, weak_price)
        ),
    )


@dataclass(frozen=True)
class RandomRange:
    """Central 95% range of random routing's figures, from seeded random orders."""

    draws: int
    apgr: tuple[float, float] | None
    cost_saving_at_target: tuple[float, float] | None


def random_range(
    weak: Sequence[float] | FloatArray,
    strong: Sequence[float] | FloatArray,
    *,
    draws: int = 400,
    seed: int = 0,
    quality_target: float = 0.95,
    strong_price: float = ROUTELLM_STRONG_PRICE,
    weak_price: float = ROUTELLM_WEAK_PRICE,
) -> RandomRange:
    """The 2.5th-97.5th percentiles of APGR and saving over ``draws`` random routers."""
    w = _as_array(weak, "weak")
    t = _as_array(strong, "strong")
    rng = np.random.default_rng(seed)
    apgrs: list[float] = []
    savings: list[float] = []
    for _ in range(draws):
        m = summarize(
            quality_curve(rng.random(w.size), w, t),
            quality_target=quality_target,
            strong_price=strong_price,
            weak_price=weak_price,
        )
        if m.apgr is not None:
            apgrs.append(m.apgr)
        if m.cost_saving_at_target is not None:
            savings.append(m.cost_saving_at_target)

    def span(xs: list[float]) -> tuple[float, float] | None:
        if not xs:
            return None
        lo, hi = np.percentile(xs, [2.5, 97.5])
        return float(lo), float(hi)

    return RandomRange(draws=draws, apgr=span(apgrs), cost_saving_at_target=span(savings))


__all__ = [
    "ROUTELLM_STRONG_PRICE",
    "ROUTELLM_WEAK_PRICE",
    "QualityCurve",
    "RandomRange",
    "RouterMetrics",
    "apgr",
    "cost_saving",
    "cpt",
    "quality_curve",
    "random_range",
    "share_for_quality",
    "summarize",
]
