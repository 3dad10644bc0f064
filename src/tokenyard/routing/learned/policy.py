"""A policy's learned classifier: the artifact's score turned into the policy's difficulty.

The router compares a request's difficulty with its targets' ``quality`` (the cheapest
target whose quality is at least the difficulty serves it). A learned model's score
means something else: the calibrated expected gain from the strong model
(:mod:`.model`). :class:`PolicyClassifier` maps one onto the other with the threshold the
operator read from the artifact's quality table for the policy's ``keepStrongQuality``
(:func:`tokenyard.contract.learned_classifier_entry`):

- score ≥ threshold: a difficulty just above the next-strongest target's quality, up to
  the strongest target's quality, so the strongest target is the cheapest sufficient;
- score < threshold: ``q_next · score / threshold``, below the next-strongest target's
  quality, so the cheaper targets serve it (a lower score reaching cheaper tiers).

With one target quality among the targets there is nothing to choose: the score is the
difficulty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenyard.routing.classifiers.base import ClassifiableRequest
from tokenyard.routing.learned.model import DifficultyModel, load_model

_ABOVE = 1e-6
"""How far above the next-strongest quality a score at the threshold lands."""


@dataclass(frozen=True)
class PolicyClassifier:
    """A :class:`DifficultyModel` with a policy's threshold and its targets' qualities."""

    model: DifficultyModel
    version: str
    """The artifact's version, checked against its content once, when it was loaded
    (computing it hashes every weight: never per request)."""
    threshold: float
    keep_strong_quality: float
    strong_quality: float
    next_quality: float | None
    """The highest target quality below ``strong_quality``; None if there is none."""

    @classmethod
    def build(
        cls,
        model: DifficultyModel,
        version: str,
        threshold: float,
        keep_strong_quality: float,
        qualities: Sequence[float],
    ) -> PolicyClassifier:
        strong = max(qualities, default=1.0)
        below = [q for q in qualities if q < strong]
        return cls(model, version, threshold, keep_strong_quality, strong, max(below, default=None))

    def difficulty(self, score: float) -> float:
        """The difficulty the policy engine compares with target qualities."""
        if self.next_quality is None:
            return score
        t, lo, hi = self.threshold, self.next_quality, self.strong_quality
        if score >= t:
            frac = (score - t) / (1.0 - t) if t < 1.0 else 1.0
            return min(hi, lo + max(_ABOVE, (hi - lo) * frac))
        return lo * score / t if t > 0 else 0.0

    def score(self, parsed: ClassifiableRequest) -> float:
        """The router's call: the difficulty for this policy (see :meth:`difficulty`)."""
        return self.difficulty(self.model.score(parsed))

    def explain(self, parsed: ClassifiableRequest) -> dict[str, Any]:
        """What ``explain`` shows: the score, the threshold, and what they mean."""
        s = self.model.score(parsed)
        needs = s >= self.threshold
        return {
            "type": "Learned",
            "version": self.version,
            "score": s,
            "threshold": self.threshold,
            "keepStrongQuality": self.keep_strong_quality,
            "difficulty": round(self.difficulty(s), 6),
            "meaning": (
                f"score {s:g} {'>=' if needs else '<'} threshold {self.threshold:g}: "
                + (
                    f"the strongest targets (quality {self.strong_quality:g}) are needed"
                    if needs
                    else "targets below the strongest quality suffice"
                )
                + f" to keep {self.keep_strong_quality:g} of the strong model's quality"
            ),
        }


def build_policy_classifier(
    entry: Any,
    qualities: Sequence[float],
    cache: Mapping[str, DifficultyModel] | None = None,
) -> PolicyClassifier:
    """The classifier of a ``contract.LearnedClassifierEntry``; raises
    :class:`~tokenyard.routing.learned.model.ArtifactError` (a ValueError) when the
    artifact does not load or its version is not its content's. ``cache`` holds models
    already loaded, by version, so a reconfigure does not parse the same artifact again."""
    model = (cache or {}).get(entry.version)
    if model is None:
        model = load_model(entry.artifact.encode())
        if model.version != entry.version:
            raise ValueError(
                f"artifact version {entry.version} does not match its content ({model.version})"
            )
    return PolicyClassifier.build(
        model, entry.version, entry.threshold, entry.keepStrongQuality, qualities
    )


__all__ = ["PolicyClassifier", "build_policy_classifier"]
