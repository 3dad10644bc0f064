"""Replays the shared Azure LLM code trace through the autoscaler simulator and prints the table.

Run: ``.venv/bin/python benchmarks/autoscaler_trace.py [--trace CSV] [--scenario YAML]
[--plot PNG] [--json] [--seed N] [--no-spillover] [--downgrade] [--max-gpus CLASS=N,...]
[--seeds K]``

``--seeds K`` also prints the mean over routing seeds 0..K-1 (the same trace, another
difficulty draw; the static oracles are searched again per seed).

Static (the fewest fixed replicas that meet the SLO target on this trace), a per-model
HPA-style utilisation target and tokenyard's decide_pool run on the same simulator and
workload; see tokenyard.autoscaler.sim for the serving model and docs/autoscaling.md
for the scenario's assumptions. The trace lives beside the repository in ../shared/traces/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tokenyard.autoscaler import sim
from tokenyard.cli import simulate_arguments

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "azure_llm_code_2023.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    simulate_arguments(p)
    p.add_argument("--seeds", type=int, default=0, help="also the mean over seeds 0..K-1")
    args = p.parse_args(argv)
    if not Path(args.trace).is_file():
        print(f"autoscaler_trace: trace not found: {args.trace}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    report = sim.run_cli(args)
    if report is None:
        return 1
    if not args.json:
        print(f"simulated in {time.perf_counter() - started:.1f}s\n")
        print(bar(report))
    if args.seeds > 0:
        seed_means(args)
    return 0


def bar(report: sim.Report) -> str:
    """The issue's bar for this run, line by line: tokenyard at the SLO target (pool-wide),
    at most 0.60 x static (provisioned for the peak, every model at the target) and 0.85 x
    HPA-style at the SLO target, with fewer scale events than HPA-style."""
    ty = report.by("tokenyard")
    static, hpa_slo, hpa = report.by("static"), report.by("hpa-slo"), report.by("hpa")
    target = report.scenario.sloTarget

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        (
            f"tokenyard attainment {ty.slo_attainment:.2%} >= {target:.0%}",
            ty.slo_attainment >= target,
        ),
        (
            f"tokenyard / static = {ty.cost_usd / static.cost_usd:.3f} <= 0.60",
            ty.cost_usd <= 0.60 * static.cost_usd,
        ),
        (
            f"tokenyard / hpa-slo = {ty.cost_usd / hpa_slo.cost_usd:.3f} <= 0.85 "
            f"(hpa-slo at {hpa_slo.slo_attainment:.2%})",
            ty.cost_usd <= 0.85 * hpa_slo.cost_usd and hpa_slo.slo_attainment >= target,
        ),
        (
            f"scale events {ty.scale_events} < hpa {hpa.scale_events}, hpa-slo "
            f"{hpa_slo.scale_events}",
            ty.scale_events < min(hpa.scale_events, hpa_slo.scale_events),
        ),
    ]
    out = "the issue's bar on this run:\n" + "\n".join(
        f"  {mark(ok):<8} {text}" for text, ok in rows
    )
    floor = floor_cost(report)
    if floor is not None:
        out += (
            f"\n  floor: minReplicas alone cost {floor:.2f} USD over the trace, "
            f"{floor / static.cost_usd:.3f} of static; no policy that keeps them goes below"
        )
    return out


def floor_cost(report: sim.Report) -> float | None:
    """What every model's minReplicas cost over the replayed span: the static run holds a
    fixed fleet, so its cost per fleet-hour gives the span."""
    sc = report.scenario
    price = {a.name: a.hourlyCostPerGPU for a in sc.accelerators}
    per_hour = [m.gpusPerReplica * price[m.accelerator] for m in sc.models]
    fleet_hourly = sum(n * c for n, c in zip(report.static_replicas, per_hour, strict=True))
    if fleet_hourly <= 0:
        return None
    hours = report.by("static").cost_usd / fleet_hourly
    return hours * sum(
        m.autoscaling.minReplicas * c for m, c in zip(sc.models, per_hour, strict=True)
    )


def seed_means(args: argparse.Namespace) -> None:
    """Mean cost, attainment, scale events and capacity downgrades per policy over
    routing seeds."""
    base = sim.scenario_from_args(args)
    trace = sim.read_trace(args.trace)
    rows: dict[str, list[tuple[float, float, float, int, int]]] = {}
    for seed in range(args.seeds):
        report = sim.simulate(base.model_copy(update={"seed": seed}), trace)
        for r in report.results:
            rows.setdefault(r.policy, []).append(
                (
                    r.cost_usd,
                    r.slo_attainment,
                    r.min_model_slo,
                    r.scale_events,
                    sum(int(m.get("downgradedIn", 0)) for m in r.models.values()),
                )
            )
    ty = rows["tokenyard"]
    print(f"\nmean over routing seeds 0-{args.seeds - 1}:")
    print(f"{'policy':<12} {'cost USD':>9} {'SLO':>8} {'worst model':>12} {'events':>7} "
          f"{'downgraded':>10} {'tokenyard/this':>15} "
          f"{'seeds tokenyard >= this SLO':>28}")  # fmt: skip
    for policy, vals in rows.items():
        n = len(vals)
        cost = sum(v[0] for v in vals) / n
        ratio = sum(t[0] for t in ty) / sum(v[0] for v in vals)
        wins = sum(1 for t, v in zip(ty, vals, strict=True) if t[1] >= v[1])
        print(
            f"{policy:<12} {cost:>9.2f} {sum(v[1] for v in vals) / n:>7.2%} "
            f"{sum(v[2] for v in vals) / n:>11.2%} {sum(v[3] for v in vals) / n:>7.1f} "
            f"{sum(v[4] for v in vals) / n:>10.1f} {ratio:>14.1%} {wins:>25}/{n}"
        )


if __name__ == "__main__":
    sys.exit(main())
