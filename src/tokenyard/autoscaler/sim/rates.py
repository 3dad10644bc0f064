"""Rate traces for the simulator: reading, scaling, and the load generated from them.

A rate trace is a CSV with ``window_start_s, window_s, requests_per_s,
mean_prompt_tokens, mean_output_tokens`` (as ServeGen publishes production load: rates
per window, token means per window), any span. ``tokenyard simulate`` and
``benchmarks/autoscaler_trace.py`` read one with :func:`read_rate_trace`, scale it to the
pool under test (:func:`scale_rates`) and turn it into load from a seed:

* :func:`generate_requests`: individual requests for the per-request engine.
* :func:`fluid_demand`: arrivals and tokens per time step and model for the aggregated
  engine (:mod:`tokenyard.autoscaler.sim.fluid`), for spans of days.

Both use one :class:`ArrivalSpec`: arrivals within a window are Poisson at the window's
rate (``process="poisson"``) or, with ``process="bursty"``, a Cox process whose rate is
the window's times a Gamma factor of mean 1 and coefficient of variation ``burst_cv``,
drawn afresh every ``burst_seconds`` (bursts of that length, shared by all models).
Token counts are log-normal around the window's means with coefficient of variation
``prompt_cv`` and ``output_cv`` (1.0 by default: about the spread of the public Azure
traces), at least one token.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenyard.autoscaler.sim.trace import TraceRequest, open_text

RATE_COLUMNS = (
    "window_start_s",
    "window_s",
    "requests_per_s",
    "mean_prompt_tokens",
    "mean_output_tokens",
)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One window of a rate trace: its start and length (seconds), requests per second
    and mean prompt and output tokens."""

    start_s: float
    window_s: float
    rps: float
    prompt: float
    output: float


@dataclass(frozen=True)
class ArrivalSpec:
    """How load is generated from a rate trace (see the module's docstring)."""

    process: Literal["poisson", "bursty"] = "poisson"
    burst_cv: float = 1.0
    """Coefficient of variation of the bursty process's rate factor (Gamma, mean 1)."""
    burst_seconds: float = 60.0
    """How long one draw of the bursty rate factor lasts."""
    prompt_cv: float = 1.0
    output_cv: float = 1.0


def is_rate_trace(path: str | Path) -> bool:
    """True when the CSV's header names the rate-trace columns."""
    with open_text(path) as f:
        header = next(csv.reader(f), [])
    return set(RATE_COLUMNS) <= {h.strip() for h in header}


def read_rate_trace(path: str | Path) -> list[RateWindow]:
    """The windows of a rate-trace CSV, sorted by start; a malformed row is a ValueError
    naming its line."""
    out: list[RateWindow] = []
    with open_text(path) as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        if reader.fieldnames:  # " requests_per_s " as a spreadsheet pads it
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        for i, row in enumerate(reader, start=2):
            try:
                w = RateWindow(
                    float(row["window_start_s"]),
                    float(row["window_s"]),
                    float(row["requests_per_s"]),
                    float(row["mean_prompt_tokens"]),
                    float(row["mean_output_tokens"]),
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"line {i}: {exc!r}: expected {', '.join(RATE_COLUMNS)}") from exc
            values = (w.start_s, w.window_s, w.rps, w.prompt, w.output)
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"line {i}: every field must be a finite number")
            if w.window_s <= 0 or w.rps < 0 or w.prompt < 0 or w.output < 0:
                raise ValueError(f"line {i}: window_s must be > 0 and rates, tokens >= 0")
            out.append(w)
    out.sort(key=lambda w: w.start_s)
    return out


def mean_rate(windows: Sequence[RateWindow]) -> float:
    """Requests per second over the trace (time-weighted)."""
    span = sum(w.window_s for w in windows)
    return sum(w.rps * w.window_s for w in windows) / span if span else 0.0


def scale_rates(
    windows: Sequence[RateWindow],
    *,
    rate_scale: float | None = None,
    target_mean_rps: float | None = None,
) -> list[RateWindow]:
    """The trace with every rate multiplied by ``rate_scale``, or scaled so that its mean
    is ``target_mean_rps`` (not both). Token means are kept."""
    if rate_scale is not None and target_mean_rps is not None:
        raise ValueError("give --rate-scale or --target-mean-rps, not both")
    factor = 1.0
    if rate_scale is not None:
        if rate_scale <= 0:
            raise ValueError("--rate-scale must be > 0")
        factor = rate_scale
    elif target_mean_rps is not None:
        if target_mean_rps <= 0:
            raise ValueError("--target-mean-rps must be > 0")
        mean = mean_rate(windows)
        if mean <= 0:
            raise ValueError("the rate trace has no requests to scale")
        factor = target_mean_rps / mean
    return [RateWindow(w.start_s, w.window_s, w.rps * factor, w.prompt, w.output) for w in windows]


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal with this mean and coefficient of variation."""
    sigma2 = math.log1p(cv * cv)
    return math.log(max(mean, 1e-9)) - sigma2 / 2, math.sqrt(sigma2)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw: exact (inversion) below 30, the normal approximation above."""
    if lam <= 0:
        return 0
    if lam < 30:
        limit, k, prod = math.exp(-lam), 0, rng.random()
        while prod > limit:
            k += 1
            prod *= rng.random()
        return k
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def _factors(windows: Sequence[RateWindow], spec: ArrivalSpec, rng: random.Random) -> list[float]:
    """The bursty process's rate factor per ``burst_seconds`` slot of the trace."""
    if spec.process == "poisson" or spec.burst_cv <= 0 or not windows:
        return []
    end = windows[-1].start_s + windows[-1].window_s - windows[0].start_s
    shape = 1.0 / (spec.burst_cv**2)
    return [
        rng.gammavariate(shape, 1.0 / shape) for _ in range(math.ceil(end / spec.burst_seconds) + 1)
    ]


def generate_requests(
    windows: Sequence[RateWindow], seed: int, spec: ArrivalSpec | None = None
) -> list[TraceRequest]:
    """Individual requests from the trace, times from the first window's start."""
    spec = spec or ArrivalSpec()
    rng = random.Random(seed)
    factors = _factors(windows, spec, rng)
    t0 = windows[0].start_s if windows else 0.0
    out: list[TraceRequest] = []
    for w in windows:
        pm, ps = lognormal_params(w.prompt, spec.prompt_cv)
        om, os_ = lognormal_params(w.output, spec.output_cv)
        t, end = w.start_s - t0, w.start_s - t0 + w.window_s
        while True:
            f = factors[int(t // spec.burst_seconds)] if factors else 1.0
            rate = w.rps * f
            if rate <= 0:
                # No arrivals until the next slot of the factor (or the window's end).
                t = (
                    min(end, (int(t // spec.burst_seconds) + 1) * spec.burst_seconds)
                    if factors
                    else end
                )
                if t >= end:
                    break
                continue
            nxt = t + rng.expovariate(rate)
            slot_end = (int(t // spec.burst_seconds) + 1) * spec.burst_seconds
            if factors and nxt >= slot_end and slot_end < end:
                t = slot_end  # memoryless: restart at the slot's boundary with its rate
                continue
            if nxt >= end:
                break
            t = nxt
            out.append(
                TraceRequest(
                    t,
                    max(1, round(rng.lognormvariate(pm, ps))),
                    max(1, round(rng.lognormvariate(om, os_))),
                )
            )
    return out


@dataclass
class FluidDemand:
    """Per model and time step: arrivals, their prompt tokens, and mean output tokens."""

    step_s: float
    counts: list[list[int]]
    prompt_tokens: list[list[float]]
    mean_output: list[list[float]]
    prompt_cv: float = 1.0
    """Coefficient of variation of single prompts (the spread of prefill times that the
    fluid engine's queueing within a step charges for)."""

    @property
    def steps(self) -> int:
        return len(self.counts[0]) if self.counts else 0

    def requests(self) -> int:
        return sum(sum(c) for c in self.counts)


def _token_sum(rng: random.Random, n: int, mean: float, cv: float) -> float:
    # The sum of n log-normal counts, by its normal approximation (exact in mean and
    # variance; n is in the tens per step).
    if n <= 0:
        return 0.0
    return max(float(n), rng.gauss(n * mean, math.sqrt(n) * mean * cv))


def fluid_demand(
    windows: Sequence[RateWindow],
    shares: Sequence[float],
    *,
    step_s: float,
    seed: int,
    spec: ArrivalSpec | None = None,
) -> FluidDemand:
    """Arrivals per step for each model: the window's rate times the model's share of
    requests (a Poisson stream thinned by routing stays Poisson), the bursty factor
    shared by all models; prompt tokens per step summed around the window's mean."""
    spec = spec or ArrivalSpec()
    rng = random.Random(seed)
    factors = _factors(windows, spec, rng)
    n_models = len(shares)
    counts: list[list[int]] = [[] for _ in range(n_models)]
    prompts: list[list[float]] = [[] for _ in range(n_models)]
    outputs: list[list[float]] = [[] for _ in range(n_models)]
    if not windows:
        return FluidDemand(step_s, counts, prompts, outputs, spec.prompt_cv)
    t0 = windows[0].start_s
    end = windows[-1].start_s + windows[-1].window_s - t0
    wi = 0
    for k in range(math.ceil(end / step_s)):
        t = k * step_s
        while wi + 1 < len(windows) and windows[wi + 1].start_s - t0 <= t:
            wi += 1
        w = windows[wi]
        f = factors[int(t // spec.burst_seconds)] if factors else 1.0
        for j, share in enumerate(shares):
            n = poisson(rng, w.rps * f * share * step_s)
            counts[j].append(n)
            prompts[j].append(_token_sum(rng, n, w.prompt, spec.prompt_cv))
            outputs[j].append(w.output)
    return FluidDemand(step_s, counts, prompts, outputs, spec.prompt_cv)


AGGREGATE_WINDOW_S = 600.0
"""The window a request trace is aggregated into for the fluid engine (as the shared rate
trace's)."""


@dataclass(frozen=True)
class Aggregated:
    """A request trace as a rate trace (:func:`aggregate_requests`)."""

    windows: list[RateWindow]
    prompt_cv: float
    """Coefficient of variation of the prompt tokens over the whole trace."""
    output_cv: float
    burst_cv: float
    """The CV of a Gamma rate factor per ``burst_seconds`` slot that the trace's counts
    per slot show beyond Poisson's (0: none)."""


def aggregate_requests(
    requests: Sequence[TraceRequest],
    window_s: float = AGGREGATE_WINDOW_S,
    burst_seconds: float = ArrivalSpec.burst_seconds,
) -> Aggregated:
    """A request trace as a rate trace: per window from the first request, the requests
    per second and the mean prompt and output tokens (a window without requests keeps
    the last means, at rate 0), with the token counts' coefficients of variation and
    the burstiness of the arrivals at the bursty process's slot (the fluid engine's
    spread and arrivals).

    The burstiness: with a slot's count ``c`` Poisson around ``m f`` (``m`` the
    window's mean per slot, ``f`` the rate factor of mean 1 and variance ``v``),
    ``E[(c - m)**2 - m] = m**2 v``; summed over the slots, ``v = sum((c - m)**2 - m) /
    sum(m**2)``, at least 0."""
    if not requests:
        return Aggregated([], 0.0, 0.0, 0.0)
    if not window_s > 0 or not burst_seconds > 0:
        raise ValueError("the aggregation window and the burst slot must be > 0")
    t0 = requests[0].t
    count = int((requests[-1].t - t0) // window_s) + 1
    n = [0] * count
    prompt = [0.0] * count
    output = [0.0] * count
    slots = [0] * (int((requests[-1].t - t0) // burst_seconds) + 1)
    for r in requests:
        k = min(count - 1, int((r.t - t0) // window_s))
        n[k] += 1
        prompt[k] += r.prompt
        output[k] += r.output
        slots[int((r.t - t0) // burst_seconds)] += 1
    windows: list[RateWindow] = []
    last = (0.0, 0.0)
    for k in range(count):
        if n[k]:
            last = (prompt[k] / n[k], output[k] / n[k])
        windows.append(RateWindow(k * window_s, window_s, n[k] / window_s, *last))
    excess = weight = 0.0
    for j, c in enumerate(slots):
        m = windows[min(count - 1, int(j * burst_seconds // window_s))].rps * burst_seconds
        excess += (c - m) ** 2 - m
        weight += m * m
    burst_cv = math.sqrt(max(0.0, excess / weight)) if weight > 0 else 0.0
    return Aggregated(
        windows, _cv([r.prompt for r in requests]), _cv([r.output for r in requests]), burst_cv
    )


def _cv(values: Sequence[int]) -> float:
    mean = sum(values) / len(values)
    if mean <= 0:
        return 0.0
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return math.sqrt(var) / mean


__all__ = [
    "AGGREGATE_WINDOW_S",
    "RATE_COLUMNS",
    "ArrivalSpec",
    "FluidDemand",
    "RateWindow",
    "aggregate_requests",
    "fluid_demand",
    "generate_requests",
    "is_rate_trace",
    "lognormal_params",
    "mean_rate",
    "poisson",
    "read_rate_trace",
    "scale_rates",
]
