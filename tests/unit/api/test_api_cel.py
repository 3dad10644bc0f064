"""CEL rules and schema bounds reject the invalid samples, and pydantic agrees with them.

Each sample under invalid/ says in its annotations whether the API server rejects it by
schema or by CEL, at which field and with which message; the e2e tests send the same
files to a real API server.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import tokenyard_crdcheck as crdcheck
import yaml
from pydantic import ValidationError

from tokenyard.api.manifests import KINDS

SAMPLES = crdcheck.invalid_samples()
# One example per kind to mutate: the pool, the economy model (1..4 replicas), the policy.
EXAMPLES = {
    "ServingPool": crdcheck.example("gpu-pool"),
    "ModelDeployment": crdcheck.example("qwen-small"),
    "RoutingPolicy": crdcheck.example("chat"),
}


def _norm(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path)


def _pydantic_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        KINDS[doc["kind"]].model_validate(doc)
    except ValidationError as err:
        return [(".".join(str(x) for x in e["loc"]), e["msg"]) for e in err.errors()]
    return []


def test_there_are_samples_for_every_kind() -> None:
    assert {doc["kind"] for _, doc in SAMPLES} == set(KINDS)


@pytest.mark.parametrize(("name", "doc"), SAMPLES, ids=[n for n, _ in SAMPLES])
def test_sample_is_rejected_as_annotated(name: str, doc: dict[str, Any]) -> None:
    by, field, message = crdcheck.expectation(doc)
    result = crdcheck.admit(doc)
    if by == "cel":
        assert result.schema_errors == [], f"{name} should pass the schema"
        expected = f'{field}: Invalid value: "object": {message}'
        assert expected in result.cel_errors, result.cel_errors
    else:
        assert by == "schema", name
        paths = [_norm(e.split(": ", 1)[0]) for e in result.schema_errors]
        parent, _, leaf = _norm(field).rpartition(".")
        assert any(
            p == _norm(field) or (p == parent and leaf in e)
            for p, e in zip(paths, result.schema_errors, strict=True)
        ), result.schema_errors


@pytest.mark.parametrize(("name", "doc"), SAMPLES, ids=[n for n, _ in SAMPLES])
def test_pydantic_rejects_every_sample_at_the_same_place(name: str, doc: dict[str, Any]) -> None:
    by, field, message = crdcheck.expectation(doc)
    errors = _pydantic_errors(doc)
    assert errors, f"{name}: pydantic accepted what the API server rejects"
    if by == "cel":
        assert (_norm(field), f"Value error, {message}") in errors, errors
    else:
        want = _norm(field)
        assert any(want.startswith(loc) or loc.startswith(want) for loc, _ in errors), errors


def test_every_cel_rule_has_a_sample_that_breaks_it() -> None:
    messages = {crdcheck.expectation(doc)[2] for _, doc in SAMPLES}
    for kind in KINDS:
        for rule in crdcheck.rules_of(crdcheck.schema_of(kind)):
            assert rule.message in messages, f"{kind} {rule.path}: no invalid sample"


def test_every_cel_rule_holds_on_the_examples_only_after_defaulting() -> None:
    """The server defaults before CEL; the rules may (and do) rely on it."""
    doc = copy.deepcopy(EXAMPLES["ModelDeployment"])
    doc["spec"].pop("autoscaling", None)
    doc["spec"]["replicas"] = 1
    schema = crdcheck.schema_of("ModelDeployment")
    raw = crdcheck.cel_errors(doc, schema)
    assert any("evaluation error" in e for e in raw), raw
    assert crdcheck.admit(doc).allowed


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): None deletes."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


EXTERNAL = {
    "baseURL": "https://provider.example/v1",
    "providerModel": "m",
    "price": {"inputPer1M": 1, "outputPer1M": 2},
}
# (kind, merge patch on the example's spec, allowed?) at the edges of every rule.
AGREEMENT = [
    ("ModelDeployment", {}, True),
    ("ModelDeployment", {"replicas": 1}, True),
    ("ModelDeployment", {"replicas": 4}, True),
    ("ModelDeployment", {"replicas": 0}, False),
    ("ModelDeployment", {"replicas": 5}, False),
    ("ModelDeployment", {"replicas": 5, "autoscaling": {"mode": "Manual"}}, True),
    ("ModelDeployment", {"replicas": 5, "autoscaling": {"mode": "External"}}, True),
    ("ModelDeployment", {"autoscaling": {"minReplicas": 4, "maxReplicas": 4}}, True),
    ("ModelDeployment", {"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}, False),
    ("ModelDeployment", {"autoscaling": {"minReplicas": 0}}, True),
    ("ModelDeployment", {"autoscaling": None}, True),
    ("ModelDeployment", {"autoscaling": {"minReplicas": 2, "maxReplicas": None}}, False),
    ("ModelDeployment", {"external": EXTERNAL}, False),
    ("ModelDeployment", {"inCluster": None}, False),
    ("ModelDeployment", {"inCluster": None, "external": EXTERNAL}, True),
    ("ModelDeployment", {"inCluster": None, "external": EXTERNAL, "pool": None}, True),
    ("ModelDeployment", {"pool": None}, False),
    ("ModelDeployment", {"inCluster": None, "external": EXTERNAL, "replicas": 9}, True),
    ("ModelDeployment", {"quality": 1.0}, True),
    ("ModelDeployment", {"quality": -0.1}, False),
    ("ModelDeployment", {"dataClasses": ["pii", "pii"]}, False),
    ("ServingPool", {}, True),
    ("ServingPool", {"router": {"minReplicas": 3, "maxReplicas": 3}}, True),
    ("ServingPool", {"router": {"minReplicas": 4}}, False),
    ("ServingPool", {"router": None}, True),
    ("ServingPool", {"accelerators": [{"name": "cpu", "gpusPerNode": 0}]}, False),
    ("ServingPool", {"accelerators": [{"name": "cpu", "gpusPerNode": 0, "maxWorkers": 2}]}, True),
    ("ServingPool", {"accelerators": [{"name": "a"}, {"name": "a"}]}, False),
    ("ServingPool", {"accelerators": [{"name": "A10"}]}, False),
    ("RoutingPolicy", {}, True),
    ("RoutingPolicy", {"strategy": "Weighted"}, False),
    ("RoutingPolicy", {"strategy": "Weighted", "targets": [{"model": "a", "weight": 1}]}, False),
    (
        "RoutingPolicy",
        {"strategy": "Weighted", "rules": [], "targets": [{"model": "a", "weight": 1}]},
        True,
    ),
    ("RoutingPolicy", {"strategy": "Ordered", "rules": [], "targets": [{"model": "a"}]}, True),
    ("RoutingPolicy", {"rules": [{"name": "r", "targets": ["nope"]}]}, False),
    ("RoutingPolicy", {"rules": [{"name": "r", "targets": ["qwen-small"]}]}, True),
    (
        "RoutingPolicy",
        {"rules": [{"name": "r", "match": {"promptTokens": {"min": 5, "max": 5}}, "targets": []}]},
        False,
    ),
    (
        "RoutingPolicy",
        {"rules": [{"name": "r", "match": {"difficulty": {"min": 1, "max": 0.5}}, "targets": []}]},
        False,
    ),
    (
        "RoutingPolicy",
        {
            "rules": [
                {"name": "r", "match": {"difficulty": {"max": 0.5}}, "targets": ["qwen-small"]}
            ]
        },
        True,
    ),
    ("RoutingPolicy", {"budgets": [{"tenant": "a", "limitUSD": 1, "window": "30d"}]}, True),
    ("RoutingPolicy", {"budgets": [{"tenant": "a", "limitUSD": 1, "window": "0h"}]}, False),
    ("RoutingPolicy", {"fallback": {"retryOn": ["Error", "Error"]}}, False),
    ("RoutingPolicy", {"fallback": {"retryOn": ["Teapot"]}}, False),
    ("RoutingPolicy", {"egress": {"detectors": []}}, True),
    ("RoutingPolicy", {"rateLimits": [{"tenant": "*"}, {"tenant": "*"}]}, False),
    ("RoutingPolicy", {"spillover": {"enabled": False, "threshold": 10}}, True),
    ("RoutingPolicy", {"spillover": {"threshold": 0}}, False),
    ("RoutingPolicy", {"spillover": {"threshold": 10.5}}, False),
    # Types as the API server reads them: no string for a boolean or a number.
    ("RoutingPolicy", {"spillover": {"enabled": "yes"}}, False),
    ("RoutingPolicy", {"spillover": {"downgradeWhenCapped": True}}, True),
    ("RoutingPolicy", {"spillover": {"downgradeWhenCapped": "true"}}, False),
    ("RoutingPolicy", {"spillover": {"downgrade": True}}, False),  # unknown field
    ("ModelDeployment", {"replicas": "1"}, False),
    ("ModelDeployment", {"autoscaling": {"ttftSLOSeconds": "5"}}, False),
    ("ModelDeployment", {"autoscaling": {"ttftSLOSeconds": 5}}, True),
    ("ServingPool", {"router": {"state": {"persistent": "false"}}}, False),
]


@pytest.mark.parametrize(("kind", "patch", "allowed"), AGREEMENT)
def test_api_server_and_pydantic_agree(kind: str, patch: dict[str, Any], allowed: bool) -> None:
    doc = copy.deepcopy(EXAMPLES[kind])
    doc["spec"] = _merge(doc["spec"], patch)
    server = crdcheck.admit(doc)
    offline = _pydantic_errors(doc)
    assert server.allowed == allowed, server
    assert (not offline) == allowed, offline


def test_invalid_samples_are_single_documents_outside_examples() -> None:
    for path in sorted(crdcheck.INVALID_DIR.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path.name
        assert docs[0]["metadata"]["name"] == Path(path).stem
    assert crdcheck.EXAMPLES_DIR not in crdcheck.INVALID_DIR.parents
