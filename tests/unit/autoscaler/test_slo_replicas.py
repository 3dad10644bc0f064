"""The SLO model's view of separate replicas: how the request router shares their
prefill queues (power of two choices by requests in flight, a work-balancing router, a
router blind to load) and how each replica's KV cache admits requests, checked by hand,
by Monte Carlo of the model's own assumptions, and against the per-request engine."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from typing import Any

import pytest

from tokenyard.api.model import ModelDeployment
from tokenyard.autoscaler import sim
from tokenyard.autoscaler.decide import ModelView
from tokenyard.autoscaler.decide.recommend import _kv_load, slo_replicas
from tokenyard.autoscaler.decide.slo import (
    ReplicaProfile,
    Router,
    Workload,
    _busy_chosen,
    _residual_above,
    kv_blocked,
    predict,
)
from tokenyard.autoscaler.decide.views import DecisionConfig

ECONOMY = sim.builtin_scenario().models[0]  # 8000 prefill, 35 decode tokens/s, 60k KV


def economy(router: Router = "PowerOfTwoChoices") -> ReplicaProfile:
    return ReplicaProfile(
        ECONOMY.prefillTokensPerSecond,
        ECONOMY.decodeTokensPerSecond,
        float(ECONOMY.kvCacheTokens),
        router=router,
    )


def test_no_kv_term_where_the_cache_is_not_modelled() -> None:
    w = Workload(rate=2.0, prompt=6000.0, output=250.0)
    assert kv_blocked(w, ReplicaProfile(8000.0), 3) == 0.0
    assert kv_blocked(w, ReplicaProfile(8000.0, kv_tokens=60e3), 3) == 0.0  # no decode speed
    assert kv_blocked(Workload(0.0, 6000.0, 250.0), economy(), 3) == 0.0


def test_kv_term_rises_with_the_load_and_falls_with_the_choice() -> None:
    def blocked(rate: float, router: Router, n: int = 4) -> float:
        return kv_blocked(Workload(rate, 6000.0, 250.0), economy(router), n)

    rising = [blocked(r, "PowerOfTwoChoices") for r in (0.5, 1.0, 2.0, 3.0)]
    assert rising == sorted(rising) and rising[0] < 1e-3 < rising[-1]
    # Picking the fewer residents of two replicas finds a fuller cache less often than a
    # router blind to load; one replica leaves no choice.
    assert blocked(2.0, "PowerOfTwoChoices") < blocked(2.0, "PrefixCacheAffinity") / 2
    assert blocked(2.0, "LeastQueuedTokens") == blocked(2.0, "PowerOfTwoChoices")
    assert blocked(0.5, "PowerOfTwoChoices", n=1) == blocked(0.5, "PrefixCacheAffinity", n=1)
    # The longer window's load (Workload.kv_load) is the one it reads.
    w = Workload(9.0, 12_000.0, 250.0, kv_load=(2.0, 6000.0, 250.0))
    assert kv_blocked(w, economy(), 4) == blocked(2.0, "PowerOfTwoChoices")


def test_kv_term_by_monte_carlo_of_its_own_assumptions() -> None:
    # The arithmetic (log-normal moments, the residency weighting, the gamma by Wilson
    # and Hilferty) against a direct draw: residents Poisson, the fewer of two replicas,
    # each resident's size drawn with probability proportional to its residency, blocked
    # when they and the arriving request's size exceed the cache.
    rng = random.Random(7)
    prompt, output, scv = 6000.0, 250.0, 1.0
    s = math.sqrt(math.log1p(scv))

    def draw(mean: float) -> float:
        return math.exp(rng.gauss(math.log(mean) - s * s / 2, s))

    pool = [(draw(prompt), draw(output)) for _ in range(50_000)]
    cum = list(itertools.accumulate(p / 8000 + o / 35 for p, o in pool))
    residents = 0.9 / 3 * (prompt / 8000 + output / 35)

    def poisson() -> int:
        k, t = 0, rng.expovariate(1.0)
        while t < residents:
            k, t = k + 1, t + rng.expovariate(1.0)
        return k

    trials, hits = 40_000, 0
    for _ in range(trials):
        k = min(poisson(), poisson())
        held = sum(p + o for p, o in rng.choices(pool, cum_weights=cum, k=k)) if k else 0.0
        p, o = draw(prompt), draw(output)
        hits += k > 0 and held + p + o > 60_000
    model = kv_blocked(Workload(0.9, prompt, output, cs2=scv), economy(), 3)
    assert model == pytest.approx(hits / trials, rel=0.2)


def test_busy_replica_the_router_picks() -> None:
    p2c, blind = economy("PowerOfTwoChoices"), economy("PrefixCacheAffinity")
    # A router blind to load, or one replica: busy with the probability that it is.
    assert _busy_chosen(0.4, 3.0, blind, 4) == 0.4
    assert _busy_chosen(0.4, 3.0, p2c, 1) == 0.4
    # Power of two by requests in flight avoids a busy replica only as far as its count
    # shows it: well when few requests stay (prefill only), hardly when long decodes
    # keep many resident.
    few, many = _busy_chosen(0.4, 0.5, p2c, 4), _busy_chosen(0.4, 50.0, p2c, 4)
    assert few < 0.25 < many < 0.4
    assert _busy_chosen(0.4, 500.0, p2c, 4) == pytest.approx(0.4, abs=0.01)  # normal branch
    assert _busy_chosen(0.4, 10.5, p2c, 4) == pytest.approx(
        _busy_chosen(0.4, 9.5, p2c, 4), abs=0.005
    )
    assert _busy_chosen(1.0, 3.0, p2c, 4) == 1.0


def test_residual_prefill_by_hand() -> None:
    # A fixed prefill time leaves a uniform remainder; a log-normal one a heavier tail.
    assert _residual_above(2.0, 0.0, 0.5) == pytest.approx(0.75)
    assert _residual_above(2.0, 0.0, 3.0) == 0.0
    assert _residual_above(0.857, 1.0, 4.1) == pytest.approx(0.0197, abs=5e-4)
    assert _residual_above(0.857, 1.0, 4.1) > math.exp(-4.1 / 0.857)


def test_separate_replicas_queue_more_than_pooled_ones() -> None:
    w = Workload(rate=1.75, prompt=6000.0, output=250.0)  # 3 replicas at half load
    std = sim.builtin_scenario().models[1]

    def miss(router: Router, n: int) -> float:
        prof = ReplicaProfile(std.prefillTokensPerSecond, std.decodeTokensPerSecond,
                              float(std.kvCacheTokens), router=router)  # fmt: skip
        return predict(w, prof, n, std.autoscaling.ttftSLOSeconds).miss

    assert miss("PowerOfTwoChoices", 3) > 3 * miss("LeastQueuedTokens", 3)
    assert miss("PrefixCacheAffinity", 3) >= miss("PowerOfTwoChoices", 3)
    for router in ("PowerOfTwoChoices", "LeastQueuedTokens", "PrefixCacheAffinity"):
        assert miss(router, 6) < miss(router, 3)  # more replicas never miss more


def _engine_miss(  # noqa: PLR0917
    i: int, n: int, rps: float, prompt: float, output: float, routing: str, kv: int = 0
) -> float:
    sc = sim.builtin_scenario().model_copy(update={"spillover": False})
    models = [
        m.model_copy(update={"replicaRouting": routing, **({"kvCacheTokens": kv} if kv else {})})
        if j == i else m
        for j, m in enumerate(sc.models)
    ]  # fmt: skip
    sc = sc.model_copy(update={"models": models})
    windows = [sim.RateWindow(k * 600.0, 600.0, rps, prompt, output) for k in range(3)]
    routed = [(r, i) for r in sim.generate_requests(windows, sc.seed)]
    res = sim.run(sc, routed, policy_name="static", policy=sim.hold, interval=1e9,
                  initial=[n if j == i else 0 for j in range(3)], only={i})  # fmt: skip
    return 1 - res.slo_attainment


def test_prefill_queues_against_the_per_request_engine() -> None:
    # The standard model (7000 prefill tokens/s, 5 s SLO), 6000-token prompts, three
    # replicas at half load: Serve's default router leaves the replicas' queues apart
    # (the engine misses 3.3%, the pooled queue says 0.6%), tokenyard's
    # LeastQueuedTokens pools them (0.7%). Each router's model is within a factor 1.5.
    std = sim.builtin_scenario().models[1]
    rps = 0.5 * 3 * std.prefillTokensPerSecond / 6000
    for routing in ("PowerOfTwoChoices", "LeastQueuedTokens"):
        prof = ReplicaProfile(std.prefillTokensPerSecond, std.decodeTokensPerSecond,
                              float(std.kvCacheTokens), router=routing)  # type: ignore[arg-type]  # fmt: skip
        model = predict(Workload(rps, 6000.0, 250.0), prof, 3, 5.0).miss
        engine = _engine_miss(1, 3, rps, 6000.0, 250.0, routing)
        assert engine / 1.5 <= model <= engine * 1.5, (routing, model, engine)


@pytest.mark.parametrize(("n", "load"), [(3, 0.3), (6, 0.3), (6, 0.45)])
def test_kv_term_against_the_per_request_engine(n: int, load: float) -> None:
    # The economy model's 60k-token cache with 6000-token prompts and 250-token outputs
    # (7 s of decode): the misses the engine's KV limit adds (the same load with an
    # unlimited cache taken away) are the model's blocked share within a factor 1.5.
    mu = economy().tokens_per_s(6000.0, 250.0) / 6000.0
    rps = load * n * mu
    added = _engine_miss(0, n, rps, 6000.0, 250.0, "PowerOfTwoChoices") - _engine_miss(
        0, n, rps, 6000.0, 250.0, "PowerOfTwoChoices", kv=10**9
    )
    model = kv_blocked(Workload(rps, 6000.0, 250.0), economy(), n)
    assert added / 1.5 <= model <= added * 1.5, (model, added)


def test_kv_load_is_the_delay_window_s() -> None:
    cfg = DecisionConfig()
    minutes = (
        (0.0, 5.0, 9000.0, 100.0, 2.0, 500.0),  # older than the scale-down delay
        (200.0, 1.0, 4000.0, 60.0, 2.0, 200.0),
        (260.0, 2.0, 8000.0, 20.0, 2.0, 300.0),
    )
    w = Workload(3.0, 6000.0, 400.0)
    rate, prompt, output = _kv_load(minutes, 320.0, w, 20.0, cfg)
    assert rate == pytest.approx((1.0 + 2.0 + 3.0) / 3)
    assert prompt == pytest.approx((60 * 4000 + 20 * 8000 + 20 * 6000) / 100)
    assert output == pytest.approx((60 * 200 + 20 * 300 + 20 * 400) / 100)


@pytest.mark.parametrize(
    ("in_cluster", "router"),
    [
        ({}, "PrefixCacheAffinity"),  # Auto, with vLLM's prefix caching on by default
        ({"engine": {"enablePrefixCaching": False}}, "PowerOfTwoChoices"),
        ({"replicaRouting": "LeastQueuedTokens"}, "LeastQueuedTokens"),
        ({"replicaRouting": "PowerOfTwoChoices", "engine": {"enablePrefixCaching": True}},
         "PowerOfTwoChoices"),
    ],
)  # fmt: skip
def test_the_view_reads_the_resolved_replica_routing(in_cluster: dict, router: str) -> None:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "tokenyard.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {
                "pool": "p",
                "inCluster": {"source": "hf://org/m", "accelerator": "l4", **in_cluster},
            },
        }
    )
    assert ModelView.from_resources(md, None).replica_router == router


def _view(m: sim.ModelProfile, **kw: Any) -> ModelView:
    """The simulator profile's model as the autoscaler views it."""
    return ModelView(
        name=m.name,
        max_replicas=m.autoscaling.maxReplicas,
        ttft_slo_s=m.autoscaling.ttftSLOSeconds,
        nominal_tokens_per_s=m.prefillTokensPerSecond,
        decode_tokens_per_s=m.decodeTokensPerSecond,
        **kw,
    )


def test_the_kv_term_in_sizing_is_the_config_s_choice() -> None:
    # The economy model's cache, 1.5 req/s of 6000-token prompts: counting blocked
    # requests asks for more replicas; off (the default), the KV cache bounds only the
    # throughput (Little's law) and the measured use guards.
    view = _view(ECONOMY, kv_cache_tokens=float(ECONOMY.kvCacheTokens))
    w = Workload(rate=1.5, prompt=6000.0, output=250.0)
    off = slo_replicas(view, w, DecisionConfig())
    on = slo_replicas(view, w, DecisionConfig(kv_admission=True))
    assert DecisionConfig().kv_admission is False
    assert on > off


def test_separate_queues_in_sizing_are_the_config_s_choice() -> None:
    # The standard model, 6000-token prompts at 2.4 req/s behind Serve's default router:
    # one replica's queue each asks for more replicas than the pooled queue (the
    # default, which LeastQueuedTokens realises).
    view = _view(sim.builtin_scenario().models[1], replica_router="PowerOfTwoChoices")
    w = Workload(rate=2.4, prompt=6000.0, output=250.0)
    pooled = slo_replicas(view, w, DecisionConfig())
    apart = slo_replicas(view, w, DecisionConfig(replica_queues=True))
    assert DecisionConfig().replica_queues is False
    assert apart > pooled
    lqt = replace(view, replica_router="LeastQueuedTokens")
    assert slo_replicas(lqt, w, DecisionConfig(replica_queues=True)) == pooled
