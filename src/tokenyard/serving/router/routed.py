"""One routed request answered: sent to each target in turn, relayed whole or streamed.

:meth:`~tokenyard.serving.router.core.RouterCore.completion` builds a
:class:`RoutedRequest` once the decision is made and awaits :meth:`RoutedRequest.complete`
or :meth:`RoutedRequest.stream`. Fallback happens only before the first streamed chunk
was sent; after it, a failure ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from tokenyard.accounting.audit import AuditRecord
from tokenyard.accounting.books import Outcome
from tokenyard.accounting.ledger import cost_usd, strongest
from tokenyard.accounting.ratelimit import RateLimiter
from tokenyard.routing.decision import Decision
from tokenyard.routing.errors import RouterError, timeout
from tokenyard.routing.request import ParsedRequest
from tokenyard.serving.backends import BackendFailure
from tokenyard.serving.circuit import CircuitBreakers
from tokenyard.serving.router.attempts import Attempts
from tokenyard.serving.router.estimate import output_tokens
from tokenyard.serving.router.http import (
    ENDPOINT_HEADER,
    REQUEST_ID_HEADER,
    TARGET_HEADER,
    error_response,
)
from tokenyard.serving.router.state import EndpointPolicy, RouterState

if TYPE_CHECKING:
    from tokenyard.serving.router.core import RouterCore


# The status audited for a request its client abandoned (nginx's "client closed request").
CLIENT_CLOSED = 499


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _usage(obj: Mapping[str, Any] | None) -> tuple[int, int] | None:
    if not isinstance(obj, Mapping):
        return None
    u = obj.get("usage")
    if not isinstance(u, Mapping):
        return None
    return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)


async def _aclose(agen: Any) -> None:
    close = getattr(agen, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


class _FinishedStream(StreamingResponse):
    """A streaming response that runs ``finish`` whatever happens to it: Starlette
    cancels a stream whose client left, possibly before its body was ever iterated, and
    an async generator never started never runs its ``finally``."""

    def __init__(self, content: Any, finish: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._finish = finish

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._finish()


class RoutedRequest:
    """One routed request: the attempt loop, streaming and accounting."""

    def __init__(
        self,
        *,
        core: RouterCore,
        state: RouterState,
        pol: EndpointPolicy,
        parsed: ParsedRequest,
        decision: Decision,
        record: AuditRecord,
        started: float,
        est_tokens: int,
        request_id: str,
        breakers: CircuitBreakers,
        limiter: RateLimiter,
    ) -> None:
        self.core = core
        self.state = state
        self.pol = pol
        self.parsed = parsed
        self.record = record
        self.started = started
        self.est = est_tokens
        self.request_id = request_id
        self.limiter = limiter
        self.out = Outcome()
        self._relay_started = False
        self.attempts = Attempts(
            core=core,
            state=state,
            pol=pol,
            decision=decision,
            prompt_tokens=parsed.prompt_tokens,
            breakers=breakers,
            out=self.out,
        )
        self.body = dict(parsed.body)
        self.client_wants_usage = bool(
            isinstance(self.body.get("stream_options"), Mapping)
            and self.body["stream_options"].get("include_usage")
        )
        if parsed.stream:
            # Always ask for usage: spend is accounted from it, even when the client
            # did not ask (the usage-only chunk is then not forwarded).
            opts = dict(self.body.get("stream_options") or {})
            opts["include_usage"] = True
            self.body["stream_options"] = opts

    def _headers(self) -> dict[str, str]:
        return {
            REQUEST_ID_HEADER: self.request_id,
            ENDPOINT_HEADER: self.pol.endpoint,
            TARGET_HEADER: self.out.target or "",
        }

    def _unused(self) -> None:
        """No target answered: the tokens the rate limit took for it are given back."""
        self.limiter.commit(self.record.tenant, self.est, 0, self.core.clock())

    def _fail(self, err: RouterError) -> Response:
        self._unused()
        self.out.status = err.status
        self.out.error = err.code or err.type
        self.core.books.finish(self.record, self.pol, self.started, self.out)
        return error_response(err, self.request_id)

    def _passthrough(self, failure: BackendFailure) -> Response:
        """A failure that another target would repeat (a 4xx): answer it as it came."""
        self._unused()
        self.out.status = failure.status
        self.out.error = "backend_rejected"
        self.core.books.finish(self.record, self.pol, self.started, self.out)
        body = (
            failure.body
            or RouterError(failure.status, str(failure), type="invalid_request_error").to_body()
        )
        return JSONResponse(body, status_code=failure.status, headers=self._headers())

    def _account(self, usage: tuple[int, int] | None, streamed_chunks: int) -> None:
        entry = self.state.catalogue[self.out.target or ""]
        if usage is None:
            # No usage from the backend: charge the estimate, never zero.
            usage = (self.parsed.prompt_tokens, streamed_chunks)
        self.out.tokens_in, self.out.tokens_out = usage
        self.out.cost = cost_usd(entry, usage[0], usage[1])
        # The same tokens priced on the endpoint's strongest target: what routing saved.
        base = strongest(self.state.catalogue, (t.model for t in self.pol.spec.targets))
        if base is not None:
            self.out.baseline_target = base.name
            self.out.baseline_cost = cost_usd(base, usage[0], usage[1])
        self.limiter.commit(self.record.tenant, self.est, usage[0] + usage[1], self.core.clock())

    def _abandoned(self, target: str, reason: str) -> None:
        """The client went away (timeout, disconnect) while ``target`` had the request:
        the backend may bill it, so it is audited (499) and charged its estimate (the
        reservation's prompt plus max_tokens); the cancellation closes the backend call
        (an external provider's connection, an in-cluster replica's request)."""
        entry = self.state.catalogue[target]
        out_tokens = output_tokens(entry, self.parsed)
        self.out.target, self.out.reason = target, reason
        self.out.tokens_in, self.out.tokens_out = self.parsed.prompt_tokens, out_tokens
        self.out.cost = cost_usd(entry, self.parsed.prompt_tokens, out_tokens)
        self.out.status = CLIENT_CLOSED
        self.out.error = "client_closed_request"
        self.limiter.commit(self.record.tenant, self.est, self.est, self.core.clock())
        self.core.books.finish(self.record, self.pol, self.started, self.out)

    async def complete(self) -> Response:
        last: BackendFailure | None = None
        for target, reason, backend, per in self.attempts:
            try:
                # Without a stream the first token is not seen: the answer ends the wait.
                with self.attempts.in_flight(target):
                    result = await asyncio.wait_for(
                        backend.complete(self.parsed.kind, self.body, per), per
                    )
            except asyncio.CancelledError:
                self.attempts.cancelled(target)
                self._abandoned(target, reason)
                raise
            except Exception as exc:
                failure = self.attempts.classify(exc, target)
                last = failure
                if not self.attempts.after_failure(target, failure):
                    if failure.status < 500 and failure.status != 429:
                        self.out.target = target
                        return self._passthrough(failure)
                    err = RouterError(
                        failure.status,
                        str(failure),
                        type="server_error" if failure.status >= 500 else "rate_limit_error",
                        code=(failure.kind or "error").lower(),
                        retry_after=failure.retry_after,
                    )
                    self.out.target = target
                    return self._fail(err)
                continue
            self.attempts.succeeded(target)
            self.out.target, self.out.reason = target, reason
            result["model"] = self.state.catalogue[target].servedModelName
            self._account(_usage(result), 0)
            self.out.status = 200
            self.core.books.finish(self.record, self.pol, self.started, self.out)
            return JSONResponse(result, headers=self._headers())
        return self._fail(self.attempts.exhausted(last))

    async def stream(self) -> Response:
        last: BackendFailure | None = None
        for target, reason, backend, per in self.attempts:
            agen = backend.stream(self.parsed.kind, self.body, per)
            try:
                with self.attempts.in_flight(target):
                    first = await asyncio.wait_for(agen.__anext__(), per)
            except StopAsyncIteration:
                failure = BackendFailure(f"{target}: empty stream", kind="Error")
            except asyncio.CancelledError:
                self.attempts.cancelled(target)
                self._abandoned(target, reason)
                await _aclose(agen)
                raise
            except Exception as exc:
                failure = self.attempts.classify(exc, target)
            else:
                self.attempts.succeeded(target)
                self.out.target, self.out.reason = target, reason
                relay = self._relay(first, agen)

                async def finish(
                    target: str = target, reason: str = reason, agen: Any = agen
                ) -> None:
                    if not self._relay_started:  # the client left before the first byte
                        self._abandoned(target, reason)
                        await _aclose(agen)

                return _FinishedStream(
                    relay, finish, media_type="text/event-stream", headers=self._headers()
                )
            await _aclose(agen)
            last = failure
            if not self.attempts.after_failure(target, failure):
                self.out.target = target
                if failure.status < 500 and failure.status != 429:
                    return self._passthrough(failure)
                return self._fail(
                    RouterError(
                        failure.status,
                        str(failure),
                        type="server_error",
                        code=(failure.kind or "error").lower(),
                        retry_after=failure.retry_after,
                    )
                )
        return self._fail(self.attempts.exhausted(last))

    async def _relay(
        self, first: dict[str, Any], agen: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        """Forward chunks; after the first one, failures end the stream with an error event."""
        self._relay_started = True
        served = self.state.catalogue[self.out.target or ""].servedModelName
        usage: tuple[int, int] | None = None
        chunks = 0
        self.out.status = 200
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                u = _usage(chunk)
                if u is not None:
                    usage = u
                is_usage_only = not chunk.get("choices") and u is not None
                if is_usage_only and not self.client_wants_usage:
                    pass
                else:
                    if not is_usage_only:
                        chunks += 1
                        if not self.client_wants_usage:
                            chunk.pop("usage", None)
                    chunk["model"] = served
                    yield _sse(chunk)
                remaining = self.attempts.deadline - time.monotonic()
                try:
                    async with asyncio.timeout(max(remaining, 0.001)):
                        chunk = await agen.__anext__()
                except StopAsyncIteration:
                    chunk = None
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away mid-stream: charged what was streamed (or the usage
            # the backend reported), audited as 499; the backend call is closed below.
            self.out.status = CLIENT_CLOSED
            self.out.error = "client_closed_request"
            raise
        except Exception as exc:
            failure = self.attempts.classify(exc, self.out.target or "")
            self.out.status = 504 if failure.kind == "Timeout" else 502
            self.out.error = f"stream broke: {failure.kind or 'Error'}"
            err = timeout() if failure.kind == "Timeout" else RouterError(
                502, "the backend failed after the stream started", type="server_error",
                code="stream_interrupted",
            )  # fmt: skip
            yield _sse(err.to_body())
            yield b"data: [DONE]\n\n"
        finally:
            await _aclose(agen)
            self._account(usage, chunks)
            self.core.books.finish(self.record, self.pol, self.started, self.out)


__all__ = ["CLIENT_CLOSED", "RoutedRequest"]
