"""`tokenyard explain` as a user runs it, and explain_request as the router reuses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenyard.accounting.ledger import SpendLedger
from tokenyard.api.manifests import load
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.decision import BackendState
from tokenyard.routing.errors import RouterError
from tokenyard.routing.explain import explain_request, parse_header_args, router_config

MANIFESTS = Path(__file__).parent / "manifests"
NOW = 1_700_000_000.0


def explain_cli(tmp_path: Path, body: dict[str, Any], *args: str) -> tuple[int, Any, str]:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(body))
    proc = subprocess.run(
        [sys.executable, "-m", "tokenyard.cli", "explain", "-f", str(MANIFESTS),
         "--request", str(req), *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )  # fmt: skip
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr


def test_cli_reads_the_body_as_strictly_as_the_router(tmp_path: Path) -> None:
    # An unpaired surrogate, NaN or a duplicate key: the router's 400, not a traceback.
    for raw, message in (
        ('{"model": "chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "unpaired UTF-16 surrogate"),
        ('{"model": "chat", "messages": [{"role": "user", "content": "a"}], "n": NaN}', "NaN"),
        ('{"model": "chat", "model": "x", "messages": []}', "duplicate"),
    ):  # fmt: skip
        req = tmp_path / "raw.json"
        req.write_text(raw)
        proc = subprocess.run(
            [sys.executable, "-m", "tokenyard.cli", "explain", "-f", str(MANIFESTS),
             "--request", str(req)],
            capture_output=True, text=True, timeout=50, check=False,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        out = json.loads(proc.stdout)
        assert out["status"] == 400 and message in out["error"]["message"], out


def test_cli_easy_request_goes_to_the_cheapest(tmp_path: Path) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi!"}]}
    code, out, err = explain_cli(tmp_path, body, "--header", "X-Tenant: team-b")
    assert code == 0, err
    assert out["endpoint"] == "chat"
    assert out["tenant"] == "team-b"
    assert out["difficultySource"] == "classifier"
    assert out["dataClasses"] == ["internal"]
    assert out["strategy"] == "CheapestSufficient" and out["rule"] is None
    assert [t["model"] for t in out["targets"]] == ["economy", "standard", "frontier"]
    assert out["targets"][0]["reason"].startswith("cheapest sufficient: quality 0.3 >=")
    assert out["skipped"] == []
    assert out["budget"]["limitUSD"] == 10


def test_cli_header_override_tags_and_api_key(tmp_path: Path) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    code, out, err = explain_cli(
        tmp_path, body, "--endpoint", "chat",
        "--header", "Authorization: Bearer sk-team-a-123",
        "--header", "X-Tokenyard-Difficulty: 0.5",
    )  # fmt: skip
    assert code == 0, err
    assert out["tenant"] == "team-a"  # from the API key Secret in the manifests
    assert (out["difficulty"], out["difficultySource"]) == (0.5, "header")
    assert [t["model"] for t in out["targets"]] == ["standard", "frontier", "economy"]

    code, out, _ = explain_cli(tmp_path, body | {"model": "chat"},
                               "--header", "X-Tokenyard-Tags: premium")  # fmt: skip
    assert code == 0
    assert out["rule"] == "premium" and out["strategy"] == "Rule"
    assert [t["model"] for t in out["targets"]] == ["frontier", "standard"]


def test_cli_pii_stays_in_cluster(tmp_path: Path) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "email bob@example.com"}]}
    code, out, err = explain_cli(tmp_path, body, "--header", "X-Tokenyard-Difficulty: 0.9")
    assert code == 0, err
    assert out["dataClasses"] == ["pii"]
    assert out["detected"] == {"pii": ["email"]}
    assert [t["model"] for t in out["targets"]] == ["standard", "economy"]
    assert out["skipped"][0]["model"] == "frontier"
    assert "egress denied" in out["skipped"][0]["reason"]
    assert "bob@example.com" not in json.dumps(out)


def test_cli_egress_denied_exits_1_with_openai_error(tmp_path: Path) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "card 4111 1111 1111 1111"}]}
    code, out, _ = explain_cli(tmp_path, body, "--header", "X-Tokenyard-Tags: premium")
    # The premium rule sends to frontier first, standard second: standard still serves.
    assert code == 0 and [t["model"] for t in out["targets"]] == ["standard"]
    long_body = body | {"max_tokens": 9000}  # too long for standard's 8192
    code, out, _ = explain_cli(tmp_path, long_body, "--header", "X-Tokenyard-Tags: premium")
    assert code == 1
    assert out["status"] == 413 and out["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ({"model": "chat", "messages": [], "foo": 1}, 400, None),
    ],
)
def test_cli_errors(tmp_path: Path, body: dict[str, Any], status: int, code: str | None) -> None:
    rc, out, _ = explain_cli(tmp_path, body)
    assert rc == 1
    assert out["status"] == status and out["error"]["code"] == code
    assert set(out["error"]) == {"message", "type", "param", "code"}


def test_cli_bad_manifest_path_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tokenyard.cli", "explain", "-f", str(tmp_path / "missing"),
         "--request", "-"],
        input="{}", capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


CONFIG = router_config(load([MANIFESTS]))


def test_router_config_from_manifests() -> None:
    models = {m.name: m for m in CONFIG.models}
    assert models["economy"].inputPer1M == pytest.approx(1.0 / 3600 / 1000 * 1e6, abs=1e-6)
    assert models["standard"].inputPer1M == pytest.approx(2 * 4.0 / 3600 / 1000 * 1e6, abs=1e-6)
    assert models["frontier"].kind == "External"
    assert [(p.name, p.endpoint) for p in CONFIG.policies] == [("chat", "chat")]


def test_explain_request_uses_live_state_and_ledger() -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    ledger = SpendLedger()
    ledger.record("team-b", "chat", "frontier", 11.0, 1, 1, NOW)
    out = explain_request(
        body,
        {"X-Tenant": "team-b"},
        CONFIG,
        ledger,
        NOW,
        backends={"economy": BackendState(circuit_open=True, retry_after=3)},
    )
    assert out["downgraded"] is True
    assert [t["model"] for t in out["targets"]] == ["standard"]  # cheapest that can serve
    assert {"model": "economy", "reason": "circuit open"} not in out["targets"]


def test_explain_request_requires_known_key_when_configured() -> None:
    # The manifest policy maps keys but does not require them; tighten it here.
    policy = CONFIG.policies[0]
    spec = dict(policy.spec)
    spec["tenants"] = dict(spec["tenants"], requireKnownTenant=True)
    config = CONFIG.model_copy(update={"policies": [policy.model_copy(update={"spec": spec})]})
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(RouterError) as exc:
        explain_request(body, {}, config, StaticSpend(), NOW, api_keys={"chat": {"k": "t"}})
    assert exc.value.status == 401
    out = explain_request(body, {"authorization": "Bearer k"}, config, StaticSpend(), NOW,
                          api_keys={"chat": {"k": "t"}})  # fmt: skip
    assert out["tenant"] == "t"


def test_parse_header_args() -> None:
    assert parse_header_args(["X-Tenant: a", "X-Data-Class:pii, pci"]) == {
        "x-tenant": "a",
        "x-data-class": "pii, pci",
    }
    with pytest.raises(RouterError):
        parse_header_args(["no-colon"])


def test_secret_value_reads_string_data_and_base64_data() -> None:
    from tokenyard.api.manifests import Manifests
    from tokenyard.routing.explain import secret_value

    m = Manifests(
        others=[
            {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "one"}},
            {"kind": "Secret", "metadata": {"name": "t"}, "data": {"b": "dHdv"}},
            {"kind": "Secret", "metadata": {"name": "u"}, "data": {"c": "%%%"}},
        ]
    )
    assert secret_value(m, "s", "a") == "one"
    assert secret_value(m, "t", "b") == "two"
    assert secret_value(m, "u", "c") is None
    assert secret_value(m, "s", "missing") is None


def test_cli_body_without_model_means_the_only_policy(tmp_path: Path) -> None:
    code, out, err = explain_cli(tmp_path, {"prompt": "Once upon a time", "max_tokens": 16})
    assert code == 0, err
    assert out["endpoint"] == "chat" and out["maxTokens"] == 16


def test_cli_explains_a_model_called_by_name_under_its_policy(tmp_path: Path) -> None:
    # A model called directly is routed to itself only, under the tenants, budgets and
    # egress of the first policy that lists it (chat), exactly as the router serves it.
    body = {"model": "standard", "messages": [{"role": "user", "content": "hi"}]}
    code, out, err = explain_cli(tmp_path, body, "--header", "X-Tenant: team-b")
    assert code == 0, err
    assert out["endpoint"] == "standard" and out["policy"] == "default/chat"
    assert out["strategy"] == "Ordered" and out["rule"] is None
    assert [t["model"] for t in out["targets"]] == ["standard"]
    assert out["tenant"] == "team-b" and out["budget"]["limitUSD"] == 10
    # chat keeps PII in the cluster: the external model, called by name with an email in
    # the prompt, is refused as the router would refuse it.
    body = {"model": "frontier", "messages": [{"role": "user", "content": "email a@b.example"}]}
    code, out, _ = explain_cli(tmp_path, body)
    assert code == 1 and out["status"] == 403 and out["error"]["code"] == "egress_denied"


def test_direct_policy_is_the_router_s_view() -> None:
    from tokenyard.contract import direct_policy

    assert direct_policy(CONFIG, "chat") is None  # a policy's endpoint, not a model
    assert direct_policy(CONFIG, "nope") is None
    entry = direct_policy(CONFIG, "economy")
    assert entry is not None
    spec = entry.policy_spec()
    assert [t.model for t in spec.targets] == ["economy"] and spec.rules == []
    assert spec.budgets == CONFIG.policies[0].policy_spec().budgets


def test_router_config_delivers_a_shadow_candidate_from_the_manifests() -> None:
    from tokenyard.api.manifests import Manifests
    from tokenyard.api.policy import RoutingPolicy

    artifact = (Path(__file__).parents[1] / "fixtures" / "difficulty-model.json").read_text()
    policy = RoutingPolicy.model_validate(
        {
            "metadata": {"name": "chat"},
            "spec": {
                "pool": "p",
                "targets": [{"model": "economy"}],
                "classifier": {"shadow": {"name": "candidate"}},
            },
        }
    )
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "candidate"},
          "data": {"model.json": artifact}}  # fmt: skip
    with_cm = router_config(Manifests(policies=[policy], others=[cm])).policies[0]
    assert with_cm.classifier is None
    assert with_cm.shadow is not None and with_cm.shadow.artifact == artifact
    assert router_config(Manifests(policies=[policy])).policies[0].shadow is None
