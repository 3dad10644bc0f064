"""The generated CRDs on a real API server: Established, examples accepted, invalid
samples rejected by schema or CEL with their messages, defaults as the tests assume,
status and scale subresources, printer columns."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import tokenyard_crdcheck as crdcheck
import yaml
from kubernetes.client.exceptions import ApiException
from tokenyard_e2e import rejected_at

from tokenyard.api import GROUP, VERSION
from tokenyard.api.crd import PRINTER_COLUMNS

PLURALS = {
    "ServingPool": "servingpools",
    "ModelDeployment": "modeldeployments",
    "RoutingPolicy": "routingpolicies",
}
EXAMPLES = crdcheck.example_documents()
SAMPLES = crdcheck.invalid_samples()
MERGE = "application/merge-patch+json"


def _create(cluster: Any, namespace: str, doc: dict[str, Any], dry_run: bool = False) -> Any:
    return cluster.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURALS[doc["kind"]],
        doc,
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )


def test_chart_crds_pass_the_servers_crd_validation(cluster: Any) -> None:
    """The chart's CRD files, exactly as `helm install` sends them, pass the API server's
    own CRD validation (structural schema, CEL compilation and cost, every default
    against its schema and rules). Sent as dry-run creates under a group of their own,
    so they are validated in full whether or not the real CRDs are installed."""
    for path in sorted((crdcheck.REPO / "charts" / "tokenyard" / "crds").glob("*.yaml")):
        crd = copy.deepcopy(yaml.safe_load(path.read_text()))
        group = f"dryrun.{GROUP}"
        crd["spec"]["group"] = group
        crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
        try:
            cluster.apiext.create_custom_resource_definition(crd, dry_run="All")
        except ApiException as err:
            pytest.fail(f"{path.name} rejected by the API server: {err.body}")


def test_crds_are_established(cluster: Any, crds: list[dict[str, Any]]) -> None:
    for crd in crds:
        live = cluster.apiext.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = {c.type: c.status for c in live.status.conditions}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert live.spec.names.short_names == crd["spec"]["names"]["shortNames"]


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_examples_are_accepted(
    cluster: Any, crds: list[dict[str, Any]], namespace: str, name: str, doc: dict[str, Any]
) -> None:
    if doc.get("apiVersion") == f"{GROUP}/{VERSION}":
        _create(cluster, namespace, doc, dry_run=True)
    else:
        assert doc["kind"] == "Secret", f"{name}: no e2e check for {doc['kind']}"
        cluster.core.create_namespaced_secret(namespace, doc, dry_run="All")


@pytest.mark.parametrize(("name", "doc"), SAMPLES, ids=[n for n, _ in SAMPLES])
def test_invalid_samples_are_rejected_with_their_message(
    cluster: Any, crds: list[dict[str, Any]], namespace: str, name: str, doc: dict[str, Any]
) -> None:
    by, field, message = crdcheck.expectation(doc)
    with pytest.raises(ApiException) as info:
        _create(cluster, namespace, doc, dry_run=True)
    assert info.value.status == 422, info.value.body
    body = json.loads(info.value.body)
    # The field and the message as the server returns them (details.causes), not the
    # wording a version puts around them: 'Invalid value: "object": ' up to 1.35.
    assert rejected_at(body, field, message), (by, body)


def test_server_defaults_match_the_offline_emulation(
    cluster: Any, crds: list[dict[str, Any]], namespace: str
) -> None:
    """The CEL unit tests fill defaults themselves; prove they fill the same ones."""
    for name in ("gpu-pool", "qwen-small", "chat"):
        doc = crdcheck.example(name)
        live = _create(cluster, namespace, doc, dry_run=True)
        assert live["spec"] == crdcheck.admit(doc).defaulted["spec"], name


@pytest.fixture
def model(cluster: Any, crds: list[dict[str, Any]], namespace: str) -> Iterator[str]:
    doc = crdcheck.example("qwen-small")
    doc["metadata"]["name"] = "scale-me"
    doc["spec"]["replicas"] = 1
    _create(cluster, namespace, doc)
    yield "scale-me"
    cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", "scale-me"
    )


def test_status_subresource(cluster: Any, namespace: str, model: str) -> None:
    status = {
        "observedGeneration": 1,
        "replicas": 2,
        "readyReplicas": 1,
        "selector": "tokenyard.dev/model=scale-me",
        "costPer1MTokens": 0.09,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Deploying",
                "message": "waiting",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    out = cluster.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        model,
        {"status": status},
        _content_type=MERGE,
    )
    assert out["status"]["replicas"] == 2
    assert out["status"]["conditions"][0]["reason"] == "Deploying"
    # Spec changes through /status are ignored, and status through the main endpoint.
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        model,
        {"spec": {"tier": "frontier"}},
        _content_type=MERGE,
    )
    cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        model,
        {"status": {"replicas": 7}},
        _content_type=MERGE,
    )
    live = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", model
    )
    assert live["spec"]["tier"] == "economy"
    assert live["status"]["replicas"] == 2


def test_scale_subresource(cluster: Any, namespace: str, model: str) -> None:
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        model,
        {"status": {"replicas": 1, "selector": "tokenyard.dev/model=scale-me"}},
        _content_type=MERGE,
    )
    scale = cluster.custom.get_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, "modeldeployments", model
    )
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["replicas"] == 1
    assert scale["status"]["selector"] == "tokenyard.dev/model=scale-me"
    cluster.custom.patch_namespaced_custom_object_scale(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        model,
        {"spec": {"replicas": 3}},
        _content_type=MERGE,
    )
    live = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "modeldeployments", model
    )
    assert live["spec"]["replicas"] == 3
    # A scale write is an update of the object, so the CEL rules still hold: 9 is
    # outside autoscaling.maxReplicas (4) while the tokenyard autoscaler owns replicas.
    with pytest.raises(ApiException) as info:
        cluster.custom.patch_namespaced_custom_object_scale(
            GROUP,
            VERSION,
            namespace,
            "modeldeployments",
            model,
            {"spec": {"replicas": 9}},
            _content_type=MERGE,
        )
    assert info.value.status == 422
    assert "replicas must lie within" in json.loads(info.value.body)["message"]


def test_printer_columns_are_served(cluster: Any, namespace: str, model: str) -> None:
    for kind, plural in PLURALS.items():
        live = cluster.apiext.read_custom_resource_definition(f"{plural}.{GROUP}")
        served = [c.name for c in live.spec.versions[0].additional_printer_columns]
        assert served == [c["name"] for c in PRINTER_COLUMNS[kind]]
    response = cluster.custom.list_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        _headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        _preload_content=False,
    )
    table = json.loads(response.data)
    assert table["kind"] == "Table"
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name"] + [c["name"] for c in PRINTER_COLUMNS["ModelDeployment"]]
    (row,) = [r for r in table["rows"] if r["cells"][0] == model]
    cells = dict(zip(names, row["cells"], strict=True))
    assert cells["Tier"] == "economy"
    assert cells["Accelerator"] == "l4"


def test_autoscaler_measurements_survive_the_schema(
    cluster: Any, crds: list[dict[str, Any]], namespace: str
) -> None:
    """The autoscaler's own writes of what it measured (pool status.measured, policy
    status.spendUSDPerHour) go through the real status subresources, are kept by the
    structural schema (not pruned) and leave the operator's fields alone."""
    from tokenyard.autoscaler.kube import KubernetesApi
    from tokenyard.autoscaler.loop import Autoscaler
    from tokenyard.autoscaler.signals import PoolSignals, StaticSignalSource
    from tokenyard.settings import AutoscalerSettings

    pool, policy = crdcheck.example("gpu-pool"), crdcheck.example("chat")
    _create(cluster, namespace, pool)
    _create(cluster, namespace, policy)
    try:
        cluster.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "servingpools", "gpu-pool",
            {"status": {"gpus": "l4 1/8", "modelCount": 1}}, _content_type=MERGE,
        )  # fmt: skip
        classes = [a["name"] for a in pool["spec"]["accelerators"]]
        src = StaticSignalSource()
        src.pools[(namespace, "gpu-pool")] = PoolSignals(
            gpus_in_use={classes[0]: 1.0}, gpu_utilization={classes[0]: 0.5}
        )
        src.spend = {(namespace, "chat"): 2.5}
        scaler = Autoscaler(
            KubernetesApi(cluster.api_client), src, AutoscalerSettings(namespaces=[namespace])
        )
        result = scaler.tick(1_700_000_000.0)
        assert (namespace, "gpu-pool") in result.pools_measured
        live = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "servingpools", "gpu-pool"
        )
        measured = live["status"]["measured"]
        assert measured["accelerators"][0] == {
            "name": classes[0], "gpusInUse": 1, "gpuUtilizationPercent": 50
        }  # fmt: skip
        assert measured["spendUSDPerHour"] == 2.5
        assert measured["lastChangeTime"] == "2023-11-14T22:13:20Z"
        assert live["status"]["gpus"] == "l4 1/8"
        rp = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "routingpolicies", "chat"
        )
        assert rp["status"]["spendUSDPerHour"] == 2.5
    finally:
        for plural, name in (("routingpolicies", "chat"), ("servingpools", "gpu-pool")):
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
