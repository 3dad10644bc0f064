"""Where the router keeps what it learns from, in the pool's state volume, and how to read it.

The router writes these files (:class:`tokenyard.accounting.learning.LearningStore`):
``decisions.jsonl`` (one line per answered request: who sent it, which target served and
with what probability), ``feedback.jsonl`` (one line per ``POST /v1/tokenyard/feedback``)
and, for policies with ``spec.learning.capture``, ``capture/<endpoint hash>/<hour>.jsonl``
(sampled prompts with their decision). ``tokenyard train-router --from-state`` reads
them with :func:`read_lines`. Each journal is rotated to ``<name>.1`` past its size bound.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DECISIONS_FILE = "decisions.jsonl"
FEEDBACK_FILE = "feedback.jsonl"
CAPTURE_DIR = "capture"
ROTATED_SUFFIX = ".1"


def learning_dir(state_dir: str | Path, namespace: str, pool: str) -> Path:
    """The pool's learning directory under a state directory."""
    return Path(state_dir).expanduser() / f"learning-{namespace}-{pool}"


def endpoint_dir(endpoint: str) -> str:
    """The capture directory name of an endpoint (endpoint names may hold any character)."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:16]


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a journal and its rotated part (oldest first); a torn or
    unreadable line (not JSON, not UTF-8) is skipped."""
    for p in (path.with_name(path.name + ROTATED_SUFFIX), path):
        try:
            fh = p.open("rb")  # decoded line by line: one damaged byte costs one line
        except FileNotFoundError:
            continue
        with fh:
            for line in fh:
                try:
                    obj = json.loads(line.decode("utf-8"))
                except ValueError:  # UnicodeDecodeError is one
                    continue
                if isinstance(obj, dict):
                    yield obj


def captured(root: Path) -> Iterator[dict[str, Any]]:
    """Every capture record under a learning directory."""
    for p in sorted((root / CAPTURE_DIR).glob("*/*.jsonl")):
        yield from read_lines(p)


__all__ = [
    "CAPTURE_DIR",
    "DECISIONS_FILE",
    "FEEDBACK_FILE",
    "ROTATED_SUFFIX",
    "captured",
    "endpoint_dir",
    "learning_dir",
    "read_lines",
]
