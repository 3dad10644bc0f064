"""Request difficulty classifiers: the seam (:mod:`.base`) and its implementations.

:func:`tokenyard.routing.features.extract_features` asks a
:class:`~tokenyard.routing.classifiers.base.DifficultyClassifier` for a request's
difficulty in [0, 1]; :class:`~tokenyard.routing.classifiers.heuristic.HeuristicClassifier`
is the built-in one. A learned classifier joins as another module here answering the
same ``score`` call; its training and its evaluation (kept apart from it, scoring every
classifier through that same call) belong to this routing package too.
"""

from tokenyard.routing.classifiers.base import (
    DIFFICULTY_HEADER,
    ClassifiableRequest,
    DifficultyClassifier,
    difficulty_from_header,
)
from tokenyard.routing.classifiers.heuristic import HeuristicClassifier

__all__ = [
    "DIFFICULTY_HEADER",
    "ClassifiableRequest",
    "DifficultyClassifier",
    "HeuristicClassifier",
    "difficulty_from_header",
]
