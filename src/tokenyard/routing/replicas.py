"""Which of a model's replicas gets a request when it balances queued prompt tokens
(``replicaRouting: LeastQueuedTokens``): the router's per-replica estimate of the prompt
tokens still waiting for prefill, and the power-of-two choice on it. Pure (time and
randomness come in); :mod:`tokenyard.serving.replica_routing` runs it as Ray Serve's
request router and the simulator (:mod:`tokenyard.autoscaler.sim.engine`) routes with it.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


class PrefillQueues:
    """Per replica, the prompt tokens this router sent there that are estimated to be
    still waiting for prefill (see the module's docstring)."""

    def __init__(self, prefill_tokens_per_s: float, rng: random.Random | None = None) -> None:
        if prefill_tokens_per_s <= 0:
            raise ValueError("prefill_tokens_per_s must be positive")
        self.rate = prefill_tokens_per_s
        self.rng = rng or random.Random()
        self._queued: dict[Hashable, tuple[float, float]] = {}
        """replica -> (tokens queued at the time, that time)."""
        self._open: dict[Hashable, set[str]] = {}
        """replica -> ids of the requests sent there and not completed yet."""
        self._where: dict[str, Hashable] = {}

    def load(self, replica: Hashable, now: float) -> float:
        """Prompt tokens estimated queued on ``replica`` at ``now``."""
        tokens, at = self._queued.get(replica, (0.0, now))
        return max(0.0, tokens - self.rate * max(0.0, now - at))

    def choose(self, candidates: Sequence[K], now: float) -> list[K]:
        """Two candidates drawn at random (all of them if fewer), the one with fewer
        queued tokens first (a tie keeps the draw's order)."""
        picked = list(candidates) if len(candidates) <= 2 else self.rng.sample(candidates, 2)
        if len(picked) == 2 and self.rng.getrandbits(1):
            picked.reverse()
        return sorted(picked, key=lambda r: self.load(r, now))

    def sent(self, replica: Hashable, request_id: str | None, tokens: float, now: float) -> None:
        """A request of ``tokens`` prompt tokens went to ``replica``. Without a
        ``request_id`` its completion is not tracked: the caller resets an idle replica
        with :meth:`forget`."""
        self._queued[replica] = (self.load(replica, now) + max(tokens, 0.0), now)
        if request_id is not None:
            self._open.setdefault(replica, set()).add(request_id)
            self._where[request_id] = replica

    def completed(self, request_id: str) -> None:
        """The request finished (or failed): once a replica has nothing open from this
        router, its queue is empty as far as this router knows."""
        replica = self._where.pop(request_id, None)
        if replica is None:
            return
        open_there = self._open.get(replica, set())
        open_there.discard(request_id)
        if not open_there:
            self._open.pop(replica, None)
            self._queued.pop(replica, None)

    def forget(self, replica: Hashable) -> None:
        """The replica is gone: its estimate and open requests with it."""
        self._queued.pop(replica, None)
        for request_id in self._open.pop(replica, {}):
            self._where.pop(request_id, None)

    def known(self) -> set[Hashable]:
        return set(self._queued) | set(self._open)


__all__ = ["PrefillQueues"]
