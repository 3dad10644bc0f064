"""Reads per-request traces for the simulator, in the public traces' own formats.

Used by ``tokenyard simulate`` and ``benchmarks/autoscaler_trace.py``. Three formats,
told apart by the file's first line:

- **Azure LLM inference traces** (2023, 2024): CSV with ``TIMESTAMP``, ``ContextTokens``,
  ``GeneratedTokens``. TIMESTAMP may be a wall-clock time with up to seven fractional
  digits (100 ns ticks) or a plain number of 100 ns ticks.
- **BurstGPT**: CSV with ``Timestamp`` (seconds), ``Request tokens``, ``Response tokens``
  (its other columns, such as ``Model`` and ``Log Type``, are ignored; a failed request,
  0 response tokens, still arrived and is kept).
- **Mooncake** (and tools that write its format): JSON lines with ``timestamp``
  (milliseconds), ``input_length``, ``output_length`` (other keys, such as ``hash_ids``,
  are ignored).

Any time span works; times come back in seconds from the first request, sorted. A file
may be gzip-compressed (as traces are often published: told by its first bytes, not its
name) and must be UTF-8 text; a negative or non-finite token count is an error naming
its line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

TICKS_PER_SECOND = 10_000_000

FORMATS = (
    "CSV with TIMESTAMP, ContextTokens, GeneratedTokens (Azure LLM inference traces), "
    "CSV with Timestamp (s), Request tokens, Response tokens (BurstGPT), or JSON lines "
    "with timestamp (ms), input_length, output_length (Mooncake)"
)
"""The formats :func:`read_trace` reads, as its errors name them."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: arrival (seconds from the trace start), prompt and output tokens."""

    t: float
    prompt: int
    output: int


def parse_timestamp(raw: str) -> float:
    """Seconds since the Unix epoch or ticks / 1e7. A wall-clock time may carry up to
    seven fractional digits (more than ``datetime`` reads) and a UTC offset (``Z``,
    ``+00:00``, as Azure's 2024 traces write it); without one it is read as UTC."""
    raw = raw.strip()
    try:
        return int(raw) / TICKS_PER_SECOND
    except ValueError:
        pass
    base, dot, rest = raw.partition(".")
    digits = ""
    if dot:
        n = len(rest) - len(rest.lstrip("0123456789"))
        digits, zone = rest[:n], rest[n:]
        base += zone  # the offset after the fraction, if any
    base = base.replace("T", " ")
    if base.endswith("Z"):
        base = base[:-1] + "+00:00"
    dt = datetime.fromisoformat(base)
    seconds = dt.timestamp() if dt.tzinfo else dt.replace(tzinfo=UTC).timestamp()
    return seconds + (int(digits) / 10 ** len(digits) if digits else 0.0)


@dataclass(frozen=True)
class _Columns:
    """One format's fields: arrival time (and how to read it), prompt and output tokens."""

    name: str
    time: str
    prompt: str
    output: str
    seconds: Callable[[Any], float]


def _real(raw: Any) -> float:
    """A CSV field or JSON value as a number (JSON's true and false are not one)."""
    if isinstance(raw, bool):
        raise TypeError(f"not a number: {raw!r}")
    return float(raw)


def _number(scale: float) -> Callable[[Any], float]:
    return lambda raw: _real(raw) * scale


AZURE = _Columns("Azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens", parse_timestamp)
BURSTGPT = _Columns("BurstGPT", "Timestamp", "Request tokens", "Response tokens", _number(1.0))
MOONCAKE = _Columns("Mooncake", "timestamp", "input_length", "output_length", _number(1e-3))


def _tokens(raw: Any) -> int:
    value = _real(raw)
    if not math.isfinite(value) or value < 0 or value >= 2**63:
        raise ValueError(f"not a token count (>= 0): {raw!r}")
    return int(value)


GZIP_MAGIC = b"\x1f\x8b"


@contextmanager
def open_text(path: str | Path) -> Iterator[TextIO]:
    """A trace file as a text stream: gunzipped as it is read when it starts with gzip's
    magic bytes, decoded as UTF-8 (a byte-order mark dropped). Text that is not UTF-8,
    or a damaged gzip stream, met while the caller reads is a ValueError naming the file."""
    p = Path(path)
    with p.open("rb") as raw:
        binary: IO[bytes] | gzip.GzipFile = raw
        if raw.read(2) == GZIP_MAGIC:
            binary = gzip.GzipFile(fileobj=raw, mode="rb")
        raw.seek(0)
        try:
            yield io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        except UnicodeDecodeError as exc:
            bad = exc.object[exc.start : exc.start + 1].hex()
            raise ValueError(f"{p}: not UTF-8 text (byte 0x{bad})") from None
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{p}: a damaged gzip file ({exc})") from None


def _requests(items: Iterable[tuple[int, Any]], cols: _Columns) -> list[TraceRequest]:
    """Trace requests from (line, record) pairs, sorted by arrival, times relative to the
    first; a malformed record is a ValueError naming its line and the format's fields.
    The fields are kept in typed arrays until sorted (a week of requests is millions)."""
    times, prompts, outputs = array("d"), array("q"), array("q")
    for line, rec in items:
        try:
            if not isinstance(rec, dict):
                raise TypeError(f"not an object: {rec!r}")
            ts = cols.seconds(rec[cols.time])
            prompt, output = _tokens(rec[cols.prompt]), _tokens(rec[cols.output])
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            what = exc if type(exc) is ValueError else repr(exc)  # a missing key: KeyError('…')
            raise ValueError(
                f"line {line}: {what}: expected {cols.time}, {cols.prompt}, {cols.output}"
                f" ({cols.name})"
            ) from exc
        if not math.isfinite(ts):
            raise ValueError(f"line {line}: {cols.time} is not a finite time ({cols.name})")
        times.append(ts)
        prompts.append(prompt)
        outputs.append(output)
    if not times:
        return []
    order = sorted(range(len(times)), key=times.__getitem__)  # stable, as before
    t0 = times[order[0]]
    return [TraceRequest(times[i] - t0, prompts[i], outputs[i]) for i in order]


def parse_rows(rows: Iterable[dict[str, str]]) -> list[TraceRequest]:
    """Trace requests from Azure-format CSV rows (header on line 1)."""
    return _requests(enumerate(rows, start=2), AZURE)


def _json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    for i, text in enumerate(lines, start=1):
        if text.strip():
            try:
                yield i, json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {i}: not JSON ({exc.msg}); expected {FORMATS}") from exc


def _csv_format(header: list[str]) -> _Columns:
    names = set(header)
    for cols in (AZURE, BURSTGPT):
        if {cols.time, cols.prompt, cols.output} <= names:
            return cols
    raise ValueError(f"unknown trace format (header {header!r}); expected {FORMATS}")


def read_requests(path: str | Path) -> list[TraceRequest]:
    """Every request of a trace file in any of the formats (see the module's docstring)."""
    with open_text(path) as f:
        first = ""
        for first in f:
            if first.strip():
                break
        f.seek(0)
        if first.lstrip().startswith("{"):
            return _requests(_json_lines(f), MOONCAKE)
        reader = csv.DictReader(f, skipinitialspace=True)
        if reader.fieldnames is None:
            return []
        # "Timestamp " names the column, for the lookups as for telling the format apart.
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        cols = _csv_format(list(reader.fieldnames))
        return _requests(enumerate(reader, start=2), cols)


def read_trace(
    path: str | Path, start_s: float = 0.0, duration_s: float | None = None
) -> list[TraceRequest]:
    """The requests of a trace within [start_s, start_s + duration_s), re-based to 0."""
    reqs = read_requests(path)
    if start_s == 0.0 and duration_s is None:
        return reqs  # the whole trace: no second copy of a week's requests in memory
    end = start_s + duration_s if duration_s is not None else float("inf")
    return [TraceRequest(r.t - start_s, r.prompt, r.output) for r in reqs if start_s <= r.t < end]


def thin(
    requests: list[TraceRequest],
    *,
    rate_scale: float | None = None,
    target_mean_rps: float | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """The trace at a lower rate: each request kept with probability ``rate_scale`` (or
    the share that gives ``target_mean_rps`` over the trace's span), independently and
    from ``seed``. Thinning keeps the rate's shape over time (a Poisson process stays
    one) and the token counts; times are kept as they were. A per-request trace cannot
    be scaled up without inventing requests, so a factor above 1 is a ValueError."""
    if rate_scale is not None and target_mean_rps is not None:
        raise ValueError("give --rate-scale or --target-mean-rps, not both")
    if rate_scale is None and target_mean_rps is None:
        return requests
    if rate_scale is not None:
        if not rate_scale > 0:
            raise ValueError("--rate-scale must be > 0")
        factor = rate_scale
    else:
        assert target_mean_rps is not None
        if not target_mean_rps > 0:
            raise ValueError("--target-mean-rps must be > 0")
        span = requests[-1].t - requests[0].t if len(requests) > 1 else 0.0
        if span <= 0:
            raise ValueError("--target-mean-rps: the trace spans no time to take a mean over")
        factor = target_mean_rps / (len(requests) / span)
    if factor > 1:
        raise ValueError(
            f"a per-request trace can only be thinned: the scale is {factor:.3g}, and it "
            "must be <= 1 (scale a rate trace up instead)"
        )
    rng = random.Random(seed)
    return [r for r in requests if rng.random() < factor]
