"""The one spend ledger of a pool: a named Ray actor shared by every router replica.

It wraps the pure :class:`tokenyard.accounting.ledger.SpendLedger` and persists it with a
:class:`FileLedgerStore` at ``RouterAppArgs.ledgerPath`` (a volume in a cluster, the
state directory in local mode). Why a file on a volume rather than a Kubernetes object:
the router must not need API-server credentials, writes are frequent, and a volume
survives both router restarts (the actor is detached) and cluster restarts (the file).

Persistence is periodic: a crash of the actor's process loses at most
``RouterSettings.ledger_flush_interval_s`` seconds of accounting, and a crashed router
replica at most the last ``SEND_INTERVAL_S`` of its own records (sent in batches, so the
request path never waits on the actor); a clean shutdown (``flush``) loses nothing.

The same batches carry each request's traffic (endpoint, served target, fallbacks) for
the router's ``GET /v1/tokenyard/stats``, so the counters add up over all replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from tokenyard.accounting.ledger import FileLedgerStore, SpendLedger, load_ledger

logger = logging.getLogger("tokenyard.router")

LEDGER_ACTOR_PREFIX = "tokenyard-ledger-"
# The actor lives in a fixed Ray namespace so all router replicas (and `tokenyard up`,
# which flushes it on Ctrl-C) find it whatever namespace their job runs in.
LEDGER_NAMESPACE = "tokenyard"


# Router replicas send their records to the actor in one call per interval.
SEND_INTERVAL_S = 0.25

Row = tuple[str, str, str, float, int, int, float]
"""(tenant, endpoint, model, cost_usd, tokens_in, tokens_out, now)."""

TrafficRow = tuple[str, str | None, int, float]
"""(endpoint, served target or None, fallbacks, now): one request, whatever its outcome."""

HoldRow = tuple[str, str, float]
"""(tenant, endpoint, USD): what one replica has reserved and not settled."""

# A replica's holds not renewed for this long are dropped (the replica died): longer
# than any send interval, short enough that a dead replica frees budgets quickly.
HOLD_TTL_S = 10.0


def ledger_actor_name(namespace: str, pool: str) -> str:
    return f"{LEDGER_ACTOR_PREFIX}{namespace}-{pool}"


class LedgerActor:
    """Async Ray actor around the pure ledger; every method is cheap and non-blocking."""

    def __init__(
        self,
        path: str | None,
        flush_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._store = FileLedgerStore(Path(path).expanduser()) if path else None
        self._ledger = load_ledger(self._store) if self._store is not None else SpendLedger()
        self._interval = flush_interval_s
        self._dirty = False
        self._version = 0
        self._task: asyncio.Task[None] | None = None
        self._holds: dict[str, tuple[float, list[HoldRow]]] = {}
        """Replica id -> (when it last sent, its reservations): not persisted (a restart
        ends every request in flight)."""

    def _ensure_flusher(self) -> None:
        if self._task is None and self._store is not None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self._save()
            except OSError:
                # The next tick retries; a full disk must not kill accounting in memory.
                logger.exception("ledger flush failed")

    def _save(self) -> bool:
        if self._store is None or not self._dirty:
            return False
        self._store.save(self._ledger.snapshot())
        self._dirty = False
        return True

    async def record(
        self,
        *,
        tenant: str,
        endpoint: str,
        model: str,
        cost_usd: float,
        tokens_in: int,
        tokens_out: int,
        now: float | None = None,
    ) -> int:
        """Add one request's spend; returns the ledger version after the change."""
        self._ensure_flusher()
        self._ledger.record(
            tenant=tenant,
            endpoint=endpoint,
            model=model,
            cost_usd=cost_usd,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            now=time.time() if now is None else now,
        )
        self._dirty = True
        self._version += 1
        return self._version

    async def record_many(self, rows: list[Row]) -> int:
        """Add a batch of records (one router replica's last interval)."""
        self._ensure_flusher()
        for tenant, endpoint, model, usd, tin, tout, now in rows:
            self._ledger.record(tenant, endpoint, model, usd, tin, tout, now)
        if rows:
            self._dirty = True
            self._version += 1
        return self._version

    async def record_traffic(self, rows: list[TrafficRow]) -> int:
        """Count a batch of requests (one router replica's last interval)."""
        self._ensure_flusher()
        for endpoint, target, fallbacks, now in rows:
            self._ledger.record_traffic(endpoint, target, fallbacks, now)
        if rows:
            self._dirty = True
            self._version += 1
        return self._version

    async def hold(self, replica: str, rows: list[HoldRow]) -> int:
        """Replace what ``replica`` holds (its budget reservations in flight)."""
        if rows:
            self._holds[replica] = (self._clock(), list(rows))
        else:
            self._holds.pop(replica, None)
        return self._version

    async def holds(self) -> list[tuple[str, str, str, float]]:
        """Every replica's holds: (replica, tenant, endpoint, USD); stale ones dropped."""
        horizon = self._clock() - HOLD_TTL_S
        for replica in [r for r, (t, _) in self._holds.items() if t < horizon]:
            del self._holds[replica]
        return [(r, t, e, usd) for r, (_, rows) in self._holds.items() for t, e, usd in rows]

    async def configure_windows(self, windows: list[str]) -> None:
        """Keep buckets long enough for these budget windows (from the policies)."""
        self._ledger.configure_windows(windows)

    async def snapshot(self) -> tuple[int, dict[str, Any]]:
        """The ledger's state (for router replicas' local mirrors) and its version."""
        self._ensure_flusher()
        return self._version, self._ledger.snapshot()

    async def flush(self) -> bool:
        """Persist now; called on router shutdown and by `tokenyard up` on Ctrl-C."""
        return self._save()

    async def path(self) -> str | None:
        return str(self._store.path) if self._store is not None else None

    async def stop(self) -> None:
        """Flush and stop the periodic task (the actor may then be killed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._save()


def get_or_create_ledger(
    namespace: str, pool: str, path: str | None, flush_interval_s: float
) -> Any:
    """Handle of the pool's ledger actor, starting it if no replica has yet."""
    remote_cls = ray.remote(LedgerActor)
    return remote_cls.options(
        name=ledger_actor_name(namespace, pool),
        namespace=LEDGER_NAMESPACE,
        get_if_exists=True,
        # Detached: it outlives any one router replica and router redeploys.
        lifetime="detached",
        # On the head node: that is where the state volume is mounted in a cluster
        # (contract.STATE_MOUNT), so the file survives router and head restarts.
        resources={"node:__internal_head__": 0.001},
        num_cpus=0,
        max_concurrency=1000,
    ).remote(path, flush_interval_s)


def find_ledger(namespace: str, pool: str) -> Any | None:
    """The ledger actor if it runs, else None."""
    try:
        return ray.get_actor(ledger_actor_name(namespace, pool), namespace=LEDGER_NAMESPACE)
    except ValueError:
        return None


class LedgerClient:
    """One router replica's view of the shared ledger, and its budget reservations.

    Reservations: admission reserves each request's estimated cost (:meth:`reserve`)
    before it is sent, and :meth:`spend` counts what this replica has reserved and not
    yet settled, so requests in flight on this replica cannot all pass a budget check
    that none of them has been charged against yet. The settlement (``Books.finish``)
    records the real cost and releases the reservation in one step. Each replica sends
    its reservation totals to the actor with every batch (:meth:`LedgerActor.hold`) and
    reads the other replicas' with every refresh, so they count here too, at most
    ``SEND_INTERVAL_S + refresh_s`` late: across replicas a budget can be overshot by
    what the other replicas admit within that time (docs/routing.md, "Budgets").

    Decisions read a local mirror (no actor round-trip on the request path); each
    recorded spend goes to the mirror at once and to the actor in batches every
    ``SEND_INTERVAL_S``, and the mirror is replaced by the actor's snapshot every
    ``refresh_s`` seconds so spend from other replicas shows up. The ledger is an async
    actor, which does not run one caller's calls in submission order: a refresh therefore
    waits until the actor has applied every batch sent so far before it asks for the
    snapshot, or a batch still on its way would vanish from the mirror until the next
    refresh (and a budget would admit requests it should refuse). Records made while the
    refresh is on its way are re-applied to the new mirror.
    """

    def __init__(self, actor: Any | None, refresh_s: float = 1.0) -> None:
        self._actor = actor
        self._refresh_s = refresh_s
        self.mirror = SpendLedger()
        self._windows: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._pending: list[Row] = []
        self._pending_traffic: list[TrafficRow] = []
        self._inflight: list[Any] = []
        """ObjectRefs of batches sent that the actor has not confirmed yet."""
        self._warned_old_actor = False
        self._reserved: dict[int, tuple[str, str, float]] = {}
        """Reservation id -> (tenant, endpoint, USD) of requests admitted, not settled."""
        self._expires: dict[int, float] = {}
        """Reservation id -> monotonic time after which it is dropped unsettled (a
        response Starlette never started, so nothing settled it)."""
        self._next_reservation = 0
        self.replica_id = uuid.uuid4().hex
        self._others: list[HoldRow] = []
        """The other replicas' holds as of the last refresh."""
        self._held_sent = False
        self._warned_no_holds = False

    def spend(self, tenant: str, endpoint: str | None, window: str, now: float) -> float:
        """Settled spend in the window holding ``now`` plus the reservations in flight,
        this replica's and (as of the last refresh) the others'."""
        return self.mirror.spend(tenant, endpoint, window, now) + self.reserved(tenant, endpoint)

    def reserved(self, tenant: str, endpoint: str | None = None) -> float:
        """USD reserved for ``tenant`` (on ``endpoint``, or all), by every replica."""
        self._expire()
        rows = [*self._reserved.values(), *self._others]
        return sum(usd for t, e, usd in rows if t == tenant and (endpoint is None or e == endpoint))

    def _hold_rows(self) -> list[HoldRow]:
        self._expire()
        totals: dict[tuple[str, str], float] = {}
        for t, e, usd in self._reserved.values():
            totals[(t, e)] = totals.get((t, e), 0.0) + usd
        return [(t, e, usd) for (t, e), usd in sorted(totals.items())]

    def reserve(self, tenant: str, endpoint: str, usd: float, ttl_s: float = 3600.0) -> int:
        """Hold ``usd`` of the tenant's budget until :meth:`release`, or ``ttl_s`` at
        most (longer than any request may last); returns its id."""
        self._next_reservation += 1
        self._reserved[self._next_reservation] = (tenant, endpoint, max(0.0, usd))
        self._expires[self._next_reservation] = time.monotonic() + ttl_s
        return self._next_reservation

    def _expire(self) -> None:
        if not self._expires:
            return
        now = time.monotonic()
        for rid in [r for r, t in self._expires.items() if t <= now]:
            logger.warning("a budget reservation was never settled; dropped")
            self.release(rid)

    def release(self, reservation: int | None) -> None:
        """Drop a reservation (its request's real cost is recorded); unknown ids: no-op."""
        if reservation is not None:
            self._reserved.pop(reservation, None)
            self._expires.pop(reservation, None)

    def reservations(self) -> int:
        """Reservations held (requests admitted and not settled), for tests and metrics."""
        return len(self._reserved)

    def start(self) -> None:
        """Start the refresh loop on the running event loop (idempotent)."""
        if self._actor is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    def _replace(self, snap: dict[str, Any]) -> None:
        mirror = SpendLedger()
        mirror.restore(snap)
        mirror.configure_windows(self._windows)
        self.mirror = mirror

    def load_blocking(self, timeout_s: float = 60.0) -> None:
        """Fill the mirror before the replica serves (called from a sync constructor)."""
        if self._actor is not None:
            _, snap = ray.get(self._actor.snapshot.remote(), timeout=timeout_s)
            self._replace(snap)

    def _send(self) -> None:
        if self._actor is None:
            return
        if self._pending:
            batch, self._pending = self._pending, []
            self._inflight.append(self._actor.record_many.remote(batch))
        if self._pending_traffic:
            # A call of its own, not an argument of record_many: a ledger actor started
            # by an older router (it is detached) then fails this call only, never spend.
            traffic, self._pending_traffic = self._pending_traffic, []
            try:
                self._inflight.append(self._actor.record_traffic.remote(traffic))
            except AttributeError:
                if not self._warned_old_actor:
                    self._warned_old_actor = True
                    logger.warning("the ledger actor predates traffic counters; not sent")
        holds = self._hold_rows()
        if holds or self._held_sent:
            # Sent while this replica holds anything, and once more to clear it.
            try:
                self._inflight.append(self._actor.hold.remote(self.replica_id, holds))
                self._held_sent = bool(holds)
            except AttributeError:
                self._no_holds()

    def _no_holds(self) -> None:
        if not self._warned_no_holds:
            self._warned_no_holds = True
            logger.warning("the ledger actor predates shared reservations; kept per replica")

    async def refresh(self) -> None:
        if self._actor is None:
            return
        self._send()
        inflight, self._inflight = self._inflight, []
        if inflight:
            # Applied before the snapshot is taken (see the class docstring).
            await asyncio.gather(*inflight)
        _, snap = await self._actor.snapshot.remote()
        self._replace(snap)
        try:
            holds = await self._actor.holds.remote()
        except AttributeError:
            self._no_holds()
        else:
            self._others = [(t, e, usd) for r, t, e, usd in holds if r != self.replica_id]
        for row in self._pending:  # recorded while the snapshot was on its way
            self.mirror.record(*row)
        for traffic in self._pending_traffic:
            self.mirror.record_traffic(*traffic)

    async def _refresh_loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if time.monotonic() - last_refresh >= self._refresh_s:
                    last_refresh = time.monotonic()
                    await self.refresh()
                else:
                    self._send()
            except Exception:
                # The actor restarts with the cluster; keep deciding on the last mirror.
                logger.warning("ledger refresh failed", exc_info=True)
            await asyncio.sleep(SEND_INTERVAL_S)

    def configure_windows(self, windows: list[str]) -> None:
        self._windows = list(windows)
        self.mirror.configure_windows(windows)
        if self._actor is not None:
            self._actor.configure_windows.remote(windows)

    def record(
        self,
        *,
        tenant: str,
        endpoint: str,
        model: str,
        cost_usd: float,
        tokens_in: int,
        tokens_out: int,
        now: float,
    ) -> None:
        row: Row = (tenant, endpoint, model, cost_usd, tokens_in, tokens_out, now)
        self.mirror.record(*row)
        if self._actor is not None:
            self._pending.append(row)

    def record_traffic(
        self, *, endpoint: str, target: str | None, fallbacks: int, now: float
    ) -> None:
        """Count one finished request to ``endpoint`` (``target`` None: none answered)."""
        row: TrafficRow = (endpoint, target, fallbacks, now)
        self.mirror.record_traffic(*row)
        if self._actor is not None:
            self._pending_traffic.append(row)

    async def flush(self) -> None:
        """Send what is pending and have the actor persist it now (router shutdown)."""
        if self._actor is None:
            return
        self._send()
        await self._actor.flush.remote()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
