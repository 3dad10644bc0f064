"""The per-backend circuit breaker state machine."""

from __future__ import annotations

import pytest

from tokenyard.api.policy import CircuitBreakerSpec
from tokenyard.routing.decision import BackendState
from tokenyard.serving.circuit import STATE_VALUES, CircuitBreaker, CircuitBreakers

T0 = 100.0


def opened(threshold: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    b = CircuitBreaker(threshold, cooldown)
    for _ in range(threshold):
        b.record_failure(T0)
    return b


def test_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(3, 10.0)
    b.record_failure(T0)
    b.record_failure(T0)
    assert b.state(T0) == "closed" and b.allow(T0)
    b.record_failure(T0)
    assert b.state(T0) == "open"
    assert not b.allow(T0) and not b.allow(T0 + 9.9)
    assert b.retry_after(T0 + 4) == pytest.approx(6.0)


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(3, 10.0)
    for _ in range(10):
        b.record_failure(T0)
        b.record_failure(T0)
        b.record_success(T0)
    assert b.state(T0) == "closed" and b.consecutive_failures == 0


def test_half_open_lets_one_probe_through() -> None:
    b = opened()
    assert b.state(T0 + 10) == "half_open"
    assert b.available(T0 + 10)
    assert b.allow(T0 + 10)  # the probe
    assert not b.allow(T0 + 10.5)  # one at a time
    assert not b.available(T0 + 10.5)
    assert b.retry_after(T0 + 10.5) == pytest.approx(9.5)


def test_probe_success_closes() -> None:
    b = opened()
    assert b.allow(T0 + 10)
    b.record_success(T0 + 11)
    assert b.state(T0 + 11) == "closed"
    assert b.allow(T0 + 11) and b.allow(T0 + 11)


def test_probe_failure_reopens_for_a_full_cooldown() -> None:
    b = opened()
    assert b.allow(T0 + 10)
    b.record_failure(T0 + 12)
    assert b.state(T0 + 12) == "open"
    assert b.state(T0 + 21.9) == "open"
    assert b.state(T0 + 22) == "half_open"


def test_straggler_failure_while_open_does_not_extend_cooldown() -> None:
    b = opened()
    b.record_failure(T0 + 5)
    assert b.state(T0 + 10) == "half_open"


def test_lost_probe_does_not_wedge_the_breaker() -> None:
    b = opened()
    assert b.allow(T0 + 10)
    assert not b.allow(T0 + 15)
    assert b.allow(T0 + 20)  # the first probe never reported; another may go


def test_release_frees_the_probe_slot() -> None:
    b = opened()
    assert b.allow(T0 + 10)
    b.release(T0 + 10)
    assert b.allow(T0 + 10)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0)


def test_registry_and_backend_states() -> None:
    reg = CircuitBreakers(CircuitBreakerSpec(failureThreshold=1, cooldownSeconds=5))
    reg.get("dead").record_failure(T0)
    reg.get("fine").record_success(T0)
    states = reg.backend_states({"dead": True, "fine": True, "new": False}, T0 + 1)
    assert states == {
        "dead": BackendState(ready=True, circuit_open=True, half_open=False, retry_after=4.0),
        "fine": BackendState(ready=True),
        "new": BackendState(ready=False),
    }
    half = reg.backend_states({"dead": True}, T0 + 5)["dead"]
    assert half == BackendState(ready=True, circuit_open=False, half_open=True, retry_after=None)
    assert reg.states(T0 + 1) == {"dead": "open", "fine": "closed"}
    assert STATE_VALUES["open"] > STATE_VALUES["half_open"] > STATE_VALUES["closed"]


def test_registry_configure_and_forget() -> None:
    reg = CircuitBreakers()
    b = reg.get("x")
    reg.configure(CircuitBreakerSpec(failureThreshold=1, cooldownSeconds=1))
    b.record_failure(T0)
    assert reg.get("x").state(T0) == "open"
    reg.forget(["y"])
    assert reg.states(T0) == {}
