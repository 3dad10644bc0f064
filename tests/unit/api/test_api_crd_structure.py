"""The generated CRD schemas are structural, as the API server demands, and CEL-costable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tokenyard.api.crd import build_crds

CRDS = {c["spec"]["names"]["kind"]: c for c in build_crds()}
KINDS = sorted(CRDS)
# The only keys a structural CRD schema node may carry here (OpenAPI v3.0 subset).
ALLOWED_KEYS = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "nullable",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", node
    for key, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{*}}")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    for path, node in _nodes(_schema(kind)):
        assert set(node) <= ALLOWED_KEYS, f"{kind}{path}: {set(node) - ALLOWED_KEYS}"
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert node.get("additionalProperties") is not False, f"{kind}{path}"
        assert "type" in node, f"{kind}{path}: every property needs a type"
        if "additionalProperties" in node:
            assert "properties" not in node, f"{kind}{path}: properties and a map at once"
            assert isinstance(node["additionalProperties"], dict), f"{kind}{path}"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object", f"{kind}{path}"


@pytest.mark.parametrize("kind", KINDS)
def test_list_types_are_well_formed(kind: str) -> None:
    for path, node in _nodes(_schema(kind)):
        list_type = node.get("x-kubernetes-list-type")
        if list_type is None:
            continue
        assert node["type"] == "array", f"{kind}{path}"
        items = node["items"]
        if list_type == "set":
            assert items["type"] in ("string", "integer", "number", "boolean"), path
        if list_type == "map":
            assert items["type"] == "object", f"{kind}{path}"
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in items["properties"], f"{kind}{path}: map key {key} missing"
                # The server insists that list-map keys are required or defaulted.
                assert key in items.get("required", []) or "default" in items["properties"][key]


@pytest.mark.parametrize("kind", KINDS)
def test_everything_under_a_cel_rule_is_bounded(kind: str) -> None:
    """The API server refuses rules whose estimated cost is too high: a list without
    maxItems, or a string a rule compares without maxLength, makes it unbounded."""
    for path, node in _nodes(_schema(kind)):
        rules = " ".join(v["rule"] for v in node.get("x-kubernetes-validations", []))
        if not rules:
            continue
        for sub_path, sub in _nodes(node, path):
            if sub.get("type") == "array":
                assert "maxItems" in sub, f"{kind}{sub_path}: no maxItems under a CEL rule"
            field = sub_path.rsplit(".", 1)[-1]
            if sub.get("type") == "string" and "enum" not in sub and f".{field}" in rules:
                assert "maxLength" in sub, f"{kind}{sub_path}: rule uses a string of no maxLength"


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_sit_on_optional_fields_only(kind: str) -> None:
    for path, node in _nodes(_schema(kind)):
        for key in node.get("required", []):
            assert "default" not in node["properties"][key], f"{kind}{path}.{key}"


@pytest.mark.parametrize("kind", KINDS)
def test_fields_are_documented_for_kubectl_explain(kind: str) -> None:
    spec = _schema(kind)["properties"]["spec"]
    for path, node in _nodes(spec, ".spec"):
        if path.endswith("[*]") or path.endswith("{*}"):
            continue
        assert node.get("description"), f"{kind}{path}: no description"


def test_optional_fields_describe_the_field_not_its_type() -> None:
    """An Optional sub-object carries its field's docstring, which names the field."""
    ext = _schema("ModelDeployment")["properties"]["spec"]["properties"]["external"]
    assert ext["description"].startswith("external ")
    ref = ext["properties"]["apiKeySecretRef"]
    assert ref["description"].startswith("apiKeySecretRef ")


def test_subresources_and_printer_columns() -> None:
    md = CRDS["ModelDeployment"]["spec"]["versions"][0]
    assert md["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    for kind in KINDS:
        version = CRDS[kind]["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
        cols = [c["name"] for c in version["additionalPrinterColumns"]]
        assert cols[-1] == "Age"
        for col in version["additionalPrinterColumns"]:
            assert col["jsonPath"].startswith("."), col
            assert col["type"] in ("string", "integer", "number", "boolean", "date"), col
    md_cols = [c["name"] for c in md["additionalPrinterColumns"] if "priority" not in c]
    assert md_cols == ["Model", "Tier", "Accelerator", "Replicas", "Ready", "$/1M", "Status", "Age"]


def test_no_optional_field_is_nullable() -> None:
    """Nulls are pruned by the server only for non-nullable fields, which keeps CEL's
    has() in step with pydantic's None (see tokenyard.api.crd)."""
    for kind in KINDS:
        for path, node in _nodes(_schema(kind)):
            assert not node.get("nullable"), f"{kind}{path}"
