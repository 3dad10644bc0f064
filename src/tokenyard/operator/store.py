"""What the operator reads its objects from: a read-only :class:`Store` of raw bodies.

In production a :class:`WatchedStore`, fed by kopf's event handlers
(``tokenyard.operator.handlers``) and seeded by one paged LIST per kind when the
reconciler starts (``Controller.sync``): the reconciler begins only once every object is
known, so a pass after a restart never renders a pool from half its models. In tests and
``tokenyard render``, a :class:`DictStore` over plain lists.

The WatchedStore replaces kopf's indexes. kopf holds every object's worker at start-up
until all indexes are filled, and wakes every waiting worker each time one object is
indexed: quadratic in the objects (about 7 minutes of CPU and 260 MB to restart over
5,000 models on a real API server). Without indexes kopf gates nothing, and the store
holds one trimmed copy of each object.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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


# --------------------------------------------------------------------------- watched

Kind = Literal["pool", "model", "policy"]
KINDS: tuple[Kind, ...] = ("pool", "model", "policy")

# Deleted objects remembered (by resourceVersion) so that an older event still in
# flight for one of them cannot bring it back; the oldest are forgotten first.
TOMBSTONES = 10_000


def trim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a body the reconciler reads: never kopf's or kubectl's annotations,
    nor managedFields, which together are most of a real object."""
    meta = body.get("metadata") or {}
    keep = {
        k: meta[k]
        for k in ("name", "namespace", "uid", "generation", "resourceVersion")
        if k in meta
    }
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": keep,
        "spec": _plain(body.get("spec")),
    }
    if body.get("status") is not None:
        out["status"] = _plain(body.get("status"))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def pool_ref(body: Mapping[str, Any]) -> str:
    """spec.pool of a model or policy ('' when it names none)."""
    spec = body.get("spec")
    pool = spec.get("pool") if isinstance(spec, Mapping) else None
    return pool if isinstance(pool, str) else ""


def _version(body: Mapping[str, Any] | None) -> int | None:
    """The resourceVersion as a number, when it is one (a real API server's are etcd
    revisions; the emulator in tests has none, and then the latest event wins)."""
    rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
    return int(rv) if isinstance(rv, str) and rv.isdigit() else None


def _older(new: int | None, old: int | None) -> bool:
    return new is not None and old is not None and new < old


class WatchedStore:
    """Pools, models and policies by name, and models and policies by pool; implements
    the reconciler's ``Store``. Events are applied in any order: one older than what
    the store holds for that object (by resourceVersion) changes nothing."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[Kind, str, str], Body] = {}
        self._by_pool: dict[tuple[Kind, str, str], set[str]] = {}
        self._pool_of: dict[tuple[Kind, str, str], str] = {}
        self._gone: OrderedDict[tuple[Kind, str, str], int | None] = OrderedDict()

    # ----------------------------------------------------------------- writes

    def apply(self, kind: Kind, namespace: str, name: str, body: Body | None) -> bool:
        """One watch event (``body`` None: deleted). Returns whether it changed the
        store (False for an event older than what the store already has)."""
        key = (kind, namespace, name)
        old = self._bodies.get(key)
        if body is None:
            if old is None:
                return False
            self._forget(key)
            self._gone[key] = _version(old)
            self._trim_tombstones()
            return True
        new = trim(body)
        version = _version(new)
        if _older(version, _version(old)):
            return False
        if old is None and key in self._gone:
            gone = self._gone[key]
            if version is not None and gone is not None and version <= gone:
                return False  # an event from before the deletion, still in flight
        self._gone.pop(key, None)
        self._put(key, new)
        return True

    def seed(
        self,
        kind: Kind,
        bodies: Iterable[Body],
        list_version: str | None,
        namespace: str | None = None,
    ) -> None:
        """A complete LIST of one kind (in one namespace, or all when None): add or
        update what it holds, and drop what it does not hold unless an event newer than
        the list brought it."""
        listed = {self.apply_listed(kind, b) for b in bodies}
        self.prune(kind, listed, list_version, namespace)

    def apply_listed(self, kind: Kind, body: Body) -> tuple[Kind, str, str]:
        """One item of a LIST (applied like an event); its key, for :meth:`prune`."""
        meta = body.get("metadata") or {}
        key: tuple[Kind, str, str] = (kind, str(meta.get("namespace") or ""), str(meta.get("name")))
        self.apply(kind, key[1], key[2], body)
        return key

    def prune(
        self,
        kind: Kind,
        listed: set[tuple[Kind, str, str]],
        list_version: str | None,
        namespace: str | None = None,
    ) -> None:
        """After a complete LIST: drop what it did not hold, unless an event newer than
        the list (by resourceVersion) brought it."""
        cut = int(list_version) if list_version and list_version.isdigit() else None
        scope = [k for k in self._bodies if k[0] == kind and namespace in (None, k[1])]
        for key in [k for k in scope if k not in listed]:
            if not _older(cut, _version(self._bodies[key])):
                self.apply(kind, key[1], key[2], None)

    def _put(self, key: tuple[Kind, str, str], body: Body) -> None:
        kind = key[0]
        self._bodies[key] = body
        if kind == "pool":
            return
        pool = pool_ref(body)
        before = self._pool_of.get(key)
        if before == pool:
            return
        if before is not None:
            self._unlink(key, before)
        self._pool_of[key] = pool
        self._by_pool.setdefault((kind, key[1], pool), set()).add(key[2])

    def _forget(self, key: tuple[Kind, str, str]) -> None:
        self._bodies.pop(key, None)
        pool = self._pool_of.pop(key, None)
        if pool is not None:
            self._unlink(key, pool)

    def _unlink(self, key: tuple[Kind, str, str], pool: str) -> None:
        group = (key[0], key[1], pool)
        names = self._by_pool.get(group)
        if names is not None:
            names.discard(key[2])
            if not names:
                del self._by_pool[group]

    def _trim_tombstones(self) -> None:
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)

    # ----------------------------------------------------------------- reads (Store)

    def pool(self, namespace: str, name: str) -> Body | None:
        return self._bodies.get(("pool", namespace, name))

    def pools(self) -> list[tuple[str, str]]:
        return [(ns, name) for kind, ns, name in self._bodies if kind == "pool"]

    def model(self, namespace: str, name: str) -> Body | None:
        return self._bodies.get(("model", namespace, name))

    def models_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return self._members("model", namespace, pool)

    def policies_of_pool(self, namespace: str, pool: str) -> list[Body]:
        return self._members("policy", namespace, pool)

    def pool_refs(self, namespace: str) -> set[str]:
        return {pool for kind, ns, pool in self._by_pool if ns == namespace}

    def count(self, kind: Kind) -> int:
        return sum(1 for k in self._bodies if k[0] == kind)

    def _members(self, kind: Kind, namespace: str, pool: str) -> list[Body]:
        names = sorted(self._by_pool.get((kind, namespace, pool), ()))
        return [self._bodies[(kind, namespace, n)] for n in names]
