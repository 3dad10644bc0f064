"""The autoscaler against kmock's in-memory API server: scale, status, Events, Lease, owners.

kmock merges a PATCH to ``.../modeldeployments/NAME/scale`` into the whole object, which
is what a real API server does through the CRD's specReplicasPath (.spec.replicas); the
tests check both that the request went to the scale subresource and that spec.replicas
moved. The e2e suite checks the real mapping on a real API server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tokenyard.autoscaler.kube import KubernetesApi
from tokenyard.autoscaler.leader import LeaderElector
from tokenyard.autoscaler.loop import Autoscaler
from tokenyard.autoscaler.signals import ModelSignals, PoolSignals, StaticSignalSource
from tokenyard.settings import AutoscalerSettings

NS = "team-a"
GROUP_PATH = "/apis/tokenyard.dev/v1alpha1"


def _pool() -> dict[str, Any]:
    return {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "ServingPool",
        "metadata": {"name": "shared", "namespace": NS},
        "spec": {
            "accelerators": [
                {"name": "l4", "maxGPUs": 6, "hourlyCostPerGPU": 0.8},
                {"name": "h100", "maxGPUs": 8, "hourlyCostPerGPU": 4.0},
            ],
            "hourlyBudgetUSD": 100.0,
        },
        # Written by the operator; the autoscaler's status.measured must not disturb it.
        "status": {"gpus": "l4 5/6, h100 4/8", "modelCount": 5},
    }


def _policy(name: str, endpoint: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"pool": "shared", "targets": [{"model": "economy"}]}
    if endpoint:
        spec["endpoint"] = endpoint
    return {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
        "status": {"endpoint": endpoint or name, "spendUSD": 12.5},
    }


def _model(name: str, accel: str, replicas: int, **autoscaling: Any) -> dict[str, Any]:
    tp = 4 if accel == "h100" else 1
    return {
        "apiVersion": "tokenyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {
            "pool": "shared",
            "tier": "frontier" if accel == "h100" else "economy",
            "inCluster": {
                "source": f"hf://example/{name}",
                "accelerator": accel,
                "engine": {"tensorParallelSize": tp},
            },
            "replicas": replicas,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, **autoscaling},
        },
        "status": {
            "readyReplicas": replicas,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running"}],
        },
    }


@pytest.fixture
async def api(kmock: Any) -> Any:
    with warnings.catch_warnings():
        # kmock 0.8 reads its bundled resources through a deprecated importlib call.
        warnings.simplefilter("ignore", DeprecationWarning)
        kmock.resources.load_bundled()
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kmock.resources["tokenyard.dev/v1alpha1/modeldeployments"] = kmock.ResourceInfo(
        kind="ModelDeployment", namespaced=True, verbs=verbs, subresources={"status", "scale"}
    )
    kmock.resources["tokenyard.dev/v1alpha1/servingpools"] = kmock.ResourceInfo(
        kind="ServingPool", namespaced=True, verbs=verbs, subresources={"status"}
    )
    kmock.resources["tokenyard.dev/v1alpha1/routingpolicies"] = kmock.ResourceInfo(
        kind="RoutingPolicy", namespaced=True, verbs=verbs, subresources={"status"}
    )
    cfg = client.Configuration()
    cfg.host = str(kmock.url).rstrip("/")
    co = client.CustomObjectsApi(client.ApiClient(cfg))

    def seed() -> None:
        co.create_namespaced_custom_object("tokenyard.dev", "v1alpha1", NS, "servingpools", _pool())
        for body in (
            _model("economy", "l4", 1, targetOngoingRequests=10, priority=0),
            _model("frontier", "h100", 1, targetOngoingRequests=10, priority=10),
            _model("pinned", "l4", 1, mode="Manual"),
            _model("hpa-owned", "l4", 1, mode="External"),
            _model("dark", "l4", 2),
        ):
            co.create_namespaced_custom_object(
                "tokenyard.dev", "v1alpha1", NS, "modeldeployments", body
            )
        for body in (_policy("chat"), _policy("code", endpoint="code-v2")):
            co.create_namespaced_custom_object(
                "tokenyard.dev", "v1alpha1", NS, "routingpolicies", body
            )

    await asyncio.to_thread(seed)
    return KubernetesApi(client.ApiClient(cfg))


def _signals() -> StaticSignalSource:
    busy = ModelSignals(observed_at=0, running=20, waiting=30, kv_cache_usage=0.5)
    src = StaticSignalSource(
        {
            "economy": busy,  # asks 4 (maxReplicas); the l4 class has room for 2
            "frontier": ModelSignals(observed_at=0, running=8, waiting=7),
            "pinned": busy,
            "hpa-owned": busy,
            # "dark" has no signals: MetricsUnavailable, hold.
        }
    )
    src.pools[(NS, "shared")] = PoolSignals(
        gpus_in_use={"l4": 5.0, "h100": 4.0}, gpu_utilization={"l4": 0.42, "h100": 0.9}
    )
    src.spend = {(NS, "chat"): 3.5, (NS, "code-v2"): 0.25, ("other", "chat"): 99.0}
    return src


def _obj(kmock: Any, name: str, plural: str = "modeldeployments") -> dict[str, Any]:
    for (res, ns, n), obj in kmock.objects.items():
        if res.plural == plural and ns == NS and n == name:
            return dict(obj.raw)
    raise KeyError(name)


def _paths(kmock: Any, method: str) -> list[str]:
    return [r.url.path for r in list(kmock) if str(r.method).endswith(method)]


def _cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_writes_scale_and_status_and_respects_owners(kmock: Any, api: Any) -> None:
    scaler = Autoscaler(api, _signals(), AutoscalerSettings(namespaces=[NS]))
    result = await asyncio.to_thread(scaler.tick, 1_000_000.0)
    assert not result.skipped

    scale_patches = [p for p in _paths(kmock, "PATCH") if p.endswith("/scale")]
    assert sorted(scale_patches) == [
        f"{GROUP_PATH}/namespaces/{NS}/modeldeployments/economy/scale",
        f"{GROUP_PATH}/namespaces/{NS}/modeldeployments/frontier/scale",
    ]
    economy = _obj(kmock, "economy")
    # l4 has 6 GPUs: pinned (Manual) and hpa-owned (External) keep theirs and dark holds
    # its 2 while its metrics are missing, which leaves economy 2 of the 4 it asks for.
    assert economy["spec"]["replicas"] == 2
    assert economy["status"]["autoscaling"]["desiredReplicas"] == 2
    assert economy["status"]["autoscaling"]["reason"].startswith("GPUCapped")
    frontier = _obj(kmock, "frontier")
    assert frontier["spec"]["replicas"] == 2
    assert frontier["status"]["autoscaling"]["desiredReplicas"] == 2
    assert "SLO model" in frontier["status"]["autoscaling"]["reason"]
    assert frontier["status"]["autoscaling"]["lastScaleTime"]
    assert _cond(frontier, "MetricsAvailable")["status"] == "True"
    assert _cond(frontier, "Capped")["status"] == "False"
    assert _cond(frontier, "Ready")["reason"] == "Running"  # the operator's condition kept

    capped = _cond(economy, "Capped")
    assert capped["status"] == "True"
    assert capped["reason"] == "GPUCapped"
    assert "l4" in capped["message"]

    pinned = _obj(kmock, "pinned")
    assert pinned["spec"]["replicas"] == 1
    assert pinned["status"]["autoscaling"]["reason"].startswith("Manual")
    hpa = _obj(kmock, "hpa-owned")
    assert hpa["spec"]["replicas"] == 1
    assert hpa["status"]["autoscaling"]["reason"].startswith("External")

    dark = _obj(kmock, "dark")
    assert dark["spec"]["replicas"] == 2
    unavailable = _cond(dark, "MetricsAvailable")
    assert unavailable["status"] == "False"
    assert unavailable["reason"] == "MetricsUnavailable"

    events = [o.raw for (res, _, _), o in kmock.objects.items() if res.plural == "events"]
    assert events, "scaling must leave an Event"

    # What it measures goes to the pool's and the policies' status subresources.
    patches = _paths(kmock, "PATCH")
    assert f"{GROUP_PATH}/namespaces/{NS}/servingpools/shared/status" in patches
    assert f"{GROUP_PATH}/namespaces/{NS}/routingpolicies/chat/status" in patches
    pool = _obj(kmock, "shared", "servingpools")
    measured = pool["status"]["measured"]
    assert measured["gpus"] == "l4 5 (42%), h100 4 (90%)"
    assert measured["spendUSDPerHour"] == 3.75  # chat + code-v2, not the other namespace's
    assert pool["status"]["gpus"] == "l4 5/6, h100 4/8"  # the operator's fields kept
    chat = _obj(kmock, "chat", "routingpolicies")["status"]
    assert (chat["spendUSDPerHour"], chat["spendUSD"]) == (3.5, 12.5)
    assert _obj(kmock, "code", "routingpolicies")["status"]["spendUSDPerHour"] == 0.25

    # Same signals again: nothing changes, so nothing is written.
    before = len(_paths(kmock, "PATCH"))
    await asyncio.to_thread(scaler.tick, 1_000_005.0)
    assert len(_paths(kmock, "PATCH")) == before


async def test_manual_scale_by_user_is_not_undone(kmock: Any, api: Any) -> None:
    scaler = Autoscaler(api, _signals(), AutoscalerSettings(namespaces=[NS]))

    def user_scales() -> None:
        api.patch_scale(NS, "pinned", 3)

    await asyncio.to_thread(user_scales)
    await asyncio.to_thread(scaler.tick, 2_000_000.0)
    await asyncio.to_thread(scaler.tick, 2_000_030.0)
    assert _obj(kmock, "pinned")["spec"]["replicas"] == 3
    pinned_scales = [p for p in _paths(kmock, "PATCH") if p.endswith("pinned/scale")]
    assert len(pinned_scales) == 1  # the user's, none from the autoscaler


async def test_lease_lets_one_replica_act(kmock: Any, api: Any) -> None:
    a = LeaderElector(api, NS, "tokenyard-autoscaler", "replica-a", 30)
    b = LeaderElector(api, NS, "tokenyard-autoscaler", "replica-b", 30)
    t0 = 3_000_000.0
    assert await asyncio.to_thread(a.try_acquire, t0)
    assert not await asyncio.to_thread(b.try_acquire, t0 + 1)
    assert await asyncio.to_thread(a.try_acquire, t0 + 10)  # renews
    assert not await asyncio.to_thread(b.try_acquire, t0 + 35)  # renewed at +10
    assert await asyncio.to_thread(b.try_acquire, t0 + 41)  # expired: takes over
    assert not await asyncio.to_thread(a.try_acquire, t0 + 42)
    lease = await asyncio.to_thread(api.get_lease, NS, "tokenyard-autoscaler")
    assert lease["spec"]["holderIdentity"] == "replica-b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_cli_process_once(kmock: Any, api: Any, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url)}}],
                "users": [{"name": "u", "user": {"token": "test"}}],
                "contexts": [{"name": "c", "context": {"cluster": "kmock", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"models": {"frontier": {"running": 30, "waiting": 10}}}))
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TOKENYARD_AUTOSCALER__NAMESPACES": NS,
        "TOKENYARD_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokenyard.cli",
        "autoscaler",
        "--once",
        "--signals-file",
        str(signals),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, out.decode()
    # 40 requests in flight ask for 4 replicas; 8 H100s hold 2 of TP4.
    assert f"{NS}/frontier: 2 replicas" in out.decode()
    frontier = _obj(kmock, "frontier")
    assert frontier["spec"]["replicas"] == 2
    assert _cond(frontier, "Capped")["reason"] == "GPUCapped"
    assert _cond(_obj(kmock, "economy"), "MetricsAvailable")["status"] == "False"
