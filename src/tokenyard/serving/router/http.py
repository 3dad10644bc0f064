"""The router's HTTP surface: which path does what, and errors as OpenAI-style responses.

:func:`handle` dispatches a Starlette request to the completions (routed by
:meth:`~tokenyard.serving.router.core.RouterCore.completion`), ``/v1/models``, health,
``/metrics``, ``POST /v1/tokenyard/explain``, ``POST /v1/tokenyard/feedback``
(:mod:`.feedback`) and ``GET /v1/tokenyard/stats``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokenyard.accounting.stats import STATS_PATH, build_stats
from tokenyard.contract import DEFAULT_MAX_REQUEST_BYTES
from tokenyard.routing.decision import BackendState
from tokenyard.routing.errors import RouterError, admin_unauthorized, body_too_large
from tokenyard.routing.request import RequestKind, decode_body

if TYPE_CHECKING:
    from tokenyard.serving.router.core import RouterCore

ENDPOINT_HEADER = "x-tokenyard-endpoint"
TARGET_HEADER = "x-tokenyard-target"
REQUEST_ID_HEADER = "x-request-id"


def error_response(err: RouterError, request_id: str) -> JSONResponse:
    """The OpenAI-style error body with its status, Retry-After and the request id."""
    headers = dict(err.headers())
    headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(err.to_body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read only up to ``limit`` bytes: 413 past it, before parsing
    (from Content-Length when the client sends one, else while reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = DEFAULT_MAX_REQUEST_BYTES) -> Any:
    """The request body as strict JSON (:func:`~tokenyard.routing.request.decode_body`);
    413 past ``limit`` bytes, 400 when it is not valid JSON."""
    return decode_body(await read_body(request, limit))


def admin_allowed(request: Request, token_sha256: str | None) -> bool:
    """Whether ``request`` may read an admin endpoint (``/metrics``, the stats).

    With no ``token_sha256`` configured every caller may (local mode). Otherwise only an
    ``Authorization: Bearer <token>`` whose SHA-256 equals it, compared in constant time.
    """
    if token_sha256 is None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
    return hmac.compare_digest(digest, token_sha256)


def admin_denied() -> Response:
    """The 401 of an admin endpoint, with the scheme a client should use."""
    response = error_response(admin_unauthorized(), uuid.uuid4().hex)
    response.headers["WWW-Authenticate"] = 'Bearer realm="tokenyard"'
    return response


async def handle(core: RouterCore, request: Request) -> Response:
    """Answer one HTTP request to the router."""
    core.start_background()
    path = request.url.path.rstrip("/") or "/"
    method = request.method
    if method == "POST" and path == "/v1/chat/completions":
        return await core.completion(request, "chat")
    if method == "POST" and path == "/v1/completions":
        return await core.completion(request, "completion")
    if method == "GET" and path == "/v1/models":
        return JSONResponse(models(core))
    if method == "GET" and path in ("/healthz", "/-/healthz"):
        return health(core)
    admin = method == "GET" and path in ("/metrics", STATS_PATH)
    if admin and not admin_allowed(request, core.args.adminTokenSha256):
        return admin_denied()
    if method == "GET" and path == "/metrics":
        core.update_gauges()
        body, ctype = core.metrics.exposition()
        return Response(body, media_type=ctype)
    if method == "POST" and path == "/v1/tokenyard/feedback":
        from tokenyard.serving.router.feedback import feedback

        return await feedback(core, request)
    if method == "POST" and path == "/v1/tokenyard/explain":
        return await explain(core, request)
    if method == "GET" and path == STATS_PATH:
        try:
            return JSONResponse(stats(core))
        except RouterError as not_ready:
            return error_response(not_ready, uuid.uuid4().hex)
    err = RouterError(404, f"no route {method} {path}", type="invalid_request_error")
    return error_response(err, uuid.uuid4().hex)


def health(core: RouterCore) -> Response:
    state = core.applied
    if state is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse(
        {
            "status": "ok",
            "configVersion": state.version,
            # Tells a config change applied in place from a restarted replica.
            "pid": os.getpid(),
            "endpoints": sorted(state.policies),
            "models": sorted(state.catalogue),
        }
    )


def models(core: RouterCore) -> dict[str, Any]:
    """``GET /v1/models``: every endpoint, then every model a client may call by name."""
    state = core.state
    data: list[dict[str, Any]] = []
    for endpoint, pol in sorted(state.policies.items()):
        data.append(
            {
                "id": endpoint,
                "object": "model",
                "created": 0,
                "owned_by": "tokenyard",
                "tokenyard": {
                    "type": "endpoint",
                    "policy": pol.name,
                    "strategy": pol.spec.strategy,
                    "targets": [t.model for t in pol.spec.targets],
                },
            }
        )
    for name, entry in sorted(state.catalogue.items()):
        data.append(
            {
                "id": entry.servedModelName,
                "object": "model",
                "created": 0,
                "owned_by": "tokenyard",
                "tokenyard": {
                    "type": "model",
                    "name": name,
                    "kind": entry.kind,
                    "quality": entry.quality,
                    "inputPer1M": entry.inputPer1M,
                    "outputPer1M": entry.outputPer1M,
                    "ready": core.serve.ready(entry),
                },
            }
        )
    return {"object": "list", "data": data}


def stats(core: RouterCore) -> dict[str, Any]:
    """Observed traffic and spend per endpoint, summed over every router replica
    (read from the ledger mirror: at most the refresh interval behind)."""
    state = core.state
    return build_stats(
        pool=core.args.pool,
        namespace=core.args.namespace,
        now=core.clock(),
        policies={e: p.spec for e, p in state.policies.items()},
        direct={e: p.spec for e, p in state.direct.items()},
        source=core.ledger.mirror,
        shadow=core.shadow.summary,
    )


async def explain(core: RouterCore, request: Request) -> Response:
    """``POST /v1/tokenyard/explain``: the decision the router would make now."""
    from tokenyard.routing.explain import explain_request

    request_id = uuid.uuid4().hex
    try:
        state = core.state
        payload = await read_json(request, state.config.max_request_bytes)
        kind: RequestKind = (
            "completion" if isinstance(payload, dict) and "prompt" in payload else "chat"
        )
        result = explain_request(
            payload,
            dict(request.headers.items()),
            state.config,
            core.ledger,
            core.clock(),
            kind=kind,
            api_keys={p.name: p.api_keys for p in state.policies.values()},
            backends={
                n: BackendState(ready=core.serve.ready(e)) for n, e in state.catalogue.items()
            },
            classifier=core.classifier,
            policy_classifiers={
                e: p.classifier for e, p in state.policies.items() if p.classifier is not None
            },
            load=core.load,
            live_replicas=core.live_replicas(),
        )
    except RouterError as err:
        return error_response(err, request_id)
    return JSONResponse(result, headers={REQUEST_ID_HEADER: request_id})


__all__ = [
    "ENDPOINT_HEADER",
    "REQUEST_ID_HEADER",
    "TARGET_HEADER",
    "error_response",
    "handle",
    "read_body",
    "read_json",
]
