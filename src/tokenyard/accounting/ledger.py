"""Tenant spend accounting: a pure in-memory ledger plus its crash-safe persistence.

The router's shared ledger actor holds one :class:`SpendLedger`, records each request's
cost after it completes, answers budget queries for the policy engine and flushes a
:meth:`SpendLedger.snapshot` to a :class:`LedgerStore` every
``settings.router.ledger_flush_interval_s`` seconds (and on shutdown). A crash therefore
loses at most the spend recorded since the last flush: the bounded, documented loss.

Budget windows are fixed windows from the Unix epoch (``60m``, ``24h``, ``30d``), so
every replica and every restart agrees on where a window starts. Spend is kept in
per-minute, per-hour and per-day buckets; a window is answered from the coarsest bucket
size that divides its length. Old buckets are pruned, so memory stays bounded.

The ledger also counts observed traffic per endpoint (requests, fallbacks, requests per
served target) for RoutingPolicy status: since-start totals plus a rolling window of the
last ``TRAFFIC_WINDOW_S`` seconds in ``TRAFFIC_BUCKET_S`` buckets. The counters travel in
the same snapshot (an optional ``traffic`` key, so snapshots written before it existed
still load) and their keys come from the router's config (endpoints, catalogue names),
never from client input, so they stay bounded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tokenyard.contract import CatalogueEntry
from tokenyard.routing.budget import window_bounds, window_seconds

log = logging.getLogger("tokenyard.accounting.ledger")

SNAPSHOT_VERSION = 1

# Bucket sizes, finest first, with how long each is kept by default: long enough for
# the usual 60m / 24h / 30d windows; configured longer windows extend it.
_GRANULARITIES = (60, 3600, 86400)
_DEFAULT_RETENTION_S = {60: 2 * 3600, 3600: 3 * 86400, 86400: 62 * 86400}
# Pruning walks every bucket; doing it at most once a minute keeps record() O(1).
_PRUNE_EVERY_S = 60.0
# Observed traffic: "recent" is the last TRAFFIC_WINDOW_S seconds, counted in buckets of
# TRAFFIC_BUCKET_S; long enough to smooth a bursty endpoint, short enough that a share
# in RoutingPolicy status follows a policy change within minutes.
TRAFFIC_BUCKET_S = 60
TRAFFIC_WINDOW_S = 600


def cost_usd(entry: CatalogueEntry, tokens_in: int, tokens_out: int) -> float:
    """What a request cost on ``entry``: tokens times its per-1M prices, in USD."""
    return (tokens_in * entry.inputPer1M + tokens_out * entry.outputPer1M) / 1_000_000


def strongest(
    catalogue: Mapping[str, CatalogueEntry], targets: Iterable[str]
) -> CatalogueEntry | None:
    """The endpoint's strongest target: the highest quality of those in the catalogue,
    the dearer of equals (then the first listed). What "everything on the strongest
    model" would have cost is priced on it (``tokenyard_baseline_cost_usd_total``)."""
    best: CatalogueEntry | None = None
    for name in targets:
        e = catalogue.get(name)
        if e is None:
            continue
        if best is None or (e.quality, e.inputPer1M + e.outputPer1M) > (
            best.quality,
            best.inputPer1M + best.outputPer1M,
        ):
            best = e
    return best


def _granularity(length: int) -> int:
    """The largest bucket size that divides the window length (window starts align)."""
    for g in reversed(_GRANULARITIES):
        if length % g == 0:
            return g
    return _GRANULARITIES[0]


@dataclass
class Totals:
    """Lifetime totals of one (tenant, endpoint, model)."""

    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0


@dataclass
class TrafficCounts:
    """Requests, fallbacks and requests per served target over some span of time."""

    requests: int = 0
    fallbacks: int = 0
    by_target: dict[str, int] = field(default_factory=dict)

    def add(self, target: str | None, fallbacks: int, requests: int = 1) -> None:
        self.requests += requests
        self.fallbacks += fallbacks
        if target is not None:
            self.by_target[target] = self.by_target.get(target, 0) + requests

    def merge(self, other: TrafficCounts) -> None:
        self.requests += other.requests
        self.fallbacks += other.fallbacks
        for target, n in other.by_target.items():
            self.by_target[target] = self.by_target.get(target, 0) + n

    def copy(self) -> TrafficCounts:
        return TrafficCounts(self.requests, self.fallbacks, dict(self.by_target))


@dataclass
class EndpointTraffic:
    """One endpoint's traffic: since-start totals and per-bucket recent counts."""

    total: TrafficCounts = field(default_factory=TrafficCounts)
    buckets: dict[int, TrafficCounts] = field(default_factory=dict)
    """Bucket start (a multiple of TRAFFIC_BUCKET_S) -> the counts in that bucket."""


@dataclass(frozen=True)
class TrafficSummary:
    """What :meth:`SpendLedger.traffic` answers: totals and the rolling recent window."""

    total: TrafficCounts
    recent: TrafficCounts
    window_s: int = TRAFFIC_WINDOW_S


def _recent_horizon(now: float) -> float:
    """Buckets starting after this belong to the recent window holding ``now``."""
    return now - TRAFFIC_WINDOW_S


class SpendLedger:
    """Spend per (tenant, endpoint) in time buckets; ``now`` is always passed in."""

    window_bounds = staticmethod(window_bounds)

    def __init__(self, windows: Iterable[str] = ()) -> None:
        self._retention = dict(_DEFAULT_RETENTION_S)
        # {granularity: {(tenant, endpoint): {bucket_start: usd}}}
        self._buckets: dict[int, dict[tuple[str, str], dict[int, float]]] = {
            g: {} for g in _GRANULARITIES
        }
        self._totals: dict[tuple[str, str, str], Totals] = {}
        self._traffic: dict[str, EndpointTraffic] = {}
        self._last_prune = -math.inf
        self._index: dict[str, set[str]] | None = None
        """Endpoint -> tenants with spend buckets (built lazily, dropped on prune)."""
        self.configure_windows(windows)

    def configure_windows(self, windows: Iterable[str]) -> None:
        """Keep buckets long enough to answer these windows (the policies' budgets)."""
        for w in windows:
            length = window_seconds(w)
            g = _granularity(length)
            self._retention[g] = max(self._retention[g], length)

    # The positional signature is the router's interface (shared with the ledger actor).
    def record(  # noqa: PLR0917
        self,
        tenant: str,
        endpoint: str,
        model: str,
        cost_usd: float,
        tokens_in: int,
        tokens_out: int,
        now: float,
    ) -> None:
        """Add one request's spend at time ``now``."""
        if not math.isfinite(cost_usd) or cost_usd < 0:
            raise ValueError(f"cost must be a finite non-negative number, got {cost_usd!r}")
        key = (tenant, endpoint)
        if self._index is not None:
            self._index.setdefault(endpoint, set()).add(tenant)
        for g, per_key in self._buckets.items():
            start = int(now // g) * g
            buckets = per_key.setdefault(key, {})
            buckets[start] = buckets.get(start, 0.0) + cost_usd
        t = self._totals.setdefault((tenant, endpoint, model), Totals())
        t.cost_usd += cost_usd
        t.tokens_in += tokens_in
        t.tokens_out += tokens_out
        t.requests += 1
        if now - self._last_prune >= _PRUNE_EVERY_S:
            self.prune(now)

    def spend(self, tenant: str, endpoint: str | None, window: str, now: float) -> float:
        """Spend of ``tenant`` (on one endpoint, or all if None) in the window holding now."""
        length = window_seconds(window)
        g = _granularity(length)
        start, end = window_bounds(window, now)
        per_key = self._buckets[g]
        if endpoint is not None:
            selected = [per_key.get((tenant, endpoint), {})]
        else:
            selected = [b for (t, _), b in per_key.items() if t == tenant]
        return sum(v for buckets in selected for b, v in buckets.items() if start <= b < end)

    def endpoint_spend(self, endpoint: str, window: str, now: float) -> float:
        """Spend of every tenant on ``endpoint`` in the window holding ``now``."""
        length = window_seconds(window)
        start, end = window_bounds(window, now)
        per_key = self._buckets[_granularity(length)]
        return sum(
            v
            for (_, e), buckets in per_key.items()
            if e == endpoint
            for b, v in buckets.items()
            if start <= b < end
        )

    def record_traffic(self, endpoint: str, target: str | None, fallbacks: int, now: float) -> None:
        """Count one request to ``endpoint`` answered by ``target`` (None: by no target)
        after giving up on ``fallbacks`` targets (failed, timed out, circuit open)."""
        if fallbacks < 0:
            raise ValueError(f"fallbacks must be non-negative, got {fallbacks!r}")
        traffic = self._traffic.setdefault(endpoint, EndpointTraffic())
        traffic.total.add(target, fallbacks)
        start = int(now // TRAFFIC_BUCKET_S) * TRAFFIC_BUCKET_S
        traffic.buckets.setdefault(start, TrafficCounts()).add(target, fallbacks)
        if now - self._last_prune >= _PRUNE_EVERY_S:
            self.prune(now)

    def traffic(self, endpoint: str, now: float) -> TrafficSummary | None:
        """The endpoint's traffic since start and in the recent window, or None if none."""
        traffic = self._traffic.get(endpoint)
        if traffic is None:
            return None
        recent = TrafficCounts()
        horizon = _recent_horizon(now)
        for start, counts in traffic.buckets.items():
            if horizon < start <= now:
                recent.merge(counts)
        return TrafficSummary(total=traffic.total.copy(), recent=recent)

    def traffic_endpoints(self) -> list[str]:
        """Endpoints with counted traffic, sorted."""
        return sorted(self._traffic)

    def totals(self) -> dict[tuple[str, str, str], Totals]:
        """Lifetime totals by (tenant, endpoint, model), for status and metrics."""
        return {k: Totals(**vars(v)) for k, v in self._totals.items()}

    def _tenants(self) -> dict[str, set[str]]:
        if self._index is None:
            index: dict[str, set[str]] = {}
            for per_key in self._buckets.values():
                for tenant, endpoint in per_key:
                    index.setdefault(endpoint, set()).add(tenant)
            self._index = index
        return self._index

    def knows(self, tenant: str, endpoint: str) -> bool:
        """Whether ``tenant`` has spend on ``endpoint`` still held in buckets."""
        return tenant in self._tenants().get(endpoint, ())

    def tenant_count(self, endpoint: str) -> int:
        """Tenants with spend on ``endpoint`` still held in buckets."""
        return len(self._tenants().get(endpoint, ()))

    def prune(self, now: float) -> int:
        """Drop buckets past their retention; returns how many were dropped."""
        self._last_prune = now
        self._index = None
        dropped = 0
        for g, per_key in self._buckets.items():
            # Keep every bucket that can still fall in a window that holds ``now``.
            horizon = now - self._retention[g] - g
            for key in list(per_key):
                buckets = per_key[key]
                for b in [b for b in buckets if b < horizon]:
                    del buckets[b]
                    dropped += 1
                if not buckets:
                    del per_key[key]
        horizon = _recent_horizon(now)
        for traffic in self._traffic.values():
            for b in [b for b in traffic.buckets if b <= horizon]:
                del traffic.buckets[b]
                dropped += 1
        return dropped

    def bucket_count(self) -> int:
        """Buckets held (a bound on memory), for tests and metrics."""
        spend = sum(len(b) for per_key in self._buckets.values() for b in per_key.values())
        return spend + sum(len(t.buckets) for t in self._traffic.values())

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the whole ledger."""
        return {
            "version": SNAPSHOT_VERSION,
            "buckets": {
                str(g): [
                    [tenant, endpoint, start, usd]
                    for (tenant, endpoint), buckets in sorted(per_key.items())
                    for start, usd in sorted(buckets.items())
                ]
                for g, per_key in self._buckets.items()
            },
            "totals": [
                [tenant, endpoint, model, t.cost_usd, t.tokens_in, t.tokens_out, t.requests]
                for (tenant, endpoint, model), t in sorted(self._totals.items())
            ],
            "traffic": {
                endpoint: {
                    **_counts_to_json(t.total),
                    # [bucket start, requests, fallbacks, {target: requests}]
                    "recent": [
                        [start, c.requests, c.fallbacks, dict(sorted(c.by_target.items()))]
                        for start, c in sorted(t.buckets.items())
                    ],
                }
                for endpoint, t in sorted(self._traffic.items())
            },
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the ledger's contents with a snapshot; ValueError if it is malformed."""
        try:
            if snapshot.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unsupported ledger snapshot version {snapshot.get('version')}")
            buckets: dict[int, dict[tuple[str, str], dict[int, float]]] = {
                g: {} for g in _GRANULARITIES
            }
            for g_str, rows in snapshot["buckets"].items():
                g = int(g_str)
                if g not in buckets:
                    raise ValueError(f"unknown bucket size {g}")
                for tenant, endpoint, start, usd in rows:
                    per = buckets[g].setdefault((str(tenant), str(endpoint)), {})
                    per[int(start)] = per.get(int(start), 0.0) + float(usd)
            totals: dict[tuple[str, str, str], Totals] = {}
            for tenant, endpoint, model, usd, tin, tout, reqs in snapshot.get("totals", []):
                totals[(str(tenant), str(endpoint), str(model))] = Totals(
                    float(usd), int(tin), int(tout), int(reqs)
                )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"malformed ledger snapshot: {err!r}") from err
        try:
            traffic = _traffic_from_json(snapshot.get("traffic", {}))
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            # Traffic counters only feed status; never lose budgets over them.
            log.warning("ledger traffic counters unreadable; reset", extra={"error": repr(err)})
            traffic = {}
        self._buckets = buckets
        self._index = None
        self._totals = totals
        self._traffic = traffic
        self._last_prune = -math.inf


def _counts_to_json(c: TrafficCounts) -> dict[str, Any]:
    return {
        "requests": c.requests,
        "fallbacks": c.fallbacks,
        "byTarget": dict(sorted(c.by_target.items())),
    }


def _counts_from_json(requests: Any, fallbacks: Any, by_target: Any) -> TrafficCounts:
    counts = TrafficCounts(_count(requests), _count(fallbacks))
    for target, n in by_target.items():
        counts.by_target[str(target)] = _count(n)
    return counts


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _traffic_from_json(raw: Any) -> dict[str, EndpointTraffic]:
    """The ``traffic`` section of a snapshot (absent in snapshots from before it)."""
    out: dict[str, EndpointTraffic] = {}
    for endpoint, t in raw.items():
        traffic = EndpointTraffic(_counts_from_json(t["requests"], t["fallbacks"], t["byTarget"]))
        for start, requests, fallbacks, by_target in t.get("recent", []):
            traffic.buckets[int(start)] = _counts_from_json(requests, fallbacks, by_target)
        out[str(endpoint)] = traffic
    return out


class LedgerStore(Protocol):
    """Where ledger snapshots persist between router and cluster restarts."""

    def load(self) -> dict[str, Any] | None: ...
    def save(self, snapshot: dict[str, Any]) -> None: ...


class MemoryLedgerStore:
    """A store in memory: for tests and for a ledger that need not survive restarts."""

    def __init__(self) -> None:
        self.data: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.data)) if self.data is not None else None

    def save(self, snapshot: dict[str, Any]) -> None:
        self.data = json.loads(json.dumps(snapshot))


def _read_snapshot(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
        raise ValueError("not a ledger snapshot")
    # A snapshot that does not restore is as bad as unreadable JSON.
    SpendLedger().restore(data)
    return data


class FileLedgerStore:
    """Snapshots in a JSON file on a volume, written atomically, with one good backup.

    ``save`` writes a temporary file in the same directory, fsyncs it, moves the current
    (known good) file to ``<path>.bak`` and renames the new one into place, then fsyncs
    the directory. A crash at any point leaves either the new or the previous snapshot
    readable. ``load`` falls back to the backup when the main file is corrupt (logged,
    never raised), and to an empty ledger when both are.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.backup = self.path.with_name(self.path.name + ".bak")
        # Whether the file at ``path`` is a snapshot we may rotate into the backup;
        # None until we have looked, so a corrupt file never overwrites a good backup.
        self._current_good: bool | None = None

    def load(self) -> dict[str, Any] | None:
        self._remove_stale_temporaries()
        for candidate in (self.path, self.backup):
            if not candidate.exists():
                if candidate == self.path:
                    self._current_good = False
                continue
            try:
                data = _read_snapshot(candidate)
            except (OSError, ValueError) as err:
                log.warning(
                    "ledger snapshot unreadable, trying the next one",
                    extra={"path": str(candidate), "error": err.__class__.__name__},
                )
                if candidate == self.path:
                    self._current_good = False
                continue
            if candidate == self.path:
                self._current_good = True
            else:
                log.warning("restored the ledger from its backup", extra={"path": str(candidate)})
            return data
        return None

    def _remove_stale_temporaries(self) -> None:
        """Temporary files a crash left behind (one writer: the ledger actor)."""
        if not self.path.parent.is_dir():
            return
        for tmp in self.path.parent.glob(f".{self.path.name}.*"):
            tmp.unlink(missing_ok=True)

    def save(self, snapshot: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(snapshot, separators=(",", ":"), sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            if self._current_good is None:
                try:
                    _read_snapshot(self.path)
                    self._current_good = True
                except (OSError, ValueError):
                    self._current_good = False
            if self._current_good and self.path.exists():
                os.replace(self.path, self.backup)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._current_good = True
        _fsync_dir(self.path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_ledger(store: LedgerStore, windows: Iterable[str] = ()) -> SpendLedger:
    """A ledger restored from ``store`` (empty if it holds nothing usable); never raises
    on bad data, so a corrupt snapshot cannot keep the router from starting."""
    ledger = SpendLedger(windows)
    try:
        data = store.load()
    except (OSError, ValueError) as err:
        log.error("could not load the ledger; starting empty", extra={"error": repr(err)})
        return ledger
    if data is not None:
        try:
            ledger.restore(data)
        except ValueError as err:
            log.error("ledger snapshot invalid; starting empty", extra={"error": repr(err)})
            ledger = SpendLedger(windows)
    return ledger
