"""``tokenyard simulate``: replay a trace and print (or plot) the comparison.

``benchmarks/autoscaler_trace.py`` calls :func:`run_cli` with the same options.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from tokenyard.autoscaler.sim.fluid import POOL_PEAK_SHARE, pool_rate, route_shares, simulate_fluid
from tokenyard.autoscaler.sim.rates import (
    AGGREGATE_WINDOW_S,
    Aggregated,
    ArrivalSpec,
    RateWindow,
    aggregate_requests,
    fluid_demand,
    generate_requests,
    is_rate_trace,
    read_rate_trace,
    scale_rates,
)
from tokenyard.autoscaler.sim.report import Report, plot, simulate
from tokenyard.autoscaler.sim.scenario import Scenario, load_scenario
from tokenyard.autoscaler.sim.trace import TraceRequest, read_trace, thin

FLUID_BEYOND_S = 6 * 3600.0
"""--engine auto: traces longer than this run on the fluid engine (a request trace
aggregated, :func:`~tokenyard.autoscaler.sim.rates.aggregate_requests`)."""


def main(args: argparse.Namespace) -> int:
    """``tokenyard simulate``: replay a trace and print the comparison."""
    return 0 if run_cli(args) is not None else 1


def _max_gpus(raw: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (x.strip() for x in raw.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--max-gpus: expected CLASS=N, got {part!r}")
        out[name.strip()] = int(value)
    return out


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario file (or the built-in one) with the command line's overrides."""
    scenario = load_scenario(getattr(args, "scenario", None))
    update: dict[str, Any] = {}
    if getattr(args, "seed", None) is not None:
        update["seed"] = args.seed
    if getattr(args, "no_spillover", False):
        update["spillover"] = False
    if getattr(args, "downgrade", False):
        update["downgradeWhenCapped"] = True
    if getattr(args, "replica_routing", None):
        update["models"] = [
            m.model_copy(update={"replicaRouting": args.replica_routing}) for m in scenario.models
        ]
    if getattr(args, "max_gpus", None):
        limits = _max_gpus(args.max_gpus)
        unknown = set(limits) - {a.name for a in scenario.accelerators}
        if unknown:
            raise ValueError(f"--max-gpus: no accelerator class {sorted(unknown)} in the scenario")
        update["accelerators"] = [
            a.model_copy(update={"maxGPUs": limits.get(a.name, a.maxGPUs)})
            for a in scenario.accelerators
        ]
    return scenario.model_copy(update=update)


def run_cli(args: argparse.Namespace) -> Report | None:
    """What ``tokenyard simulate`` does with its arguments; the report, or None (and a
    message on stderr) when the trace has no requests or an option is wrong."""
    plot_to = getattr(args, "plot", None)
    if plot_to and not Path(plot_to).parent.is_dir():  # said before the run, not after
        print(f"simulate: --plot: no directory {Path(plot_to).parent}", file=sys.stderr)
        return None
    try:
        scenario = scenario_from_args(args)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return None
    try:
        if is_rate_trace(args.trace):
            report = _simulate_rates(scenario, args)
        else:
            trace = requests_from_args(scenario, args)
            if not trace:
                print(
                    f"simulate: no requests in {args.trace} (within --start and --duration)",
                    file=sys.stderr,
                )
                return None
            if _fluid(args, trace[-1].t - trace[0].t):
                report = _simulate_aggregated(scenario, trace, args)
            else:
                report = simulate(scenario, trace)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return None
    except OSError as exc:  # the trace cannot be read: missing, a directory, no access
        print(f"simulate: {args.trace}: {exc.strerror or exc}", file=sys.stderr)
        return None
    if args.plot:
        plot(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        if args.plot:
            print(f"plot written to {args.plot}")
    return report


def trace_span(args: argparse.Namespace) -> tuple[float, float | None]:
    """--start and --duration: the part of the trace to replay, in seconds from its start
    (a request trace's first request, a rate trace's first window)."""
    start = getattr(args, "start", None)
    duration = getattr(args, "duration", None)
    start = 0.0 if start is None else float(start)
    if not start >= 0:
        raise ValueError("--start must be >= 0")
    if duration is not None and not duration > 0:
        raise ValueError("--duration must be > 0")
    return start, duration


def requests_from_args(scenario: Scenario, args: argparse.Namespace) -> list[TraceRequest]:
    """The per-request trace within --start and --duration, thinned as --rate-scale or
    --target-mean-rps ask (from the scenario's seed;
    :func:`~tokenyard.autoscaler.sim.trace.thin`)."""
    start, duration = trace_span(args)
    return thin(
        read_trace(args.trace, start_s=start, duration_s=duration),
        rate_scale=getattr(args, "rate_scale", None),
        target_mean_rps=getattr(args, "target_mean_rps", None),
        seed=scenario.seed,
    )


def arrival_spec(args: argparse.Namespace, measured: Aggregated | None = None) -> ArrivalSpec:
    """The rate-trace load options of the command line. Where an option is not given,
    an aggregated request trace's ``measured`` spread stands in: its token counts' CVs
    and, where its counts per slot are burstier than Poisson's, bursty arrivals of its
    burst CV. Otherwise Poisson arrivals, token CV 1.0 and burst CV 1.0."""
    cv = getattr(args, "token_cv", None)
    burst_cv = getattr(args, "burst_cv", None)
    process = getattr(args, "arrivals", None)
    if (cv is not None and not cv >= 0) or (burst_cv is not None and not burst_cv >= 0):
        raise ValueError("--token-cv and --burst-cv must be >= 0")
    prompt_cv, output_cv = (cv, cv) if cv is not None else (1.0, 1.0)
    if measured is not None:
        if cv is None:
            prompt_cv, output_cv = measured.prompt_cv, measured.output_cv
        if process is None and burst_cv is None and measured.burst_cv > 0:
            process, burst_cv = "bursty", measured.burst_cv
    return ArrivalSpec(
        process=process or "poisson",
        burst_cv=1.0 if burst_cv is None else burst_cv,
        prompt_cv=prompt_cv,
        output_cv=output_cv,
    )


def _fluid(args: argparse.Namespace, span_s: float) -> bool:
    """Whether a trace of this span runs on the aggregated engine (--engine)."""
    engine = getattr(args, "engine", "auto")
    return bool(engine == "fluid" or (engine == "auto" and span_s > FLUID_BEYOND_S))


def _simulate_aggregated(
    scenario: Scenario, trace: list[TraceRequest], args: argparse.Namespace
) -> Report:
    """A request trace on the fluid engine: aggregated into AGGREGATE_WINDOW_S windows
    (its rate and token means per window, its own token spread unless --token-cv is
    given) and its burstiness at the bursty process's slot (unless --arrivals or
    --burst-cv is given), arrivals generated from the seed as for a rate trace. Its
    requests' own times are not replayed: burstiness within a slot is lost."""
    agg = aggregate_requests(trace)
    spec = arrival_spec(args, agg)
    # On stderr: the report's request count is then the generated load's, not the trace's.
    print(
        f"simulate: {len(trace)} requests of {args.trace} aggregated into "
        f"{len(agg.windows)} windows of {AGGREGATE_WINDOW_S:g}s for the fluid engine "
        f"(prompt CV {spec.prompt_cv:.2f}, output CV {spec.output_cv:.2f}, "
        f"{spec.process} arrivals"
        + (f", burst CV {spec.burst_cv:.2f}" if spec.process == "bursty" else "")
        + "; generated from the seed)",
        file=sys.stderr,
    )
    demand = fluid_demand(
        agg.windows, route_shares(scenario), step_s=_step(args), seed=scenario.seed, spec=spec
    )
    return simulate_fluid(scenario, demand)


def _step(args: argparse.Namespace) -> float:
    step = float(getattr(args, "step_seconds", 10.0))
    if not step > 0:
        raise ValueError("--step-seconds must be > 0")
    return step


def scaled_windows(scenario: Scenario, args: argparse.Namespace) -> list[RateWindow]:
    """The rate trace scaled as the command line asks; by default so that its busiest
    window needs POOL_PEAK_SHARE of the pool's capacity."""
    windows = read_rate_trace(args.trace)
    start, duration = trace_span(args)
    if windows and (start > 0 or duration is not None):
        t0 = windows[0].start_s + start
        end = t0 + duration if duration is not None else math.inf
        windows = [
            RateWindow(w.start_s - t0, w.window_s, w.rps, w.prompt, w.output)
            for w in windows
            if t0 <= w.start_s < end
        ]
    if not windows or all(w.rps <= 0 for w in windows):
        raise ValueError(f"no requests in {args.trace} (within --start and --duration)")
    rate_scale = getattr(args, "rate_scale", None)
    target = getattr(args, "target_mean_rps", None)
    if rate_scale is None and target is None:
        shares = route_shares(scenario)
        peak = max(windows, key=lambda w: w.rps)
        rate_scale = POOL_PEAK_SHARE * pool_rate(scenario, shares, peak.prompt, peak.output)
        rate_scale /= peak.rps
    return scale_rates(windows, rate_scale=rate_scale, target_mean_rps=target)


def _simulate_rates(scenario: Scenario, args: argparse.Namespace) -> Report:
    windows = scaled_windows(scenario, args)
    spec = arrival_spec(args)
    span = windows[-1].start_s + windows[-1].window_s - windows[0].start_s
    if _fluid(args, span):
        demand = fluid_demand(
            windows, route_shares(scenario), step_s=_step(args), seed=scenario.seed, spec=spec
        )
        return simulate_fluid(scenario, demand)
    return simulate(scenario, generate_requests(windows, scenario.seed, spec))


__all__ = ["arrival_spec", "main", "run_cli", "scaled_windows", "scenario_from_args"]
