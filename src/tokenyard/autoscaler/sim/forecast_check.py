"""The forecast's held-out check on a rate trace: error, and scale-ups ready before ramps.

``benchmarks/autoscaler_trace.py`` runs it on a rate trace of several days: the
forecast (:class:`~tokenyard.autoscaler.decide.forecast.SeasonalForecast`) is fitted on
the first ``train_days`` and scored on the rest (held out), and on the training days
themselves (in-sample, reported beside). For every window and model it compares the
replicas the SLO model needs at the window's actual rate with those it needs at the
forecast made one cold start before the window starts (from the windows completed by
then). A scale-up (more replicas needed than in the window before) is ready before
its load when the forecast asked for at least as many: those replicas were started a
cold start ahead. Reactive scaling starts them when the load arrives, so none is.
Scale-ups on a daily ramp are those where the fitted daily profile rises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenyard.autoscaler.decide import DecisionConfig, ModelView
from tokenyard.autoscaler.decide.forecast import DAY_S, SeasonalForecast
from tokenyard.autoscaler.decide.recommend import slo_replicas
from tokenyard.autoscaler.decide.slo import Workload
from tokenyard.autoscaler.sim.rates import RateWindow
from tokenyard.autoscaler.sim.scenario import Scenario


@dataclass
class ForecastScore:
    """One span's figures."""

    span: str
    windows: int
    mape: float
    """Mean absolute percentage error of the forecast one window ahead."""
    naive_mape: float
    """The same for "the next window is like the last one"."""
    scale_ups: int
    ready: int
    ramp_scale_ups: int
    ramp_ready: int
    extra_replica_share: float
    """Replica-windows pre-warmed beyond the need, as a share of those needed."""

    @property
    def ramp_ready_share(self) -> float:
        return self.ramp_ready / self.ramp_scale_ups if self.ramp_scale_ups else 1.0

    def row(self) -> dict[str, Any]:
        return {
            "span": self.span,
            "windows": self.windows,
            "mape": round(self.mape, 4),
            "naiveMape": round(self.naive_mape, 4),
            "scaleUps": self.scale_ups,
            "readyBeforeLoad": self.ready,
            "rampScaleUps": self.ramp_scale_ups,
            "rampReadyBeforeLoad": self.ramp_ready,
            "extraReplicaShare": round(self.extra_replica_share, 4),
        }


def _view(scenario: Scenario, i: int) -> ModelView:
    m = scenario.models[i]
    a = m.autoscaling
    return ModelView(
        name=m.name,
        max_replicas=a.maxReplicas,
        ttft_slo_s=a.ttftSLOSeconds,
        cold_start_s=a.coldStartSeconds,
        nominal_tokens_per_s=m.prefillTokensPerSecond,
        decode_tokens_per_s=m.decodeTokensPerSecond,
        kv_cache_tokens=float(m.kvCacheTokens),
        replica_router=m.replicaRouting,
    )


def _score(  # noqa: PLR0917
    span: str,
    fc: SeasonalForecast,
    windows: Sequence[RateWindow],
    idx: Sequence[int],
    scenario: Scenario,
    shares: Sequence[float],
    cfg: DecisionConfig,
) -> ForecastScore:
    ape = naive = 0.0
    n = ups = ready = ramp_ups = ramp_ready = 0
    need_sum = extra = 0
    views = [_view(scenario, i) for i in range(len(scenario.models))]
    for k in idx:
        if k < 2:
            continue
        w, prev = windows[k], windows[k - 1]
        recent = [
            (x.start_s, x.rps)
            for x in windows[max(0, k - 12) : k]
            if x.start_s > w.start_s - fc.level_window_s - x.window_s
        ]
        f = fc.predict(w.start_s, recent)
        ape += abs(f - w.rps) / w.rps if w.rps > 0 else 0.0
        naive += abs(prev.rps - w.rps) / w.rps if w.rps > 0 else 0.0
        n += 1
        upper = fc.upper(w.start_s, recent)
        rising = fc.rising(w.start_s)
        fc.observe(w.start_s, f, w.rps, prev.rps)  # known once the window has passed
        for v, share in zip(views, shares, strict=True):

            def need(rate: float, win: RateWindow, v: ModelView = v, share: float = share) -> int:
                wl = Workload(rate=rate * share, prompt=win.prompt, output=win.output)
                return slo_replicas(v, wl, cfg)

            now_n, prev_n, fore_n = need(w.rps, w), need(prev.rps, prev), need(upper, w)
            need_sum += now_n
            extra += max(0, fore_n - now_n)
            if now_n > prev_n:
                ups += 1
                ready += fore_n >= now_n
                if rising:
                    ramp_ups += 1
                    ramp_ready += fore_n >= now_n
    return ForecastScore(
        span=span,
        windows=n,
        mape=ape / n if n else 0.0,
        naive_mape=naive / n if n else 0.0,
        scale_ups=ups,
        ready=ready,
        ramp_scale_ups=ramp_ups,
        ramp_ready=ramp_ready,
        extra_replica_share=extra / need_sum if need_sum else 0.0,
    )


def forecast_check(
    scenario: Scenario,
    windows: Sequence[RateWindow],
    shares: Sequence[float],
    train_days: int,
    cfg: DecisionConfig | None = None,
) -> tuple[SeasonalForecast, list[ForecastScore]]:
    """Fit on the first ``train_days`` days; score in-sample and on the held-out rest."""
    cfg = cfg or DecisionConfig()
    t0 = windows[0].start_s
    train = [k for k, w in enumerate(windows) if w.start_s - t0 < train_days * DAY_S]
    test = [k for k, w in enumerate(windows) if w.start_s - t0 >= train_days * DAY_S]
    if not train or not test:
        raise ValueError("the rate trace needs days beyond the training days")
    times, rates = [windows[k].start_s for k in train], [windows[k].rps for k in train]
    fc = SeasonalForecast(horizon_s=windows[0].window_s)
    fc.fit(times, rates)
    in_sample = _score(
        f"in-sample (days 0-{train_days - 1})", fc, windows, train, scenario, shares, cfg
    )
    fc.fit(times, rates)  # the held-out run starts from the training days alone
    held_out = _score(f"held-out (days {train_days}+)", fc, windows, test, scenario, shares, cfg)
    return fc, [in_sample, held_out]


def model_forecasts(
    scenario: Scenario,
    windows: Sequence[RateWindow],
    shares: Sequence[float],
    train_days: int,
) -> dict[str, SeasonalForecast]:
    """One forecast per model, fitted on its share of the first ``train_days`` days: what
    the simulator's tokenyard policy pre-warms with (``TokenyardPolicy(forecasts=...)``)."""
    t0 = windows[0].start_s
    train = [w for w in windows if w.start_s - t0 < train_days * DAY_S]
    return {
        m.name: SeasonalForecast(horizon_s=windows[0].window_s).fit(
            [w.start_s for w in train], [w.rps * share for w in train]
        )
        for m, share in zip(scenario.models, shares, strict=True)
    }


__all__ = ["ForecastScore", "forecast_check", "model_forecasts"]
