"""The built-in difficulty classifier: a deterministic heuristic that costs microseconds.

:class:`HeuristicClassifier` looks at prompt length, conversation depth and requested
output length; it answers the
:class:`~tokenyard.routing.classifiers.base.DifficultyClassifier` call like any other
classifier. :func:`tokenyard.routing.features.extract_features` uses it by default.

Prompt length is its primary signal because it is the one that carries measured
evidence: on the public RouteLLM MMLU and GSM8K sets (docs/routing-quality.md), prompts
matching the earlier code, maths and reasoning patterns did not need the strong model
more often on MMLU (the strong model's gain was lower where they matched: 0.06 against
0.13 for the maths patterns, 0.10 against 0.13 for code) and more often on GSM8K, so
adding them lowered MMLU's APGR from 0.586 (length alone) to 0.541 at their old weight
and still to 0.5858 as a mere tie-breaker. Content is left to the learned classifier
(:mod:`tokenyard.routing.learned`), which measures it on labelled data.
"""

from __future__ import annotations

import math

from tokenyard.routing.classifiers.base import ClassifiableRequest


def _log_scale(value: float, full: float) -> float:
    """0 at 0, 1 at ``full``, logarithmic in between (doubling adds a fixed step)."""
    if value <= 0:
        return 0.0
    return min(1.0, math.log2(1 + value) / math.log2(1 + full))


class HeuristicClassifier:
    """The built-in classifier: a weighted sum of bounded signals, rounded to 6 decimals.

    ``0.05 + 0.55·length + 0.20·depth + 0.20·output`` where length is the router's prompt
    token estimate log-scaled up to 4,096, depth counts user turns beyond the first up to
    8, and output is the requested max_tokens log-scaled up to 8,192. For one-turn
    prompts without max_tokens it orders requests exactly as prompt length does. A
    greeting scores about 0.17, a 100-token question about 0.35, a 4,096-token prompt
    0.6, and a long multi-turn task asking for a long answer 0.8 or more.
    """

    BASE = 0.05
    W_LENGTH = 0.55
    W_DEPTH = 0.20
    W_OUTPUT = 0.20

    def score(self, parsed: ClassifiableRequest) -> float:
        length = _log_scale(parsed.prompt_tokens, 4096)
        user_turns = sum(1 for r in parsed.roles if r == "user")
        depth = min(1.0, max(0, user_turns - 1) / 7)
        output = _log_scale(parsed.max_tokens or 0, 8192)
        raw = self.BASE + self.W_LENGTH * length + self.W_DEPTH * depth + self.W_OUTPUT * output
        return round(min(1.0, max(0.0, raw)), 6)


__all__ = ["HeuristicClassifier"]
