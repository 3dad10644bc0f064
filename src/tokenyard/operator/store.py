"""What the operator reads its objects from: a read-only :class:`Store` of raw bodies.

In production the store is kopf's indexes (``tokenyard.operator.handlers``); in tests and
``tokenyard render`` a :class:`DictStore` over plain lists. The reconciler
(:mod:`tokenyard.operator.controller`) never lists objects from the API server itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Body = Mapping[str, Any]


class Store(Protocol):
    """Read-only view of the tokenyard objects the operator watches (raw bodies)."""

    def pool(self, namespace: str, name: str) -> Body | None: ...

    def pools(self) -> Iterable[tuple[str, str]]:
        """(namespace, name) of every pool."""
        ...

    def models_of_pool(self, namespace: str, pool: str) -> list[Body]:
        """ModelDeployments whose spec.pool is ``pool`` ('' for those without one)."""
        ...

    def policies_of_pool(self, namespace: str, pool: str) -> list[Body]: ...

    def model(self, namespace: str, name: str) -> Body | None: ...

    def pool_refs(self, namespace: str) -> set[str]:
        """Every spec.pool value models and policies of the namespace use ('' = none)."""
        ...


@dataclass
class DictStore:
    """A :class:`Store` over plain lists, for tests and `tokenyard render`."""

    pool_bodies: list[Body] = field(default_factory=list)
    model_bodies: list[Body] = field(default_factory=list)
    policy_bodies: list[Body] = field(default_factory=list)

    @staticmethod
    def _key(b: Body) -> tuple[str, str]:
        m = b.get("metadata") or {}
        return str(m.get("namespace") or "default"), str(m.get("name"))

    @staticmethod
    def _pool_of(b: Body) -> str:
        spec = b.get("spec")
        return str((spec.get("pool") if isinstance(spec, Mapping) else None) or "")

    def pool(self, namespace: str, name: str) -> Body | None:
        return next((b for b in self.pool_bodies if self._key(b) == (namespace, name)), None)

    def pools(self) -> Iterable[tuple[str, str]]:
        return [self._key(b) for b in self.pool_bodies]

    def models_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return [
            b
            for b in self.model_bodies
            if self._key(b)[0] == namespace and self._pool_of(b) == pool
        ]

    def policies_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return [
            b
            for b in self.policy_bodies
            if self._key(b)[0] == namespace and self._pool_of(b) == pool
        ]

    def model(self, namespace: str, name: str) -> Body | None:
        return next((b for b in self.model_bodies if self._key(b) == (namespace, name)), None)

    def pool_refs(self, namespace: str) -> set[str]:
        return {
            self._pool_of(b)
            for b in [*self.model_bodies, *self.policy_bodies]
            if self._key(b)[0] == namespace
        }


__all__ = ["Body", "DictStore", "Store"]
