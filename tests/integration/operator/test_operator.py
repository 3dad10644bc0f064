"""The real operator against the kmock API emulator: apply, update, delete, invalid and
dangling input, a missing RayService CRD, and restarts."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml
from tests.integration.operator.harness import (
    MODELS,
    POLICIES,
    POOLS,
    RAYSERVICES,
    Cluster,
    declare_resources,
    load_manifests,
    operator,
    ready,
    reason,
)
from tests.unit.operator.factories import kuberay_status

pytestmark = pytest.mark.timeout(120)

NS = "llm"
ALL = ("pool.yaml", "models.yaml", "policy.yaml")


def apps(rs: dict[str, Any] | None) -> list[str]:
    if rs is None:
        return []
    return [a["name"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]]


def app(rs: dict[str, Any], name: str) -> dict[str, Any]:
    return next(
        a for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"] if a["name"] == name
    )


def spec_hash(rs: dict[str, Any] | None) -> str | None:
    return None if rs is None else rs["metadata"]["annotations"]["tokenyard.dev/spec-hash"]


async def patch_status(cluster: Cluster, name: str, body: dict[str, Any]) -> None:
    async with cluster.patch(
        f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{name}/status",
        json=body,
        headers={"Content-Type": "application/merge-patch+json"},
    ) as r:
        assert r.status < 300, await r.text()


async def test_apply_creates_rayservice_and_status_flows_back(cluster: Cluster, kmock: Any) -> None:
    async with operator(kmock):
        await cluster.apply(*load_manifests(*ALL))

        def rendered() -> Any:
            # Every object of the apply seen: 3 applications and the policy's endpoint (a
            # pass that ran before the policy's watch event renders no policy, and then
            # renders again).
            rs = cluster.get(RAYSERVICES, NS, "gpu-pool")
            if len(apps(rs)) != 3:
                return None
            user = app(rs, "tokenyard-router")["deployments"][0]["user_config"]
            return rs if [p["endpoint"] for p in user["policies"]] == ["chat"] else None

        rs = await cluster.eventually(rendered, what="RayService with 3 applications")
        assert apps(rs) == ["model-economy", "model-frontier", "tokenyard-router"]
        assert rs["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "tokenyard",
            "tokenyard.dev/pool": "gpu-pool",
        }
        assert not any(k.startswith("kopf") for k in rs["metadata"].get("annotations", {}))
        groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        assert [g["groupName"] for g in groups] == ["h100", "l4"]
        env = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "env"
        ]
        assert env == [
            # spec.router.ingress (default HAProxy): every Ray container reads it.
            {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
            {
                "name": "TOKENYARD_APIKEY_EXTERNAL",
                "valueFrom": {
                    "secretKeyRef": {"name": "provider-key", "key": "apiKey", "optional": True}
                },
            },
        ]
        router = app(rs, "tokenyard-router")["deployments"][0]["user_config"]
        assert [m["name"] for m in router["models"]] == ["economy", "external", "frontier"]
        assert [p["endpoint"] for p in router["policies"]] == ["chat"]
        # Spill-over's view: replicas from the spec, the pool's router minReplicas.
        assert [m.get("replicas") for m in router["models"]] == [1, None, 1]
        assert router["routerReplicas"] == 1

        # Before KubeRay reports anything: deploying, GPU accounting, policy 1/3 (external).
        await cluster.eventually(
            lambda: (
                (cluster.get(POLICIES, NS, "chat") or {}).get("status", {}).get("readyTargets")
                == "1/3"
            ),
            what="policy status",
        )
        pool = await cluster.eventually(
            lambda: (
                (cluster.get(POOLS, NS, "gpu-pool") or {}).get("status", {}).get("gpus")
                and cluster.get(POOLS, NS, "gpu-pool")
            ),
            what="pool status",
        )
        assert pool["status"]["gpus"] == "l4 1/8, h100 4/8"
        assert pool["status"]["models"] == ["economy", "external", "frontier"]
        assert reason(pool) == "Deploying"
        assert reason(cluster.get(MODELS, NS, "economy")) == "Deploying"
        assert reason(cluster.get(MODELS, NS, "external")) == "ExternalProvider"

        # KubeRay reports every application RUNNING: models, pool and policy become Ready.
        await patch_status(cluster, "gpu-pool", kuberay_status(rs))
        for name in ("economy", "frontier"):
            await cluster.eventually(
                lambda n=name: reason(cluster.get(MODELS, NS, n)) == "Running",
                what=f"{name} Running",
            )
        await cluster.eventually(lambda: reason(cluster.get(POOLS, NS, "gpu-pool")) == "Running")
        await cluster.eventually(
            lambda: reason(cluster.get(POLICIES, NS, "chat")) == "TargetsReady"
        )
        assert cluster.get(POLICIES, NS, "chat")["status"]["readyTargets"] == "3/3"  # type: ignore[index]
        economy = cluster.get(MODELS, NS, "economy")
        assert economy is not None and economy["status"]["readyReplicas"] == 1
        # Readiness reached status only: the serve config was not rolled again.
        assert spec_hash(cluster.get(RAYSERVICES, NS, "gpu-pool")) == spec_hash(rs)


async def test_update_and_delete_rerender(cluster: Cluster, kmock: Any) -> None:
    async with operator(kmock):
        docs = load_manifests(*ALL)
        await cluster.apply(*docs)
        rs = await cluster.eventually(
            lambda: (
                len(apps(cluster.get(RAYSERVICES, NS, "gpu-pool"))) == 3
                and cluster.get(RAYSERVICES, NS, "gpu-pool")
            )
        )
        before = spec_hash(rs)

        economy = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "economy"))
        economy["spec"]["inCluster"]["engine"]["dtype"] = "float16"
        await cluster.apply(economy)
        rs = await cluster.eventually(
            lambda: (
                spec_hash(cluster.get(RAYSERVICES, NS, "gpu-pool")) != before
                and cluster.get(RAYSERVICES, NS, "gpu-pool")
            ),
            what="spec-hash change",
        )
        engine = app(rs, "model-economy")["args"]["llm_config"]["engine_kwargs"]
        assert engine["dtype"] == "float16"

        await cluster.delete(MODELS, NS, "frontier")
        rs = await cluster.eventually(
            lambda: (
                "model-frontier" not in apps(cluster.get(RAYSERVICES, NS, "gpu-pool"))
                and cluster.get(RAYSERVICES, NS, "gpu-pool")
            ),
            what="frontier removed",
        )
        assert apps(rs) == ["model-economy", "tokenyard-router"]
        assert [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == [
            "l4"
        ]
        await cluster.eventually(
            lambda: reason(cluster.get(POLICIES, NS, "chat")) == "TargetNotFound"
        )
        msg = ready(cluster.get(POLICIES, NS, "chat"))["message"]  # type: ignore[index]
        assert "spec.targets[1].model" in msg and "frontier" in msg
        assert len(cluster.all(RAYSERVICES)) == 1


async def test_invalid_model_is_excluded_and_reported(cluster: Cluster, kmock: Any) -> None:
    async with operator(kmock):
        await cluster.apply(*load_manifests(*ALL, "invalid-model.yaml"))
        await cluster.eventually(
            lambda: reason(cluster.get(MODELS, NS, "broken")) == "ValidationFailed",
            what="ValidationFailed",
        )
        cond = ready(cluster.get(MODELS, NS, "broken"))
        assert cond is not None and cond["status"] == "False"
        assert "spec.inCluster.gpusPerReplica" in cond["message"]
        rs = await cluster.eventually(
            lambda: (
                len(apps(cluster.get(RAYSERVICES, NS, "gpu-pool"))) == 3
                and cluster.get(RAYSERVICES, NS, "gpu-pool")
            )
        )
        assert "model-broken" not in apps(rs)
        await cluster.eventually(lambda: reason(cluster.get(MODELS, NS, "economy")) == "Deploying")
        await cluster.eventually(
            lambda: any(
                e["reason"] == "ValidationFailed" and e["involvedObject"]["name"] == "broken"
                for e in cluster.all("v1/events")
            ),
            what="a ValidationFailed Event",
        )
        await cluster.eventually(
            lambda: "broken" in cluster.get(POOLS, NS, "gpu-pool")["status"]["models"],  # type: ignore[index]
            what="the invalid model listed as a pool member",
        )


async def test_missing_pool_is_reported(cluster: Cluster, kmock: Any) -> None:
    async with operator(kmock):
        await cluster.apply(*load_manifests("orphans.yaml"))
        await cluster.eventually(lambda: reason(cluster.get(MODELS, NS, "lost")) == "PoolNotFound")
        await cluster.eventually(
            lambda: reason(cluster.get(POLICIES, NS, "lost-policy")) == "PoolNotFound"
        )
        cond = ready(cluster.get(MODELS, NS, "lost"))
        assert (
            cond is not None
            and "spec.pool" in cond["message"]
            and "no-such-pool" in cond["message"]
        )
        assert cluster.all(RAYSERVICES) == []
        await cluster.eventually(
            lambda: any(e["reason"] == "PoolNotFound" for e in cluster.all("v1/events")),
            what="a PoolNotFound Event",
        )


async def test_rayservice_crd_missing(kmock: Any) -> None:
    declare_resources(kmock, rayservices=False)
    cluster = Cluster(kmock)
    async with operator(kmock) as task:
        await cluster.apply(*load_manifests(*ALL))
        await cluster.eventually(
            lambda: reason(cluster.get(POOLS, NS, "gpu-pool")) == "RayServiceCRDMissing",
            what="RayServiceCRDMissing",
        )
        await cluster.eventually(
            lambda: reason(cluster.get(MODELS, NS, "economy")) == "RayServiceCRDMissing"
        )
        await asyncio.sleep(1.5)  # a few retries later: still alive, still nothing created
        assert not task.done()
        assert cluster.all(RAYSERVICES) == []
        posts = [r for r in list(kmock) if r.method == "POST" and "rayservices" in r.url.path]
        assert posts == []


async def test_restart_mid_way_creates_no_duplicates_and_loses_nothing(
    cluster: Cluster, kmock: Any
) -> None:
    docs = load_manifests(*ALL)
    async with operator(kmock):
        await cluster.apply(*docs[:2])  # the pool and the economy model only
        await cluster.eventually(lambda: cluster.get(RAYSERVICES, NS, "gpu-pool"))

    # While the operator is down: the rest arrives and the economy model changes.
    await cluster.apply(*docs[2:])
    economy = copy.deepcopy(docs[1])
    economy["spec"]["inCluster"]["engine"]["maxModelLen"] = 4096
    await cluster.apply(economy)

    async with operator(kmock):
        rs = await cluster.eventually(
            lambda: (
                len(apps(cluster.get(RAYSERVICES, NS, "gpu-pool"))) == 3
                and cluster.get(RAYSERVICES, NS, "gpu-pool")
            ),
            what="all applications after restart",
        )
        assert (
            app(rs, "model-economy")["args"]["llm_config"]["engine_kwargs"]["max_model_len"] == 4096
        )
        await cluster.eventually(lambda: reason(cluster.get(POLICIES, NS, "chat")) is not None)

    # And once more, immediately: a restart with nothing changed writes nothing new.
    before = spec_hash(cluster.get(RAYSERVICES, NS, "gpu-pool"))
    creates_before = sum(
        1 for r in list(kmock) if r.method == "POST" and "rayservices" in r.url.path
    )
    async with operator(kmock):
        await asyncio.sleep(1.5)
    creates_after = sum(
        1 for r in list(kmock) if r.method == "POST" and "rayservices" in r.url.path
    )
    assert creates_after == creates_before == 1
    assert len(cluster.all(RAYSERVICES)) == 1
    assert spec_hash(cluster.get(RAYSERVICES, NS, "gpu-pool")) == before


async def test_liveness_endpoint_reports_the_reconciler(cluster: Cluster, kmock: Any) -> None:
    import socket

    import aiohttp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with operator(kmock, health_port=port):
        await cluster.apply(*load_manifests(*ALL))
        await cluster.eventually(lambda: cluster.get(RAYSERVICES, NS, "gpu-pool"))
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
            body = await r.json()
        assert body["reconciler"]["passes"] >= 1
        assert body["reconciler"]["errors"] == 0
