"""The reconciler's work queue: each key at most once at a time, coalesced while it waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any


class WorkQueue:
    """Keys to reconcile, each at most once at a time, coalesced while waiting.

    Like client-go's workqueue: adding a key that is already waiting keeps the earlier
    due time; adding one that is being processed re-queues it when that pass ends.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._due: dict[Any, float] = {}
        self._processing: set[Any] = set()
        self._again: dict[Any, float] = {}
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Any, delay: float = 0.0) -> None:
        due = self._clock() + delay
        if key in self._processing:
            self._again[key] = min(self._again.get(key, due), due)
            return
        if key not in self._due or due < self._due[key]:
            self._due[key] = due
            self._wakeup.set()

    async def get(self) -> Any:
        while True:
            now = self._clock()
            ready = [k for k, t in self._due.items() if t <= now]
            if ready:
                key = min(ready, key=lambda k: self._due[k])
                del self._due[key]
                self._processing.add(key)
                return key
            self._wakeup.clear()
            timeout = min(self._due.values()) - now if self._due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, key: Any) -> None:
        self._processing.discard(key)
        if key in self._again:
            due = self._again.pop(key)
            self._due[key] = min(self._due.get(key, due), due)
            self._wakeup.set()


__all__ = ["WorkQueue"]
