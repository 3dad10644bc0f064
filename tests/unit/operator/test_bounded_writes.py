"""Status writes run a few at a time, and a pass cancelled while writes wait for a slot
(the operator stopping) leaves no coroutine that was made and never awaited: each write
is made only when it runs (Controller.bounded)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from tokenyard.operator.controller import Controller


def test_a_cancelled_pass_makes_no_write_it_did_not_start() -> None:
    made: list[int] = []
    started = asyncio.Event()

    def write(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started.set()
            await asyncio.sleep(3600)  # an API server that does not answer

        def make() -> Awaitable[None]:
            made.append(i)
            return run()

        return make

    async def scenario() -> None:
        ctrl: Any = SimpleNamespace(_write_slots=asyncio.Semaphore(2))
        task = asyncio.create_task(Controller.bounded(ctrl, [write(i) for i in range(10)]))
        await started.wait()
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert made == [0, 1]  # two slots: the other eight writes were never made


def test_every_write_runs_with_at_most_the_slots_in_flight() -> None:
    in_flight, peak, done = 0, 0, []

    def write(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            done.append(i)

        return run

    ctrl: Any = SimpleNamespace(_write_slots=asyncio.Semaphore(3))
    asyncio.run(Controller.bounded(ctrl, [write(i) for i in range(20)]))
    assert sorted(done) == list(range(20)) and peak == 3
