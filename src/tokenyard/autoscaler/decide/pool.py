"""Every model of a pool decided (:func:`decide_pool`): what to write, and why.

Each model's ask (:mod:`~tokenyard.autoscaler.decide.recommend`), fitted into the pool
(:mod:`~tokenyard.autoscaler.decide.allocate`), becomes a :class:`Decision`, with the
measured cost per 1M tokens carried along. The loop and the simulator call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tokenyard.autoscaler.decide.allocate import Grant, allocate
from tokenyard.autoscaler.decide.recommend import recommend
from tokenyard.autoscaler.decide.views import (
    DecisionConfig,
    ModelState,
    ModelView,
    PoolView,
    Recommendation,
)
from tokenyard.autoscaler.signals import ModelSignals


@dataclass(frozen=True)
class Decision:
    """The outcome for one model: what to write and why."""

    name: str
    desired: int
    """Replicas the model should have (written to the scale subresource when owned)."""
    reason: str
    write: bool
    """True when tokenyard owns replicas and desired differs from the current value."""
    band_min: int
    band_max: int
    """Bounds handed to Ray Serve's own autoscaler between decisions."""
    capped: str | None = None
    """REASON_GPU_CAPPED or REASON_BUDGET_CAPPED when the pool gave less than asked."""
    capped_message: str = ""
    recommended: int = 0
    metrics_available: bool = True
    metrics_detail: str = ""
    panic: bool = False
    cost_per_1m_tokens: float | None = None


def cost_changes(
    state: ModelState,
    *,
    now: float,
    replicas: int,
    view: ModelView,
    tokens_per_s: float,
    cfg: DecisionConfig,
) -> dict[str, Any]:
    """The last interval's GPU cost and tokens folded into the state's exponentially
    fading sums: the fields that change and their new values (the decision writes them
    with its other changes, in one copy of the state)."""
    if state.cost_updated is None:
        return {"cost_updated": now}
    dt = max(0.0, now - state.cost_updated)
    fade = math.exp(-dt / cfg.cost_time_constant_s)
    cost = state.cost_usd * fade + replicas * view.replica_cost_per_hour * dt / 3600
    tokens = state.tokens * fade + tokens_per_s * dt
    return {"cost_usd": cost, "tokens": tokens, "cost_updated": now}


def cost_per_1m(state: ModelState, cfg: DecisionConfig) -> float | None:
    """Measured USD per 1M tokens, or None until enough tokens were served."""
    if state.tokens < cfg.min_tokens_for_cost or state.cost_usd <= 0:
        return None
    return round(state.cost_usd / state.tokens * 1e6, 6)


def decide_pool(
    pool: PoolView,
    views: Mapping[str, ModelView],
    signals: Mapping[str, ModelSignals],
    states: Mapping[str, ModelState],
    *,
    now: float,
    cfg: DecisionConfig | None = None,
) -> tuple[dict[str, Decision], dict[str, ModelState]]:
    """Decide every model of one pool; returns decisions and the states to carry."""
    cfg = cfg or DecisionConfig()
    recs: dict[str, Recommendation] = {}
    new_states: dict[str, ModelState] = {}
    for name, v in views.items():
        recs[name], new_states[name] = recommend(
            v, signals[name], states.get(name, ModelState()), now, cfg
        )
    grants = allocate(pool, views, recs)
    out: dict[str, Decision] = {}
    for name, v in views.items():
        r, st, sig = recs[name], new_states[name], signals[name]
        owned = v.mode == "Tokenyard"
        if owned and not r.metrics_available:
            # Hold: the replicas asked for now are the last decision written; never act
            # on an absence of data.
            g = Grant(replicas=v.current_replicas)
            desired = band_max = v.current_replicas
            reason = r.reason
        elif owned:
            g = grants[name]
            desired, band_max = g.replicas, g.band_max
            reason = r.reason
            if g.capped is not None:
                reason = f"{g.capped}: {g.message}; {r.reason}"
            elif desired < r.desired:
                reason = f"{r.reason}; pool gives {desired}"
        else:
            g = Grant(replicas=v.current_replicas)
            desired = band_max = v.current_replicas
            owner = "kubectl scale" if v.mode == "Manual" else "an HPA or KEDA"
            reason = (
                f"{v.mode}: replicas owned by {owner}, left at {desired}; "
                f"tokenyard would ask {r.desired} ({r.reason})"
            )
        write = owned and r.metrics_available and desired != v.current_replicas
        # What this decision changes in the model's state, written in one copy.
        changes: dict[str, Any] = {}
        if write:
            changes["last_scale_time"] = now
            if desired > v.current_replicas:
                changes["last_scale_up"] = now
        if owned and r.metrics_available:
            changes["last_desired"] = desired
        tokens_per_s = sig.tokens_per_s if sig.available else 0.0
        changes.update(
            cost_changes(
                st,
                now=now,
                replicas=v.current_replicas,
                view=v,
                tokens_per_s=tokens_per_s,
                cfg=cfg,
            )
        )
        st = replace(st, **changes)
        new_states[name] = st
        out[name] = Decision(
            name=name,
            desired=desired,
            reason=reason,
            write=write,
            band_min=desired,
            band_max=max(desired, band_max),
            capped=g.capped,
            capped_message=g.message,
            recommended=r.desired,
            metrics_available=r.metrics_available,
            metrics_detail=sig.detail,
            panic=r.panic,
            cost_per_1m_tokens=cost_per_1m(st, cfg),
        )
    return out, new_states


def summary(decisions: Mapping[str, Decision]) -> dict[str, Any]:
    """A compact view of decisions for logs and the simulator's JSON."""
    return {
        n: {"desired": d.desired, "reason": d.reason, "capped": d.capped}
        for n, d in decisions.items()
    }


__all__ = ["Decision", "cost_changes", "cost_per_1m", "decide_pool", "summary"]
