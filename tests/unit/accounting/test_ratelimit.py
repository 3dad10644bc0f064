"""Per-tenant requests/min and tokens/min token buckets."""

from __future__ import annotations

import pytest

from tokenyard.accounting.ratelimit import RateLimiter, limit_for
from tokenyard.api.policy import RateLimit
from tokenyard.routing.errors import RouterError

T0 = 1000.0


def limiter(*limits: dict[str, object]) -> RateLimiter:
    return RateLimiter([RateLimit.model_validate(x) for x in limits])


def retry_after(rl: RateLimiter, tenant: str, tokens: int, now: float) -> float:
    with pytest.raises(RouterError) as exc:
        rl.check(tenant, tokens, now)
    assert exc.value.status == 429 and exc.value.code == "rate_limit_exceeded"
    assert exc.value.retry_after is not None
    return exc.value.retry_after


def test_requests_per_minute() -> None:
    rl = limiter({"tenant": "a", "requestsPerMinute": 2})
    rl.check("a", 0, T0)
    rl.check("a", 0, T0)
    assert retry_after(rl, "a", 0, T0) == pytest.approx(30.0)  # one request per 30 s refills
    assert retry_after(rl, "a", 0, T0 + 29) == pytest.approx(1.0)
    rl.check("a", 0, T0 + 30)
    retry_after(rl, "a", 0, T0 + 30)


def test_tokens_per_minute_and_commit_refund() -> None:
    rl = limiter({"tenant": "a", "tokensPerMinute": 1000})
    rl.check("a", 600, T0)
    assert retry_after(rl, "a", 600, T0) == pytest.approx(12.0)  # 200 missing at 1000/60 per s
    rl.commit("a", 600, 100, T0)  # it used only 100: 500 back
    rl.check("a", 600, T0)
    requests, tokens = rl.remaining("a", T0)
    assert requests is None and tokens == pytest.approx(300.0)


def test_commit_charges_more_when_the_estimate_was_low() -> None:
    rl = limiter({"tenant": "a", "tokensPerMinute": 1000})
    rl.check("a", 100, T0)
    rl.commit("a", 100, 1100, T0)  # actual use exceeded the bucket: debt
    assert rl.remaining("a", T0)[1] == pytest.approx(-100.0)
    assert retry_after(rl, "a", 1, T0) == pytest.approx(101 * 60 / 1000)


def test_a_refused_check_takes_nothing() -> None:
    rl = limiter({"tenant": "a", "requestsPerMinute": 10, "tokensPerMinute": 100})
    rl.check("a", 90, T0)
    retry_after(rl, "a", 50, T0)  # tokens refuse: the request slot is not taken either
    requests, tokens = rl.remaining("a", T0)
    assert requests == pytest.approx(9.0) and tokens == pytest.approx(10.0)


def test_request_bigger_than_a_minute_waits_at_most_the_window() -> None:
    rl = limiter({"tenant": "a", "tokensPerMinute": 100})
    rl.check("a", 500, T0)  # full bucket: allowed, into debt of at most one minute
    assert rl.remaining("a", T0)[1] == pytest.approx(-100.0)
    # Retry-After never exceeds the bucket's window (issue 16: 599999939 s seen).
    assert retry_after(rl, "a", 500, T0) == pytest.approx(60.0)
    assert retry_after(rl, "a", 10**12, T0 + 30) == pytest.approx(60.0)


def test_wildcard_applies_to_each_tenant_separately() -> None:
    rl = limiter({"tenant": "*", "requestsPerMinute": 1}, {"tenant": "vip", "requestsPerMinute": 3})
    rl.check("a", 0, T0)
    rl.check("b", 0, T0)
    retry_after(rl, "a", 0, T0)
    for _ in range(3):
        rl.check("vip", 0, T0)
    retry_after(rl, "vip", 0, T0)


def test_unlimited_tenants_pass() -> None:
    rl = limiter({"tenant": "a", "requestsPerMinute": 1})
    for _ in range(100):
        rl.check("b", 10**9, T0)
    assert rl.remaining("b", T0) == (None, None)
    assert RateLimiter().tracked() == 0


def test_limit_for() -> None:
    limits = [
        RateLimit(tenant="*", requestsPerMinute=1),
        RateLimit(tenant="a", requestsPerMinute=5),
    ]
    own, wild = limit_for(limits, "a"), limit_for(limits, "z")
    assert own is not None and own.requestsPerMinute == 5
    assert wild is not None and wild.requestsPerMinute == 1
    assert limit_for(limits[1:], "z") is None


def test_idle_buckets_are_forgotten() -> None:
    rl = limiter({"tenant": "*", "requestsPerMinute": 5})
    for i in range(100):
        rl.check(f"t{i}", 0, T0)
    assert rl.tracked() == 100
    rl.check("t0", 0, T0 + 61)
    assert rl.tracked() == 1


def test_configure_resizes_keeping_use() -> None:
    rl = limiter({"tenant": "a", "requestsPerMinute": 10})
    for _ in range(10):
        rl.check("a", 0, T0)
    rl.configure([RateLimit(tenant="a", requestsPerMinute=20)])
    for _ in range(10):
        rl.check("a", 0, T0)  # the 10 extra per minute are available at once
    retry_after(rl, "a", 0, T0)
    rl.configure([])
    rl.check("a", 0, T0)  # no longer limited


def test_each_router_replica_enforces_its_share_of_the_pool_limit() -> None:
    # Four replicas at the router's minimum: each lets through a quarter of the limit,
    # so the pool as a whole enforces 8 requests and 4000 tokens per minute.
    lims = [RateLimit(tenant="a", requestsPerMinute=8, tokensPerMinute=4000)]
    replicas = [RateLimiter(lims, share=0.25) for _ in range(4)]
    for rl in replicas:
        rl.check("a", 500, T0)
        rl.check("a", 500, T0)
        # 2 requests/min per replica refill one per 30 s; 1000 tokens/min one per 60 ms.
        assert retry_after(rl, "a", 0, T0) == pytest.approx(30.0)
    assert sum(rl.remaining("a", T0)[1] or 0 for rl in replicas) == pytest.approx(0.0)

    # A router scale-out (a new minReplicas) resizes the buckets, keeping what was used.
    rl = replicas[0]
    rl.configure(lims, share=0.5)
    assert rl.remaining("a", T0) == (pytest.approx(2.0), pytest.approx(1000.0))
    rl.check("a", 1000, T0)
    with pytest.raises(ValueError, match="share"):
        RateLimiter(lims, share=0)
    with pytest.raises(ValueError, match="share"):
        rl.configure(lims, share=1.5)
