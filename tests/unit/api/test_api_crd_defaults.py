"""Every default in the generated CRDs passes what the API server checks when the CRD
itself is created: pruned, valid against its schema, and every CEL rule below it holds
for the default as written (nested defaults are not applied to it first).

A real kube-apiserver rejected the whole ModelDeployment CRD because
``spec.autoscaling`` defaulted to ``{}`` while its rule reads ``self.minReplicas``;
kmock, which validates nothing, accepted it. These tests run the server's check offline.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import tokenyard_crdcheck as crdcheck
import yaml

from tokenyard.api.crd import build_crds

CRDS = {c["spec"]["names"]["kind"]: c for c in build_crds()}
AUTOSCALING = ("spec", "autoscaling")


def _node(crd: dict[str, Any], *path: str) -> dict[str, Any]:
    node: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in path:
        node = node["properties"][key]
    return node


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_generated_defaults_pass_the_servers_crd_validation(kind: str) -> None:
    assert crdcheck.crd_default_errors(CRDS[kind]) == []


def test_the_default_that_a_real_server_rejected_is_caught() -> None:
    """The CRD as generated before the fix: ``autoscaling: {default: {}}``."""
    crd = copy.deepcopy(CRDS["ModelDeployment"])
    _node(crd, *AUTOSCALING)["default"] = {}
    errors = crdcheck.crd_default_errors(crd)
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].default: "
    ), errors
    assert "minReplicas must be <= maxReplicas" in errors[0]
    assert "no such member" in errors[0]


def test_a_default_that_breaks_a_rule_below_it_is_caught() -> None:
    """Rules of nested schemas run on the default too: a complete default whose nested
    value breaks a rule is rejected with the nested path named."""
    crd = copy.deepcopy(CRDS["ModelDeployment"])
    default = _node(crd, *AUTOSCALING)["default"]
    default["minReplicas"], default["maxReplicas"] = 3, 2
    (error,) = crdcheck.crd_default_errors(crd)
    assert "minReplicas must be <= maxReplicas" in error


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(unknownField=1), "must not have unknown fields"),
        (lambda d: d.update(minReplicas=-1), "minimum"),
        (lambda d: d.update(mode="Sometimes"), "is not one of"),
    ],
    ids=["unknown-field", "below-minimum", "not-in-enum"],
)
def test_defaults_must_be_pruned_and_schema_valid(mutate: Any, expected: str) -> None:
    crd = copy.deepcopy(CRDS["ModelDeployment"])
    mutate(_node(crd, *AUTOSCALING)["default"])
    errors = crdcheck.crd_default_errors(crd)
    assert any(expected in e for e in errors), errors


def test_scalar_defaults_are_checked() -> None:
    crd = copy.deepcopy(CRDS["ModelDeployment"])
    _node(crd, "spec", "tier")["default"] = "premium"
    (error,) = crdcheck.crd_default_errors(crd)
    assert error.startswith("spec.validation.openAPIV3Schema.properties[spec].properties[tier]")


def test_defaults_under_additional_properties_are_forbidden() -> None:
    crd = copy.deepcopy(CRDS["ModelDeployment"])
    spec = _node(crd, "spec")
    spec["properties"]["labelsForTest"] = {
        "type": "object",
        "additionalProperties": {"type": "string", "default": "x"},
    }
    errors = crdcheck.crd_default_errors(crd)
    assert any("additionalProperties: Forbidden" in e for e in errors), errors


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_object_defaults_are_complete(kind: str) -> None:
    """A nested object's default holds every field that has a default of its own, so
    a rule may read any of them without has(): what the server stores for an absent
    object equals what it stores for an empty one."""
    schema = crdcheck.schema_of(kind)
    for path, node in _defaulted_objects(schema):
        assert node["default"] == crdcheck.apply_defaults({}, node), path


def _defaulted_objects(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    object_default = schema.get("type") == "object" and isinstance(schema.get("default"), dict)
    if object_default and schema.get("properties"):
        found.append((path, schema))
    for key, sub in schema.get("properties", {}).items():
        found.extend(_defaulted_objects(sub, f"{path}.{key}"))
    if isinstance(schema.get("items"), dict):
        found.extend(_defaulted_objects(schema["items"], f"{path}[*]"))
    return found


def test_committed_crds_pass_too() -> None:
    """What `helm install` and `kubectl apply -f crds/` send (the drift test keeps these
    equal to the generated ones; this names the server's error if they ever differ)."""
    for path in sorted((crdcheck.REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crdcheck.crd_default_errors(crd) == [], path.name
