"""``POST /v1/tokenyard/feedback``: a client or reviewer rates an answered request.

The body names the request by the id the router returned (``x-request-id`` header, the
audit line's ``request_id``) and gives a score in [0, 1] or ``"good"`` / ``"bad"``. The
caller is identified as a request to the same endpoint is (API key or tenant header,
:func:`~tokenyard.routing.tenants.resolve_tenant`); a tenant may rate only its own
requests, and every other case (unknown id, another tenant's request, no credentials)
gets the same 404, so a caller learns nothing about requests that are not its own.
The rating is joined with the decision it rates (target, classifier and its score,
exploration propensity), appended to the pool's feedback journal and counted in metrics.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokenyard.accounting.learning import MAX_RATINGS_PER_REQUEST, DecisionNote
from tokenyard.routing.errors import RouterError, bad_request, clip
from tokenyard.routing.request import lower_headers
from tokenyard.routing.tenants import resolve_tenant
from tokenyard.serving.router.http import REQUEST_ID_HEADER, error_response, read_json

if TYPE_CHECKING:
    from tokenyard.serving.router.core import RouterCore

FEEDBACK_PATH = "/v1/tokenyard/feedback"
MAX_FEEDBACK_BYTES = 8192
MAX_REQUEST_ID = 128
LABELS = {"good": 1.0, "bad": 0.0}
_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_FIELDS = {"request_id", "score", "source"}


def not_found(request_id: str) -> RouterError:
    """The one answer for an id the caller may not rate, whatever the reason."""
    return RouterError(
        404,
        f"no answered request '{clip(request_id, 64)}' of yours is known to this router",
        type="invalid_request_error",
        param="request_id",
        code="request_not_found",
    )


def parse_feedback(body: Any) -> tuple[str, float, str]:
    """The request id, the score in [0, 1] and the source of a feedback body; 400 naming
    the field otherwise."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad_request(f"unknown field '{clip(unknown[0], 64)}'", param=unknown[0][:64])
    rid = body.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_REQUEST_ID:
        raise bad_request(
            f"request_id must be the x-request-id of a response (1 to {MAX_REQUEST_ID} characters)",
            param="request_id",
        )
    raw = body.get("score")
    if isinstance(raw, str) and raw in LABELS:
        score = LABELS[raw]
    elif isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        score = float(raw)
        if not 0.0 <= score <= 1.0:
            raise bad_request("score must be in [0, 1]", param="score")
    else:
        raise bad_request('score must be a number in [0, 1], "good" or "bad"', param="score")
    source = body.get("source", "application")
    if not isinstance(source, str) or not _SOURCE_RE.match(source):
        raise bad_request(
            "source must be a lower-case name such as application or reviewer", param="source"
        )
    return rid, score, source


JOURNAL_GRACE_S = (0.005, 0.02, 0.1)
"""Pauses before a missed request id is looked up again: another replica writes its
decisions from a thread of its own, normally within a millisecond of the answer, so a
rating sent at once to another replica finds it on a second look."""


async def find_decision(core: RouterCore, rid: str) -> DecisionNote | None:
    """The decision of ``rid``; a miss reads what other replicas wrote to the journal
    (off the event loop), looking again after each of JOURNAL_GRACE_S."""
    note = await asyncio.to_thread(core.learning.find, rid)
    if note is None and core.learning.durable:
        for pause in JOURNAL_GRACE_S:
            await asyncio.sleep(pause)
            note = await asyncio.to_thread(core.learning.find, rid)
            if note is not None:
                break
    return note


async def feedback(core: RouterCore, request: Request) -> Response:
    """Rate one answered request (see the module docstring)."""
    own_id = uuid.uuid4().hex
    try:
        state = core.state
        rid, score, source = parse_feedback(await read_json(request, MAX_FEEDBACK_BYTES))
        note = await find_decision(core, rid)
        if note is None:
            raise not_found(rid)
        pol = state.policies.get(note.endpoint) or state.direct.get(note.endpoint)
        if pol is None:
            raise not_found(rid)
        try:
            tenant = resolve_tenant(
                lower_headers(request.headers.items()),
                pol.spec.tenants,
                pol.api_keys,
                state.keyed_tenants,
            )
        except RouterError:
            raise not_found(rid) from None
        if tenant != note.tenant:
            raise not_found(rid)
        if not core.learning.may_rate(rid):
            raise RouterError(
                409,
                f"request '{clip(rid, 64)}' was already rated {MAX_RATINGS_PER_REQUEST} "
                "times; the newest rating counts",
                type="invalid_request_error",
                param="request_id",
                code="too_many_ratings",
            )
        now = core.clock()
        record = {
            "time": now,
            "request_id": rid,
            "score": score,
            "source": source,
            **{k: v for k, v in note.to_dict().items() if k not in ("request_id", "time")},
            "request_time": note.time,
        }
        try:
            await asyncio.to_thread(core.learning.add_feedback, record)
        except OSError:
            raise RouterError(
                503,
                "the feedback could not be stored; retry",
                type="server_error",
                code="feedback_not_stored",
                retry_after=1.0,
            ) from None
    except RouterError as err:
        return error_response(err, own_id)
    labels = (note.endpoint, note.target, str(note.explored).lower(), note.classifier)
    core.metrics.feedback.labels(*labels).inc()
    core.metrics.feedback_score.labels(*labels).inc(score)
    return JSONResponse(
        {
            "object": "tokenyard.feedback",
            "request_id": rid,
            "score": score,
            "endpoint": note.endpoint,
            "target": note.target,
            "stored": core.learning.durable,
        },
        headers={REQUEST_ID_HEADER: own_id},
    )


__all__ = ["FEEDBACK_PATH", "feedback", "parse_feedback"]
