"""`tokenyard up` as a user runs it: a subprocess, answered through its printed URL, Ctrl-C.

The manifests are a temporary copy of examples/local with the model sources pointed at a
tiny model built in the test, so the run does no download and builds nothing itself.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

pytest.importorskip("vllm", reason="needs vLLM (the cpu extra) and ray[serve]")

from tests.serving import fuzz
from tests.serving.upproc import Up

# Fuzz cases sent to the real `tokenyard up` (the in-process test sends 2,400).
FUZZ_CASES_UP = 200

pytestmark = [
    pytest.mark.serving,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

REPO = Path(__file__).resolve().parents[2]
MARK = "TOKENYARD_UP_TEST_MARK"


def _local_copy(dest: Path, model: Path) -> Path:
    """examples/local with only tiny-economy in the policy, served from ``model``."""
    dest.mkdir()
    for f in (REPO / "examples" / "local").glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        kept = []
        for d in docs:
            if d["kind"] == "ModelDeployment":
                if d["metadata"]["name"] != "tiny-economy":
                    continue  # one engine keeps this test small
                d["spec"]["inCluster"]["source"] = f"file://{model}"
            if d["kind"] == "RoutingPolicy":
                d["spec"]["targets"] = [{"model": "tiny-economy"}]
            kept.append(d)
        (dest / f.name).write_text(yaml.safe_dump_all(kept, sort_keys=False))
    return dest


def _marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(MARK) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_tokenyard_up_serves_and_stops_cleanly(
    tiny_models: dict[str, Path], tmp_path: Path, port_factory: Callable[[], int]
) -> None:
    manifests = _local_copy(tmp_path / "local", tiny_models["economy"])
    port = port_factory()
    mark = uuid.uuid4().hex
    # The mark is inherited by Ray's processes: after exit none may be left with it.
    up = Up(manifests, tmp_path / "state", port, env={MARK: mark})
    try:
        url = up.wait_ready()
        assert up.urls() == [f"http://127.0.0.1:{port}/v1"]
        # The port is served the way the operator renders it (spec.router.ingress defaults
        # to HAProxy): an HAProxy process of this session, not Serve's Python proxy.
        assert "(ingress HAProxy)" in up.output
        assert any(p.name() == "haproxy" for p in _marked_processes(mark)), "no HAProxy"
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60) as c:
            assert {m.id for m in c.models.list()} >= {"chat", "tiny-economy"}
            resp = c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
        assert resp.model == "tiny-economy" and resp.usage is not None
        # Hostile inputs against the real server (issue 16 §4): none gets a 5xx or no
        # answer, and the router still serves afterwards.
        rng = random.Random(16)
        five_xx: list[str] = []
        with httpx.Client(base_url=url.removesuffix("/v1"), timeout=60) as h:
            for _ in range(FUZZ_CASES_UP):
                path, raw, hdrs = fuzz.case(rng)
                try:
                    r = h.post(path, content=raw, headers=hdrs)
                except httpx.LocalProtocolError:
                    continue  # the client library refuses to send it (a trailing space)
                except httpx.HTTPError as exc:
                    five_xx.append(f"no answer {path}: {exc!r}")
                    continue
                if r.status_code >= 500:
                    five_xx.append(f"{r.status_code} {path} {raw[:200]!r}: {r.text[:200]}")
            assert not five_xx, "\n".join(five_xx[:10])
            assert h.get("/healthz").status_code == 200
    finally:
        code = up.stop()
    out = up.output
    assert code == 0, out[-3000:]
    assert "stopped." in out
    assert (tmp_path / "state" / "ledger-local-local.json").exists()
    assert (tmp_path / "state" / "audit.jsonl").read_text().strip()
    deadline = time.monotonic() + 30
    while _marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _marked_processes(mark), "Ray processes outlived tokenyard up"
