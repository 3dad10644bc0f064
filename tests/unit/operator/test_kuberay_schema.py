"""The rendered RayService validates against KubeRay's RayService CRD schema (fixture),
pod templates against Kubernetes' PodTemplateSpec; a stray field is caught."""

from __future__ import annotations

import copy
import json

from tests.unit.operator.factories import external, kuberay_status, model, policy, pool
from tests.unit.operator.kuberay_schema import FIXTURE, errors
from tests.unit.operator.test_builders import frontier

from tokenyard.operator import builders


def rendered() -> dict:  # type: ignore[type-arg]
    return builders.render_pool(
        pool(), [model("economy"), frontier(), external()], [policy(tenant_keys=("t", "k"))]
    ).ray_service


def test_fixture_names_its_source() -> None:
    doc = json.loads(FIXTURE.read_text())
    assert "kuberay" in doc["source"]["project"].lower()
    assert doc["source"]["copy"].startswith("opendatahub-io/kuberay at commit ")


def test_rendered_rayservice_is_valid() -> None:
    assert errors(rendered()) == []


def test_a_field_kuberay_does_not_know_is_reported() -> None:
    rs = rendered()
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo
    assert any("maxReplica" in e for e in errors(bad))
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "envv"
    ] = []
    assert any("envv" in e for e in errors(bad))
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = (
        2  # not a string
    )
    assert errors(bad)


def test_kuberay_status_used_by_the_status_builders_is_valid() -> None:
    rs = rendered()
    rs.update(kuberay_status(rs))
    assert errors(rs) == []
