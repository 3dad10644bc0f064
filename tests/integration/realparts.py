"""Real processes the integration tests start on 127.0.0.1: a free port, waiting for an
HTTP endpoint, stopping a process (and its group), and vLLM's OpenAI server on CPU with
the tiny model built in the test (``tokenyard.serving.tiny``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until ``url`` answers 200; fails early when ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s}s: {last}")


def stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Terminate (the process group of a process started in a new session, with
    ``group``), then kill after 30 s."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


@contextlib.contextmanager
def vllm_openai_server(tmp_path: Path, served: str, timeout_s: float = 300) -> Iterator[str]:
    """vLLM's OpenAI server serving the tiny model as ``served``; yields ``host:port``.
    In its own process group, so the engine's child processes stop with it."""
    pytest.importorskip("vllm")
    from tokenyard.serving.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    with (tmp_path / "vllm.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                "--served-model-name", served, "--dtype", "float32",
                "--max-model-len", "512", "--enforce-eager",
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout_s, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = (tmp_path / "vllm.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"vLLM did not start: {exc}\n{tail}") from exc
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc, group=True)


__all__ = ["free_port", "stop", "vllm_openai_server", "wait_http"]
