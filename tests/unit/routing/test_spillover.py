"""Spill-over: the queue clock, the choice (tokenyard.routing.spillover) and the step that
reorders a routing decision (policy_engine.apply_spillover)."""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

import pytest

from tokenyard.api.manifests import load
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicySpec, SpilloverSpec
from tokenyard.contract import CatalogueEntry, ExternalEndpoint, catalogue_entry
from tokenyard.routing import spillover
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.decision import Candidate, Decision
from tokenyard.routing.features import RequestFeatures
from tokenyard.routing.policy_engine import apply_spillover, capacity_of, decide
from tokenyard.routing.spillover import Capacity, Option, QueueClock, choose
from tokenyard.serving.local import plan

NOW = 1_700_000_000.0

# One replica at 1000 tokens/s: 1000 prompt tokens take 1 s to prefill.
ONE = Capacity(replicas=1, tokens_per_s=1000.0, ttft_slo_s=1.0)


# -- the queue clock -----------------------------------------------------------------


def test_each_request_moves_the_clock_by_its_prefill_on_all_replicas() -> None:
    clock = QueueClock()
    two = Capacity(replicas=2, tokens_per_s=1000.0, ttft_slo_s=1.0)
    assert clock.backlog_s("m", NOW) == 0.0
    clock.sent("m", two, 1000, NOW)
    assert clock.backlog_s("m", NOW) == pytest.approx(0.5)
    clock.sent("m", two, 1000, NOW)
    assert clock.backlog_s("m", NOW) == pytest.approx(1.0)
    # A new request waits for the backlog, then its own prefill.
    assert clock.expected_ttft("m", two, 500, NOW) == pytest.approx(1.25)
    # Time drains the backlog.
    assert clock.backlog_s("m", NOW + 0.4) == pytest.approx(0.6)
    assert clock.in_flight("m") == 2
    # Models are separate.
    assert clock.backlog_s("other", NOW) == 0.0


def test_share_scales_the_backlog_but_not_the_requests_own_prefill() -> None:
    """With two router replicas each sees half the traffic: a request it sends stands for
    two, but its own tokens are prefilled once."""
    clock = QueueClock(share=0.5)
    assert clock.expected_ttft("m", ONE, 500, NOW) == pytest.approx(0.5)
    clock.sent("m", ONE, 500, NOW)
    assert clock.backlog_s("m", NOW) == pytest.approx(1.0)
    assert clock.expected_ttft("m", ONE, 500, NOW) == pytest.approx(1.5)


def test_the_clock_never_lies_in_the_past() -> None:
    clock = QueueClock()
    clock.sent("m", ONE, 1000, NOW)  # would be prefilled at NOW + 1
    assert clock.backlog_s("m", NOW + 10) == 0.0
    # Still in flight (no first token seen): the next request starts from now, not
    # from a clock that ran out long ago.
    clock.sent("m", ONE, 1000, NOW + 10)
    assert clock.backlog_s("m", NOW + 10) == pytest.approx(1.0)


def test_the_clock_resets_when_nothing_is_in_flight() -> None:
    clock = QueueClock()
    for _ in range(3):
        clock.sent("m", ONE, 1000, NOW)
    clock.started("m", NOW)
    clock.started("m", NOW)
    # One request still waits: its queue estimate stands, whatever the rate really was.
    assert clock.backlog_s("m", NOW) == pytest.approx(3.0)
    clock.started("m", NOW)
    assert clock.in_flight("m") == 0
    assert clock.backlog_s("m", NOW) == 0.0
    assert clock.expected_ttft("m", ONE, 1000, NOW) == pytest.approx(1.0)


def test_started_never_goes_negative() -> None:
    clock = QueueClock()
    clock.started("never-sent", NOW)
    assert clock.in_flight("never-sent") == 0
    clock.sent("m", ONE, 1000, NOW)
    clock.started("m", NOW)
    clock.started("m", NOW)  # one too many
    assert clock.in_flight("m") == 0
    clock.sent("m", ONE, 1000, NOW)
    assert clock.in_flight("m") == 1
    assert clock.backlog_s("m", NOW) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "cap",
    [
        None,
        Capacity(replicas=0, tokens_per_s=1000.0, ttft_slo_s=1.0),
        Capacity(replicas=1, tokens_per_s=0.0, ttft_slo_s=1.0),
        Capacity(replicas=1, tokens_per_s=1000.0, ttft_slo_s=0.0),
    ],
)
def test_unknown_capacity_counts_in_flight_but_builds_no_queue(cap: Capacity | None) -> None:
    clock = QueueClock()
    clock.sent("m", cap, 1000, NOW)
    assert clock.in_flight("m") == 1
    assert clock.backlog_s("m", NOW) == 0.0
    if cap is not None:
        assert not cap.known
        assert clock.expected_ttft("m", cap, 10, NOW) == float("inf")


def test_share_is_validated_and_can_change_without_losing_state() -> None:
    for bad in (0.0, -1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="share"):
            QueueClock(share=bad)
    clock = QueueClock()
    clock.sent("m", ONE, 1000, NOW)
    clock.share = 0.25
    assert clock.share == 0.25
    assert clock.in_flight("m") == 1
    assert clock.backlog_s("m", NOW) == pytest.approx(1.0)
    clock.sent("m", ONE, 1000, NOW)
    assert clock.backlog_s("m", NOW) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="share"):
        clock.share = 0.0
    assert clock.share == 0.25


# -- choose --------------------------------------------------------------------------


def cap(replicas: int = 1, tps: float = 1000.0, slo: float = 1.0) -> Capacity:
    return Capacity(replicas=replicas, tokens_per_s=tps, ttft_slo_s=slo)


def saturated(model: str = "economy", prompts: int = 3, tokens: int = 1000) -> QueueClock:
    """A clock with ``prompts`` x ``tokens`` waiting on ``model`` (1 s each on ONE)."""
    clock = QueueClock()
    for _ in range(prompts):
        clock.sent(model, ONE, tokens, NOW)
    return clock


ECONOMY = Option("economy", 0.3, True, ONE)
STANDARD = Option("standard", 0.6, True, cap(tps=10_000, slo=2.0))
FRONTIER = Option("frontier", 1.0, True, cap(replicas=2, tps=5_000, slo=2.0))
PROVIDER = Option("provider", 1.0, False, None)


def test_no_spill_while_the_first_target_keeps_its_slo() -> None:
    # Binary-exact fractions of a second, so "exactly the SLO" is exact.
    clock = saturated(prompts=0)
    assert choose([ECONOMY, STANDARD], clock, 750, NOW) is None
    clock.sent("economy", ONE, 250, NOW)
    assert choose([ECONOMY, STANDARD], clock, 750, NOW) is None  # exactly 1.0 s: kept
    clock.sent("economy", ONE, 1, NOW)
    assert choose([ECONOMY, STANDARD], clock, 750, NOW) is not None


def test_spills_to_the_next_sufficient_in_cluster_target() -> None:
    clock = saturated(prompts=2)  # economy: 2 s queued + 0.1 s own prefill
    weaker = Option("tiny", 0.1, True, cap(tps=100_000, slo=5.0))
    busy = Option("busy", 0.9, True, cap(slo=1.0))
    clock.sent("busy", busy.capacity, 3000, NOW)  # 3 s queued: would miss its own SLO
    options = [ECONOMY, PROVIDER, weaker, busy, STANDARD, FRONTIER]
    spill = choose(options, clock, 100, NOW)
    assert spill is not None
    assert spill.index == 4  # standard: external, weaker and busy targets passed over
    assert spill.reason == (
        "spill-over: economy expected TTFT 2.1s > 1 x SLO 1s; standard expected 0.0s (SLO 2s)"
    )


@pytest.mark.parametrize(
    ("queued_tokens", "headroom", "spills"),
    [
        (800, None, True),  # peer expected 0.9 s: 0.45 x its 2 s SLO
        (1000, None, False),  # 1.1 s = 0.55 x SLO: within its SLO, but not spare
        (1000, 1.0, True),
        (2000, 1.0, False),  # 2.1 s: past its own SLO
    ],
)
def test_a_spill_target_needs_spare_capacity(
    queued_tokens: int, headroom: float | None, spills: bool
) -> None:
    """By default a model takes spill-over only while it would start the request within
    half its own SLO (SPILL_HEADROOM), so its own traffic keeps its margin."""
    clock = saturated(prompts=2)  # economy: 2.1 s
    peer = Option("peer", 1.0, True, cap(tps=1000, slo=2.0))
    clock.sent("peer", peer.capacity, queued_tokens, NOW)
    kw = {} if headroom is None else {"headroom": headroom}
    assert (choose([ECONOMY, peer], clock, 100, NOW, **kw) is not None) is spills


def test_never_spills_to_an_external_target() -> None:
    clock = saturated()
    assert choose([ECONOMY, PROVIDER], clock, 100, NOW) is None
    # An external target first is never moved either: the router has no view of its load.
    assert choose([PROVIDER, STANDARD], clock, 100, NOW) is None


def test_never_spills_to_a_weaker_model() -> None:
    clock = saturated("standard", prompts=10)  # standard: 1 s queued (10x faster)
    weaker = Option("economy", 0.3, True, cap(tps=1_000_000, slo=10.0))
    assert choose([STANDARD, weaker], clock, 10_000, NOW) is None
    # The same quality is enough.
    peer = Option("peer", 0.6, True, cap(tps=1_000_000, slo=10.0))
    assert choose([STANDARD, weaker, peer], clock, 10_000, NOW) is not None


def test_unknown_capacity_neither_spills_nor_takes_spill_over() -> None:
    clock = saturated()
    unknown = Option("unknown", 1.0, True, None)
    scaled_to_zero = Option("zero", 1.0, True, cap(replicas=0))
    assert choose([ECONOMY, unknown, scaled_to_zero], clock, 100, NOW) is None
    assert choose([ECONOMY, unknown, STANDARD], clock, 100, NOW) is not None
    first_unknown = Option("economy", 0.3, True, None)
    assert choose([first_unknown, STANDARD], clock, 100, NOW) is None


def test_threshold_scales_the_first_targets_slo() -> None:
    clock = saturated(prompts=1)  # economy: 1 s queued + 0.5 s own = 1.5 x its SLO
    assert choose([ECONOMY, STANDARD], clock, 500, NOW, threshold=1.0) is not None
    assert choose([ECONOMY, STANDARD], clock, 500, NOW, threshold=1.4) is not None
    assert choose([ECONOMY, STANDARD], clock, 500, NOW, threshold=1.5) is None
    assert choose([ECONOMY, STANDARD], clock, 500, NOW, threshold=2.0) is None


def test_a_target_no_sooner_than_the_first_is_no_spill_over() -> None:
    # Both miss nothing by their own SLO, but the other one would start later.
    clock = saturated(prompts=2)
    slow = Option("slow", 1.0, True, cap(tps=100, slo=30.0))
    assert choose([ECONOMY, slow], clock, 1000, NOW) is None


def test_one_target_never_spills() -> None:
    assert choose([ECONOMY], saturated(prompts=50), 100, NOW) is None
    assert choose([], QueueClock(), 100, NOW) is None


def test_spillover_imports_only_the_standard_library() -> None:
    """The autoscaler's simulator imports this module: it must stay free of Ray, vLLM,
    Kubernetes clients and every other tokenyard layer."""
    tree = ast.parse(Path(spillover.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


# -- the decision step ---------------------------------------------------------------


def in_cluster(name: str, quality: float, price: float, **kw: float | int) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        servedModelName=name,
        kind="InCluster",
        quality=quality,
        inputPer1M=price,
        outputPer1M=price,
        app=f"model-{name}",
        deployment="LLMServer",
        **kw,  # type: ignore[arg-type]
    )


CATALOGUE = {
    "economy": in_cluster(
        "economy", 0.3, 0.1, replicas=1, tokensPerSecond=1000.0, ttftSLOSeconds=1.0
    ),
    "standard": in_cluster(
        "standard", 0.6, 0.5, replicas=1, tokensPerSecond=10_000.0, ttftSLOSeconds=2.0
    ),
    "frontier": in_cluster(
        "frontier", 1.0, 6.0, replicas=2, tokensPerSecond=5000.0, ttftSLOSeconds=2.0
    ),
    "provider": CatalogueEntry(
        name="provider",
        servedModelName="provider",
        kind="External",
        quality=1.0,
        inputPer1M=2.0,
        outputPer1M=2.0,
        dataClasses=["public"],
        external=ExternalEndpoint(baseURL="http://provider.test/v1", providerModel="p"),
    ),
}


def decision_for(targets: list[str], prompt_tokens: int = 100) -> Decision:
    spec = RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "targets": [{"model": t} for t in targets],
            "strategy": "Ordered",
            "egress": {"allowedExternalDataClasses": ["public"]},
            "fallback": {"maxAttempts": 4},
        }
    )
    features = RequestFeatures(
        endpoint="chat",
        tenant="t",
        prompt_tokens=prompt_tokens,
        max_tokens=None,
        messages=1,
        difficulty=0.1,
        difficulty_source="classifier",
        data_classes=frozenset({"public"}),
        tags=frozenset(),
        headers={},
        stream=False,
        prompt_text="",
    )
    return decide(features, spec, CATALOGUE, {}, StaticSpend(), NOW, random.Random(0))


def test_apply_moves_the_spill_target_first_and_keeps_the_original_as_fallback() -> None:
    d = decision_for(["economy", "provider", "frontier", "standard"])
    clock = saturated(prompts=2)
    out = apply_spillover(d, CATALOGUE, clock, 100, NOW, SpilloverSpec())
    assert out.models == ["frontier", "economy", "provider", "standard"]
    assert out.targets[0] == Candidate(
        "frontier",
        "ordered: position 3; spill-over: economy expected TTFT 2.1s > 1 x SLO 1s; "
        "frontier expected 0.0s (SLO 2s)",
    )
    assert out.targets[1:] == [d.targets[0], d.targets[1], d.targets[3]]
    assert out.spilled_from == "economy"
    assert out.to_dict()["spilledFrom"] == "economy"
    # Everything else about the decision is kept.
    assert (out.skipped, out.rule, out.strategy, out.tenant) == (
        d.skipped,
        d.rule,
        d.strategy,
        d.tenant,
    )
    # The input decision is not changed (frozen, and its list is not reused).
    assert d.models == ["economy", "provider", "frontier", "standard"]
    assert d.spilled_from is None and "spilledFrom" not in d.to_dict()


def test_apply_leaves_the_decision_alone_without_load_or_when_disabled() -> None:
    d = decision_for(["economy", "standard"])
    assert apply_spillover(d, CATALOGUE, QueueClock(), 100, NOW, SpilloverSpec()) is d
    busy = saturated(prompts=5)
    assert apply_spillover(d, CATALOGUE, busy, 100, NOW, SpilloverSpec(enabled=False)) is d
    assert apply_spillover(d, CATALOGUE, busy, 100, NOW, SpilloverSpec(threshold=10)) is d
    moved = apply_spillover(d, CATALOGUE, busy, 100, NOW, SpilloverSpec(threshold=2))
    assert moved.models == ["standard", "economy"]


def test_apply_never_moves_an_external_or_weaker_target_first() -> None:
    busy = saturated("standard", prompts=100, tokens=1000)  # standard: 10 s queued
    d = decision_for(["standard", "provider", "economy"])
    assert apply_spillover(d, CATALOGUE, busy, 100, NOW, SpilloverSpec()) is d


def test_apply_skips_a_target_missing_from_the_catalogue() -> None:
    d = decision_for(["economy", "standard"])
    ghost = Decision(
        endpoint=d.endpoint,
        difficulty=d.difficulty,
        targets=[d.targets[0], Candidate("ghost", ""), d.targets[1]],
        skipped=[],
        rule=None,
        strategy="Ordered",
        downgraded=False,
    )
    out = apply_spillover(ghost, CATALOGUE, saturated(prompts=2), 100, NOW, SpilloverSpec())
    assert out.models == ["standard", "economy", "ghost"]


# -- capacity in the catalogue ---------------------------------------------------------


def md(doc_spec: dict[str, object], status: dict[str, object] | None = None) -> ModelDeployment:
    doc: dict[str, object] = {"metadata": {"name": "m"}, "spec": doc_spec}
    if status is not None:
        doc["status"] = status
    return ModelDeployment.model_validate(doc)


IN_CLUSTER = {
    "pool": "p",
    "inCluster": {"source": "hf://o/m", "accelerator": "l4", "nominalTokensPerSecond": 3000},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "ttftSLOSeconds": 0.8},
}


def test_catalogue_entry_carries_the_capacity_of_in_cluster_models() -> None:
    e = catalogue_entry(md({**IN_CLUSTER, "replicas": 3}), ready=True)
    assert e.capacity() == Capacity(replicas=3, tokens_per_s=3000.0, ttft_slo_s=0.8)
    # Without spec.replicas: the autoscaling minimum; an explicit count wins.
    assert catalogue_entry(md(IN_CLUSTER), ready=True).replicas == 1
    assert catalogue_entry(md(IN_CLUSTER), ready=True, replicas=2).replicas == 2
    # Observed status is not read: the entry is rendered into the RayService.
    observed = md({**IN_CLUSTER, "replicas": 3}, status={"readyReplicas": 0})
    assert catalogue_entry(observed, ready=True).replicas == 3


def test_external_and_incomplete_entries_have_no_capacity() -> None:
    ext = md(
        {
            "external": {
                "baseURL": "https://x.test/v1",
                "providerModel": "x",
                "price": {"inputPer1M": 1, "outputPer1M": 1},
            }
        }
    )
    e = catalogue_entry(ext, ready=True)
    assert (e.replicas, e.tokensPerSecond, e.ttftSLOSeconds) == (None, None, None)
    assert e.capacity() is None
    assert CATALOGUE["economy"].model_copy(update={"replicas": None}).capacity() is None
    assert CATALOGUE["economy"].model_copy(update={"ttftSLOSeconds": None}).capacity() is None


def test_tokenyard_up_counts_on_the_one_replica_it_runs(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[3] / "examples" / "local"
    manifests = load([str(examples)])
    # Two replicas asked for: `tokenyard up` still runs one of each model.
    for md in manifests.models:
        md.spec.replicas = 2
    p = plan(manifests, host="127.0.0.1", port=8000, state_dir=tmp_path, gpu=False, environ={})
    in_cluster = [e for e in p.router_config.models if e.kind == "InCluster"]
    assert in_cluster and {e.replicas for e in in_cluster} == {1}
    assert p.router_config.routerReplicas == 1


def test_live_replicas_replace_the_catalogue_count() -> None:
    # The catalogue counts replicas asked for; the router learns from Ray Serve how many
    # run. A model whose replicas are all still starting takes no spill-over.
    assert capacity_of(CATALOGUE["frontier"]) == Capacity(2, 5000.0, 2.0)
    assert capacity_of(CATALOGUE["frontier"], {"frontier": 1}) == Capacity(1, 5000.0, 2.0)
    assert capacity_of(CATALOGUE["frontier"], {"economy": 3}) == Capacity(2, 5000.0, 2.0)
    assert capacity_of(CATALOGUE["provider"], {"provider": 3}) is None
    d = decision_for(["economy", "frontier"])
    clock = saturated(prompts=2)
    spec = SpilloverSpec()
    assert apply_spillover(d, CATALOGUE, clock, 100, NOW, spec).models == ["frontier", "economy"]
    starting = apply_spillover(d, CATALOGUE, clock, 100, NOW, spec, live_replicas={"frontier": 0})
    assert starting is d


# -- capacity downgrade (spillover.downgradeWhenCapped) ----------------------------------

CAPPED_STANDARD = Option("standard", 0.6, True, ONE, capped="GPUCapped")
TINY = Option("tiny", 0.1, True, cap(tps=100_000, slo=5.0))
SMALL = Option("small", 0.3, True, cap(tps=100_000, slo=5.0))


def test_a_capped_saturated_model_downgrades_to_the_strongest_weaker_one_with_room() -> None:
    clock = saturated("standard", prompts=3)  # standard: 3 s queued + 0.1 s own > 1 s SLO
    busy_small = Option("busy", 0.5, True, cap(slo=1.0))
    clock.sent("busy", busy_small.capacity, 3000, NOW)  # no room either
    options = [CAPPED_STANDARD, PROVIDER, TINY, busy_small, SMALL]
    spill = choose(options, clock, 100, NOW, downgrade=True)
    assert spill is not None and spill.downgrade
    assert spill.index == 4  # small (0.3) over tiny (0.1); busy and the provider passed
    assert spill.reason == (
        "capacity downgrade: standard is GPUCapped and expected TTFT 3.1s > 1 x SLO 1s "
        "with no better model free; small (quality 0.3 < 0.6) expected 0.0s"
    )
    # Off by default, and never for a model the autoscaler can still grow.
    assert choose(options, clock, 100, NOW) is None
    uncapped = Option("standard", 0.6, True, ONE)
    assert choose([uncapped, TINY, SMALL], clock, 100, NOW, downgrade=True) is None


def test_a_better_model_with_room_wins_over_a_downgrade() -> None:
    clock = saturated("standard", prompts=3)
    spill = choose([CAPPED_STANDARD, SMALL, FRONTIER], clock, 100, NOW, downgrade=True)
    assert spill is not None and not spill.downgrade and spill.index == 2


def test_no_downgrade_while_the_capped_model_keeps_its_slo_or_nothing_weaker_has_room() -> None:
    calm = saturated("standard", prompts=0)
    assert choose([CAPPED_STANDARD, SMALL], calm, 100, NOW, downgrade=True) is None
    clock = saturated("standard", prompts=3)
    clock.sent("small", SMALL.capacity, 10_000_000, NOW)  # 100 s queued
    assert choose([CAPPED_STANDARD, SMALL], clock, 100, NOW, downgrade=True) is None
    external_only = [CAPPED_STANDARD, Option("cheap-api", 0.2, False, None)]
    assert choose(external_only, clock, 100, NOW, downgrade=True) is None


def test_apply_downgrades_a_capped_model_and_marks_the_decision() -> None:
    catalogue = {
        **CATALOGUE,
        "standard": CATALOGUE["standard"].model_copy(
            update={"capped": "BudgetCapped", "tokensPerSecond": 1000.0, "ttftSLOSeconds": 1.0}
        ),
        "economy": CATALOGUE["economy"].model_copy(update={"tokensPerSecond": 100_000.0}),
    }
    d = decision_for(["standard", "economy"])
    busy = saturated("standard", prompts=3)
    spec = SpilloverSpec(downgradeWhenCapped=True)
    out = apply_spillover(d, catalogue, busy, 100, NOW, spec)
    assert out.models == ["economy", "standard"]
    assert out.spilled_from == "standard" and out.capacity_downgrade
    assert out.to_dict()["capacityDowngrade"] is True
    assert "capacity downgrade: standard is BudgetCapped" in out.targets[0].reason
    assert apply_spillover(d, catalogue, busy, 100, NOW, SpilloverSpec()) is d
    assert apply_spillover(d, CATALOGUE, busy, 100, NOW, spec) is d  # not capped


def test_catalogue_entry_follows_the_capped_condition_only_when_asked() -> None:
    capped = md(
        IN_CLUSTER,
        status={
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Serving"},
                {"type": "Capped", "status": "True", "reason": "GPUCapped"},
            ]
        },
    )
    assert catalogue_entry(capped, ready=True).capped is None
    assert catalogue_entry(capped, ready=True, with_capped=True).capped == "GPUCapped"
    released = md(
        IN_CLUSTER,
        status={"conditions": [{"type": "Capped", "status": "False", "reason": "NotCapped"}]},
    )
    assert catalogue_entry(released, ready=True, with_capped=True).capped is None
    assert catalogue_entry(md(IN_CLUSTER), ready=True, with_capped=True).capped is None


def test_tokenyard_up_runs_the_router_replicas_the_pool_asks_for(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[3] / "examples" / "local"
    manifests = load([str(examples)])
    for pool in manifests.pools:
        pool.spec.router.minReplicas = 2
        pool.spec.router.maxReplicas = 2
    p = plan(manifests, host="127.0.0.1", port=8000, state_dir=tmp_path, gpu=False, environ={})
    assert p.router_config.routerReplicas == 2
    (router,) = p.serve_config["applications"][-1]["deployments"]
    assert router["num_replicas"] == 2


def test_tokenyard_up_finds_what_a_killed_run_left_behind(tmp_path: Path) -> None:
    from tokenyard.serving.local import leftover_pids, record_session

    session = "/tmp/ray/session_2026-12-05_23-00-00_1"
    procs = [
        (10, ["raylet", f"--session_dir={session}"]),
        (11, ["python", "worker.py", "--session-dir", f"{session}/x"]),
        (12, ["raylet", "--session_dir=/tmp/ray/session_other"]),
        (13, ["vim"]),
        (14, ["raylet", f"--session_dir={session}2"]),  # another session, a longer name
    ]
    assert leftover_pids(tmp_path, procs, lambda pid: False) == []  # nothing recorded
    record_session(tmp_path, session, pid=99)
    assert leftover_pids(tmp_path, procs, lambda pid: pid == 99) == []  # still running
    assert leftover_pids(tmp_path, procs, lambda pid: False) == [10, 11]


def test_a_lora_adapter_queues_on_its_base_models_replicas() -> None:
    # Issue 14: an adapter (catalogue entry MODEL:ADAPTER) is served by its model's
    # replicas, so its wait is the model's queue: load sent to the model moves the
    # adapter to spill-over and vice versa.
    adapter = CATALOGUE["economy"].model_copy(
        update={"name": "economy:sql", "servedModelName": "sql", "adapterOf": "economy"}
    )
    catalogue = {**CATALOGUE, "economy:sql": adapter}
    spec = RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": "economy:sql"}, {"model": "standard"}]}
    )
    d = decide(
        RequestFeatures(
            endpoint="chat",
            tenant="t",
            prompt_tokens=100,
            max_tokens=None,
            messages=1,
            difficulty=0.1,
            difficulty_source="classifier",
            data_classes=frozenset({"public"}),
            tags=frozenset(),
            headers={},
            stream=False,
            prompt_text="",
        ),
        spec.model_copy(update={"strategy": "Ordered"}),
        catalogue,
        {},
        StaticSpend(),
        NOW,
        random.Random(0),
    )
    assert d.models == ["economy:sql", "standard"]
    base_busy = saturated("economy", prompts=2)
    assert apply_spillover(d, catalogue, base_busy, 100, NOW, SpilloverSpec()).models == [
        "standard",
        "economy:sql",
    ]
    own_name_busy = saturated("economy:sql", prompts=2)  # not a queue of its own
    assert apply_spillover(d, catalogue, own_name_busy, 100, NOW, SpilloverSpec()) is d
    sql = Option("economy:sql", 0.3, True, ONE, queue="economy")
    assert choose([sql, STANDARD], base_busy, 100, NOW) is not None
