"""Fakes shared by the in-process router tests."""

from __future__ import annotations

from typing import Any


def completion(model: str, prompt_tokens: int = 3, completion_tokens: int = 2) -> dict[str, Any]:
    """An OpenAI chat completion answering "ok" with the given usage."""
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
