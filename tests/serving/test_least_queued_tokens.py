"""replicaRouting LeastQueuedTokens on real Ray Serve: Serve loads tokenyard's request
router from the class path the operator renders, with its kwargs, and routes by it.

Two replicas of a deployment that holds each request for its prompt's length (no engine:
the choice, not vLLM, is under test). One long prompt goes out first; while it runs,
short requests come 50 ms apart. Serve's default router compares requests in flight, so
once the idle replica holds as many short ones as the busy replica holds long ones it
sends shorts behind the long prompt (measured: 4 of 8 with that router); this router sees
the long prompt's tokens and keeps every short request off that replica.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="needs ray[serve]")

pytestmark = [
    pytest.mark.serving,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def test_short_requests_avoid_the_replica_prefilling_a_long_prompt() -> None:
    import ray
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from tokenyard import contract
    from tokenyard.api.model import LEAST_QUEUED_TOKENS_ROUTER, ModelDeployment

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "docs"},
            "spec": {
                "pool": "local",
                "inCluster": {
                    "source": "hf://org/model",
                    "accelerator": "cpu",
                    "replicaRouting": "LeastQueuedTokens",
                    "nominalTokensPerSecond": 100,
                },
            },
        }
    )
    rendered = contract.build_llm_config(
        "docs", md.spec, None, min_replicas=2, max_replicas=2, initial_replicas=2,
        autoscale=False,
    )["deployment_config"]["request_router_config"]  # fmt: skip
    assert rendered["request_router_class"] == LEAST_QUEUED_TOKENS_ROUTER

    @serve.deployment(
        num_replicas=2,
        max_ongoing_requests=100,
        request_router_config=RequestRouterConfig(
            request_router_class=rendered["request_router_class"],
            request_router_kwargs=rendered["request_router_kwargs"],
        ),
    )
    class Engine:
        async def chat(self, request: Any, raw: Any) -> str:
            # About 1 s per 100 estimated tokens (four bytes a token), as the kwargs say.
            await asyncio.sleep(len(request.prompt) / 400)
            return str(serve.get_replica_context().replica_id.unique_id)

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        handle = serve.run(Engine.bind(), name="lqt", route_prefix=None)
        # Warm both replicas (and the router's view of them).
        warm = {handle.chat.remote(SimpleNamespace(prompt="w"), None).result() for _ in range(20)}
        assert len(warm) == 2, warm

        async def burst() -> tuple[str, list[str]]:
            long = handle.chat.remote(SimpleNamespace(prompt="x" * 1600), None)  # 400 tokens, 4 s
            await asyncio.sleep(0.3)
            shorts = []
            for _ in range(8):  # 50 tokens, 0.5 s each, 50 ms apart: several in flight
                shorts.append(handle.chat.remote(SimpleNamespace(prompt="y" * 200), None))
                await asyncio.sleep(0.05)
            return await long, list(await asyncio.gather(*shorts))

        busy, short_replicas = asyncio.run(burst())
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    assert busy not in short_replicas, (busy, short_replicas)
