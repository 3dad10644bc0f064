"""Generates the CustomResourceDefinitions from the pydantic models.

Called by ``tokenyard crds`` and ``make crds``; the drift test compares its output with
``crds/`` and ``charts/tokenyard/crds/``. Pydantic's JSON schema is not a structural
CRD schema as it is, so this module inlines ``$defs``, turns ``Optional[X]`` into a plain
optional ``X``, converts JSON-Schema-2020 bounds to OpenAPI v3.0, drops titles and
``additionalProperties: false``, and writes defaults of nested objects so that CEL rules
can rely on them. A nested object's default is the whole defaulted object: the API server
validates every default against its schema and CEL rules when the CRD is created, as
written (nested defaults are not applied to it first), and rejects the CRD otherwise.

Optional fields are deliberately not ``nullable``: the API server prunes an explicit
``null`` of a non-nullable field before defaulting and validation, so ``field: null``
means "unset" exactly as pydantic's ``None`` does, and CEL's ``has(self.field)`` agrees.
With ``nullable: true`` the null would be kept, ``has()`` would be true and rules such as
"exactly one of inCluster or external" would disagree with the pydantic validators.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tokenyard.api.common import GROUP, VERSION
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool

_READY = '.status.conditions[?(@.type=="Ready")]'


def _col(name: str, type_: str, path: str, desc: str, priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": desc}
    if priority:
        col["priority"] = priority
    return col


_AGE = _col("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "ServingPool": [
        _col("GPUs", "string", ".status.gpus", "GPUs requested/limit per accelerator class."),
        _col("$/H", "number", ".status.hourlyCostUSD", "Hourly GPU cost in USD."),
        _col(
            "In Use",
            "string",
            ".status.measured.gpus",
            "GPUs in use (utilisation) per class, measured.",
            priority=1,
        ),
        _col(
            "Spend/H",
            "number",
            ".status.measured.spendUSDPerHour",
            "USD per hour the pool's endpoints charge, measured.",
            priority=1,
        ),
        _col("Models", "integer", ".status.modelCount", "Member models."),
        _col("Ready", "string", f"{_READY}.status", "Whether the pool's RayService is ready."),
        _col("Reason", "string", f"{_READY}.reason", "Why.", priority=1),
        _col("RayService", "string", ".status.rayService", "The RayService.", priority=1),
        _AGE,
    ],
    "ModelDeployment": [
        _col("Model", "string", ".status.model", "Weights source or provider model."),
        _col("Tier", "string", ".spec.tier", "economy, standard or frontier."),
        _col("Accelerator", "string", ".spec.inCluster.accelerator", "Accelerator class."),
        _col("Replicas", "integer", ".status.replicas", "Replicas asked of Ray Serve."),
        _col("Ready", "integer", ".status.readyReplicas", "Replicas serving requests."),
        _col("$/1M", "number", ".status.costPer1MTokens", "Effective USD per 1M tokens."),
        _col("Status", "string", f"{_READY}.reason", "Reason of the Ready condition."),
        _col("Pool", "string", ".spec.pool", "The ServingPool.", priority=1),
        _col("Message", "string", f"{_READY}.message", "Ready condition message.", priority=1),
        _col(
            "Capped",
            "string",
            '.status.conditions[?(@.type=="Capped")].reason',
            "GPUCapped or BudgetCapped while the pool gives fewer replicas than asked.",
            priority=1,
        ),
        _AGE,
    ],
    "RoutingPolicy": [
        _col("Endpoint", "string", ".status.endpoint", "Model name clients send."),
        _col("Strategy", "string", ".spec.strategy", "Selection strategy."),
        _col("Ready Backends", "string", ".status.readyTargets", "Ready/total targets."),
        _col("Spend", "number", ".status.spendUSD", "USD spent in the current window."),
        _col(
            "Spend/H",
            "number",
            ".status.spendUSDPerHour",
            "USD per hour the endpoint charges now, measured.",
            priority=1,
        ),
        _col("Ready", "string", f"{_READY}.status", "Whether at least one target serves."),
        _col("Pool", "string", ".spec.pool", "The ServingPool.", priority=1),
        _col("Classifier", "string", ".status.classifier.type", "Classifier in use.", priority=1),
        _col(
            "Classifier Version",
            "string",
            ".status.classifier.version",
            "Version of the learned classifier in use.",
            priority=1,
        ),
        _col(
            "Shadow Disagree",
            "number",
            ".status.shadow.disagreement",
            "Share of requests the shadow candidate (spec.classifier.shadow) would route "
            "elsewhere.",
            priority=1,
        ),
        _AGE,
    ],
}

_DROP_KEYS = {"title"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref and rewrite the schema into an OpenAPI v3.0 structural schema."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "description" and isinstance(value, str):
            out[key] = " ".join(value.split())
            continue
        out[key] = _resolve(value, defs)
    # Optional[X] -> X, optional (see the module docstring for why not nullable). The
    # field's own keys (its description, its default) win over those of the type.
    any_of = out.pop("anyOf", None)
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unsupported union in CRD schema: {any_of}")
        base = {**non_null[0], **out}
        if base.get("default", 0) is None:
            del base["default"]
        out = base
    # JSON Schema 2020 exclusive bounds -> OpenAPI v3.0
    for excl, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if excl in out and not isinstance(out[excl], bool):
            out[plain] = out.pop(excl)
            out[excl] = True
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]
    if out.get("type") == "object" and out.get("additionalProperties") == {}:
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" in out:
        del out["additionalProperties"]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def _add_factory_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Write defaults of default_factory fields, so nested defaults apply server-side."""
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in props:
            continue
        sub = props[key]
        _recurse_nested(field, sub)
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                # The whole defaulted object, not {}: the API server validates a default
                # against its schema and CEL rules as written, before any nested default
                # applies, so {} fails a rule such as "minReplicas <= maxReplicas".
                sub["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            else:
                sub["default"] = value


def _recurse_nested(field: FieldInfo, sub: dict[str, Any]) -> None:
    ann = field.annotation
    candidates = [ann, *getattr(ann, "__args__", ())]
    for cand in candidates:
        if isinstance(cand, type) and issubclass(cand, BaseModel) and sub.get("type") == "object":
            _add_factory_defaults(cand, sub)
        inner = getattr(cand, "__args__", ())
        for inner_cand in inner:
            if (
                isinstance(inner_cand, type)
                and issubclass(inner_cand, BaseModel)
                and sub.get("type") == "array"
            ):
                _add_factory_defaults(inner_cand, sub["items"])


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI schema of one pydantic model."""
    raw = model.model_json_schema(mode="validation", by_alias=True)
    defs = raw.pop("$defs", {})
    schema = _resolve(raw, defs)
    _add_factory_defaults(model, schema)
    return schema  # type: ignore[no-any-return]


def _spec_status(resource: type[BaseModel]) -> tuple[type[BaseModel], type[BaseModel]]:
    fields = resource.model_fields
    spec = fields["spec"].annotation
    status_ann = fields["status"].annotation
    status = next(a for a in getattr(status_ann, "__args__", ()) if a is not type(None))
    assert isinstance(spec, type) and isinstance(status, type)
    return spec, status


def build_crd(resource: type[BaseModel]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource class."""
    kind: str = resource.KIND  # type: ignore[attr-defined]
    plural: str = resource.PLURAL  # type: ignore[attr-defined]
    spec_model, status_model = _spec_status(resource)
    spec_schema = object_schema(spec_model)
    status_schema = object_schema(status_model)
    description = (resource.__doc__ or "").strip().replace("\n    ", " ")
    schema = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
    }
    subresources: dict[str, Any] = {"status": {}}
    if kind == "ModelDeployment":
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tokenyard"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(resource.SHORT_NAMES),  # type: ignore[attr-defined]
                "categories": ["tokenyard"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                }
            ],
        },
    }


RESOURCE_CLASSES: tuple[type[BaseModel], ...] = (ServingPool, ModelDeployment, RoutingPolicy)


def build_crds() -> list[dict[str, Any]]:
    """Every CRD of tokenyard, in a stable order."""
    return [build_crd(r) for r in RESOURCE_CLASSES]


def crd_filename(crd: dict[str, Any]) -> str:
    """File name under crds/ for one CRD."""
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"


HEADER = "# Generated by `tokenyard crds` from src/tokenyard/api. Do not edit.\n"


def render_yaml(crd: dict[str, Any]) -> str:
    """Stable YAML text of one CRD, as written to disk."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)
