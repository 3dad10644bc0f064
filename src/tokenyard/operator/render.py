"""`tokenyard render -f FILE_OR_DIR`: what the operator would create, without a cluster.

Runs the operator's own pure builders on manifests and prints the child objects
(one RayService per ServingPool) as YAML to stdout; what the operator would report as
conditions (PoolNotFound, GPULimitExceeded, ...) goes to stderr. Exit status 0 when the
manifests are valid (problems are warnings), 1 when a manifest is invalid, with the
file and field named.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from tokenyard.api.common import REASON_ARTIFACT_UNAVAILABLE
from tokenyard.api.manifests import ManifestError, Manifests, core_objects, load
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator import builders
from tokenyard.settings import OperatorSettings, load_settings


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as YAML literal blocks, readable as written;
    no anchors or aliases (kubectl apply handles them, people reading diffs do not)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def to_yaml(objs: Iterable[dict[str, Any]]) -> str:
    return "".join(
        "---\n" + yaml.dump(o, Dumper=_LiteralDumper, sort_keys=False, width=1000) for o in objs
    )


def _set_namespace(objs: Iterable[ServingPool | ModelDeployment | RoutingPolicy], ns: str) -> None:
    for o in objs:
        if not o.metadata.get("namespace"):
            o.metadata["namespace"] = ns


def _sources(paths: Sequence[str]) -> dict[tuple[str, str], str]:
    """(kind, name) -> the file that defines it, for error messages."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml"))
        elif p.exists():
            files.append(p)
    out: dict[tuple[str, str], str] = {}
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict):
                name = str((doc.get("metadata") or {}).get("name", ""))
                out.setdefault((str(doc.get("kind")), name), str(f))
    return out


def _semantic_errors(m: Manifests, sources: dict[tuple[str, str], str]) -> list[str]:
    """What the CRDs' CEL rules reject, which pydantic alone does not."""
    found: list[tuple[str, str, list[builders.FieldProblem]]] = []
    for pool in m.pools:
        found.append(
            (ServingPool.KIND, builders.obj_name(pool), builders.pool_semantic_problems(pool))
        )
    for md in m.models:
        found.append(
            (ModelDeployment.KIND, builders.obj_name(md), builders.model_semantic_problems(md.spec))
        )
    for pol in m.policies:
        found.append(
            (RoutingPolicy.KIND, builders.obj_name(pol), builders.policy_semantic_problems(pol))
        )
    out: list[str] = []
    for kind, name, problems in found:
        src = sources.get((kind, name), "<input>")
        out += [f"{src}: {kind} {name!r} is invalid: {p}" for p in problems]
    return out


def _secrets(others: Iterable[dict[str, Any]], default_ns: str) -> dict[str, dict[str, set[str]]]:
    """Secrets found in the manifests: namespace -> name -> data keys."""
    return {
        ns: {
            name: set((o.get("data") or {}).keys()) | set((o.get("stringData") or {}).keys())
            for name, o in by_name.items()
        }
        for ns, by_name in core_objects(others, "Secret", default_ns).items()
    }


def _configmaps(
    others: Iterable[dict[str, Any]], default_ns: str
) -> dict[str, dict[str, dict[str, str]]]:
    """ConfigMaps found in the manifests: namespace -> name -> data (as the API server
    stores it: every value a string)."""
    out: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for ns, by_name in core_objects(others, "ConfigMap", default_ns).items():
        for name, o in by_name.items():
            out[ns][name] = {str(k): str(v) for k, v in (o.get("data") or {}).items()}
    return out


def _artifact_problems(
    policies: Iterable[RoutingPolicy], configmaps: builders.ConfigMaps
) -> list[builders.Problem]:
    """Policies whose learned classifier or shadow candidate cannot be delivered from the
    ConfigMaps in the manifests (the operator says so in status, ClassifierReady)."""
    return [
        builders.Problem(RoutingPolicy.KIND, builders.obj_name(p), REASON_ARTIFACT_UNAVAILABLE, why)
        for p in policies
        for _, why in (
            builders.policy_classifier(p, configmaps),
            builders.shadow_classifier(p, configmaps),
        )
        if why is not None
    ]


def render(
    m: Manifests, namespace: str, settings: OperatorSettings
) -> tuple[list[dict[str, Any]], list[builders.Problem]]:
    """The RayServices for every pool in ``m`` and the problems found, pool by pool."""
    for group in (m.pools, m.models, m.policies):
        _set_namespace(group, namespace)
    secrets = _secrets(m.others, namespace)
    configmaps = _configmaps(m.others, namespace)
    children: list[dict[str, Any]] = []
    problems: list[builders.Problem] = []
    for pool in sorted(m.pools, key=lambda p: (builders.obj_namespace(p), builders.obj_name(p))):
        ns = builders.obj_namespace(pool)
        same_ns = [x for x in m.models if builders.obj_namespace(x) == ns]
        pols = [x for x in m.policies if builders.obj_namespace(x) == ns]
        # No Secret in the manifests for this namespace: nothing is known about Secrets
        # (they usually live outside the repository), so none is reported missing.
        known = secrets.get(ns)
        # A Learned classifier's ConfigMap is looked up among the manifests: without it
        # the router gets the heuristic, as in a cluster that lacks the ConfigMap.
        r = builders.render_pool(
            pool, same_ns, pols, secrets=known, settings=settings, configmaps=configmaps[ns]
        )
        children.append(r.ray_service)
        if r.state_claim is not None:
            children.append(r.state_claim)
        problems += r.problems + _artifact_problems(r.policies, configmaps[ns])
    problems += builders.orphan_problems(m.pools, m.models, m.policies)
    return children, problems


def run(
    paths: Sequence[str],
    namespace: str,
    *,
    stdout: TextIO,
    stderr: TextIO,
    settings: OperatorSettings | None = None,
) -> int:
    try:
        manifests = load(paths)
    except ManifestError as e:
        print(f"error: {e}", file=stderr)
        return 1
    errors = _semantic_errors(manifests, _sources(paths))
    if errors:
        for line in errors:
            print(f"error: {line}", file=stderr)
        return 1
    children, problems = render(manifests, namespace, settings or load_settings().operator)
    if not manifests.pools:
        print("warning: no ServingPool in the manifests; nothing to render", file=stderr)
    stdout.write(to_yaml(children))
    for p in problems:
        print(f"warning: {p}", file=stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    return run(list(args.filename), str(args.namespace), stdout=sys.stdout, stderr=sys.stderr)
