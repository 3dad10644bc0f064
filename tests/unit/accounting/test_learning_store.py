"""The learning store (tokenyard.accounting.learning): journals shared by replicas,
bounded by rotation, read again after a restart; capture files deleted past retention."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tokenyard.accounting import learning
from tokenyard.accounting.learning import DecisionNote, LearningStore
from tokenyard.routing.learned.state_files import (
    CAPTURE_DIR,
    DECISIONS_FILE,
    ROTATED_SUFFIX,
    captured,
    endpoint_dir,
)

HOUR = 3600.0
T0 = 1_800_000_000.0


def note(i: int, tenant: str = "t") -> DecisionNote:
    return DecisionNote(
        request_id=f"r{i}", time=T0 + i, tenant=tenant, endpoint="ep", target="cheap"
    )


def test_a_decision_written_by_one_replica_is_found_by_another(tmp_path: Path) -> None:
    a, b = LearningStore(tmp_path), LearningStore(tmp_path)
    a.note_decision(note(1))
    a.flush()
    assert b.find("r1") == note(1)
    a.note_decision(note(2))
    a.flush()
    assert b.find("r2") == note(2)  # read on from where it stopped
    assert b.find("nope") is None


def test_journals_are_bounded_and_a_rotation_loses_no_recent_decision(tmp_path: Path) -> None:
    a = LearningStore(tmp_path, max_bytes=4096)
    b = LearningStore(tmp_path, max_bytes=4096)
    for i in range(60):
        a.note_decision(note(i))
        a.flush()
        if i == 5:
            assert b.find("r5") is not None  # b has read part of the first file
    path = tmp_path / DECISIONS_FILE
    rotated = path.with_name(path.name + ROTATED_SUFFIX)
    assert rotated.exists()
    assert path.stat().st_size <= 4096 and rotated.stat().st_size <= 4096
    assert b.find("r59") == note(59)
    # What is still on disk is found by a fresh replica; the oldest were rotated away.
    fresh = LearningStore(tmp_path, max_bytes=4096)
    assert fresh.find("r59") is not None and fresh.find("r0") is None


def test_the_decision_journal_is_written_off_the_callers_thread_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: set[int] = set()
    release = threading.Event()
    original = learning._Journal.append_lines

    def slow_append(self: learning._Journal, lines: list[bytes]) -> None:
        writers.add(threading.get_ident())
        release.wait(10)  # a stalled volume
        original(self, lines)

    monkeypatch.setattr(learning._Journal, "append_lines", slow_append)
    a = LearningStore(tmp_path)
    for i in range(200):
        a.note_decision(note(i))  # returns while the volume is stalled
    assert a.find("r199") == note(199)  # this replica knows it at once
    assert threading.get_ident() not in writers
    release.set()
    a.close()  # writes what is queued
    fresh = LearningStore(tmp_path)
    assert all(fresh.find(f"r{i}") == note(i) for i in range(200))
    lines = (tmp_path / DECISIONS_FILE).read_text().splitlines()
    assert len(lines) == 200


def test_a_writer_far_behind_makes_the_caller_write_rather_than_drop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    original = learning._Journal.append_lines
    callers: list[int] = []

    def slow_append(self: learning._Journal, lines: list[bytes]) -> None:
        callers.append(threading.get_ident())
        if threading.current_thread().name == "tokenyard-decision-journal":
            release.wait(10)
        original(self, lines)

    monkeypatch.setattr(learning._Journal, "append_lines", slow_append)
    a = LearningStore(tmp_path)
    assert a._decisions is not None
    a._decisions.max_pending = 5
    for i in range(40):
        a.note_decision(note(i))
    assert threading.get_ident() in callers  # back-pressure on the caller
    release.set()
    a.close()
    assert len((tmp_path / DECISIONS_FILE).read_text().splitlines()) == 40


def test_a_failed_write_or_a_bad_record_leaves_the_writer_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = learning._Journal.append_lines
    fail = [True]

    def flaky(self: learning._Journal, lines: list[bytes]) -> None:
        if fail.pop() if fail else False:
            raise RuntimeError("volume gone")
        original(self, lines)

    monkeypatch.setattr(learning._Journal, "append_lines", flaky)
    a = LearningStore(tmp_path)
    assert a._decisions is not None
    a._decisions.put({"request_id": "lost", "x": 1})
    assert a._decisions.flush(timeout=2.0)  # not left busy by the failure
    a._decisions.put({"request_id": "bad", "x": object()})
    a.note_decision(note(1))
    assert a._decisions.flush(timeout=2.0)
    a.close()
    lines = (tmp_path / DECISIONS_FILE).read_text().splitlines()
    assert len(lines) == 1 and '"r1"' in lines[0]


def test_memory_index_is_bounded(tmp_path: Path) -> None:
    s = LearningStore(None, max_index=10)
    for i in range(25):
        s.note_decision(note(i))
    assert s.find("r24") is not None and s.find("r5") is None
    assert not s.durable


def test_purge_deletes_captures_past_retention(tmp_path: Path) -> None:
    s = LearningStore(tmp_path)
    s.capture({"request_id": "a"}, "ep", T0)
    s.capture({"request_id": "b"}, "ep", T0 + 5 * HOUR)
    assert s.purge({"ep": 2 * HOUR}, T0 + 2 * HOUR) == 0
    s.capture({"request_id": "c"}, "ep", T0 + 2 * HOUR)
    assert s.purge({"ep": 2 * HOUR}, T0 + 3 * HOUR + 1 - 3600 + 10) == 0  # once a minute
    assert sorted(r["request_id"] for r in captured(tmp_path)) == ["a", "b", "c"]
    # "a" is deleted once its whole hour is past the retention.
    assert s.purge({"ep": 2 * HOUR}, T0 + 3 * HOUR + 1, force=True) == 1
    assert sorted(r["request_id"] for r in captured(tmp_path)) == ["b", "c"]


def test_an_endpoint_missing_from_the_config_keeps_its_last_retention(tmp_path: Path) -> None:
    s = LearningStore(tmp_path)
    s.capture({"request_id": "old"}, "ep", T0)
    s.capture({"request_id": "new"}, "ep", T0 + 10 * HOUR)
    s.capture({"request_id": "x"}, "never-configured", T0)
    s.purge({"ep": 48 * HOUR}, T0 + 10 * HOUR, force=True)  # remembers 48h
    assert (tmp_path / CAPTURE_DIR / endpoint_dir("ep") / "retention").read_text() == "172800.0"
    # Capture turned off (or a config without the policy): nothing is wiped at once ...
    assert s.purge({}, T0 + 11 * HOUR, force=True) == 0
    # ... and the remembered retention still applies.
    assert s.purge({}, T0 + 49 * HOUR + 1, force=True) == 1
    assert sorted(r["request_id"] for r in captured(tmp_path)) == ["new", "x"]
    # A folder that remembers none is kept for the API's default, 7 days.
    assert s.purge({}, T0 + 7 * 24 * HOUR, force=True) == 1  # "new", 48h after its hour
    assert [r["request_id"] for r in captured(tmp_path)] == ["x"]
    assert s.purge({}, T0 + 7 * 24 * HOUR + HOUR, force=True) == 1
    assert list(captured(tmp_path)) == []
