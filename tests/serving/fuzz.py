"""A seeded generator of hostile request bodies and headers (issue 16 §4), shared by the
in-process fuzz test (test_router_hostile.py) and the one against `tokenyard up`."""

from __future__ import annotations

import json
import random

NASTY_JSON = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000, "1e-400", "-0", "0",
    "true", "null", '""', '"\\udfff"', '"\\ud800x"', '"\\u0000"', '"' + "x" * 70000 + '"',
    "[]", "{}", "[[[[[[[[]]]]]]]]", '{"a": 1, "a": 2}', "12345678901234567890123",
    '"\\u202e\\u200b"', "3.5", "-1", "2147483648", '{"type": 5}', '[{"type": "text"}]',
    '[{"type": "text", "text": 5}]', '{"role": "user"}', '{"function": "x"}',
    '[{"function": {"name": 1}}]', '{"include_usage": "yes"}', '{"1": "NaN"}',
]  # fmt: skip
PARAMS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stop", "stream", "stream_options", "logit_bias", "logprobs",
    "top_logprobs", "user", "metadata", "tools", "tool_choice", "response_format", "seed",
    "suffix", "best_of", "echo", "prediction", "audio", "unknown_field", "x" * 300,
]  # fmt: skip


def deep(depth: int, rng: random.Random) -> str:
    open_, close = ("[", "]") if rng.random() < 0.5 else ('{"k":', "}")
    return open_ * depth + "1" + close * depth


def nasty(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.08:
        return deep(rng.choice([65, 200, 900, 5000, 100_000]), rng)
    if r < 0.15:
        return json.dumps({"role": rng.choice(["user", "assistant", "tool", 5, None]),
                           "content": rng.choice(["hi", None, 5, [], ["x"], "\udfff"]),
                           "tool_calls": rng.choice([None, 5, [5], [{"function": 5}]]),
                           "name": rng.choice([None, "n", 5])})  # fmt: skip
    return rng.choice(NASTY_JSON)


def body_text(rng: random.Random, kind: str) -> str:
    models = ['"ep"', '"ep"', '"a"', '"nope"', json.dumps("m" * 9999)]
    base: dict[str, str] = {"model": rng.choice(models)}
    if kind == "chat":
        base["messages"] = '[{"role": "user", "content": "hello"}]'
    else:
        base["prompt"] = '"hello"'
    base["max_tokens"] = "8"
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        base[rng.choice(PARAMS)] = nasty(rng)
    if rng.random() < 0.1:
        base.pop(rng.choice(list(base)))
    items = [f"{json.dumps(k)}: {v}" for k, v in base.items()]
    if rng.random() < 0.05:
        items.append(items[0])  # a duplicate key
    text = "{" + ", ".join(items) + "}"
    r = rng.random()
    if r < 0.03:
        text = text[: rng.randint(0, len(text))]  # truncated
    elif r < 0.05:
        text = nasty(rng)  # not an object
    return text


def headers(rng: random.Random) -> dict[str, str | bytes]:
    h: dict[str, str | bytes] = {"content-type": "application/json"}
    if rng.random() < 0.3:
        h["authorization"] = rng.choice(["Bearer ", "Bearer x", "Basic a", "bearer  k1", "x" * 999])
    if rng.random() < 0.3:
        h["x-tenant"] = rng.choice(["t1", "", " ", "bad tenant!", "é".encode(), "t" * 400, "a/b:c"])
    if rng.random() < 0.1:
        h["x-request-id"] = "r" * rng.choice([1, 200, 5000])
    return h


def case(rng: random.Random) -> tuple[str, bytes, dict[str, str | bytes]]:
    """One fuzz case: (path, raw body, headers)."""
    path, kind = rng.choice(PATHS)
    raw = body_text(rng, kind).encode("utf-8", "surrogatepass")
    return path, raw, headers(rng)


PATHS = [
    ("/v1/chat/completions", "chat"),
    ("/v1/completions", "completion"),
    ("/v1/tokenyard/explain", "chat"),
    ("/v1/tokenyard/feedback", "chat"),  # chat-shaped bodies: all malformed feedback
]
