"""Spend ledger: fixed windows, snapshots, pruning and the crash-safe file store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tokenyard.accounting.ledger import (
    FileLedgerStore,
    MemoryLedgerStore,
    SpendLedger,
    cost_usd,
    load_ledger,
)
from tokenyard.contract import CatalogueEntry
from tokenyard.routing.budget import window_bounds, window_seconds

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("window", "now", "bounds"),
    [
        ("60m", 7265.0, (7200.0, 10800.0)),
        ("60m", 7200.0, (7200.0, 10800.0)),  # the start belongs to the window
        ("1m", 59.9, (0.0, 60.0)),
        ("24h", T0, (1699920000.0, 1700006400.0)),
        ("30d", T0, (1697760000.0, 1700352000.0)),
        ("90m", 5399.0, (0.0, 5400.0)),
    ],
)
def test_window_bounds_are_fixed_from_the_epoch(
    window: str, now: float, bounds: tuple[float, float]
) -> None:
    assert window_bounds(window, now) == bounds


@pytest.mark.parametrize("window", ["", "0m", "10s", "1.5h", "h", "-1d", "24 h"])
def test_invalid_windows(window: str) -> None:
    with pytest.raises(ValueError):
        window_seconds(window)


def test_cost_usd() -> None:
    e = CatalogueEntry(name="m", servedModelName="m", kind="External", quality=1,
                       inputPer1M=3.0, outputPer1M=15.0)  # fmt: skip
    assert cost_usd(e, 1_000_000, 0) == 3.0
    assert cost_usd(e, 1000, 2000) == pytest.approx(0.003 + 0.03)


def test_spend_by_window_tenant_and_endpoint() -> None:
    start, end = window_bounds("24h", T0)
    led = SpendLedger()
    led.record("a", "chat", "m1", 1.0, 10, 10, start)
    led.record("a", "chat", "m2", 2.0, 10, 10, end - 1)
    led.record("a", "code", "m1", 4.0, 10, 10, T0)
    led.record("b", "chat", "m1", 8.0, 10, 10, T0)
    led.record("a", "chat", "m1", 16.0, 10, 10, start - 1)  # the previous day
    assert led.spend("a", "chat", "24h", T0) == 3.0
    assert led.spend("a", None, "24h", T0) == 7.0
    assert led.spend("b", "chat", "24h", T0) == 8.0
    assert led.spend("c", None, "24h", T0) == 0.0
    assert led.spend("a", "chat", "24h", start - 1) == 16.0
    # The next window starts from zero.
    assert led.spend("a", "chat", "24h", end) == 0.0
    # Minute and hour windows see only their part.
    assert led.spend("a", "chat", "60m", end - 1) == 2.0
    assert led.spend("a", "chat", "1m", end - 1) == 2.0
    assert led.spend("a", None, "30d", T0) == 23.0


def test_record_rejects_bad_costs() -> None:
    led = SpendLedger()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            led.record("a", "e", "m", bad, 1, 1, T0)


def test_totals() -> None:
    led = SpendLedger()
    led.record("a", "chat", "m", 1.5, 100, 20, T0)
    led.record("a", "chat", "m", 0.5, 50, 10, T0 + 1)
    t = led.totals()[("a", "chat", "m")]
    assert (t.cost_usd, t.tokens_in, t.tokens_out, t.requests) == (2.0, 150, 30, 2)


def test_snapshot_restore_roundtrip_through_json() -> None:
    led = SpendLedger()
    for i in range(50):
        led.record(f"t{i % 3}", "chat", f"m{i % 2}", 0.01 * i, i, i, T0 + 37 * i)
    snap = json.loads(json.dumps(led.snapshot()))
    other = SpendLedger()
    other.restore(snap)
    assert other.snapshot() == led.snapshot()
    for window in ("1m", "60m", "24h", "30d"):
        for tenant in ("t0", "t1", "t2"):
            now = T0 + 37 * 49
            assert other.spend(tenant, None, window, now) == led.spend(tenant, None, window, now)


@pytest.mark.parametrize(
    "snap",
    [
        {},
        {"version": 99, "buckets": {}},
        {"version": 1},
        {"version": 1, "buckets": {"7": []}},
        {"version": 1, "buckets": {"60": [["a", "b"]]}},
        {"version": 1, "buckets": {"60": [["a", "b", "x", 1.0]]}},
    ],
)
def test_restore_rejects_malformed(snap: dict[str, Any]) -> None:
    led = SpendLedger()
    led.record("a", "e", "m", 1.0, 1, 1, T0)
    with pytest.raises(ValueError):
        led.restore(snap)
    assert led.spend("a", "e", "24h", T0) == 1.0  # untouched


def test_old_buckets_are_pruned_memory_stays_bounded() -> None:
    led = SpendLedger(windows=["24h", "30d"])
    for minute in range(0, 60 * 24 * 90, 7):  # 90 days, one request every 7 minutes
        led.record("a", "chat", "m", 0.001, 1, 1, T0 + 60 * minute)
    now = T0 + 60 * 60 * 24 * 90
    # ~2h of minute buckets, ~3 days of hour buckets, ~62 days of day buckets at most.
    assert led.bucket_count() <= 2 * 60 // 7 + 2 + 3 * 24 + 2 + 62 + 2
    # The current day and month are still answered exactly.
    day_start, _ = window_bounds("24h", now - 1)
    expected_day = sum(0.001 for m in range(0, 60 * 24 * 90, 7) if T0 + 60 * m >= day_start)
    assert led.spend("a", "chat", "24h", now - 1) == pytest.approx(expected_day)
    assert led.prune(now + 400 * DAY) > 0
    assert led.bucket_count() == 0


def test_configured_long_minute_window_is_kept() -> None:
    # 330m is not a whole number of hours, so it is answered from minute buckets, which
    # are otherwise kept for only 2 hours.
    led = SpendLedger()
    led.configure_windows(["330m"])
    start, _ = window_bounds("330m", T0)
    led.record("a", "e", "m", 1.0, 1, 1, start + 1)
    led.prune(start + 320 * 60)
    assert led.spend("a", "e", "330m", start + 320 * 60) == 1.0


def test_memory_store_and_load_ledger() -> None:
    store = MemoryLedgerStore()
    assert load_ledger(store).snapshot() == SpendLedger().snapshot()
    led = SpendLedger()
    led.record("a", "e", "m", 2.0, 1, 1, T0)
    store.save(led.snapshot())
    assert load_ledger(store).spend("a", "e", "24h", T0) == 2.0
    store.data = {"version": 1, "buckets": "garbage"}
    assert load_ledger(store).spend("a", "e", "24h", T0) == 0.0  # never raises


def _ledger(usd: float) -> SpendLedger:
    led = SpendLedger()
    led.record("a", "chat", "m", usd, 1, 1, T0)
    return led


def test_file_store_roundtrip_and_backup(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    store = FileLedgerStore(path)
    assert store.load() is None
    store.save(_ledger(1.0).snapshot())
    assert not store.backup.exists()
    store.save(_ledger(2.0).snapshot())
    assert store.backup.exists()
    assert load_ledger(FileLedgerStore(path)).spend("a", "chat", "24h", T0) == 2.0
    assert json.loads(store.backup.read_text())["version"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.json", "ledger.json.bak"]


def test_corrupt_file_falls_back_to_backup_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    FileLedgerStore(path).save(_ledger(1.0).snapshot())
    FileLedgerStore(path).save(_ledger(2.0).snapshot())
    path.write_text('{"version": 1, "buckets": {"60": [[')  # torn / corrupted
    store = FileLedgerStore(path)
    assert load_ledger(store).spend("a", "chat", "24h", T0) == 1.0  # from the backup
    # Saving must not rotate the corrupt file over the good backup.
    store.save(_ledger(3.0).snapshot())
    assert load_ledger(FileLedgerStore(path)).spend("a", "chat", "24h", T0) == 3.0
    backup = FileLedgerStore(store.backup)
    assert backup.load() is not None


def test_corrupt_file_without_load_first_keeps_backup(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    FileLedgerStore(path).save(_ledger(1.0).snapshot())
    FileLedgerStore(path).save(_ledger(2.0).snapshot())
    path.write_bytes(b"\x00\x01garbage")
    FileLedgerStore(path).save(_ledger(3.0).snapshot())
    good_backup = json.loads((tmp_path / "ledger.json.bak").read_text())
    restored = SpendLedger()
    restored.restore(good_backup)
    assert restored.spend("a", "chat", "24h", T0) == 1.0


def test_both_files_corrupt_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("not json")
    (tmp_path / "ledger.json.bak").write_text("[]")
    store = FileLedgerStore(path)
    assert store.load() is None
    assert load_ledger(store).bucket_count() == 0


def test_crash_during_save_leaves_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.json"
    store = FileLedgerStore(path)
    store.save(_ledger(1.0).snapshot())
    real_replace = os.replace

    def crash_on_rename(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise OSError("disk full")  # the new file never gets renamed into place
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_rename)
    with pytest.raises(OSError):
        store.save(_ledger(2.0).snapshot())
    monkeypatch.undo()
    # No temporary file is left behind, and a reader finds the previous snapshot.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert load_ledger(FileLedgerStore(path)).spend("a", "chat", "24h", T0) == 1.0


def test_load_removes_temporaries_a_crash_left(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    FileLedgerStore(path).save(_ledger(1.0).snapshot())
    (tmp_path / ".ledger.json.abc123").write_text("half a snapsh")
    (tmp_path / "other.json").write_text("{}")
    assert FileLedgerStore(path).load() is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "other.json"]


def test_spend_without_endpoint_sums_only_that_tenant() -> None:
    led = SpendLedger()
    for i in range(20):
        led.record(f"t{i}", f"e{i % 4}", "m", 1.0, 1, 1, T0)
        led.record("a", f"e{i % 4}", "m", 0.5, 1, 1, T0)
    assert led.spend("a", None, "60m", T0) == 10.0
    assert led.spend("a", "e1", "60m", T0) == 2.5
    assert led.spend("t3", None, "60m", T0) == 1.0
