"""The autoscaler's /healthz: healthy while the loop passes, 503 once it is stuck."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tokenyard.autoscaler.health import Heartbeat, serve_health


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def served() -> Iterator[tuple[Heartbeat, Clock, str]]:
    clock = Clock()
    beat = Heartbeat(clock=clock)
    server = serve_health(beat, max_age_s=45, port=0, host="127.0.0.1")
    try:
        yield beat, clock, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_healthz_follows_the_loop(served: tuple[Heartbeat, Clock, str]) -> None:
    beat, clock, base = served
    status, body = _get(base + "/healthz")
    assert status == 503 and body["lastPassAgeSeconds"] is None  # no pass yet

    beat.beat(leader=False, ticked=False)
    status, body = _get(base + "/healthz")
    assert status == 200 and body == {
        "ok": True,
        "leader": False,
        "lastPassAgeSeconds": 0.0,
        "lastTickAgeSeconds": None,
        "lastError": None,
    }

    clock.t += 10
    beat.beat(leader=True, ticked=True, error="ConnectionError: prometheus down")
    status, body = _get(base + "/healthz")
    # An outage of Prometheus or the API server is waited out, not a restart.
    assert status == 200 and body["leader"] is True
    assert body["lastError"] == "ConnectionError: prometheus down"
    assert body["lastTickAgeSeconds"] is None  # that pass decided nothing

    clock.t += 46  # three intervals without a pass: the loop is stuck
    status, body = _get(base + "/healthz")
    assert status == 503 and body["ok"] is False and body["lastPassAgeSeconds"] == 46.0


def test_other_paths_are_404(served: tuple[Heartbeat, Clock, str]) -> None:
    _, _, base = served
    status, body = _get(base + "/metrics")
    assert status == 404 and "healthz" in str(body["error"])
