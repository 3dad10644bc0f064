"""The trace reader: both TIMESTAMP spellings, any time span, bad rows named by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenyard.autoscaler.sim.trace import parse_timestamp, read_trace


def _write(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "trace.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return p


def test_wall_clock_with_100ns_ticks(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        [
            "2023-11-16 18:17:03.9799600,4808,10",
            "2023-11-16 18:17:04.0319600,3180,8",
            "2023-11-16 18:18:03.9799601,10,1",
        ],
    )
    reqs = read_trace(p)
    assert [r.prompt for r in reqs] == [4808, 3180, 10]
    assert reqs[0].t == 0.0
    assert reqs[1].t == pytest.approx(0.052, abs=1e-6)
    assert reqs[2].t == pytest.approx(60.0000001, abs=1e-6)


def test_numeric_ticks_and_unsorted_rows(tmp_path: Path) -> None:
    p = _write(tmp_path, ["30000000,5,5", "10000000,1,1", "20000000,2,2"])
    reqs = read_trace(p)
    assert [(r.t, r.prompt) for r in reqs] == [(0.0, 1), (1.0, 2), (2.0, 5)]


def test_time_span_is_rebased(tmp_path: Path) -> None:
    p = _write(tmp_path, [f"{i * 10_000_000},{i},1" for i in range(10)])
    reqs = read_trace(p, start_s=3, duration_s=4)
    assert [r.prompt for r in reqs] == [3, 4, 5, 6]
    assert reqs[0].t == 0.0


def test_bad_row_names_its_line(tmp_path: Path) -> None:
    p = _write(tmp_path, ["10000000,1,1", "20000000,lots,1"])
    with pytest.raises(ValueError, match="line 3"):
        read_trace(p)


def test_empty_trace(tmp_path: Path) -> None:
    assert read_trace(_write(tmp_path, [])) == []


def test_parse_timestamp_fraction_digits() -> None:
    assert parse_timestamp("1970-01-01 00:00:01.5") == pytest.approx(1.5)
    assert parse_timestamp("1970-01-01T00:00:01.0000001") == pytest.approx(1.0000001)


def test_shared_trace_reads_whole(repo_root: Path) -> None:
    path = repo_root.parent / "shared" / "traces" / "azure_llm_code_2023.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present beside the repository")
    reqs = read_trace(path)
    assert len(reqs) == 8819
    assert 3400 < reqs[-1].t < 3500
