"""Decide, then act: Create / Update / Noop / Conflict from desired vs existing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tests.unit.operator.factories import model, pool

from tokenyard.operator import builders, plan


def desired() -> dict[str, Any]:
    return builders.render_pool(pool(), [model("economy")], []).ray_service


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server and KubeRay make of it: defaults, their own metadata, status."""
    out = copy.deepcopy(obj)
    out["metadata"]["uid"] = "uid-rs"
    out["metadata"]["resourceVersion"] = "42"
    out["metadata"]["annotations"]["ray.io/some-annotation"] = "x"
    out["metadata"]["finalizers"] = ["ray.io/rayservice-finalizer"]
    for g in out["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        g["numOfHosts"] = 1  # a CRD default
    out["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] = "ClusterIP"
    out["status"] = {"serviceStatus": "Running"}
    return out


def test_create_when_absent() -> None:
    d = desired()
    assert plan.plan(d, None) == plan.Create(d)


def test_noop_when_only_others_changed_things() -> None:
    assert plan.plan(desired(), as_stored(desired())) == plan.Noop()


def test_update_patches_spec_and_hash_only() -> None:
    old = as_stored(desired())
    new = builders.render_pool(
        pool(), [model("economy", engine={"maxModelLen": 4096})], []
    ).ray_service
    action = plan.plan(new, old)
    assert isinstance(action, plan.Update)
    h = new["metadata"]["annotations"]["tokenyard.dev/spec-hash"]
    assert action.patch["metadata"] == {"annotations": {"tokenyard.dev/spec-hash": h}}
    assert set(action.patch) == {"metadata", "spec"}
    assert "status" not in action.patch
    # Defaults the API server added at map level are reset to what we render (null):
    assert action.patch["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] is None
    assert action.patch["spec"]["serveConfigV2"] == new["spec"]["serveConfigV2"]
    # Applying the patch gives exactly our spec back.
    from tokenyard.operator.kube import apply_merge_patch

    assert apply_merge_patch(old, action.patch)["spec"] == new["spec"]


def test_update_restores_our_labels_and_owner() -> None:
    old = as_stored(desired())
    old["metadata"]["labels"]["tokenyard.dev/pool"] = "gpu-pool"
    old["metadata"]["labels"]["team"] = "a"
    old["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Other", "name": "o", "uid": "u-other"}
    ]
    action = plan.plan(desired(), old)
    assert isinstance(action, plan.Update)
    assert action.reason == "ownerReferences"
    owners = action.patch["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == ["u-other", "uid-pool"]
    assert "spec" not in action.patch


def test_conflict_with_an_object_we_do_not_manage() -> None:
    foreign = copy.deepcopy(desired())
    foreign["metadata"]["labels"] = {"app": "someone-else"}
    action = plan.plan(desired(), foreign)
    assert isinstance(action, plan.Conflict)
    assert "not managed by tokenyard" in action.message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 1}}, {"b": {"d": None}}),
        ({"a": [1, 2]}, {"a": [2]}, {"a": [2]}),
        ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": {"b": 1}}, {"a": "x"}, {"a": "x"}),
        ({"a": 1}, {"a": 1}, {}),
    ],
)
def test_merge_diff(old: dict[str, Any], new: dict[str, Any], expected: dict[str, Any]) -> None:
    assert plan.merge_diff(old, new) == expected
