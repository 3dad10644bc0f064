"""Budget reservations (issue 16 §1): each router replica's requests in flight count
against a tenant's budget on every replica, through the shared ledger actor."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray", reason="the ledger actor module needs ray")

from tests.unit.accounting.inline_actor import InlineHandle

from tokenyard.accounting.ledger_actor import HOLD_TTL_S, LedgerActor, LedgerClient

T0 = 1_700_000_000.0


def test_a_reservation_counts_until_released() -> None:
    client = LedgerClient(None)
    rid = client.reserve("t", "ep", 0.25)
    client.reserve("u", "ep", 1.0)
    assert client.spend("t", "ep", "24h", T0) == 0.25
    assert client.spend("t", None, "24h", T0) == 0.25
    assert client.spend("t", "other", "24h", T0) == 0
    client.record(tenant="t", endpoint="ep", model="a", cost_usd=0.1, tokens_in=1,
                  tokens_out=1, now=T0)  # fmt: skip
    client.release(rid)
    client.release(rid)  # twice: no-op
    assert client.spend("t", "ep", "24h", T0) == pytest.approx(0.1)
    assert client.reservations() == 1


async def test_replicas_see_each_others_reservations() -> None:
    actor = LedgerActor(None)
    handle = InlineHandle(actor)
    one, two = LedgerClient(handle), LedgerClient(handle)
    rid = one.reserve("t", "ep", 0.5)
    await one.refresh()  # sends one's holds
    await two.refresh()  # reads them
    assert two.spend("t", "ep", "24h", T0) == 0.5
    assert one.spend("t", "ep", "24h", T0) == 0.5  # not counted twice
    one.record(tenant="t", endpoint="ep", model="a", cost_usd=0.2, tokens_in=1,
               tokens_out=1, now=T0)  # fmt: skip
    one.release(rid)
    await one.refresh()
    await two.refresh()
    assert two.spend("t", "ep", "24h", T0) == pytest.approx(0.2)
    assert await actor.holds() == []


async def test_a_dead_replicas_holds_expire() -> None:
    clock = [100.0]
    actor = LedgerActor(None, clock=lambda: clock[0])
    one, two = LedgerClient(InlineHandle(actor)), LedgerClient(InlineHandle(actor))
    one.reserve("t", "ep", 0.5)
    await one.refresh()
    await two.refresh()
    assert two.spend("t", "ep", "24h", T0) == 0.5
    clock[0] += HOLD_TTL_S + 1  # one is gone and never renews
    await two.refresh()
    assert two.spend("t", "ep", "24h", T0) == 0


async def test_an_old_actor_without_holds_keeps_reservations_per_replica() -> None:
    class OldActor(LedgerActor):
        def __getattribute__(self, name: str) -> Any:
            if name in ("hold", "holds"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    client = LedgerClient(InlineHandle(OldActor(None)))
    client.reserve("t", "ep", 0.5)
    await client.refresh()
    assert client.spend("t", "ep", "24h", T0) == 0.5


def test_a_reservation_never_settled_expires() -> None:
    client = LedgerClient(None)
    client.reserve("t", "ep", 0.5, ttl_s=0.0)
    assert client.spend("t", "ep", "24h", T0) == 0
    assert client.reservations() == 0
