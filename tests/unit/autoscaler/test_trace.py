"""The trace reader: Azure, BurstGPT and Mooncake formats, bad rows named by line; thinning."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tokenyard.autoscaler.sim.trace import TraceRequest, parse_timestamp, read_trace, thin


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


def test_parse_timestamp_with_a_utc_offset() -> None:
    # Azure's 2024 traces: six fractional digits and an offset, or no fraction at all.
    assert parse_timestamp("1970-01-01 00:00:01.009930+00:00") == pytest.approx(1.00993)
    assert parse_timestamp("1970-01-01 00:00:01+00:00") == pytest.approx(1.0)
    assert parse_timestamp("1970-01-01T01:00:01.25+01:00") == pytest.approx(1.25)
    assert parse_timestamp("1970-01-01T00:00:01.25Z") == pytest.approx(1.25)
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_shared_trace_reads_whole(repo_root: Path) -> None:
    path = repo_root.parent / "shared" / "traces" / "azure_llm_code_2023.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present beside the repository")
    reqs = read_trace(path)
    assert len(reqs) == 8819
    assert 3400 < reqs[-1].t < 3500


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            # Mooncake: JSON lines, milliseconds, hash_ids ignored, blank lines skipped.
            "conversation_trace.jsonl",
            '{"timestamp": 3052, "input_length": 7234, "output_length": 794, "hash_ids": [0]}\n'
            "\n"
            '{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1]}\n'
            '{"timestamp": 0, "input_length": 2287, "output_length": 316, "hash_ids": [0, 2]}\n',
            [(0.0, 6755, 500), (0.0, 2287, 316), (3.052, 7234, 794)],
        ),
        (
            # BurstGPT: seconds, other columns ignored, a failed request (0 response
            # tokens) still arrived.
            "BurstGPT_1.csv",
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "45,ChatGPT,1087,230,1317,Conversation log\n"
            "5,ChatGPT,472,18,490,Conversation log\n"
            "118.5,GPT-4,417,0,417,API log\n",
            [(0.0, 472, 18), (40.0, 1087, 230), (113.5, 417, 0)],
        ),
    ],
)
def test_public_trace_formats(
    tmp_path: Path, name: str, text: str, expected: list[tuple[float, int, int]]
) -> None:
    p = tmp_path / name
    p.write_text(text)
    reqs = read_trace(p)  # sorted, times from the first request
    assert [(pytest.approx(r.t), r.prompt, r.output) for r in reqs] == expected


def test_requests_are_sorted_by_arrival_and_equal_times_keep_the_file_s_order(
    tmp_path: Path,
) -> None:
    p = tmp_path / "t.csv"
    p.write_text("Timestamp,Request tokens,Response tokens\n9,1,1\n7,2,2\n9,3,3\n7,4,4\n8,5,5\n")
    assert [(r.t, r.prompt) for r in read_trace(p)] == [(0, 2), (0, 4), (1, 5), (2, 1), (2, 3)]
    assert [(r.t, r.prompt) for r in read_trace(p, start_s=1, duration_s=1)] == [(0, 5)]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.csv", "time,in,out\n1,2,3\n", "unknown trace format.*BurstGPT.*Mooncake"),
        ("a.jsonl", '{"timestamp": 0, "input_length": 5}\n', "line 1.*output_length.*Mooncake"),
        (
            "a.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n',
            "line 2.*not JSON",
        ),
        (
            "a.jsonl",
            '{"timestamp": true, "input_length": 5, "output_length": 1}\n',
            "line 1.*timestamp",
        ),
        (
            "a.jsonl",
            '{"timestamp": 1e400, "input_length": 5, "output_length": 1}\n',
            "line 1.*finite",
        ),
        ("a.csv", "Timestamp,Request tokens,Response tokens\n5,many,1\n", "line 2.*BurstGPT"),
        (
            "a.csv",
            "Timestamp,Request tokens,Response tokens\n5,1,1\n6,-10,1\n",
            "line 3: not a token count.*'-10'.*BurstGPT",
        ),
        ("a.csv", "Timestamp,Request tokens,Response tokens\n5,inf,1\n", "line 2.*'inf'"),
        (
            "a.csv",
            "Timestamp,Request tokens,Response tokens\n5,1,1\n6,1e30,1\n",
            "line 3: not a token count.*'1e30'.*BurstGPT",
        ),
    ],
)
def test_malformed_traces_name_the_line_and_the_format(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_trace(p)


def test_compressed_and_foreign_encodings(tmp_path: Path) -> None:
    """A gzip-compressed trace reads as its text, whatever its name; text that is not
    UTF-8 and a gzip stream cut short are errors naming the file."""
    import gzip

    text = "Timestamp,Request tokens,Response tokens\n" + "".join(
        f"{i},{100 + i},{i % 3}\n" for i in range(2000)
    )
    plain = tmp_path / "burst.csv"
    plain.write_text(text)
    packed = tmp_path / "burst.csv.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    unnamed = tmp_path / "trace.dat"
    unnamed.write_bytes(packed.read_bytes())
    assert read_trace(packed) == read_trace(unnamed) == read_trace(plain)
    assert len(read_trace(packed)) == 2000
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"cut\.csv\.gz: a damaged gzip file"):
        read_trace(cut)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Timestamp,Request tokens,Response tokens\n1,2,3 \u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8 text \(byte 0xe9\)"):
        read_trace(latin)


def test_padded_header_names_read(tmp_path: Path) -> None:
    """A header padded by hand names its columns: it was recognised as BurstGPT, then
    every line failed its lookup."""
    p = tmp_path / "padded.csv"
    p.write_text("Timestamp , Request tokens ,Response tokens \n1,10,2\n3,20,4\n")
    assert [(r.t, r.prompt, r.output) for r in read_trace(p)] == [(0.0, 10, 2), (2.0, 20, 4)]


def test_empty_file_has_no_requests(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    assert read_trace(p) == []


def test_thinning_keeps_a_seeded_share_and_refuses_to_scale_up() -> None:
    reqs = [TraceRequest(float(i), 100, 10) for i in range(10_000)]
    kept = thin(reqs, rate_scale=0.25, seed=3)
    assert kept == thin(reqs, rate_scale=0.25, seed=3)
    assert 2300 < len(kept) < 2700
    assert all(a.t < b.t for a, b in itertools.pairwise(kept))  # times kept as they were
    # 10,000 requests over 9,999 s: a mean of 0.5 req/s keeps about half.
    assert 4800 < len(thin(reqs, target_mean_rps=0.5, seed=1)) < 5200
    assert thin(reqs) is reqs
    with pytest.raises(ValueError, match="only be thinned"):
        thin(reqs, rate_scale=1.5)
    with pytest.raises(ValueError, match="only be thinned"):
        thin(reqs, target_mean_rps=2.0)
    with pytest.raises(ValueError, match="not both"):
        thin(reqs, rate_scale=0.5, target_mean_rps=0.5)
    with pytest.raises(ValueError, match="must be > 0"):
        thin(reqs, rate_scale=0.0)
