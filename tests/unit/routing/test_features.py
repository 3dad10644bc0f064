"""Request parsing (400s), feature extraction and tenant resolution."""

from __future__ import annotations

from typing import Any

import pytest

from tokenyard.api.policy import RoutingPolicySpec, TenantSpec
from tokenyard.routing.errors import RouterError
from tokenyard.routing.features import extract_features
from tokenyard.routing.request import MESSAGE_OVERHEAD_TOKENS, estimate_tokens, parse_request
from tokenyard.routing.tenants import parse_api_keys, resolve_tenant

MSG = [{"role": "user", "content": "hello there"}]


def test_parse_chat() -> None:
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url",
                                                                         "image_url": {}}]},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        "max_tokens": 50,
        "stream": True,
        "temperature": 0.2,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    p = parse_request(body, {"X-Tenant": "a"}, "chat")
    assert p.model == "chat" and p.kind == "chat"
    assert p.roles == ("system", "user", "assistant")
    assert p.messages == 3
    assert p.prompt_text == "be brief\nhi\n"
    assert p.prompt_tokens == 2 + 1 + 0 + 3 * MESSAGE_OVERHEAD_TOKENS
    assert p.max_tokens == 50 and p.stream is True
    assert p.headers == {"x-tenant": "a"}
    assert p.body is body


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    p = parse_request({"model": "m", "messages": MSG, "max_tokens": 10,
                       "max_completion_tokens": 99}, {}, "chat")  # fmt: skip
    assert p.max_tokens == 99


@pytest.mark.parametrize(
    ("prompt", "text", "tokens"),
    [
        ("abcdefgh", "abcdefgh", 2),
        (["abcd", "efgh"], "abcd\nefgh", 2),
        ([1, 2, 3], "", 3),
        ([[1, 2], [3, 4, 5]], "", 5),
    ],
)
def test_parse_completion(prompt: Any, text: str, tokens: int) -> None:
    p = parse_request({"model": "m", "prompt": prompt, "max_tokens": 5}, {}, "completion")
    assert (p.prompt_text, p.prompt_tokens, p.max_tokens, p.roles) == (text, tokens, 5, ("user",))


@pytest.mark.parametrize(
    ("body", "kind", "param"),
    [
        ([1, 2], "chat", None),
        ("text", "chat", None),
        ({"model": "m", "messages": MSG, "temprature": 1}, "chat", "temprature"),
        ({"model": "m", "messages": MSG, "prompt": "x"}, "chat", "prompt"),
        ({"model": "m", "prompt": "x", "messages": MSG}, "completion", "messages"),
        ({"model": "m", "prompt": "x", "tools": []}, "completion", "tools"),
        ({"messages": MSG}, "chat", "model"),
        ({"model": "", "messages": MSG}, "chat", "model"),
        ({"model": 3, "messages": MSG}, "chat", "model"),
        ({"model": "m"}, "chat", "messages"),
        ({"model": "m", "messages": []}, "chat", "messages"),
        ({"model": "m", "messages": "hi"}, "chat", "messages"),
        ({"model": "m", "messages": ["hi"]}, "chat", "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "chat", "messages"),
        ({"model": "m", "messages": [{"role": "user"}]}, "chat", "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "chat", "messages[0]"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "chat",
         "messages[0]"),
        ({"model": "m", "messages": MSG, "max_tokens": "10"}, "chat", "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "chat", "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": True}, "chat", "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": 1.5}, "chat", "max_tokens"),
        ({"model": "m", "messages": MSG, "temperature": "hot"}, "chat", "temperature"),
        ({"model": "m", "messages": MSG, "temperature": 3}, "chat", "temperature"),
        ({"model": "m", "messages": MSG, "top_p": 1.5}, "chat", "top_p"),
        ({"model": "m", "messages": MSG, "n": 0}, "chat", "n"),
        ({"model": "m", "messages": MSG, "stream": "yes"}, "chat", "stream"),
        ({"model": "m", "messages": MSG, "stream": 1}, "chat", "stream"),
        ({"model": "m", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "chat", "stop"),
        ({"model": "m", "messages": MSG, "stop": 5}, "chat", "stop"),
        ({"model": "m", "messages": MSG, "tools": {}}, "chat", "tools"),
        ({"model": "m", "messages": MSG, "logprobs": 3}, "chat", "logprobs"),
        ({"model": "m", "prompt": "x", "logprobs": True}, "completion", "logprobs"),
        ({"model": "m", "prompt": 5}, "completion", "prompt"),
        ({"model": "m", "prompt": []}, "completion", "prompt"),
        ({"model": "m", "prompt": ["a", 1]}, "completion", "prompt"),
        ({"model": "m"}, "completion", "prompt"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400(body: Any, kind: Any, param: str | None) -> None:
    with pytest.raises(RouterError) as exc:
        parse_request(body, {}, kind)
    assert exc.value.status == 400
    assert exc.value.type == "invalid_request_error"
    assert exc.value.param == param


def test_null_optional_parameters_are_accepted() -> None:
    body = {"model": "m", "messages": MSG, "temperature": None, "max_tokens": None, "stop": None}
    assert parse_request(body, {}, "chat").max_tokens is None


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é" * 4, 2), ("日本語", 3)]
)
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def _policy(**egress: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": "a"}], "egress": egress}
    )


def _features(content: str, headers: dict[str, str], **egress: Any) -> Any:
    parsed = parse_request({"model": "m", "messages": [{"role": "user", "content": content}]},
                           headers, "chat")  # fmt: skip
    return extract_features(parsed, _policy(**egress), "chat", "team-a")


@pytest.mark.parametrize(
    ("content", "headers", "egress", "classes"),
    [
        ("hello", {}, {}, {"internal"}),  # the policy's default class
        ("hello", {}, {"defaultDataClass": "public"}, {"public"}),
        ("hello", {"X-Data-Class": "Public"}, {}, {"public"}),
        ("hello", {"x-data-class": "public, finance"}, {}, {"public", "finance"}),
        ("mail me at a@example.com", {"X-Data-Class": "public"}, {}, {"public", "pii"}),
        ("mail me at a@example.com", {}, {"detectors": ["iban"]}, {"internal"}),
        ("key -----BEGIN EC PRIVATE KEY-----", {}, {}, {"secret"}),
        ("hello", {"X-Class": "pii"}, {"dataClassHeader": "X-Class"}, {"pii"}),
    ],
)
def test_data_classes_from_header_and_detectors(
    content: str, headers: dict[str, str], egress: dict[str, Any], classes: set[str]
) -> None:
    assert _features(content, headers, **egress).data_classes == classes


def test_features_record_detectors_and_tags() -> None:
    f = _features(
        "card 4111 1111 1111 1111",
        {"X-Tokenyard-Tags": "batch, eval", "X-Data-Class": "internal"},
    )
    assert f.detected == {"pci": ("payment-card",)}
    assert f.declared_classes == {"internal"}
    assert f.tags == {"batch", "eval"}
    assert (f.endpoint, f.tenant, f.messages, f.stream) == ("chat", "team-a", 1, False)
    assert "4111" not in repr(f)  # prompt text stays out of reprs (and so out of logs)


@pytest.mark.parametrize(
    "headers", [{"X-Data-Class": "PII!"}, {"X-Data-Class": "9lives"}, {"X-Tokenyard-Tags": "a b"}]
)
def test_malformed_class_or_tag_header_is_400(headers: dict[str, str]) -> None:
    with pytest.raises(RouterError) as exc:
        _features("hello", headers)
    assert exc.value.status == 400


KEYS = {"sk-a": "team-a", "sk-b": "team-b"}


@pytest.mark.parametrize(
    ("headers", "spec", "keys", "tenant"),
    [
        ({}, {}, {}, "default"),
        ({}, {"defaultTenant": "anon"}, {}, "anon"),
        ({"X-Tenant": "team-x"}, {}, {}, "team-x"),
        ({"x-tenant": "team-x"}, {}, {}, "team-x"),
        ({"X-Team": "t"}, {"header": "X-Team"}, {}, "t"),
        ({"Authorization": "Bearer sk-a"}, {}, KEYS, "team-a"),
        # The key is a credential, the header only a claim: the key wins.
        ({"Authorization": "Bearer sk-b", "X-Tenant": "team-a"}, {}, KEYS, "team-b"),
        ({"Authorization": "Bearer sk-zzz", "X-Tenant": "t"}, {}, KEYS, "t"),
        ({"Authorization": "bearer sk-a"}, {"requireKnownTenant": True}, KEYS, "team-a"),
        ({"X-Tenant": "t"}, {"requireKnownTenant": True}, {}, "t"),
    ],
)
def test_resolve_tenant(
    headers: dict[str, str], spec: dict[str, Any], keys: dict[str, str], tenant: str
) -> None:
    assert resolve_tenant(headers, TenantSpec.model_validate(spec), keys) == tenant


@pytest.mark.parametrize(
    ("headers", "keys"),
    [
        ({}, {}),  # no tenant at all
        ({}, KEYS),
        ({"Authorization": "Bearer sk-zzz"}, KEYS),  # unknown key
        ({"X-Tenant": "team-a"}, KEYS),  # a claim without the key
        ({"Authorization": "Basic sk-a"}, KEYS),
    ],
)
def test_require_known_tenant_401(headers: dict[str, str], keys: dict[str, str]) -> None:
    with pytest.raises(RouterError) as exc:
        resolve_tenant(headers, TenantSpec(requireKnownTenant=True), keys)
    assert exc.value.status == 401
    assert "sk-" not in exc.value.message


def test_invalid_tenant_name_is_400() -> None:
    with pytest.raises(RouterError) as exc:
        resolve_tenant({"X-Tenant": "a b\n"}, TenantSpec(), {})
    assert exc.value.status == 400


def test_parse_api_keys() -> None:
    assert parse_api_keys("sk-a: team-a\nsk-b: team-b\n") == KEYS
    assert parse_api_keys("") == {}
    assert parse_api_keys("# nothing\n") == {}


@pytest.mark.parametrize("text", ["- a\n- b\n", "sk-a: [x]\n", "sk-a: 'bad tenant'\n", "a: b: c"])
def test_parse_api_keys_rejects_malformed_without_echoing_keys(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_api_keys(text)
    assert "sk-a" not in str(exc.value)


def test_detectors_argument_accepts_names_or_a_function() -> None:
    parsed = parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "a@example.com"}]}, {}, "chat"
    )
    policy = _policy()
    assert extract_features(parsed, policy, "e", "t", detectors=[]).data_classes == {"internal"}
    assert extract_features(parsed, policy, "e", "t", detectors=["email"]).data_classes == {"pii"}

    def everything_secret(text: str, enabled: Any) -> dict[str, list[str]]:
        return {"secret": ["custom"]}

    f = extract_features(parsed, policy, "e", "t", detectors=everything_secret)
    assert f.data_classes == {"secret"}
