"""kopf wiring: indexes feed the reconciler, handlers validate and enqueue, nothing more.

Loaded by ``tokenyard operator`` (``tokenyard.operator.main``) and by the integration
tests as a module (never by file path, or kopf registers every handler twice). All the
work happens in :class:`tokenyard.operator.controller.Controller`, started at startup:
kopf's handlers are edge-triggered, so they only say "look at this pool again"; the
controller's passes are level-based and idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import httpx
import kopf

from tokenyard.api.common import (
    GROUP,
    REASON_POOL_NOT_FOUND,
    REASON_TARGET_NOT_FOUND,
    REASON_VALIDATION_FAILED,
    VERSION,
)
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator import status, traffic
from tokenyard.operator.controller import Body, Controller, Store, parse, rfc3339
from tokenyard.operator.kube import MODELS, POLICIES, POOLS, KopfKubeApi, Resource
from tokenyard.settings import Settings, load_settings

MEMO_SETTINGS = "tokenyard_settings"

POOLS_PLURAL = POOLS.plural
MODELS_PLURAL = MODELS.plural
POLICIES_PLURAL = POLICIES.plural


# --------------------------------------------------------------------------- indexes


def _trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a body the reconciler reads (not kopf's annotations or managedFields)."""
    meta = body.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": keep,
        "spec": _plain(body.get("spec")),
    }
    if body.get("status") is not None:
        out["status"] = _plain(body.get("status"))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _pool_ref(body: Mapping[str, Any]) -> str:
    spec = body.get("spec")
    pool = spec.get("pool") if isinstance(spec, Mapping) else None
    return pool if isinstance(pool, str) else ""


@kopf.index(GROUP, VERSION, POOLS_PLURAL)
def pools_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): _trim(body)}


@kopf.index(GROUP, VERSION, MODELS_PLURAL)
def models_by_pool(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", _pool_ref(body)): _trim(body)}


@kopf.index(GROUP, VERSION, MODELS_PLURAL)
def models_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): _trim(body)}


@kopf.index(GROUP, VERSION, POLICIES_PLURAL)
def policies_by_pool(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", _pool_ref(body)): _trim(body)}


def _first(store: Any) -> Body | None:
    if not store:
        return None
    for v in store:
        return v  # type: ignore[no-any-return]
    return None


class KopfIndexStore:
    """:class:`Store` over kopf's in-memory indexes (live views, always current)."""

    def __init__(self, indices: Mapping[str, Any]) -> None:
        self._pools = indices["pools_by_name"]
        self._models_by_pool = indices["models_by_pool"]
        self._models_by_name = indices["models_by_name"]
        self._policies_by_pool = indices["policies_by_pool"]

    def pool(self, namespace: str, name: str) -> Body | None:
        return _first(self._pools.get((namespace, name)))

    def pools(self) -> list[tuple[str, str]]:
        return list(self._pools.keys())

    def models_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return list(self._models_by_pool.get((namespace, pool)) or [])

    def policies_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return list(self._policies_by_pool.get((namespace, pool)) or [])

    def model(self, namespace: str, name: str) -> Body | None:
        return _first(self._models_by_name.get((namespace, name)))

    def pool_refs(self, namespace: str) -> set[str]:
        return {p for ns, p in self._models_by_pool if ns == namespace} | {
            p for ns, p in self._policies_by_pool if ns == namespace
        }


# --------------------------------------------------------------------------- lifecycle


def _controller(memo: Any) -> Controller:
    ctrl: Controller = memo["controller"]
    return ctrl


def _settings(memo: Any) -> Settings:
    """The settings run_operator() validated (kopf's memo), else from the environment."""
    st = memo.get(MEMO_SETTINGS)
    if st is None:
        st = load_settings()
        memo[MEMO_SETTINGS] = st
    assert isinstance(st, Settings)
    return st


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **kwargs: Any
) -> None:
    op = _settings(memo).operator
    # kopf's watch requests otherwise hang for ever on API servers and load balancers
    # that drop idle connections silently (kopf issues #585, #847): a server-side
    # timeout makes the API server end the watch, a client-side one catches the rest.
    settings.watching.server_timeout = op.watch_server_timeout_s
    settings.watching.client_timeout = op.watch_client_timeout_s
    # Only warnings become Kubernetes Events; the reconciler posts its own on transitions.
    settings.posting.level = logging.WARNING
    store: Store = KopfIndexStore(kwargs)
    api = KopfKubeApi(settings, logging.getLogger("tokenyard.operator.api"))
    # One pooled client for the routers' stats endpoints, closed at cleanup.
    client = httpx.AsyncClient()
    memo["stats_client"] = client

    async def fetch(url: str) -> dict[str, Any] | None:
        return await traffic.fetch_stats(url, client, op.router_stats_timeout_s)

    ctrl = Controller(api, store, op, stats_fetcher=fetch)
    memo["controller"] = ctrl
    memo["controller_task"] = asyncio.create_task(ctrl.run(), name="tokenyard reconciler")
    logger.info(
        "tokenyard operator started: namespaces=%s resync=%ss retry=%ss",
        ",".join(op.namespaces) or "*",
        op.resync_interval_s,
        op.retry_delay_s,
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    task = memo.get("controller_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    client = memo.get("stats_client")
    if client is not None:
        await client.aclose()


@kopf.on.probe(id="reconciler")
async def reconciler_probe(memo: Any, **_: Any) -> dict[str, int]:
    """Part of the liveness endpoint (/healthz): fails if the reconciler has stopped, so
    Kubernetes restarts an operator that would otherwise watch but never act."""
    task = memo.get("controller_task")
    if task is None or task.done():
        raise RuntimeError("the tokenyard reconciler is not running")
    ctrl = _controller(memo)
    return {"queued": len(ctrl.queue), "passes": ctrl.stats.passes, "errors": ctrl.stats.errors}


# --------------------------------------------------------------------------- events


@kopf.on.event(GROUP, VERSION, POOLS_PLURAL)
async def pool_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    ctrl = _controller(memo)
    ns = namespace or ""
    if ctrl.changed("pool", ns, name, None if type == "DELETED" else body):
        ctrl.on_pool_event(ns, name)


@kopf.on.event(GROUP, VERSION, MODELS_PLURAL)
async def model_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    ctrl = _controller(memo)
    ns = namespace or ""
    deleted = type == "DELETED"
    if not ctrl.changed("model", ns, name, None if deleted else body):
        return  # our own status write or kopf's annotations coming back
    spec = body.get("spec")
    external = isinstance(spec, Mapping) and spec.get("external") is not None
    ctrl.on_member_event(
        "model", ns, name, _pool_ref(body) or None, deleted=deleted, external=external
    )


@kopf.on.event(GROUP, VERSION, POLICIES_PLURAL)
async def policy_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    ctrl = _controller(memo)
    ns = namespace or ""
    deleted = type == "DELETED"
    if ctrl.changed("policy", ns, name, None if deleted else body):
        ctrl.on_member_event("policy", ns, name, _pool_ref(body) or None, deleted=deleted)


# --------------------------------------------------------------------------- validation


async def _report(
    memo: Any,
    resource: Resource,
    body: kopf.Body,
    desired_status: dict[str, Any],
    *,
    reason: str,
    message: str,
    logger: kopf.Logger,
) -> None:
    """Condition, Event and log line for a problem the handler itself detects; the
    Event and log only when the condition changes (kopf retries the handler)."""
    ctrl = _controller(memo)
    current = body.get("status")
    current = current if isinstance(current, Mapping) else None
    old = status.ready_condition((current or {}).get("conditions"))
    patch = status.status_patch(current, desired_status)
    if patch is not None:
        await ctrl.api.patch(
            resource,
            str(body.metadata.namespace),
            str(body.metadata.name),
            {"status": patch},
            subresource="status",
        )
    if old is None or (old.get("reason"), old.get("message")) != (reason, message):
        # Through the reconciler's API seam rather than kopf.event(): one Event poster for
        # the whole operator, with unique names (kopf's relies on generateName).
        await ctrl.api.post_event(body, "Warning", reason, message)
        logger.error("%s: %s", reason, message)


def _conditions(body: kopf.Body) -> Any:
    st = body.get("status")
    return st.get("conditions") if isinstance(st, Mapping) else None


async def _invalid(
    memo: Any, resource: Resource, body: kopf.Body, error: str, logger: kopf.Logger
) -> NoReturn:
    message = f"invalid spec: {error}"
    gen = body.metadata.get("generation")
    now = rfc3339(_controller(memo).clock())
    desired = status.invalid_status(_conditions(body), message, gen, now=now)
    await _report(
        memo,
        resource,
        body,
        desired,
        reason=REASON_VALIDATION_FAILED,
        message=message,
        logger=logger,
    )
    raise kopf.PermanentError(message)


async def _pool_missing(
    memo: Any, resource: Resource, body: kopf.Body, pool: str, logger: kopf.Logger
) -> NoReturn:
    message = f"spec.pool: ServingPool {pool!r} not found in namespace {body.metadata.namespace!r}"
    gen = body.metadata.get("generation")
    now = rfc3339(_controller(memo).clock())
    desired = status.pool_not_found_status(_conditions(body), message, gen, now=now)
    await _report(
        memo, resource, body, desired, reason=REASON_POOL_NOT_FOUND, message=message, logger=logger
    )
    raise kopf.TemporaryError(message, delay=_settings(memo).operator.retry_delay_s)


@kopf.on.resume(GROUP, VERSION, POOLS_PLURAL)
@kopf.on.create(GROUP, VERSION, POOLS_PLURAL)
@kopf.on.update(GROUP, VERSION, POOLS_PLURAL)
async def pool_changed(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    parsed = parse(ServingPool, body)
    if parsed.obj is None:
        await _invalid(memo, POOLS, body, str(parsed.error), logger)
    _controller(memo).on_pool_event(str(body.metadata.namespace), str(body.metadata.name))


@kopf.on.resume(GROUP, VERSION, MODELS_PLURAL)
@kopf.on.create(GROUP, VERSION, MODELS_PLURAL)
@kopf.on.update(GROUP, VERSION, MODELS_PLURAL)
async def model_changed(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    parsed = parse(ModelDeployment, body)
    if parsed.obj is None:
        await _invalid(memo, MODELS, body, str(parsed.error), logger)
    md: ModelDeployment = parsed.obj
    ns = str(body.metadata.namespace)
    if md.spec.pool is not None and not await _controller(memo).pool_exists(ns, md.spec.pool):
        await _pool_missing(memo, MODELS, body, md.spec.pool, logger)


@kopf.on.resume(GROUP, VERSION, POLICIES_PLURAL)
@kopf.on.create(GROUP, VERSION, POLICIES_PLURAL)
@kopf.on.update(GROUP, VERSION, POLICIES_PLURAL)
async def policy_changed(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    parsed = parse(RoutingPolicy, body)
    if parsed.obj is None:
        await _invalid(memo, POLICIES, body, str(parsed.error), logger)
    pol: RoutingPolicy = parsed.obj
    ctrl = _controller(memo)
    ns = str(body.metadata.namespace)
    if not await ctrl.pool_exists(ns, pol.spec.pool):
        await _pool_missing(memo, POLICIES, body, pol.spec.pool, logger)
    missing = [
        f"spec.targets[{i}].model: ModelDeployment {t.model!r} not found"
        for i, t in enumerate(pol.spec.targets)
        if not await ctrl.model_exists(ns, t.model)
    ]
    if missing:
        # The reconciler writes the TargetNotFound condition and its Event; here we only
        # wait for the targets to appear.
        message = "; ".join(missing)
        logger.warning("%s: %s", REASON_TARGET_NOT_FOUND, message)
        raise kopf.TemporaryError(message, delay=_settings(memo).operator.retry_delay_s)
