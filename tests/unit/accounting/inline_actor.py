"""A Ray actor handle stand-in over a plain actor instance, for tests of the ledger actor
and its clients without Ray: ``handle.method.remote(*args)`` runs the method at once."""

from __future__ import annotations

from typing import Any


class Done:
    """An already-finished Ray ObjectRef stand-in: awaiting it gives the value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self.value
        yield  # makes this a generator function


class Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Done:
        # The actor methods never suspend: run them to completion now, in call order,
        # as Ray runs one caller's actor calls in submission order.
        coro = self._fn(*args)
        try:
            coro.send(None)
        except StopIteration as done:
            return Done(done.value)
        raise AssertionError("actor method suspended")


class InlineHandle:
    """A Ray actor handle stand-in over a plain actor instance (e.g. a LedgerActor)."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def __getattr__(self, name: str) -> Method:
        return Method(getattr(self._actor, name))
