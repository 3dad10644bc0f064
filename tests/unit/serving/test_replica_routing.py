"""replicaRouting LeastQueuedTokens: the queued-token bookkeeping and the choice it makes
(the Ray Serve router around it is exercised on real Serve in tests/serving)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.serve", reason="needs ray[serve]")

from tokenyard.routing.replicas import PrefillQueues
from tokenyard.serving.replica_routing import request_tokens


def test_the_replica_with_fewer_queued_tokens_is_chosen_whatever_the_request_counts() -> None:
    q = PrefillQueues(1000.0, random.Random(0))
    q.sent("a", "long", 6000, now=0.0)
    for i in range(3):
        q.sent("b", f"short{i}", 200, now=0.0)
    # Three requests on b, one on a: by requests a looks idler; by work b is.
    for _ in range(20):
        assert q.choose(["a", "b"], now=1.0) == ["b", "a"]


def test_the_estimate_drains_at_the_prefill_rate_and_resets_when_all_complete() -> None:
    q = PrefillQueues(1000.0)
    q.sent("a", "r1", 3000, now=0.0)
    q.sent("a", "r2", 1000, now=1.0)
    assert q.load("a", 1.0) == pytest.approx(3000.0)  # 2000 left of r1, plus r2
    assert q.load("a", 2.5) == pytest.approx(1500.0)
    assert q.load("a", 10.0) == 0.0
    q.sent("a", "r3", 5000, now=10.0)
    q.completed("r1")
    q.completed("r2")
    assert q.load("a", 10.0) == pytest.approx(5000.0)  # r3 still open
    q.completed("r3")
    assert q.load("a", 10.0) == 0.0
    q.completed("r3")  # a second completion (or an unknown id) changes nothing


def test_two_of_many_are_drawn_so_routers_do_not_herd() -> None:
    q = PrefillQueues(1000.0, random.Random(1))
    replicas = [f"r{i}" for i in range(8)]
    q.sent("r0", "x", 10_000, now=0.0)
    firsts = {q.choose(replicas, now=0.0)[0] for _ in range(200)}
    assert len(firsts) > 4  # not always the one idlest replica
    assert "r0" not in firsts  # the loaded one loses every draw it is in
    for ranked in (q.choose(replicas, now=0.0) for _ in range(50)):
        assert len(ranked) == 2 and len(set(ranked)) == 2


def test_a_gone_replica_is_forgotten() -> None:
    q = PrefillQueues(1000.0)
    q.sent("a", "r1", 3000, now=0.0)
    q.forget("a")
    assert q.load("a", 0.0) == 0.0 and q.known() == set()
    q.completed("r1")  # completion of a request on a replica that died: ignored


def test_a_non_positive_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="prefill_tokens_per_s"):
        PrefillQueues(0.0)


def _pending(*args: Any) -> Any:
    return SimpleNamespace(args=list(args), kwargs={})


@pytest.mark.parametrize(
    ("arg", "tokens"),
    [
        (SimpleNamespace(messages=[{"role": "user", "content": "x" * 400}], prompt=None), 100),
        (
            SimpleNamespace(
                messages=[
                    SimpleNamespace(content=[{"type": "text", "text": "y" * 80}]),
                    {"role": "user", "content": "z" * 40},
                ]
            ),
            30,
        ),
        (SimpleNamespace(prompt="p" * 4000), 1000),
        (SimpleNamespace(prompt=["a" * 8, "b" * 8]), 4),
        ({"messages": [{"role": "user", "content": "é" * 100}]}, 50),
        (SimpleNamespace(prompt=[1, 2, 3]), 3),  # token ids
        (object(), 1),
    ],
)
def test_request_tokens_reads_the_openai_request(arg: Any, tokens: int) -> None:
    assert request_tokens(_pending(arg, None)) == tokens


def test_request_tokens_without_a_request() -> None:
    assert request_tokens(None) == 1
    assert request_tokens(_pending()) == 1
