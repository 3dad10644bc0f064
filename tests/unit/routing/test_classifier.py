"""The heuristic difficulty classifier and the difficulty header override."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.routing.classifiers import (
    DifficultyClassifier,
    HeuristicClassifier,
    difficulty_from_header,
)
from tokenyard.routing.errors import RouterError
from tokenyard.routing.features import extract_features
from tokenyard.routing.request import ParsedRequest, parse_request

CODE_TURN = (
    "```python\ndef merge(a, b):\n    return sorted(a + b)\n```\n"
    "This raises a traceback on large inputs. Explain why, step by step, then optimize the "
    "algorithm and prove its complexity with the recurrence T(n) = 2T(n/2) + n."
)


def chat(*contents: str, **extra: Any) -> ParsedRequest:
    messages = []
    for i, c in enumerate(contents):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": c})
    return parse_request({"model": "chat", "messages": messages, **extra}, {}, "chat")


def score(p: ParsedRequest) -> float:
    return HeuristicClassifier().score(p)


GREETING = chat("hi!")
FACT = chat("What is the capital of France?")
SUMMARY = chat("Summarize: " + "The meeting moved to Tuesday and lunch is provided. " * 20)
PROOF = chat("Prove that there are infinitely many primes, with a rigorous proof.")
HARD = chat(*([CODE_TURN * 3, "Here is a first attempt at the analysis. " * 30] * 4 + [CODE_TURN]),
            max_tokens=4000)  # fmt: skip


def test_orders_trivial_below_hard() -> None:
    # PROOF is short and now scores below the long SUMMARY: content patterns no longer
    # count (they carried no evidence on labelled data, docs/routing-quality.md).
    ordered = [score(p) for p in (GREETING, FACT, PROOF, SUMMARY, HARD)]
    assert ordered == sorted(ordered)
    assert ordered[0] < 0.2  # a greeting fits the economy tier (quality 0.3)
    assert ordered[-1] >= 0.8  # a long multi-turn code + math task needs a frontier model


@pytest.mark.parametrize(
    "parsed",
    [GREETING, HARD, chat("x" * 500_000, max_tokens=1_000_000), chat(CODE_TURN * 200)],
)
def test_bounded_and_deterministic(parsed: ParsedRequest) -> None:
    s = score(parsed)
    assert 0.0 <= s <= 1.0
    assert s == score(parsed) == HeuristicClassifier().score(parsed)


@pytest.mark.parametrize(
    ("more", "less"),
    [
        (chat("hello", max_tokens=4000), chat("hello", max_tokens=10)),  # output length
        (chat("hello", "hi", "hello", "hi", "hello"), chat("hello")),  # conversation depth
        (chat("Tell me about dogs and cats today"), chat("Tell me about dogs")),  # length
    ],
)
def test_each_signal_raises_the_score(more: ParsedRequest, less: ParsedRequest) -> None:
    assert score(more) > score(less)


@pytest.mark.parametrize(
    "content",
    [
        "Compute the integral of x^2 from 0 to 1",  # maths patterns
        "Fix this python function: def f(x): return x +",  # code patterns
        "Explain why, step by step, and optimize the algorithm.",  # reasoning patterns
    ],
)
def test_content_patterns_do_not_move_the_score(content: str) -> None:
    # Same length as plain prose: the same score. The earlier content patterns lowered
    # APGR below prompt length alone on MMLU, so length decides (docs/routing-quality.md).
    plain = ("Tell me something about dogs and cats. " * 2)[: len(content)]
    assert score(chat(content)) == score(chat(plain))


def test_one_turn_prompts_are_ordered_by_length_alone() -> None:
    prompts = [chat(w * n) for n in (1, 3, 10, 40, 300, 2000, 9000) for w in ("prove ", "a ")]
    by_length = sorted(prompts, key=lambda p: p.prompt_tokens)
    scores = [score(p) for p in by_length]
    assert scores == sorted(scores)
    for a, b in itertools.pairwise(by_length):
        if a.prompt_tokens < b.prompt_tokens <= 4096:
            assert score(a) < score(b)


def test_completion_requests_are_scored() -> None:
    p = parse_request({"model": "m", "prompt": "Once upon a time"}, {}, "completion")
    assert 0 < score(p) < 0.3


def test_heuristic_satisfies_the_protocol() -> None:
    assert isinstance(HeuristicClassifier(), DifficultyClassifier)


def _policy(allow: bool) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": "a"}], "classifier": {"allowHeaderOverride": allow}}
    )


@pytest.mark.parametrize(
    ("allow", "header", "difficulty", "source"),
    [
        (True, "0.95", 0.95, "header"),
        (True, " 0 ", 0.0, "header"),
        (True, "1", 1.0, "header"),
        (True, None, None, "classifier"),
        (False, "0.95", None, "classifier"),  # not allowed: ignored, not an error
        (False, "banana", None, "classifier"),
    ],
)
def test_header_override(
    allow: bool, header: str | None, difficulty: float | None, source: str
) -> None:
    headers = {"X-Tokenyard-Difficulty": header} if header is not None else {}
    parsed = parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                           headers, "chat")  # fmt: skip
    f = extract_features(parsed, _policy(allow), "m", "t")
    assert f.difficulty_source == source
    assert f.difficulty == (difficulty if difficulty is not None else score(parsed))


@pytest.mark.parametrize("value", ["1.5", "-0.1", "banana", "nan", "inf", ""])
def test_invalid_header_is_400_when_allowed(value: str) -> None:
    with pytest.raises(RouterError) as exc:
        difficulty_from_header({"x-tokenyard-difficulty": value}, True)
    assert exc.value.status == 400
    assert exc.value.param == "X-Tokenyard-Difficulty"


class Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, parsed: object) -> float:
        return self.value


@pytest.mark.parametrize(("value", "clamped"), [(0.42, 0.42), (7.0, 1.0), (-1.0, 0.0)])
def test_pluggable_classifier_is_clamped(value: float, clamped: float) -> None:
    f = extract_features(GREETING, _policy(False), "m", "t", classifier=Constant(value))
    assert f.difficulty == clamped
