"""Error mapping: status codes, OpenAI-style bodies, Retry-After and failure kinds."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tokenyard.routing import errors
from tokenyard.routing.errors import RouterError, failure_kind


@pytest.mark.parametrize(
    ("make", "status", "type_", "code"),
    [
        (lambda: errors.bad_request("bad", "temperature"), 400, "invalid_request_error", None),
        (errors.unauthorized, 401, "authentication_error", "invalid_api_key"),
        (lambda: errors.forbidden("no"), 403, "permission_error", None),
        (lambda: errors.egress_denied("pii"), 403, "permission_error", "egress_denied"),
        (lambda: errors.model_not_found("x"), 404, "invalid_request_error", "model_not_found"),
        (lambda: errors.prompt_too_long("long"), 413, "invalid_request_error",
         "context_length_exceeded"),
        (lambda: errors.rate_limited("slow", 2.5), 429, "rate_limit_error", "rate_limit_exceeded"),
        (lambda: errors.budget_exceeded("spent", 60), 429, "insufficient_quota", "budget_exceeded"),
        (lambda: errors.no_backend("down"), 503, "service_unavailable", "no_backend_available"),
        (errors.timeout, 504, "timeout", "timeout"),
    ],
)  # fmt: skip
def test_factories(
    make: Callable[[], RouterError], status: int, type_: str, code: str | None
) -> None:
    err = make()
    assert (err.status, err.type, err.code) == (status, type_, code)
    body = err.to_body()
    assert set(body) == {"error"}
    assert body["error"] == {
        "message": err.message,
        "type": type_,
        "param": err.param,
        "code": code,
    }


def test_bad_request_names_the_parameter() -> None:
    assert errors.bad_request("x", "top_p").to_body()["error"]["param"] == "top_p"
    assert errors.model_not_found("gpt").message == "The model 'gpt' does not exist"


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (None, {}),
        (0.0, {"Retry-After": "1"}),
        (2.1, {"Retry-After": "3"}),
        (60, {"Retry-After": "60"}),
    ],
)
def test_retry_after_header_rounds_up_to_whole_seconds(
    retry_after: float | None, header: dict[str, str]
) -> None:
    err = RouterError(429, "m", type="rate_limit_error", retry_after=retry_after)
    assert err.headers() == header


def test_no_backend_always_has_retry_after() -> None:
    assert errors.no_backend("x").headers() == {"Retry-After": "5"}
    assert errors.budget_exceeded("x", 3599.2).retry_after == 3599.2


class BackPressureError(Exception):
    """Stands in for ray.serve.exceptions.BackPressureError (matched by name)."""


class RayActorError(Exception):
    """Stands in for ray.exceptions.RayActorError."""


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return httpx.HTTPStatusError(
        "x", request=request, response=httpx.Response(status, request=request)
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (500, "Error"),
        (501, "Error"),
        (502, "Unavailable"),
        (503, "Unavailable"),
        (504, "Timeout"),
        (408, "Timeout"),
        (429, "RateLimited"),
        (529, "Overloaded"),
        (400, None),
        (404, None),
        (413, None),
        (200, None),
        (TimeoutError(), "Timeout"),
        (httpx.ReadTimeout("slow"), "Timeout"),
        (httpx.ConnectError("refused"), "Unavailable"),
        (ConnectionRefusedError(), "Unavailable"),
        (_status_error(503), "Unavailable"),
        (_status_error(500), "Error"),
        (_status_error(429), "RateLimited"),
        (_status_error(400), None),
        (BackPressureError(), "Overloaded"),
        (RayActorError(), "Unavailable"),
        (ValueError("boom"), "Error"),
        (errors.budget_exceeded("x", 1), "Budget"),
        (errors.no_backend("x"), "Unavailable"),
        (errors.timeout(), "Timeout"),
        (errors.bad_request("x"), None),
    ],
)
def test_failure_kind(value: BaseException | int, kind: str | None) -> None:
    assert failure_kind(value) == kind
