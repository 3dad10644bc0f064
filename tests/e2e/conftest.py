"""Fixtures for the e2e tests: a real API server from KUBECONFIG, the generated CRDs
installed and Established, and a unique namespace that is deleted afterwards.

Without KUBECONFIG every test here skips. With it, an unreachable cluster is an error,
not a skip: these tests exist to be run against a real API server. Use a cluster where no
tokenyard operator watches every namespace (it would write the statuses these tests
write); the tests install the CRDs themselves and start their own operator.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FIELD_MANAGER = "tokenyard-e2e"


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# The API-server emulation and invalid samples shared with tests/unit/api, and helpers.
_load("tokenyard_crdcheck", REPO / "tests" / "unit" / "api" / "crdcheck.py")
wait_for = _load("tokenyard_e2e", Path(__file__).with_name("e2eutil.py")).wait_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(300))


@dataclass
class Cluster:
    """Kubernetes API clients bound to the cluster KUBECONFIG names."""

    api_client: Any
    core: Any
    custom: Any
    apiext: Any
    rbac: Any
    authz: Any


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.skip("KUBECONFIG is not set: the e2e tests need a real API server")
    if not all(Path(p).exists() for p in path.split(os.pathsep) if p):
        pytest.skip(f"KUBECONFIG={path} does not exist")
    from kubernetes import client, config

    api_client = config.new_client_from_config()
    version = client.VersionApi(api_client)
    try:
        info = version.get_code()
    except Exception as err:  # an unreachable cluster is a failure, not a skip
        pytest.fail(f"KUBECONFIG={path} is set but its API server does not answer: {err}")
    print(f"e2e against Kubernetes {info.git_version}")
    return Cluster(
        api_client=api_client,
        core=client.CoreV1Api(api_client),
        custom=client.CustomObjectsApi(api_client),
        apiext=client.ApiextensionsV1Api(api_client),
        rbac=client.RbacAuthorizationV1Api(api_client),
        authz=client.AuthorizationV1Api(api_client),
    )


def _established(cluster: Cluster, name: str) -> bool:
    crd = cluster.apiext.read_custom_resource_definition(name)
    conditions = {c.type: c.status for c in (crd.status.conditions or [])}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Iterator[list[dict[str, Any]]]:
    """Server-side apply the generated CRDs and wait until they are Established.

    CRDs that were already there (a chart install, say) are updated but never deleted:
    deleting a CRD deletes every object of its kind in the cluster."""
    from kubernetes.client.exceptions import ApiException

    from tokenyard.api.crd import build_crds

    generated = build_crds()
    created: list[str] = []
    for crd in generated:
        name = crd["metadata"]["name"]
        try:
            cluster.apiext.read_custom_resource_definition(name)
        except ApiException as err:
            if err.status != 404:
                raise
            created.append(name)
        cluster.apiext.patch_custom_resource_definition(
            name,
            crd,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    for crd in generated:
        name = crd["metadata"]["name"]
        wait_for(f"CRD {name} Established", lambda n=name: _established(cluster, n))
    # Discovery lags Established by a moment on some servers.
    wait_for(
        "tokenyard.dev/v1alpha1 in discovery",
        lambda: _served(cluster, "tokenyard.dev", "v1alpha1", "modeldeployments"),
    )
    yield generated
    for name in created:
        cluster.apiext.delete_custom_resource_definition(name)


def _served(cluster: Cluster, group: str, version: str, plural: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        resources = cluster.custom.get_api_resources(group, version)
    except ApiException:
        return False
    return any(r.name == plural for r in resources.resources)


@pytest.fixture(scope="session")
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for this run; deleted (with all it holds) at the end."""
    name = f"tokenyard-e2e-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    cluster.core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def ray_service_crd(cluster: Cluster) -> bool:
    """Whether KubeRay's RayService CRD is installed."""
    return _served(cluster, "ray.io", "v1", "rayservices")
