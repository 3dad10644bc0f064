"""A policy's learned classifier: the delivered entry, the score-to-difficulty map, the
router's loading on reconfigure, and what explain shows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenyard.api.manifests import load
from tokenyard.contract import (
    CatalogueEntry,
    LearnedClassifierEntry,
    PolicyEntry,
    RouterConfig,
    learned_classifier_entry,
)
from tokenyard.operator.render import render
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.explain import classifier_warnings, explain_request, router_config
from tokenyard.routing.learned.model import content_version, load_model
from tokenyard.routing.learned.policy import PolicyClassifier, build_policy_classifier
from tokenyard.routing.request import parse_request
from tokenyard.serving.router.state import build_state
from tokenyard.settings import OperatorSettings

FIXTURES = Path(__file__).parents[1] / "fixtures"
MANIFESTS = Path(__file__).parent / "manifests"
ARTIFACT = (FIXTURES / "difficulty-model.json").read_text()
DOC = json.loads(ARTIFACT)
HARD = "tell me about ocean tides and lunar orbits"  # the fixture's strong-model topic
EASY = "tell me about baking bread at home"


def chat(text: str) -> Any:
    return parse_request({"model": "chat", "messages": [{"role": "user", "content": text}]},
                         {}, "chat")  # fmt: skip


def test_entry_takes_the_highest_threshold_that_keeps_the_aim() -> None:
    entry = learned_classifier_entry(ARTIFACT, 0.95)
    table = DOC["qualityTable"]
    keeps = [p for p in table if p["qualityOfStrong"] >= 0.95]
    best = max(keeps, key=lambda p: p["threshold"])
    assert (entry.version, entry.threshold) == (DOC["version"], best["threshold"])
    assert entry.expectedStrongShare == best["strongShare"]
    # The router's model picks the same point.
    point = load_model(ARTIFACT.encode()).threshold_for_quality(0.95)
    assert point is not None and point.threshold == pytest.approx(entry.threshold, abs=1e-6)
    # A stricter aim never needs fewer strong calls.
    strict = learned_classifier_entry(ARTIFACT, 1.0)
    assert strict.threshold <= entry.threshold


def test_entry_parses_an_artifact_once_and_gives_each_caller_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An operator pass asks for the same artifact for the router config and for status.
    from tokenyard import contract

    calls = []
    real = json.loads
    monkeypatch.setattr(contract.json, "loads", lambda t: calls.append(1) or real(t))
    text = _edited(training={"note": "parsed once"})
    a = learned_classifier_entry(text, 0.95)
    b = learned_classifier_entry(text, 0.95)
    assert len(calls) == 1
    assert a == b and a is not b
    learned_classifier_entry(text, 1.0)  # another aim: its own threshold
    assert len(calls) == 2


def _edited(**changes: Any) -> str:
    doc = dict(DOC)
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "the artifact is not JSON"),
        ("[1, 2]", "is not a difficulty model"),
        (_edited(kind="Other"), "is not a difficulty model"),
        (_edited(formatVersion=2), "formatVersion 2 is not supported"),
        (_edited(version=None), "no valid version"),
        (_edited(qualityTable=[]), "no threshold in the artifact's qualityTable keeps 0.95"),
        (
            _edited(qualityTable=[{"threshold": 0.5, "qualityOfStrong": 0.8, "strongShare": 0.2}]),
            "(the table reaches 0.8)",
        ),
        ("x" * (1 << 20) + "x", "over 1 MiB"),
    ],
)
def test_entry_refuses_what_cannot_be_delivered(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as exc:
        learned_classifier_entry(text, 0.95)
    assert message in str(exc.value)


def test_score_maps_to_the_strongest_target_at_the_threshold() -> None:
    model = load_model(ARTIFACT.encode())
    clf = PolicyClassifier.build(model, "v", 0.7, 0.95, [0.3, 0.6, 0.9])
    # At or above the threshold: above every cheaper target's quality, up to the strongest.
    for s in (0.7, 0.8, 1.0):
        assert 0.6 < clf.difficulty(s) <= 0.9
    # Below: under the next-strongest target's quality, ordered by score.
    below = [clf.difficulty(s) for s in (0.0, 0.2, 0.5, 0.69)]
    assert below == sorted(below) and all(d < 0.6 for d in below)
    # One quality level among the targets: nothing to choose, the score is the difficulty.
    assert PolicyClassifier.build(model, "v", 0.7, 0.95, [0.5, 0.5]).difficulty(0.42) == 0.42


def _config(entry: LearnedClassifierEntry | None) -> RouterConfig:
    spec = {"pool": "p", "targets": [{"model": "small"}, {"model": "big"}]}
    models = [
        CatalogueEntry.model_validate(
            {"name": n, "servedModelName": n, "kind": "External", "quality": q,
             "inputPer1M": p, "outputPer1M": p, "ready": True}
        )
        for n, q, p in (("small", 0.3, 0.1), ("big", 0.9, 10.0))
    ]  # fmt: skip
    pol = PolicyEntry(name="chat", namespace="ns", endpoint="chat", spec=spec, classifier=entry)
    return RouterConfig(pool="p", namespace="ns", models=models, policies=[pol])


def _state(cfg: RouterConfig, previous: Any = None) -> Any:
    return build_state(cfg, previous, None, {}, make_backends=lambda *_: {})  # type: ignore[arg-type]


def test_router_loads_the_classifier_and_a_new_version_on_reconfigure() -> None:
    entry = learned_classifier_entry(ARTIFACT, 0.95)
    s1 = _state(_config(entry))
    clf = s1.policies["chat"].classifier
    assert isinstance(clf, PolicyClassifier) and clf.version == DOC["version"]
    assert clf.score(chat(HARD)) > 0.3 >= clf.score(chat(EASY))  # big vs small
    # Same version again: the loaded model is reused, not parsed again.
    s2 = _state(_config(entry), s1)
    assert s2.policies["chat"].classifier.model is clf.model
    # A new version replaces it in the next state (requests in flight keep theirs).
    doc = json.loads(ARTIFACT)
    doc["calibration"]["probability"][-1] = 0.99
    doc["version"] = content_version(
        {k: doc[k] for k in ("label", "features", "heads", "calibration")}
    )
    s3 = _state(_config(learned_classifier_entry(json.dumps(doc), 0.95)), s2)
    assert s3.policies["chat"].classifier.version == doc["version"] != DOC["version"]
    assert s2.policies["chat"].classifier.version == DOC["version"]
    # Back to the heuristic when the operator stops delivering one.
    assert _state(_config(None), s3).policies["chat"].classifier is None


def test_router_keeps_the_heuristic_when_the_artifact_does_not_load() -> None:
    # The operator's light check passes, the router's full check does not: a version
    # that is not the content's (tampered weights).
    doc = json.loads(ARTIFACT)
    doc["heads"]["better"]["bias"] += 0.5
    entry = learned_classifier_entry(json.dumps(doc), 0.95)
    assert _state(_config(entry)).policies["chat"].classifier is None
    with pytest.raises(ValueError, match="does not match"):
        build_policy_classifier(entry, [0.3, 0.9])


def _manifests(tmp_path: Path) -> Path:
    for name in ("models.yaml", "pool.yaml"):
        shutil.copy(MANIFESTS / name, tmp_path / name)
    policy = next(yaml.safe_load_all((MANIFESTS / "policy.yaml").read_text()))
    policy["spec"]["classifier"] = {"type": "Learned", "artifactRef": {"name": "difficulty"}}
    del policy["spec"]["tenants"]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "difficulty"},
          "data": {"model.json": ARTIFACT}}  # fmt: skip
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump_all([policy, cm]))
    return tmp_path


def test_explain_shows_the_score_and_the_threshold(tmp_path: Path) -> None:
    config = router_config(load([_manifests(tmp_path)]))
    entry = learned_classifier_entry(ARTIFACT, 0.95)
    outs = {}
    for text in (HARD, EASY):
        body = {"model": "chat", "messages": [{"role": "user", "content": text}]}
        outs[text] = explain_request(body, {"x-tenant": "t"}, config, StaticSpend(), 0.0)
    hard, easy = outs[HARD]["classifier"], outs[EASY]["classifier"]
    for c in (hard, easy):
        assert (c["type"], c["version"], c["threshold"]) == ("Learned", DOC["version"],
                                                             entry.threshold)  # fmt: skip
        assert c["keepStrongQuality"] == 0.95
    assert hard["score"] >= entry.threshold > easy["score"]
    assert hard["meaning"].startswith(f"score {hard['score']:g} >= threshold")
    assert outs[HARD]["targets"][0]["model"] == "frontier"
    assert outs[EASY]["targets"][0]["model"] != "frontier"
    assert outs[HARD]["difficulty"] == pytest.approx(hard["difficulty"], abs=1e-6)


def test_explain_reads_the_configmap_of_the_policys_namespace(tmp_path: Path) -> None:
    # As in the cluster, where the router reads the artifact from the policy's namespace:
    # a ConfigMap of the same name elsewhere is not the policy's. One that names no
    # namespace (as train-router --configmap writes it) is in -n, as kubectl apply -n and
    # tokenyard render -n would put it (one rule for render and explain).
    d = _manifests(tmp_path)
    policy, cm = yaml.safe_load_all((d / "policy.yaml").read_text())
    body = {"model": "chat", "messages": [{"role": "user", "content": HARD}]}
    policy["metadata"]["namespace"] = "team-a"
    cases = (("other", "team-a", "Heuristic"), ("team-a", "default", "Learned"),
             ("team-a", "team-a", "Learned"), (None, "default", "Heuristic"),
             (None, "team-a", "Learned"))  # fmt: skip
    for cm_ns, n, expected in cases:
        cm["metadata"]["namespace"] = cm_ns
        (d / "policy.yaml").write_text(yaml.safe_dump_all([policy, cm]))
        m = load([d])
        out = explain_request(body, {"x-tenant": "t"}, router_config(m, n), StaticSpend(), 0.0)
        assert out["classifier"]["type"] == expected, (cm_ns, n)
        if n == "team-a":  # where render puts the pool and models beside the policy
            # The same lookup as render's: it warns exactly when explain has no artifact.
            _, problems = render(m, n, OperatorSettings())
            unavailable = [p for p in problems if p.reason == "ArtifactUnavailable"]
            assert bool(unavailable) == (expected == "Heuristic"), (cm_ns, n)
        # A ConfigMap of that name in another namespace is named in a warning.
        warnings = classifier_warnings(m, n)
        assert bool(warnings) == (expected == "Heuristic"), (cm_ns, n)
        if warnings:
            assert "not team-a" in warnings[0] and "spec.classifier.artifactRef" in warnings[0]
    # `tokenyard up` has no namespaces: the ConfigMap of that name serves wherever it is.
    cm["metadata"]["namespace"] = "other"
    (d / "policy.yaml").write_text(yaml.safe_dump_all([policy, cm]))
    out = explain_request(
        body, {"x-tenant": "t"}, router_config(load([d]), None), StaticSpend(), 0.0
    )
    assert out["classifier"]["type"] == "Learned"
    # Two of the same namespace and name: the later one wins, as the later apply would.
    bad = {**cm, "metadata": {"name": cm["metadata"]["name"]}, "data": {"model.json": "no"}}
    (d / "policy.yaml").write_text(yaml.safe_dump_all([policy, {**cm, "metadata": {
        "name": cm["metadata"]["name"], "namespace": "team-a"}}, bad]))  # fmt: skip
    out = explain_request(
        body, {"x-tenant": "t"}, router_config(load([d]), "team-a"), StaticSpend(), 0.0
    )
    assert out["classifier"]["type"] == "Heuristic"  # the invalid, later one is read


def test_explain_cli_namespace_option_and_warning(tmp_path: Path) -> None:
    # `tokenyard explain -n`: where objects without a namespace go; a ConfigMap that lands
    # elsewhere than the policy is named on stderr, with the way out.
    (tmp_path / "m").mkdir()
    d = _manifests(tmp_path / "m")
    policy, cm = yaml.safe_load_all((d / "policy.yaml").read_text())
    policy["metadata"]["namespace"] = "team-a"
    (d / "policy.yaml").write_text(yaml.safe_dump_all([policy, cm]))
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"model": "chat", "messages": [{"role": "user", "content": HARD}]}))
    got = {}
    for n in ("default", "team-a"):
        proc = subprocess.run(
            [sys.executable, "-m", "tokenyard.cli", "explain", "-f", str(d), "--request",
             str(req), "--header", "X-Tenant: t", "-n", n],
            capture_output=True, text=True, timeout=50, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got[n] = (json.loads(proc.stdout)["classifier"]["type"], proc.stderr)
    assert got["team-a"] == ("Learned", "")
    kind, err = got["default"]
    assert kind == "Heuristic"
    assert "warning: RoutingPolicy team-a/chat: spec.classifier.artifactRef: ConfigMap" in err
    assert "'difficulty' is in namespace default, not team-a" in err


def test_explain_without_the_configmap_says_the_heuristic_scores(tmp_path: Path) -> None:
    d = _manifests(tmp_path)
    docs = list(yaml.safe_load_all((d / "policy.yaml").read_text()))
    (d / "policy.yaml").write_text(yaml.safe_dump(docs[0]))
    config = router_config(load([d]))
    body = {"model": "chat", "messages": [{"role": "user", "content": HARD}]}
    out = explain_request(body, {"x-tenant": "t"}, config, StaticSpend(), 0.0)
    assert out["classifier"]["type"] == "Heuristic"
    assert "not loaded" in out["classifier"]["message"]
