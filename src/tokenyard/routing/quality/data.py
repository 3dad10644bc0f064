"""Labelled routing data: prompts with the outcomes of a weak and a strong model.

:func:`load_csv` reads a UTF-8 CSV with ``prompt`` (a user message) or ``messages`` (an
OpenAI messages list as JSON), ``weak_correct`` and ``strong_correct`` (0/1, true/false
or scores in [0, 1]) and optional ``dataset`` and ``subject`` columns. Each row becomes a
:class:`LabelledPrompt` whose request went through :func:`~tokenyard.routing.request.parse_request`
exactly as a chat request to the router does, so every classifier scores what it would
score live. Called by ``tokenyard eval-routing`` and ``tokenyard train-router``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tokenyard.routing.errors import RouterError
from tokenyard.routing.request import ParsedRequest, decode_body, parse_request


class DataError(ValueError):
    """A labelled-data file the evaluation cannot use, with the file and row named."""


@dataclass(frozen=True)
class LabelledPrompt:
    """One prompt, parsed as the router parses it, with both models' outcomes."""

    parsed: ParsedRequest
    weak: float
    strong: float
    dataset: str
    subject: str


@dataclass(frozen=True)
class LabelledSet:
    """The prompts of one file (or one ``dataset`` value in it)."""

    name: str
    source: str
    sha256: str
    prompts: tuple[LabelledPrompt, ...]

    @property
    def weak(self) -> npt.NDArray[np.float64]:
        return np.array([p.weak for p in self.prompts], dtype=np.float64)

    @property
    def strong(self) -> npt.NDArray[np.float64]:
        return np.array([p.strong for p in self.prompts], dtype=np.float64)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "prompts": len(self.prompts),
            "weak_mean": round(float(self.weak.mean()), 4),
            "strong_mean": round(float(self.strong.mean()), 4),
        }


_BOOLEANS = {"true": 1.0, "false": 0.0}
"""Outcomes as a data frame writes booleans (``True``/``False``), read as 1 and 0."""


def _outcome(raw: str | None, column: str, where: str) -> float:
    text = (raw or "").strip()
    key = text.lower()
    try:
        value = _BOOLEANS[key] if key in _BOOLEANS else float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise DataError(
            f"{where}: {column} must be a number in [0, 1] (or true/false), got {raw!r}"
        )
    return value


def parse_row(row: dict[str, str | None], where: str) -> LabelledPrompt:
    """One CSV row as a :class:`LabelledPrompt` (a :class:`DataError` naming the row)."""
    if row.get("messages"):
        text = row["messages"] or ""
        try:  # strict, as the router reads a body (no NaN, no unpaired surrogate)
            messages = decode_body(text.encode("utf-8", "surrogatepass"))
        except RouterError as e:
            try:  # parsed again only to say what the syntax error is
                json.loads(text)
            except json.JSONDecodeError as je:
                raise DataError(f"{where}: messages is not JSON ({je.msg})") from None
            raise DataError(f"{where}: messages: {e.message}") from None
    elif row.get("prompt") is not None:
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise DataError(f"{where}: needs a prompt or a messages column")
    try:
        parsed = parse_request({"model": "eval-routing", "messages": messages}, {}, "chat")
    except RouterError as e:
        raise DataError(f"{where}: {e.message}") from None
    return LabelledPrompt(
        parsed=parsed,
        weak=_outcome(row.get("weak_correct"), "weak_correct", where),
        strong=_outcome(row.get("strong_correct"), "strong_correct", where),
        dataset=(row.get("dataset") or "").strip(),
        subject=(row.get("subject") or "").strip(),
    )


def load_csv(path: str | Path) -> list[LabelledSet]:
    """The labelled sets of a CSV: one per ``dataset`` value (the file's stem if none)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{p}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save the file as UTF-8"
        ) from None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(text.splitlines(keepends=True))
    if reader.fieldnames:  # " weak_correct" as written by hand still names the column
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    missing = {"weak_correct", "strong_correct"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(sorted(missing))}")
    groups: dict[str, list[LabelledPrompt]] = {}
    for i, row in enumerate(reader, start=2):
        item = parse_row(row, f"{p}:{i}")
        groups.setdefault(item.dataset or p.stem, []).append(item)
    if not groups:
        raise DataError(f"{p}: no rows")
    digest = hashlib.sha256(data).hexdigest()
    return [
        LabelledSet(name=name, source=p.name, sha256=digest, prompts=tuple(items))
        for name, items in groups.items()
    ]


def load_all(paths: Iterable[str | Path]) -> list[LabelledSet]:
    """The labelled sets of several CSVs, in order."""
    out: list[LabelledSet] = []
    for path in paths:
        out.extend(load_csv(path))
    return out


def merge(sets: Sequence[LabelledSet], name: str) -> LabelledSet:
    """Several sets as one (for training on all of them)."""
    return LabelledSet(
        name=name,
        source="+".join(s.source for s in sets),
        sha256=hashlib.sha256("".join(s.sha256 for s in sets).encode()).hexdigest(),
        prompts=tuple(p for s in sets for p in s.prompts),
    )


__all__ = [
    "DataError",
    "LabelledPrompt",
    "LabelledSet",
    "load_all",
    "load_csv",
    "merge",
    "parse_row",
]
