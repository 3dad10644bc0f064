"""The egress scan: what it reads of a body, how it folds and decodes, and that it fails closed."""

from __future__ import annotations

import base64
import datetime
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tokenyard.api.manifests import load
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import CatalogueEntry
from tokenyard.routing import detectors, egress
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.decision import BackendState
from tokenyard.routing.egress import (
    UNSCANNABLE_ERROR,
    UNSCANNABLE_TOKEN_IDS,
    UNSCANNABLE_TOO_LONG,
    forwarded_strings,
    scan_body,
)
from tokenyard.routing.errors import RouterError
from tokenyard.routing.explain import explain_request, router_config
from tokenyard.routing.features import extract_features
from tokenyard.routing.policy_engine import decide
from tokenyard.routing.request import RequestKind, parse_request
from tokenyard.routing.textnorm import decoded_views, fold, is_private_key_body

EXTERNAL = CatalogueEntry(
    name="provider", servedModelName="provider", kind="External", quality=1.0,
    inputPer1M=1.0, outputPer1M=1.0, dataClasses=["public", "internal"], ready=True,
)  # fmt: skip
LOCAL = CatalogueEntry(
    name="local", servedModelName="local", kind="InCluster", quality=0.5,
    inputPer1M=0.1, outputPer1M=0.1, ready=True,
)  # fmt: skip


def _spec(targets: list[str], detectors_: list[str] | None = None) -> RoutingPolicySpec:
    egress_spec: dict[str, Any] = {"allowedExternalDataClasses": ["public", "internal"]}
    if detectors_ is not None:
        egress_spec["detectors"] = detectors_
    return RoutingPolicySpec.model_validate(
        {
            "pool": "p",
            "strategy": "Ordered",
            "targets": [{"model": t} for t in targets],
            "egress": egress_spec,
        }
    )


def _skipped(decision: Any, model: str) -> str:
    return str(next(c.reason for c in decision.skipped if c.model == model))


def _decide(body: dict[str, Any], spec: RoutingPolicySpec, kind: RequestKind = "chat") -> Any:
    parsed = parse_request(body, {}, kind)
    features = extract_features(parsed, spec, "e", "t")
    catalogue = {"provider": EXTERNAL, "local": LOCAL}
    states = {n: BackendState() for n in catalogue}
    return decide(features, spec, catalogue, states, StaticSpend(), 0.0, random.Random(0))


def test_pii_outside_message_content_keeps_the_request_in_the_cluster() -> None:
    # Before: only message content was scanned, and `user` went to the provider.
    spec = _spec(["provider", "local"])
    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert [c.model for c in _decide(plain, spec).targets] == ["provider", "local"]
    leaky = {**plain, "user": "jane.doe@example.com"}
    decision = _decide(leaky, spec)
    assert [c.model for c in decision.targets] == ["local"]
    assert "pii" in _skipped(decision, "provider")


def test_token_id_prompts_never_reach_an_external_target() -> None:
    body = {"model": "m", "prompt": [15339, 1917]}
    decision = _decide(body, _spec(["provider", "local"]), "completion")
    assert [c.model for c in decision.targets] == ["local"]
    assert UNSCANNABLE_TOKEN_IDS in _skipped(decision, "provider")
    with pytest.raises(RouterError) as err:
        _decide(body, _spec(["provider"]), "completion")
    assert err.value.status == 403 and err.value.code == "egress_denied"
    assert UNSCANNABLE_TOKEN_IDS in err.value.message


def test_token_ids_are_allowed_out_when_the_policy_runs_no_detector() -> None:
    decision = _decide({"model": "m", "prompt": [1, 2]}, _spec(["provider"], []), "completion")
    assert [c.model for c in decision.targets] == ["provider"]


def test_a_failing_detector_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setitem(detectors.LOOSE_CHECKS, "email", broken)  # type: ignore[index]
    scan = scan_body({"messages": [{"role": "user", "content": "hi"}]})
    assert scan.unscannable == (UNSCANNABLE_ERROR,)
    decision = _decide(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        _spec(["provider", "local"]),
    )
    assert [c.model for c in decision.targets] == ["local"]


def test_text_past_the_scan_limit_is_not_sent_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "MAX_SCAN_CHARS", 100)
    scan = scan_body({"messages": [{"role": "user", "content": "x" * 101}]})
    assert scan.unscannable == (UNSCANNABLE_TOO_LONG,)


def test_deep_nesting_is_walked_without_recursion() -> None:
    inner: Any = "card 4111 1111 1111 1111"
    for _ in range(50_000):
        inner = {"k": [inner]}
    assert scan_body({"metadata": inner}).found == {"pci": ("payment-card",)}


def test_forwarded_strings_split_content_from_the_rest() -> None:
    body = {
        "model": "secret-model-name",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}], "name": "n"},
            {"role": "user", "content": "b"},
        ],
        "logit_bias": {"4111": 1},
        "seed": 4111111111111111,
        "metadata": {"k": 4111111111111111, "small": 7},
        "stop": ["s"],
    }
    content, other, unscannable = forwarded_strings(body)
    assert content == ["a", "b"]
    assert "secret-model-name" not in other and "4111" not in other
    assert {"n", "s", "k", "4111111111111111", "metadata", "user", "text"} <= set(other)
    assert "7" not in other and unscannable == []


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "jane@example.com"),
        ("jane\u200b.doe\u2060@ex\u00adample.com", "jane.doe@example.com"),
        ("٤١١١\u00a0۱۱۱۱ १११११", "4111\t1111 11111"),  # an NBSP is told apart
        ("jаne@еxample.com", "jane@example.com"),  # Cyrillic а and е
        ("-----BEGIN РGР PRIVАTE KEY-----", "-----BEGIN PGP PRIVATE KEY-----"),
        ("plain ascii stays", "plain ascii stays"),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded


def test_decoded_views_one_level() -> None:
    secret = "jane.doe@example.com"
    once = base64.b64encode(secret.encode()).decode()
    assert secret in decoded_views(f"see {once}").texts
    assert secret in decoded_views(secret.replace("@", "%40")).texts
    assert secret in decoded_views(secret.replace("@", "&#64;")).texts
    assert secret in decoded_views(secret.encode().hex()).texts
    twice = base64.b64encode(once.encode()).decode()
    assert secret not in decoded_views(twice).texts  # the documented limit


def _certificate_and_keys() -> tuple[bytes, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    der = serialization.Encoding.DER
    return (
        cert.public_bytes(der),
        key.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo),
        key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def test_key_bodies_private_yes_public_and_certificates_no() -> None:
    cert, public, private = _certificate_and_keys()
    assert is_private_key_body(private)
    assert not is_private_key_body(public)
    assert not is_private_key_body(cert)
    for data, expected in ((cert, {}), (public, {}), (private, {"secret": ("private-key",)})):
        body = {"messages": [{"role": "user", "content": base64.b64encode(data).decode()}]}
        assert scan_body(body).found == expected


def test_results_never_carry_the_matched_text() -> None:
    scan = scan_body({"messages": [{"role": "user", "content": "jane@example.com"}]})
    assert "jane" not in repr(scan)


def test_only_enabled_detectors_fire() -> None:
    body = {
        "user": "jane@example.com",
        "messages": [{"role": "user", "content": "4111 1111 1111 1111"}],
    }
    assert scan_body(body, ["payment-card"]).found == {"pci": ("payment-card",)}
    assert scan_body(body, []).found == {}
    with pytest.raises(ValueError, match="unknown detector"):
        scan_body(body, ["nope"])  # type: ignore[list-item]


def test_a_word_cut_between_two_long_messages_is_seen_whole() -> None:
    first = "lorem ipsum " * 500 + "write to jane.doe@exa"
    second = "mple.com today " + "dolor sit " * 500
    body = {"messages": [{"role": "user", "content": first}, {"role": "user", "content": second}]}
    assert scan_body(body).found == {"pii": ("email",)}
    middle = "and more " * 100
    apart = {"messages": [{"role": "user", "content": s} for s in (first, middle, second)]}
    assert scan_body(apart).found == {}  # a long message between the halves


def test_explain_shows_why_the_external_target_was_left_out() -> None:
    config = router_config(load([Path(__file__).parent / "manifests"]))
    headers = {"X-Tenant": "team-b", "X-Tokenyard-Difficulty": "1"}
    leaky = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"ref": "4111.1111.1111.1111"},
    }
    out = explain_request(leaky, headers, config, StaticSpend(), 0.0)
    assert out["detected"] == {"pci": ["payment-card"]}
    skipped = {s["model"]: s["reason"] for s in out["skipped"]}
    assert "egress denied: data class pci" in skipped["frontier"]

    tokens = {"model": "chat", "prompt": [15339, 1917]}
    out = explain_request(tokens, headers, config, StaticSpend(), 0.0, kind="completion")
    skipped = {s["model"]: s["reason"] for s in out["skipped"]}
    assert skipped["frontier"] == f"egress denied: {UNSCANNABLE_TOKEN_IDS}"
