"""Pure scaling decisions: per model replicas from its signals, then a per-pool allocation.

Called by the loop (:mod:`tokenyard.autoscaler.loop`) and by the simulator with the same
arguments: the pool and its models as views, the signals, the state carried from the last
decision, and ``now``. Nothing here reads a clock, Prometheus or the Kubernetes API.

Per model (:func:`recommend`): the fewest replicas that a queueing model of prefill
(:mod:`~tokenyard.autoscaler.decide.slo`: G/G/c, Allen-Cunneen with Kingman's tail)
predicts meet the model's TTFT SLO, with margin, for the arrival rate and token means
measured over a stable window (60 s) and, for bursts, a panic window (6 s); with
hysteresis (up to, and down only to, what meets the SLO at 10% more load). A rate
forecast (:mod:`~tokenyard.autoscaler.decide.forecast`), where one is kept, is sized for
one cold start ahead. KV-cache use, GPU use (with a queue the SLO cannot absorb) and TTFT
over its SLO are guards that ask for at least some replicas; the largest ask wins. Panic
mode when the panic window's count reaches 1.5x the ready replicas, during which the
model never scales down. Scaling down waits for a cool-down after the last scale-up,
takes the largest recommendation of the last ``scale_down_delay_s`` and removes at most
half of the replicas at once; replicas still starting are not stacked on. Keep-warm
holds what the last burst needed for as long as ``keep_warm_usd`` pays for a replica
(cheap replicas longer), and a replica whose cold start exceeds the stable window is not
added while the ready ones clear all in flight before it could serve. A model with
``minReplicas: 0`` and ``scaleToZeroAfterSeconds`` goes to zero after that long without
requests, and back to one as soon as a request waits.

Per pool (:func:`allocate`): every model first gets its minimum (never undercut), then
replicas are handed out one at a time, highest priority first, then by value per dollar
(tokens per GPU-hour per USD) weighted by SLO pressure and by how much of its ask a model
still lacks, while each accelerator class stays within maxGPUs and the pool within its
hourly budget. A model that gets less than it asked is Capped (GPUCapped/BudgetCapped).

The per-model rules are in :mod:`~tokenyard.autoscaler.decide.recommend`, the pool's
allocation in :mod:`~tokenyard.autoscaler.decide.allocate`, :func:`decide_pool` in
:mod:`~tokenyard.autoscaler.decide.pool` and the shapes they share in
:mod:`~tokenyard.autoscaler.decide.views`; this package re-exports them.
"""

from tokenyard.autoscaler.decide.allocate import Grant, allocate
from tokenyard.autoscaler.decide.pool import (
    Decision,
    cost_changes,
    cost_per_1m,
    decide_pool,
    summary,
)
from tokenyard.autoscaler.decide.recommend import recommend, slo_replicas
from tokenyard.autoscaler.decide.views import (
    ClassLimit,
    DecisionConfig,
    Mode,
    ModelState,
    ModelView,
    PoolView,
    Recommendation,
    autoscaling_fields,
)

__all__ = [
    "ClassLimit",
    "Decision",
    "DecisionConfig",
    "Grant",
    "Mode",
    "ModelState",
    "ModelView",
    "PoolView",
    "Recommendation",
    "allocate",
    "autoscaling_fields",
    "cost_changes",
    "cost_per_1m",
    "decide_pool",
    "recommend",
    "slo_replicas",
    "summary",
]
