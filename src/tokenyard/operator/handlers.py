"""kopf wiring: event handlers feed the reconciler's store and queue, nothing more.

Loaded by ``tokenyard operator`` (``tokenyard.operator.main``) and by the integration
tests as a module (never by file path, or kopf registers every handler twice). All the
work happens in :class:`tokenyard.operator.controller.Controller`, started at startup:
kopf's handlers are edge-triggered, so they only say "look at this pool again"; the
controller's passes are level-based and idempotent, and they validate too (an invalid
spec gets ``ValidationFailed``, an Event and a log line naming the field).

There are deliberately no ``@kopf.on.create/update/resume`` handlers: kopf would write
its last-handled-configuration annotation onto every object (one more PATCH per object
and per spec change, and a bigger object in every later watch event), deep-copy each
body twice per event to diff it, and hold each object's worker up to
``consistency_timeout`` after its own patch. At 1,000 models that was most of the
operator's API traffic and much of its memory; the reconciler needs none of it. Nor are
there kopf indexes (see :mod:`tokenyard.operator.store` for why): the event handlers
apply each event to a :class:`~tokenyard.operator.store.WatchedStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import kopf
from prometheus_client import start_http_server

from tokenyard.api.common import GROUP, VERSION
from tokenyard.operator import traffic
from tokenyard.operator.controller import Controller
from tokenyard.operator.kube import MODELS, POLICIES, POOLS, KopfKubeApi
from tokenyard.operator.metrics import OperatorMetrics
from tokenyard.operator.store import Kind, WatchedStore, pool_ref
from tokenyard.settings import Settings, load_settings

MEMO_SETTINGS = "tokenyard_settings"
MEMO_STOP = "tokenyard_stop"

# kopf keeps a worker task per object while events arrive, holding that object's last
# whole body (managedFields, last-applied-configuration and all); its default keeps an
# idle worker 5 s. With thousands of objects created or re-listed at once that alone was
# tens of MB: a worker that has nothing to do exits at once and a new one starts on the
# next event (cheap: an asyncio task).
WORKER_IDLE_S = 0.1
# Initial lists (every start, every watch restart) in pages of this many objects rather
# than one response holding every object of the kind.
LIST_CHUNK = 100

POOLS_PLURAL = POOLS.plural
MODELS_PLURAL = MODELS.plural
POLICIES_PLURAL = POLICIES.plural


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's last-handled-configuration storage, for an operator without change handlers.

    kopf builds every object's "essence" on every event (a deep copy of the whole body,
    managedFields included) to diff it for change handlers; this operator has none, so
    the essence is empty and nothing is ever stored. That was an eighth of the
    operator's CPU while 1,000 models were created."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


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
    settings.watching.chunk_size = LIST_CHUNK
    settings.queueing.idle_timeout = WORKER_IDLE_S
    # No listing and watching of every CRD (and namespace) in the cluster: kopf does it
    # only to notice resources that appear later, and other operators' CRDs run to
    # megabytes each (KubeRay's among them), which made the operator's memory grow with
    # the cluster rather than with its own objects. Our CRDs are installed before the
    # operator (the chart's crds/); the reconciler refuses to run without them, and the
    # RayService CRD is looked up through discovery when needed.
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    # Only warnings become Kubernetes Events; the reconciler posts its own on transitions.
    settings.posting.level = logging.WARNING
    store = WatchedStore()
    memo["store"] = store
    api = KopfKubeApi(settings, logging.getLogger("tokenyard.operator.api"))
    # One pooled client for the routers' stats endpoints, closed at cleanup.
    client = httpx.AsyncClient()
    memo["stats_client"] = client

    ctrl = Controller(api, store, op, stats_fetcher=traffic.stats_fetcher(client, op))
    memo["controller"] = ctrl
    if op.metrics_port:
        metrics = OperatorMetrics(ctrl)
        memo["metrics_server"], _ = start_http_server(op.metrics_port, registry=metrics.registry)
    task = asyncio.create_task(ctrl.run(), name="tokenyard reconciler")
    memo["controller_task"] = task
    task.add_done_callback(lambda t: _reconciler_ended(t, memo.get(MEMO_STOP)))
    logger.info(
        "tokenyard operator started: namespaces=%s resync=%ss retry=%ss",
        ",".join(op.namespaces) or "*",
        op.resync_interval_s,
        op.retry_delay_s,
    )


def _reconciler_ended(task: asyncio.Task[None], stop: asyncio.Event | None) -> None:
    """A reconciler that stopped on an error (our CRDs missing, say) stops the operator,
    which exits non-zero and is restarted, rather than idling with a failing probe."""
    if task.cancelled() or task.exception() is None:
        return
    logging.getLogger("tokenyard.operator").error(
        "the tokenyard reconciler stopped: %s", task.exception()
    )
    if stop is not None:
        stop.set()


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
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()


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


def _observe(
    memo: Any, kind: Kind, event: tuple[str | None, str | None, str], body: kopf.Body
) -> tuple[Controller, str, bool] | None:
    """Apply one watch event to the store; (controller, namespace, deleted) when it
    carries a change a pass must see, None when not (an older event, or only our own
    status writes coming back)."""
    type_, namespace, name = event
    ns = namespace or ""
    deleted = type_ == "DELETED"
    store: WatchedStore = memo["store"]
    if not store.apply(kind, ns, name, None if deleted else body):
        return None
    ctrl = _controller(memo)
    if not ctrl.changed(kind, ns, name, None if deleted else body):
        return None
    return ctrl, ns, deleted


@kopf.on.event(GROUP, VERSION, POOLS_PLURAL)
async def pool_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    seen = _observe(memo, "pool", (type, namespace, name), body)
    if seen is not None:
        ctrl, ns, _deleted = seen
        ctrl.on_pool_event(ns, name)


@kopf.on.event(GROUP, VERSION, MODELS_PLURAL)
async def model_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    seen = _observe(memo, "model", (type, namespace, name), body)
    if seen is None:
        return
    ctrl, ns, deleted = seen
    spec = body.get("spec")
    external = isinstance(spec, Mapping) and spec.get("external") is not None
    ctrl.on_member_event(
        "model", ns, name, pool_ref(body) or None, deleted=deleted, external=external
    )


@kopf.on.event(GROUP, VERSION, POLICIES_PLURAL)
async def policy_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    seen = _observe(memo, "policy", (type, namespace, name), body)
    if seen is not None:
        ctrl, ns, deleted = seen
        ctrl.on_member_event("policy", ns, name, pool_ref(body) or None, deleted=deleted)
