"""Per-tenant requests-per-minute and tokens-per-minute limits (token buckets).

Each limited tenant has two buckets that refill continuously at limit/60 per second up
to one minute's worth. The router calls :meth:`RateLimiter.check` before routing with
an estimate (prompt tokens plus max_tokens), which takes one request and the estimate
or raises a 429 with Retry-After; after the response it calls :meth:`commit` with the
actual tokens so the bucket reflects real use. ``now`` is always passed in.

Limits hold per router replica, so each replica enforces its ``share`` of them: 1 / the
router's RUNNING replicas as Ray Serve reports them (``ServeStatus.share``; 1 /
``spec.router.minReplicas`` until they are counted), so the pool as a whole enforces the
limit as the router scales. Ray Serve spreads requests over replicas evenly enough for
this; between a scale and the next status read (``APP_STATUS_INTERVAL_S``) the replicas
enforce the old share.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenyard.api.policy import RateLimit
from tokenyard.routing.errors import rate_limited

WILDCARD = "*"
# The buckets' window: each holds one minute's allowance and refills in one minute.
WINDOW_S = 60.0
# A bucket idle this long has refilled completely and can be forgotten (bounded memory).
_IDLE_S = 60.0


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is)."""
        # A request larger than a whole minute's allowance waits for a full bucket
        # rather than for ever; it then takes the bucket into debt.
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


def _check_share(share: float) -> float:
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    return share


def limit_for(limits: Iterable[RateLimit], tenant: str) -> RateLimit | None:
    """The tenant's own limit, else the ``*`` entry, else None."""
    wildcard: RateLimit | None = None
    for lim in limits:
        if lim.tenant == tenant:
            return lim
        if lim.tenant == WILDCARD:
            wildcard = lim
    return wildcard


class RateLimiter:
    """Token-bucket limits of one policy's tenants (a ``*`` entry applies per tenant)."""

    def __init__(self, limits: Iterable[RateLimit] = (), share: float = 1.0) -> None:
        self._limits: list[RateLimit] = list(limits)
        self.share = _check_share(share)
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}
        self._last_sweep = 0.0

    @property
    def limits(self) -> list[RateLimit]:
        return list(self._limits)

    def configure(self, limits: Iterable[RateLimit], share: float | None = None) -> None:
        """New limits (a policy edit) or share (a router scale); buckets are resized,
        keeping what was used."""
        self._limits = list(limits)
        if share is not None:
            self.share = _check_share(share)
        for buckets, attr in ((self._requests, "requestsPerMinute"),
                              (self._tokens, "tokensPerMinute")):  # fmt: skip
            for tenant in list(buckets):
                lim = limit_for(self._limits, tenant)
                limit = getattr(lim, attr) if lim is not None else None
                if limit is None:
                    del buckets[tenant]
                else:
                    cap = limit * self.share
                    b = buckets[tenant]
                    b.level = min(cap, b.level + (cap - b.capacity))
                    b.capacity = cap

    def _bucket(
        self, buckets: dict[str, _Bucket], tenant: str, limit: int | None, now: float
    ) -> _Bucket | None:
        if limit is None:
            return None
        b = buckets.get(tenant)
        if b is None:
            cap = limit * self.share
            b = buckets[tenant] = _Bucket(cap, cap, now)
        b.refill(now)
        return b

    def check(self, tenant: str, est_tokens: int, now: float) -> None:
        """Take one request and ``est_tokens`` from the tenant's buckets, or raise 429."""
        self._sweep(now)
        lim = limit_for(self._limits, tenant)
        if lim is None:
            return
        req = self._bucket(self._requests, tenant, lim.requestsPerMinute, now)
        tok = self._bucket(self._tokens, tenant, lim.tokensPerMinute, now)
        waits: list[tuple[float, str]] = []
        if req is not None and (w := req.wait_for(1)) > 0:
            waits.append((w, f"{lim.requestsPerMinute} requests per minute"))
        if tok is not None and (w := tok.wait_for(est_tokens)) > 0:
            waits.append((w, f"{lim.tokensPerMinute} tokens per minute"))
        if waits:
            wait, what = max(waits)
            # A bucket refills completely within its window: never ask for longer.
            wait = min(wait, WINDOW_S)
            raise rate_limited(f"rate limit of {what} reached for tenant {tenant!r}", wait)
        if req is not None:
            req.level -= 1
        if tok is not None:
            # A request larger than a minute's allowance goes into debt of at most one
            # minute, so the next one waits at most one window.
            tok.level = max(-tok.capacity, tok.level - est_tokens)

    def refund(self, tenant: str, est_tokens: int, now: float) -> None:
        """Give back what :meth:`check` took for a request that was then refused."""
        for buckets, amount in ((self._requests, 1), (self._tokens, est_tokens)):
            b = buckets.get(tenant)
            if b is not None:
                b.refill(now)
                b.level = min(b.capacity, b.level + amount)

    def commit(self, tenant: str, est_tokens: int, actual_tokens: int, now: float) -> None:
        """Correct the token bucket by what the request really used (refund or charge)."""
        b = self._tokens.get(tenant)
        if b is None:
            return
        b.refill(now)
        b.level = max(-b.capacity, min(b.capacity, b.level + est_tokens - actual_tokens))

    def remaining(self, tenant: str, now: float) -> tuple[float | None, float | None]:
        """(requests, tokens) left in the tenant's buckets now; None where unlimited."""
        lim = limit_for(self._limits, tenant)
        if lim is None:
            return None, None
        req = self._bucket(self._requests, tenant, lim.requestsPerMinute, now)
        tok = self._bucket(self._tokens, tenant, lim.tokensPerMinute, now)
        return (req.level if req else None, tok.level if tok else None)

    def tracked(self) -> int:
        """Buckets held, for tests of the memory bound."""
        return len(self._requests) + len(self._tokens)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _IDLE_S:
            return
        self._last_sweep = now
        for buckets in (self._requests, self._tokens):
            for tenant in [t for t, b in buckets.items() if now - b.updated >= _IDLE_S]:
                b = buckets[tenant]
                b.refill(now)
                if b.level >= b.capacity:
                    del buckets[tenant]
