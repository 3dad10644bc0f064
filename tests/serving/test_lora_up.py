"""LoRA adapters through `tokenyard up` (issue 14): a tiny adapter built in the test for the
tiny model, served by real vLLM on CPU on the model's own replica, callable by its name
and routable as a RoutingPolicy target MODEL:ADAPTER.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from tests.serving.upproc import Up

pytest.importorskip("vllm", reason="needs vLLM (the cpu extra) and ray[serve]")

pytestmark = [
    pytest.mark.serving,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

REPO = Path(__file__).resolve().parents[2]
PROMPT: list[Any] = [{"role": "user", "content": "Summarise the contract clause for the customer."}]


def _manifests(dest: Path, model: Path, adapter: Path) -> Path:
    """examples/local with tiny-economy only, serving the adapter ``sql``; the policy
    ``chat`` routes to the adapter alone (target tiny-economy:sql)."""
    dest.mkdir()
    for f in (REPO / "examples" / "local").glob("*.yaml"):
        kept = []
        for d in (d for d in yaml.safe_load_all(f.read_text()) if d):
            if d["kind"] == "ModelDeployment":
                if d["metadata"]["name"] != "tiny-economy":
                    continue
                d["spec"]["inCluster"]["source"] = f"file://{model}"
                d["spec"]["inCluster"]["loraAdapters"] = [
                    {"name": "sql", "source": f"file://{adapter}", "quality": 0.9}
                ]
            if d["kind"] == "RoutingPolicy":
                d["spec"]["targets"] = [{"model": "tiny-economy:sql"}]
            kept.append(d)
        (dest / f.name).write_text(yaml.safe_dump_all(kept, sort_keys=False))
    return dest


def test_tokenyard_up_serves_a_lora_adapter_by_name_and_as_a_target(
    tiny_models: dict[str, Path], tmp_path: Path, port_factory: Callable[[], int]
) -> None:
    from tokenyard.serving.tiny import build_tiny_lora

    adapter = build_tiny_lora(tmp_path / "sql-lora", tiny_models["economy"], seed=7)
    manifests = _manifests(tmp_path / "local", tiny_models["economy"], adapter)
    up = Up(manifests, tmp_path / "state", port_factory())
    try:
        url = up.wait_ready()
        assert "'sql' (LoRA adapter on tiny-economy" in up.output
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60) as c:
            assert {m.id for m in c.models.list()} >= {"chat", "tiny-economy", "sql"}

            def ask(model: str) -> openai.types.chat.ChatCompletion:
                return c.chat.completions.create(
                    model=model, messages=PROMPT, max_tokens=12, temperature=0.0
                )

            base = ask("tiny-economy")
            by_name = ask("sql")
            routed = ask("chat")
            # The adapter's own name reaches vLLM's LoRA (not the base weights): greedy
            # output differs from the base model's; the policy's target is the adapter.
            assert by_name.model == "sql" and routed.model == "sql"
            assert base.model == "tiny-economy"
            assert by_name.choices[0].message.content == routed.choices[0].message.content
            assert by_name.choices[0].message.content != base.choices[0].message.content
            with pytest.raises(openai.NotFoundError):
                ask("no-such-adapter")
    finally:
        code = up.stop()
    assert code == 0, up.output[-3000:]
