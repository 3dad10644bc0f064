"""Rate traces: reading, scaling, generated load, the fluid engine and the command line."""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import pytest

from tokenyard.autoscaler import sim
from tokenyard.autoscaler.sim.rates import ArrivalSpec, aggregate_requests, is_rate_trace

HEADER = "window_start_s,window_s,requests_per_s,mean_prompt_tokens,mean_output_tokens"


def _csv(tmp_path: Path, rows: list[tuple[float, float, float, float, float]]) -> Path:
    p = tmp_path / "rates.csv"
    p.write_text(HEADER + "\n" + "\n".join(",".join(str(x) for x in r) for r in rows) + "\n")
    return p


def _windows(rate: float, n: int = 6, window: float = 600.0) -> list[sim.RateWindow]:
    return [sim.RateWindow(k * window, window, rate, 1000.0, 100.0) for k in range(n)]


def test_read_scale_and_reject(tmp_path: Path) -> None:
    p = _csv(tmp_path, [(600, 600, 4.0, 900, 90), (0, 600, 2.0, 1000, 100)])
    assert is_rate_trace(p)
    w = sim.read_rate_trace(p)
    assert [x.start_s for x in w] == [0.0, 600.0]  # sorted
    assert [x.rps for x in sim.scale_rates(w, rate_scale=0.5)] == [1.0, 2.0]
    assert sum(x.rps for x in sim.scale_rates(w, target_mean_rps=6.0)) / 2 == pytest.approx(6.0)
    with pytest.raises(ValueError, match="not both"):
        sim.scale_rates(w, rate_scale=1.0, target_mean_rps=1.0)
    with pytest.raises(ValueError, match="> 0"):
        sim.scale_rates(w, rate_scale=0.0)
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\n0,600,x,1,1\n")
    with pytest.raises(ValueError, match="line 2"):
        sim.read_rate_trace(bad)
    bad.write_text(HEADER + "\n0,0,1,1,1\n")
    with pytest.raises(ValueError, match="window_s"):
        sim.read_rate_trace(bad)
    for field in ("nan", "inf"):  # a NaN passes every comparison: it is refused by name
        bad.write_text(HEADER + f"\n0,600,1,1,1\n600,600,{field},1,1\n")
        with pytest.raises(ValueError, match="line 3: every field must be a finite number"):
            sim.read_rate_trace(bad)
    # A byte-order mark, padded header names and gzip, as spreadsheets and archives write.
    import gzip

    marked = tmp_path / "marked.csv"
    marked.write_bytes(
        gzip.compress(("\ufeff" + HEADER.replace(",", ", ") + "\n0,600,2,10,1\n").encode())
    )
    assert is_rate_trace(marked)
    assert [(x.rps, x.prompt) for x in sim.read_rate_trace(marked)] == [(2.0, 10.0)]


def _dispersion(times: list[float], span: float, slot: float = 60.0) -> float:
    counts = [0] * int(span // slot)
    for t in times:
        counts[min(len(counts) - 1, int(t // slot))] += 1
    mean = sum(counts) / len(counts)
    return sum((c - mean) ** 2 for c in counts) / len(counts) / mean


def test_generated_requests_follow_the_windows() -> None:
    w = _windows(5.0, n=12)
    span = 12 * 600.0
    reqs = sim.generate_requests(w, seed=3)
    assert reqs == sim.generate_requests(w, seed=3)  # seeded
    assert len(reqs) / span == pytest.approx(5.0, rel=0.05)
    assert sum(r.prompt for r in reqs) / len(reqs) == pytest.approx(1000, rel=0.1)
    assert sum(r.output for r in reqs) / len(reqs) == pytest.approx(100, rel=0.1)
    assert all(0 <= r.t < span for r in reqs)
    poisson = _dispersion([r.t for r in reqs], span)
    bursty = sim.generate_requests(w, seed=3, spec=ArrivalSpec(process="bursty", burst_cv=1.0))
    assert len(bursty) / span == pytest.approx(5.0, rel=0.3)
    assert 0.6 < poisson < 1.6  # Poisson: variance = mean
    assert _dispersion([r.t for r in bursty], span) > 5 * poisson


def test_fluid_demand_splits_the_rate_by_route_shares() -> None:
    s = sim.builtin_scenario()
    shares = sim.route_shares(s)
    assert sum(shares) == pytest.approx(1.0)
    routed = sim.route(s, sim.generate_requests(_windows(5.0), seed=1))
    for j, share in enumerate(shares):  # the shares CheapestSufficient routing gives
        assert sum(1 for _, i in routed if i == j) / len(routed) == pytest.approx(share, abs=0.03)
    d = sim.fluid_demand(_windows(5.0), shares, step_s=10.0, seed=0)
    assert d.steps == 360
    assert d.requests() / 3600 == pytest.approx(5.0, rel=0.05)
    for j, share in enumerate(shares):
        assert sum(d.counts[j]) / d.requests() == pytest.approx(share, abs=0.02)


def test_fluid_engine_agrees_with_the_per_request_engine_on_static_fleets() -> None:
    # One model's share alone, fixed fleets from overloaded to ample: both engines
    # agree on where the SLO is met (the fluid one ignores queueing within a step, so
    # near saturation it is the more optimistic).
    s = sim.builtin_scenario().model_copy(update={"spillover": False})
    w = _windows(20.0, n=3)
    shares = sim.route_shares(s)
    routed = sim.route(s, sim.generate_requests(w, seed=0))
    demand = sim.fluid_demand(w, shares, step_s=10.0, seed=0)
    for n, expect_met in ((1, False), (2, True), (4, True)):
        initial = [n, 0, 0]
        exact = sim.run(s, routed, policy_name="static", policy=sim.hold, interval=1e9,
                        initial=initial, only={0})  # fmt: skip
        fluid = sim.run_fluid(s, demand, policy_name="static", policy=sim.hold, interval=1e9,
                              initial=initial, only={0})  # fmt: skip
        assert (exact.slo_attainment >= 0.99) is expect_met, (n, exact.slo_attainment)
        assert (fluid.slo_attainment >= 0.99) is expect_met, (n, fluid.slo_attainment)
        assert fluid.slo_attainment >= exact.slo_attainment - 0.02
        # The per-request replay runs on 90 s past the last arrival to drain.
        assert fluid.cost_usd == pytest.approx(exact.cost_usd * 1800 / (1800 + 90), rel=0.01)


def test_the_peak_fleet_search_from_the_whole_trace_fleet_finds_the_same_fleet() -> None:
    # A steady day and a half and one burst window, about 1% of the requests: the
    # whole trace's fleet may miss the burst, the peak's may not. The fleet for every
    # window is at least the one for the whole trace, so searching from there finds
    # the fleet a search from one replica finds.
    s = sim.builtin_scenario().model_copy(update={"spillover": False})
    rates = [30.0] * 200 + [60.0]
    w = [sim.RateWindow(k * 600.0, 600.0, r, 1000.0, 100.0) for k, r in enumerate(rates)]
    demand = sim.fluid_demand(w, sim.route_shares(s), step_s=10.0, seed=0)
    whole = sim.static_fluid(s, demand)
    peak = sim.static_fluid(s, demand, peak=True)
    assert peak == sim.static_fluid(s, demand, peak=True, at_least=whole)
    assert all(p >= n for p, n in zip(peak, whole, strict=True))
    assert peak != whole  # the burst window needs more than the trace as a whole


def test_simulate_a_rate_trace_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Twelve hours from a quiet night to a busy noon, every 10 minutes.
    rows = [
        (k * 600.0, 600.0, 2.0 + 1.5 * math.sin(2 * math.pi * k / 144), 900.0, 120.0)
        for k in range(72)
    ]
    p = _csv(tmp_path, rows)
    png = tmp_path / "p.png"
    args = argparse.Namespace(trace=str(p), plot=str(png), json=False, engine="fluid",
                              step_seconds=30.0, arrivals="poisson", burst_cv=1.0,
                              token_cv=1.0, rate_scale=None, target_mean_rps=4.0)  # fmt: skip
    report = sim.run_cli(args)
    assert report is not None
    assert [r.policy for r in report.results] == [
        "static", "static-peak", "hpa", "hpa-slo", "tokenyard"
    ]  # fmt: skip
    peak, static = report.by("static-peak"), report.by("static")
    assert peak.cost_usd >= static.cost_usd
    assert all(m["worstWindowSLO"] >= 0.99 for m in peak.models.values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "static-peak" in capsys.readouterr().out
    # The default scale: the busiest window needs 70% of the pool's capacity.
    args.target_mean_rps = None
    w = sim.scaled_windows(sim.builtin_scenario(), args)
    top = max(w, key=lambda x: x.rps)
    cap = sim.pool_rate(sim.builtin_scenario(), sim.route_shares(sim.builtin_scenario()),
                        top.prompt, top.output)  # fmt: skip
    assert top.rps == pytest.approx(0.7 * cap)
    args.target_mean_rps, args.rate_scale = 1.0, 2.0
    assert sim.run_cli(args) is None
    assert "not both" in capsys.readouterr().err


def test_start_and_duration_slice_a_rate_trace(tmp_path: Path) -> None:
    rows = [(1000.0 + k * 600.0, 600.0, 1.0 + k, 900.0, 120.0) for k in range(10)]
    p = _csv(tmp_path, rows)
    args = argparse.Namespace(trace=str(p), rate_scale=1.0, target_mean_rps=None,
                              start=1200.0, duration=1800.0)  # fmt: skip
    w = sim.scaled_windows(sim.builtin_scenario(), args)
    # From the first window's start: windows 2, 3 and 4, re-based to 0.
    assert [(x.start_s, x.rps) for x in w] == [(0.0, 3.0), (600.0, 4.0), (1200.0, 5.0)]
    args.start, args.duration = 60_000.0, None
    with pytest.raises(ValueError, match=r"no requests.*--start"):
        sim.scaled_windows(sim.builtin_scenario(), args)
    args.start = -1.0
    with pytest.raises(ValueError, match="--start must be >= 0"):
        sim.scaled_windows(sim.builtin_scenario(), args)


def _poisson(rate: float, seconds: float, seed: int) -> list[sim.TraceRequest]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(sim.TraceRequest(t, rng.choice((500, 1500)), 100))


def test_aggregating_a_request_trace() -> None:
    reqs = [
        sim.TraceRequest(10.0, 1000, 10),
        sim.TraceRequest(20.0, 3000, 30),
        sim.TraceRequest(1300.0, 500, 5),  # the second window is empty
    ]
    agg = aggregate_requests(reqs, window_s=600.0)
    assert [(w.start_s, w.rps, w.prompt, w.output) for w in agg.windows] == [
        (0.0, 2 / 600, 2000.0, 20.0),
        (600.0, 0.0, 2000.0, 20.0),  # no requests: the last means, at rate 0
        (1200.0, 1 / 600, 500.0, 5.0),
    ]
    assert agg.prompt_cv == pytest.approx(
        math.sqrt(((1000 - 1500) ** 2 + 1500**2 + 1000**2) / 3) / 1500
    )
    # Poisson arrivals show no burstiness beyond Poisson's; a rate that alternates
    # minute by minute (within one window's mean) shows its factor's CV (0.8 here).
    assert aggregate_requests(_poisson(5.0, 7200.0, 1)).burst_cv < 0.05
    bursty = [
        r
        for r in _poisson(5.0, 7200.0, 2)
        if (r.t // 60) % 2 == 0 or random.Random(r.t).random() < 0.11
    ]
    assert 0.7 < aggregate_requests(bursty).burst_cv < 0.9
    assert aggregate_requests([]).windows == []


def test_a_long_request_trace_runs_aggregated_with_its_own_spread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reqs = _poisson(0.5, 7 * 3600.0, 3)
    p = tmp_path / "trace.csv"
    rows = "".join(f"{round(r.t * 1e7)},{r.prompt},{r.output}\n" for r in reqs)
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    args = argparse.Namespace(trace=str(p), plot=None, json=False, step_seconds=30.0)
    report = sim.run_cli(args)  # --engine auto: beyond 6 hours, the fluid engine
    assert report is not None
    assert "static-peak" in [r.policy for r in report.results]
    assert f"{len(reqs)} requests of {p} aggregated into 42 windows" in capsys.readouterr().err
    # Within 6 hours, or --engine requests, the per-request engine replays the trace.
    args = argparse.Namespace(trace=str(p), plot=None, json=False, engine="requests",
                              duration=3600.0)  # fmt: skip
    report = sim.run_cli(args)
    assert report is not None
    assert "static-pool" in [r.policy for r in report.results]
    # The aggregated trace's measured spread stands in only for options not given.
    agg = aggregate_requests(reqs)
    spec = sim.arrival_spec(argparse.Namespace(), agg)
    assert (spec.prompt_cv, spec.output_cv) == (agg.prompt_cv, agg.output_cv)
    assert spec.process == ("bursty" if agg.burst_cv > 0 else "poisson")
    given = sim.arrival_spec(argparse.Namespace(token_cv=2.0, arrivals="poisson"), agg)
    assert (given.prompt_cv, given.process) == (2.0, "poisson")
    assert sim.arrival_spec(argparse.Namespace()) == ArrivalSpec()
