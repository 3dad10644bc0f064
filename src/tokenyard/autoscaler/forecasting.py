"""The live loop's rate forecast: a :class:`SeasonalForecast` per model, fitted on the
request rate Prometheus kept over the past days.

Every ``refit_s`` the loop reads each model's finished requests per second per 10-minute
step over the last ``history_days`` (one range query per pool) and fits the daily
profile and its error bound (:mod:`tokenyard.autoscaler.decide.forecast`). A model with
less than ``min_days`` of history (a new model, a Prometheus with short retention) gets
no forecast: it is sized on what it measures, as without this module. A failed query
keeps the last fit (or none) and is retried at the next refit. Between refits the level
follows the rates the loop measures itself (the last ``level_window_s``), so the forecast
for one cold start ahead is ``profile(now + cold start) x level x (1 + error bound)``:
what the simulator's tokenyard policy gives the decisions (``ModelView.forecast_rps``).

Times are Unix seconds, so the profile's day is the UTC day.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from tokenyard.autoscaler.decide.forecast import DAY_S, SeasonalForecast
from tokenyard.autoscaler.signals import ModelRef, RateHistorySource

log = logging.getLogger("tokenyard.autoscaler")


@dataclass
class _Fit:
    fitted_at: float
    forecast: SeasonalForecast | None
    recent: deque[tuple[float, float]] = field(default_factory=deque)


def fit_history(
    samples: Sequence[tuple[float, float]],
    min_days: float,
    bin_s: float = 600.0,
    ready_share: float = SeasonalForecast.quantile,
) -> SeasonalForecast | None:
    """The seasonal forecast of (time, rate over the ``bin_s`` before it) samples, as a
    Prometheus range query of ``rate(...[bin_s])`` gives them, or None when they span
    less than ``min_days`` days (too little to tell a daily shape from one day's
    accidents). The profile's slots are the windows' starts."""
    if len(samples) < 2 or samples[-1][0] - samples[0][0] < min_days * DAY_S:
        return None
    times = [t - bin_s for t, _ in samples]
    rates = [r for _, r in samples]
    return SeasonalForecast(
        bin_s=bin_s, level_window_s=bin_s, horizon_s=bin_s, quantile=ready_share
    ).fit(times, rates)


class LiveForecasts:
    """Per-model forecasts for the live loop, refitted from Prometheus history."""

    def __init__(
        self,
        source: object,
        *,
        min_days: float = 2.0,
        history_days: float = 14.0,
        refit_s: float = 3600.0,
        bin_s: float = 600.0,
        ready_share: float = SeasonalForecast.quantile,
    ) -> None:
        self.source = source if isinstance(source, RateHistorySource) else None
        self.min_days = min_days
        self.history_days = history_days
        self.refit_s = refit_s
        self.bin_s = bin_s
        self.ready_share = ready_share
        self.fits: dict[tuple[str, str], _Fit] = {}

    @property
    def enabled(self) -> bool:
        return self.source is not None and self.min_days > 0

    def refresh(self, namespace: str, models: Sequence[ModelRef], now: float) -> None:
        """Refit the models of one pool whose fit is older than ``refit_s`` (one range
        query for them all)."""
        if not self.enabled or self.source is None:
            return
        due = [
            m
            for m in models
            if (f := self.fits.get((namespace, m.name))) is None
            or now - f.fitted_at >= self.refit_s
        ]
        if not due:
            return
        try:
            history = self.source.rate_history(
                due, now - self.history_days * DAY_S, now, self.bin_s
            )
        except Exception as exc:  # history is an optional extra: decide without it
            log.warning("reading rate history for the forecast failed: %s", exc)
            for m in due:
                old = self.fits.get((namespace, m.name))
                keep = old.forecast if old is not None else None
                recent = old.recent if old is not None else deque()
                self.fits[(namespace, m.name)] = _Fit(now, keep, recent)
            return
        for m in due:
            old = self.fits.get((namespace, m.name))
            fc = fit_history(history.get(m.name, []), self.min_days, self.bin_s, self.ready_share)
            self.fits[(namespace, m.name)] = _Fit(
                now, fc, old.recent if old is not None else deque()
            )

    def forget(self, keep: Collection[tuple[str, str]]) -> None:
        """Drops the fits of models not in ``keep`` (namespace, name): deleted ones."""
        for key in [k for k in self.fits if k not in keep]:
            del self.fits[key]

    def forecast(  # noqa: PLR0917
        self,
        namespace: str,
        name: str,
        now: float,
        ahead_s: float,
        rate: float | None,
        span_s: float = 0.0,
    ) -> float | None:
        """The rate to size for from ``ahead_s`` to ``ahead_s + span_s`` from now (the
        forecast's upper bound), given the rate measured now; None without a fitted
        forecast. A model without a measured rate (at zero replicas, nothing exports
        one) keeps the level of its recent rates, so a forecast still wakes it."""
        f = self.fits.get((namespace, name))
        if f is None or f.forecast is None:
            return None
        if rate is not None:
            f.recent.append((now, rate))
        while f.recent and f.recent[0][0] <= now - f.forecast.level_window_s:
            f.recent.popleft()
        return f.forecast.upper_over(now + ahead_s, now + ahead_s + span_s, list(f.recent))


__all__ = ["LiveForecasts", "fit_history"]
