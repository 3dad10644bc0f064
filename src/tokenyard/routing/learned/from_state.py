"""The training set of ``tokenyard train-router --from-state``: captured prompts joined
with the feedback their answers got.

The router keeps, in the pool's state volume (:mod:`.state_files`), sampled prompts
with their routing decision (``spec.learning.capture``) and every rating
(``POST /v1/tokenyard/feedback``). A rated captured prompt tells how good the target
that answered it was: :func:`training_set` turns the ones a cheaper target answered
into rows whose weak outcome is the rating ("was the cheaper target good enough") and
whose strong outcome is the mean rating of the endpoint's strongest target. Each row is
weighted by the inverse of the probability that its target was tried first
(``propensity``: 1 - share for the policy's choice, share / others for a target
exploration picked), so prompts the policy rarely sends to a cheaper target count for
as many as it would have sent there without the policy's bias (inverse propensity
weighting); answers given by a fallback (no propensity) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenyard.routing.errors import RouterError
from tokenyard.routing.learned.state_files import FEEDBACK_FILE, captured, read_lines
from tokenyard.routing.request import ParsedRequest, parse_request

FloatArray = npt.NDArray[np.float64]

MIN_PROPENSITY = 0.01
"""Propensities below this are clipped (weights above 100) so a few explored answers
cannot swamp the set (the usual clipped IPW estimator)."""


@dataclass(frozen=True)
class RatedPrompt:
    """A captured prompt, the target that answered it and the rating it got."""

    request_id: str
    endpoint: str
    parsed: ParsedRequest
    target: str
    strongest: str | None
    score: float
    propensity: float | None
    explored: bool

    @property
    def weight(self) -> float:
        """Inverse propensity weight (clipped at 1 / MIN_PROPENSITY)."""
        return 1.0 / max(self.propensity or 1.0, MIN_PROPENSITY)


@dataclass(frozen=True)
class TrainingSet:
    """Rows for :func:`~.train.fit`, with what they came from."""

    parsed: list[ParsedRequest]
    weak: FloatArray
    strong: FloatArray
    weights: FloatArray
    summary: dict[str, Any]


def latest_scores(feedback: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The last rating of each request id (a request rated twice keeps the newer)."""
    out: dict[str, tuple[float, float]] = {}
    for f in feedback:
        rid, score, t = f.get("request_id"), f.get("score"), f.get("time", 0.0)
        if not isinstance(rid, str) or not isinstance(score, int | float):
            continue
        if not isinstance(t, int | float):
            t = 0.0
        if rid not in out or t >= out[rid][0]:
            out[rid] = (float(t), float(score))
    return {rid: s for rid, (_, s) in out.items()}


def _parse(rec: Mapping[str, Any]) -> ParsedRequest | None:
    body: dict[str, Any] = {"model": str(rec.get("endpoint", "x"))}
    kind = rec.get("kind", "chat")
    if kind == "chat" and isinstance(rec.get("messages"), list):
        body["messages"] = rec["messages"]
    elif kind == "completion" and rec.get("prompt") is not None:
        body["prompt"] = rec["prompt"]
    else:
        return None
    if isinstance(rec.get("max_tokens"), int):
        body["max_tokens"] = rec["max_tokens"]
    try:
        return parse_request(body, {}, "chat" if kind == "chat" else "completion")
    except RouterError:
        return None


def rated_prompts(
    captures: Iterable[Mapping[str, Any]],
    scores: Mapping[str, float],
    endpoint: str | None = None,
) -> list[RatedPrompt]:
    """Captured prompts that were rated (of ``endpoint`` only, when given)."""
    out: list[RatedPrompt] = []
    seen: set[str] = set()
    for rec in captures:
        rid = rec.get("request_id")
        if not isinstance(rid, str) or rid not in scores or rid in seen:
            continue
        if endpoint is not None and rec.get("endpoint") != endpoint:
            continue
        parsed = _parse(rec)
        target = rec.get("target")
        if parsed is None or not isinstance(target, str):
            continue
        seen.add(rid)
        p = rec.get("propensity")
        out.append(
            RatedPrompt(
                request_id=rid,
                endpoint=str(rec.get("endpoint")),
                parsed=parsed,
                target=target,
                strongest=rec.get("baseline_target"),
                score=min(max(scores[rid], 0.0), 1.0),
                propensity=float(p) if isinstance(p, int | float) and p > 0 else None,
                explored=bool(rec.get("explored", False)),
            )
        )
    return out


def training_set(rated: list[RatedPrompt]) -> TrainingSet:
    """Rows of the prompts a cheaper target answered (see the module docstring); a
    ValueError when there are none, or none answered by the strongest target."""
    usable = [r for r in rated if r.propensity is not None and r.strongest is not None]
    strong = [r for r in usable if r.target == r.strongest]
    weak = [r for r in usable if r.target != r.strongest]
    if not weak:
        raise ValueError(
            "no rated captured prompt was answered by a cheaper target; capture more "
            "traffic (spec.learning.capture) and rate its answers"
        )
    if strong:
        # Self-normalised IPW mean: the strongest target's expected rating on the
        # traffic as a whole, not only on the prompts the policy sends it.
        w = np.array([r.weight for r in strong])
        strong_mean = float(np.average([r.score for r in strong], weights=w))
    else:
        strong_mean = 1.0
    weights = np.array([r.weight for r in weak])
    weights = weights * (weights.size / weights.sum())  # mean 1: C keeps its meaning
    return TrainingSet(
        parsed=[r.parsed for r in weak],
        weak=np.array([r.score for r in weak]),
        strong=np.full(len(weak), strong_mean),
        weights=weights,
        summary={
            "source": "state",
            "ratedPrompts": len(rated),
            "rows": len(weak),
            "strongRated": len(strong),
            "strongMeanScore": round(strong_mean, 4),
            "explored": sum(r.explored for r in usable),
            "fallbacksLeftOut": len(rated) - len(usable),
            "weighting": f"inverse propensity, clipped at {1 / MIN_PROPENSITY:g}",
        },
    )


def load_state(root: str | Path, endpoint: str | None = None) -> TrainingSet:
    """The training set of a learning directory (:func:`.state_files.learning_dir`)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    scores = latest_scores(read_lines(root / FEEDBACK_FILE))
    if not scores:
        raise ValueError(f"{root}: no feedback found ({FEEDBACK_FILE})")
    return training_set(rated_prompts(captured(root), scores, endpoint))


__all__ = [
    "MIN_PROPENSITY",
    "RatedPrompt",
    "TrainingSet",
    "latest_scores",
    "load_state",
    "rated_prompts",
    "training_set",
]
