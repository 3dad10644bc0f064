"""The autoscaler's health endpoint: ``GET /healthz`` for the kubelet's probes.

The loop (:func:`tokenyard.autoscaler.loop.run_forever`) beats a :class:`Heartbeat` at
every pass, leader or not. ``/healthz`` answers 200 while the last pass is younger than
``max_age_s`` (three intervals by default) and 503 once the loop is stuck or dead, so
the kubelet restarts a wedged replica. A pass whose decisions failed (API server or
Prometheus down) still beats: that is an outage to wait out, not a reason to restart;
the body says so. ``GET /metrics`` on the same port serves the autoscaler's metrics
(:mod:`tokenyard.autoscaler.metrics`). The health body is JSON: ``{"ok", "leader",
"lastPassAgeSeconds", "lastTickAgeSeconds", "lastError"}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


class Exposition(Protocol):
    """Something that renders Prometheus' text exposition (AutoscalerMetrics)."""

    def exposition(self) -> tuple[bytes, str]: ...


@dataclass
class Heartbeat:
    """What the loop reports of itself; written by the loop, read by the endpoint."""

    clock: Callable[[], float] = time.time
    last_pass: float | None = None
    last_tick: float | None = None
    leader: bool = False
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def beat(self, *, leader: bool, ticked: bool, error: str | None = None) -> None:
        with self._lock:
            now = self.clock()
            self.last_pass = now
            self.leader = leader
            if ticked and error is None:
                self.last_tick = now
            self.last_error = error

    def report(self, max_age_s: float) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            now = self.clock()
            age = None if self.last_pass is None else now - self.last_pass
            tick_age = None if self.last_tick is None else now - self.last_tick
            # Before the first pass the process is starting, which counts as healthy for
            # as long as one pass may take.
            ok = age is not None and age <= max_age_s
            return ok, {
                "ok": ok,
                "leader": self.leader,
                "lastPassAgeSeconds": None if age is None else round(age, 3),
                "lastTickAgeSeconds": None if tick_age is None else round(tick_age, 3),
                "lastError": self.last_error,
            }


def serve_health(
    heartbeat: Heartbeat,
    max_age_s: float,
    port: int,
    host: str = "0.0.0.0",
    metrics: Exposition | None = None,
) -> ThreadingHTTPServer:
    """Starts ``/healthz`` (and ``/metrics`` when ``metrics`` is given) on a daemon
    thread; returns the server (``shutdown()`` stops it; ``server_address`` has the port
    when ``port`` is 0)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and metrics is not None:
                data, ctype = metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if path != "/healthz":
                self._send(404, {"error": "not found; try /healthz or /metrics"})
                return
            ok, body = heartbeat.report(max_age_s)
            self._send(200 if ok else 503, body)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server


__all__ = ["Heartbeat", "serve_health"]
