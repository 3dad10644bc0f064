"""`tokenyard report` on an audit log from a real run (router + vLLM on CPU).

data/audit-real-run.jsonl is the audit log that
tests/integration/observability/test_observability_promql.py wrote (run with
TOKENYARD_KEEP_AUDIT=PATH): three tenants on `chat` (CheapestSufficient over a target
that refuses connections, an economy and a frontier target, both a tiny vLLM) and one
tenant over its budget on `capped`; trimmed to every line that fell back or was
answered on `capped`, every tenth other answer and the first 40 refusals.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tokenyard.accounting.report import (
    Filters,
    bucket_size,
    duration,
    parse_since,
    read_audit,
    render_html,
    select,
    summarize,
)
from tokenyard.cli import main

DATA = Path(__file__).parent / "data" / "audit-real-run.jsonl"
PLOTS = ("cost-vs-strongest", "spend-tenant", "spend-model", "share", "fallbacks", "difficulty")


def raw() -> list[dict[str, Any]]:
    return [json.loads(x) for x in DATA.read_text().splitlines()]


def figure(page: str, key: str) -> str:
    return page.split(f'data-plot="{key}"', 1)[1].split("</figure>", 1)[0]


def test_every_plot_is_drawn_from_the_real_log(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(DATA), "-o", str(out)]) == 0
    page = out.read_text()
    for key in PLOTS:
        assert 'class="mark"' in figure(page, key), key
    # Self-contained: no script, nothing fetched.
    assert "<script" not in page and "http" not in page.split("<body>", 1)[1]


def test_the_figures_are_the_logs() -> None:
    records, skipped = read_audit(DATA.read_text().splitlines())
    assert skipped == 0 and len(records) == len(raw())
    s = summarize(records)
    lines = raw()
    assert s.requests == len(lines)
    assert s.cost == pytest.approx(sum(r["cost_usd"] for r in lines))
    assert s.baseline == pytest.approx(sum(r["baseline_cost_usd"] for r in lines))
    assert s.baseline > s.cost > 0  # the economy target is cheaper than the frontier
    answered = Counter(
        (r["endpoint"], r["target"]) for r in lines if r["target"] and r["status"] == 200
    )
    assert {(e, t): n for e, parts in s.share.items() for t, n in parts.items()} == answered
    falls = Counter((f["target"], f["reason"]) for r in lines for f in r["fallbacks"])
    assert {(t, why): n for t, p in s.fallbacks.items() for why, n in p.items()} == falls
    assert sum(sum(p.values()) for p in s.bands.values()) == len(lines)


def test_filters_select_tenant_endpoint_and_time(tmp_path: Path) -> None:
    records, _ = read_audit(DATA.read_text().splitlines())
    chat = select(records, Filters(endpoint="chat"))
    assert chat and {r["endpoint"] for r in chat} == {"chat"}
    acme = select(records, Filters(tenant="acme"))
    assert acme and {r["tenant"] for r in acme} == {"acme"}
    middle = records[len(records) // 2]["time"]
    later = select(records, Filters(since=middle))
    assert later and all(r["time"] >= middle for r in later) and len(later) < len(records)
    out = tmp_path / "r.html"
    assert main(["report", str(DATA), "-o", str(out), "--tenant", "nobody"]) == 0
    page = out.read_text()
    assert "0 requests" in page and "no spend" in figure(page, "spend-tenant")


def test_time_buckets_fit_the_span() -> None:
    s = summarize(read_audit(DATA.read_text().splitlines())[0])
    assert s.bucket_s == 1 and 20 <= s.last - s.first <= 40  # a ~25 s run, 1 s buckets
    assert (bucket_size(30 * 86400), duration(86400)) == (86400, "1 d")
    assert (bucket_size(3600), duration(300)) == (300, "5 min")


def test_since_takes_a_duration_or_a_time() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-01-01T00:00:00", now=0) == parse_since("2026-01-01T00:00:00+00:00", 0)
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", now=0)


def test_bad_arguments_get_an_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["report", str(DATA), "--since", "soon", "-o", str(tmp_path / "r")]) == 2
    assert "--since" in capsys.readouterr().err


def test_client_written_names_are_escaped() -> None:
    line = dict(raw()[0], tenant="<script>alert(1)</script>")
    records, _ = read_audit([json.dumps(line), "INFO not an audit line"])
    s = summarize(records)
    page = render_html(s, Filters(), "x", 1)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert re.search(r"1 lines that were not audit records", page)
