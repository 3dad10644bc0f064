"""The real operator process against a real API server: a pool and a model become a
RayService owned by the pool, which the garbage collector removes with the pool.

Needs KubeRay's RayService CRD (the KubeRay operator itself is optional: without a
kubelet no pod runs anyway, and the checks are on what the API server keeps).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tokenyard_crdcheck as crdcheck
import yaml
from kubernetes.client.exceptions import ApiException
from tokenyard_e2e import wait_for

from tokenyard.api import GROUP, VERSION
from tokenyard.contract import ROUTER_APP_NAME, model_app_name

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def operator_ns(cluster: Any, crds: list[dict[str, Any]], ray_service_crd: bool) -> Iterator[str]:
    """A namespace of its own, so deleting the pool there disturbs no other test."""
    if not ray_service_crd:
        pytest.skip("KubeRay's RayService CRD (rayservices.ray.io) is not installed")
    name = f"tokenyard-e2e-op-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    cluster.core.delete_namespace(name, propagation_policy="Background")


def _delete_tokenyard_objects(custom: Any, ns: str) -> None:
    """Delete what the test created while the operator still runs, so kopf removes its
    finalizers and the namespace does not hang in Terminating."""
    plurals = ("routingpolicies", "modeldeployments", "servingpools")
    for plural in plurals:
        for obj in custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]:
            try:
                custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, plural, obj["metadata"]["name"]
                )
            except ApiException as err:
                if err.status != 404:
                    raise

    def left() -> list[dict[str, Any]]:
        return [
            obj
            for plural in plurals
            for obj in custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
        ]

    try:
        wait_for("tokenyard objects deleted", lambda: not left(), 60)
    finally:
        # Last resort (the operator died): drop the finalizers ourselves.
        for obj in left():
            plural = {
                "ServingPool": "servingpools",
                "ModelDeployment": "modeldeployments",
                "RoutingPolicy": "routingpolicies",
            }[obj["kind"]]
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                ns,
                plural,
                obj["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )


@pytest.fixture
def operator(cluster: Any, operator_ns: str) -> Iterator[Path]:
    """`tokenyard operator` as a subprocess watching only the test namespace."""
    log = Path(tempfile.mkstemp(prefix="tokenyard-operator-", suffix=".log")[1])
    env = {
        **os.environ,
        "TOKENYARD_OPERATOR__NAMESPACES": operator_ns,
        "TOKENYARD_OPERATOR__HEALTH_PORT": str(_free_port()),
        "TOKENYARD_OPERATOR__RESYNC_INTERVAL_S": "5",
        "TOKENYARD_LOG_FORMAT": "text",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenyard.cli", "operator"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        yield log
    finally:
        _delete_tokenyard_objects(cluster.custom, operator_ns)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.unlink(missing_ok=True)


def _owned_ray_services(cluster: Any, ns: str, pool_uid: str) -> list[dict[str, Any]]:
    items = cluster.custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayservices")
    return [
        rs
        for rs in items["items"]
        if any(o.get("uid") == pool_uid for o in rs["metadata"].get("ownerReferences", []))
    ]


def test_pool_becomes_an_owned_ray_service_and_is_garbage_collected(
    cluster: Any, operator_ns: str, operator: Path
) -> None:
    ns = operator_ns
    pool = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, "servingpools", crdcheck.example("gpu-pool")
    )
    cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, "modeldeployments", crdcheck.example("qwen-small")
    )
    uid = pool["metadata"]["uid"]

    def rendered() -> dict[str, Any] | None:
        owned = _owned_ray_services(cluster, ns, uid)
        if not owned:
            return None
        serve = yaml.safe_load(owned[0]["spec"].get("serveConfigV2") or "{}") or {}
        apps = {a["name"] for a in serve.get("applications", [])}
        return owned[0] if model_app_name("qwen-small") in apps else None

    try:
        rs = wait_for("a RayService owned by the pool with the model's app", rendered, 90)
    except BaseException:
        print(operator.read_text()[-4000:])
        raise
    (owner,) = [o for o in rs["metadata"]["ownerReferences"] if o["uid"] == uid]
    assert owner["kind"] == "ServingPool"
    assert owner["name"] == "gpu-pool"
    assert owner["apiVersion"] == f"{GROUP}/{VERSION}"
    assert owner.get("controller") is True
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert ROUTER_APP_NAME in {a["name"] for a in serve["applications"]}
    groups = {g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert any("l4" in g for g in groups), groups

    rs_name = rs["metadata"]["name"]
    cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, ns, "servingpools", "gpu-pool", propagation_policy="Foreground"
    )

    def gone() -> bool:
        try:
            cluster.custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayservices", rs_name)
        except ApiException as err:
            return err.status == 404
        return False

    try:
        wait_for(f"RayService {rs_name} garbage-collected with its pool", gone, 90)
    except BaseException:
        print(operator.read_text()[-4000:])
        raise
