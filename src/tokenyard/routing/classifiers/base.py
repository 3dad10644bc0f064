"""The classifier seam: what the router asks of any difficulty classifier.

The policy engine compares a request's difficulty in [0, 1] with each model's quality.
Every classifier (the built-in heuristic, a learned model, a shadow candidate) answers
the one call :meth:`DifficultyClassifier.score`, so the router, ``tokenyard explain``
and an evaluation harness drive them alike. A client may instead send its own difficulty
in a header when the policy allows it (:func:`difficulty_from_header`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from tokenyard.routing.errors import bad_request

DIFFICULTY_HEADER = "X-Tokenyard-Difficulty"


class ClassifiableRequest(Protocol):
    """What a classifier may look at (a :class:`~tokenyard.routing.request.ParsedRequest`)."""

    @property
    def prompt_text(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def roles(self) -> Sequence[str]: ...


@runtime_checkable
class DifficultyClassifier(Protocol):
    """Scores a request's difficulty: 0 is trivial, 1 needs the strongest model."""

    def score(self, parsed: ClassifiableRequest) -> float: ...


def difficulty_from_header(headers: Mapping[str, str], allowed: bool) -> float | None:
    """The client's X-Tokenyard-Difficulty, if the policy allows overrides; else None.

    ``headers`` has lower-cased names. A value that is not a number in [0, 1] is a 400
    when overrides are allowed (and ignored otherwise, like the header itself).
    """
    if not allowed:
        return None
    raw = headers.get(DIFFICULTY_HEADER.lower())
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise bad_request(
            f"{DIFFICULTY_HEADER} must be a number between 0 and 1, got {raw[:32]!r}",
            param=DIFFICULTY_HEADER,
        )
    return value


__all__ = [
    "DIFFICULTY_HEADER",
    "ClassifiableRequest",
    "DifficultyClassifier",
    "difficulty_from_header",
]
