"""Trace-driven simulator: the real decision code against static and HPA-style baselines.

Per-request traces replay request by request (:mod:`.engine`); rate traces (requests per
second and token means per window, :mod:`.rates`) become requests from a seed, or, for
spans of days, load per time step on the aggregated engine (:mod:`.fluid`, whose
approximation its docstring states).

``tokenyard simulate --trace CSV [--scenario YAML] [--plot PNG] [--json]``
(:func:`~tokenyard.autoscaler.sim.cli.main`) and ``benchmarks/autoscaler_trace.py``
(:func:`~tokenyard.autoscaler.sim.cli.run_cli`) run it. One workload and one serving model
for all policies:

* Requests come from the trace; each gets a difficulty (seeded Beta distribution) and
  goes, as a RoutingPolicy's CheapestSufficient strategy would send it, to the cheapest
  model whose quality covers it.
* Each model's replicas are separate vLLM replicas behind Ray Serve's request router
  (power of two choices on ongoing requests; held while none is ready). A replica admits
  a request when its prompt and output fit its free KV cache (kvCacheTokens), prefills
  its requests one after the other at prefillTokensPerSecond (TTFT is when a request's
  prefill completes), then decodes it at decodeTokensPerSecond while it holds its KV
  cache. A request that waits longer than maxQueueSeconds is dropped (and misses the
  SLO). New replicas serve after coldStartSeconds but cost from the moment they are
  asked for; a replica scaled away finishes its own requests. On per-request traces the
  adaptive policies first replay the opening warmupSeconds, unmeasured.
* GPU utilisation, as DCGM would report it, is the prefill busy fraction plus decode
  activity (busy once ``decodeSaturation`` sequences decode per replica).

Policies: (a) static, the fewest fixed replicas per model that reach the SLO target on
this very trace (an oracle: the cheapest static fleet with every model at the target),
shown beside static-pool, the cheapest fixed fleet whose requests reach the target all
together (the criterion of the pool-wide attainment every policy reports); (b)
HPA-style, per model ``ceil(ready x utilisation / target)`` every 15 s with a 10%
tolerance, scale-up of at most max(100%, 4 replicas) and a 5-minute scale-down
stabilisation window, never below one replica (Kubernetes HPA defaults), on the stated
utilisation targets, and again as hpa-slo, at the highest targets (the stated ones times
one factor) that reach the SLO target pool-wide, so its cost compares at equal
attainment; (c) tokenyard:
:func:`decide_pool` on the simulated signals every ``decisionIntervalSeconds``. Every
policy reports its pool-wide attainment and its worst model's.
"""

from tokenyard.autoscaler.sim.baselines import (
    HPA_SCALE_STEPS,
    fits,
    hpa_scaled,
    hpa_slo_search,
    static_oracle,
    static_pool_oracle,
)
from tokenyard.autoscaler.sim.cli import (
    arrival_spec,
    main,
    requests_from_args,
    run_cli,
    scaled_windows,
    scenario_from_args,
)
from tokenyard.autoscaler.sim.engine import Policy, RunResult, Server, run
from tokenyard.autoscaler.sim.fluid import (
    FluidServer,
    pool_rate,
    route_shares,
    run_fluid,
    simulate_fluid,
    static_fluid,
)
from tokenyard.autoscaler.sim.policies import HPAPolicy, TokenyardPolicy, hold
from tokenyard.autoscaler.sim.rates import (
    ArrivalSpec,
    FluidDemand,
    RateWindow,
    fluid_demand,
    generate_requests,
    read_rate_trace,
    scale_rates,
)
from tokenyard.autoscaler.sim.report import Report, plot, simulate
from tokenyard.autoscaler.sim.scenario import (
    BUILTIN_SCENARIO,
    AcceleratorProfile,
    ModelProfile,
    Scenario,
    builtin_scenario,
    load_scenario,
    price_order,
    route,
)
from tokenyard.autoscaler.sim.trace import TraceRequest, read_requests, read_trace, thin

__all__ = [
    "BUILTIN_SCENARIO",
    "HPA_SCALE_STEPS",
    "AcceleratorProfile",
    "ArrivalSpec",
    "FluidDemand",
    "FluidServer",
    "HPAPolicy",
    "ModelProfile",
    "Policy",
    "RateWindow",
    "Report",
    "RunResult",
    "Scenario",
    "Server",
    "TokenyardPolicy",
    "TraceRequest",
    "arrival_spec",
    "builtin_scenario",
    "fits",
    "fluid_demand",
    "generate_requests",
    "hold",
    "hpa_scaled",
    "hpa_slo_search",
    "load_scenario",
    "main",
    "plot",
    "pool_rate",
    "price_order",
    "read_rate_trace",
    "read_requests",
    "read_trace",
    "requests_from_args",
    "route",
    "route_shares",
    "run",
    "run_cli",
    "run_fluid",
    "scale_rates",
    "scaled_windows",
    "scenario_from_args",
    "simulate",
    "simulate_fluid",
    "static_fluid",
    "static_oracle",
    "static_pool_oracle",
    "thin",
]
