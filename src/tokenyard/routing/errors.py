"""OpenAI-style router errors and backend-failure classification, in one module.

Every error the router answers is a :class:`RouterError` built by one of the factory
functions below, so each status code, ``type`` and ``code`` is chosen in one place
(as KServe maps data-plane errors in one module). :func:`failure_kind` maps what a
backend call raised or answered onto the policy's fallback failure kinds.
"""

from __future__ import annotations

import math
from typing import Any

from tokenyard.api.policy import FailureKind

# Seconds a client is told to wait when no better estimate exists (backends warming up).
DEFAULT_RETRY_AFTER_S = 5.0
# Longest piece of client input echoed in an error message or written to the audit log
# (a model name, a parameter name): a 1 MB name must not make a 1 MB answer or line.
MAX_ECHO_CHARS = 256


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class RouterError(Exception):
    """An error answered to the client as OpenAI-style JSON with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        """The response body, shaped as the OpenAI API answers errors."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Response headers: Retry-After (whole seconds, rounded up) when known."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def __repr__(self) -> str:
        return f"RouterError({self.status}, {self.code or self.type}: {self.message!r})"


def bad_request(message: str, param: str | None = None) -> RouterError:
    """400: the body is malformed, has unknown parameters or wrong types."""
    return RouterError(400, message, type="invalid_request_error", param=param)


def unauthorized(message: str = "unknown tenant or API key") -> RouterError:
    """401: the policy requires a known tenant and the request names none."""
    return RouterError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str, code: str | None = None) -> RouterError:
    """403: the request may not be served as asked."""
    return RouterError(403, message, type="permission_error", code=code)


def egress_denied(message: str) -> RouterError:
    """403: the request's data classes may not leave the cluster and nothing else serves."""
    return forbidden(message, code="egress_denied")


def model_not_found(model: str) -> RouterError:
    """404: no endpoint or model of that name."""
    return RouterError(
        404,
        f"The model '{clip(model)}' does not exist",
        type="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def prompt_too_long(message: str) -> RouterError:
    """413: the prompt (plus max_tokens) is longer than every allowed target accepts."""
    return RouterError(
        413,
        message,
        type="invalid_request_error",
        code="context_length_exceeded",
        param="messages",
    )


def body_too_large(limit: int) -> RouterError:
    """413: the request body is larger than the router accepts (``maxRequestBytes``)."""
    return RouterError(
        413,
        f"the request body is larger than {limit} bytes",
        type="invalid_request_error",
        code="request_too_large",
    )


def rate_limited(message: str, retry_after: float) -> RouterError:
    """429: the tenant's requests or tokens per minute are used up."""
    return RouterError(
        429,
        message,
        type="rate_limit_error",
        code="rate_limit_exceeded",
        retry_after=retry_after,
    )


def budget_exceeded(message: str, retry_after: float) -> RouterError:
    """429: the tenant's budget window is spent; retry_after is the time to its end."""
    return RouterError(
        429,
        message,
        type="insufficient_quota",
        code="budget_exceeded",
        retry_after=retry_after,
    )


def no_backend(message: str, retry_after: float = DEFAULT_RETRY_AFTER_S) -> RouterError:
    """503: no target can take the request now (not ready, circuits open, all failed)."""
    return RouterError(
        503,
        message,
        type="service_unavailable",
        code="no_backend_available",
        retry_after=retry_after,
    )


def timeout(message: str = "the request timed out") -> RouterError:
    """504: the per-attempt or total timeout passed before an answer."""
    return RouterError(504, message, type="timeout", code="timeout")


def internal_error(message: str = "internal router error") -> RouterError:
    """500: a bug; never used for backend failures (those fall back or become 502/503)."""
    return RouterError(500, message, type="server_error", code="internal_error")


# Exception class names from Ray and HTTP clients, matched by name so this module
# stays importable without Ray (the router maps its own exceptions through it).
_TIMEOUT_NAMES = frozenset(
    {
        "TimeoutException",  # httpx (base of Connect/Read/Write/PoolTimeout)
        "APITimeoutError",  # openai
        "GetTimeoutError",  # ray
        "RequestTimeoutError",
    }
)
_UNAVAILABLE_NAMES = frozenset(
    {
        "ConnectError",  # httpx
        "NetworkError",  # httpx
        "RemoteProtocolError",  # httpx: the server hung up mid-response
        "APIConnectionError",  # openai
        "RayActorError",  # ray: the replica died
        "ActorDiedError",
        "ActorUnavailableError",
        "DeploymentUnavailableError",  # ray serve
        "RayServeException",
    }
)
_OVERLOADED_NAMES = frozenset({"BackPressureError"})  # ray serve: max_queued_requests hit


def _status_kind(status: int) -> FailureKind | None:
    if status in (408, 504):
        return "Timeout"
    if status == 429:
        return "RateLimited"
    if status in (502, 503):
        return "Unavailable"
    if status == 529:  # "overloaded", as some providers answer
        return "Overloaded"
    if status >= 500:
        return "Error"
    # Other 4xx: the request itself is at fault; another target would refuse it too.
    return None


def failure_kind(exc_or_status: BaseException | int) -> FailureKind | None:
    """The fallback failure kind of a backend error or HTTP status; None: not retryable.

    Client errors (4xx other than 408 and 429) are not failures of the backend and
    never trigger fallback; a :class:`RouterError` for an exhausted budget maps to
    ``Budget``.
    """
    if isinstance(exc_or_status, bool):
        return None
    if isinstance(exc_or_status, int):
        return _status_kind(exc_or_status)
    exc = exc_or_status
    if isinstance(exc, RouterError):
        if exc.code == "budget_exceeded":
            return "Budget"
        if exc.status == 503 and exc.code == "no_backend_available":
            return "Unavailable"
        return _status_kind(exc.status)
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is this class since 3.11
        return "Timeout"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _TIMEOUT_NAMES:
        return "Timeout"
    if names & _OVERLOADED_NAMES:
        return "Overloaded"
    # A response carried a status (httpx.HTTPStatusError, openai.APIStatusError).
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return _status_kind(status)
    if names & _UNAVAILABLE_NAMES or isinstance(exc, ConnectionError):
        return "Unavailable"
    return "Error"
