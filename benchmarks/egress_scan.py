"""What the egress scan costs per request, and how often it flags benign prompts.

Run: ``.venv/bin/python benchmarks/egress_scan.py [--repeat 200] [--data DIR]
[--site-packages DIR]``

Latency: one 4,000-token request (by the router's own estimate), as a single user message
and as a 20-message chat with tools, metadata and a tool call, scanned by the old detector
(``detect`` over the joined message text, what the router ran before) and by the egress
scan (:func:`tokenyard.routing.egress.scan_body` over every forwarded string, folded and
decoded), in the same process; the ratio is new / old. The prompts are built from the
RouteLLM prompts in ``../shared/routing`` when present, else from seeded filler text.

False positives: the prompts of ``../shared/routing/*.csv`` split by a hash of the text
into a development half (the half looked at while writing the rules) and a held-out half,
each sent as one user message; the Python language reference as pydoc holds it; and the
long descriptions of the installed packages' metadata, paragraph by paragraph, counted by
detector, old beside new. Those descriptions hold real e-mail addresses of their authors:
an ``email`` hit there is a true positive, the other detectors' hits are worth reading.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from tokenyard.routing.detectors import ALL_DETECTORS, detect
from tokenyard.routing.egress import scan_body
from tokenyard.routing.request import estimate_tokens, parse_request

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "routing"
TARGET_TOKENS = 4_000


def _shared_prompts(data: Path) -> list[str]:
    prompts: list[str] = []
    for path in sorted(data.glob("*.csv")):
        with path.open(newline="") as fh:
            prompts += [row["prompt"] for row in csv.DictReader(fh) if row.get("prompt")]
    return prompts


def _filler(rng: random.Random) -> Iterator[str]:
    sentence = (
        "the model routes each request to a target by price quality and data class while "
        "the budget of 250 USD per month and 12.5 percent growth over 2024 and 2025 hold"
    )
    words = sentence.split(" ")
    while True:
        yield " ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) + "."


def _text_of_tokens(source: Iterator[str], tokens: int) -> list[str]:
    parts: list[str] = []
    total = 0
    for p in source:
        parts.append(p)
        total += estimate_tokens(p)
        if total >= tokens:
            return parts
    raise SystemExit("not enough prompt text for a 4,000-token request")


def _bodies(prompts: list[str]) -> dict[str, dict[str, Any]]:
    rng = random.Random(0)
    source: Iterator[str] = iter(rng.sample(prompts, len(prompts))) if prompts else _filler(rng)
    one = _text_of_tokens(source, TARGET_TOKENS)
    single = {"model": "m", "messages": [{"role": "user", "content": "\n\n".join(one)}]}
    parts = _text_of_tokens(source, TARGET_TOKENS - 300)
    step = max(1, len(parts) // 18)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful bot."}]
    for i in range(0, len(parts), step):
        role = "user" if (i // step) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": " ".join(parts[i : i + step])})
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"order": "A-1042", "n": 3}'},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": "c1", "content": "status: shipped"})
    chat = {
        "model": "m",
        "messages": messages,
        "user": "user-8841",
        "metadata": {"team": "search", "ticket": "OPS-2231"},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look up an order by its id.",
                    "parameters": {
                        "type": "object",
                        "properties": {"order": {"type": "string"}, "n": {"type": "integer"}},
                    },
                },
            }
        ],
    }
    return {"single message": single, "20-message chat + tools": chat}


def _time_pair(
    old: Callable[[], object], new: Callable[[], object], repeat: int
) -> tuple[float, float, float]:
    """Median seconds per call of ``old`` and ``new`` and the median of their per-round
    ratios; the two run in turn each round, so a busy machine slows both alike."""
    old()
    new()
    olds, news, ratios = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        old()
        t1 = time.perf_counter()
        new()
        t2 = time.perf_counter()
        olds.append(t1 - t0)
        news.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(olds), statistics.median(news), statistics.median(ratios)


def _latency(prompts: list[str], repeat: int) -> None:
    print(f"scan latency per request, median of {repeat} rounds (same process, interleaved)")
    print(f"{'request':<26}{'tokens':>8}{'old (ms)':>11}{'new (ms)':>11}{'new/old':>9}")
    for name, body in _bodies(prompts).items():
        parsed = parse_request(body, {}, "chat")
        old, new, ratio = _time_pair(
            lambda p=parsed: detect(p.prompt_text, ALL_DETECTORS),
            lambda b=body: scan_body(b, ALL_DETECTORS),
            repeat,
        )
        print(
            f"{name:<26}{parsed.prompt_tokens:>8}{old * 1e3:>11.2f}{new * 1e3:>11.2f}{ratio:>9.1f}"
        )


def _flags(text: str) -> tuple[set[str], set[str]]:
    old = {n for ns in detect(text, ALL_DETECTORS).values() for n in ns}
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    scan = scan_body(body, ALL_DETECTORS)
    new = {n for ns in scan.found.values() for n in ns}
    if scan.unscannable:
        new.add("unscannable")
    return old, new


def _false_positives(prompts: list[str]) -> None:
    print("\nbenign prompts flagged (one user message each; old detector -> egress scan)")
    halves: dict[str, list[str]] = {"development": [], "held-out": []}
    for p in prompts:
        half = "development" if hashlib.sha256(p.encode()).digest()[0] % 2 == 0 else "held-out"
        halves[half].append(p)
    for half, texts in halves.items():
        old_n = new_n = 0
        for t in texts:
            old, new = _flags(t)
            old_n += bool(old)
            new_n += bool(new)
        print(f"  shared/routing {half:<12} {len(texts):>6} prompts: {old_n} -> {new_n}")


def _descriptions(site: Path) -> list[str]:
    paragraphs: list[str] = []
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        text = meta.read_text(errors="replace")
        msg = HeaderParser().parsestr(text)
        payload = msg.get_payload()
        if isinstance(payload, str):
            paragraphs += [p.strip() for p in payload.split("\n\n") if len(p.strip()) > 40]
    return paragraphs


def _python_reference() -> None:
    from pydoc_data.topics import topics  # the Python language reference, as pydoc shows it

    paragraphs = [p.strip() for t in topics.values() for p in t.split("\n\n")]
    paragraphs = [p for p in paragraphs if len(p) > 40]
    old_n = new_n = 0
    for p in paragraphs:
        old, new = _flags(p)
        old_n += bool(old)
        new_n += bool(new)
    print(f"  Python reference (pydoc)    {len(paragraphs):>6} paragraphs: {old_n} -> {new_n}")


def _package_texts(site: Path) -> None:
    paragraphs = _descriptions(site)
    old_c: Counter[str] = Counter()
    new_c: Counter[str] = Counter()
    for p in paragraphs:
        old, new = _flags(p)
        old_c.update(old)
        new_c.update(new)
    print(f"\npackage descriptions in {site} ({len(paragraphs)} paragraphs), hits by detector")
    for name in sorted(set(old_c) | set(new_c)):
        print(f"  {name:<14} {old_c[name]:>5} -> {new_c[name]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--site-packages", type=Path, default=None)
    args = ap.parse_args(argv)
    prompts = _shared_prompts(args.data) if args.data.is_dir() else []
    t0 = time.perf_counter()
    scan_body({"messages": [{"role": "user", "content": "é"}]})
    print(f"one-off fold table build: {(time.perf_counter() - t0) * 1e3:.0f} ms")
    _latency(prompts, args.repeat)
    if prompts:
        _false_positives(prompts)
    _python_reference()
    site = args.site_packages or next(
        (Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()), None
    )
    if site is not None:
        _package_texts(site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
