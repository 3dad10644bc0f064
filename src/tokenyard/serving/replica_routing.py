"""``replicaRouting: LeastQueuedTokens``: a Ray Serve request router that balances the
prompt tokens queued for prefill on a model's replicas, not the number of requests.

vLLM prefills a replica's requests one after the other, so a request's time to first
token is the prefill of the prompt tokens queued ahead of it on its replica. Serve's
default router compares ongoing requests: behind one 6,000-token prompt, a replica with
one request looks idler than one with three 200-token requests, and a short request sent
there waits seconds. Join-the-shortest-work is the better rule when job sizes vary
(for equal sizes it is the same rule).

Of two replicas drawn at random (power of two choices: several routers, each seeing its
own share of requests, do not all herd to one replica), the request goes to the one with
fewer prompt tokens this router estimates still queued there, the other ranked second;
Serve then checks the chosen replica accepts (max_ongoing_requests), as for its own
router. The estimate (:class:`PrefillQueues`) is per replica: the prompt tokens this
router sent there (about four bytes a token, :func:`~tokenyard.routing.request.
estimate_tokens`), drained at the replica's ``prefill_tokens_per_s``
(spec.inCluster.nominalTokensPerSecond) and reset to nothing when every request it sent
there has completed. What it does not see: other routers' requests and prefix-cache hits
(a cached prefix is not prefilled again): a model whose prompts share long prefixes keeps
PrefixCacheAffinity.

The bookkeeping is pure (:mod:`tokenyard.routing.replicas`, which the simulator routes
with too); :class:`LeastQueuedTokensRouter` adapts it to
Serve's ``RequestRouter`` hooks and is what the rendered ``request_router_config`` names.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from tokenyard.routing.replicas import PrefillQueues
from tokenyard.routing.request import estimate_tokens


def _text(value: Any) -> str:
    """The text of a prompt, a message's content or a list of either."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _text(value.get("content") or value.get("text") or "")
    if isinstance(value, list | tuple):
        return "".join(_text(v) for v in value if not isinstance(v, int))
    content = getattr(value, "content", None) or getattr(value, "text", None)
    return _text(content) if content is not None else ""


def request_tokens(pending: PendingRequest | None) -> int:
    """The estimated prompt tokens of a request to a Ray Serve LLM deployment (its first
    argument is the OpenAI chat or completion request); 1 where no prompt is found, so
    the router still counts the request."""
    for arg in pending.args if pending is not None and pending.args else ():
        messages = getattr(arg, "messages", None)
        prompt = getattr(arg, "prompt", None)
        if isinstance(arg, dict):
            messages, prompt = arg.get("messages"), arg.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)  # token ids
        if messages is not None or prompt is not None:
            return max(1, estimate_tokens(_text(messages if messages is not None else prompt)))
    return 1


class LeastQueuedTokensRouter(FIFOMixin, RequestRouter):
    """Ray Serve request router of ``replicaRouting: LeastQueuedTokens`` (see the
    module's docstring). ``request_router_kwargs``: ``prefill_tokens_per_s``."""

    def initialize_state(self, prefill_tokens_per_s: float = 1000.0, **_: Any) -> None:
        self._queues = PrefillQueues(prefill_tokens_per_s)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id: r for r in candidate_replicas}
        ranked = self._queues.choose(list(by_id), time.monotonic())
        return [[by_id[i]] for i in ranked]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        request_id = pending_request.metadata.internal_request_id
        tokens = request_tokens(pending_request)
        self._queues.sent(replica_id, request_id, tokens, time.monotonic())

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._queues.completed(internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._queues.forget(replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        for gone in self._queues.known() - live:
            self._queues.forget(gone)


__all__ = ["LeastQueuedTokensRouter", "PrefillQueues", "request_tokens"]
