"""The per-request simulator's serving model: separate vLLM replicas behind Ray Serve's
request router, each prefilling at one replica's rate."""

from __future__ import annotations

import math

import pytest

from tokenyard.autoscaler import sim
from tokenyard.autoscaler.sim.engine import Server
from tokenyard.autoscaler.sim.fluid import erlang_c
from tokenyard.autoscaler.sim.trace import TraceRequest


def _slow_economy() -> sim.Scenario:
    # Economy alone, 1,000 prompt tokens/s per replica, 5 s SLO, no spill-over.
    s = sim.builtin_scenario().model_copy(update={"spillover": False})
    m = s.models[0].model_copy(update={"prefillTokensPerSecond": 1000.0})
    return s.model_copy(update={"models": [m, *s.models[1:]]})


def _ttfts(server: Server, arrivals: list[tuple[float, int]], until: float) -> list[float]:
    now, k, dt = 0.0, 0, 0.5
    while now < until:
        while k < len(arrivals) and arrivals[k][0] <= now:
            server.route((arrivals[k][0], arrivals[k][1], 10), now)
            k += 1
        server.step(now, dt)
        now += dt
    return [v for _, v in server.ttfts]


def test_a_long_prompt_prefills_on_one_replica() -> None:
    # 6,000 prompt tokens at 1,000 tokens/s: 6 s on the replica that serves it, however
    # many replicas the model has (pooling two replicas' prefill would give 3 s and meet
    # the 5 s SLO).
    s = _slow_economy()
    routed = [(TraceRequest(1.0, 6000, 10), 0)]
    res = sim.run(s, routed, policy_name="static", policy=sim.hold, interval=1e9,
                  initial=[2, 0, 0], only={0})  # fmt: skip
    assert res.requests == 1
    assert res.slo_met == 0
    server = Server(s.models[0], 0.8)
    server.scale(2, 0.0, warm=True)
    (ttft,) = _ttfts(server, [(0.0, 6000)], until=20.0)
    assert ttft == pytest.approx(6.0, abs=0.5)


def test_the_router_spreads_requests_and_each_replica_queues_its_own() -> None:
    s = _slow_economy()
    # Two replicas, two long prompts at once: power of two choices sends the second to
    # the idle replica, so both finish their prefill after 6 s.
    two = Server(s.models[0], 0.8)
    two.scale(2, 0.0, warm=True)
    assert sorted(_ttfts(two, [(0.0, 6000), (0.0, 6000)], until=30.0)) == pytest.approx(
        [6.0, 6.0], abs=0.5
    )
    # One replica: the second waits behind the first (FIFO), 12 s.
    one = Server(s.models[0], 0.8)
    one.scale(1, 0.0, warm=True)
    assert sorted(_ttfts(one, [(0.0, 6000), (0.0, 6000)], until=30.0)) == pytest.approx(
        [6.0, 12.0], abs=0.5
    )


def test_no_ready_replica_holds_requests_until_one_starts() -> None:
    s = _slow_economy()
    server = Server(s.models[0], 0.8)
    server.scale(1, 0.0)  # cold: ready after the model's 30 s cold start
    (ttft,) = _ttfts(server, [(0.0, 1000)], until=60.0)
    assert ttft == pytest.approx(31.0, abs=0.6)
    assert server.dropped == 0


def test_a_scaled_away_replica_finishes_its_requests() -> None:
    s = _slow_economy()
    server = Server(s.models[0], 0.8)
    server.scale(2, 0.0, warm=True)
    arrivals = [(0.0, 6000), (0.0, 6000)]
    for t, prompt in arrivals:
        server.route((t, prompt, 10), 0.0)
    server.step(0.0, 0.5)
    server.scale(1, 0.5)
    assert server.asked == 1
    assert len(server.draining) == 1
    now = 0.5
    while now < 30.0:
        server.step(now, 0.5)
        now += 0.5
    assert sorted(v for _, v in server.ttfts) == pytest.approx([6.0, 6.0], abs=0.5)
    assert not server.draining


def test_erlang_c_by_hand() -> None:
    # One server: an arrival waits with the probability the server is busy, rho.
    assert erlang_c(1, 0.8) == pytest.approx(0.8)
    # Two servers at offered load a, by hand:
    # B = (a^2 / 2) / (1 + a + a^2 / 2), C = B / (1 - rho (1 - B)), rho = a / 2.
    a = 1.5
    b = (a**2 / 2) / (1 + a + a**2 / 2)
    assert erlang_c(2, a) == pytest.approx(b / (1 - a / 2 * (1 - b)))
    assert erlang_c(3, 3.0) == 1.0


def test_both_engines_queue_within_a_step_near_saturation() -> None:
    # One economy replica (8,000 prompt tokens/s, KV cache out of the way) at 90% load of
    # 1,000-token prompts (CV 1), 5 s SLO: an M/G/1 queue misses about
    # 0.9 exp(-(5 - 0.125) x 0.8) = 1.8%. The fluid engine, whose 10 s steps smooth the
    # load, must still see that queueing (it used to see none), and agree with the
    # per-request engine within a factor of three.
    s = sim.builtin_scenario().model_copy(update={"spillover": False})
    m = s.models[0].model_copy(update={"kvCacheTokens": 10**9})
    s = s.model_copy(update={"models": [m, *s.models[1:]]})
    windows = [sim.RateWindow(k * 600.0, 600.0, 7.2, 1000.0, 150.0) for k in range(3)]
    routed = [(r, 0) for r in sim.generate_requests(windows, seed=0)]
    exact = sim.run(s, routed, policy_name="static", policy=sim.hold, interval=1e9,
                    initial=[1, 0, 0], only={0})  # fmt: skip
    demand = sim.fluid_demand(windows, [1.0, 0.0, 0.0], step_s=10.0, seed=0)
    fluid = sim.run_fluid(s, demand, policy_name="static", policy=sim.hold, interval=1e9,
                          initial=[1, 0, 0], only={0})  # fmt: skip
    miss_exact, miss_fluid = 1 - exact.slo_attainment, 1 - fluid.slo_attainment
    assert 0.005 < miss_exact < 0.06
    assert 0.005 < miss_fluid < 0.06
    assert miss_exact / 3 < miss_fluid < miss_exact * 3


def test_a_warm_up_replay_starts_adaptive_policies_on_their_own_fleet() -> None:
    # A steady load that needs several economy replicas from the first second: replayed
    # from minReplicas, tokenyard misses while it scales up; after a warm-up replay of the
    # opening 10 minutes it starts the measured trace on its own fleet. Requests and cost
    # count from the trace's start either way.
    s = sim.builtin_scenario().model_copy(update={"spillover": False})
    windows = [sim.RateWindow(0.0, 900.0, 30.0, 1000.0, 100.0)]
    routed = [(r, 0) for r in sim.generate_requests(windows, seed=0)]

    def replay(warmup: float, policy: sim.Policy, initial: list[int]) -> sim.RunResult:
        return sim.run(s, routed, policy_name="p", policy=policy, interval=5.0,
                       initial=initial, only={0}, warmup_s=warmup)  # fmt: skip

    cold = replay(0.0, sim.TokenyardPolicy(s), [1, 0, 0])
    warm = replay(600.0, sim.TokenyardPolicy(s), [1, 0, 0])
    assert cold.requests == warm.requests == len(routed)
    assert warm.slo_attainment > cold.slo_attainment
    assert warm.series["replicas:economy-8b"][0] > 1
    # A fixed fleet costs the same with or without the warm-up.
    fixed = [replay(w, sim.hold, [5, 0, 0]) for w in (0.0, 600.0)]
    assert fixed[0].cost_usd == pytest.approx(fixed[1].cost_usd, rel=1e-6)
    assert fixed[0].slo_met == pytest.approx(fixed[1].slo_met, rel=0.02)


def test_the_fluid_tail_factor_never_overflows() -> None:
    from tokenyard.autoscaler.sim.fluid import _exp_neg

    # A backlog far beyond the slack (the static oracle tries fleets far too small).
    assert _exp_neg(-5000.0) == _exp_neg(-700.0) > 1e300
    assert _exp_neg(5000.0) == 0.0 and _exp_neg(0.0) == 1.0


def test_least_queued_tokens_keeps_short_prompts_off_the_replica_prefilling_a_long_one() -> None:
    s = _slow_economy()
    # One 6,000-token prompt (6 s of prefill), then six short ones 0.5 s apart.
    arrivals = [(0.0, 6000)] + [(0.5 + 0.5 * i, 100) for i in range(6)]
    # Serve's default compares requests in flight: short prompts land behind the long one.
    p2c = Server(s.models[0], 0.8, seed=3)
    p2c.scale(2, 0.0, warm=True)
    assert max(sorted(_ttfts(p2c, arrivals, until=30.0))[:-1]) > 1.0
    # By queued prompt tokens every short prompt prefills at once on the other replica.
    m = s.models[0].model_copy(update={"replicaRouting": "LeastQueuedTokens"})
    lqt = Server(m, 0.8, seed=3)
    lqt.scale(2, 0.0, warm=True)
    ttfts = sorted(_ttfts(lqt, arrivals, until=30.0))
    assert ttfts[-1] == pytest.approx(6.0, abs=0.5)
    assert ttfts[:-1] == pytest.approx([0.1] * 6, abs=0.5)


def test_the_fluid_ttft_p95_is_the_window_percentile() -> None:
    from tokenyard.autoscaler.sim.fluid import FluidServer

    s = sim.builtin_scenario()
    srv = FluidServer(s.models[0], 0.8)
    assert srv.ttft_p95() is None
    # No queue: every request's TTFT is its own prefill.
    srv.steps.append((10.0, 50.0, 0.0, -100.0, 8000.0, 0.125, 0.0, math.inf))
    assert srv.ttft_p95() == pytest.approx(0.125)
    # A step whose backlog wait rises evenly from 0 to 10 s: its TTFTs are uniform on
    # [0.125, 10.125]. Alone, its 95th percentile is 9.625 s; beside 950 requests with no
    # wait, 50 of 1,000 requests are late at 0.125 s and the percentile is the own prefill.
    srv.steps.clear()
    srv.steps.append((10.0, 50.0, 0.0, 80_000.0, 8000.0, 0.125, 0.0, math.inf))
    assert srv.ttft_p95() == pytest.approx(9.625, abs=0.1)
    srv.steps.append((20.0, 950.0, 0.0, -100.0, 8000.0, 0.125, 0.0, math.inf))
    assert srv.ttft_p95() == pytest.approx(0.125, abs=0.02)


def test_the_fluid_engine_counts_requests_as_vllm_does() -> None:
    # vLLM counts a request when it finishes and its prompt tokens when they are
    # prefilled; the decisions recover the requests started in a window as the finished
    # ones plus the growth of those running (flow conservation). The fluid engine's
    # counters keep that identity, so a drop in the load reads as the batches emptying
    # (the finished count lags the started one) and not as fewer, longer prompts.
    from tokenyard.autoscaler.sim.fluid import FluidServer

    s = sim.builtin_scenario()
    srv = FluidServer(s.models[0], 0.8)
    srv.scale(8, 0.0, warm=True)
    prompt, dt = 1000.0, 5.0
    running = None
    for k in range(40):
        n = 50.0 * dt if k < 20 else 2.0 * dt  # 50 req/s, then 2 req/s
        srv.reset_interval()
        srv.fluid_step(k * dt, dt, int(n), n * prompt, 150.0)
        sig = srv.signals(k * dt + dt)
        started = sig.request_rate * dt + (
            sig.running - (running if running is not None else sig.running)
        )
        assert started == pytest.approx(n, rel=1e-6), k  # nothing queues on 8 replicas
        assert sig.prompt_tokens_per_s * dt / started == pytest.approx(prompt, rel=1e-6)
        if k == 20:  # the drop: the batches empty, requests still finish
            assert sig.request_rate > 2.0 * 3 and sig.running < running
        running = sig.running
    assert running == pytest.approx(2.0 * (150.0 / s.models[0].decodeTokensPerSecond), rel=0.2)


def test_both_engines_report_their_late_first_tokens_as_vllms_histogram_would() -> None:
    # The decisions read how many first tokens came and how many came later than the
    # SLO (DecisionConfig.budget_feedback); the engines report the same counts they
    # score. Per-request: two 3,000-token prompts on one replica at 1,000 tokens/s come
    # at 3 s (within the 5 s SLO) and 6 s (late).
    one = Server(_slow_economy().models[0], 0.8)
    one.scale(1, 0.0, warm=True)
    one.reset_interval()
    _ttfts(one, [(0.0, 3000), (0.0, 3000)], until=10.0)
    sig = one.signals(10.0)
    assert sig.first_tokens_per_s is not None and sig.late_first_tokens_per_s is not None
    assert sig.first_tokens_per_s * 10.0 == pytest.approx(2.0)
    assert sig.late_first_tokens_per_s * 10.0 == pytest.approx(1.0)
    # Fluid: an overloaded replica's late share is the share the engine scores as missed.
    from tokenyard.autoscaler.sim.fluid import FluidServer

    srv = FluidServer(sim.builtin_scenario().models[0], 0.8)
    srv.scale(1, 0.0, warm=True)
    first = late = 0.0
    for k in range(24):
        srv.reset_interval()
        srv.fluid_step(k * 5.0, 5.0, 60, 60 * 1000.0, 150.0)  # 12 req/s on 8 req/s
        s = srv.signals(k * 5.0 + 5.0)
        assert s.first_tokens_per_s is not None and s.late_first_tokens_per_s is not None
        first += s.first_tokens_per_s * 5.0
        late += s.late_first_tokens_per_s * 5.0
    assert first == pytest.approx(srv.requests_f)
    assert late == pytest.approx(srv.requests_f - srv.met_f)
    assert 0 < late < first
