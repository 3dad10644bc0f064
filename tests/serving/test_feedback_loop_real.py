"""The feedback loop of issue 12 against a real `tokenyard up`: Ray Serve on CPU with two
tiny vLLM models (economy and frontier), the router's real HTTP feedback endpoint, the real
``tokenyard train-router --from-state`` on the router's state directory, the artifact
delivered as a ConfigMap in the manifests (how local mode reads a Learned classifier) and
the policy updates applied by SIGHUP (local mode's reload: the router is reconfigured,
nothing restarts).

A scripted client rates every answer by a rule the router cannot see: prompts about tax
are "bad" when the economy model answers, every other answer is "good". The held-out
prompts are never captured; they are sent before capture is on and after the Learned
classifier is in place. Shares are printed (run with -s) for the report.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytest.importorskip("vllm", reason="needs vLLM (the cpu extra) and ray[serve]")

from tests.serving.test_feedback_loop import prompts
from tests.serving.upproc import Up

pytestmark = [
    pytest.mark.serving,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

REPO = Path(__file__).resolve().parents[2]
ECONOMY, FRONTIER = "tiny-economy", "tiny-frontier"
TRAIN, HELD_OUT = 400, 200
CONCURRENCY = 8
LEARNING = {
    "capture": {"sampleRate": 1.0, "dataClasses": ["public", "internal"]},
    "exploration": {"share": 0.2},
}
LEARNED = {
    "type": "Learned",
    "artifactRef": {"name": "router-model"},
    "keepStrongQuality": 0.95,
}


def write_manifests(
    dest: Path,
    models: dict[str, Path],
    learning: dict[str, Any] | None,
    classifier: dict[str, Any] | None,
) -> None:
    """examples/local with the tiny models built in the test, the given spec.learning and
    spec.classifier (``None``: the example's own)."""
    dest.mkdir(exist_ok=True)
    for f in (REPO / "examples" / "local").glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        for d in docs:
            if d["kind"] == "ModelDeployment":
                tier = d["metadata"]["name"].removeprefix("tiny-")
                d["spec"]["inCluster"]["source"] = f"file://{models[tier]}"
            if d["kind"] == "RoutingPolicy":
                d["spec"]["classifier"] = classifier or {"allowHeaderOverride": False}
                d["spec"].pop("learning", None)
                if learning:
                    d["spec"]["learning"] = learning
        (dest / f.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


async def send(base: str, batch: list[tuple[str, bool]], rate: bool) -> list[tuple[bool, str]]:
    """Send each prompt (CONCURRENCY at a time); rate the answer by the hidden rule through
    the router's HTTP feedback endpoint when ``rate``."""
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def one(text: str, tax: bool) -> tuple[bool, str]:
            async with sem:
                r = await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "chat",
                        "messages": [{"role": "user", "content": text}],
                        "max_tokens": 1,
                    },
                )
                assert r.status_code == 200, r.text
                target = r.headers["x-tokenyard-target"]
                if rate:
                    good = not (tax and target == ECONOMY)
                    f = await client.post(
                        "/v1/tokenyard/feedback",
                        json={
                            "request_id": r.headers["x-request-id"],
                            "score": "good" if good else "bad",
                        },
                    )
                    assert f.status_code == 200, f.text
                return tax, target

        return list(await asyncio.gather(*(one(t, tax) for t, tax in batch)))


def economy_share(results: list[tuple[bool, str]], tax: bool) -> float:
    sel = [t for is_tax, t in results if is_tax == tax]
    return sum(t == ECONOMY for t in sel) / len(sel)


def test_rated_topic_moves_to_the_frontier_model_on_a_real_tokenyard_up(
    tiny_models: dict[str, Path], tmp_path: Path, port_factory: Callable[[], int]
) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state"
    write_manifests(manifests, tiny_models, None, None)
    port = port_factory()
    base = f"http://127.0.0.1:{port}"
    held_out = prompts(random.Random(2), HELD_OUT)  # never captured
    up = Up(manifests, state, port)
    try:
        up.wait_ready(600)
        before = asyncio.run(send(base, held_out, rate=False))

        # Capture and exploration on; the scripted client rates a few hundred answers.
        write_manifests(manifests, tiny_models, LEARNING, None)
        up.reload()
        trained_on = asyncio.run(send(base, prompts(random.Random(1), TRAIN), rate=True))

        # The real CLI on the router's own state directory; its ConfigMap joins the
        # manifests and the policy turns Learned (capture and exploration off again).
        artifact = tmp_path / "artifact" / "model.json"
        artifact.parent.mkdir()
        exe = shutil.which("tokenyard", path=str(Path(sys.executable).parent)) or "tokenyard"
        train = subprocess.run(
            [exe, "train-router", "--from-state", str(state), "--out", str(artifact),
             "--configmap", "router-model"],
            check=False, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert train.returncode == 0, train.stdout + train.stderr
        shutil.copy(artifact.with_suffix(".configmap.yaml"), manifests / "router-model.yaml")
        write_manifests(manifests, tiny_models, None, LEARNED)
        up.reload()
        after = asyncio.run(send(base, held_out, rate=False))
    finally:
        code = up.stop()
    assert code == 0, "".join(up.lines[-40:])

    explored = 1 - economy_share(trained_on, False)
    shares = {
        "tax_economy_before": economy_share(before, True),
        "tax_economy_after": economy_share(after, True),
        "other_economy_before": economy_share(before, False),
        "other_economy_after": economy_share(after, False),
        "other_frontier_while_exploring": explored,
    }
    print(
        f"real feedback loop ({TRAIN} rated, {HELD_OUT} held-out prompts):",
        {k: round(v, 3) for k, v in shares.items()},
    )
    print(train.stdout.strip())
    # Exploration reached the frontier model while rating (else nothing could be learnt).
    assert explored > 0.05
    assert shares["tax_economy_before"] > 0.9
    # The rated topic moved, up to what the aim lets stay on the economy model.
    assert shares["tax_economy_after"] < 0.2
    assert abs(shares["other_economy_after"] - shares["other_economy_before"]) <= 0.05
