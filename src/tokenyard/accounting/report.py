"""``tokenyard report``: one self-contained HTML page from the router's audit log.

Called by :func:`tokenyard.cli.main`. Reads audit lines (one JSON object per line, as
:class:`~tokenyard.accounting.audit.AuditLog` writes them; other lines, such as log
records around them on stdout, are skipped and counted), keeps those the filters select
and draws, as inline SVG with no script and nothing fetched: spend over time per tenant
and per model, each endpoint's share per target, fallbacks by target and reason, the
difficulty distribution and where each band went, and what the same traffic would have
cost on each endpoint's strongest target against what it cost. Everything a client
wrote (tenant names, targets) is escaped.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
BANDS = 5
"""Difficulty bands of equal width over [0, 1]."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


@dataclass
class Filters:
    """Which audit lines the report covers (None: all)."""

    since: float | None = None
    tenant: str | None = None
    endpoint: str | None = None


def parse_since(value: str, now: float) -> float:
    """``24h``/``7d``/``30m`` before ``now``, or an ISO 8601 time (UTC when no zone)."""
    m = _DURATION.match(value.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--since {value!r}: give a duration such as 24h or 7d, or an ISO 8601 time"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def read_audit(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Audit records (``time`` as Unix seconds) and the number of lines skipped."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        start = line.find("{")  # a logger may prefix the JSON object
        try:
            rec = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or "request_id" not in rec or "time" not in rec:
            skipped += 1
            continue
        try:
            rec["time"] = datetime.fromisoformat(str(rec["time"])).timestamp()
        except ValueError:
            skipped += 1
            continue
        records.append(rec)
    records.sort(key=lambda r: r["time"])
    return records, skipped


def select(records: Iterable[dict[str, Any]], f: Filters) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if (f.since is None or r["time"] >= f.since)
        and (f.tenant is None or r.get("tenant") == f.tenant)
        and (f.endpoint is None or r.get("endpoint") == f.endpoint)
    ]


@dataclass
class Summary:
    """What the page shows, computed from the selected records."""

    requests: int = 0
    answered: int = 0
    cost: float = 0.0
    baseline: float = 0.0
    """The same tokens on each endpoint's strongest target (lines that carry it)."""
    cost_with_baseline: float = 0.0
    """Spend of the lines that carry a baseline, the figure the baseline compares to."""
    without_baseline: int = 0
    tokens: int = 0
    first: float = 0.0
    last: float = 0.0
    bucket_s: int = 60
    spend_tenant: dict[str, dict[int, float]] = field(default_factory=dict)
    spend_model: dict[str, dict[int, float]] = field(default_factory=dict)
    share: dict[str, dict[str, int]] = field(default_factory=dict)
    fallbacks: dict[str, dict[str, int]] = field(default_factory=dict)
    bands: dict[str, dict[str, int]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)


def bucket_size(span_s: float, buckets: int = 40) -> int:
    """The smallest of 1s, 5s, 10s, 30s, 1m, 5m, 15m, 1h, 6h, 1d, 1w giving at most
    ``buckets`` buckets."""
    for b in _NICE_BUCKETS_S:
        if span_s / b <= buckets:
            return b
    return _NICE_BUCKETS_S[-1]


def duration(seconds: int) -> str:
    """``30 s``, ``15 min``, ``6 h``, ``1 d``: a bucket's length in words."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def band_label(d: float) -> str:
    i = min(BANDS - 1, max(0, math.floor(d * BANDS)))
    return f"{i / BANDS:.1f}-{(i + 1) / BANDS:.1f}"


def summarize(records: Sequence[dict[str, Any]]) -> Summary:
    s = Summary()
    if not records:
        return s
    s.first, s.last = records[0]["time"], records[-1]["time"]
    s.bucket_s = bucket_size(s.last - s.first)
    tenant_t: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    model_t: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    share: dict[str, Counter[str]] = defaultdict(Counter)
    falls: dict[str, Counter[str]] = defaultdict(Counter)
    bands: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: Counter[str] = Counter()
    for r in records:
        s.requests += 1
        cost = float(r.get("cost_usd") or 0.0)
        target = r.get("target")
        status = int(r.get("status") or 0)
        statuses[str(status)] += 1
        b = int((r["time"] - s.first) // s.bucket_s)
        tenant_t[str(r.get("tenant") or "-")][b] += cost
        if target:
            model_t[str(target)][b] += cost
        if target and 200 <= status < 300:
            s.answered += 1
            share[str(r.get("endpoint"))][str(target)] += 1
        s.cost += cost
        s.tokens += int(r.get("tokens_in") or 0) + int(r.get("tokens_out") or 0)
        if r.get("baseline_target"):
            s.baseline += float(r.get("baseline_cost_usd") or 0.0)
            s.cost_with_baseline += cost
        elif target:
            s.without_baseline += 1
        for fb in r.get("fallbacks") or []:
            falls[str(fb.get("target"))][str(fb.get("reason"))] += 1
        d = r.get("difficulty")
        if isinstance(d, int | float):
            bands[band_label(float(d))][str(target) if target else f"refused ({status})"] += 1
    s.spend_tenant = {k: dict(v) for k, v in tenant_t.items()}
    s.spend_model = {k: dict(v) for k, v in model_t.items()}
    s.share = {k: dict(v) for k, v in share.items()}
    s.fallbacks = {k: dict(v) for k, v in falls.items()}
    s.bands = {k: dict(bands[k]) for k in sorted(bands)}
    s.statuses = dict(statuses)
    return s


# --- SVG ------------------------------------------------------------------------------

W, H, PAD_L, PAD_B, PAD_T = 720, 260, 70, 30, 12


def _colors(names: Iterable[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(names))}


def _legend(colors: Mapping[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{html.escape(n)}</span>'
        for n, c in colors.items()
    )
    return f'<div class="legend">{items}</div>'


def _money(v: float) -> str:
    if v == 0:
        return "$0"
    return f"${v:,.2f}" if abs(v) >= 0.01 else f"${v:.2e}"


def line_chart(series: Mapping[str, Mapping[int, float]], s: Summary, unit: str) -> str:
    """One polyline per series over the summary's time buckets (USD per bucket)."""
    n = max(1, int((s.last - s.first) // s.bucket_s) + 1)
    top = max((v for pts in series.values() for v in pts.values()), default=0.0) or 1.0
    colors = _colors(series)
    plot_w, plot_h = W - PAD_L - 10, H - PAD_B - PAD_T

    def xy(i: int, v: float) -> str:
        x = PAD_L + (plot_w * i / max(1, n - 1))
        y = PAD_T + plot_h * (1 - v / top)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for name, pts in series.items():
        coords = " ".join(xy(i, pts.get(i, 0.0)) for i in range(n))
        lines.append(
            f'<polyline class="mark" fill="none" stroke="{colors[name]}" stroke-width="2" '
            f'points="{coords}"><title>{html.escape(name)}</title></polyline>'
        )
    start = datetime.fromtimestamp(s.first, UTC).strftime("%Y-%m-%d %H:%M:%S")
    end = datetime.fromtimestamp(s.first + (n - 1) * s.bucket_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
    axes = (
        f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{W - 10}" y2="{PAD_T + plot_h}" '
        'stroke="#888"/>'
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + plot_h}" stroke="#888"/>'
        f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" text-anchor="end">{_money(top)}</text>'
        f'<text x="{PAD_L - 6}" y="{PAD_T + plot_h}" text-anchor="end">$0</text>'
        f'<text x="{PAD_L}" y="{H - 8}">{start} UTC</text>'
        f'<text x="{W - 10}" y="{H - 8}" text-anchor="end">{end} UTC ({unit})</text>'
    )
    svg = f'<svg viewBox="0 0 {W} {H}" role="img">{axes}{"".join(lines)}</svg>'
    return svg + _legend(colors)


def bar_chart(rows: Mapping[str, Mapping[str, float]], fmt: str = "{:g}") -> str:
    """One horizontal stacked bar per row, its parts by series."""
    names = sorted({k for parts in rows.values() for k in parts})
    colors = _colors(names)
    top = max((sum(p.values()) for p in rows.values()), default=0.0) or 1.0
    bar_h, gap, label_w = 22, 8, 160
    height = max(1, len(rows)) * (bar_h + gap) + 10
    marks = []
    for i, (row, parts) in enumerate(rows.items()):
        y = 5 + i * (bar_h + gap)
        x = float(label_w)
        marks.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(row)}</text>'
        )
        for name in names:
            v = parts.get(name, 0.0)
            if v <= 0:
                continue
            w = (W - label_w - 90) * v / top
            marks.append(
                f'<rect class="mark" x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" '
                f'height="{bar_h}" fill="{colors[name]}"><title>{html.escape(name)}: '
                f"{fmt.format(v)}</title></rect>"
            )
            x += w
        total = fmt.format(sum(parts.values()))
        marks.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{total}</text>')
    svg = f'<svg viewBox="0 0 {W} {height}" role="img">{"".join(marks)}</svg>'
    return svg + _legend(colors)


def _shares(share: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    out = {}
    for endpoint, parts in sorted(share.items()):
        total = sum(parts.values()) or 1
        out[endpoint] = {t: 100.0 * n / total for t, n in parts.items()}
    return out


def _figure(key: str, title: str, body: str, note: str = "") -> str:
    p = f'<p class="note">{note}</p>' if note else ""
    return f'<figure class="plot" data-plot="{key}"><h2>{html.escape(title)}</h2>{body}{p}</figure>'


def _empty(what: str) -> str:
    return f'<p class="empty">{html.escape(what)}</p>'


def render_html(s: Summary, f: Filters, source: str, skipped: int) -> str:
    """The page: a headline with the cost against the strongest-target baseline, then
    one figure per plot (an empty one says why it is empty)."""
    scope = ", ".join(
        x
        for x in (
            f"since {datetime.fromtimestamp(f.since, UTC).isoformat()}" if f.since else "",
            f"tenant {f.tenant}" if f.tenant else "",
            f"endpoint {f.endpoint}" if f.endpoint else "",
        )
        if x
    )
    if s.cost_with_baseline or s.baseline:
        saved = s.baseline - s.cost_with_baseline
        pct = 100 * saved / s.baseline if s.baseline else 0.0
        headline = (
            f"Spent <b>{_money(s.cost_with_baseline)}</b>; the same traffic on each "
            f"endpoint's strongest target alone would have cost <b>{_money(s.baseline)}</b>: "
            f"routing saved <b>{_money(saved)}</b> ({pct:.1f}%)."
        )
    else:
        headline = "No answered request in these lines carries a baseline cost."
    if s.without_baseline:
        headline += (
            f" {s.without_baseline} answered lines carry no baseline (written before "
            "tokenyard counted it) and are left out of this comparison."
        )
    compare = bar_chart(
        {"what it cost": {"spent": s.cost_with_baseline}, "strongest target alone": {
            "baseline": s.baseline}},
        fmt="${:.6f}",
    )  # fmt: skip
    figures = [
        _figure("cost-vs-strongest", "Cost against the strongest target alone", compare),
        _figure(
            "spend-tenant",
            f"Spend per tenant (USD per {duration(s.bucket_s)})",
            line_chart(s.spend_tenant, s, "USD per bucket")
            if s.spend_tenant
            else _empty("no spend"),
        ),
        _figure(
            "spend-model",
            f"Spend per model (USD per {duration(s.bucket_s)})",
            line_chart(s.spend_model, s, "USD per bucket")
            if s.spend_model
            else _empty("no request reached a model"),
        ),
        _figure(
            "share",
            "Share of answered requests per target (%)",
            bar_chart(_shares(s.share), fmt="{:.1f}%") if s.share else _empty("no answers"),
        ),
        _figure(
            "fallbacks",
            "Fallbacks by target and reason",
            bar_chart({k: dict(v) for k, v in s.fallbacks.items()})
            if s.fallbacks
            else _empty("no request fell back"),
        ),
        _figure(
            "difficulty",
            "Difficulty bands and where each went",
            bar_chart({k: dict(v) for k, v in s.bands.items()})
            if s.bands
            else _empty("no line carries a difficulty"),
            note="Difficulty is the classifier's estimate (0 trivial, 1 needs the "
            "strongest model); each bar counts the band's requests per target.",
        ),
    ]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(s.statuses.items()))
    period = (
        f"{datetime.fromtimestamp(s.first, UTC).isoformat()} to "
        f"{datetime.fromtimestamp(s.last, UTC).isoformat()}"
        if s.requests
        else "no lines"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tokenyard report</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px auto; max-width: 780px; color: #222 }}
figure {{ margin: 24px 0; }} h2 {{ font-size: 16px; }} svg {{ width: 100%; font-size: 11px }}
.legend .key {{ margin-right: 12px; }} .legend i {{ display: inline-block; width: 10px;
height: 10px; margin-right: 4px; }} .note, .meta {{ color: #666; font-size: 12px }}
</style></head><body>
<h1>tokenyard report</h1>
<p class="meta">{html.escape(source)}: {s.requests} requests ({s.answered} answered),
{period}{"; " + html.escape(scope) if scope else ""}. Statuses: {html.escape(statuses)}.
{f"{skipped} lines that were not audit records were skipped." if skipped else ""}</p>
<p class="headline">{headline}</p>
{"".join(figures)}
<p class="note">Feedback scores: the audit log carries none, so none are shown.</p>
</body></html>
"""


def main(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        since = parse_since(args.since, now) if args.since else None
    except ValueError as exc:
        print(f"tokenyard report: {exc}", file=sys.stderr)
        return 2
    if args.audit == "-":
        lines: Iterable[str] = sys.stdin
        source = "stdin"
    else:
        path = Path(args.audit)
        if not path.is_file():
            print(f"tokenyard report: no such file: {path}", file=sys.stderr)
            return 2
        lines = path.read_text(errors="replace").splitlines()
        source = path.name
    records, skipped = read_audit(lines)
    f = Filters(since=since, tenant=args.tenant, endpoint=args.endpoint)
    selected = select(records, f)
    page = render_html(summarize(selected), f, source, skipped)
    out = Path(args.output)
    out.write_text(page)
    print(f"{out}: {len(selected)} of {len(records)} requests")
    return 0


__all__ = [
    "Filters",
    "Summary",
    "main",
    "parse_since",
    "read_audit",
    "render_html",
    "select",
    "summarize",
]
