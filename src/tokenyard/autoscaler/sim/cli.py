"""``tokenyard simulate``: replay a trace and print (or plot) the comparison.

``benchmarks/autoscaler_trace.py`` calls :func:`run_cli` with the same options.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tokenyard.autoscaler.sim.report import Report, plot, simulate
from tokenyard.autoscaler.sim.scenario import Scenario, load_scenario
from tokenyard.autoscaler.sim.trace import read_trace


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
    try:
        scenario = scenario_from_args(args)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return None
    trace = read_trace(args.trace)
    if not trace:
        print(f"simulate: no requests in {args.trace}", file=sys.stderr)
        return None
    report = simulate(scenario, trace)
    if args.plot:
        plot(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        if args.plot:
            print(f"plot written to {args.plot}")
    return report


__all__ = ["main", "run_cli", "scenario_from_args"]
