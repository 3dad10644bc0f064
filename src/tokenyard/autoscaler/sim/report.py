"""The comparison: every policy over one trace, its report, table, cost ratios and plot.

:func:`simulate` runs the static fleets, HPA-style and tokenyard; ``tokenyard simulate``
and the benchmark print its :class:`Report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenyard.autoscaler.decide import DecisionConfig
from tokenyard.autoscaler.sim.baselines import hpa_slo_search, static_oracle, static_pool_oracle
from tokenyard.autoscaler.sim.engine import RunResult, run
from tokenyard.autoscaler.sim.policies import HPAPolicy, TokenyardPolicy, hold
from tokenyard.autoscaler.sim.scenario import Scenario, route
from tokenyard.autoscaler.sim.trace import TraceRequest


@dataclass
class Report:
    """The three runs and the ratios the issue asks for."""

    scenario: Scenario
    results: list[RunResult]
    static_replicas: list[int]
    static_pool_replicas: list[int]
    hpa_slo_factor: float
    """The factor on every model's GPU utilisation target that hpa-slo ran with."""
    trace_seconds: float
    trace_requests: int
    refused_requests: int = 0
    """Requests longer than every model's context: refused (HTTP 413), served by no
    policy, and outside every attainment."""

    def by(self, name: str) -> RunResult:
        return next(r for r in self.results if r.policy == name)

    def ratios(self) -> dict[str, float]:
        ty = self.by("tokenyard")
        return {
            f"tokenyard/{r.policy}": round(ty.cost_usd / r.cost_usd, 4)
            for r in self.results
            if r.policy != "tokenyard" and r.cost_usd > 0
        }

    def to_dict(self) -> dict[str, Any]:
        names = [m.name for m in self.scenario.models]
        return {
            "scenario": self.scenario.model_dump(mode="json"),
            "traceSeconds": round(self.trace_seconds, 1),
            "traceRequests": self.trace_requests,
            "refusedRequests": self.refused_requests,
            "staticReplicas": dict(zip(names, self.static_replicas, strict=True)),
            "staticPoolReplicas": dict(zip(names, self.static_pool_replicas, strict=True)),
            "hpaSLOTargets": {
                m.name: round(m.autoscaling.targetGPUUtilization * self.hpa_slo_factor, 4)
                for m in self.scenario.models
            },
            "results": [r.row() for r in self.results],
            "costRatios": self.ratios(),
        }

    def table(self) -> str:
        routing = "with spill-over" if self.scenario.spillover else "without spill-over"
        lines = [
            f"trace: {self.trace_requests} requests over {self.trace_seconds / 60:.1f} min; "
            f"scenario {self.scenario.name}; routing seed {self.scenario.seed}, {routing}",
            f"{'policy':<12} {'cost USD':>9} {'GPU-h':>7} {'SLO':>8} {'worst model':>12} "
            f"{'dropped':>8} {'events':>7} {'tokenyard/this':>15}",
        ]
        ty = self.by("tokenyard")
        for r in self.results:
            ratio = ty.cost_usd / r.cost_usd if r.cost_usd else float("nan")
            lines.append(
                f"{r.policy:<12} {r.cost_usd:>9.2f} {r.gpu_hours:>7.2f} "
                f"{r.slo_attainment:>7.2%} {r.min_model_slo:>11.2%} {r.dropped:>8} "
                f"{r.scale_events:>7} {ratio:>14.1%}"
            )
        targets = ", ".join(
            f"{m.name} {m.autoscaling.targetGPUUtilization * self.hpa_slo_factor:.2f}"
            for m in self.scenario.models
        )
        lines.append(
            "static: the cheapest fixed fleet with every model at the SLO target; "
            "static-pool: the cheapest with all requests together at it; "
            f"hpa: the stated GPU utilisation targets; hpa-slo: HPA at the SLO target, "
            f"the highest targets that reach it pool-wide ({targets})"
        )
        for r in self.results:
            per = ", ".join(
                f"{n}: {v['meanReplicas']} avg replicas, SLO {v['sloAttainment']:.2%}"
                + (f", {v['downgradedIn']} downgraded in" if v.get("downgradedIn") else "")
                for n, v in r.models.items()
            )
            lines.append(f"  {r.policy}: {per}")
        if self.refused_requests:
            lines.append(
                f"refused: {self.refused_requests} requests longer than every model's context "
                "(prompt + output > kvCacheTokens; the router answers 413), in no policy's figures"
            )
        return "\n".join(lines)


def simulate(
    scenario: Scenario, trace: Sequence[TraceRequest], cfg: DecisionConfig | None = None
) -> Report:
    """Runs the static fleets, HPA-style and tokenyard over one trace."""
    routed = route(scenario, trace)
    static = static_oracle(scenario, routed)
    static_pool = static_pool_oracle(scenario, routed)
    initial = [max(1, m.autoscaling.minReplicas) for m in scenario.models]
    ty_initial = [m.autoscaling.minReplicas for m in scenario.models]
    hpa_factor, hpa_slo = hpa_slo_search(scenario, routed, initial)
    results = [
        run(scenario, routed, policy_name="static", policy=hold, interval=1e9, initial=static),
        run(
            scenario,
            routed,
            policy_name="static-pool",
            policy=hold,
            interval=1e9,
            initial=static_pool,
        ),
        run(
            scenario,
            routed,
            policy_name="hpa",
            policy=HPAPolicy(scenario),
            interval=scenario.hpaSyncSeconds,
            initial=initial,
            warmup_s=scenario.warmupSeconds,
        ),
        hpa_slo,
        run(
            scenario,
            routed,
            policy_name="tokenyard",
            policy=TokenyardPolicy(scenario, cfg),
            interval=scenario.decisionIntervalSeconds,
            initial=ty_initial,
            warmup_s=scenario.warmupSeconds,
        ),
    ]
    return Report(
        scenario=scenario,
        results=results,
        static_replicas=static,
        static_pool_replicas=static_pool,
        hpa_slo_factor=hpa_factor,
        trace_seconds=trace[-1].t if trace else 0.0,
        trace_requests=len(trace),
        refused_requests=len(trace) - len(routed),
    )


def plot(report: Report, path: str) -> None:
    """Demand, replicas per model (HPA and tokenyard) and cumulative cost over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in report.scenario.models]
    fig, axes = plt.subplots(4, 1, figsize=(12, 12), sharex=True)
    ty = report.by("tokenyard")
    # Minutes for an hour's trace, hours for a day's, days (ticks at midnight) beyond.
    span = ty.series["t"][-1] if ty.series["t"] else 0.0
    unit, label = (
        (86400.0, "days")
        if span > 2 * 86400
        else ((3600.0, "hours") if span > 4 * 3600 else (60.0, "minutes"))
    )
    minutes = [t / unit for t in ty.series["t"]]
    for n in names:
        axes[0].plot(minutes, [v / 1000 for v in ty.series[f"demand:{n}"]], label=n, lw=0.8)
    axes[0].set_ylabel("demand (k tokens/s)")
    for ax, res in ((axes[1], report.by("hpa")), (axes[2], ty)):
        mins = [t / unit for t in res.series["t"]]
        for n in names:
            ax.step(mins, res.series[f"replicas:{n}"], where="post", label=n, lw=1)
        ax.set_ylabel(f"replicas ({res.policy})")
    for res in report.results:
        mins = [t / unit for t in res.series["t"]]
        axes[3].plot(mins, res.series["cost"], label=res.policy)
    axes[3].set_ylabel("cumulative cost (USD)")
    axes[3].set_xlabel(label)
    if unit == 86400.0:
        axes[3].set_xticks(range(int(span // 86400) + 1))
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"tokenyard simulator: {report.scenario.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["Report", "plot", "simulate"]
