"""What serves the router's port (spec.router.ingress, issue 14): the operator renders the
same Serve flags on the head and every worker, and `tokenyard up` runs the same ingress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
from tests.unit.operator.factories import model, policy, pool

from tokenyard import contract
from tokenyard.api.manifests import load
from tokenyard.operator.builders import render_pool
from tokenyard.serving.local import ingress_process_env, plan

EXAMPLES_LOCAL = Path(__file__).resolve().parents[3] / "examples" / "local"


def _containers(rs: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]
    ]


def _flag(c: dict[str, Any]) -> str | None:
    for e in c.get("env", []):
        if e["name"] == "RAY_SERVE_ENABLE_HA_PROXY":
            return str(e["value"])
    return None


@pytest.mark.parametrize(("ingress", "flag"), [(None, "1"), ("HAProxy", "1"), ("Proxy", "0")])
def test_every_ray_container_gets_the_pools_ingress(ingress: str | None, flag: str) -> None:
    router: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 2, "cpu": 1.0}
    if ingress is not None:
        router["ingress"] = ingress
    rs = render_pool(pool(router=router), [model("economy")], [policy()]).ray_service
    containers = _containers(rs)
    assert len(containers) == 2  # the head and the economy model's worker group
    assert [_flag(c) for c in containers] == [flag, flag]
    # The port KubeRay's serve Service and probes use does not move.
    head_ports = {p["name"]: p["containerPort"] for p in containers[0]["ports"]}
    assert head_ports["serve"] == contract.SERVE_PORT == 8000


def test_switching_the_ingress_changes_the_spec_hash() -> None:
    def rendered(ingress: str) -> str:
        router = {"minReplicas": 1, "maxReplicas": 2, "cpu": 1.0, "ingress": ingress}
        rs = render_pool(pool(router=router), [model("economy")], [policy()]).ray_service
        return str(rs["metadata"]["annotations"]["tokenyard.dev/spec-hash"])

    assert rendered("HAProxy") != rendered("Proxy")


def test_an_unknown_ingress_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="ingress"):
        pool(router={"minReplicas": 1, "maxReplicas": 2, "ingress": "Nginx"})


def test_tokenyard_up_runs_the_pools_ingress(tmp_path: Path) -> None:
    m = load([str(EXAMPLES_LOCAL)])
    p = plan(m, host="127.0.0.1", port=8000, state_dir=tmp_path, gpu=False, environ={})
    assert p.ingress == "HAProxy"
    m.pools[0].spec.router.ingress = "Proxy"
    p = plan(m, host="127.0.0.1", port=8000, state_dir=tmp_path, gpu=False, environ={})
    assert p.ingress == "Proxy"


def test_local_haproxy_env_is_per_session_and_fits_haproxys_socket_limit() -> None:
    a, b = ingress_process_env("HAProxy"), ingress_process_env("HAProxy")
    assert a["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert a["RAY_SERVE_HAPROXY_SOCKET_PATH"] != b["RAY_SERVE_HAPROXY_SOCKET_PATH"]
    # Serve puts a 56-character node id directory under it; HAProxy allows 97 characters.
    sock = Path(a["RAY_SERVE_HAPROXY_SOCKET_PATH"])
    assert len(str(sock.parent / ("n" * 56) / sock.name)) <= 97
    for e in (a, b):
        Path(e["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent.rmdir()
    assert ingress_process_env("Proxy") == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def test_a_killed_runs_haproxy_is_found_by_its_directory(tmp_path: Path) -> None:
    from tokenyard.serving.local import leftover_pids, record_session

    session, hap = "/tmp/ray/session_1", "/tmp/tyhap-abc"
    procs = [
        (10, ["raylet", f"--session_dir={session}"]),
        (11, ["haproxy", "-db", "-f", f"{hap}/node/haproxy.cfg"]),
        (12, ["haproxy", "-db", "-f", "/tmp/tyhap-abcd/node/haproxy.cfg"]),  # another run
    ]
    record_session(tmp_path, session, pid=99, haproxy_dir=hap)
    assert leftover_pids(tmp_path, procs, lambda pid: False) == [10, 11]
    record_session(tmp_path, session, pid=99)  # the Python proxy: no HAProxy directory
    assert leftover_pids(tmp_path, procs, lambda pid: False) == [10]


def test_stop_haproxy_stops_only_this_sessions_processes() -> None:
    import subprocess
    import sys

    from tokenyard.serving.local import stop_haproxy

    mine, other = ingress_process_env("HAProxy"), ingress_process_env("HAProxy")
    sleeper = "import time; time.sleep(60)"
    procs = [
        subprocess.Popen([sys.executable, "-c", sleeper, e["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]])
        for e in (mine, other)
    ]
    try:
        assert stop_haproxy(mine) == 1
        procs[0].wait(10)  # ended (it sleeps 60 s unless stopped)
        assert procs[1].poll() is None  # another session's: left alone
        assert not Path(mine["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent.exists()
        assert stop_haproxy(ingress_process_env("Proxy")) == 0
    finally:
        assert stop_haproxy(other) == 1
        for p in procs:
            p.wait(10)


def test_haproxy_ports_are_free_and_outside_the_kernels_ephemeral_range() -> None:
    import socket

    from tokenyard.serving.local import QUIET_PORTS, _ephemeral_range, free_port

    env = ingress_process_env("HAProxy")
    Path(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent.rmdir()
    lo, hi = _ephemeral_range()
    for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        port = int(env[key])
        # Not a port the kernel hands to Ray's processes' own binds and connections.
        assert port in QUIET_PORTS and not lo <= port <= hi
    # A candidate already bound (on any address) is passed over.
    with socket.socket() as taken:
        busy = QUIET_PORTS.start + 3
        taken.bind(("0.0.0.0", busy))
        taken.listen()
        picks = iter([busy, QUIET_PORTS.start + 7])
        assert free_port(lambda r: next(picks)) == QUIET_PORTS.start + 7
