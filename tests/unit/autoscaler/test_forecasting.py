"""The live loop's forecast from Prometheus history (autoscaler/forecasting.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tokenyard.autoscaler.decide.forecast import DAY_S
from tokenyard.autoscaler.forecasting import LiveForecasts, fit_history
from tokenyard.autoscaler.loop import Autoscaler
from tokenyard.autoscaler.signals import (
    ModelRef,
    ModelSignals,
    PrometheusSignalSource,
    StaticSignalSource,
)
from tokenyard.settings import AutoscalerSettings

from .test_loop import FakeApi, _seed

RAMP_S = 8 * 3600.0  # the daily ramp: 08:00 UTC


def _daily(days: float, low: float = 4.0, high: float = 16.0) -> list[tuple[float, float]]:
    """10-minute rates ending at day ``days`` 00:00: ``low`` before 08:00 and after
    20:00, ``high`` between."""
    out = []
    t = 0.0
    while t < days * DAY_S:
        tod = t % DAY_S
        out.append((t + 600, high if RAMP_S <= tod < 20 * 3600 else low))
        t += 600
    return out


class HistorySource(StaticSignalSource):
    """Injected signals plus a rate history (a test double of Prometheus)."""

    def __init__(self, signals: dict[str, ModelSignals], days: float, fail: bool = False):
        super().__init__(signals)
        self.days, self.fail, self.calls = days, fail, 0

    def rate_history(
        self, models: Sequence[ModelRef], start: float, end: float, step_s: float
    ) -> dict[str, list[tuple[float, float]]]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("prometheus down")
        first = end - self.days * DAY_S
        kept = [(t, r) for t, r in _daily(end // DAY_S + 1) if first < t <= end]
        return {m.name: kept for m in models if m.name == "auto"}


def test_fit_needs_min_days_of_history() -> None:
    assert fit_history(_daily(1), min_days=2) is None
    assert fit_history([], min_days=2) is None
    fc = fit_history(_daily(3), min_days=2)
    assert fc is not None
    assert fc.predict(RAMP_S + 60, [(RAMP_S - 60, 4.0)]) == 16.0


def _desired(source: StaticSignalSource, min_days: float = 2.0) -> int:
    api = FakeApi()
    _seed(api)
    settings = AutoscalerSettings(forecast_min_days=min_days)
    # One cold start (120 s) before the day-3 ramp, at the night's rate.
    now = 3 * DAY_S + RAMP_S - 60
    Autoscaler(api, source, settings).tick(now)
    status: dict[str, Any] = api.models[("ns", "auto")]["status"]
    desired: int = status["autoscaling"]["desiredReplicas"]
    return desired


def _night() -> dict[str, ModelSignals]:
    # 4 req/s of 100-token prompts: 40% of one replica (1000 tokens/s nominal).
    s = ModelSignals(observed_at=0, running=2, request_rate=4.0, prompt_tokens_per_s=400.0)
    return {"auto": s, "manual": s}


def test_live_loop_starts_replicas_a_cold_start_before_the_daily_ramp() -> None:
    # Three days of history: at 16 req/s from 08:00 the model needs two replicas or
    # more, and at 07:59 (one 120 s cold start ahead) it asks for them.
    assert _desired(HistorySource(_night(), days=3)) >= 2
    # Without the forecast (or with too little history) it sizes for the 4 req/s it
    # measures: one replica.
    assert _desired(HistorySource(_night(), days=3), min_days=0) == 1
    assert _desired(HistorySource(_night(), days=1)) == 1
    # A Prometheus that cannot give the history: decided without it, not failed.
    failing = HistorySource(_night(), days=3, fail=True)
    assert _desired(failing) == 1
    assert failing.calls == 1


def test_forecast_is_refitted_only_every_refit_interval() -> None:
    src = HistorySource(_night(), days=3)
    fc = LiveForecasts(src, refit_s=3600)
    refs = [ModelRef(name="auto", served_name="auto")]
    fc.refresh("ns", refs, 3 * DAY_S)
    fc.refresh("ns", refs, 3 * DAY_S + 1800)
    assert src.calls == 1
    fc.refresh("ns", refs, 3 * DAY_S + 3600)
    assert src.calls == 2
    # A source without history gives no forecast at all.
    assert not LiveForecasts(StaticSignalSource({})).enabled


def test_prometheus_rate_history_is_one_range_query_by_served_name() -> None:
    asked: list[tuple[str, float, float, float]] = []

    def query_range(q: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        asked.append((q, start, end, step))
        return [
            {"metric": {"model_name": "llama-8b"}, "values": [[1200, "2"], [600, "1.5"]]},
            {"metric": {"model_name": "other"}, "values": [[600, "NaN"], [1200, "3"]]},
            {"metric": {}, "values": [[600, "9"]]},
        ]

    src = PrometheusSignalSource("http://unused", query=lambda _q: [], query_range=query_range)
    refs = [ModelRef(name="small", served_name="llama-8b"), ModelRef(name="b", served_name="x")]
    hist = src.rate_history(refs, 0.0, 1200.0, 600.0)
    assert hist == {"small": [(600.0, 1.5), (1200.0, 2.0)]}
    assert len(asked) == 1
    assert "rate(vllm:request_success_total[600s])" in asked[0][0]
    assert asked[0][1:] == (0.0, 1200.0, 600.0)


def test_forecast_without_a_measured_rate_keeps_the_recent_level() -> None:
    # A model at zero replicas exports no rate: the forecast still answers (the level of
    # its recent rates, or the profile's own without any), so it can wake the model.
    src = HistorySource(_night(), days=3)
    fc = LiveForecasts(src)
    fc.refresh("ns", [ModelRef(name="auto", served_name="auto")], 3 * DAY_S)
    ahead = fc.forecast("ns", "auto", 3 * DAY_S + RAMP_S - 60, 120.0, None)
    assert ahead is not None and ahead >= 16.0
    # Over a span: the largest upper bound from one cold start ahead to one interval
    # after it (the ramp at 08:00 is inside 07:57 + 120 s ... + 60 s).
    before = 3 * DAY_S + RAMP_S - 185
    assert (fc.forecast("ns", "auto", before, 120.0, 4.0) or 0) < 16.0
    assert (fc.forecast("ns", "auto", before, 120.0, 4.0, span_s=70.0) or 0) >= 16.0


def test_ready_share_is_the_quantile_pre_warmed_for() -> None:
    # Rates around the daily shape: the bound for a larger share of ramps ready is the
    # larger quantile of how far rises went above the forecast.
    rng = random.Random(0)
    noisy = [(t, r * rng.uniform(0.7, 1.3)) for t, r in _daily(6)]
    low, high = fit_history(noisy, 2, ready_share=0.5), fit_history(noisy, 2, ready_share=0.95)
    assert low is not None and high is not None
    t, recent = 6 * DAY_S + RAMP_S, [(6 * DAY_S + RAMP_S - 600, 4.0)]
    assert high.upper(t, recent) > low.upper(t, recent) > low.predict(t, recent)
    # The setting reaches the live loop's fits.
    src = HistorySource(_night(), days=3)
    scaler = Autoscaler(FakeApi(), src, AutoscalerSettings(forecast_ready_share=0.8))
    scaler.forecasts.refresh("ns", [ModelRef(name="auto", served_name="auto")], 3 * DAY_S)
    fit = scaler.forecasts.fits[("ns", "auto")].forecast
    assert fit is not None and fit.quantile == 0.8
