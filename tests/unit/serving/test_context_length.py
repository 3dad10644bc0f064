"""A backend's context-length refusal is its own failure kind, with the backend's figures."""

from __future__ import annotations

import pytest

from tokenyard.serving.backends import BackendFailure, as_context_length, classify_exception

# vLLM's wording (vllm/renderers/params.py, _token_len_check and _text_len_check) and the
# ValueError of vllm/entrypoints/serve/utils/api_utils.py get_max_tokens.
VLLM_TOKENS = (
    "This model's maximum context length is 512 tokens. However, your prompt contains "
    "513 input tokens, which exceeds this limit even without any output tokens. "
    "Please reduce the length of the input prompt."
)
VLLM_TOKENS_AT_LEAST = VLLM_TOKENS.replace("contains 513", "contains at least 513")
VLLM_CHARS = (
    "This model's maximum context length is 512 tokens. However, your prompt contains "
    "9000 characters (more than 8192 characters, which is the upper bound for 512 input "
    "tokens). Please reduce the length of the input prompt."
)
VLLM_INPUT_LENGTH = "Input length (600) exceeds model's maximum context length (512)."
OPENAI = (
    "This model's maximum context length is 8192 tokens. However, you requested 9000 "
    "tokens (8000 in the messages, 1000 in the completion). Please reduce the length of "
    "the messages or completion."
)


def _engine_400(message: str, code: object = 400) -> BackendFailure:
    body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}}
    return BackendFailure(f"a: {message}", kind=None, status=400, body=body)


@pytest.mark.parametrize(
    ("message", "limit", "requested"),
    [
        (VLLM_TOKENS, 512, 513),
        (VLLM_TOKENS_AT_LEAST, 512, 513),
        (VLLM_CHARS, 512, None),
        (VLLM_INPUT_LENGTH, 512, 600),
        (OPENAI, 8192, 9000),
    ],
)
def test_engine_context_refusal_is_context_length(
    message: str, limit: int, requested: int | None
) -> None:
    failure = as_context_length(_engine_400(message))
    assert failure.kind == "ContextLength"
    assert (failure.context_limit, failure.context_requested) == (limit, requested)
    assert failure.status == 400 and failure.body["error"]["message"] == message


def test_openai_code_without_figures_is_context_length() -> None:
    failure = as_context_length(_engine_400("too many tokens", code="context_length_exceeded"))
    assert failure.kind == "ContextLength"
    assert (failure.context_limit, failure.context_requested) == (None, None)


def test_raised_engine_error_is_context_length() -> None:
    """vLLM's ValueError raised through the handle (no HTTP status) is classified too."""
    failure = as_context_length(classify_exception(ValueError(VLLM_INPUT_LENGTH), "a"))
    assert failure.kind == "ContextLength" and failure.context_limit == 512


@pytest.mark.parametrize(
    "failure",
    [
        _engine_400("too long"),  # no context wording: a plain client error
        BackendFailure(f"a: {VLLM_TOKENS}", kind="Timeout", status=504),
        BackendFailure(f"a: {VLLM_TOKENS}", kind="RateLimited", status=429),
    ],
)
def test_other_failures_are_unchanged(failure: BackendFailure) -> None:
    assert as_context_length(failure) is failure
