"""How the router calls one target: in-cluster models through Ray Serve deployment handles
(no extra HTTP hop) and external providers through :mod:`tokenyard.serving.providers`.

Both kinds answer the same two calls, ``complete`` (one OpenAI JSON body) and ``stream``
(OpenAI chunk dicts, without ``[DONE]``), and raise :class:`BackendFailure` carrying the
policy's fallback failure kind. In-cluster calls use the protocol of Ray Serve LLM's own
OpenAI ingress: ``handle.options(stream=True).chat.remote(ChatCompletionRequest, None)``
yields the full response object (non-streaming), lists of ``data: {...}`` SSE strings
(streaming) or an ``ErrorResponse``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, Protocol

from tokenyard.api.policy import FailureKind
from tokenyard.contract import MODEL_DEPLOYMENT, CatalogueEntry
from tokenyard.routing.errors import failure_kind
from tokenyard.serving.providers import ProviderClient, ProviderError

logger = logging.getLogger("tokenyard.router")


AttemptKind = FailureKind | Literal["ContextLength"]
"""A policy's failure kind, or ``ContextLength``: the target refused the request as
longer than its context (the request's fault, never the target's; the router moves on
to a longer-context target whatever ``retryOn`` says)."""


class BackendFailure(Exception):
    """A target failed; ``kind`` says whether (and on what) the policy may fall back."""

    def __init__(
        self,
        message: str,
        *,
        kind: AttemptKind | None,
        status: int = 502,
        body: Any = None,
        retry_after: float | None = None,
        replica_died: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.replica_died = replica_died
        """The target's replica died under the request (Ray's actor-died error)."""
        self.context_limit: int | None = None
        """For ``ContextLength``: the context the target said it has, when it said so."""
        self.context_requested: int | None = None
        """For ``ContextLength``: the tokens the target counted, when it said so."""


class Backend(Protocol):
    """One target the router can call."""

    name: str

    async def complete(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> dict[str, Any]:
        """A non-streaming answer as an OpenAI JSON object."""
        ...

    def stream(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Streaming answer chunks as OpenAI chunk objects."""
        ...


# Ray's errors for a replica actor that died (matched by name: importable without Ray).
_REPLICA_DIED = frozenset({"ActorDiedError", "RayActorError"})


def classify_exception(exc: BaseException, target: str) -> BackendFailure:
    """Any exception from calling ``target`` as a :class:`BackendFailure`."""
    if isinstance(exc, BackendFailure):
        return exc
    kind = failure_kind(exc)
    status = 504 if kind == "Timeout" else 503 if kind in ("Unavailable", "Overloaded") else 502
    # Exception text from Ray can be long (tracebacks); keep the class name and a prefix.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return BackendFailure(
        f"{target}: {type(exc).__name__}: {str(exc)[:300]}",
        kind=kind,
        status=status,
        replica_died=bool(names & _REPLICA_DIED),
    )


# How engines and providers word a context-length refusal: vLLM's validation errors
# ("This model's maximum context length is N tokens. However, your prompt contains M
# input tokens ..." and "Input length (M) exceeds model's maximum context length (N).")
# and OpenAI's ("... maximum context length is N tokens. However, you requested M
# tokens ...", code ``context_length_exceeded``).
_CONTEXT_LIMIT = (
    re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE),
    re.compile(r"exceeds model's maximum context length \((\d+)\)", re.IGNORECASE),
)
_CONTEXT_REQUESTED = (
    re.compile(r"you requested (\d+) tokens", re.IGNORECASE),
    re.compile(r"your prompt contains (?:at least )?(\d+) input tokens", re.IGNORECASE),
    re.compile(r"resulted in (\d+) tokens", re.IGNORECASE),
    re.compile(r"Input length \((\d+)\)", re.IGNORECASE),
)
_NOT_CONTEXT = frozenset({"Timeout", "RateLimited", "Budget", "Unavailable", "Overloaded"})


def _first_int(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        if (m := pattern.search(text)) is not None:
            return int(m.group(1))
    return None


def as_context_length(failure: BackendFailure) -> BackendFailure:
    """``failure`` as a ``ContextLength`` failure when the target refused the request as
    longer than its context (by its error code or its wording), else unchanged.

    The target's figures (its context, the tokens it counted) are kept when its message
    gives them."""
    if failure.kind == "ContextLength" or failure.kind in _NOT_CONTEXT:
        return failure
    err = failure.body.get("error") if isinstance(failure.body, dict) else None
    err = err if isinstance(err, dict) else {}
    message = err.get("message")
    text = f"{message if isinstance(message, str) else ''}\n{failure}"
    limit = _first_int(_CONTEXT_LIMIT, text)
    if err.get("code") != "context_length_exceeded" and limit is None:
        return failure
    out = BackendFailure(
        str(failure),
        kind="ContextLength",
        status=failure.status,
        body=failure.body,
        retry_after=failure.retry_after,
        replica_died=failure.replica_died,
    )
    out.context_limit = limit
    out.context_requested = _first_int(_CONTEXT_REQUESTED, text)
    return out


def _from_error_response(err: Any, target: str) -> BackendFailure:
    info = getattr(err, "error", None)
    code = getattr(info, "code", None)
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    message = str(getattr(info, "message", "engine error"))[:500]
    body = {
        "error": {
            "message": message,
            "type": str(getattr(info, "type", "server_error")),
            "param": getattr(info, "param", None),
            "code": status,
        }
    }
    return BackendFailure(
        f"{target}: {message}", kind=failure_kind(status), status=status, body=body
    )


def _unsendable(target: str, exc: BaseException) -> BackendFailure:
    """A request that could not be encoded or serialised for ``target`` (a 400)."""
    message = f"the request could not be sent: {type(exc).__name__}"
    return BackendFailure(
        f"{target}: {message}",
        kind=None,
        status=400,
        body={
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )


def _parse_sse(packet: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in packet.split("\n"):
        line = raw.strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if not data or data == "[DONE]":
            continue
        out.append(json.loads(data))
    return out


class InClusterBackend:
    """A vLLM model app in this Ray cluster, called through its deployment handle."""

    def __init__(self, entry: CatalogueEntry) -> None:
        assert entry.app is not None
        self.name = entry.name
        self.served_model = entry.servedModelName
        self.app = entry.app
        self.deployment = entry.deployment or MODEL_DEPLOYMENT
        self._handle: Any = None

    def _get_handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self.deployment, self.app).options(
                stream=True
            )
        return self._handle

    def _request(self, kind: str, body: dict[str, Any]) -> Any:
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionRequest,
            CompletionRequest,
        )
        from ray.llm._internal.serve.core.ingress.utils import (
            _sanitize_chat_completion_request,
        )

        payload = dict(body)
        payload["model"] = self.served_model
        try:
            if kind == "chat":
                # Same workaround as Ray's ingress: unpicklable pydantic iterators.
                return _sanitize_chat_completion_request(ChatCompletionRequest(**payload))
            return CompletionRequest(**payload)
        except Exception as exc:  # pydantic.ValidationError: the engine would refuse it too
            raise BackendFailure(
                f"{self.name}: request rejected by the engine schema: {str(exc)[:300]}",
                kind=None,
                status=400,
                body={
                    "error": {
                        "message": str(exc)[:500],
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            ) from exc

    def _call(self, kind: str, body: dict[str, Any]) -> Any:
        handle = self._get_handle()
        method = handle.chat if kind == "chat" else handle.completions
        request = self._request(kind, body)
        try:
            return method.remote(request, None)
        except (RecursionError, TypeError, ValueError) as exc:
            # The request could not be serialised for the replica: the request's fault,
            # never the model's (kind None: no fallback, no circuit-breaker failure).
            raise _unsendable(self.name, exc) from exc

    async def complete(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> dict[str, Any]:
        from ray.llm._internal.serve.core.configs.openai_api_models import ErrorResponse

        gen = self._call(kind, body)
        try:
            async for item in gen:
                first = item[0] if isinstance(item, list) and item else item
                if isinstance(first, ErrorResponse):
                    raise _from_error_response(first, self.name)
                if hasattr(first, "model_dump"):
                    result: dict[str, Any] = first.model_dump(mode="json", exclude_none=True)
                    return result
                raise BackendFailure(
                    f"{self.name}: unexpected engine answer {type(first).__name__}",
                    kind="Error",
                )
        except BackendFailure:
            raise
        except Exception as exc:
            raise classify_exception(exc, self.name) from exc
        finally:
            gen.cancel()
        raise BackendFailure(f"{self.name}: engine returned nothing", kind="Error")

    async def stream(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        from ray.llm._internal.serve.core.configs.openai_api_models import ErrorResponse

        gen = self._call(kind, body)
        try:
            async for item in gen:
                batch = item if isinstance(item, list) else [item]
                for packet in batch:
                    if isinstance(packet, ErrorResponse):
                        raise _from_error_response(packet, self.name)
                    if isinstance(packet, str):
                        for chunk in _parse_sse(packet):
                            if "error" in chunk and "choices" not in chunk:
                                err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                                code = err.get("code")
                                status = code if isinstance(code, int) else 500
                                raise BackendFailure(
                                    f"{self.name}: {str(err.get('message', ''))[:300]}",
                                    kind=failure_kind(status),
                                    status=status,
                                    body={"error": err},
                                )
                            yield chunk
                    elif hasattr(packet, "model_dump"):
                        yield packet.model_dump(mode="json", exclude_none=True)
        except BackendFailure:
            raise
        except GeneratorExit:
            raise
        except Exception as exc:
            raise classify_exception(exc, self.name) from exc
        finally:
            gen.cancel()


class ExternalBackend:
    """An OpenAI-compatible provider outside the cluster."""

    def __init__(self, entry: CatalogueEntry, client: ProviderClient) -> None:
        assert entry.external is not None
        self.name = entry.name
        self.served_model = entry.servedModelName
        self.endpoint = entry.external
        self._client = client

    @staticmethod
    def _failure(exc: ProviderError, target: str) -> BackendFailure:
        if exc.timeout:
            return BackendFailure(f"{target}: {exc}", kind="Timeout", status=504)
        if exc.status is None:
            return BackendFailure(f"{target}: {exc}", kind="Unavailable", status=503)
        body = exc.body if isinstance(exc.body, dict) and "error" in exc.body else None
        return BackendFailure(
            f"{target}: {exc}",
            kind=failure_kind(exc.status),
            status=exc.status,
            body=body,
            retry_after=exc.retry_after,
        )

    async def complete(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> dict[str, Any]:
        try:
            resp = await self._client.complete(self.endpoint, kind, body, attempt_timeout)
        except ProviderError as exc:
            raise self._failure(exc, self.name) from exc
        except (RecursionError, TypeError, ValueError) as exc:  # the body did not encode
            raise _unsendable(self.name, exc) from exc
        return resp.body

    async def stream(
        self, kind: str, body: dict[str, Any], attempt_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self._client.stream(self.endpoint, kind, body, attempt_timeout):
                yield chunk
        except ProviderError as exc:
            raise self._failure(exc, self.name) from exc
        except (RecursionError, TypeError, ValueError) as exc:  # the body did not encode
            raise _unsendable(self.name, exc) from exc


def build_backends(
    entries: Mapping[str, CatalogueEntry],
    client: ProviderClient,
    previous: Mapping[str, Backend] | None = None,
) -> dict[str, Backend]:
    """Backends for a catalogue, reusing unchanged ones (their handles stay warm)."""
    out: dict[str, Backend] = {}
    for name, entry in entries.items():
        old = (previous or {}).get(name)
        if entry.kind == "InCluster" and entry.app is not None:
            if (
                isinstance(old, InClusterBackend)
                and old.app == entry.app
                and old.served_model == entry.servedModelName
            ):
                out[name] = old
            else:
                out[name] = InClusterBackend(entry)
        elif entry.kind == "External" and entry.external is not None:
            out[name] = ExternalBackend(entry, client)
    return out
