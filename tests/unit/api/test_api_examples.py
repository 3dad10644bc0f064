"""Every manifest under examples/ is one the API server and tokenyard both accept."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tokenyard_crdcheck as crdcheck
from kubernetes_validate import validate as k8s_validate

from tokenyard.api import API_VERSION
from tokenyard.api.manifests import KINDS, load, parse_object

DOCS = crdcheck.example_documents()
OURS = [(n, d) for n, d in DOCS if d.get("apiVersion") == API_VERSION]
OTHERS = [(n, d) for n, d in DOCS if d.get("apiVersion") != API_VERSION]
# The oldest Kubernetes minor the chart supports; kubernetes-validate ships its schemas.
K8S_VERSION = "1.29.0"


def test_the_examples_a_user_applies_are_all_there() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in DOCS if "local" not in _)
    assert ("ServingPool", "gpu-pool") in kinds
    assert ("RoutingPolicy", "chat") in kinds
    assert ("Secret", "provider-api-key") in kinds
    tiers = {d["spec"].get("tier") for _, d in OURS if d["kind"] == "ModelDeployment"}
    assert {"economy", "frontier"} <= tiers


@pytest.mark.parametrize(("name", "doc"), OURS, ids=[n for n, _ in OURS])
def test_example_passes_schema_and_cel(name: str, doc: dict[str, Any]) -> None:
    result = crdcheck.admit(doc)
    assert result.schema_errors == [], name
    assert result.cel_errors == [], name


@pytest.mark.parametrize(("name", "doc"), OURS, ids=[n for n, _ in OURS])
def test_example_parses_with_the_pydantic_model(name: str, doc: dict[str, Any]) -> None:
    obj = parse_object(doc, name)
    assert isinstance(obj, KINDS[doc["kind"]])


@pytest.mark.parametrize(("name", "doc"), OURS, ids=[n for n, _ in OURS])
def test_pydantic_and_server_defaults_agree(name: str, doc: dict[str, Any]) -> None:
    """The spec the operator sees (pydantic defaults) equals the one the server stores."""
    obj = parse_object(doc, name)
    server = crdcheck.admit(doc).defaulted["spec"]
    ours = obj.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert json.loads(json.dumps(server)) == _floats(ours)


def _floats(v: Any) -> Any:
    """Compare numbers by value (the server keeps 30 where pydantic writes 30.0)."""
    if isinstance(v, dict):
        return {k: _floats(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_floats(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@pytest.mark.parametrize(("name", "doc"), OTHERS, ids=[n for n, _ in OTHERS])
def test_builtin_kinds_are_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    k8s_validate(doc, K8S_VERSION, strict=True)


def test_secrets_referenced_by_models_are_in_the_examples() -> None:
    secrets = {
        (d["metadata"]["name"], key)
        for _, d in OTHERS
        if d["kind"] == "Secret"
        for key in {**d.get("data", {}), **d.get("stringData", {})}
    }
    for name, doc in OURS:
        ref = doc["spec"].get("external", {}).get("apiKeySecretRef")
        if ref:
            assert (ref["name"], ref["key"]) in secrets, name


def test_policy_targets_exist_in_the_examples() -> None:
    models = {d["metadata"]["name"] for _, d in OURS if d["kind"] == "ModelDeployment"}
    pools = {d["metadata"]["name"] for _, d in OURS if d["kind"] == "ServingPool"}
    for name, doc in OURS:
        if doc["kind"] == "RoutingPolicy":
            assert {t["model"] for t in doc["spec"]["targets"]} <= models, name
        if doc["kind"] in ("RoutingPolicy", "ModelDeployment") and "pool" in doc["spec"]:
            assert doc["spec"]["pool"] in pools, name


def test_in_cluster_models_use_accelerators_of_their_pool() -> None:
    m = load([crdcheck.EXAMPLES_DIR])
    classes = {p.metadata["name"]: {a.name for a in p.spec.accelerators} for p in m.pools}
    for md in m.models:
        if md.spec.inCluster is not None:
            assert md.spec.pool is not None
            assert md.spec.inCluster.accelerator in classes[md.spec.pool], md.metadata["name"]
