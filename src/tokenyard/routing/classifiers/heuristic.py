"""The built-in difficulty classifier: a deterministic heuristic that costs microseconds.

:class:`HeuristicClassifier` looks at prompt length, conversation depth, requested
output length and code, math and reasoning signals; it answers the
:class:`~tokenyard.routing.classifiers.base.DifficultyClassifier` call like any other
classifier. :func:`tokenyard.routing.features.extract_features` uses it by default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from tokenyard.routing.classifiers.base import ClassifiableRequest

# Only the start of very long prompts is scanned for signals: it keeps scoring cheap,
# and length alone already pushes such prompts to the top of the scale.
_SCAN_CHARS = 32_000


_CODE = [
    re.compile(p, re.MULTILINE)
    for p in (
        r"```",
        r"^\s*(?:def|class|import|from \S+ import|fn|func|package|#include)\b",
        r"\b(?:function|return|const|let|var|public|private|static|void)\b.*[;{(]",
        r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b.+\b(?:FROM|INTO|SET|WHERE)\b",
        r"[{};]\s*$",
        r"\b(?:stack trace|traceback|segfault|compile error|refactor|regex|algorithm)\b",
    )
] + [
    re.compile(
        r"\b(?:python|javascript|typescript|java|rust|golang|c\+\+|sql|bash|kotlin|swift|"
        r"function|code|implement|compile|unit tests?|bug)\b",
        re.IGNORECASE,
    )
]
_MATH = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\\(?:frac|int|sum|prod|sqrt|lim|partial|begin\{(?:equation|align))",
        r"\b(?:prove|proof|theorem|lemma|integral|derivative|eigen\w*|matrix|"
        r"probability|equation|polynomial|modulo|prime)\b",
        r"\b[a-z]\s*\^\s*\d|\d\s*[*/^]\s*\d|[=<>≤≥∑∫√π]",
    )
]
_REASONING = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bstep[- ]by[- ]step\b",
        r"\b(?:explain why|why does|why is|reason about|justify|derive)\b",
        r"\b(?:analy[sz]e|compare|contrast|evaluate|trade-?offs?|pros and cons)\b",
        r"\b(?:design|architect|optimi[sz]e|plan|strategy|debug)\b",
        r"\b(?:edge cases?|counter-?example|complexity|rigorous\w*)\b",
    )
]


def _fraction(patterns: Sequence[re.Pattern[str]], text: str) -> float:
    """Share of a signal family's patterns present in the text."""
    return sum(1 for p in patterns if p.search(text)) / len(patterns)


def _log_scale(value: float, full: float) -> float:
    """0 at 0, 1 at ``full``, logarithmic in between (doubling adds a fixed step)."""
    if value <= 0:
        return 0.0
    return min(1.0, math.log2(1 + value) / math.log2(1 + full))


class HeuristicClassifier:
    """The built-in classifier: a weighted sum of bounded signals, rounded to 4 decimals.

    ``0.05 + 0.25·length + 0.10·depth + 0.10·output + 0.50·content`` where length is
    log-scaled up to 4,096 prompt tokens, depth counts user turns up to 8, output is the
    requested max_tokens log-scaled up to 8,192, and content combines the share of code,
    math and reasoning patterns found. A greeting scores about 0.06; a long multi-turn
    code or math task scores 0.6 or more.
    """

    BASE = 0.05
    W_LENGTH = 0.25
    W_DEPTH = 0.10
    W_OUTPUT = 0.10
    W_CONTENT = 0.50

    def score(self, parsed: ClassifiableRequest) -> float:
        text = parsed.prompt_text[:_SCAN_CHARS]
        length = _log_scale(parsed.prompt_tokens, 4096)
        user_turns = sum(1 for r in parsed.roles if r == "user")
        depth = min(1.0, max(0, user_turns - 1) / 7)
        output = _log_scale(parsed.max_tokens or 0, 8192)
        code = _fraction(_CODE, text)
        math_ = _fraction(_MATH, text)
        reasoning = _fraction(_REASONING, text)
        # Any one strong family is enough to need a capable model; several add up.
        content = min(1.0, max(code, math_, reasoning) * 1.2 + (code + math_ + reasoning) / 6)
        raw = (
            self.BASE
            + self.W_LENGTH * length
            + self.W_DEPTH * depth
            + self.W_OUTPUT * output
            + self.W_CONTENT * content
        )
        return round(min(1.0, max(0.0, raw)), 4)


__all__ = ["HeuristicClassifier"]
