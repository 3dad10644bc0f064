"""Offline stand-in for what the API server does to a CRD and to a custom resource.

Loaded by the API tests (tests/unit/api/conftest.py) and the e2e tests. For a CRD:
every ``default`` must be pruned, valid against its schema and pass the CEL rules below
it, as written (:func:`crd_default_errors`). For a custom resource on create: prune
nulls, apply schema defaults, validate the structural schema (with jsonschema), enforce
list-map/set uniqueness, then evaluate every ``x-kubernetes-validations`` rule with
cel-python on the defaulted object, as the API server does in that order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

from tokenyard.api.crd import build_crds

REPO = Path(__file__).resolve().parents[3]
INVALID_DIR = Path(__file__).resolve().parent / "invalid"
EXAMPLES_DIR = REPO / "examples"

# Annotations on the invalid samples saying how the API server must reject them.
ANN_REJECTED_BY = "test.tokenyard.dev/rejected-by"  # "schema" or "cel"
ANN_FIELD = "test.tokenyard.dev/field"  # path of the offending field, e.g. spec.pool
ANN_MESSAGE = "test.tokenyard.dev/message"  # text the rejection must contain


def crd_by_kind() -> dict[str, dict[str, Any]]:
    """The generated CRDs keyed by kind."""
    return {c["spec"]["names"]["kind"]: c for c in build_crds()}


def schema_of(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of one kind's only version."""
    schema: dict[str, Any] = crd_by_kind()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document under examples/ (recursively), labelled file#index."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(EXAMPLES_DIR.rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.relative_to(REPO)}#{i}", doc))
    return out


def example(name: str) -> dict[str, Any]:
    """A copy of the top-level example (examples/*.yaml) with this metadata.name."""
    found = [
        doc
        for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{len(found)} top-level examples named {name}"
    return copy.deepcopy(found[0])


def invalid_samples() -> list[tuple[str, dict[str, Any]]]:
    """Every invalid sample under tests/unit/api/invalid/, one document per file."""
    return [(p.name, yaml.safe_load(p.read_text())) for p in sorted(INVALID_DIR.glob("*.yaml"))]


def expectation(doc: dict[str, Any]) -> tuple[str, str, str]:
    """(rejected-by, field, message) from an invalid sample's annotations."""
    ann = doc["metadata"]["annotations"]
    return ann[ANN_REJECTED_BY], ann[ANN_FIELD], ann[ANN_MESSAGE]


# --- pruning and defaulting -------------------------------------------------------


def prune_nulls(obj: Any, schema: dict[str, Any]) -> Any:
    """Drop nulls of non-nullable fields, as the API server does before defaulting."""
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for k, v in obj.items():
            sub = props.get(k, {}) if props is not None else (extra or {})
            if v is None and not sub.get("nullable", False):
                continue
            out[k] = prune_nulls(v, sub)
        return out
    if isinstance(obj, list):
        return [prune_nulls(v, schema.get("items", {})) for v in obj]
    return obj


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill schema defaults recursively (into defaulted objects too), like the server."""
    obj = copy.deepcopy(obj)
    _default(obj, schema)
    return obj


def _default(obj: Any, schema: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        props = schema.get("properties")
        if props is not None:
            for key, sub in props.items():
                if key not in obj and "default" in sub:
                    obj[key] = copy.deepcopy(sub["default"])
            for key, value in obj.items():
                if key in props:
                    _default(value, props[key])
        elif isinstance(schema.get("additionalProperties"), dict):
            for value in obj.values():
                _default(value, schema["additionalProperties"])
    elif isinstance(obj, list):
        for item in obj:
            _default(item, schema.get("items", {}))


# --- structural schema -----------------------------------------------------------


def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3.0 CRD schema as a Draft-4 JSON schema that rejects unknown fields.

    ``nullable`` becomes a null type, ``x-kubernetes-*`` markers are dropped and objects
    with fixed properties get ``additionalProperties: false`` (the API server prunes or,
    under kubectl's default strict field validation, rejects unknown fields).
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        else:
            out[key] = value
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema and not preserve and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def schema_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Structural-schema and list uniqueness errors as 'path: message' lines."""
    validator = jsonschema.Draft4Validator(to_jsonschema(schema))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    errors.extend(_uniqueness_errors(obj, schema, ""))
    return sorted(errors)


def _uniqueness_errors(obj: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        for key, value in obj.items():
            if key in props:
                yield from _uniqueness_errors(value, props[key], f"{path}.{key}".lstrip("."))
    elif isinstance(obj, list):
        items = schema.get("items", {})
        list_type = schema.get("x-kubernetes-list-type")
        seen: set[Any] = set()
        for i, item in enumerate(obj):
            if list_type == "set":
                key: Any = yaml.safe_dump(item)
            elif list_type == "map" and isinstance(item, dict):
                key = tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"])
            else:
                key = None
            if key is not None:
                if key in seen:
                    yield f"{path}[{i}]: Duplicate value: {key!r}"
                seen.add(key)
            yield from _uniqueness_errors(item, items, f"{path}[{i}]")


# --- CEL -------------------------------------------------------------------------

_ENV = celpy.Environment()


def to_cel(value: Any, schema: dict[str, Any]) -> Any:
    """A JSON value as the CEL value the API server builds from its schema type
    (``type: number`` is always a double, even when written as 1)."""
    kind = schema.get("type")
    if value is None:
        return None
    if kind == "object" or isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        return celtypes.MapType(
            {
                celtypes.StringType(k): to_cel(
                    v, props.get(k, {}) if props is not None else (extra or {})
                )
                for k, v in value.items()
            }
        )
    if kind == "array" or isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items", {})) for v in value])
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(int(value))
    if kind == "boolean":
        return celtypes.BoolType(bool(value))
    if kind == "string":
        return celtypes.StringType(value)
    return celpy.json_to_cel(value)


@dataclass(frozen=True)
class CelRule:
    """One x-kubernetes-validations rule and where it sits in the schema."""

    path: str
    rule: str
    message: str


def rules_of(schema: dict[str, Any], path: str = "") -> Iterator[CelRule]:
    """Every CEL rule in a schema, with its schema path (arrays as [*])."""
    for v in schema.get("x-kubernetes-validations", []):
        yield CelRule(path or "<root>", v["rule"], v["message"])
    for key, sub in schema.get("properties", {}).items():
        yield from rules_of(sub, f"{path}.{key}".lstrip("."))
    if isinstance(schema.get("items"), dict):
        yield from rules_of(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from rules_of(schema["additionalProperties"], f"{path}[*]")


def evaluate(rule: str, value: Any, schema: dict[str, Any]) -> bool | str:
    """True or False, or an error string when evaluation fails (the server rejects)."""
    program = _ENV.program(_ENV.compile(rule))
    try:
        result = program.evaluate({"self": to_cel(value, schema)})
    except celpy.CELEvalError as err:
        return f"evaluation error: {err.args[0]}"
    if isinstance(result, celpy.CELEvalError):
        return f"evaluation error: {result.args[0]}"
    return bool(result)


def cel_errors(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every failing CEL rule as 'path: Invalid value: "object": message' lines."""
    errors: list[str] = []
    for v in schema.get("x-kubernetes-validations", []):
        verdict = evaluate(v["rule"], obj, schema)
        if verdict is not True:
            detail = v["message"] if verdict is False else f"{v['message']} ({verdict})"
            errors.append(f'{path or "<root>"}: Invalid value: "object": {detail}')
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            sub = props.get(key) if props is not None else extra
            if isinstance(sub, dict):
                errors.extend(cel_errors(value, sub, f"{path}.{key}".lstrip(".")))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            errors.extend(cel_errors(item, schema["items"], f"{path}[{i}]"))
    return errors


# --- the CRD itself: defaults -----------------------------------------------------

CRD_SCHEMA_PATH = "spec.validation.openAPIV3Schema"


def prune_unknown(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with the fields its structural schema does not know removed, as the API
    server prunes (x-kubernetes-preserve-unknown-fields keeps them)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None:
            return {k: prune_unknown(v, props[k]) for k, v in value.items() if k in props}
        if isinstance(extra, dict):
            return {k: prune_unknown(v, extra) for k, v in value.items()}
        return {}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_unknown(v, schema["items"]) for v in value]
    return value


def default_errors(schema: dict[str, Any], path: str = CRD_SCHEMA_PATH) -> list[str]:
    """What the API server checks of every ``default`` when a CRD is created or updated
    (apiextensions' defaulting validation): the default must be pruned (no unknown
    fields), valid against its own schema, and pass the CEL rules of its schema and of
    every schema below it, evaluated on the default as written: nested defaults are
    not applied to a default first. Defaults under additionalProperties are forbidden.
    Lines read like the server's: '<path>.default: <what is wrong>'."""
    errors: list[str] = []
    if "default" in schema:
        value = schema["default"]
        where = f"{path}.default"
        if prune_unknown(value, schema) != value:
            errors.append(f"{where}: Invalid value: must not have unknown fields")
        invalid = (
            schema_errors(value, schema) if isinstance(value, dict) else _scalar(value, schema)
        )
        errors.extend(f"{where}: Invalid value: {line}" for line in invalid)
        for line in cel_errors(value, schema):
            at, rest = line.split(": ", 1)
            errors.append(f"{where}: {rest}" + ("" if at == "<root>" else f" (at {at})"))
    for key, sub in schema.get("properties", {}).items():
        errors.extend(default_errors(sub, f"{path}.properties[{key}]"))
    if isinstance(schema.get("items"), dict):
        errors.extend(default_errors(schema["items"], f"{path}.items"))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and _has_default(extra):
        errors.append(f"{path}.additionalProperties: Forbidden: default is not allowed")
    return errors


def _scalar(value: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(to_jsonschema(schema))
    return [e.message for e in validator.iter_errors(value)]


def _has_default(schema: dict[str, Any]) -> bool:
    if "default" in schema:
        return True
    subs = list(schema.get("properties", {}).values())
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            subs.append(schema[key])
    return any(_has_default(s) for s in subs)


def crd_default_errors(crd: dict[str, Any]) -> list[str]:
    """:func:`default_errors` for every served version of one CRD."""
    return [
        line
        for version in crd["spec"]["versions"]
        for line in default_errors(version["schema"]["openAPIV3Schema"])
    ]


# --- the whole admission path ----------------------------------------------------


@dataclass
class Admission:
    """What the emulated API server made of one object."""

    defaulted: dict[str, Any]
    schema_errors: list[str]
    cel_errors: list[str]

    @property
    def allowed(self) -> bool:
        return not self.schema_errors and not self.cel_errors


def admit(doc: dict[str, Any]) -> Admission:
    """Prune, default, validate the schema and, if it holds, the CEL rules."""
    schema = schema_of(doc["kind"])
    obj = apply_defaults(prune_nulls(doc, schema), schema)
    s_errors = schema_errors(obj, schema)
    # The server only runs CEL on objects that pass the schema.
    c_errors = [] if s_errors else cel_errors(obj, schema)
    return Admission(obj, s_errors, c_errors)
