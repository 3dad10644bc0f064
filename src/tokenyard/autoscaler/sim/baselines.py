"""The baselines' oracles, searched on the very trace they are judged on.

The cheapest static fleets that reach the SLO target (per model, or pool-wide), and HPA
at the highest utilisation targets that reach it (hpa-slo). :func:`simulate` runs them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tokenyard.autoscaler.sim.engine import RunResult, run
from tokenyard.autoscaler.sim.policies import HPAPolicy, hold
from tokenyard.autoscaler.sim.scenario import Scenario
from tokenyard.autoscaler.sim.trace import TraceRequest


def static_oracle(scenario: Scenario, routed: Sequence[tuple[TraceRequest, int]]) -> list[int]:
    """Per model, the fewest fixed replicas that reach the SLO target on this trace."""
    return _with_spillover(scenario, routed, _static_alone(scenario, routed), per_model=True)


def static_pool_oracle(scenario: Scenario, routed: Sequence[tuple[TraceRequest, int]]) -> list[int]:
    """The cheapest fixed fleet whose pool-wide attainment (all requests together) reaches
    the SLO target on this trace: a weaker criterion than :func:`static_oracle`'s (every
    model on its own), shown beside it so that a policy judged on pool-wide attainment is
    compared with the static fleet that meets that same criterion."""
    return _with_spillover(scenario, routed, _static_pool_alone(scenario, routed), per_model=False)


def _fleet_cost(scenario: Scenario, fleet: Sequence[int]) -> float:
    price = {a.name: a.hourlyCostPerGPU for a in scenario.accelerators}
    return sum(
        n * m.gpusPerReplica * price[m.accelerator]
        for n, m in zip(fleet, scenario.models, strict=True)
    )


def _class_cap(scenario: Scenario, i: int) -> int:
    """The most replicas of model ``i`` its accelerator class holds, alone."""
    m = scenario.models[i]
    limit = next(a.maxGPUs for a in scenario.accelerators if a.name == m.accelerator)
    return max(0, min(m.autoscaling.maxReplicas, limit // m.gpusPerReplica))


def fits(scenario: Scenario, fleet: Sequence[int]) -> bool:
    """True when the fleet stays within every accelerator class's maxGPUs (a static fleet
    or an HPA beyond them would leave replicas Pending: they neither serve nor cost)."""
    used: dict[str, int] = {}
    for n, m in zip(fleet, scenario.models, strict=True):
        used[m.accelerator] = used.get(m.accelerator, 0) + n * m.gpusPerReplica
    limits = {a.name: a.maxGPUs for a in scenario.accelerators}
    return all(used[c] <= limits[c] for c in used)


def _with_spillover(
    scenario: Scenario,
    routed: Sequence[tuple[TraceRequest, int]],
    alone: list[int],
    *,
    per_model: bool,
) -> list[int]:
    """The cheapest fleet meeting the criterion once requests spill over between models.

    ``alone`` meets it with every model on its own traffic (found fast, model by model);
    spill-over moves load between models, so the fleets at or below it are tried whole,
    cheapest first, among those that fit the pool's GPUs. If ``alone`` itself falls
    short (a trace the pool cannot serve at the target), no smaller fleet is tried:
    fewer replicas do not miss less, and the whole box (up to the product of the models'
    replica caps, each a run of the trace) would be tried for nothing. Then the worst
    model that still gains grows, one replica at a time, until the criterion holds or
    no model gains (then the fleet that came closest is returned)."""
    if not scenario.spillover:
        return alone

    def ok(fleet: Sequence[int]) -> tuple[bool, RunResult]:
        res = run(scenario, routed, policy_name="static", policy=hold, interval=1e9,
                  initial=list(fleet))  # fmt: skip
        return _criterion(res, per_model) >= scenario.sloTarget, res

    fleet = list(alone)
    good, res = ok(fleet)
    if good:
        ranges = [
            range(max(1, m.autoscaling.minReplicas), n + 1)
            for m, n in zip(scenario.models, alone, strict=True)
        ]
        combos = (f for f in itertools.product(*ranges) if fits(scenario, f))
        for combo in sorted(combos, key=lambda f: _fleet_cost(scenario, f)):
            if list(combo) == fleet or ok(combo)[0]:
                return list(combo)
    # Grow the worst model that can grow and gains from it; a model whose next replica
    # does not raise the criterion (or does not fit the pool) is not grown again.
    stuck: set[int] = set()
    while not good:
        growable = [
            j
            for j, m in enumerate(scenario.models)
            if j not in stuck
            and fleet[j] < m.autoscaling.maxReplicas
            and fits(scenario, [n + (k == j) for k, n in enumerate(fleet)])
        ]
        if not growable:
            break
        worst = min(growable, key=lambda j: res.models[scenario.models[j].name]["sloAttainment"])
        bigger = [n + (k == worst) for k, n in enumerate(fleet)]
        good_b, res_b = ok(bigger)
        if good_b or _criterion(res_b, per_model) > _criterion(res, per_model):
            fleet, good, res = bigger, good_b, res_b
        else:
            stuck.add(worst)
    return fleet


def _criterion(res: RunResult, per_model: bool) -> float:
    return res.min_model_slo if per_model else res.slo_attainment


def _static_alone(scenario: Scenario, routed: Sequence[tuple[TraceRequest, int]]) -> list[int]:
    """Per model on its own traffic, the fewest fixed replicas that reach the target."""
    sizes: list[int] = []
    for i, m in enumerate(scenario.models):
        lo = max(1, m.autoscaling.minReplicas)
        hi = max(lo, _class_cap(scenario, i))

        def ok(n: int, i: int = i) -> bool:
            initial = [0] * len(scenario.models)
            initial[i] = n
            res = run(
                scenario,
                routed,
                policy_name="static",
                policy=hold,
                interval=1e9,
                initial=initial,
                only={i},
            )
            return res.slo_attainment >= scenario.sloTarget

        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        sizes.append(lo)
    return sizes


def _static_pool_alone(scenario: Scenario, routed: Sequence[tuple[TraceRequest, int]]) -> list[int]:
    """The cheapest fixed fleet reaching the target pool-wide, each model on its own traffic."""
    price = {a.name: a.hourlyCostPerGPU for a in scenario.accelerators}
    # Without spill-over the models do not interact, so each one's misses per fleet size
    # are measured alone, from one replica up to the first size that misses nothing.
    options: list[list[tuple[int, int]]] = []
    total = 0
    for i, m in enumerate(scenario.models):
        opts: list[tuple[int, int]] = []
        lo = max(1, m.autoscaling.minReplicas)
        for n in range(lo, max(lo, _class_cap(scenario, i)) + 1):
            initial = [0] * len(scenario.models)
            initial[i] = n
            res = run(scenario, routed, policy_name="static", policy=hold, interval=1e9,
                      initial=initial, only={i})  # fmt: skip
            opts.append((n, res.requests - res.slo_met))
            if res.slo_met == res.requests:
                break
        total += res.requests
        options.append(opts)
    allowed = (1 - scenario.sloTarget) * total + 1e-9
    best: tuple[float, list[int]] | None = None
    for combo in itertools.product(*options):
        if sum(miss for _, miss in combo) > allowed:
            continue
        if not fits(scenario, [n for n, _ in combo]):
            continue
        cost = sum(
            n * m.gpusPerReplica * price[m.accelerator]
            for (n, _), m in zip(combo, scenario.models, strict=True)
        )
        if best is None or cost < best[0]:
            best = (cost, [n for n, _ in combo])
    return best[1] if best is not None else [opts[-1][0] for opts in options]


HPA_SCALE_STEPS = tuple(round(1.0 - 0.05 * k, 2) for k in range(19))
"""Scale factors tried on every model's targetGPUUtilization by :func:`hpa_slo_search`:
1.0 (the stated targets) down to 0.1 in steps of 0.05."""


def hpa_scaled(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every model's GPU utilisation target multiplied by ``factor``."""
    models = [
        m.model_copy(
            update={
                "autoscaling": m.autoscaling.model_copy(
                    update={
                        "targetGPUUtilization": round(
                            m.autoscaling.targetGPUUtilization * factor, 4
                        )
                    }
                )
            }
        )
        for m in scenario.models
    ]
    return scenario.model_copy(update={"models": models})


def hpa_slo_search(
    scenario: Scenario, routed: Sequence[tuple[TraceRequest, int]], initial: Sequence[int]
) -> tuple[float, RunResult]:
    """HPA-style at equal SLO: the highest utilisation targets (every model's stated target
    times one factor, :data:`HPA_SCALE_STEPS`) whose pool-wide attainment reaches the SLO
    target on this trace. Lower targets keep more replicas, so the first factor that
    reaches it is the cheapest HPA setting on the grid that does (an oracle, tuned on the
    very trace it is judged on). Returns the factor and its run; if no factor reaches
    the target, the one with the highest attainment."""
    best: tuple[float, RunResult] | None = None
    for factor in HPA_SCALE_STEPS:
        scaled = hpa_scaled(scenario, factor)
        res = run(scaled, routed, policy_name="hpa-slo", policy=HPAPolicy(scaled),
                  interval=scenario.hpaSyncSeconds, initial=initial,
                  warmup_s=scenario.warmupSeconds)  # fmt: skip
        if res.slo_attainment >= scenario.sloTarget:
            return factor, res
        if best is None or res.slo_attainment > best[1].slo_attainment:
            best = (factor, res)
    assert best is not None
    return best


__all__ = [
    "HPA_SCALE_STEPS",
    "fits",
    "hpa_scaled",
    "hpa_slo_search",
    "static_oracle",
    "static_pool_oracle",
]
