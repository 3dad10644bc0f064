"""What a router replica knows of Ray Serve now: app readiness, replicas, its share.

:class:`~tokenyard.serving.router.core.RouterCore` reads ``serve.status()`` every
``APP_STATUS_INTERVAL_S`` into a :class:`ServeStatus`; readiness feeds the policy
engine's backend state, RUNNING replicas feed spill-over's capacity, and the router's
own RUNNING replicas set the share of rate limits and queues each replica takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tokenyard.contract import MODEL_INGRESS_DEPLOYMENT, CatalogueEntry

# How often a replica re-reads Ray Serve application statuses (model app readiness).
APP_STATUS_INTERVAL_S = 2.0
# How long a replica death seen by a request keeps its app down when Serve's status never
# reflects it; Serve replaces a dead replica in about 10 s (measured on CPU).
REPLICA_DEATH_HOLD_S = 30.0


class _Catalogued(Protocol):
    """The part of the router's state the live replica map is built from."""

    @property
    def catalogue(self) -> Mapping[str, CatalogueEntry]: ...
    @property
    def version(self) -> int: ...


def running_replicas(app: Any) -> int:
    """Replicas of a Serve application's deployments in state RUNNING (a
    ``serve.status()`` ApplicationStatusOverview), leaving out a model app's placeholder
    ingress (``MODEL_INGRESS_DEPLOYMENT``), which serves no model traffic."""
    total = 0
    for name, dep in getattr(app, "deployments", {}).items():
        if name == MODEL_INGRESS_DEPLOYMENT:
            continue
        for state, n in getattr(dep, "replica_states", {}).items():
            if str(getattr(state, "value", state)) == "RUNNING":
                total += int(n)
    return total


class ServeStatus:
    """Application statuses and RUNNING replicas, as the status watch last read them."""

    def __init__(self, app_name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.app_name = app_name
        self._clock = clock
        self._deaths: dict[str, tuple[int, int | None, float]] = {}
        """App -> (replica deaths seen by requests, its RUNNING count when first seen,
        when): the app is down while the deaths cover every replica Serve last reported."""
        """This router's Serve application: its RUNNING replicas share the pool's traffic."""
        self.app_status: dict[str, str] | None = None
        self._was_running: set[str] = set()
        self._running_replicas: dict[str, int] = {}
        """Replicas Ray Serve reports RUNNING, per model app (from the status watch)."""
        self._running_reads = 0
        self.configured_routers = 1
        """spec.router.minReplicas as rendered (routerReplicas): the share's basis until
        the status watch has counted this router's RUNNING replicas."""
        self._running_routers: int | None = None
        self._live: dict[str, int] | None = None
        self._live_key: tuple[int, int] | None = None

    def read(self, status: Any) -> dict[str, int]:
        """Take in a ``serve.status()``; returns the RUNNING replicas per application."""
        self.app_status = {
            name: str(getattr(app.status, "value", app.status))
            for name, app in status.applications.items()
        }
        return {n: running_replicas(a) for n, a in status.applications.items()}

    def note_running(self, by_app: dict[str, int]) -> bool:
        """Replicas Ray Serve runs per application; True when this router's share changed."""
        self._running_replicas = by_app
        self._running_reads += 1
        routers = by_app.get(self.app_name, 0)
        if routers > 0 and routers != self._running_routers:
            before = self.share
            self._running_routers = routers
            return self.share != before
        return False

    @property
    def share(self) -> float:
        """This replica's part of the pool's traffic: 1 / the router's RUNNING replicas
        (Ray Serve scales it between spec.router.minReplicas and maxReplicas), or
        1 / minReplicas until the status watch has counted them. Rate limits and the
        spill-over queue estimate are the pool's, each replica takes this part."""
        return 1 / (self._running_routers or self.configured_routers)

    def live_replicas(self, state: _Catalogued) -> dict[str, int] | None:
        """Model name to replicas Ray Serve reports running, for spill-over; None until
        the status watch has read them (the catalogue's count is used meanwhile).
        Mapped once per status read or config, not per request."""
        running = self._running_replicas
        key = (self._running_reads, state.version)
        if self._live_key != key:
            out: dict[str, int] = {}
            for name, entry in state.catalogue.items():
                if entry.app is not None and entry.app in running:
                    out[name] = running[entry.app]
            self._live, self._live_key = (out if running else None), key
        return self._live

    def replica_died(self, app: str) -> None:
        """A request saw one of ``app``'s replicas die (Ray's actor-died error). Ray
        Serve queues the next requests until it has replaced the replica (seconds); if
        that was its last RUNNING replica, the app counts as not ready at once, until
        the status watch reads a different replica count or REPLICA_DEATH_HOLD_S pass."""
        deaths, seen, _ = self._deaths.get(app, (0, self._running_replicas.get(app), 0.0))
        self._deaths[app] = (deaths + 1, seen, self._clock())

    def _dead(self, app: str) -> bool:
        death = self._deaths.get(app)
        if death is None:
            return False
        deaths, seen, when = death
        if self._clock() - when > REPLICA_DEATH_HOLD_S or self._running_replicas.get(app) != seen:
            del self._deaths[app]  # Serve's status has caught up (or it never will)
            return False
        return deaths >= (seen or 1)

    def ready(self, entry: CatalogueEntry) -> bool:
        """Whether a model can take requests: its catalogue entry says so and, in-cluster,
        its Serve app is RUNNING (or DEPLOYING after it ran: an update keeps serving)
        and requests have not just seen its last replica die."""
        if not entry.ready:
            return False
        if entry.app is not None and self._dead(entry.app):
            return False
        if entry.kind != "InCluster" or entry.app is None or self.app_status is None:
            return True
        status = self.app_status.get(entry.app)
        if status == "RUNNING":
            self._was_running.add(entry.app)
            return True
        # A running app being updated (scaling, new version) keeps serving meanwhile.
        return status == "DEPLOYING" and entry.app in self._was_running


__all__ = ["APP_STATUS_INTERVAL_S", "REPLICA_DEATH_HOLD_S", "ServeStatus", "running_replicas"]
