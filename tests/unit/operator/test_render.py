"""`tokenyard render`: YAML to stdout, problems to stderr, exit 1 naming file and field."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.unit.operator.kuberay_schema import errors

from tokenyard.operator import render

HERE = Path(__file__).parent / "manifests"
REPO = Path(__file__).resolve().parents[3]


def run(*paths: str | Path, namespace: str = "default") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = render.run([str(p) for p in paths], namespace, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_valid_manifests_render_one_rayservice_per_pool() -> None:
    code, out, err = run(HERE / "valid")
    assert (code, err) == (0, "")
    (rs,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "RayService"]
    assert (rs["kind"], rs["metadata"]["name"], rs["metadata"]["namespace"]) == (
        "RayService",
        "gpu-pool",
        "llm",
    )
    apps = [a["name"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]]
    assert apps == ["model-economy", "model-frontier", "tokenyard-router"]
    assert errors(rs) == []
    assert "&id" not in out  # no YAML anchors
    assert "serveConfigV2: |" in out  # a readable literal block
    assert "sk-test-not-a-real-key" not in out  # the Secret's value never appears


def test_problems_are_warnings_on_stderr() -> None:
    code, out, err = run(HERE / "problems", namespace="team-x")
    assert code == 0
    assert err.splitlines() == [
        "warning: ModelDeployment/too-big: GPULimitExceeded: spec.autoscaling.minReplicas: "
        "3 replicas x 1 GPUs = 3 GPUs do not fit ServingPool 'small-pool' "
        "spec.accelerators[0].maxGPUs=2 (l4)",
        "warning: ModelDeployment/wrong-class: AcceleratorNotFound: spec.inCluster.accelerator: "
        "ServingPool 'small-pool' has no accelerator class 'a100' (it has: l4)",
        "warning: ModelDeployment/homeless: PoolNotFound: spec.pool: ServingPool "
        "'no-such-pool' not found in namespace 'team-x'",
    ]
    (rs,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "RayService"]
    assert rs["metadata"]["namespace"] == "team-x"


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("bad-engine.yaml", "spec.inCluster.engine.tensorParallelSize"),
        ("bounds.yaml", "minReplicas must be <= maxReplicas"),
    ],
)
def test_invalid_manifest_names_file_and_field(name: str, needle: str) -> None:
    code, out, err = run(HERE / "invalid" / name)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {HERE / 'invalid' / name}: ModelDeployment ")
    assert needle in err


def test_a_pool_name_kuberay_refuses_is_an_error() -> None:
    path = HERE / "invalid" / "long-pool-name.yaml"
    code, out, err = run(path)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {path}: ServingPool 'team-research-inference-gpu-pool-")
    assert "metadata.name: at most 47 characters (48 given)" in err


def test_missing_file() -> None:
    code, _, err = run("does/not/exist.yaml")
    assert code == 1 and "does/not/exist.yaml: no such file or directory" in err


def test_main_and_the_console_script() -> None:
    ns = argparse.Namespace(filename=[str(HERE / "valid")], namespace="default")
    assert render.main(ns) == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenyard.cli",
            "render",
            "-f",
            str(HERE / "invalid" / "bad-engine.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "tensorParallelSize" in proc.stderr


def test_examples_render_and_validate() -> None:
    examples = REPO / "examples"
    code, out, err = run(examples)
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["PersistentVolumeClaim", "RayService"], kinds
    for d in docs:
        if d["kind"] == "RayService":
            assert errors(d) == [], d["metadata"]["name"]
    assert "warning" not in err, err


ARTIFACT = (Path(__file__).parents[1] / "fixtures" / "difficulty-model.json").read_text()


def _learned_manifests(tmp_path: Path, *, with_configmap: bool) -> Path:
    """The valid manifests with the policy on a Learned classifier (and, optionally, the
    ConfigMap holding its artifact among them)."""
    for f in (HERE / "valid").iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    pol = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    pol["spec"]["classifier"] = {
        "type": "Learned",
        "artifactRef": {"name": "difficulty-model", "key": "model.json"},
        "shadow": {"name": "candidate", "key": "model.json"},
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(pol))
    if with_configmap:
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "difficulty-model", "namespace": "llm"},
            "data": {"model.json": ARTIFACT},
        }
        (tmp_path / "configmap.yaml").write_text(yaml.safe_dump(cm))
    return tmp_path


def _router_policies(out: str) -> list[dict[str, object]]:
    (rs,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "RayService"]
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    (router,) = [a for a in apps if a["name"] == "tokenyard-router"]
    (dep,) = router["deployments"]
    policies: list[dict[str, object]] = dep["user_config"]["policies"]
    return policies


def test_a_learned_classifiers_configmap_among_the_manifests_is_rendered(
    tmp_path: Path,
) -> None:
    version = json.loads(ARTIFACT)["version"]
    code, out, err = run(_learned_manifests(tmp_path, with_configmap=True))
    assert code == 0
    (pol,) = _router_policies(out)
    classifier = pol["classifier"]
    assert isinstance(classifier, dict) and classifier["artifact"] == ARTIFACT
    assert version in out
    # The shadow candidate's ConfigMap is not among them: said, and nothing is scored.
    assert pol.get("shadow") is None
    assert err.splitlines() == [
        "warning: RoutingPolicy/chat: ArtifactUnavailable: spec.classifier.shadow: "
        "ConfigMap 'candidate' not found in namespace 'llm'; nothing is scored"
    ]


def test_without_its_configmap_the_render_carries_the_heuristic_and_says_why(
    tmp_path: Path,
) -> None:
    code, out, err = run(_learned_manifests(tmp_path, with_configmap=False))
    assert code == 0
    (pol,) = _router_policies(out)
    assert pol.get("classifier") is None
    assert (
        "warning: RoutingPolicy/chat: ArtifactUnavailable: spec.classifier.artifactRef: "
        "ConfigMap 'difficulty-model' not found in namespace 'llm'; using the heuristic"
    ) in err.splitlines()
