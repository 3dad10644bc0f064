"""A real Prometheus (Debian's package, /usr/bin/prometheus) started per test on 127.0.0.1.

``make install`` runs scripts/install-prometheus.sh; without the binary these tests skip
and say so. Each test hands the fixture the targets to scrape (every second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.realparts import free_port, wait_http

PROMETHEUS = (
    os.environ.get("TOKENYARD_PROMETHEUS_BIN")
    or shutil.which("prometheus")
    or ("/usr/bin/prometheus")
)


def wait_window_full(
    url: str, metric: str, window: str, samples: int, timeout_s: float = 60
) -> None:
    """Waits until Prometheus holds ``samples`` scrapes of ``metric`` within ``window``."""
    deadline = time.monotonic() + timeout_s
    query = f"min(count_over_time({metric}[{window}]))"
    while time.monotonic() < deadline:
        res = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
        result = res.get("data", {}).get("result", [])
        if result and float(result[0]["value"][1]) >= samples:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{samples} samples of {metric} in {window} never arrived")


StartPrometheus = Callable[[list[str]], str]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    """Call with ``host:port`` targets; returns Prometheus' base URL once it is ready."""
    if not Path(PROMETHEUS).is_file():
        pytest.skip(
            f"prometheus binary not found at {PROMETHEUS}: run scripts/install-prometheus.sh"
        )
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        quoted = ", ".join(f"'{t}'" for t in targets)
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: targets\n    honor_labels: true\n"
            f"    static_configs:\n      - targets: [{quoted}]\n"
        )
        with (tmp_path / "prometheus.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", 30, proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
