"""Simulator smoke tests on short slices: structure and invariants, not tuned numbers."""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenyard.autoscaler import sim
from tokenyard.autoscaler.sim.trace import TraceRequest


def _trace(seconds: int = 600, seed: int = 1) -> list[TraceRequest]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while t < seconds:
        burst = 60 < t % 240 < 120  # a burst every four minutes
        t += rng.expovariate(8.0 if burst else 0.5)
        out.append(TraceRequest(t, rng.randint(200, 4000), rng.randint(5, 200)))
    return out


@pytest.fixture
def small_pool() -> sim.Scenario:
    s = sim.builtin_scenario()
    # Tight GPU limits so the invariant is exercised.
    accels = [a.model_copy(update={"maxGPUs": 3}) for a in s.accelerators]
    accels[2] = accels[2].model_copy(update={"maxGPUs": 4})
    return s.model_copy(update={"accelerators": accels})


def test_report_structure_and_gpu_limits(small_pool: sim.Scenario) -> None:
    trace = _trace()
    report = sim.simulate(small_pool, trace)
    assert [r.policy for r in report.results] == [
        "static",
        "static-pool",
        "hpa",
        "hpa-slo",
        "tokenyard",
    ]
    limits = {a.name: a.maxGPUs for a in small_pool.accelerators}
    ty = report.by("tokenyard")
    for i in range(len(ty.series["t"])):
        used: dict[str, float] = {}
        for m in small_pool.models:
            used[m.accelerator] = used.get(m.accelerator, 0) + (
                ty.series[f"replicas:{m.name}"][i] * m.gpusPerReplica
            )
        assert all(used[c] <= limits[c] for c in used), (i, used)
    for r in report.results:
        assert r.requests == len(trace)
        assert 0 <= r.slo_attainment <= 1
        assert r.cost_usd > 0 and r.gpu_hours > 0
        assert sum(m["requests"] for m in r.models.values()) == len(trace)
        for m in small_pool.models:
            assert min(r.series[f"replicas:{m.name}"]) >= 0
            assert max(r.series[f"replicas:{m.name}"]) <= m.autoscaling.maxReplicas
    assert report.by("static").scale_events == 0
    assert set(report.ratios()) == {
        "tokenyard/static",
        "tokenyard/static-pool",
        "tokenyard/hpa",
        "tokenyard/hpa-slo",
    }


def test_static_oracle_meets_the_target(small_pool: sim.Scenario) -> None:
    report = sim.simulate(small_pool, _trace())
    static = report.by("static")
    for m, n in zip(small_pool.models, report.static_replicas, strict=True):
        stats = static.models[m.name]
        assert stats["sloAttainment"] >= small_pool.sloTarget or n == m.autoscaling.maxReplicas


def test_static_pool_oracle_meets_the_target_pool_wide(small_pool: sim.Scenario) -> None:
    report = sim.simulate(small_pool, _trace())
    per_model, pool_wide = report.by("static"), report.by("static-pool")
    assert pool_wide.slo_attainment >= small_pool.sloTarget
    # A weaker criterion: never a dearer fleet, never a better worst model.
    assert pool_wide.cost_usd <= per_model.cost_usd + 1e-9
    assert pool_wide.min_model_slo <= per_model.min_model_slo + 1e-9


def test_routing_sends_hard_requests_to_better_models() -> None:
    s = sim.builtin_scenario()
    routed = sim.route(s, _trace(300))
    counts = [sum(1 for _, i in routed if i == j) for j in range(3)]
    assert all(c > 0 for c in counts)
    # Same seed, same split: all three policies see one workload.
    assert routed == sim.route(s, _trace(300))


def test_cost_equals_replica_seconds_times_price() -> None:
    s = sim.builtin_scenario()
    routed = sim.route(s, _trace(120))
    res = sim.run(s, routed, policy_name="static", policy=sim.hold, interval=1e9,
                  initial=[2, 1, 1])  # fmt: skip
    price = {a.name: a.hourlyCostPerGPU for a in s.accelerators}
    per_hour = sum(n * m.gpusPerReplica * price[m.accelerator]
                   for n, m in zip([2, 1, 1], s.models, strict=True))  # fmt: skip
    horizon = res.series["t"][-1]
    assert res.cost_usd == pytest.approx(per_hour * horizon / 3600, rel=0.02)


def test_cli_main_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "t.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"{int(r.t * 1e7)},{r.prompt},{r.output}" for r in _trace(300)]
    csv.write_text("\n".join(rows) + "\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(sim.BUILTIN_SCENARIO))  # JSON is YAML
    png = tmp_path / "p.png"
    args = argparse.Namespace(trace=str(csv), scenario=str(scenario), plot=str(png), json=True)
    assert sim.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["policy"] for r in out["results"]} == {
        "static",
        "static-pool",
        "hpa",
        "hpa-slo",
        "tokenyard",
    }
    assert set(out["hpaSLOTargets"]) == {m["name"] for m in sim.BUILTIN_SCENARIO["models"]}
    # The worst model never beats the weighted mean of all models.
    assert all(r["minModelSLOAttainment"] <= r["sloAttainment"] + 1e-9 for r in out["results"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spillover_moves_overflow_to_better_models_only() -> None:
    on = sim.builtin_scenario()
    off = on.model_copy(update={"spillover": False})
    routed = sim.route(on, _trace(600))
    fleet = [1, 1, 1]
    res = {
        name: sim.run(s, routed, policy_name="static", policy=sim.hold, interval=1e9, initial=fleet)
        for name, s in (("on", on), ("off", off))
    }
    moved = {m: v["spilledIn"] for m, v in res["on"].models.items()}
    # The cheapest model is nobody's better model; overflow reached the better ones.
    assert moved["economy-8b"] == 0
    assert moved["standard-32b"] + moved["frontier-70b"] > 0
    assert all(v["spilledIn"] == 0 for v in res["off"].models.values())
    # The same fleet costs the same; spare capacity elsewhere only helps the bursts.
    assert res["on"].cost_usd == pytest.approx(res["off"].cost_usd)
    assert res["on"].slo_attainment > res["off"].slo_attainment
    assert res["on"].requests == res["off"].requests == len(routed)


def test_static_oracles_with_spillover_are_never_dearer(small_pool: sim.Scenario) -> None:
    trace = _trace()
    with_spill = sim.simulate(small_pool, trace)
    without = sim.simulate(small_pool.model_copy(update={"spillover": False}), trace)
    for name in ("static", "static-pool"):
        assert with_spill.by(name).cost_usd <= without.by(name).cost_usd + 1e-9
    assert with_spill.by("static").min_model_slo >= small_pool.sloTarget or any(
        n == m.autoscaling.maxReplicas
        for n, m in zip(with_spill.static_replicas, small_pool.models, strict=True)
    )


def test_hpa_slo_search_takes_the_highest_target_that_reaches_the_slo() -> None:
    s = sim.builtin_scenario()
    routed = sim.route(s, _trace(600))
    factor, res = sim.hpa_slo_search(s, routed, [1, 1, 1])
    assert res.policy == "hpa-slo"
    assert res.slo_attainment >= s.sloTarget
    # Every higher target on the grid misses the SLO target: this is the first that holds.
    for higher in sim.HPA_SCALE_STEPS:
        if higher <= factor:
            break
        scaled = sim.hpa_scaled(s, higher)
        miss = sim.run(scaled, routed, policy_name="hpa", policy=sim.HPAPolicy(scaled),
                       interval=s.hpaSyncSeconds, initial=[1, 1, 1])  # fmt: skip
        assert miss.slo_attainment < s.sloTarget
    # Lower targets: never a cheaper fleet than the stated ones (more replicas per load).
    stated = sim.run(s, routed, policy_name="hpa", policy=sim.HPAPolicy(s),
                     interval=s.hpaSyncSeconds, initial=[1, 1, 1])  # fmt: skip
    assert res.cost_usd >= stated.cost_usd - 1e-9


def test_hpa_slo_search_falls_back_to_the_best_attainment() -> None:
    s = sim.builtin_scenario().model_copy(update={"sloTarget": 1.0, "maxQueueSeconds": 0.5})
    # A flood no fleet within maxReplicas serves at 100%: the best grid point is kept.
    trace = [TraceRequest(0.01 * i, 20000, 10) for i in range(400)]
    factor, res = sim.hpa_slo_search(s, sim.route(s, trace), [1, 1, 1])
    assert factor in sim.HPA_SCALE_STEPS
    assert res.slo_attainment < 1.0
    routed = sim.route(s, trace)
    others = [
        sim.run(sim.hpa_scaled(s, f), routed, policy_name="hpa",
                policy=sim.HPAPolicy(sim.hpa_scaled(s, f)), interval=s.hpaSyncSeconds,
                initial=[1, 1, 1]).slo_attainment
        for f in sim.HPA_SCALE_STEPS
    ]  # fmt: skip
    assert res.slo_attainment == max(others)


def test_benchmark_prints_the_bar_and_seed_means(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench: Any = _bench("autoscaler_trace")
    csv = tmp_path / "t.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"{int(r.t * 1e7)},{r.prompt},{r.output}" for r in _trace(300)]
    csv.write_text("\n".join(rows) + "\n")
    assert bench.main(["--trace", str(csv), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "the issue's bar on this run:" in out
    assert "tokenyard / hpa-slo = " in out and "tokenyard / static = " in out
    superseded = out.split("the earlier issue's bar")[1].split("mean over routing seeds")[0]
    assert "for reference, not judged" in superseded and "NOT met" not in superseded
    for policy in ("static", "static-pool", "hpa", "hpa-slo", "tokenyard"):
        assert f"\n{policy} " in out.split("mean over routing seeds 0-1:")[1]
    assert bench.main(["--trace", str(tmp_path / "missing.csv")]) == 1


def test_benchmark_floor_is_the_minimum_fleet_held_over_the_trace() -> None:
    bench: Any = _bench("autoscaler_trace")
    s = sim.builtin_scenario()
    trace = _trace(300)
    report = sim.simulate(s, trace)
    mins = [m.autoscaling.minReplicas for m in s.models]
    held = sim.run(s, sim.route(s, trace), policy_name="floor", policy=sim.hold,
                   interval=1e9, initial=mins)  # fmt: skip
    assert bench.floor_cost(report) == pytest.approx(held.cost_usd, rel=1e-6)
    assert "floor: minReplicas alone cost" in bench.bar(report)


def _capped(scenario: sim.Scenario, **limits: int) -> sim.Scenario:
    accels = [a.model_copy(update={"maxGPUs": limits.get(a.name, a.maxGPUs)})
              for a in scenario.accelerators]  # fmt: skip
    return scenario.model_copy(update={"accelerators": accels})


def test_baselines_stay_within_the_pool_s_gpus() -> None:
    s = _capped(sim.builtin_scenario(), l4=2, a100=1, h100=2)
    report = sim.simulate(s, _trace())
    assert sim.fits(s, report.static_replicas) and sim.fits(s, report.static_pool_replicas)
    for r in report.results:
        for k in range(len(r.series["t"])):
            fleet = [int(r.series[f"replicas:{m.name}"][k]) for m in s.models]
            assert sim.fits(s, fleet), (r.policy, k, fleet)
    assert not sim.fits(s, [3, 1, 1]) and not sim.fits(s, [1, 1, 2])


def test_capacity_downgrade_moves_a_capped_model_s_overflow_to_a_weaker_one() -> None:
    s = _capped(sim.builtin_scenario(), a100=1, h100=2)
    rng = random.Random(3)
    heavy, t = [], 0.0
    while t < 600:  # bursts of 10 requests/s of long prompts: standard's one A100 saturates
        t += rng.expovariate(10.0 if 60 < t % 240 < 120 else 0.5)
        heavy.append(TraceRequest(t, rng.randint(1000, 6000), rng.randint(5, 200)))
    routed = sim.route(s, heavy)

    def tokenyard(scenario: sim.Scenario) -> sim.RunResult:
        return sim.run(scenario, routed, policy_name="tokenyard",
                       policy=sim.TokenyardPolicy(scenario), interval=5.0,
                       initial=[1, 1, 1])  # fmt: skip

    off, on = tokenyard(s), tokenyard(s.model_copy(update={"downgradeWhenCapped": True}))
    assert all(m["downgradedIn"] == 0 for m in off.models.values())
    moved = {n: m["downgradedIn"] for n, m in on.models.items()}
    # Only weaker models take a downgrade: never the frontier, the strongest.
    assert moved["frontier-70b"] == 0 and moved["economy-8b"] > 0
    assert on.requests == off.requests == len(routed)
    assert on.slo_attainment > off.slo_attainment


def test_command_line_overrides(tmp_path: Path) -> None:
    from tokenyard.cli import build_parser

    args = build_parser().parse_args(
        ["simulate", "--trace", "t.csv", "--max-gpus", "a100=2, h100=4", "--downgrade",
         "--no-spillover", "--seed", "7"]
    )  # fmt: skip
    s = sim.scenario_from_args(args)
    assert {a.name: a.maxGPUs for a in s.accelerators} == {"l4": 16, "a100": 2, "h100": 4}
    assert (s.downgradeWhenCapped, s.spillover, s.seed) == (True, False, 7)
    for bad in ("a100", "a100=x", "tpu=4"):
        args.max_gpus = bad
        with pytest.raises(ValueError, match="--max-gpus"):
            sim.scenario_from_args(args)
    args.trace = str(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,1\n")
    assert sim.main(args) == 1  # the wrong option is reported, not raised


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [valid\n", r"s\.yaml: not YAML \(.* at line 2, column 1\)"),
        ("- a\n- b\n", "expected a mapping of scenario fields .*got list"),
        ("", "got an empty file"),
        (
            "sloTarget: 2\naccelerators: []\nmodels: []\n",
            r"s\.yaml: models: List should have at least 1 item.*; "
            r"sloTarget: Input should be less than or equal to 1$",
        ),
        (
            "accelerators: []\nmodels: [{name: a, gpus: -1}]\n",
            "models.0.gpus: Extra inputs are not permitted",
        ),
    ],
)
def test_a_bad_scenario_file_is_named_with_its_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    from tokenyard.cli import build_parser

    (tmp_path / "s.yaml").write_text(text)
    (tmp_path / "t.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,1\n")
    args = build_parser().parse_args(
        ["simulate", "--trace", str(tmp_path / "t.csv"), "--scenario", str(tmp_path / "s.yaml")]
    )
    with pytest.raises(ValueError, match=message):
        sim.load_scenario(args.scenario)
    assert sim.run_cli(args) is None  # said on stderr, not raised
    assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])


def test_files_that_cannot_be_read_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenyard.cli import build_parser

    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match=r"nope\.yaml: No such file"):
        sim.load_scenario(str(missing))
    for trace in (tmp_path / "nope.csv", tmp_path):  # missing, and a directory
        args = build_parser().parse_args(["simulate", "--trace", str(trace)])
        assert sim.run_cli(args) is None
        assert f"simulate: {trace}: " in capsys.readouterr().err
    # A plot that could not be written is said before the run, not after it.
    (tmp_path / "t.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,1\n")
    plot = tmp_path / "no" / "p.png"
    args = build_parser().parse_args(
        ["simulate", "--trace", str(tmp_path / "t.csv"), "--plot", str(plot)]
    )
    assert sim.run_cli(args) is None
    assert f"--plot: no directory {plot.parent}" in capsys.readouterr().err


def _bench(name: str) -> object:
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_the_grounded_scenario_loads_and_shares_the_h100s() -> None:
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "scenarios" / "grounded-h100.yaml"
    s = sim.load_scenario(str(path))
    assert s.name == "grounded-h100"
    by = {m.name: m for m in s.models}
    assert by["standard-32b"].accelerator == by["frontier-70b"].accelerator == "h100"
    # CheapestSufficient's order: economy, standard, frontier by price per prefill token.
    assert [s.models[i].name for i in sim.price_order(s)] == [
        "economy-8b",
        "standard-32b",
        "frontier-70b",
    ]


def test_gpu_prefill_counts_two_flops_per_parameter_and_skips_without_a_gpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench: Any = _bench("gpu_prefill")
    llama8b = next(s for s in bench.SHAPES if s.name == "llama-3.1-8b")
    # Llama-3.1-8B: about 218M parameters per decoder layer, plus causal attention.
    per_layer = bench.layer_flops_per_token(llama8b, 2048)
    assert per_layer == pytest.approx(2 * 218e6 + 2 * 2 * 4096 * 1024, rel=0.01)
    import torch

    if not torch.cuda.is_available():
        assert bench.main([]) == 0
        assert "no CUDA GPU here" in capsys.readouterr().out


def test_cli_reads_a_mooncake_trace_and_thins_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "conversation_trace.jsonl"
    reqs = _trace(300)
    trace.write_text(
        "".join(
            json.dumps({"timestamp": round(r.t * 1000), "input_length": r.prompt,
                        "output_length": r.output, "hash_ids": [0, 1]}) + "\n"
            for r in reqs
        )
    )  # fmt: skip
    args = argparse.Namespace(trace=str(trace), plot=None, json=True, rate_scale=0.5)
    assert sim.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    served = sum(m["requests"] for m in out["results"][0]["models"].values())
    assert 0.4 * len(reqs) < served < 0.6 * len(reqs)
    # --start and --duration replay a part of it (seconds from its first request).
    args = argparse.Namespace(trace=str(trace), plot=None, json=True, start=60.0, duration=120.0)
    assert sim.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    served = sum(m["requests"] for m in out["results"][0]["models"].values())
    ms = [round(r.t * 1000) for r in reqs]
    assert served == sum(1 for t in ms if 60_000 <= t - ms[0] < 180_000)
    # A per-request trace cannot be scaled up: a clear error, no report.
    args = argparse.Namespace(trace=str(trace), plot=None, json=True, rate_scale=2.0)
    assert sim.main(args) == 1
    assert "only be thinned" in capsys.readouterr().err


def test_static_oracle_does_not_search_below_a_fleet_that_falls_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trace the pool cannot serve at the target (every prompt takes longer than its
    SLO to prefill): the top of the search box falls short, so no smaller fleet is run
    (the box here holds 4 x 4 x 4 fleets, each one run of the trace), only the growth
    that finds no model gaining."""
    from tokenyard.autoscaler.sim import baselines

    scenario = sim.builtin_scenario()
    assert scenario.spillover
    routed = [(TraceRequest(i * 3.0, 100_000, 10), i % 3) for i in range(20)]
    runs: list[list[int]] = []
    real_run = baselines.run

    def counting(*args: Any, **kwargs: Any) -> sim.RunResult:
        runs.append(list(kwargs["initial"]))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(baselines, "run", counting)
    fleet = baselines._with_spillover(scenario, routed, [4, 4, 4], per_model=True)
    assert fleet[0] >= 4 and fleet[1] >= 4 and fleet[2] >= 4
    assert runs[0] == [4, 4, 4]
    assert all(sum(r) >= 12 for r in runs)  # nothing below the box's top was tried
    assert len(runs) <= 1 + 3 * 12  # the growth: each model until it stops gaining


def test_routing_skips_models_whose_context_is_too_short() -> None:
    """As the router's hard filter: a request longer than a model's context (what one
    replica's KV cache holds) goes to the cheapest sufficient model it fits, else the
    best it fits; one that fits none is refused (413) and in no policy's figures."""
    s = sim.builtin_scenario()
    kv = [m.kvCacheTokens for m in s.models]
    assert kv[0] < kv[1] <= kv[2]
    short = TraceRequest(0.0, 1000, 100)
    past_economy = TraceRequest(1.0, kv[0], 100)  # prompt + output > economy's cache
    past_all = TraceRequest(2.0, max(kv), 1)
    # Every difficulty draw covered by the economy model: only the context moves requests.
    easy = s.model_copy(update={"difficultyBeta": (1.0, 1e6)})
    routed = sim.route(easy, [short, past_economy, past_all])
    assert [(r.t, i) for r, i in routed] == [(0.0, 0), (1.0, 1)]
    report = sim.simulate(easy, [short, past_economy, past_all, TraceRequest(60.0, 10, 1)])
    assert report.refused_requests == 1
    assert report.to_dict()["refusedRequests"] == 1
    assert "refused: 1 requests longer than every model's context" in report.table()
    assert sum(m["requests"] for m in report.by("static").models.values()) == 3
