"""Observed traffic: the ledger's counters (windows, snapshots, replicas adding up) and the
shaping of ``GET /v1/tokenyard/stats``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.unit.accounting.inline_actor import InlineHandle, Method

from tokenyard.accounting.ledger import (
    TRAFFIC_BUCKET_S,
    TRAFFIC_WINDOW_S,
    FileLedgerStore,
    MemoryLedgerStore,
    SpendLedger,
    load_ledger,
)
from tokenyard.accounting.stats import (
    DEFAULT_SPEND_WINDOW,
    build_stats,
    endpoint_stats,
    iso_time,
    spend_window,
)
from tokenyard.api.policy import RoutingPolicySpec

T0 = 1_700_000_040.0  # on a minute boundary: 2023-11-14T22:14:00Z


def spec(targets: list[str], budgets: list[dict[str, Any]] | None = None) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate(
        {"pool": "p", "targets": [{"model": t} for t in targets], "budgets": budgets or []}
    )


# -- ledger counters ----------------------------------------------------------------


def test_traffic_counts_requests_fallbacks_and_served_targets() -> None:
    led = SpendLedger()
    led.record_traffic("chat", "a", 0, T0)
    led.record_traffic("chat", "b", 1, T0 + 1)
    led.record_traffic("chat", "b", 2, T0 + 2)
    led.record_traffic("chat", None, 2, T0 + 3)  # no target answered (all failed)
    led.record_traffic("other", "a", 0, T0 + 4)
    s = led.traffic("chat", T0 + 5)
    assert s is not None
    assert (s.total.requests, s.total.fallbacks, s.total.by_target) == (4, 5, {"a": 1, "b": 2})
    assert s.recent == s.total
    assert s.window_s == TRAFFIC_WINDOW_S
    assert led.traffic("nobody", T0) is None
    assert led.traffic_endpoints() == ["chat", "other"]
    with pytest.raises(ValueError):
        led.record_traffic("chat", "a", -1, T0)


def test_recent_window_rolls_over_and_totals_stay() -> None:
    led = SpendLedger()
    led.record_traffic("chat", "a", 0, T0)
    led.record_traffic("chat", "b", 1, T0 + TRAFFIC_BUCKET_S * 5)
    # Still inside the window: both requests are recent.
    s = led.traffic("chat", T0 + TRAFFIC_WINDOW_S - 1)
    assert s is not None and s.recent.by_target == {"a": 1, "b": 1}
    # The first bucket has left the window; the second is still in it.
    s = led.traffic("chat", T0 + TRAFFIC_WINDOW_S)
    assert s is not None
    assert (s.recent.requests, s.recent.fallbacks, s.recent.by_target) == (1, 1, {"b": 1})
    # Long after: nothing recent, totals since start unchanged.
    s = led.traffic("chat", T0 + 10 * TRAFFIC_WINDOW_S)
    assert s is not None
    assert (s.recent.requests, s.recent.by_target) == (0, {})
    assert (s.total.requests, s.total.by_target) == (2, {"a": 1, "b": 1})


def test_traffic_buckets_are_pruned_memory_stays_bounded() -> None:
    led = SpendLedger()
    for minute in range(24 * 60):  # a day, one request per minute
        led.record_traffic("chat", "a", 0, T0 + 60 * minute)
    now = T0 + 60 * 24 * 60
    led.prune(now)
    assert led.bucket_count() <= TRAFFIC_WINDOW_S // TRAFFIC_BUCKET_S + 1
    s = led.traffic("chat", now)
    assert s is not None and s.total.requests == 24 * 60


def test_endpoint_spend_sums_every_tenant_in_the_window() -> None:
    led = SpendLedger()
    led.record("a", "chat", "m", 1.0, 1, 1, T0)
    led.record("b", "chat", "m", 2.0, 1, 1, T0 + 60)
    led.record("a", "other", "m", 4.0, 1, 1, T0)
    assert led.endpoint_spend("chat", "24h", T0 + 120) == pytest.approx(3.0)
    assert led.endpoint_spend("chat", "1m", T0 + 61) == pytest.approx(2.0)
    assert led.endpoint_spend("chat", "24h", T0 + 86400) == 0.0
    assert led.endpoint_spend("nobody", "24h", T0) == 0.0


def test_snapshot_restore_keeps_traffic_through_json() -> None:
    led = SpendLedger()
    led.record("a", "chat", "m", 1.0, 1, 1, T0)
    for i in range(30):
        led.record_traffic("chat", ["a", "b", None][i % 3], i % 2, T0 + 23 * i)
    now = T0 + 23 * 29
    snap = json.loads(json.dumps(led.snapshot()))
    other = SpendLedger()
    other.restore(snap)
    assert other.snapshot() == led.snapshot()
    assert other.traffic("chat", now) == led.traffic("chat", now)


def test_old_snapshot_without_traffic_still_loads(tmp_path: Path) -> None:
    old = {  # written before traffic counters existed
        "version": 1,
        "buckets": {
            "60": [["a", "chat", 1699999980, 1.5]],
            "3600": [["a", "chat", 1699999200, 1.5]],
            "86400": [["a", "chat", 1699920000, 1.5]],
        },
        "totals": [["a", "chat", "m", 1.5, 10, 10, 1]],
    }
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(old))
    led = load_ledger(FileLedgerStore(path))
    assert led.spend("a", "chat", "60m", 1700000000.0) == 1.5
    assert led.traffic_endpoints() == []
    led.record_traffic("chat", "m", 0, T0)  # and counting starts from there
    assert led.snapshot()["traffic"]["chat"]["requests"] == 1


@pytest.mark.parametrize(
    "traffic",
    [
        [],
        {"chat": {"requests": "many"}},
        {"chat": {"requests": 1, "fallbacks": 0, "byTarget": {"a": -1}}},
        {"chat": {"requests": 1, "fallbacks": 0, "byTarget": {}, "recent": [[0, 1]]}},
    ],
)
def test_garbled_traffic_resets_counters_but_keeps_spend(traffic: Any) -> None:
    store = MemoryLedgerStore()
    led = SpendLedger()
    led.record("a", "chat", "m", 1.0, 1, 1, T0)
    store.save({**led.snapshot(), "traffic": traffic})
    restored = load_ledger(store)
    assert restored.spend("a", "chat", "24h", T0) == 1.0
    assert restored.traffic_endpoints() == []


async def test_two_replicas_add_up_in_the_shared_actor() -> None:
    pytest.importorskip("ray", reason="the ledger actor module needs ray")
    from tokenyard.accounting.ledger_actor import LedgerActor, LedgerClient

    actor = InlineHandle(LedgerActor(None))
    one, two = LedgerClient(actor), LedgerClient(actor)
    one.record_traffic(endpoint="chat", target="a", fallbacks=0, now=T0)
    one.record_traffic(endpoint="chat", target="b", fallbacks=1, now=T0 + 1)
    two.record_traffic(endpoint="chat", target="a", fallbacks=0, now=T0 + 2)
    two.record_traffic(endpoint="chat", target=None, fallbacks=2, now=T0 + 3)
    two.record(tenant="t", endpoint="chat", model="a", cost_usd=0.5, tokens_in=1,
               tokens_out=1, now=T0 + 2)  # fmt: skip
    # Before a refresh each mirror knows only its own requests.
    mine = one.mirror.traffic("chat", T0 + 5)
    assert mine is not None and mine.total.requests == 2
    await one.refresh()  # sends one's batch, then reads the actor
    await two.refresh()
    await one.refresh()
    for client in (one, two):
        s = client.mirror.traffic("chat", T0 + 5)
        assert s is not None
        assert (s.total.requests, s.total.fallbacks) == (4, 3)
        assert s.total.by_target == {"a": 2, "b": 1}
        assert s.recent.by_target == {"a": 2, "b": 1}
        assert client.mirror.endpoint_spend("chat", "24h", T0 + 5) == 0.5
    # The actor holds the sum (what it persists), and a later request adds to it.
    one.record_traffic(endpoint="chat", target="a", fallbacks=0, now=T0 + 6)
    await one.refresh()
    _, snap = await actor.snapshot.remote()
    assert snap["traffic"]["chat"]["requests"] == 5
    assert snap["traffic"]["chat"]["byTarget"] == {"a": 3, "b": 1}


class _LateMethod:
    """An actor call that runs only when its result is awaited: an async actor may run a
    caller's calls out of order, so a batch can land after a later snapshot."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)  # a coroutine: awaiting it runs the method


async def test_a_refresh_keeps_a_batch_the_actor_runs_late() -> None:
    pytest.importorskip("ray", reason="the ledger actor module needs ray")
    from tokenyard.accounting.ledger_actor import LedgerActor, LedgerClient

    class LateHandle(InlineHandle):
        def __getattr__(self, name: str) -> Any:
            fn = getattr(self._actor, name)
            return _LateMethod(fn) if name.startswith("record") else Method(fn)

    actor = LedgerActor(None)
    client = LedgerClient(LateHandle(actor))
    client.record(tenant="t", endpoint="chat", model="a", cost_usd=0.5, tokens_in=1,
                  tokens_out=1, now=T0)  # fmt: skip
    client.record_traffic(endpoint="chat", target="a", fallbacks=0, now=T0)
    client._send()  # sent between refreshes: still on its way when the next one starts
    client.record(tenant="t", endpoint="chat", model="a", cost_usd=0.25, tokens_in=1,
                  tokens_out=1, now=T0)  # fmt: skip
    await client.refresh()
    # Both batches are in the mirror and in the actor: a budget check right after the
    # refresh sees all the spend.
    assert client.mirror.spend("t", "chat", "24h", T0) == 0.75
    _, snap = await Method(actor.snapshot).remote()
    assert snap["traffic"]["chat"]["requests"] == 1


async def test_a_ledger_actor_without_traffic_keeps_spend_flowing() -> None:
    pytest.importorskip("ray", reason="the ledger actor module needs ray")
    from tokenyard.accounting.ledger_actor import LedgerActor, LedgerClient

    class OldActor(LedgerActor):
        record_traffic = None  # type: ignore[assignment]

    class OldHandle(InlineHandle):
        def __getattr__(self, name: str) -> Method:
            if name == "record_traffic":
                raise AttributeError(name)  # as a Ray handle of an older class does
            return super().__getattr__(name)

    handle = OldHandle(OldActor(None))
    client = LedgerClient(handle)
    client.record_traffic(endpoint="chat", target="a", fallbacks=0, now=T0)
    client.record(tenant="t", endpoint="chat", model="a", cost_usd=0.5, tokens_in=1,
                  tokens_out=1, now=T0)  # fmt: skip
    await client.refresh()
    assert client.mirror.spend("t", "chat", "24h", T0) == 0.5


# -- stats shaping --------------------------------------------------------------------


def test_spend_window_is_the_star_budget_or_a_day() -> None:
    assert spend_window(spec(["a"])) == DEFAULT_SPEND_WINDOW == "24h"
    budgets = [
        {"tenant": "acme", "limitUSD": 1, "window": "30d"},
        {"tenant": "*", "limitUSD": 1, "window": "60m"},
    ]
    assert spend_window(spec(["a"], budgets)) == "60m"
    assert spend_window(spec(["a"], budgets[:1])) == "24h"


def test_iso_time() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00Z"
    assert iso_time(T0 + 0.9) == "2023-11-14T22:14:00Z"


def test_endpoint_without_traffic_reads_zeros() -> None:
    assert endpoint_stats(None, 0.0, "24h") == {
        "requests": 0,
        "fallbacks": 0,
        "byTarget": {},
        "windowSeconds": TRAFFIC_WINDOW_S,
        "recent": {"requests": 0, "byTarget": {}},
        "spendUSD": 0.0,
        "spendWindow": "24h",
    }


def test_build_stats_whole_document() -> None:
    led = SpendLedger()
    old = T0 - 2 * TRAFFIC_WINDOW_S  # counted since start, no longer recent
    led.record_traffic("chat", "b", 0, old)
    led.record_traffic("chat", "a", 0, T0)
    led.record_traffic("chat", "b", 1, T0 + 1)
    led.record_traffic("chat", None, 2, T0 + 2)
    led.record_traffic("tiny-a", "tiny-a", 0, T0)  # a model called directly
    led.record("acme", "chat", "a", 0.25, 1, 1, T0 - 3600)  # in the 24h window only
    led.record("acme", "chat", "b", 0.5, 1, 1, T0)
    led.record("x", "cheap", "a", 0.125, 1, 1, T0)
    star = [{"tenant": "*", "limitUSD": 1, "window": "60m"}]
    doc = build_stats(
        pool="p",
        namespace="ns",
        now=T0 + 10,
        policies={"chat": spec(["a", "b"]), "cheap": spec(["a"], star)},
        direct={"tiny-a": spec(["tiny-a"]), "tiny-b": spec(["tiny-b"])},
        source=led,
    )
    assert json.loads(json.dumps(doc)) == doc
    assert doc == {
        "pool": "p",
        "namespace": "ns",
        "generatedAt": "2023-11-14T22:14:10Z",
        "endpoints": {
            "chat": {
                "requests": 4,
                "fallbacks": 3,
                "byTarget": {"a": 1, "b": 2},
                "windowSeconds": TRAFFIC_WINDOW_S,
                "recent": {"requests": 3, "byTarget": {"a": 1, "b": 1}},
                "spendUSD": 0.75,
                "spendWindow": "24h",
            },
            "cheap": {
                "requests": 0,
                "fallbacks": 0,
                "byTarget": {},
                "windowSeconds": TRAFFIC_WINDOW_S,
                "recent": {"requests": 0, "byTarget": {}},
                "spendUSD": 0.125,
                "spendWindow": "60m",
            },
            "tiny-a": {
                "requests": 1,
                "fallbacks": 0,
                "byTarget": {"tiny-a": 1},
                "windowSeconds": TRAFFIC_WINDOW_S,
                "recent": {"requests": 1, "byTarget": {"tiny-a": 1}},
                "spendUSD": 0.0,
                "spendWindow": "24h",
            },
        },
    }
