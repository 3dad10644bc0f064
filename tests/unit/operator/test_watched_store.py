"""The reconciler's store: watch events and a start-up LIST, in any order, give the
objects as the API server last had them, trimmed to what a pass reads."""

from __future__ import annotations

from typing import Any

from tokenyard.operator.store import TOMBSTONES, WatchedStore, trim

NS = "team-a"


def model(name: str, rv: int | None, pool: str = "gpu", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"u-{name}"}
    if rv is not None:
        meta["resourceVersion"] = str(rv)
    meta["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    meta["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
    return {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": meta,
        "spec": {"pool": pool, **spec},
        "status": {"replicas": 1},
    }


def test_trim_keeps_what_a_pass_reads_and_nothing_else() -> None:
    t = trim(model("m", 7, tier="economy"))
    assert t["metadata"] == {"name": "m", "namespace": NS, "uid": "u-m", "resourceVersion": "7"}
    assert t["spec"] == {"pool": "gpu", "tier": "economy"}
    assert t["status"] == {"replicas": 1}


def test_models_by_pool_follow_pool_changes_and_deletes() -> None:
    s = WatchedStore()
    s.apply("model", NS, "a", model("a", 1))
    s.apply("model", NS, "b", model("b", 2))
    s.apply("model", NS, "c", model("c", 3, pool="other"))
    assert [m["metadata"]["name"] for m in s.models_of_pool(NS, "gpu")] == ["a", "b"]
    assert s.pool_refs(NS) == {"gpu", "other"}
    s.apply("model", NS, "b", model("b", 4, pool="other"))
    assert [m["metadata"]["name"] for m in s.models_of_pool(NS, "other")] == ["b", "c"]
    s.apply("model", NS, "a", None)
    assert s.models_of_pool(NS, "gpu") == []
    assert s.pool_refs(NS) == {"other"}
    assert s.model(NS, "a") is None
    assert s.models_of_pool("elsewhere", "other") == []


def test_an_older_event_changes_nothing() -> None:
    s = WatchedStore()
    assert s.apply("model", NS, "a", model("a", 10, tier="frontier"))
    assert not s.apply("model", NS, "a", model("a", 9, tier="economy"))
    assert s.model(NS, "a")["spec"]["tier"] == "frontier"  # type: ignore[index]


def test_a_deleted_object_does_not_come_back_with_an_event_from_before() -> None:
    s = WatchedStore()
    s.apply("model", NS, "a", model("a", 10))
    s.apply("model", NS, "a", None)
    assert not s.apply("model", NS, "a", model("a", 10))
    assert s.model(NS, "a") is None
    # Created again under the same name: a newer version.
    assert s.apply("model", NS, "a", model("a", 12))
    assert s.model(NS, "a") is not None


def test_without_resource_versions_the_latest_event_wins() -> None:
    """The emulator the integration tests use sets none."""
    s = WatchedStore()
    s.apply("model", NS, "a", model("a", None, tier="frontier"))
    s.apply("model", NS, "a", model("a", None, tier="economy"))
    assert s.model(NS, "a")["spec"]["tier"] == "economy"  # type: ignore[index]


def test_seed_adds_updates_and_drops_what_the_list_does_not_hold() -> None:
    s = WatchedStore()
    s.apply("model", NS, "old", model("old", 5))  # deleted before the list was taken
    s.apply("model", NS, "new", model("new", 30))  # created after it
    s.apply("model", NS, "kept", model("kept", 8, tier="economy"))
    s.seed("model", [model("kept", 9, tier="frontier"), model("listed", 7)], "20")
    names = {m["metadata"]["name"] for m in s.models_of_pool(NS, "gpu")}
    assert names == {"new", "kept", "listed"}
    assert s.model(NS, "kept")["spec"]["tier"] == "frontier"  # type: ignore[index]
    # And the dropped one's stale events stay out.
    assert not s.apply("model", NS, "old", model("old", 5))


def test_seed_of_one_kind_leaves_the_others() -> None:
    s = WatchedStore()
    s.apply("pool", NS, "gpu", {"metadata": {"name": "gpu", "namespace": NS}, "spec": {}})
    s.apply("model", NS, "a", model("a", 1))
    s.seed("policy", [], "5")
    assert s.pools() == [(NS, "gpu")]
    assert s.count("model") == 1


def test_tombstones_are_bounded() -> None:
    s = WatchedStore()
    for i in range(TOMBSTONES + 50):
        s.apply("model", NS, f"m{i}", model(f"m{i}", i + 1))
        s.apply("model", NS, f"m{i}", None)
    assert len(s._gone) == TOMBSTONES
    assert s.count("model") == 0


async def test_the_reconciler_syncs_the_store_page_by_page_before_any_pass() -> None:
    """After a restart the first pass must see every model of a pool, not the part of
    them the watch has delivered so far: run() LISTs each kind (in pages) first."""
    from tests.unit.operator.factories import model_doc, pool_doc

    from tokenyard.operator.controller import Controller
    from tokenyard.operator.kube import (
        CLAIMS,
        MODELS,
        POLICIES,
        POOLS,
        RAY_SERVICES,
        SECRETS,
        FakeKubeApi,
    )
    from tokenyard.settings import OperatorSettings

    api = FakeKubeApi(served={POOLS, MODELS, POLICIES, SECRETS, CLAIMS, RAY_SERVICES})
    api.put(POOLS, pool_doc())
    names = [f"m{i:03d}" for i in range(250)]
    for n in names:
        api.put(MODELS, model_doc(n))
    store = WatchedStore()
    # The watch has delivered one model so far, and one that is gone since.
    store.apply("model", "team-a", "m000", model_doc("m000"))
    store.apply("model", "team-a", "deleted", model_doc("deleted"))
    ctrl = Controller(api, store, OperatorSettings())
    await ctrl.sync()
    assert [c for c in api.calls if c[0] == "list" and c[1] == "modeldeployments"] == [
        ("list", "modeldeployments", "", ""),
        ("list", "modeldeployments", "", "100"),
        ("list", "modeldeployments", "", "200"),
    ]
    pool = pool_doc()["metadata"]["name"]
    ns = pool_doc()["metadata"]["namespace"]
    got = [m["metadata"]["name"] for m in store.models_of_pool(ns, pool)]
    assert got == names
    assert store.pool(ns, pool) is not None
    # The sync queues every pool; its first pass sees all 250 models (the pool's GPUs
    # admit some of them; the status counts every member).
    await ctrl.drain()
    assert (RAY_SERVICES, ns, pool) in api.objects
    assert api.objects[(POOLS, ns, pool)]["status"]["modelCount"] == len(names)


async def test_a_namespaced_operator_lists_only_its_namespaces() -> None:
    from tokenyard.operator.controller import Controller
    from tokenyard.operator.kube import FakeKubeApi
    from tokenyard.settings import OperatorSettings

    api = FakeKubeApi()
    ctrl = Controller(api, WatchedStore(), OperatorSettings(namespaces=["a", "b"]))
    await ctrl.sync()
    scopes = {(c[1], c[2]) for c in api.calls if c[0] == "list"}
    assert scopes == {(p, ns) for p in ("servingpools", "modeldeployments", "routingpolicies")
                      for ns in ("a", "b")}  # fmt: skip
