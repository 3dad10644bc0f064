"""A rating sent at once to another router replica finds the decision that the answering
replica's journal writer has not written yet (tokenyard.serving.router.feedback)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tokenyard.accounting import learning
from tokenyard.accounting.learning import DecisionNote, LearningStore
from tokenyard.serving.router import feedback as feedback_module
from tokenyard.serving.router.feedback import JOURNAL_GRACE_S, find_decision


def _note(i: int) -> DecisionNote:
    return DecisionNote(request_id=f"r{i}", time=1.8e9 + i, tenant="t", endpoint="ep", target="c")


def test_a_decision_still_being_written_by_another_replica_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = learning._Journal.append_lines

    def late(self: learning._Journal, lines: list[bytes]) -> None:
        if threading.current_thread().name == "tokenyard-decision-journal":
            time.sleep(0.03)  # the answering replica's writer is a little behind
        original(self, lines)

    monkeypatch.setattr(learning._Journal, "append_lines", late)
    answering, other = LearningStore(tmp_path), LearningStore(tmp_path)
    answering.note_decision(_note(1))
    core: Any = SimpleNamespace(learning=other)
    assert asyncio.run(find_decision(core, "r1")) == _note(1)
    assert asyncio.run(find_decision(core, "never")) is None
    answering.close()


def test_only_a_durable_store_is_looked_at_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(d: float) -> None:
        pauses.append(d)
        await real_sleep(0)

    monkeypatch.setattr(feedback_module.asyncio, "sleep", sleep)
    memory_only: Any = SimpleNamespace(learning=LearningStore(None))
    assert asyncio.run(find_decision(memory_only, "never")) is None
    assert pauses == []  # no journal another replica could be writing
    durable: Any = SimpleNamespace(learning=LearningStore(tmp_path))
    assert asyncio.run(find_decision(durable, "never")) is None
    assert pauses == list(JOURNAL_GRACE_S)
