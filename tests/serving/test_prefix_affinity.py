"""Prefix-cache affinity on real Ray Serve + CPU vLLM (issue 14): the model app rendered
from a ModelDeployment with the default replicaRouting runs Ray Serve LLM's
PrefixCacheAffinityRouter, and a conversation's every turn reaches the replica whose
prefix cache holds its earlier turns (vLLM reports the cached prompt tokens).

Two replicas, one conversation with a system prompt no other request shares: under
Serve's default router each follow-up turn would land on the other replica half the
time and find nothing cached; with affinity every follow-up finds its prefix. The
side-by-side hit rates and TTFTs are in benchmarks/prefix_affinity.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="needs vLLM (the cpu extra) and ray[serve]")

pytestmark = [
    pytest.mark.serving,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

BLOCK = 32  # KV-cache block (tokens): vLLM caches whole blocks
NAME = "tiny-affinity"
SYSTEM = (
    "You are the assistant of the contract ledger team. Answer with the payment table, "
    "the audit window and the budget of the customer, then summarise the clause. "
) * 3


def _app(model: Path) -> dict[str, Any]:
    from tokenyard import contract
    from tokenyard.api.model import ModelDeployment

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": NAME},
            "spec": {
                "pool": "local",
                "replicas": 2,
                "autoscaling": {"mode": "Manual", "minReplicas": 2, "maxReplicas": 2},
                "inCluster": {
                    "source": f"file://{model}",
                    "accelerator": "cpu",
                    # replicaRouting left at Auto: prefix caching is on by default.
                    "engine": {
                        "dtype": "float32",
                        "maxModelLen": 512,
                        "enforceEager": True,
                        "extraArgs": {"enable_prompt_tokens_details": True, "block_size": BLOCK},
                    },
                },
            },
        }
    )
    cfg = contract.build_llm_config(
        NAME,
        md.spec,
        None,
        min_replicas=2,
        max_replicas=2,
        initial_replicas=2,
        autoscale=False,
        env_vars={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    return {
        "name": contract.model_app_name(NAME),
        "route_prefix": contract.model_route_prefix(NAME),
        "import_path": contract.MODEL_IMPORT_PATH,
        "args": {"llm_config": cfg},
    }


async def _turn(backend: Any, messages: list[dict[str, str]]) -> tuple[str, int, int]:
    """(reply, prompt tokens, cached prompt tokens) of one streamed turn."""
    body = {
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text: list[str] = []
    prompt = cached = 0
    async for chunk in backend.stream("chat", body, 120.0):
        for choice in chunk.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
        usage = chunk.get("usage")
        if usage:
            prompt = int(usage["prompt_tokens"])
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return "".join(text), prompt, cached


def test_turns_of_a_conversation_find_their_prefix_on_one_replica(
    tiny_models: dict[str, Path], port_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from tokenyard import contract
    from tokenyard.api.model import PREFIX_CACHE_AFFINITY_ROUTER
    from tokenyard.contract import INGRESS_HAPROXY
    from tokenyard.serving.backends import InClusterBackend
    from tokenyard.serving.local import (
        deploy,
        ingress_process_env,
        stop_haproxy,
        wait_running,
    )

    app = _app(tiny_models["economy"])
    assert app["args"]["llm_config"]["deployment_config"]["request_router_config"] == {
        "request_router_class": PREFIX_CACHE_AFFINITY_ROUTER
    }
    # The product's ingress (HAProxy), under which Ray Serve refuses a custom request
    # router on an app's ingress deployment: the model app's placeholder ingress is what
    # lets the LLMServer keep its affinity router.
    env = ingress_process_env(INGRESS_HAPROXY)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port_factory()})
        deploy({"applications": [app]})
        assert wait_running([app["name"]], threading.Event(), timeout_s=480)
        info, _ = _get_global_client().get_deployment_info(contract.MODEL_DEPLOYMENT, app["name"])
        router = info.deployment_config.request_router_config.request_router_class
        assert router == PREFIX_CACHE_AFFINITY_ROUTER
        assert info.deployment_config.num_replicas == 2

        backend = InClusterBackend(
            contract.CatalogueEntry(
                name=NAME,
                servedModelName=NAME,
                kind="InCluster",
                quality=0.5,
                inputPer1M=0,
                outputPer1M=0,
                app=app["name"],
                deployment=contract.MODEL_DEPLOYMENT,
            )
        )
        messages = [{"role": "system", "content": SYSTEM}]
        seen: list[tuple[int, int]] = []

        async def conversation() -> None:
            for i in range(4):
                messages.append({"role": "user", "content": f"Question {i}: the payment table?"})
                reply, prompt, cached = await _turn(backend, messages)
                messages.append({"role": "assistant", "content": reply or "ok"})
                seen.append((prompt, cached))

        asyncio.run(conversation())
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        stop_haproxy(env)

    assert seen[0][0] > 3 * BLOCK, seen  # the system prompt alone spans several blocks
    for (prev_prompt, _), (prompt, cached) in itertools.pairwise(seen):
        # Everything but the last (partial or re-tokenised) block of the previous turn's
        # prompt is found in the cache: the turn ran where the previous one did.
        assert cached >= (prev_prompt // BLOCK - 1) * BLOCK, seen
        assert cached < prompt, seen
