"""The reconciler against an in-memory API: passes are idempotent, write only on change,
and report what they cannot do."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.operator.factories import NS, external_doc, model_doc, policy_doc, pool_doc

from tokenyard.operator.controller import (
    Controller,
    DictStore,
    MissingCRDs,
    WorkQueue,
    namespace_key,
    parse,
    pool_key,
)
from tokenyard.operator.kube import (
    CLAIMS,
    CONFIGMAPS,
    MODELS,
    POLICIES,
    POOLS,
    RAY_SERVICES,
    SECRETS,
    FakeKubeApi,
)
from tokenyard.routing.learned.model import content_version
from tokenyard.settings import OperatorSettings

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


class World:
    """A store and an API server that agree (the store is what the watches saw)."""

    def __init__(self, *, crd: bool = True) -> None:
        served = {POOLS, MODELS, POLICIES, SECRETS, CLAIMS, CONFIGMAPS} | (
            {RAY_SERVICES} if crd else set()
        )
        self.api = FakeKubeApi(served=served)
        self.store = DictStore()
        self.now = T0
        self.ctrl = Controller(
            self.api, self.store, OperatorSettings(retry_delay_s=1), clock=lambda: self.now
        )

    def add(self, *docs: dict[str, Any]) -> None:
        for d in docs:
            res = {"ServingPool": POOLS, "ModelDeployment": MODELS, "RoutingPolicy": POLICIES}.get(
                d["kind"]
            )
            if res is None:
                self.api.put(CONFIGMAPS if d["kind"] == "ConfigMap" else SECRETS, d)
                continue
            self.api.put(res, d)
            group = {
                POOLS: self.store.pool_bodies,
                MODELS: self.store.model_bodies,
                POLICIES: self.store.policy_bodies,
            }[res]
            group[:] = [b for b in group if b["metadata"]["name"] != d["metadata"]["name"]] + [d]

    def sync(self) -> None:
        """Let the store see what the API server has now (the watch events)."""
        for res, group in (
            (POOLS, self.store.pool_bodies),
            (MODELS, self.store.model_bodies),
            (POLICIES, self.store.policy_bodies),
        ):
            group[:] = [
                self.api.objects[(res, NS, b["metadata"]["name"])]
                for b in group
                if (res, NS, b["metadata"]["name"]) in self.api.objects
            ]

    def obj(self, res: Any, name: str) -> dict[str, Any]:
        return self.api.objects[(res, NS, name)]

    async def settle(self) -> None:
        """Reconcile until statuses stop changing (what the operator's event loop does)."""
        for _ in range(5):
            self.ctrl.enqueue_pool(NS, "gpu-pool", 0)
            self.ctrl.enqueue_namespace(NS, 0)
            await self.ctrl.drain()
            self.sync()

    def writes(self) -> list[tuple[str, str, str, str]]:
        return [c for c in self.api.calls if c[0] not in ("get", "discover")]


def secret(name: str = "provider-key", key: str = "apiKey") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {key: "c2stc2VjcmV0"},
    }


def ready(obj: dict[str, Any]) -> tuple[str, str]:
    c = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return c["status"], c["reason"]


async def test_pass_creates_then_converges_to_no_writes() -> None:
    w = World()
    w.add(
        pool_doc(),
        model_doc("economy"),
        external_doc(),
        policy_doc(targets=("economy", "provider")),
        secret(),
    )
    await w.settle()
    rs = w.obj(RAY_SERVICES, "gpu-pool")
    assert rs["metadata"]["ownerReferences"][0]["uid"] == "uid-pool"
    assert ready(w.obj(MODELS, "economy")) == ("False", "Deploying")
    assert ready(w.obj(MODELS, "provider")) == ("True", "ExternalProvider")
    assert w.obj(POLICIES, "chat")["status"]["readyTargets"] == "1/2"
    assert w.obj(POOLS, "gpu-pool")["status"]["gpus"] == "l4 1/4, h100 0/8"
    assert w.ctrl.stats.created == 1

    # Nothing changed: a further pass reads but writes nothing (no status, no RayService).
    w.api.calls.clear()
    await w.settle()
    assert w.writes() == []

    # KubeRay reports the app running: the status flows back, once.
    await w.api.patch(
        RAY_SERVICES,
        NS,
        "gpu-pool",
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "NonZeroServeEndpoints",
                        "message": "",
                    }
                ],
                "activeServiceStatus": {
                    "applicationStatuses": {"model-economy": {"status": "RUNNING"}}
                },
            }
        },
    )
    w.now = T0 + datetime.timedelta(minutes=5)
    await w.settle()
    assert ready(w.obj(MODELS, "economy")) == ("True", "Running")
    assert ready(w.obj(POOLS, "gpu-pool")) == ("True", "Running")
    assert w.obj(POLICIES, "chat")["status"]["readyTargets"] == "2/2"
    c = next(c for c in w.obj(MODELS, "economy")["status"]["conditions"] if c["type"] == "Ready")
    assert c["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    assert w.ctrl.stats.updated == 0  # status changes never touch the RayService


async def test_spec_change_patches_the_rayservice_once() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"))
    await w.settle()
    before = w.obj(RAY_SERVICES, "gpu-pool")["metadata"]["annotations"]["tokenyard.dev/spec-hash"]
    w.add(model_doc("economy", engine={"maxModelLen": 2048}))
    w.api.calls.clear()
    await w.settle()
    rs_writes = [c for c in w.writes() if c[1] == "rayservices"]
    assert rs_writes == [("patch", "rayservices", NS, "gpu-pool")]
    assert (
        w.obj(RAY_SERVICES, "gpu-pool")["metadata"]["annotations"]["tokenyard.dev/spec-hash"]
        != before
    )


async def test_invalid_members_are_skipped_and_others_served() -> None:
    w = World()
    bad = model_doc("bad")
    bad["spec"]["inCluster"]["gpusPerReplica"] = "lots"
    w.add(pool_doc(), model_doc("economy"), bad)
    await w.settle()
    rs = w.obj(RAY_SERVICES, "gpu-pool")
    assert "model-economy" in rs["spec"]["serveConfigV2"]
    assert "model-bad" not in rs["spec"]["serveConfigV2"]
    # The reconciler reports it (no kopf change handler does): the field named, one Event.
    assert ready(w.obj(MODELS, "bad")) == ("False", "ValidationFailed")
    message = w.obj(MODELS, "bad")["status"]["conditions"][0]["message"]
    assert message.startswith("invalid spec: spec.inCluster.gpusPerReplica: "), message
    assert [(e[0], e[2]) for e in w.api.events if e[1] == "Warning"] == [
        ("bad", "ValidationFailed")
    ]
    assert "bad" in w.obj(POOLS, "gpu-pool")["status"]["models"]
    # A resync re-reports nothing; another broken field is a new Event.
    await w.settle()
    assert len([e for e in w.api.events if e[2] == "ValidationFailed"]) == 1


@pytest.mark.parametrize(
    ("name", "needle"),
    [("p" * 48, "at most 47 characters (48 given)"), ("1pool", "must start with a letter")],
)
async def test_a_pool_name_kuberay_refuses_gets_no_ray_service(name: str, needle: str) -> None:
    """The API server takes any DNS subdomain as the pool's name; KubeRay leaves a
    RayService of such a name unreconciled. The pool says so instead of waiting forever."""
    w = World()
    w.add(pool_doc(name), model_doc("economy", pool=name))
    for _ in range(2):
        w.ctrl.enqueue_pool(NS, name, 0)
        await w.ctrl.drain()
        w.sync()
    assert not [k for k in w.api.objects if k[0] == RAY_SERVICES]
    assert ready(w.obj(POOLS, name)) == ("False", "ValidationFailed")
    message = w.obj(POOLS, name)["status"]["conditions"][0]["message"]
    assert message.startswith("invalid spec: metadata.name: ") and needle in message, message
    assert [(e[0], e[2]) for e in w.api.events if e[1] == "Warning"] == [(name, "ValidationFailed")]
    # At 47 characters, starting with a letter, the RayService is built.
    w = World()
    ok = "p" * 47
    w.add(pool_doc(ok), model_doc("economy", pool=ok))
    w.ctrl.enqueue_pool(NS, ok, 0)
    await w.ctrl.drain()
    assert (RAY_SERVICES, NS, ok) in w.api.objects


async def test_a_model_waits_for_its_claim_and_the_others_are_served() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"), model_doc("local", source="pvc://weights/qwen"))
    await w.settle()
    assert ready(w.obj(MODELS, "local")) == ("False", "ClaimNotFound")
    message = w.obj(MODELS, "local")["status"]["conditions"][0]["message"]
    assert message.startswith("spec.inCluster.source: PersistentVolumeClaim 'weights' not found")
    rs = w.obj(RAY_SERVICES, "gpu-pool")
    assert "model-economy" in rs["spec"]["serveConfigV2"]
    assert "model-local" not in rs["spec"]["serveConfigV2"]
    assert "weights" not in json.dumps(rs["spec"]["rayClusterConfig"])
    # The claim is created: the next pass (a resync) admits the model and mounts it.
    w.api.put(CLAIMS, {"metadata": {"name": "weights", "namespace": NS}})
    await w.settle()
    rs = w.obj(RAY_SERVICES, "gpu-pool")
    assert "model-local" in rs["spec"]["serveConfigV2"]
    assert '"claimName": "weights"' in json.dumps(rs["spec"]["rayClusterConfig"])
    assert ready(w.obj(MODELS, "local"))[1] != "ClaimNotFound"


async def test_an_invalid_orphan_is_reported_too() -> None:
    w = World()
    bad = model_doc("bad", pool="nowhere")
    bad["spec"]["tier"] = "premium"
    w.add(bad)
    await w.settle()
    assert ready(w.obj(MODELS, "bad")) == ("False", "ValidationFailed")
    assert "spec.tier" in w.obj(MODELS, "bad")["status"]["conditions"][0]["message"]


async def test_the_reconciler_refuses_to_run_without_its_crds() -> None:
    w = World()
    w.api.served_resources.discard(MODELS)
    with pytest.raises(MissingCRDs, match=r"modeldeployments\.tokenyard\.dev/v1alpha1"):
        await w.ctrl.run()


async def test_gpu_limit_is_a_condition_and_a_warning_event() -> None:
    w = World()
    w.add(pool_doc(), model_doc("huge", autoscaling={"minReplicas": 5, "maxReplicas": 5}))
    await w.settle()
    assert ready(w.obj(MODELS, "huge")) == ("False", "GPULimitExceeded")
    assert "model-huge" not in w.obj(RAY_SERVICES, "gpu-pool")["spec"]["serveConfigV2"]
    warnings = [e for e in w.api.events if e[1] == "Warning"]
    assert [(e[0], e[2]) for e in warnings] == [("huge", "GPULimitExceeded")]
    assert (
        "excluded: huge (GPULimitExceeded)"
        in w.obj(POOLS, "gpu-pool")["status"]["conditions"][0]["message"]
    )


async def test_rayservice_crd_missing() -> None:
    w = World(crd=False)
    w.add(pool_doc(), model_doc("economy"))
    await w.settle()
    assert ready(w.obj(POOLS, "gpu-pool")) == ("False", "RayServiceCRDMissing")
    assert ready(w.obj(MODELS, "economy")) == ("False", "RayServiceCRDMissing")
    assert not any(c[0] == "create" for c in w.api.calls)
    # Retried later by itself:
    assert pool_key(NS, "gpu-pool") in w.ctrl.queue._due


async def test_create_conflict_patches_the_existing_object() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"))
    # A RayService created by an earlier pass whose watch event was not seen yet.
    stale = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "gpu-pool",
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/managed-by": "tokenyard",
                "tokenyard.dev/pool": "gpu-pool",
            },
            "annotations": {"tokenyard.dev/spec-hash": "old"},
        },
        "spec": {"serveConfigV2": "", "rayClusterConfig": {}},
    }
    real_get = w.api.get
    hidden = {"first": True}

    async def get_once_missing(res: Any, ns: str, name: str) -> dict[str, Any]:
        if res == RAY_SERVICES and hidden.pop("first", False):
            w.api.put(RAY_SERVICES, stale)
            from tokenyard.operator.kube import NotFound

            raise NotFound(404, "not yet")
        return await real_get(res, ns, name)

    w.api.get = get_once_missing  # type: ignore[method-assign]
    await w.settle()
    assert w.ctrl.stats.created == 0 and w.ctrl.stats.updated >= 1
    assert "model-economy" in w.obj(RAY_SERVICES, "gpu-pool")["spec"]["serveConfigV2"]


async def test_foreign_rayservice_is_left_alone() -> None:
    w = World()
    w.add(pool_doc())
    w.api.put(
        RAY_SERVICES,
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": {"name": "gpu-pool", "namespace": NS},
            "spec": {"serveConfigV2": "mine"},
        },
    )
    await w.settle()
    assert w.obj(RAY_SERVICES, "gpu-pool")["spec"] == {"serveConfigV2": "mine"}
    assert ready(w.obj(POOLS, "gpu-pool")) == ("False", "RayServiceConflict")


async def test_orphans_get_pool_not_found() -> None:
    w = World()
    w.add(
        model_doc("lost", pool="nope"),
        policy_doc(pool="nope", targets=("lost",)),
        external_doc("free", pool=None),
        secret(),
    )
    await w.settle()
    assert ready(w.obj(MODELS, "lost")) == ("False", "PoolNotFound")
    assert ready(w.obj(POLICIES, "chat")) == ("False", "PoolNotFound")
    assert ready(w.obj(MODELS, "free")) == ("True", "ExternalProvider")
    assert RAY_SERVICES not in {k[0] for k in w.api.objects}


async def test_deleted_pool_turns_members_into_orphans() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"))
    await w.settle()
    w.store.pool_bodies.clear()
    del w.api.objects[(POOLS, NS, "gpu-pool")]
    await w.settle()
    assert ready(w.obj(MODELS, "economy")) == ("False", "PoolNotFound")


def test_parse_keeps_unknown_status_fields_from_failing_the_object() -> None:
    doc = model_doc("m", status={"kopf": {"progress": {}}, "replicas": 1})
    p = parse(__import__("tokenyard.api.model", fromlist=["ModelDeployment"]).ModelDeployment, doc)
    assert p.error is None and p.obj.status.replicas == 1


def test_parse_names_the_field() -> None:
    from tokenyard.api.model import ModelDeployment

    doc = model_doc("m")
    doc["spec"]["inCluster"]["engine"]["tensorParallelSize"] = 0
    p = parse(ModelDeployment, doc)
    assert (
        p.obj is None
        and p.error is not None
        and "spec.inCluster.engine.tensorParallelSize" in p.error
    )


# --------------------------------------------------------------------------- queue


async def test_work_queue_coalesces_and_serialises_keys() -> None:
    t = [0.0]
    q = WorkQueue(clock=lambda: t[0])
    q.add("a", 1.0)
    q.add("a", 5.0)  # keeps the earlier due time
    q.add("b", 2.0)
    t[0] = 1.5
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.add("a", 0.0)  # while "a" is processed: queued again after done()
    t[0] = 2.5
    assert await asyncio.wait_for(q.get(), 1) == "b"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    q.done("a")
    assert await asyncio.wait_for(q.get(), 1) == "a"


async def test_member_events_enqueue_old_and_new_pools() -> None:
    w = World()
    w.ctrl.on_member_event("model", NS, "m", "p1", deleted=False)
    w.ctrl.on_member_event("model", NS, "m", "p2", deleted=False)
    assert {pool_key(NS, "p1"), pool_key(NS, "p2"), namespace_key(NS)} <= set(w.ctrl.queue._due)


async def test_state_claim_is_created_once_and_never_patched() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"))
    await w.settle()
    claim = w.obj(CLAIMS, "gpu-pool-router-state")
    assert claim["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
    await w.settle()
    claim_writes = [c for c in w.writes() if c[1] == "persistentvolumeclaims"]
    assert [c[0] for c in claim_writes] == ["create"], claim_writes


def _router_running(w: World) -> None:
    rs = w.obj(RAY_SERVICES, "gpu-pool")
    rs["status"] = {
        "activeServiceStatus": {
            "applicationStatuses": {"tokenyard-router": {"status": "RUNNING"}},
        },
    }


STATS = {
    "pool": "gpu-pool",
    "namespace": NS,
    "endpoints": {
        "chat": {
            "requests": 10,
            "fallbacks": 2,
            "byTarget": {"economy": 7, "provider": 3},
            "windowSeconds": 600,
            "recent": {"requests": 10, "byTarget": {"economy": 3, "provider": 1}},
            "spendUSD": 0.25,
            "spendWindow": "24h",
        }
    },
}


async def test_router_traffic_reaches_policy_status_once_the_router_runs() -> None:
    w = World()
    urls: list[str] = []

    async def fetch(url: str) -> dict[str, Any] | None:
        urls.append(url)
        return STATS

    w.ctrl.stats_fetcher = fetch
    w.add(pool_doc(), model_doc("economy"), external_doc(), secret(), policy_doc())
    await w.settle()
    assert urls == []  # no router status yet: nothing to ask
    assert "requests" not in w.obj(POLICIES, "chat")["status"]

    _router_running(w)
    await w.settle()
    assert urls and urls[0] == f"http://gpu-pool-serve-svc.{NS}.svc:8000/v1/tokenyard/stats"
    st = w.obj(POLICIES, "chat")["status"]
    assert (st["requests"], st["fallbacks"], st["spendUSD"]) == (10, 2, 0.25)
    shares = {t["model"]: (t.get("trafficShare"), t.get("requests")) for t in st["targets"]}
    assert shares["economy"] == (0.75, 7)
    assert shares["provider"] == (0.25, 3)


async def test_unreachable_router_keeps_the_last_traffic_figures() -> None:
    w = World()
    answer: dict[str, Any] | None = STATS

    async def fetch(url: str) -> dict[str, Any] | None:
        return answer

    w.ctrl.stats_fetcher = fetch
    w.add(pool_doc(), model_doc("economy"), external_doc(), secret(), policy_doc())
    await w.settle()
    _router_running(w)
    await w.settle()
    answer = None
    await w.settle()
    st = w.obj(POLICIES, "chat")["status"]
    assert st["requests"] == 10
    assert {t["model"]: t.get("trafficShare") for t in st["targets"]}["economy"] == 0.75


def test_watch_events_that_matter_to_the_render_pass_the_filter() -> None:
    w = World()
    body = model_doc("economy")
    assert w.ctrl.changed("model", NS, "economy", body)
    assert not w.ctrl.changed("model", NS, "economy", body)  # the same event again
    # Our own Ready condition coming back is no change for the render...
    ready = {**body, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert not w.ctrl.changed("model", NS, "economy", ready)
    # ...but the autoscaler's Capped condition is (spillover.downgradeWhenCapped renders it).
    capped = {
        **body,
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Capped", "status": "True", "reason": "GPUCapped"},
            ]
        },
    }
    assert w.ctrl.changed("model", NS, "economy", capped)
    assert not w.ctrl.changed("model", NS, "economy", capped)
    budget = {**capped, "status": {"conditions": [{"type": "Capped", "status": "True",
                                                   "reason": "BudgetCapped"}]}}  # fmt: skip
    assert w.ctrl.changed("model", NS, "economy", budget)
    assert w.ctrl.changed("model", NS, "economy", None)  # deleted


async def test_a_capped_model_reaches_the_router_of_a_downgrading_pool_once() -> None:
    import yaml

    w = World()
    policy = policy_doc(targets=("economy",))
    policy["spec"]["spillover"] = {"downgradeWhenCapped": True}
    w.add(pool_doc(), model_doc("economy"), policy)
    await w.settle()

    def router_models() -> list[dict[str, Any]]:
        serve = yaml.safe_load(w.obj(RAY_SERVICES, "gpu-pool")["spec"]["serveConfigV2"])
        router = next(a for a in serve["applications"] if a["name"] == "tokenyard-router")
        models: list[dict[str, Any]] = router["deployments"][0]["user_config"]["models"]
        return models

    assert "capped" not in router_models()[0]
    # The autoscaler marks the model Capped (a status write of its own).
    capped = {"type": "Capped", "status": "True", "reason": "GPUCapped", "message": "l4 full"}
    await w.api.patch(MODELS, NS, "economy", {"status": {"conditions": [capped]}})
    w.sync()
    w.api.calls.clear()
    await w.settle()
    assert router_models()[0]["capped"] == "GPUCapped"
    # The operator's own status writes keep the autoscaler's condition.
    types = {c["type"] for c in w.obj(MODELS, "economy")["status"]["conditions"]}
    assert {"Ready", "Capped"} <= types
    assert [c for c in w.writes() if c[1] == "rayservices"] == [
        ("patch", "rayservices", NS, "gpu-pool")
    ]


# --------------------------------------------------------------- learned classifier

ARTIFACT = (Path(__file__).parents[1] / "fixtures" / "difficulty-model.json").read_text()


def configmap(text: str, name: str = "difficulty-model") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": {"model.json": text},
    }


def learned_policy(**classifier: Any) -> dict[str, Any]:
    doc = policy_doc("chat", ("economy", "provider"))
    doc["spec"]["classifier"] = {
        "type": "Learned",
        "artifactRef": {"name": "difficulty-model"},
        **classifier,
    }
    return doc


def classifier_ready(obj: dict[str, Any]) -> tuple[str, str, str]:
    c = next(c for c in obj["status"]["conditions"] if c["type"] == "ClassifierReady")
    return c["status"], c["reason"], c["message"]


def user_config(w: World) -> dict[str, Any]:
    serve = yaml.safe_load(w.obj(RAY_SERVICES, "gpu-pool")["spec"]["serveConfigV2"])
    (router,) = [a for a in serve["applications"] if a["name"] == "tokenyard-router"]
    return dict(router["deployments"][0]["user_config"])


async def test_learned_classifier_missing_configmap_keeps_the_heuristic_with_a_warning() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"), external_doc(), secret(), learned_policy())
    await w.settle()
    pol = w.obj(POLICIES, "chat")
    st, reason, message = classifier_ready(pol)
    assert (st, reason) == ("False", "ArtifactUnavailable")
    assert message.startswith("spec.classifier.artifactRef: ConfigMap 'difficulty-model' not found")
    assert pol["status"]["classifier"] == {"type": "Heuristic"}
    assert ready(pol) == ("True", "TargetsReady")  # the endpoint still serves
    assert "classifier" not in user_config(w)["policies"][0]
    warnings = [e for e in w.api.events if e[1] == "Warning"]
    assert [(e[0], e[2]) for e in warnings] == [("chat", "ArtifactUnavailable")]
    assert "spec.classifier.artifactRef" in warnings[0][3]


async def test_learned_classifier_is_delivered_and_a_new_version_patches_the_router() -> None:
    w = World()
    w.add(pool_doc(), model_doc("economy"), external_doc(), secret(), learned_policy())
    w.add(configmap(ARTIFACT))
    await w.settle()
    version = json.loads(ARTIFACT)["version"]
    pol = w.obj(POLICIES, "chat")
    assert classifier_ready(pol)[:2] == ("True", "ArtifactDelivered")
    live = pol["status"]["classifier"]
    assert (live["type"], live["version"]) == ("Learned", version)
    entry = user_config(w)["policies"][0]["classifier"]
    assert (entry["version"], entry["keepStrongQuality"]) == (version, 0.95)
    assert entry["threshold"] == live["threshold"]
    assert entry["artifact"] == ARTIFACT  # the ConfigMap's text, as it is
    # A new artifact: the RayService is patched (Serve reconfigures the router), not
    # recreated, and status shows the new version.
    doc = json.loads(ARTIFACT)
    doc["calibration"]["probability"][-1] = 0.99
    doc["version"] = content_version(
        {k: doc[k] for k in ("label", "features", "heads", "calibration")}
    )
    w.api.put(CONFIGMAPS, configmap(json.dumps(doc)))
    creates = [c for c in w.writes() if c[0] == "create" and c[1] == "rayservices"]
    await w.settle()
    assert [c for c in w.writes() if c[0] == "create" and c[1] == "rayservices"] == creates
    assert user_config(w)["policies"][0]["classifier"]["version"] == doc["version"]
    assert w.obj(POLICIES, "chat")["status"]["classifier"]["version"] == doc["version"]
    # Broken artifact: back to the heuristic, with the reason.
    w.api.put(CONFIGMAPS, configmap("{not json"))
    await w.settle()
    st, reason, message = classifier_ready(w.obj(POLICIES, "chat"))
    assert (st, reason) == ("False", "ArtifactUnavailable")
    assert "key 'model.json': the artifact is not JSON" in message
    assert "classifier" not in user_config(w)["policies"][0]
    assert w.obj(POLICIES, "chat")["status"]["classifier"] == {"type": "Heuristic"}


async def test_lora_adapters_reach_the_router_and_every_status() -> None:
    # Issue 14: an adapter target MODEL:ADAPTER resolves to its ModelDeployment (also in
    # another pool's policy, as an orphan's), renders into the router's catalogue, and the
    # model reports each adapter.
    w = World()
    md = model_doc("economy")
    md["spec"]["inCluster"]["loraAdapters"] = [{"name": "sql", "source": "file:///a/sql"}]
    w.add(
        pool_doc(),
        md,
        policy_doc(targets=("economy:sql", "economy")),
        policy_doc("typo", targets=("economy:nope",)),
        policy_doc("elsewhere", pool="nope", targets=("economy:sql",)),
    )
    await w.settle()
    rs = w.obj(RAY_SERVICES, "gpu-pool")
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    router = next(a for a in serve["applications"] if a["name"] == "tokenyard-router")
    catalogue = {m["name"]: m for m in router["deployments"][0]["user_config"]["models"]}
    assert catalogue["economy:sql"]["servedModelName"] == "sql"
    assert catalogue["economy:sql"]["app"] == "model-economy"
    adapters = w.obj(MODELS, "economy")["status"]["adapters"]
    assert [(a["name"], a["target"], a["ready"]) for a in adapters] == [
        ("sql", "economy:sql", False)  # not ready while the model is Deploying
    ]
    chat = w.obj(POLICIES, "chat")["status"]
    assert [t["model"] for t in chat["targets"]] == ["economy:sql", "economy"]
    assert ready(w.obj(POLICIES, "chat")) == ("False", "NoReadyTargets")
    assert ready(w.obj(POLICIES, "typo")) == ("False", "TargetNotFound")
    assert ready(w.obj(POLICIES, "elsewhere")) == ("False", "PoolNotFound")
    assert w.obj(POLICIES, "elsewhere")["status"]["targets"][0]["location"] == "model-economy"
