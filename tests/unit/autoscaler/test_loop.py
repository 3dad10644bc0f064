"""The loop against an in-memory fake API: what it writes, when, and who may act."""

from __future__ import annotations

import copy
import threading
from dataclasses import replace
from typing import Any

import pytest

from tokenyard.autoscaler.health import Heartbeat
from tokenyard.autoscaler.kube import Conflict
from tokenyard.autoscaler.leader import LeaderElector
from tokenyard.autoscaler.loop import Autoscaler, _moved, run_forever, set_condition
from tokenyard.autoscaler.signals import ModelSignals, PoolSignals, StaticSignalSource
from tokenyard.settings import AutoscalerSettings


class FakeApi:
    """A KubeApi keeping objects in dicts and recording every write."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], dict[str, Any]] = {}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.fail_events = False

    def list_pools(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for (ns, _), p in self.pools.items() if namespace in (None, ns)]

    def list_models(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(m) for (ns, _), m in self.models.items() if namespace in (None, ns)]

    def list_policies(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for (ns, _), p in self.policies.items()
                if namespace in (None, ns)]  # fmt: skip

    def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(("pool-status", name, copy.deepcopy(status)))
        _merge(self.pools[(namespace, name)].setdefault("status", {}), status)

    def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(("policy-status", name, copy.deepcopy(status)))
        _merge(self.policies[(namespace, name)].setdefault("status", {}), status)

    def patch_scale(self, namespace: str, name: str, replicas: int) -> None:
        self.writes.append(("scale", name, replicas))
        self.models[(namespace, name)]["spec"]["replicas"] = replicas

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.writes.append(("status", name, copy.deepcopy(status)))
        self.models[(namespace, name)].setdefault("status", {}).update(copy.deepcopy(status))

    def create_event(self, obj: dict[str, Any], reason: str, note: str, type_: str = "Normal"
                     ) -> None:  # fmt: skip
        if self.fail_events:
            raise RuntimeError("events are down")
        self.events.append((obj["metadata"]["name"], reason))

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease = self.leases.get((namespace, name))
        return copy.deepcopy(lease) if lease else None

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None:
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            raise Conflict("exists")
        self.leases[key] = {**copy.deepcopy(body), "metadata": {**body["metadata"],
                                                              "resourceVersion": "1"}}  # fmt: skip

    def patch_lease(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        lease = self.leases[(namespace, name)]
        rv = body.get("metadata", {}).get("resourceVersion")
        if rv is not None and rv != lease["metadata"]["resourceVersion"]:
            raise Conflict("resourceVersion changed")
        lease["spec"].update(body["spec"])
        lease["metadata"]["resourceVersion"] = str(int(lease["metadata"]["resourceVersion"]) + 1)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _seed(api: FakeApi) -> None:
    api.pools[("ns", "pool")] = {
        "metadata": {"name": "pool", "namespace": "ns"},
        "spec": {"accelerators": [{"name": "l4", "maxGPUs": 4, "hourlyCostPerGPU": 1.0}]},
    }
    for name, mode in (("auto", "Tokenyard"), ("manual", "Manual")):
        api.models[("ns", name)] = {
            "metadata": {"name": name, "namespace": "ns", "generation": 2},
            "spec": {
                "pool": "pool",
                "inCluster": {"source": "hf://x/y", "accelerator": "l4"},
                "replicas": 1,
                "autoscaling": {
                    "mode": mode,
                    "minReplicas": 1,
                    "maxReplicas": 4,
                    "targetOngoingRequests": 10,
                },
            },
        }
    api.models[("ns", "ext")] = {
        "metadata": {"name": "ext", "namespace": "ns"},
        "spec": {
            "external": {
                "baseURL": "https://api.example/v1",
                "providerModel": "m",
                "price": {"inputPer1M": 1, "outputPer1M": 2},
            }
        },
    }
    api.models[("ns", "broken")] = {"metadata": {"name": "broken", "namespace": "ns"},
                                    "spec": {"tier": "premium"}}  # fmt: skip


def _scaler(api: FakeApi, running: float) -> Autoscaler:
    busy = ModelSignals(observed_at=0, running=running)
    return Autoscaler(api, StaticSignalSource({"auto": busy, "manual": busy}),
                      AutoscalerSettings())  # fmt: skip


def test_tick_writes_scale_status_and_events() -> None:
    api = FakeApi()
    _seed(api)
    result = _scaler(api, 25).tick(1000.0)
    assert ("scale", "auto", 3) in api.writes
    assert not [w for w in api.writes if w[0] == "scale" and w[1] != "auto"]
    status = api.models[("ns", "auto")]["status"]
    assert status["autoscaling"]["desiredReplicas"] == 3
    assert status["autoscaling"]["lastScaleTime"] == "1970-01-01T00:16:40Z"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["MetricsAvailable"]["status"] == "True"
    assert conds["MetricsAvailable"]["observedGeneration"] == 2
    assert conds["Capped"]["reason"] == "NotCapped"
    assert ("auto", "ScaledUp") in api.events
    assert api.models[("ns", "manual")]["status"]["autoscaling"]["reason"].startswith("Manual")
    assert any("broken" in s for s in result.skipped)
    assert ("ns", "ext") not in result.decisions  # external models have no replicas


def test_status_written_only_when_changed() -> None:
    api = FakeApi()
    _seed(api)
    scaler = _scaler(api, 25)
    scaler.tick(1000.0)
    n = len(api.writes)
    scaler.tick(1005.0)
    assert len(api.writes) == n


def test_gpu_cap_sets_condition_and_warns_once() -> None:
    api = FakeApi()
    _seed(api)
    scaler = _scaler(api, 200)  # asks 4; manual keeps 1 of the 4 GPUs
    scaler.tick(1000.0)
    auto = api.models[("ns", "auto")]
    assert auto["spec"]["replicas"] == 3
    capped = next(c for c in auto["status"]["conditions"] if c["type"] == "Capped")
    assert (capped["status"], capped["reason"]) == ("True", "GPUCapped")
    scaler.tick(1005.0)
    assert api.events.count(("auto", "GPUCapped")) == 1


def test_failing_events_do_not_stop_writes() -> None:
    api = FakeApi()
    _seed(api)
    api.fail_events = True
    _scaler(api, 25).tick(1000.0)
    assert api.models[("ns", "auto")]["spec"]["replicas"] == 3
    assert api.models[("ns", "auto")]["status"]["autoscaling"]["desiredReplicas"] == 3


def test_condition_transition_time_moves_only_on_flip() -> None:
    conds = set_condition([], "Capped", "False", reason="NotCapped", message="", now=10,
                          generation=None)  # fmt: skip
    same = set_condition(conds, "Capped", "False", reason="NotCapped", message="x", now=20,
                         generation=None)  # fmt: skip
    flipped = set_condition(same, "Capped", "True", reason="GPUCapped", message="", now=30,
                            generation=1)  # fmt: skip
    assert same[0]["lastTransitionTime"] == conds[0]["lastTransitionTime"]
    assert flipped[0]["lastTransitionTime"] == "1970-01-01T00:00:30Z"


def test_leader_election_one_at_a_time() -> None:
    api = FakeApi()
    a = LeaderElector(api, "sys", "lease", "a", 30)
    b = LeaderElector(api, "sys", "lease", "b", 30)
    assert a.try_acquire(1000)
    assert not b.try_acquire(1001)
    assert a.try_acquire(1020)
    assert not b.try_acquire(1049)
    assert b.try_acquire(1051)
    assert not a.try_acquire(1052)
    assert api.leases[("sys", "lease")]["spec"]["leaseTransitions"] == 1


def test_leader_election_race_has_one_winner() -> None:
    api = FakeApi()
    LeaderElector(api, "sys", "lease", "old", 30).try_acquire(0)
    a = LeaderElector(api, "sys", "lease", "a", 30)
    b = LeaderElector(api, "sys", "lease", "b", 30)
    stale = api.get_lease("sys", "lease")
    assert a.try_acquire(100)
    # b read the Lease before a took it: its update carries the old resourceVersion.
    api.get_lease = lambda ns, name: stale  # type: ignore[method-assign]
    assert not b.try_acquire(100)


def test_run_forever_acts_only_while_leading() -> None:
    api = FakeApi()
    _seed(api)
    api.leases[("sys", "lease")] = {"metadata": {"name": "lease", "resourceVersion": "1"},
                                    "spec": {"holderIdentity": "other",
                                             "renewTime": "2999-01-01T00:00:00.000000Z",
                                             "leaseDurationSeconds": 30}}  # fmt: skip
    stop = threading.Event()
    ticks = iter(range(1000, 1100))

    def clock() -> float:
        t = float(next(ticks))
        if t > 1005:
            stop.set()
        return t

    elector = LeaderElector(api, "sys", "lease", "me", 30)
    run_forever(_scaler(api, 25), elector, 0.0, stop, clock=clock)
    assert api.writes == []


@pytest.mark.parametrize("leading", [True])
def test_run_forever_ticks_when_leading(leading: bool) -> None:
    api = FakeApi()
    _seed(api)
    stop = threading.Event()
    ticks = iter(range(1000, 1100))

    def clock() -> float:
        t = float(next(ticks))
        if t > 1003:
            stop.set()
        return t

    beat = Heartbeat(clock=lambda: 1000.0)
    elector = LeaderElector(api, "sys", "lease", "me", 30)
    run_forever(_scaler(api, 25), elector, 0.0, stop, clock=clock, heartbeat=beat)
    assert ("scale", "auto", 3) in api.writes
    ok, body = beat.report(max_age_s=45)
    assert ok and body["leader"] is True and body["lastError"] is None


def _policy(api: FakeApi, ns: str, name: str, pool: str, endpoint: str | None = None) -> None:
    spec: dict[str, Any] = {"pool": pool, "targets": [{"model": "auto"}]}
    if endpoint is not None:
        spec["endpoint"] = endpoint
    api.policies[(ns, name)] = {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def _measuring(api: FakeApi) -> tuple[Autoscaler, StaticSignalSource]:
    busy = ModelSignals(observed_at=0, running=5)
    src = StaticSignalSource({"auto": busy, "manual": busy})
    src.pools[("ns", "pool")] = PoolSignals(gpus_in_use={"l4": 2.0}, gpu_utilization={"l4": 0.613})
    return Autoscaler(api, src, AutoscalerSettings()), src


def _pool_writes(api: FakeApi) -> list[Any]:
    return [w for w in api.writes if w[0] == "pool-status"]


def test_pool_measurement_written_when_it_moves() -> None:
    api = FakeApi()
    _seed(api)
    scaler, src = _measuring(api)
    result = scaler.tick(1000.0)
    measured = api.pools[("ns", "pool")]["status"]["measured"]
    assert measured["accelerators"] == [{"name": "l4", "gpusInUse": 2, "gpuUtilizationPercent": 61}]
    assert measured["gpus"] == "l4 2 (61%)"
    assert measured["lastChangeTime"] == "1970-01-01T00:16:40Z"
    assert "spendUSDPerHour" not in measured  # no router reports spend
    assert result.pools_measured == [("ns", "pool")]
    # Utilisation within 5 points: nothing written.
    src.pools[("ns", "pool")] = PoolSignals(gpus_in_use={"l4": 2.0}, gpu_utilization={"l4": 0.65})
    scaler.tick(1005.0)
    assert len(_pool_writes(api)) == 1
    # A GPU more in use is written at once.
    src.pools[("ns", "pool")] = PoolSignals(gpus_in_use={"l4": 3.0}, gpu_utilization={"l4": 0.65})
    scaler.tick(1010.0)
    assert api.pools[("ns", "pool")]["status"]["measured"]["gpus"] == "l4 3 (65%)"
    # Prometheus down: the last measurement stays, nothing is written, nothing is zeroed.
    src.pools[("ns", "pool")] = PoolSignals(available=False, detail="down")
    scaler.tick(1015.0)
    assert len(_pool_writes(api)) == 2
    assert api.pools[("ns", "pool")]["status"]["measured"]["accelerators"][0]["gpusInUse"] == 3


def test_policy_spend_per_namespace_and_endpoint_and_summed_per_pool() -> None:
    api = FakeApi()
    _seed(api)
    _policy(api, "ns", "chat", "pool")
    _policy(api, "ns", "code", "pool", endpoint="code-v2")
    _policy(api, "ns", "quiet", "pool")
    _policy(api, "ns", "dup-a", "pool", endpoint="same")
    _policy(api, "ns", "dup-b", "other", endpoint="same")
    _policy(api, "other-ns", "chat", "pool")
    scaler, src = _measuring(api)
    src.spend = {("ns", "chat"): 1.25, ("", "code-v2"): 0.5, ("other-ns", "chat"): 7.0,
                 ("ns", "same"): 3.0}  # fmt: skip
    result = scaler.tick(1000.0)
    spend = {k: p.get("status", {}).get("spendUSDPerHour") for k, p in api.policies.items()}
    assert spend == {
        ("ns", "chat"): 1.25,
        ("ns", "code"): 0.5,  # a series without namespace, for the one policy of that endpoint
        ("ns", "quiet"): 0.0,  # routers report spend, none for this endpoint: zero
        ("ns", "dup-a"): None,  # two policies of one namespace share the endpoint
        ("ns", "dup-b"): None,
        ("other-ns", "chat"): 7.0,
    }
    assert any("endpoint same" in s for s in result.skipped)
    assert api.pools[("ns", "pool")]["status"]["measured"]["spendUSDPerHour"] == 1.75
    # A move under 5% is not written; a larger one is, and the pool's sum with it.
    n = len(api.writes)
    src.spend = {**src.spend, ("ns", "chat"): 1.3}
    scaler.tick(1005.0)
    assert len(api.writes) == n
    src.spend = {**src.spend, ("ns", "chat"): 2.5}
    scaler.tick(1010.0)
    assert api.policies[("ns", "chat")]["status"]["spendUSDPerHour"] == 2.5
    assert api.pools[("ns", "pool")]["status"]["measured"]["spendUSDPerHour"] == 3.0
    # Spend unreadable: nothing written, the last rates stay.
    src.spend = None
    n = len(api.writes)
    scaler.tick(1015.0)
    assert len(api.writes) == n
    assert api.policies[("ns", "chat")]["status"]["spendUSDPerHour"] == 2.5


def test_spend_rate_moves() -> None:
    assert _moved(None, 0.0) and _moved("x", 1.0)
    assert not _moved(1.0, None)
    assert not _moved(10.0, 10.4) and _moved(10.0, 10.6)
    assert not _moved(0.0, 0.01) and _moved(0.0, 0.02)


def test_reporting_failures_do_not_stop_decisions() -> None:
    api = FakeApi()
    _seed(api)
    _policy(api, "ns", "chat", "pool")
    scaler, src = _measuring(api)
    src.spend = {("ns", "chat"): 1.0}

    def forbidden(namespace: str | None) -> list[dict[str, Any]]:
        raise RuntimeError("403: cannot list routingpolicies")

    def broken(namespace: str, name: str, status: dict[str, Any]) -> None:
        raise RuntimeError("500")

    api.list_policies = forbidden  # type: ignore[method-assign]
    api.patch_pool_status = broken  # type: ignore[method-assign]
    result = scaler.tick(1000.0)
    assert ("ns", "auto") in result.decisions
    assert result.status_written  # the models' status is still written
    assert not result.pools_measured and not result.spend_written


def test_views_carry_the_measured_decode_speed_and_kv_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 300 generated tokens/s over 10 running sequences: 30 tokens/s each, which sets how
    # long requests stay on a replica in the SLO model; no sequence running: unknown.
    # The KV cache's size (vLLM's cache_config_info) reaches the view; unread: unknown.
    from tokenyard.autoscaler import loop

    seen: dict[str, Any] = {}
    real = loop.decide_pool

    def spy(pool: Any, views: Any, *args: Any, **kwargs: Any) -> Any:
        seen.update(views)
        return real(pool, views, *args, **kwargs)

    monkeypatch.setattr(loop, "decide_pool", spy)
    api = FakeApi()
    _seed(api)
    busy = ModelSignals(
        observed_at=0, running=10, generation_tokens_per_s=300.0, kv_cache_tokens=60_000.0
    )
    idle = ModelSignals(observed_at=0, running=0, generation_tokens_per_s=0.0)
    Autoscaler(api, StaticSignalSource({"auto": busy, "manual": idle}),
               AutoscalerSettings()).tick(1000.0)  # fmt: skip
    assert seen["auto"].decode_tokens_per_s == pytest.approx(30.0)
    assert seen["manual"].decode_tokens_per_s is None
    assert seen["auto"].kv_cache_tokens == 60_000.0
    assert seen["manual"].kv_cache_tokens is None
    # Status shows the size the SLO model sized with (kubectl get md -o yaml).
    assert api.models[("ns", "auto")]["status"]["autoscaling"]["kvCacheTokens"] == 60_000
    assert "kvCacheTokens" not in api.models[("ns", "manual")]["status"].get("autoscaling", {})
    # A tick that misses the size keeps the last one read.
    scaler = Autoscaler(api, StaticSignalSource({"auto": busy}), AutoscalerSettings())
    scaler.tick(1000.0)
    scaler.signals = StaticSignalSource({"auto": replace(busy, kv_cache_tokens=None)})
    scaler.tick(1030.0)
    assert seen["auto"].kv_cache_tokens == 60_000.0
    assert busy.decode_tokens_per_sequence == pytest.approx(30.0)
    assert ModelSignals(observed_at=0, running=0.5, generation_tokens_per_s=9.0)\
        .decode_tokens_per_sequence is None  # fmt: skip


def test_deleted_models_are_forgotten() -> None:
    # A model the API no longer lists loses its hysteresis state and KV size, so a
    # long-running autoscaler on a cluster whose models come and go does not grow; the
    # models still listed keep theirs.
    api = FakeApi()
    _seed(api)
    busy = ModelSignals(observed_at=0, running=25, kv_cache_tokens=60_000.0)
    scaler = Autoscaler(api, StaticSignalSource({"auto": busy, "manual": busy}),
                        AutoscalerSettings())  # fmt: skip
    scaler.tick(1000.0)
    assert set(scaler.states) == {("ns", "auto"), ("ns", "manual")}
    assert set(scaler.kv_sizes) == {("ns", "auto"), ("ns", "manual")}
    scaler.forecasts.fits[("ns", "auto")] = scaler.forecasts.fits[("ns", "gone")] = None  # type: ignore[assignment]
    del api.models[("ns", "auto")]
    scaler.tick(1030.0)
    assert set(scaler.states) == {("ns", "manual")}
    assert set(scaler.kv_sizes) == {("ns", "manual")}
    assert scaler.forecasts.fits == {}
    # Listed again, it starts afresh (the first decision of a new model).
    api.models[("ns", "auto")] = copy.deepcopy(api.models[("ns", "manual")])
    api.models[("ns", "auto")]["metadata"]["name"] = "auto"
    scaler.tick(1060.0)
    assert ("ns", "auto") in scaler.states


def test_the_signal_source_is_told_each_models_ttft_slo() -> None:
    # Which first tokens are late is the model's SLO's to say: the loop passes
    # spec.autoscaling.ttftSLOSeconds (default 2 s) with each model's series, and the
    # decision keeps the measured attainment between ticks.
    refs: list[Any] = []

    class Recording(StaticSignalSource):
        def model_signals(self, models: Any, now: float) -> dict[str, ModelSignals]:
            refs[:] = models
            return super().model_signals(models, now)

    api = FakeApi()
    _seed(api)
    api.models[("ns", "auto")]["spec"]["autoscaling"]["ttftSLOSeconds"] = 5.0
    busy = ModelSignals(observed_at=0, running=5, first_tokens_per_s=4.0,
                        late_first_tokens_per_s=0.0)  # fmt: skip
    scaler = Autoscaler(api, Recording({"auto": busy, "manual": busy}), AutoscalerSettings())
    scaler.tick(1000.0)
    scaler.tick(1030.0)
    slos = {r.name: r.ttft_slo_s for r in refs}
    assert slos == {"auto": 5.0, "manual": 2.0}
    assert [a[1:] for a in scaler.states[("ns", "auto")].attained] == [(4.0, 0.0), (4.0, 0.0)]
