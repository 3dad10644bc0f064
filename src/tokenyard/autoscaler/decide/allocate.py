"""The pool's allocation (:func:`allocate`): every model's ask fitted into GPUs and budget.

Every model first gets its minimum (never undercut), then replicas are handed out one at
a time, highest priority first, then by value per dollar (tokens per GPU-hour per USD)
weighted by SLO pressure and by how much of its ask a model still lacks, while each
accelerator class stays within maxGPUs and the pool within its hourly budget. A model
that gets less than it asked is Capped (GPUCapped/BudgetCapped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenyard.api.common import REASON_BUDGET_CAPPED, REASON_GPU_CAPPED
from tokenyard.autoscaler.decide.views import ModelView, PoolView, Recommendation


@dataclass(frozen=True)
class Grant:
    """What the pool gives one model."""

    replicas: int
    capped: str | None = None
    message: str = ""
    band_max: int = 0


def _value_per_dollar(view: ModelView, rec: Recommendation) -> float:
    tps = rec.tokens_per_replica_s or view.nominal_tokens_per_s
    cost = view.replica_cost_per_hour
    # CPU-only classes cost nothing per GPU-hour: rank them by throughput alone.
    return tps * 3600 / cost if cost > 0 else tps * 3600 * 1e6


@dataclass
class _Usage:
    """GPUs per class and spend per hour the replicas handed out so far take."""

    pool: PoolView
    gpus_used: dict[str, int] = field(default_factory=dict)
    spend: float = 0.0

    def take(self, v: ModelView, k: int) -> None:
        if v.accelerator is not None:
            self.gpus_used[v.accelerator] = (
                self.gpus_used.get(v.accelerator, 0) + k * v.gpus_per_replica
            )
        self.spend += k * v.replica_cost_per_hour

    def blocker(self, v: ModelView) -> str | None:
        """Why one more replica of ``v`` does not fit, or None."""
        pool = self.pool
        if v.accelerator is not None and v.gpus_per_replica > 0:
            limit = pool.classes.get(v.accelerator)
            if limit is not None and limit.max_gpus is not None:
                used = self.gpus_used.get(v.accelerator, 0)
                if used + v.gpus_per_replica > limit.max_gpus:
                    return REASON_GPU_CAPPED
        if (
            pool.hourly_budget_usd is not None
            and v.replica_cost_per_hour > 0
            and self.spend + v.replica_cost_per_hour > pool.hourly_budget_usd + 1e-9
        ):
            return REASON_BUDGET_CAPPED
        return None

    def over_by_minimums(self, v: ModelView) -> str | None:
        """Why the replicas handed out already break a limit ``v`` is under, or None."""
        pool = self.pool
        limit = pool.classes.get(v.accelerator or "")
        if (
            limit is not None
            and limit.max_gpus is not None
            and v.gpus_per_replica > 0
            and self.gpus_used.get(v.accelerator or "", 0) > limit.max_gpus
        ):
            return REASON_GPU_CAPPED
        if (
            pool.hourly_budget_usd is not None
            and v.replica_cost_per_hour > 0
            and self.spend > pool.hourly_budget_usd + 1e-9
        ):
            return REASON_BUDGET_CAPPED
        return None


def _hand_out(
    views: Mapping[str, ModelView],
    recs: Mapping[str, Recommendation],
    owned: list[str],
    grant: dict[str, int],
    usage: _Usage,
) -> dict[str, str]:
    """Replicas one at a time to the most valuable model still short of its ask, until
    every ask is met or blocked; returns the blocked models and why."""
    capped: dict[str, str] = {}
    wanting = {n for n in owned if grant[n] < recs[n].desired}
    while wanting:

        def key(n: str) -> tuple[int, float]:
            v, r = views[n], recs[n]
            unmet = (r.desired - grant[n]) / max(r.desired, 1)
            return (v.priority, unmet * r.slo_pressure * _value_per_dollar(v, r))

        best = max(sorted(wanting), key=key)
        why = usage.blocker(views[best])
        if why is not None:
            capped[best] = why
            wanting.discard(best)
            continue
        grant[best] += 1
        usage.take(views[best], 1)
        if grant[best] >= recs[best].desired:
            wanting.discard(best)
    return capped


# Positional, as allocate calls it; each argument is one part of the allocation so far.
def _grants(  # noqa: PLR0917
    views: Mapping[str, ModelView],
    recs: Mapping[str, Recommendation],
    owned: list[str],
    grant: dict[str, int],
    usage: _Usage,
    capped: dict[str, str],
) -> dict[str, Grant]:
    """The grants, each with Ray Serve's upper bound: spare room split evenly among a
    class's models (and the pool's budget among all)."""
    pool = usage.pool
    out: dict[str, Grant] = {}
    per_class: dict[str, int] = {}
    for name in owned:
        cls_name = views[name].accelerator or ""
        per_class[cls_name] = per_class.get(cls_name, 0) + 1
    for name in owned:
        v, g = views[name], grant[name]
        extra = v.max_replicas - g
        if v.gpus_per_replica > 0:
            limit = pool.classes.get(v.accelerator or "")
            if limit is not None and limit.max_gpus is not None:
                spare = max(0, limit.max_gpus - usage.gpus_used.get(v.accelerator or "", 0))
                extra = min(extra, spare // v.gpus_per_replica // per_class[v.accelerator or ""])
        if pool.hourly_budget_usd is not None and v.replica_cost_per_hour > 0:
            room = max(0.0, pool.hourly_budget_usd - usage.spend)
            extra = min(extra, int(room // v.replica_cost_per_hour) // max(1, len(owned)))
        msg = ""
        if name in capped:
            what = (
                "GPU limit of class " + str(v.accelerator)
                if capped[name] == REASON_GPU_CAPPED
                else f"hourly budget {pool.hourly_budget_usd:g} USD"
            )
            msg = f"asked {recs[name].desired} replicas, got {g}: {what}"
        out[name] = Grant(
            replicas=g, capped=capped.get(name), message=msg, band_max=g + max(0, extra)
        )
    return out


def allocate(
    pool: PoolView,
    views: Mapping[str, ModelView],
    recs: Mapping[str, Recommendation],
) -> dict[str, Grant]:
    """Fit every model's ask into the pool's GPU limits and hourly budget."""
    # Models someone else owns, and models held for lack of metrics, keep their replicas.
    owned = [n for n, v in views.items() if v.mode == "Tokenyard" and recs[n].metrics_available]
    grant: dict[str, int] = {}
    usage = _Usage(pool)
    for name, v in views.items():
        if name not in owned:
            usage.take(v, v.current_replicas)
    for name in owned:
        v, r = views[name], recs[name]
        grant[name] = min(r.desired, max(r.floor, 0))
        usage.take(v, grant[name])
    capped = _hand_out(views, recs, owned, grant, usage)
    # Minimums alone may already break a limit: say so, but never go below them.
    for name in owned:
        if name not in capped and grant[name] > 0:
            why = usage.over_by_minimums(views[name])
            if why is not None:
                capped[name] = why
    return _grants(views, recs, owned, grant, usage, capped)


__all__ = ["Grant", "allocate"]
