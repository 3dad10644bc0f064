"""Request parsing, tenant resolution and feature extraction for the routing decision.

The router calls :func:`parse_request` on each OpenAI body (400 on anything malformed),
:func:`resolve_tenant` on its headers, then :func:`extract_features`, whose
:class:`RequestFeatures` is everything :func:`tokenyard.serving.policy_engine.decide`
looks at. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from tokenyard.api.common import DATA_CLASS
from tokenyard.api.policy import DetectorName, RoutingPolicySpec, TenantSpec
from tokenyard.serving.classifier import (
    DifficultyClassifier,
    HeuristicClassifier,
    difficulty_from_header,
)
from tokenyard.serving.detectors import detect
from tokenyard.serving.errors import bad_request, unauthorized

RequestKind = Literal["chat", "completion"]
TAGS_HEADER = "X-Tokenyard-Tags"

# Tokens the chat format adds around each message (role markers, separators): OpenAI's
# cookbook counts 3-4; we take 4 so the estimate errs on the long side.
MESSAGE_OVERHEAD_TOKENS = 4

# OpenAI's documented top-level parameters; anything else is a 400, as the API answers.
CHAT_PARAMETERS = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier",
        "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
        "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
        "web_search_options",
    }
)  # fmt: skip
COMPLETION_PARAMETERS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
        "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
        "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

_DATA_CLASS_RE = re.compile(DATA_CLASS)
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,62}$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,252}$")

Detector = Callable[[str, Iterable[DetectorName]], dict[str, list[str]]]


def estimate_tokens(text: str) -> int:
    """Cheap, deterministic token estimate: ceil(UTF-8 bytes / 4).

    About four bytes per token holds for English with common BPE tokenizers; counting
    bytes rather than characters makes non-Latin scripts (2-4 bytes a character, often
    a token each) estimate longer rather than shorter, the safe side for context checks.
    """
    return math.ceil(len(text.encode("utf-8")) / 4)


@dataclass(frozen=True)
class ParsedRequest:
    """A validated OpenAI request body and what routing needs from it."""

    kind: RequestKind
    model: str
    body: Mapping[str, Any]
    """The body as sent (forwarded to the backend unchanged but for ``model``)."""
    headers: Mapping[str, str]
    """Request headers with lower-cased names."""
    roles: tuple[str, ...]
    """Role of each message (completions: one "user")."""
    prompt_text: str
    """All text content, messages joined by newlines (token-id prompts give "")."""
    prompt_tokens: int
    """Estimated prompt tokens (see :func:`estimate_tokens`)."""
    max_tokens: int | None
    stream: bool

    @property
    def messages(self) -> int:
        return len(self.roles)


@dataclass(frozen=True)
class RequestFeatures:
    """Everything the policy engine decides on; ``prompt_text`` is for detectors/audit only."""

    endpoint: str
    tenant: str
    prompt_tokens: int
    max_tokens: int | None
    messages: int
    difficulty: float
    difficulty_source: str
    """"classifier" or "header"."""
    data_classes: frozenset[str]
    tags: frozenset[str]
    headers: Mapping[str, str]
    stream: bool
    prompt_text: str = field(repr=False)
    detected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Detectors that fired, by data class (names only, never the matched text)."""
    declared_classes: frozenset[str] = frozenset()
    """Data classes the client declared in the data-class header."""


def lower_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header names lower-cased (HTTP names are case-insensitive); the last value wins."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k).lower(): str(v) for k, v in items}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _check_number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_number(v) or not (lo <= v <= hi):
        raise bad_request(f"'{name}' must be a number between {lo:g} and {hi:g}", param=name)


def _check_int(body: Mapping[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad_request(f"'{name}' must be an integer {bound}", param=name)
    return int(v)


def _check_type(body: Mapping[str, Any], name: str, types: tuple[type, ...], what: str) -> None:
    v = body.get(name)
    if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
        raise bad_request(f"'{name}' must be {what}", param=name)


def _content_text(content: Any, where: str) -> str:
    """Text of a message content: a string or a list of parts (text parts counted)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(
                    f"'{where}.content[{i}]' must be an object with a 'type'", param=where
                )
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"'{where}.content[{i}].text' must be a string", where)
                texts.append(text)
        return "\n".join(texts)
    raise bad_request(f"'{where}.content' must be a string or a list of parts", param=where)


def _parse_messages(messages: Any) -> tuple[tuple[str, ...], str, int]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", param="messages")
    roles: list[str] = []
    texts: list[str] = []
    tokens = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"'{where}' must be an object", param="messages")
        role = msg.get("role")
        if role not in MESSAGE_ROLES:
            raise bad_request(
                f"'{where}.role' must be one of {', '.join(sorted(MESSAGE_ROLES))}",
                param="messages",
            )
        text = _content_text(msg.get("content"), where)
        if msg.get("content") is None and role != "assistant":
            raise bad_request(f"'{where}.content' is required", param="messages")
        roles.append(str(role))
        texts.append(text)
        tokens += estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS
        # Tool calls are part of the prompt the model sees; count their arguments too.
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict):
                tokens += estimate_tokens(str(call.get("function", "")))
    return tuple(roles), "\n".join(texts), tokens


def _parse_prompt(prompt: Any) -> tuple[str, int]:
    if isinstance(prompt, str):
        return prompt, estimate_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            text = "\n".join(prompt)
            return text, sum(estimate_tokens(p) for p in prompt)
        if all(_is_int(p) for p in prompt):
            return "", len(prompt)
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return "", sum(len(p) for p in prompt)
    raise bad_request(
        "'prompt' must be a string, a list of strings or a list of token ids", param="prompt"
    )


def parse_request(
    body: Any, headers: Mapping[str, str] | Iterable[tuple[str, str]], kind: RequestKind
) -> ParsedRequest:
    """Validate an OpenAI chat or completion body; raise a 400 :class:`RouterError` if bad.

    Unknown top-level parameters are rejected (the OpenAI API does the same), so a typo
    is reported instead of being silently ignored by one backend and not another.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    allowed = CHAT_PARAMETERS if kind == "chat" else COMPLETION_PARAMETERS
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise bad_request(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required and must be a non-empty string", param="model")

    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "frequency_penalty", -2, 2)
    _check_number(body, "presence_penalty", -2, 2)
    _check_int(body, "n", 1, 128)
    _check_int(body, "seed", -(2**63), 2**64)
    _check_type(body, "stream", (bool,), "a boolean")
    _check_type(body, "stream_options", (dict,), "an object")
    _check_type(body, "user", (str,), "a string")
    _check_type(body, "logit_bias", (dict,), "an object")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise bad_request("'stop' must be a string or a list of up to 4 strings", "stop")

    if kind == "chat":
        _check_type(body, "logprobs", (bool,), "a boolean")
        _check_int(body, "top_logprobs", 0, 20)
        _check_type(body, "tools", (list,), "a list")
        _check_type(body, "tool_choice", (str, dict), "a string or an object")
        _check_type(body, "response_format", (dict,), "an object")
        _check_type(body, "metadata", (dict,), "an object")
        _check_type(body, "parallel_tool_calls", (bool,), "a boolean")
        _check_type(body, "store", (bool,), "a boolean")
        if "messages" not in body:
            raise bad_request("'messages' is required", param="messages")
        roles, text, tokens = _parse_messages(body["messages"])
        max_completion = _check_int(body, "max_completion_tokens", 1)
        max_tokens = _check_int(body, "max_tokens", 1)
        max_out = max_completion if max_completion is not None else max_tokens
    else:
        _check_int(body, "logprobs", 0, 5)
        _check_int(body, "best_of", 1, 128)
        _check_type(body, "echo", (bool,), "a boolean")
        _check_type(body, "suffix", (str,), "a string")
        if "prompt" not in body:
            raise bad_request("'prompt' is required", param="prompt")
        text, tokens = _parse_prompt(body["prompt"])
        roles = ("user",)
        max_out = _check_int(body, "max_tokens", 1)

    return ParsedRequest(
        kind=kind,
        model=model,
        body=body,
        headers=lower_headers(headers),
        roles=roles,
        prompt_text=text,
        prompt_tokens=tokens,
        max_tokens=max_out,
        stream=bool(body.get("stream") or False),
    )


def _split_header(value: str | None) -> list[str]:
    if not value:
        return []
    return [x.strip() for x in value.split(",") if x.strip()]


def declared_data_classes(headers: Mapping[str, str], header: str) -> frozenset[str]:
    """Data classes named in the policy's data-class header; a malformed name is a 400."""
    out: set[str] = set()
    for raw in _split_header(headers.get(header.lower())):
        name = raw.lower()
        if not _DATA_CLASS_RE.match(name):
            raise bad_request(f"{header}: {raw[:64]!r} is not a valid data class name", header)
        out.add(name)
    return frozenset(out)


def request_tags(headers: Mapping[str, str]) -> frozenset[str]:
    """Tags from X-Tokenyard-Tags (comma-separated); a malformed tag is a 400."""
    out: set[str] = set()
    for raw in _split_header(headers.get(TAGS_HEADER.lower())):
        if not _TAG_RE.match(raw):
            raise bad_request(f"{TAGS_HEADER}: {raw[:64]!r} is not a valid tag", TAGS_HEADER)
        out.add(raw)
    return frozenset(out)


def extract_features(
    parsed: ParsedRequest,
    policy: RoutingPolicySpec | Any,
    endpoint: str,
    tenant: str,
    *,
    classifier: DifficultyClassifier | None = None,
    detectors: Detector | Iterable[DetectorName] | None = None,
) -> RequestFeatures:
    """The routing features of one request under one policy (a spec or a PolicyEntry).

    Difficulty: the X-Tokenyard-Difficulty header when the policy allows it, else the
    classifier (default :class:`HeuristicClassifier`). Data classes: those declared in
    the policy's header plus those the detectors find; the policy's default class only
    when both are empty. ``detectors`` is a detect function run with the policy's
    enabled detectors (default :func:`~tokenyard.serving.detectors.detect`), or a list
    of detector names to run instead of the policy's.
    """
    policy = spec_of(policy)
    enabled: Iterable[DetectorName] = policy.egress.detectors
    run: Detector = detect
    if callable(detectors):
        run = detectors
    elif detectors is not None:
        enabled = list(detectors)
    headers = parsed.headers
    override = difficulty_from_header(headers, policy.classifier.allowHeaderOverride)
    if override is not None:
        difficulty, source = override, "header"
    else:
        scorer = classifier if classifier is not None else HeuristicClassifier()
        difficulty, source = min(1.0, max(0.0, float(scorer.score(parsed)))), "classifier"
    declared = declared_data_classes(headers, policy.egress.dataClassHeader)
    found = run(parsed.prompt_text, enabled) if parsed.prompt_text else {}
    classes = set(declared) | set(found)
    if not classes:
        classes.add(policy.egress.defaultDataClass)
    return RequestFeatures(
        endpoint=endpoint,
        tenant=tenant,
        prompt_tokens=parsed.prompt_tokens,
        max_tokens=parsed.max_tokens,
        messages=parsed.messages,
        difficulty=difficulty,
        difficulty_source=source,
        data_classes=frozenset(classes),
        tags=request_tags(headers),
        headers=headers,
        stream=parsed.stream,
        prompt_text=parsed.prompt_text,
        detected={k: tuple(v) for k, v in sorted(found.items())},
        declared_classes=declared,
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of the Authorization header (lower-cased names), if any."""
    auth = headers.get("authorization", "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def resolve_tenant(
    headers: Mapping[str, str], spec: TenantSpec, api_keys: Mapping[str, str]
) -> str:
    """The request's tenant: from its API key if mapped, else the tenant header, else default.

    A mapped API key wins over the header (the key is a credential; the header is a
    claim). With ``requireKnownTenant``: when keys are configured, only a mapped key
    identifies a tenant; without keys, the tenant header must be present. Otherwise 401.
    """
    headers = lower_headers(headers)
    token = bearer_token(headers)
    if token is not None and token in api_keys:
        return api_keys[token]
    claimed = headers.get(spec.header.lower(), "").strip()
    if claimed and not _TENANT_RE.match(claimed):
        raise bad_request(f"{spec.header}: not a valid tenant name", param=spec.header)
    if spec.requireKnownTenant:
        if api_keys:
            raise unauthorized(
                "a valid API key is required" if token is None else "the API key is not known"
            )
        if not claimed:
            raise unauthorized(f"the {spec.header} header is required")
    return claimed or spec.defaultTenant


def parse_api_keys(text: str) -> dict[str, str]:
    """The 'key: tenant' YAML map of a tenant-keys Secret; ValueError if malformed."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ValueError(f"API key map is not valid YAML: {err.__class__.__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("API key map must be a mapping of 'key: tenant'")
    out: dict[str, str] = {}
    for i, (key, tenant) in enumerate(data.items()):
        # Never echo the key itself: error messages end up in logs.
        if not isinstance(key, str | int) or not str(key).strip():
            raise ValueError(f"API key map entry {i}: the key must be a non-empty string")
        if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
            raise ValueError(f"API key map entry {i}: the tenant must be a valid name")
        out[str(key).strip()] = tenant
    return out


def spec_of(policy: Any) -> RoutingPolicySpec:
    """The RoutingPolicySpec of a spec, a PolicyEntry or a RoutingPolicy."""
    if isinstance(policy, RoutingPolicySpec):
        return policy
    if hasattr(policy, "policy_spec"):
        spec = policy.policy_spec()
        assert isinstance(spec, RoutingPolicySpec)
        return spec
    inner = getattr(policy, "spec", None)
    if isinstance(inner, RoutingPolicySpec):
        return inner
    raise TypeError(f"not a routing policy: {type(policy).__name__}")


__all__: Sequence[str] = [
    "CHAT_PARAMETERS",
    "COMPLETION_PARAMETERS",
    "ParsedRequest",
    "RequestFeatures",
    "bearer_token",
    "declared_data_classes",
    "estimate_tokens",
    "extract_features",
    "lower_headers",
    "parse_api_keys",
    "parse_request",
    "request_tags",
    "resolve_tenant",
    "spec_of",
]
