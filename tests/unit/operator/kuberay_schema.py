"""Validate a rendered RayService against KubeRay's CRD schema (fixtures/) plus the
Kubernetes PodTemplateSpec schema that kubernetes-validate ships, with unknown fields
rejected (the API server would silently prune them)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

FIXTURE = Path(__file__).parent / "fixtures" / "kuberay_rayservice_schema.json"
POD_TEMPLATE_ID = "https://kubernetes.io/api/podtemplatespec/v1"


def _convert(node: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) -> JSON Schema 2020-12, unknown fields rejected."""
    if isinstance(node, list):
        return [_convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-tokenyard-podtemplatespec"):
        return {"$ref": POD_TEMPLATE_ID}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k.startswith(("x-kubernetes-", "x-tokenyard-")) or k == "nullable":
            continue
        if k == "properties":
            out[k] = {name: _convert(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "anyOf", "allOf", "oneOf"):
            out[k] = _convert(v)
        else:
            out[k] = v
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-tokenyard-elided")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def _k8s_schema_dir() -> Any:
    import kubernetes_validate.utils as kv

    root = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    return root.joinpath(f"v{kv.latest_version()}-local-strict")


@cache
def validator() -> jsonschema.Draft202012Validator:
    doc = json.loads(FIXTURE.read_text())
    schema = _convert(doc["openAPIV3Schema"])
    k8s = _k8s_schema_dir()
    pod = json.loads(k8s.joinpath("podtemplatespec-v1.json").read_text())
    defs = json.loads(k8s.joinpath("_definitions.json").read_text())
    registry: Registry = Registry().with_resources(
        [
            (POD_TEMPLATE_ID, Resource.from_contents(pod)),
            (
                defs.get("$id", "https://kubernetes.io/api/_definitions.json"),
                Resource.from_contents(defs),
            ),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors(obj: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator().iter_errors(obj)
    ]
