"""Per-backend circuit breakers, so a dead backend stops costing every request latency.

closed --(failureThreshold consecutive failures)--> open --(cooldownSeconds)-->
half-open: one probe at a time --success--> closed, --failure--> open again.

The router asks :meth:`CircuitBreaker.allow` before each attempt and reports the
outcome with :meth:`record_success` / :meth:`record_failure` (or :meth:`release` when
the attempt ended without a verdict, e.g. the client went away). ``now`` is always
passed in. :meth:`CircuitBreakers.backend_states` feeds the policy engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from tokenyard.api.policy import CircuitBreakerSpec
from tokenyard.routing.decision import BackendState

CircuitState = Literal["closed", "open", "half_open"]

STATE_VALUES: Mapping[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}
"""Numeric values for the circuit-state gauge."""


class CircuitBreaker:
    """One backend's breaker; not thread-safe (one per event loop, as the router runs)."""

    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 30.0) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None

    @classmethod
    def from_spec(cls, spec: CircuitBreakerSpec) -> CircuitBreaker:
        return cls(spec.failureThreshold, spec.cooldownSeconds)

    def configure(self, failure_threshold: int, cooldown_s: float) -> None:
        """New thresholds (a policy edit) without losing the current state."""
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def state(self, now: float) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        if now - self._opened_at < self.cooldown_s:
            return "open"
        return "half_open"

    def _probe_in_flight(self, now: float) -> bool:
        # A probe whose outcome never came back (lost task) must not wedge the breaker
        # half-open for ever: after another cooldown a new probe is allowed.
        return self._probe_started is not None and now - self._probe_started < self.cooldown_s

    def available(self, now: float) -> bool:
        """Whether a request could be let through now (without taking the probe slot)."""
        st = self.state(now)
        return st == "closed" or (st == "half_open" and not self._probe_in_flight(now))

    def allow(self, now: float) -> bool:
        """Whether to send a request now; in half-open this takes the one probe slot."""
        st = self.state(now)
        if st == "closed":
            return True
        if st == "open" or self._probe_in_flight(now):
            return False
        self._probe_started = now
        return True

    def record_success(self, now: float) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def record_failure(self, now: float) -> None:
        st = self.state(now)
        if st == "half_open":
            # The probe failed: another full cooldown.
            self._opened_at = now
            self._probe_started = None
            return
        if st == "open":
            # A straggler sent before the breaker opened: it tells nothing new.
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._opened_at = now

    def release(self, now: float) -> None:
        """The attempt ended with no verdict about the backend: free the probe slot."""
        self._probe_started = None

    def retry_after(self, now: float) -> float | None:
        """Seconds until a request may be let through; None when one may go now."""
        if self.available(now):
            return None
        if self.state(now) == "open":
            assert self._opened_at is not None
            return self._opened_at + self.cooldown_s - now
        assert self._probe_started is not None
        return self._probe_started + self.cooldown_s - now


class CircuitBreakers:
    """The breakers of every backend a router replica calls, created on first use."""

    def __init__(self, spec: CircuitBreakerSpec | None = None) -> None:
        self._spec = spec or CircuitBreakerSpec()
        self._breakers: dict[str, CircuitBreaker] = {}

    def configure(self, spec: CircuitBreakerSpec) -> None:
        """Apply new settings to every breaker, keeping their states."""
        self._spec = spec
        for b in self._breakers.values():
            b.configure(spec.failureThreshold, spec.cooldownSeconds)

    def get(self, backend: str) -> CircuitBreaker:
        b = self._breakers.get(backend)
        if b is None:
            b = self._breakers[backend] = CircuitBreaker.from_spec(self._spec)
        return b

    def states(self, now: float) -> dict[str, CircuitState]:
        """State of each known breaker, for the circuit-state metric."""
        return {name: b.state(now) for name, b in sorted(self._breakers.items())}

    def forget(self, keep: Iterable[str]) -> None:
        """Drop breakers of backends no longer in the catalogue (bounded memory)."""
        keep_set = set(keep)
        for name in [n for n in self._breakers if n not in keep_set]:
            del self._breakers[name]

    def backend_states(self, ready: Mapping[str, bool], now: float) -> dict[str, BackendState]:
        """The policy engine's view: readiness plus whether each circuit refuses now."""
        out: dict[str, BackendState] = {}
        for name, is_ready in ready.items():
            b = self._breakers.get(name)
            if b is None:
                out[name] = BackendState(ready=is_ready)
                continue
            out[name] = BackendState(
                ready=is_ready,
                circuit_open=not b.available(now),
                half_open=b.state(now) == "half_open",
                retry_after=b.retry_after(now),
            )
        return out
