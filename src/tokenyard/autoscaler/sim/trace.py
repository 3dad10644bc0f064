"""Reads request traces (CSV: TIMESTAMP, ContextTokens, GeneratedTokens) for the simulator.

Used by ``tokenyard simulate`` and ``benchmarks/autoscaler_trace.py``. TIMESTAMP may be a
wall-clock time with up to seven fractional digits (100 ns ticks, as in the Azure LLM
inference traces) or a plain number of 100 ns ticks; any time span works, and times
come back in seconds from the first request.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TICKS_PER_SECOND = 10_000_000


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: arrival (seconds from the trace start), prompt and output tokens."""

    t: float
    prompt: int
    output: int


def parse_timestamp(raw: str) -> float:
    """Seconds since the Unix epoch (naive times read as UTC) or ticks / 1e7."""
    raw = raw.strip()
    try:
        return int(raw) / TICKS_PER_SECOND
    except ValueError:
        pass
    base, _, frac = raw.partition(".")
    dt = datetime.fromisoformat(base.replace("T", " "))
    seconds = dt.timestamp() if dt.tzinfo else dt.replace(tzinfo=UTC).timestamp()
    if frac:
        digits = "".join(ch for ch in frac if ch.isdigit())
        seconds += int(digits) / 10 ** len(digits) if digits else 0.0
    return seconds


def parse_rows(rows: Iterable[dict[str, str]]) -> list[TraceRequest]:
    """Trace requests from CSV rows, sorted by arrival, times relative to the first."""
    raw: list[tuple[float, int, int]] = []
    for i, row in enumerate(rows, start=2):
        try:
            ts = parse_timestamp(row["TIMESTAMP"])
            prompt = int(float(row["ContextTokens"]))
            output = int(float(row["GeneratedTokens"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"line {i}: {exc!r}: expected TIMESTAMP, ContextTokens, GeneratedTokens"
            ) from exc
        raw.append((ts, max(0, prompt), max(0, output)))
    raw.sort(key=lambda r: r[0])
    if not raw:
        return []
    t0 = raw[0][0]
    return [TraceRequest(t - t0, p, o) for t, p, o in raw]


def read_trace(
    path: str | Path, start_s: float = 0.0, duration_s: float | None = None
) -> list[TraceRequest]:
    """The requests of a CSV trace within [start_s, start_s + duration_s), re-based to 0."""
    with Path(path).open(newline="") as f:
        reqs = parse_rows(csv.DictReader(f))
    end = start_s + duration_s if duration_s is not None else float("inf")
    return [TraceRequest(r.t - start_s, r.prompt, r.output) for r in reqs if start_s <= r.t < end]
