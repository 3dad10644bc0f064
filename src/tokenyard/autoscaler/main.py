"""``tokenyard autoscaler``: settings, Kubernetes client, Prometheus, leader election, loop.

Started by :func:`tokenyard.cli.main`; everything it wires is replaceable in tests
(:class:`tokenyard.autoscaler.loop.Autoscaler` takes the API and the signal source).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from types import FrameType

from tokenyard.autoscaler.health import Heartbeat, serve_health
from tokenyard.autoscaler.kube import KubernetesApi
from tokenyard.autoscaler.leader import LeaderElector
from tokenyard.autoscaler.loop import Autoscaler, run_forever
from tokenyard.autoscaler.metrics import AutoscalerMetrics
from tokenyard.autoscaler.signals import PrometheusSignalSource, SignalSource, StaticSignalSource
from tokenyard.settings import load_settings

log = logging.getLogger("tokenyard.autoscaler")


def identity() -> str:
    """This replica's name in the Lease: the pod name when the chart sets POD_NAME."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    s = settings.autoscaler
    api = KubernetesApi()
    signals_file = getattr(args, "signals_file", None)
    source: SignalSource = (
        StaticSignalSource(path=signals_file)
        if signals_file
        else PrometheusSignalSource(s.prometheus_url, stale_after_s=s.stale_after_s)
    )
    autoscaler = Autoscaler(api, source, s)
    if getattr(args, "once", False):
        result = autoscaler.tick(time.time())
        for (ns, name), d in sorted(result.decisions.items()):
            print(f"{ns}/{name}: {d.desired} replicas ({d.reason})")
        return 0
    elector = LeaderElector(api, s.lease_namespace, s.lease_name, identity(), s.lease_duration_s)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    heartbeat = Heartbeat()
    metrics = AutoscalerMetrics()
    server = None
    if s.health_port:
        # Three intervals without a pass (or one lease duration, if longer) is a stuck loop.
        max_age = max(3 * s.interval_s, s.lease_duration_s)
        server = serve_health(heartbeat, max_age, s.health_port, metrics=metrics)
    log.info("autoscaler starting: prometheus %s, every %.0fs", s.prometheus_url, s.interval_s)
    try:
        run_forever(autoscaler, elector, s.interval_s, stop, heartbeat=heartbeat, metrics=metrics)
    finally:
        if server is not None:
            server.shutdown()
    return 0
