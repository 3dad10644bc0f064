"""Request-rate forecast: a daily profile from history times the recent level.

The simulator's tokenyard policy (and the benchmark's held-out check) ask it for the rate
one cold start ahead, which :func:`~tokenyard.autoscaler.decide.recommend.recommend`
sizes for beside the measured rate (``ModelView.forecast_rps``), so replicas start
before a daily ramp instead of after it. Pure: fit on (time, rate) samples, predict
for a time; nothing learned before :meth:`SeasonalForecast.fit`.

Method: the profile is the mean rate per ``bin_s`` slot of the day over the training
history (times in seconds from 00:00 of day 0). The level is the ratio of the rates
seen over the last ``level_window_s`` to the profile at those times, so a day busier
or quieter than usual scales the whole shape. The forecast for time ``t`` is
``profile(t) x level``. Its upper bound for pre-warming multiplies by ``1 + q`` where
``q`` is the ``quantile`` of how far the rate went above the same forecast when it rose
(the windows a scale-up serves), measured over the training history and then online as
windows pass, separately for slots where the daily profile rises (the ramps) and the
others: measured, not chosen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

DAY_S = 86400.0


@dataclass
class SeasonalForecast:
    """Daily profile x recent level (see the module's docstring)."""

    bin_s: float = 600.0
    level_window_s: float = 600.0
    horizon_s: float = 600.0
    """How far ahead the training errors are measured (the error bound's horizon)."""
    quantile: float = 0.95
    """Pre-warm for this quantile of the under-forecasts: the share of scale-ups meant
    to be ready before their load. Measured on later days than it was fitted on, the
    share reached follows it within a few points either way (the shared 14-day trace:
    0.9 gave 91.0%, 0.95 96.6%), so it is set above the share a service needs."""
    error_memory: int = 1008
    """How many recent errors of each kind of slot the bound follows (a week of
    10-minute windows)."""
    profile: list[float] = field(default_factory=list)
    errors: dict[bool, deque[float]] = field(default_factory=dict)
    """Under-forecasts of rises (actual / forecast - 1, at least 0), for rising slots
    (True) and the others."""

    def _bin(self, t: float) -> int:
        return int((t % DAY_S) // self.bin_s)

    def rising(self, t: float) -> bool:
        """True where the daily profile rises into time ``t`` (a daily ramp)."""
        return self.profile[self._bin(t)] > self.profile[self._bin(t - self.bin_s)]

    def fit(self, times: Sequence[float], rates: Sequence[float]) -> SeasonalForecast:
        bins = math.ceil(DAY_S / self.bin_s)
        sums, counts = [0.0] * bins, [0] * bins
        for t, r in zip(times, rates, strict=True):
            sums[self._bin(t)] += r
            counts[self._bin(t)] += 1
        overall = sum(rates) / len(rates) if rates else 0.0
        self.profile = [s / c if c else overall for s, c in zip(sums, counts, strict=True)]
        self.errors = {
            True: deque(maxlen=self.error_memory),
            False: deque(maxlen=self.error_memory),
        }
        hist = list(zip(times, rates, strict=True))
        for i, (t, last) in enumerate(hist):
            target = t + self.horizon_s
            actual = next((r for u, r in hist[i + 1 : i + 200] if u >= target), None)
            if actual is None:
                continue
            recent = [
                (u, r) for u, r in hist[max(0, i - 50) : i + 1] if u > t - self.level_window_s
            ]
            self.observe(target, self.predict(target, recent), actual, last)
        return self

    def observe(self, t: float, forecast: float, actual: float, last: float) -> None:
        """Record how far the rate at ``t`` went above its forecast when it rose above
        ``last`` (the rate when the forecast was made): pre-warming serves the rises, so
        the bound is measured on them (online: it follows the latest ``error_memory``
        rises of the same kind of slot)."""
        if forecast > 0 and actual > last:
            self.errors[self.rising(t)].append(max(0.0, actual / forecast - 1))

    def bound(self, t: float) -> float:
        """The ``quantile`` of recorded under-forecasts of rises for slots like ``t``'s
        (rising or not): the share above the forecast to pre-warm for."""
        errs = sorted(self.errors[self.rising(t)]) if self.profile else []
        return errs[min(len(errs) - 1, int(self.quantile * len(errs)))] if errs else 0.0

    def level(self, recent: Sequence[tuple[float, float]]) -> float:
        """Recent rates over the profile at their times (1.0 without history)."""
        expected = sum(self.profile[self._bin(t)] for t, _ in recent)
        seen = sum(r for _, r in recent)
        return seen / expected if expected > 0 and recent else 1.0

    def predict(self, t: float, recent: Sequence[tuple[float, float]]) -> float:
        """The rate forecast for time ``t`` given the recent (time, rate) samples."""
        if not self.profile:
            raise ValueError("SeasonalForecast.predict before fit")
        return self.profile[self._bin(t)] * self.level(recent)

    def upper(self, t: float, recent: Sequence[tuple[float, float]]) -> float:
        """The forecast raised by the error bound: what to pre-warm for."""
        return self.predict(t, recent) * (1 + self.bound(t))

    def upper_over(self, t0: float, t1: float, recent: Sequence[tuple[float, float]]) -> float:
        """The largest :meth:`upper` from ``t0`` to ``t1``: a replica asked for now is
        ready one cold start later (``t0``) and the next decision's one interval after
        that (``t1``), so now is the last chance to have replicas for that span."""
        times = [t0]
        edge = t0 - t0 % self.bin_s + self.bin_s
        while edge <= t1:
            times.append(edge)
            edge += self.bin_s
        return max(self.upper(t, recent) for t in times)


__all__ = ["DAY_S", "SeasonalForecast"]
