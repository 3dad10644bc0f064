"""The chart's whole life on a real API server, as a user lives it: `helm install`,
`kubectl apply -f examples/`, `kubectl get` with the printer columns, `helm upgrade`
with changed values, `helm uninstall` leaving nothing of the release behind but the
CRDs and the custom resources (docs/install.md says why)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from tokenyard_e2e import REPO, tool, wait_for

from tokenyard.api import GROUP, VERSION
from tokenyard.api.crd import PRINTER_COLUMNS, build_crds

CHART = REPO / "charts" / "tokenyard"
PLURALS = {
    "ServingPool": "servingpools",
    "ModelDeployment": "modeldeployments",
    "RoutingPolicy": "routingpolicies",
}


def _run(*argv: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        list(argv),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _established(cluster: Any, name: str) -> bool:
    try:
        crd = cluster.apiext.read_custom_resource_definition(name)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    conditions = {c.type: c.status for c in (crd.status.conditions or [])}
    return conditions.get("Established") == "True"


def _exists(cluster: Any, doc: dict[str, Any], namespace: str) -> bool:
    """Whether the object a rendered manifest describes is on the server (dynamic
    client: any kind the chart renders)."""
    from kubernetes import dynamic

    client = dynamic.DynamicClient(cluster.api_client)
    api = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    meta = doc["metadata"]
    try:
        if api.namespaced:
            api.get(name=meta["name"], namespace=meta.get("namespace") or namespace)
        else:
            api.get(name=meta["name"])
    except dynamic.exceptions.NotFoundError:
        return False
    return True


@pytest.fixture
def helm_ns(cluster: Any) -> Iterator[str]:
    name = f"tokenyard-e2e-helm-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    for plural in ("routingpolicies", "modeldeployments", "servingpools"):
        try:
            items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, plural)
        except ApiException:
            continue
        for obj in items["items"]:
            try:
                cluster.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, name, plural, obj["metadata"]["name"]
                )
            except ApiException as err:
                if err.status != 404:
                    raise
    cluster.core.delete_namespace(name, propagation_policy="Background")


def test_install_apply_get_upgrade_uninstall(cluster: Any, helm_ns: str) -> None:
    helm, kubectl = tool("helm"), tool("kubectl")
    release = f"e2e{uuid.uuid4().hex[:6]}"
    crd_names = [c["metadata"]["name"] for c in build_crds()]
    crds_before = {n for n in crd_names if _established(cluster, n)}
    # Scoped to the test namespace: on a cluster with a kubelet, an operator pod that did
    # start must not act on other tests' namespaces.
    scope = f"watchNamespaces={{{helm_ns}}}"
    installed = False
    try:
        _run(helm, "install", release, str(CHART), "-n", helm_ns, "--set", scope)
        installed = True
        # Helm creates the CRDs when they are missing and leaves existing ones alone.
        for name in crd_names:
            wait_for(f"CRD {name} Established", lambda n=name: _established(cluster, n), 60)
        manifest = [
            d for d in yaml.safe_load_all(_run(helm, "get", "manifest", release, "-n", helm_ns))
            if d
        ]  # fmt: skip
        kinds = {d["kind"] for d in manifest}
        assert {"Deployment", "ServiceAccount", "Role", "RoleBinding"} <= kinds, kinds
        # Scoped to namespaces, the chart creates nothing cluster-scoped.
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, kinds
        for doc in manifest:
            assert _exists(cluster, doc, helm_ns), (doc["kind"], doc["metadata"]["name"])

        # The user's next step: the examples, then kubectl get.
        _run(kubectl, "apply", "-n", helm_ns, "-f", str(REPO / "examples"))
        for kind, plural in PLURALS.items():
            header = _run(kubectl, "get", plural, "-n", helm_ns).splitlines()[0].split()
            want = [c["name"].upper() for c in PRINTER_COLUMNS[kind] if not c.get("priority")]
            assert header == ["NAME", *[w for n in want for w in n.split()]], header
            wide = _run(kubectl, "get", plural, "-n", helm_ns, "-o", "wide").splitlines()
            for column in PRINTER_COLUMNS[kind]:
                assert column["name"].upper() in wide[0], (kind, column["name"], wide[0])
            assert len(wide) > 1, f"no {plural} listed after kubectl apply"

        # helm upgrade with changed values reaches the Deployments.
        _run(
            helm, "upgrade", release, str(CHART), "-n", helm_ns, "--reuse-values",
            "--set", "log.level=DEBUG", "--set", "autoscaler.replicas=1",
        )  # fmt: skip
        status = json.loads(_run(helm, "status", release, "-n", helm_ns, "-o", "json"))
        assert status["version"] == 2
        assert status["info"]["status"] == "deployed"
        apps = _apps(cluster)
        operator = apps.read_namespaced_deployment(f"{release}-tokenyard-operator", helm_ns)
        env = {e.name: e.value for e in operator.spec.template.spec.containers[0].env}
        assert env["TOKENYARD_LOG_LEVEL"] == "DEBUG"
        assert env["TOKENYARD_OPERATOR__NAMESPACES"] == helm_ns
        autoscaler = apps.read_namespaced_deployment(f"{release}-tokenyard-autoscaler", helm_ns)
        assert autoscaler.spec.replicas == 1

        # helm uninstall: nothing of the release is left but the CRDs and the objects.
        _run(helm, "uninstall", release, "-n", helm_ns)
        installed = False
        for doc in manifest:
            wait_for(
                f"{doc['kind']} {doc['metadata']['name']} deleted",
                lambda d=doc: not _exists(cluster, d, helm_ns),
                60,
            )
        for name in crd_names:
            assert _established(cluster, name), f"helm uninstall removed CRD {name}"
        left = cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, helm_ns, "modeldeployments"
        )["items"]
        assert {m["metadata"]["name"] for m in left} >= {"qwen-small", "llama-70b"}
    finally:
        if installed:
            subprocess.run([helm, "uninstall", release, "-n", helm_ns], timeout=120, check=False)
        # CRDs this test's install created go again (deleting one deletes its objects);
        # ones that were there before stay.
        for name in set(crd_names) - crds_before:
            try:
                cluster.apiext.delete_custom_resource_definition(name)
            except ApiException as err:
                if err.status != 404:
                    raise


def _apps(cluster: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(cluster.api_client)
