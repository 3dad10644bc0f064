"""Exploration: a small share of requests tried first on another allowed target.

The router calls :func:`explore` after :func:`~tokenyard.routing.policy_engine.decide`
and spill-over, with the policy's ``spec.learning.exploration``. It only reorders the
targets the decision already holds, so it never reaches a target that egress, context,
budget, availability or ``fallback.maxAttempts`` excluded; the target the policy chose
stays next, as a fallback. The probability that the served target was put first
(:attr:`Exploration.propensity`) goes into the audit line and the capture record, so
training can weight each outcome by its inverse. Pure: randomness comes in as ``rng``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from tokenyard.api.policy import ExplorationSpec
from tokenyard.routing.decision import Candidate, Decision


@dataclass(frozen=True)
class Exploration:
    """The decision after exploration and the probability of each first target."""

    decision: Decision
    chosen: str
    """The target the policy put first (before exploration)."""
    explored: bool
    """True when exploration moved another target first."""
    probabilities: dict[str, float]
    """Probability that each target of the decision was put first."""

    def propensity(self, target: str | None) -> float | None:
        """The probability that ``target`` was put first; None for a target that was not
        first by draw (a fallback after the first failed)."""
        if target is None:
            return None
        return self.probabilities.get(target)


def first_probabilities(decision: Decision, share: float) -> dict[str, float]:
    """The probability of each target being put first with exploration ``share``."""
    models = list(dict.fromkeys(decision.models))
    if not models:
        return {}
    chosen, others = models[0], models[1:]
    if not others or decision.downgraded or decision.spilled_from is not None:
        return {chosen: 1.0}
    probs = {chosen: 1.0 - share}
    for m in others:
        probs[m] = share / len(others)
    return probs


def explore(decision: Decision, spec: ExplorationSpec | None, rng: random.Random) -> Exploration:
    """The decision with, in ``spec.share`` of draws, another of its targets put first.

    Nothing changes without ``spec``, with a single target, for a budget downgrade
    (the budget allows only the cheapest target) or after spill-over (the policy's first
    choice is expected to miss its latency SLO): the first target then has probability 1.
    """
    models = list(dict.fromkeys(decision.models))
    chosen = models[0] if models else ""
    if spec is None:
        return Exploration(decision, chosen, False, {chosen: 1.0} if chosen else {})
    probs = first_probabilities(decision, spec.share)
    if len(probs) < 2 or rng.random() >= spec.share:
        return Exploration(decision, chosen, False, probs)
    others = models[1:]
    pick = others[rng.randrange(len(others))]
    first = next(c for c in decision.targets if c.model == pick)
    rest = [c for c in decision.targets if c.model != pick]
    moved = Candidate(
        first.model,
        f"exploration: tried first instead of {chosen} "
        f"(probability {probs[pick]:.4g}); {first.reason}".rstrip("; "),
    )
    return Exploration(replace(decision, targets=[moved, *rest]), chosen, True, probs)


__all__ = ["Exploration", "explore", "first_probabilities"]
