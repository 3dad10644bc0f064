"""The first step of a request's path: its OpenAI body, validated and measured.

The router calls :func:`parse_request` on each chat or completion body (a 400
:class:`~tokenyard.routing.errors.RouterError` on anything malformed); the
:class:`ParsedRequest` it returns feeds tenant resolution (:mod:`tokenyard.routing.tenants`)
and feature extraction (:mod:`tokenyard.routing.features`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tokenyard.routing.errors import bad_request

RequestKind = Literal["chat", "completion"]

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


__all__ = [
    "CHAT_PARAMETERS",
    "COMPLETION_PARAMETERS",
    "MESSAGE_ROLES",
    "ParsedRequest",
    "RequestKind",
    "estimate_tokens",
    "lower_headers",
    "parse_request",
]
