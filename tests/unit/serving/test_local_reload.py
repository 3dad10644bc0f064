"""`tokenyard up` reloads its manifests on SIGHUP (serving.local.reload): the new Serve
config is applied when it can be, the running one is kept (and the reason printed)
when the manifests are invalid or the change needs a restart. Serve itself is replaced
here by a recorder at the ``deploy`` seam; tests/serving/test_feedback_loop_real.py
reloads a real `tokenyard up`."""

from __future__ import annotations

import argparse
import io
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenyard.api.manifests import load
from tokenyard.serving import local

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "local"


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.Namespace, local.LocalPlan, list[dict[str, Any]]]:
    manifests = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, manifests)
    for f in manifests.glob("*.yaml"):  # sources that exist: nothing to build
        f.write_text(f.read_text().replace("~/.cache/tokenyard/tiny", str(tmp_path)))
    (tmp_path / "economy").mkdir()
    (tmp_path / "frontier").mkdir()
    monkeypatch.setattr(local, "_has_gpu", lambda: False)
    deployed: list[dict[str, Any]] = []
    monkeypatch.setattr(local, "deploy", lambda cfg: deployed.append(dict(cfg)))
    monkeypatch.setattr(local, "wait_running", lambda names, stop, timeout_s, out: True)
    args = argparse.Namespace(filename=[str(manifests)], host="127.0.0.1", port=8000)
    current = local.plan(load([str(manifests)]), host="127.0.0.1", port=8000, state_dir=tmp_path)
    return args, current, deployed


def _policy_file(args: argparse.Namespace) -> Path:
    return Path(args.filename[0]) / "policy.yaml"


def _router_policy(cfg: dict[str, Any]) -> dict[str, Any]:
    router = cfg["applications"][-1]
    policy: dict[str, Any] = router["deployments"][0]["user_config"]["policies"][0]
    return policy


def test_a_policy_change_is_deployed_and_becomes_the_running_plan(
    setup: tuple[argparse.Namespace, local.LocalPlan, list[dict[str, Any]]],
) -> None:
    args, current, deployed = setup
    doc = yaml.safe_load(_policy_file(args).read_text())
    doc["spec"]["learning"] = {"capture": {"sampleRate": 1.0}, "exploration": {"share": 0.2}}
    _policy_file(args).write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    new = local.reload(args, current, threading.Event(), out=out)
    assert new is not current
    assert len(deployed) == 1 and deployed[0] == new.serve_config
    learning = _router_policy(deployed[0])["spec"]["learning"]
    assert learning["capture"]["sampleRate"] == 1.0
    assert learning["exploration"]["share"] == 0.2
    # The model applications are the same: Serve leaves their replicas alone.
    assert deployed[0]["applications"][:-1] == current.serve_config["applications"][:-1]
    assert "reloaded." in out.getvalue()


def test_invalid_manifests_keep_the_running_config(
    setup: tuple[argparse.Namespace, local.LocalPlan, list[dict[str, Any]]],
) -> None:
    args, current, deployed = setup
    doc = yaml.safe_load(_policy_file(args).read_text())
    doc["spec"]["strategy"] = "Nope"
    _policy_file(args).write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    assert local.reload(args, current, threading.Event(), out=out) is current
    assert deployed == []
    assert "keeping the running config" in out.getvalue()


def test_a_new_accelerator_class_needs_a_restart(
    setup: tuple[argparse.Namespace, local.LocalPlan, list[dict[str, Any]]],
) -> None:
    args, current, deployed = setup
    models = Path(args.filename[0]) / "models.yaml"
    pool = Path(args.filename[0]) / "pool.yaml"
    doc = yaml.safe_load(pool.read_text())
    doc["spec"]["accelerators"].append({**doc["spec"]["accelerators"][0], "name": "cpu2"})
    pool.write_text(yaml.safe_dump(doc))
    models.write_text(models.read_text().replace("accelerator: cpu\n", "accelerator: cpu2\n"))
    out = io.StringIO()
    assert local.reload(args, current, threading.Event(), out=out) is current
    assert deployed == []
    assert "needs a restart" in out.getvalue()


def test_serve_refusing_the_config_keeps_the_running_one(
    setup: tuple[argparse.Namespace, local.LocalPlan, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args, current, _ = setup

    def refuse(cfg: Any) -> None:
        raise ValueError("bad config")

    monkeypatch.setattr(local, "deploy", refuse)
    out = io.StringIO()
    assert local.reload(args, current, threading.Event(), out=out) is current
    assert "Serve refused the new config: bad config" in out.getvalue()
