"""The level-based reconciler: one work queue, one pass per pool, statuses written back.

kopf handlers (``tokenyard.operator.handlers``) only enqueue keys; workers here take
a key, read the current state from the store (kopf indexes in production, a dict in
tests), render with the pure builders, plan, act through :class:`KubeApi`, and write
statuses that changed. Any pass may run again at any time with the same result, so a
restart, a replayed event or a crash mid-pass loses nothing and duplicates nothing.
Imports no kopf.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from tokenyard import contract
from tokenyard.api.common import (
    COND_CAPPED,
    REASON_DEPLOYING,
    REASON_EXTERNAL_PROVIDER,
    REASON_NO_READY_TARGETS,
    REASON_RUNNING,
    REASON_TARGETS_READY,
)
from tokenyard.api.model import ModelDeployment, ModelDeploymentStatus
from tokenyard.api.policy import RoutingPolicy, RoutingPolicyStatus
from tokenyard.api.pool import ServingPool, ServingPoolStatus
from tokenyard.operator import builders, plan, status, traffic
from tokenyard.operator.kube import (
    CLAIMS,
    MODELS,
    POLICIES,
    POOLS,
    RAY_SERVICES,
    SECRETS,
    ApiError,
    Conflict,
    KubeApi,
    NotFound,
)
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
# Status writes in flight at once, per pass: bounded so a pool of hundreds of models
# does not open hundreds of connections at the API server.
STATUS_WRITES_IN_FLIGHT = 16

Body = Mapping[str, Any]


def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


# --------------------------------------------------------------------------- store


def _capped_condition(conditions: Any) -> tuple[Any, Any] | None:
    """(status, reason) of a Capped condition in a raw status, or None."""
    if not isinstance(conditions, list):
        return None
    for c in conditions:
        if isinstance(c, Mapping) and c.get("type") == COND_CAPPED:
            return (c.get("status"), c.get("reason"))
    return None


class Store(Protocol):
    """Read-only view of the tokenyard objects the operator watches (raw bodies)."""

    def pool(self, namespace: str, name: str) -> Body | None: ...

    def pools(self) -> Iterable[tuple[str, str]]:
        """(namespace, name) of every pool."""
        ...

    def models_of_pool(self, namespace: str, pool: str) -> list[Body]:
        """ModelDeployments whose spec.pool is ``pool`` ('' for those without one)."""
        ...

    def policies_of_pool(self, namespace: str, pool: str) -> list[Body]: ...

    def model(self, namespace: str, name: str) -> Body | None: ...

    def pool_refs(self, namespace: str) -> set[str]:
        """Every spec.pool value models and policies of the namespace use ('' = none)."""
        ...


@dataclass
class DictStore:
    """A :class:`Store` over plain lists, for tests and `tokenyard render`."""

    pool_bodies: list[Body] = field(default_factory=list)
    model_bodies: list[Body] = field(default_factory=list)
    policy_bodies: list[Body] = field(default_factory=list)

    @staticmethod
    def _key(b: Body) -> tuple[str, str]:
        m = b.get("metadata") or {}
        return str(m.get("namespace") or "default"), str(m.get("name"))

    @staticmethod
    def _pool_of(b: Body) -> str:
        spec = b.get("spec")
        return str((spec.get("pool") if isinstance(spec, Mapping) else None) or "")

    def pool(self, namespace: str, name: str) -> Body | None:
        return next((b for b in self.pool_bodies if self._key(b) == (namespace, name)), None)

    def pools(self) -> Iterable[tuple[str, str]]:
        return [self._key(b) for b in self.pool_bodies]

    def models_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return [
            b
            for b in self.model_bodies
            if self._key(b)[0] == namespace and self._pool_of(b) == pool
        ]

    def policies_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return [
            b
            for b in self.policy_bodies
            if self._key(b)[0] == namespace and self._pool_of(b) == pool
        ]

    def model(self, namespace: str, name: str) -> Body | None:
        return next((b for b in self.model_bodies if self._key(b) == (namespace, name)), None)

    def pool_refs(self, namespace: str) -> set[str]:
        return {
            self._pool_of(b)
            for b in [*self.model_bodies, *self.policy_bodies]
            if self._key(b)[0] == namespace
        }


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    """A body parsed into its API type, or why it does not validate."""

    obj: Any | None
    error: str | None


_STATUS_TYPES: dict[str, type[Any]] = {
    ServingPool.KIND: ServingPoolStatus,
    ModelDeployment.KIND: ModelDeploymentStatus,
    RoutingPolicy.KIND: RoutingPolicyStatus,
}


def _format(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse(cls: type[Any], body: Body) -> Parsed:
    """Validate metadata and spec strictly; status leniently (others write it too, and a
    field we do not know must never make the object look invalid)."""
    doc = {
        "apiVersion": body.get("apiVersion", f"{cls.model_fields['apiVersion'].default}"),
        "kind": body.get("kind", cls.KIND),
        "metadata": dict(body.get("metadata") or {}),
        "spec": body.get("spec"),
    }
    try:
        obj = cls.model_validate(doc)
    except ValidationError as e:
        return Parsed(None, _format(e))
    problems: list[builders.FieldProblem] = []
    if isinstance(obj, ModelDeployment):
        problems = builders.model_semantic_problems(obj.spec)
    elif isinstance(obj, ServingPool):
        problems = builders.pool_semantic_problems(obj)
    elif isinstance(obj, RoutingPolicy):
        problems = builders.policy_semantic_problems(obj)
    if problems:
        return Parsed(None, "; ".join(str(p) for p in problems))
    raw_status = body.get("status")
    if isinstance(raw_status, Mapping):
        st_cls = _STATUS_TYPES[cls.KIND]
        known = {k: v for k, v in raw_status.items() if k in st_cls.model_fields}
        try:
            obj.status = st_cls.model_validate(known)
        except ValidationError:
            obj.status = None
    return Parsed(obj, None)


def _ready_reason(st: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    c = status.ready_condition((st or {}).get("conditions"))
    return (None, None) if c is None else (c.get("status"), c.get("reason"))


_GOOD = {REASON_RUNNING, REASON_EXTERNAL_PROVIDER, REASON_TARGETS_READY}
# Transitional: logged, no Event (every new model passes through it).
_QUIET = {REASON_DEPLOYING}
# Expected while targets start (each target reports its own problems): a Normal Event.
_NORMAL = {REASON_NO_READY_TARGETS}


# --------------------------------------------------------------------------- queue


class WorkQueue:
    """Keys to reconcile, each at most once at a time, coalesced while waiting.

    Like client-go's workqueue: adding a key that is already waiting keeps the earlier
    due time; adding one that is being processed re-queues it when that pass ends.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._due: dict[Any, float] = {}
        self._processing: set[Any] = set()
        self._again: dict[Any, float] = {}
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Any, delay: float = 0.0) -> None:
        due = self._clock() + delay
        if key in self._processing:
            self._again[key] = min(self._again.get(key, due), due)
            return
        if key not in self._due or due < self._due[key]:
            self._due[key] = due
            self._wakeup.set()

    async def get(self) -> Any:
        while True:
            now = self._clock()
            ready = [k for k, t in self._due.items() if t <= now]
            if ready:
                key = min(ready, key=lambda k: self._due[k])
                del self._due[key]
                self._processing.add(key)
                return key
            self._wakeup.clear()
            timeout = min(self._due.values()) - now if self._due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, key: Any) -> None:
        self._processing.discard(key)
        if key in self._again:
            due = self._again.pop(key)
            self._due[key] = min(self._due.get(key, due), due)
            self._wakeup.set()


# --------------------------------------------------------------------------- controller


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
        await asyncio.gather(self._resync_loop(), *(self._worker() for _ in range(workers)))

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

    # ----------------------------------------------------------------- helpers

    def _now(self) -> str:
        return rfc3339(self.clock())

    async def _crd_missing(self) -> bool:
        if self._crd_served:
            return False
        self._crd_served = await self.api.served(RAY_SERVICES)
        return not self._crd_served

    async def _secrets(self, refs: Iterable[str], namespace: str) -> dict[str, set[str]] | None:
        """Data keys of the Secrets named, absent ones left out; None if unreadable."""
        out: dict[str, set[str]] = {}
        for name in sorted(set(refs)):
            try:
                s = await self.api.get(SECRETS, namespace, name)
            except NotFound:
                continue
            except ApiError as e:
                self.log.warning(
                    "cannot read Secret %s/%s (%s); assuming it exists", namespace, name, e
                )
                return None
            out[name] = set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())
        return out

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
        return await self._model_body(ns, name) is not None

    async def _model_body(self, ns: str, name: str) -> Body | None:
        """A ModelDeployment from the index, else from the API server: a policy's target
        created just before it may not have reached the index yet."""
        body = self.store.model(ns, name)
        if body is not None:
            return body
        try:
            return await self.api.get(MODELS, ns, name)
        except NotFound:
            return None

    async def _bounded(self, writes: list[Awaitable[None]]) -> None:
        """Run status writes with at most STATUS_WRITES_IN_FLIGHT at once."""

        async def one(w: Awaitable[None]) -> None:
            async with self._write_slots:
                await w

        await asyncio.gather(*(one(w) for w in writes))

    async def _write_status(
        self,
        resource: Any,
        obj: Any,
        body: Body,
        desired: Mapping[str, Any],
    ) -> None:
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
        if new is None or (new.get("reason"), new.get("status")) == (old_reason, old_st):
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

    # ----------------------------------------------------------------- pools

    async def reconcile_pool(self, ns: str, name: str) -> None:
        body = self.store.pool(ns, name)
        if body is None:
            # Deleted: the API server garbage-collects the RayService (owner reference);
            # the pool's members are now orphans.
            self.enqueue_namespace(ns, 0.0)
            return
        now = self._now()
        parsed = parse(ServingPool, body)
        if parsed.obj is None:
            gen = (body.get("metadata") or {}).get("generation")
            desired = status.invalid_status(
                ((body.get("status") or {}).get("conditions")), str(parsed.error), gen, now=now
            )
            await self._write_status(POOLS, "ServingPool", body, desired)
            return
        pool: ServingPool = parsed.obj

        member_bodies = self.store.models_of_pool(ns, name)
        policy_bodies = self.store.policies_of_pool(ns, name)
        members: list[tuple[Body, ModelDeployment]] = []
        for b in member_bodies:
            p = parse(ModelDeployment, b)
            if p.obj is not None:
                members.append((b, p.obj))
        policies: list[tuple[Body, RoutingPolicy]] = []
        for b in policy_bodies:
            p = parse(RoutingPolicy, b)
            if p.obj is not None:
                policies.append((b, p.obj))

        # Targets of the pool's policies that are not members (external models of other
        # pools or of none; in-cluster models of other pools, shown as not served here).
        member_names = {builders.obj_name(m) for _, m in members}
        invalid_models = {
            str((b.get("metadata") or {}).get("name")) for b in member_bodies
        } - member_names
        targets: dict[str, ModelDeployment] = {}
        for _, pol in policies:
            for t in pol.spec.targets:
                if t.model in member_names or t.model in targets or t.model in invalid_models:
                    continue
                tb = await self._model_body(ns, t.model)
                if tb is None:
                    continue
                tp = parse(ModelDeployment, tb)
                if tp.obj is None:
                    invalid_models.add(t.model)
                else:
                    targets[t.model] = tp.obj
        all_models = [m for _, m in members] + list(targets.values())

        secret_names = [
            m.spec.external.apiKeySecretRef.name
            for m in all_models
            if m.spec.external is not None and m.spec.external.apiKeySecretRef is not None
        ] + [
            p.spec.tenants.apiKeysSecretRef.name
            for _, p in policies
            if p.spec.tenants.apiKeysSecretRef is not None
        ]
        secrets = await self._secrets(secret_names, ns)

        render = builders.render_pool(
            pool, all_models, [p for _, p in policies], secrets=secrets, settings=self.settings
        )
        desired_rs = render.ray_service
        rs_name = desired_rs["metadata"]["name"]

        crd_missing = False
        conflict: str | None = None
        existing: dict[str, Any] | None
        try:
            existing = await self.api.get(RAY_SERVICES, ns, rs_name)
        except NotFound:
            existing = None
        if existing is None and await self._crd_missing():
            crd_missing = True
        else:
            existing, conflict = await self._apply(body, desired_rs, existing)
            if existing is None and conflict is None:
                crd_missing = True

        if existing is not None and render.state_claim is not None:
            await self._ensure_claim(body, render.state_claim)
        observed = status.observe_ray_service(existing)
        router_stats = await self._router_stats(ns, name, observed)
        if crd_missing:
            self._crd_served = None  # look again next pass
            self.queue.add(pool_key(ns, name), self.settings.retry_delay_s)

        # Statuses: members and policies (concurrently: a pool of 50 models would
        # otherwise wait 50 round trips), then the pool.
        writes: list[Awaitable[None]] = []
        for b, md in members:
            ctx = status.ModelContext(
                pool=pool,
                decision=render.admission.decisions.get(builders.obj_name(md)),
                observed=observed,
                crd_missing=crd_missing,
                secrets=secrets,
            )
            desired = status.build_model_status(md, ctx, now=now)
            writes.append(self._write_status(MODELS, "ModelDeployment", b, desired))
        models_by_name = {builders.obj_name(m): m for m in all_models}
        for b, pol in policies:
            pctx = status.PolicyContext(
                pool=pool,
                models=models_by_name,
                invalid=invalid_models,
                admission=render.admission,
                observed=observed,
                crd_missing=crd_missing,
                secrets=secrets,
                traffic=(
                    traffic.traffic_fields(
                        router_stats,
                        pol.spec.endpoint or builders.obj_name(pol),
                        [t.model for t in pol.spec.targets],
                    )
                    or None
                    if router_stats is not None
                    else None
                ),
            )
            desired = status.build_policy_status(pol, pctx, now=now)
            writes.append(self._write_status(POLICIES, "RoutingPolicy", b, desired))
        await self._bounded(writes)
        excluded = [
            f"{n} ({d.reason})"
            for n, d in sorted(render.admission.decisions.items())
            if not d.admitted
        ]
        pctx2 = status.PoolContext(
            admission=render.admission,
            members={str((b.get("metadata") or {}).get("name")) for b in member_bodies},
            policies={builders.obj_name(p) for _, p in policies},
            observed=observed if existing is not None else None,
            crd_missing=crd_missing,
            conflict=conflict,
            excluded=excluded,
        )
        await self._write_status(
            POOLS, "ServingPool", body, status.build_pool_status(pool, pctx2, now=now)
        )

    async def _ensure_claim(self, pool_body: Body, claim: dict[str, Any]) -> None:
        """Create the router's state claim if it does not exist; never patch it (a bound
        claim's spec is immutable, and resizing is the storage admin's call)."""
        ns, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
        try:
            await self.api.get(CLAIMS, ns, name)
            return
        except NotFound:
            pass
        try:
            await self.api.create(CLAIMS, ns, claim)
        except Conflict:
            return
        self.log.info("created PersistentVolumeClaim %s/%s for the router's ledger", ns, name)
        await self.api.post_event(
            pool_body, "Normal", "StateClaimCreated", f"created PersistentVolumeClaim {name}"
        )

    async def _router_stats(
        self, ns: str, pool: str, observed: status.ObservedRayService | None
    ) -> dict[str, Any] | None:
        """The router's traffic figures, only once KubeRay reports the router running
        (before that the Service has no endpoints and the call could only time out)."""
        if self.stats_fetcher is None or observed is None:
            return None
        app = observed.app(contract.ROUTER_APP_NAME)
        if app is None or app.status != "RUNNING":
            return None
        return await self.stats_fetcher(traffic.stats_url(pool, ns))

    async def _apply(
        self, pool_body: Body, desired: dict[str, Any], existing: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Create or patch the RayService as planned. Returns (the object as it now is,
        conflict message); (None, None) means the RayService resource is not served."""
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        for _ in range(2):
            action = plan.plan(desired, existing)
            if isinstance(action, plan.Noop):
                return existing, None
            if isinstance(action, plan.Conflict):
                self.log.warning("ServingPool %s/%s: %s", ns, name, action.message)
                return existing, action.message
            if isinstance(action, plan.Create):
                try:
                    created = await self.api.create(RAY_SERVICES, ns, action.body)
                except Conflict:
                    # Created by an earlier pass or another replica: look again, patch it.
                    existing = await self.api.get(RAY_SERVICES, ns, name)
                    continue
                except NotFound:
                    return None, None
                self.stats.created += 1
                self.log.info("created RayService %s/%s", ns, name)
                await self.api.post_event(
                    pool_body,
                    "Normal",
                    "RayServiceCreated",
                    f"created RayService {name}",
                )
                return created, None
            assert isinstance(action, plan.Update)
            try:
                patched = await self.api.patch(RAY_SERVICES, ns, name, action.patch)
            except NotFound:
                existing = None
                continue
            self.stats.updated += 1
            self.log.info("updated RayService %s/%s (%s)", ns, name, action.reason)
            return patched, None
        raise RuntimeError(f"RayService {ns}/{name} keeps changing under the operator")

    # ----------------------------------------------------------------- orphans

    async def reconcile_namespace(self, ns: str) -> None:
        """Statuses of models and policies no existing pool reconciles: those naming a
        missing pool, and external models that name none."""
        now = self._now()
        pools = {name for pns, name in self.store.pools() if pns == ns}
        for ref in sorted(self.store.pool_refs(ns)):
            if ref and ref in pools:
                continue
            if ref and await self.pool_exists(ns, ref):
                # Created, but its watch event has not reached the index yet.
                self.enqueue_pool(ns, ref)
                continue
            for b in self.store.models_of_pool(ns, ref):
                p = parse(ModelDeployment, b)
                if p.obj is None:
                    continue  # its handler reports ValidationFailed
                md: ModelDeployment = p.obj
                secrets: dict[str, set[str]] | None = None
                if md.spec.external is not None and md.spec.external.apiKeySecretRef is not None:
                    secrets = await self._secrets([md.spec.external.apiKeySecretRef.name], ns)
                ctx = status.ModelContext(pool=None, secrets=secrets)
                await self._write_status(
                    MODELS, "ModelDeployment", b, status.build_model_status(md, ctx, now=now)
                )
            for b in self.store.policies_of_pool(ns, ref):
                pp = parse(RoutingPolicy, b)
                if pp.obj is None:
                    continue
                pol: RoutingPolicy = pp.obj
                models: dict[str, ModelDeployment] = {}
                invalid: set[str] = set()
                for t in pol.spec.targets:
                    tb = await self._model_body(ns, t.model)
                    if tb is None:
                        continue
                    tp = parse(ModelDeployment, tb)
                    if tp.obj is None:
                        invalid.add(t.model)
                    else:
                        models[t.model] = tp.obj
                pctx = status.PolicyContext(pool=None, models=models, invalid=invalid)
                await self._write_status(
                    POLICIES, "RoutingPolicy", b, status.build_policy_status(pol, pctx, now=now)
                )
