"""Reads tokenyard manifests (YAML files or directories) into typed API objects.

Used by the CLI (`render`, `up`, `explain`) and by tests; pure: files in, models out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tokenyard.api.common import API_VERSION, validation_problems
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool

KINDS: dict[str, type[ServingPool] | type[ModelDeployment] | type[RoutingPolicy]] = {
    "ServingPool": ServingPool,
    "ModelDeployment": ModelDeployment,
    "RoutingPolicy": RoutingPolicy,
}


class ManifestError(ValueError):
    """A manifest that is not valid, with the file and field named."""


@dataclass
class Manifests:
    """The tokenyard objects (and other objects, such as Secrets) found in manifests."""

    pools: list[ServingPool] = field(default_factory=list)
    models: list[ModelDeployment] = field(default_factory=list)
    policies: list[RoutingPolicy] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)


def core_objects(
    others: Iterable[dict[str, Any]], kind: str, default_namespace: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Core (v1) objects of one kind found in the manifests (ConfigMaps, Secrets):
    namespace -> name -> object. One that names no namespace is in ``default_namespace``,
    where ``kubectl apply -n`` puts it; of two with the same namespace and name, the later
    one wins, as the later apply would. ``render`` and ``explain`` both look objects up
    this way, so they agree with each other and with the cluster."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for o in others:
        if o.get("apiVersion") == "v1" and o.get("kind") == kind:
            meta = o.get("metadata") or {}
            ns = str(meta.get("namespace") or default_namespace)
            out.setdefault(ns, {})[str(meta.get("name"))] = o
    return out


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml")))
        elif p.exists():
            out.append(p)
        else:
            raise ManifestError(f"{p}: no such file or directory")
    return out


def _format_error(src: str, kind: str, name: str, err: ValidationError) -> str:
    lines = [f"{src}: {kind} {name!r} is invalid:"]
    lines.extend(f"  {problem}" for problem in validation_problems(err))
    return "\n".join(lines)


def parse_object(doc: dict[str, Any], src: str = "<input>") -> Any:
    """One typed object from a parsed YAML document; non-tokenyard kinds come back as dicts."""
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION or kind not in KINDS:
        return doc
    cls = KINDS[kind]
    name = str((doc.get("metadata") or {}).get("name", ""))
    if not name:
        raise ManifestError(f"{src}: {kind} without metadata.name")
    try:
        return cls.model_validate(doc)
    except ValidationError as err:
        raise ManifestError(_format_error(src, kind, name, err)) from err


def load(paths: Iterable[str | Path]) -> Manifests:
    """Load every YAML document under ``paths`` (files or directories, not recursive)."""
    result = Manifests()
    for path in _files(paths):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"{path}: a YAML document is not a mapping")
            obj = parse_object(doc, str(path))
            if isinstance(obj, ServingPool):
                result.pools.append(obj)
            elif isinstance(obj, ModelDeployment):
                result.models.append(obj)
            elif isinstance(obj, RoutingPolicy):
                result.policies.append(obj)
            else:
                result.others.append(obj)
    return result
