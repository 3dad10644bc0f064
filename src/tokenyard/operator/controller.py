"""The level-based reconciler: one work queue, one pass per pool, statuses written back.

kopf handlers (``tokenyard.operator.handlers``) only enqueue keys; workers here take a
key, read the current state from the store (a WatchedStore fed by the watch and synced by
one LIST per kind at start in production, a dict in tests), render with the pure
builders, plan, act through :class:`KubeApi`, and write statuses that changed. Any pass
may run again at any time with the same result, so a restart, a replayed event or a crash
mid-pass loses nothing and duplicates nothing. Imports no kopf.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenyard import contract
from tokenyard.api.common import (
    COND_CAPPED,
    REASON_DEPLOYING,
    REASON_EXTERNAL_PROVIDER,
    REASON_NO_READY_TARGETS,
    REASON_RUNNING,
    REASON_TARGETS_READY,
    REASON_VALIDATION_FAILED,
)
from tokenyard.api.model import ModelDeployment
from tokenyard.operator import orphans, pools, status
from tokenyard.operator.kube import (
    CLAIMS,
    CONFIGMAPS,
    MODELS,
    POLICIES,
    POOLS,
    RAY_SERVICES,
    SECRETS,
    ApiError,
    KubeApi,
    NotFound,
)
from tokenyard.operator.parsing import Parsed, parse
from tokenyard.operator.store import Body, DictStore, Kind, Store, WatchedStore
from tokenyard.operator.workqueue import WorkQueue
from tokenyard.settings import OperatorSettings

StatsFetcher = Callable[[str], Awaitable[dict[str, Any] | None]]
"""Reads the router's stats document at a URL; None on any failure."""

log = logging.getLogger("tokenyard.operator")

# Events for one pool arriving closer together than this are handled in one pass:
# creating 50 models of a pool renders its RayService a few times, not 50 times.
DEBOUNCE_S = 0.2
# Passes run concurrently for different keys (never for the same key); they mostly
# wait on the API server, so several workers hide its latency.
WORKERS = 8
# Objects per page of the start-up LIST (Controller.sync).
LIST_PAGE = 100
# Status writes in flight at once, per pass: bounded so a pool of hundreds of models
# does not open hundreds of connections at the API server.
STATUS_WRITES_IN_FLIGHT = 16


def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


# --------------------------------------------------------------------------- watch events


def _capped_condition(conditions: Any) -> tuple[Any, Any] | None:
    """(status, reason) of a Capped condition in a raw status, or None."""
    if not isinstance(conditions, list):
        return None
    for c in conditions:
        if isinstance(c, Mapping) and c.get("type") == COND_CAPPED:
            return (c.get("status"), c.get("reason"))
    return None


# --------------------------------------------------------------------------- events


def _ready_message(st: Mapping[str, Any] | None) -> str | None:
    c = status.ready_condition((st or {}).get("conditions"))
    return None if c is None else c.get("message")


def _ready_reason(st: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    c = status.ready_condition((st or {}).get("conditions"))
    return (None, None) if c is None else (c.get("status"), c.get("reason"))


_GOOD = {REASON_RUNNING, REASON_EXTERNAL_PROVIDER, REASON_TARGETS_READY}
# Transitional: logged, no Event (every new model passes through it).
_QUIET = {REASON_DEPLOYING}
# Expected while targets start (each target reports its own problems): a Normal Event.
_NORMAL = {REASON_NO_READY_TARGETS}


# --------------------------------------------------------------------------- controller


class MissingCRDs(RuntimeError):
    """tokenyard's own CRDs are not installed: the reconciler cannot run."""


PoolKey = tuple[str, str, str]  # ("pool", namespace, name)
NamespaceKey = tuple[str, str, str]  # ("namespace", namespace, "")


def pool_key(namespace: str, name: str) -> PoolKey:
    return ("pool", namespace, name)


def namespace_key(namespace: str) -> NamespaceKey:
    return ("namespace", namespace, "")


@dataclass
class Stats:
    """Counters for logs, the benchmark and tests."""

    passes: int = 0
    errors: int = 0
    created: int = 0
    updated: int = 0
    status_patches: int = 0


class Controller:
    """Reconciles pools (RayService, pool/member/policy statuses) and orphans (models and
    policies whose pool does not exist) from a :class:`Store` through a :class:`KubeApi`."""

    def __init__(
        self,
        api: KubeApi,
        store: Store,
        settings: OperatorSettings,
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
        stats_fetcher: StatsFetcher | None = None,
    ) -> None:
        self.api = api
        self.stats_fetcher = stats_fetcher
        self.store = store
        self.settings = settings
        self.clock = clock
        self.log = logger
        self.queue = WorkQueue()
        self.stats = Stats()
        self._crd_served: bool | None = None
        self._write_slots = asyncio.Semaphore(STATUS_WRITES_IN_FLIGHT)
        self._last_pool: dict[tuple[str, str, str], str] = {}
        self._fingerprints: dict[tuple[str, str, str], str] = {}

    # ----------------------------------------------------------------- triggers

    def enqueue_pool(self, namespace: str, name: str, delay: float = DEBOUNCE_S) -> None:
        self.queue.add(pool_key(namespace, name), delay)

    def enqueue_namespace(self, namespace: str, delay: float = DEBOUNCE_S) -> None:
        self.queue.add(namespace_key(namespace), delay)

    def changed(self, kind: str, namespace: str, name: str, body: Body | None) -> bool:
        """Whether a watch event carries a change that can alter what the operator
        renders or reports: spec, generation, or the status fields others write that we
        read (the autoscaler's bounds, a measured cost, the Capped condition that
        spillover.downgradeWhenCapped renders). Our own status writes and kopf's
        annotations come back as events too; they are dropped here, not re-rendered."""
        key = (kind, namespace, name)
        if body is None:  # deleted
            self._fingerprints.pop(key, None)
            return True
        raw_status = body.get("status")
        st: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
        relevant = {
            "spec": body.get("spec"),
            "generation": (body.get("metadata") or {}).get("generation"),
            "autoscaling": st.get("autoscaling"),
            "cost": (st.get("costPer1MTokens"), st.get("costSource"))
            if st.get("costSource") == "Measured"
            else None,
            "capped": _capped_condition(st.get("conditions")),
        }
        fp = json.dumps(relevant, sort_keys=True, default=str)
        if self._fingerprints.get(key) == fp:
            return False
        self._fingerprints[key] = fp
        return True

    def on_member_event(
        self,
        kind: str,
        namespace: str,
        name: str,
        pool: str | None,
        *,
        deleted: bool,
        external: bool = False,
    ) -> None:
        """A model or policy changed: re-render its pool, the pool it left, and the
        namespace's orphans; an external model may be any pool's policy target."""
        key = (kind, namespace, name)
        previous = self._last_pool.get(key)
        if deleted:
            self._last_pool.pop(key, None)
        else:
            self._last_pool[key] = pool or ""
        for p in {pool or "", previous or ""} - {""}:
            self.enqueue_pool(namespace, p)
        if external:
            for ns, p in self.store.pools():
                if ns == namespace:
                    self.enqueue_pool(ns, p)
        self.enqueue_namespace(namespace)

    def on_pool_event(self, namespace: str, name: str) -> None:
        self.enqueue_pool(namespace, name)
        self.enqueue_namespace(namespace)

    def resync(self) -> None:
        """Enqueue every pool and every namespace with tokenyard objects: the periodic
        level-based pass that re-reads RayService status and catches anything missed."""
        namespaces = {ns for _, ns, _ in self._last_pool}
        for ns, name in self.store.pools():
            self.enqueue_pool(ns, name, 0.0)
            namespaces.add(ns)
        for ns in namespaces:
            self.enqueue_namespace(ns, 0.0)

    # ----------------------------------------------------------------- loop

    async def run(self, workers: int = WORKERS) -> None:
        """Workers plus the resync loop, until cancelled.

        The resync runs here, not as a ``@kopf.timer`` on pools: kopf puts a finalizer on
        every object that has a timer, so deleting a pool would hang while the operator
        is down, and the finalizer's JSON patch needs resourceVersion (kmock has none).
        """
        await self.require_crds()
        await self.sync()
        await asyncio.gather(self._resync_loop(), *(self._worker() for _ in range(workers)))

    async def sync(self) -> None:
        """Fill a :class:`WatchedStore` with one paged LIST per kind before any pass runs,
        as an informer syncs before its controller starts: a pass after a restart must
        never render a pool from the part of its models the watch has delivered so far.
        Pages are trimmed as they arrive, so memory holds one page of whole bodies."""
        store = self.store
        if not isinstance(store, WatchedStore):
            return  # a DictStore (tests, render) is complete by construction
        scopes: list[str | None] = list(self.settings.namespaces) or [None]
        kinds: tuple[tuple[Kind, Any], ...] = (
            ("pool", POOLS),
            ("model", MODELS),
            ("policy", POLICIES),
        )
        for kind, resource in kinds:
            for ns in scopes:
                listed: set[tuple[Kind, str, str]] = set()
                version: str | None = None
                cont = ""
                while True:
                    page = await self.api.list(resource, ns, limit=LIST_PAGE, cont=cont)
                    meta = page.get("metadata") or {}
                    version = version or meta.get("resourceVersion")
                    listed.update(store.apply_listed(kind, b) for b in page.get("items") or [])
                    cont = str(meta.get("continue") or "")
                    if not cont:
                        break
                store.prune(kind, listed, version, ns)
        self.log.info(
            "synced: %d pools, %d models, %d policies",
            store.count("pool"),
            store.count("model"),
            store.count("policy"),
        )
        # Everything the watch delivered before the sync was ignored by the passes that
        # could not run yet: look at everything once.
        self.resync()

    async def require_crds(self) -> None:
        """Raise :class:`MissingCRDs` unless the API server serves our three resources.

        kopf watches only the resources served when it starts (it does not list and watch
        every CRD of the cluster to notice new ones: see handlers.startup), so an
        operator started before its CRDs would otherwise watch nothing, silently."""
        missing = [r.plural for r in (POOLS, MODELS, POLICIES) if not await self.api.served(r)]
        if missing:
            raise MissingCRDs(
                f"the API server does not serve {', '.join(missing)}.{POOLS.group}/"
                f"{POOLS.version}: install tokenyard's CRDs first (helm installs them; or "
                "kubectl apply --server-side -f crds/); the operator exits and is restarted"
            )

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_s)
            self.resync()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.process(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.errors += 1
                self.log.exception(
                    "reconcile of %s failed; retrying in %ss", key, self.settings.retry_delay_s
                )
                self.queue.done(key)
                self.queue.add(key, self.settings.retry_delay_s)
            else:
                self.queue.done(key)

    async def process(self, key: tuple[str, str, str]) -> None:
        self.stats.passes += 1
        kind, ns, name = key
        if kind == "pool":
            await self.reconcile_pool(ns, name)
        else:
            await self.reconcile_namespace(ns)

    async def drain(self, horizon: float = DEBOUNCE_S, max_passes: int = 10_000) -> None:
        """Process, inline, every key due within ``horizon`` seconds (tests); keys
        scheduled later (retries) stay queued."""
        for _ in range(max_passes):
            now = self.queue._clock()
            due = [k for k, t in self.queue._due.items() if t <= now + horizon]
            if not due:
                return
            key = min(due, key=lambda k: self.queue._due[k])
            del self.queue._due[key]
            self.queue._processing.add(key)
            try:
                await self.process(key)
            finally:
                self.queue.done(key)
        raise RuntimeError("queue did not drain")

    async def reconcile_pool(self, ns: str, name: str) -> None:
        """One pass over a pool (:func:`tokenyard.operator.pools.reconcile_pool`)."""
        await pools.reconcile_pool(self, ns, name)

    async def reconcile_namespace(self, ns: str) -> None:
        """One pass over a namespace's orphans (:mod:`tokenyard.operator.orphans`)."""
        await orphans.reconcile_namespace(self, ns)

    # ----------------------------------------------------------------- helpers

    def timestamp(self) -> str:
        """Now, as conditions record it."""
        return rfc3339(self.clock())

    async def crd_missing(self) -> bool:
        """Whether the API server does not serve RayServices (KubeRay not installed)."""
        if self._crd_served:
            return False
        self._crd_served = await self.api.served(RAY_SERVICES)
        return not self._crd_served

    def recheck_crd(self) -> None:
        """Ask the API server again on the next pass whether it serves RayServices."""
        self._crd_served = None

    async def _read_named(
        self, res: Any, kind: str, refs: Iterable[str], namespace: str, unreadable: str = ""
    ) -> dict[str, Body] | None:
        """The objects named that exist, by name; None (and a warning ending in
        ``unreadable``) as soon as one cannot be read."""
        out: dict[str, Body] = {}
        for name in sorted(set(refs)):
            try:
                out[name] = await self.api.get(res, namespace, name)
            except NotFound:
                continue
            except ApiError as e:
                self.log.warning(
                    "cannot read %s %s/%s (%s)%s", kind, namespace, name, e, unreadable
                )
                return None
        return out

    async def secret_keys(self, refs: Iterable[str], namespace: str) -> dict[str, set[str]] | None:
        """Data keys of the Secrets named, absent ones left out; None if unreadable."""
        found = await self._read_named(SECRETS, "Secret", refs, namespace, "; assuming it exists")
        if found is None:
            return None
        return {
            name: set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())
            for name, s in found.items()
        }

    async def claims_present(self, refs: Iterable[str], namespace: str) -> set[str] | None:
        """The PersistentVolumeClaims named that exist; None if one cannot be read (then
        every claim is assumed present, as for Secrets)."""
        found = await self._read_named(
            CLAIMS, "PersistentVolumeClaim", refs, namespace, "; assuming it exists"
        )
        return None if found is None else set(found)

    async def configmap_data(
        self, refs: Iterable[str], namespace: str
    ) -> dict[str, dict[str, str]] | None:
        """The data of the ConfigMaps named, absent ones left out; None if unreadable."""
        found = await self._read_named(CONFIGMAPS, "ConfigMap", refs, namespace)
        if found is None:
            return None
        return {
            name: {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
            for name, cm in found.items()
        }

    async def pool_exists(self, ns: str, name: str) -> bool:
        """Whether the pool exists: the index, else the API server (the pool's watch
        event can arrive after its members' when they are created together)."""
        if self.store.pool(ns, name) is not None:
            return True
        try:
            await self.api.get(POOLS, ns, name)
        except NotFound:
            return False
        return True

    async def model_exists(self, ns: str, name: str) -> bool:
        """Whether the ModelDeployment exists (the index, else the API server)."""
        return await self.model_body(ns, name) is not None

    async def model_body(self, ns: str, name: str) -> Body | None:
        """A ModelDeployment from the index, else from the API server: a policy's target
        created just before it may not have reached the index yet."""
        body = self.store.model(ns, name)
        if body is not None:
            return body
        try:
            return await self.api.get(MODELS, ns, name)
        except NotFound:
            return None

    async def collect_target(
        self, ns: str, name: str, models: dict[str, ModelDeployment], invalid: set[str]
    ) -> None:
        """A policy's target (:meth:`model_body`) parsed into ``models``, or its name into
        ``invalid`` when it does not validate; a target that does not exist goes nowhere.
        A LoRA adapter target (MODEL:ADAPTER) collects its ModelDeployment, by that name."""
        name = contract.split_target(name)[0]
        body = await self.model_body(ns, name)
        if body is None:
            return
        p = parse(ModelDeployment, body)
        if p.obj is None:
            invalid.add(name)
        else:
            models[name] = p.obj

    async def bounded(self, writes: list[Callable[[], Awaitable[None]]]) -> None:
        """Run status writes with at most STATUS_WRITES_IN_FLIGHT at once. Each write is
        started only once it has a slot: a pass cancelled meanwhile (the operator
        stopping) leaves no coroutine behind that was made and never awaited."""

        async def one(write: Callable[[], Awaitable[None]]) -> None:
            async with self._write_slots:
                await write()

        await asyncio.gather(*(one(w) for w in writes))

    async def write_status(
        self,
        resource: Any,
        obj: Any,
        body: Body,
        desired: Mapping[str, Any],
    ) -> None:
        """Patch the object's status to ``desired`` if it differs, and log and post an
        Event when its Ready condition changes reason (a Warning for problems)."""
        current = body.get("status") if isinstance(body.get("status"), Mapping) else None
        patch = status.status_patch(current, desired)
        if patch is None:
            return
        meta = body.get("metadata") or {}
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
        try:
            await self.api.patch(resource, ns, name, {"status": patch}, subresource="status")
        except NotFound:
            return  # deleted meanwhile; nothing to report on
        self.stats.status_patches += 1
        old_st, old_reason = _ready_reason(current)
        new = status.ready_condition(desired.get("conditions"))
        if new is None:
            return
        if (new.get("reason"), new.get("status")) == (old_reason, old_st) and (
            # Another broken field of an invalid spec is news; any other reason's message
            # (Ray's, say) may change every pass and is not.
            new.get("reason") != REASON_VALIDATION_FAILED
            or new.get("message") == _ready_message(current)
        ):
            return
        reason, message = str(new.get("reason")), str(new.get("message"))
        problem = reason not in _GOOD and reason not in _QUIET and reason not in _NORMAL
        (self.log.warning if problem else self.log.info)(
            "%s %s/%s Ready=%s reason=%s: %s", obj, ns, name, new.get("status"), reason, message
        )
        if problem:
            await self.api.post_event(body, "Warning", reason, message)
        elif reason in _NORMAL or (reason in _GOOD and old_reason is not None):
            await self.api.post_event(body, "Normal", reason, message)

    async def report_invalid(self, resource: Any, obj: str, body: Body, parsed: Parsed) -> None:
        """``ValidationFailed`` naming the field, with an Event and a log line when it
        first appears or its message changes. Nothing is retried: the object's next spec
        change (a watch event) brings it back."""
        raw = body.get("status")
        conditions = raw.get("conditions") if isinstance(raw, Mapping) else None
        gen = (body.get("metadata") or {}).get("generation")
        desired = status.invalid_status(
            conditions, f"invalid spec: {parsed.error}", gen, now=self.timestamp()
        )
        await self.write_status(resource, obj, body, desired)


__all__ = [
    "DEBOUNCE_S",
    "STATUS_WRITES_IN_FLIGHT",
    "WORKERS",
    "Body",
    "Controller",
    "DictStore",
    "MissingCRDs",
    "NamespaceKey",
    "Parsed",
    "PoolKey",
    "Stats",
    "StatsFetcher",
    "Store",
    "WorkQueue",
    "namespace_key",
    "parse",
    "pool_key",
    "rfc3339",
]
