"""Fixtures of the serving tests: tiny models, free ports and a local vLLM OpenAI server.

Everything here runs for real on CPU (see ../shared/TESTING.md): tiny Llama models built
in the test, vLLM's OpenAI api_server as an "external" provider on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Every engine in these tests runs offline with a small CPU KV cache (TESTING.md).
ENGINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def free_port() -> int:
    """A port no Ray process or kernel-assigned port can take before the server binds it
    (seconds later: vLLM imports first); see tokenyard.serving.local.QUIET_PORTS."""
    from tokenyard.serving.local import free_port as quiet_port

    return quiet_port()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny models (different seeds), built once per test session."""
    from tokenyard.serving.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        name: build_tiny_model(root / name, seed=seed)
        for seed, name in enumerate(("economy", "frontier", "external"), start=1)
    }


@dataclass
class VllmServer:
    """A vLLM OpenAI api_server subprocess (its own process group)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_healthy(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited early; see {self.log}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM server not healthy after {timeout_s}s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The server spawns an engine-core child: signal the group we created.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_vllm_server(model: Path, served_name: str, log: Path) -> VllmServer:
    port = free_port()
    env = {**os.environ, **ENGINE_ENV}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
    ]  # fmt: skip
    out = log.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return VllmServer(proc, port, log)


@pytest.fixture(scope="session")
def port_factory() -> Callable[[], int]:
    """A free TCP port on 127.0.0.1 per call."""
    return free_port


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[Callable[[Path, str, Path], VllmServer]]:
    """Starts vLLM OpenAI servers (model, served name, log file); stopped at module end."""
    servers: list[VllmServer] = []

    def start(model: Path, served_name: str, log: Path) -> VllmServer:
        server = start_vllm_server(model, served_name, log)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
