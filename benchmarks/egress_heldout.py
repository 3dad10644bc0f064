"""Egress evasions the rules were not written against: fresh secrets, stacked transformations.

Run: ``.venv/bin/python benchmarks/egress_heldout.py [--seed 31337] [--per-secret 40]``

Each case takes a fresh secret (Luhn-valid card numbers drawn from the seed, IBANs and
addresses not in the unit corpus), applies one to three transformations drawn from a set
that includes some the unit corpus does not use (superscript and circled digits, tabs,
CRLF, ideographic spaces, Greek look-alikes, bidi marks, word joiners, mixed case), puts
the result in a field drawn at random, and sends it down the router's decision path (the
unit corpus's ``reaches_external``). It prints how many reach the External target, split
by the documented limit class each falls under (None: not a documented limit). Use a seed
nobody has looked at for a held-out figure; the seeds 9090 and 31337 were run once before
the last rule changes (see docs/routing.md).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from tokenyard.routing.detectors import luhn_valid

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "unit" / "routing" / "test_egress_corpus.py"

IBANS = [
    "LU280019400644750000", "PT50000201231234567890154", "HU42117730161111101800000000",
    "SK3112000000198742637541", "SA0380000000608010167519", "GB29NWBK60161331926819",
]  # fmt: skip
EMAILS = ["maria.garcia@correo.es", "j.smith1987@gmail.com", "support-team@acme.io"]
_FULL_WIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}
_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_CIRCLED = str.maketrans("0123456789", "⓪①②③④⑤⑥⑦⑧⑨")
_GREEK = str.maketrans("aoeiAEOKT", "αοεıΑΕΟΚΤ")
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "superscript": lambda s: s.translate(_SUP),
    "circled": lambda s: s.translate(_CIRCLED),
    "tabs": lambda s: "\t".join(s[i : i + 4] for i in range(0, len(s), 4)),
    "crlf": lambda s: "\r\n".join(s[i : i + 3] for i in range(0, len(s), 3)),
    "greek": lambda s: s.translate(_GREEK),
    "mixed-case": lambda s: "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(s)),
    "word-joiner": "\u2060".join,
    "bidi": lambda s: "\u202a" + "\u200e".join(s) + "\u202c",
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "hex": lambda s: s.encode().hex(),
    "percent-all": lambda s: "".join(f"%{b:02X}" for b in s.encode()),
    "html-decimal": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "paren-at": lambda s: s.replace("@", " (@) ").replace(".", " (.) "),
    "full-width": lambda s: s.translate(_FULL_WIDTH),
    "ideographic-space": lambda s: "\u3000".join(s[i : i + 4] for i in range(0, len(s), 4)),
}
_BINARY = {"base64url", "hex"}
_ESCAPES = {"percent-all", "html-decimal"}
_SPLITS = {"tabs", "crlf", "ideographic-space", "word-joiner", "bidi", "mixed-case"}
_BASE64_FIELDS = {"image-data-url", "audio-part", "file-part", "image-png-metadata"}


def limit_class(chain: list[str], where: str) -> str | None:
    """The documented limit a case falls under (docs/routing.md), or None."""
    binary = [i for i, n in enumerate(chain) if n in _BINARY]
    if binary and where in _BASE64_FIELDS:
        return "base64 or hex twice (the field is base64)"
    if len(binary) >= 2:
        return "base64 or hex twice"
    encoded = [i for i, n in enumerate(chain) if n in _BINARY | _ESCAPES]
    if encoded and any(n in _SPLITS for n in chain[encoded[0] + 1 :]):
        return "an encoding mangled after it was applied"
    return None


def _corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location("egress_corpus", CORPUS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["egress_corpus"] = module
    spec.loader.exec_module(module)
    return module


def _card(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument("--per-secret", type=int, default=40)
    args = ap.parse_args(argv)
    corpus = _corpus()
    rng = random.Random(args.seed)
    cards = [_card(rng, p, n) for p, n in (("4", 16), ("55", 16), ("37", 15), ("65", 16))]
    cases: list[tuple[str, list[str], str, dict[str, Any], str]] = []
    for label, secrets in (("card", cards), ("iban", IBANS), ("email", EMAILS)):
        for secret in secrets:
            for _ in range(args.per_secret):
                chain = rng.sample(list(TRANSFORMS), rng.choice([1, 2, 3]))
                text = secret
                for name in chain:
                    text = TRANSFORMS[name](text)
                where, body, kind = rng.choice(list(corpus.field_placements(f"see {text} ok")))
                cases.append((label, chain, where, body, kind))
    reached = [c for c in cases if corpus.reaches_external(c[3], c[4])]
    total = Counter(limit_class(c[1], c[2]) for c in cases)
    hit = Counter(limit_class(c[1], c[2]) for c in reached)
    print(f"seed {args.seed}: {len(reached)} of {len(cases)} reach the External target")
    for cls in sorted(total, key=str):
        print(f"  {cls or 'not a documented limit'}: {hit[cls]} of {total[cls]}")
    by_kind = Counter(c[0] for c in reached if limit_class(c[1], c[2]) is None)
    print(f"  not a documented limit, by secret: {dict(by_kind)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
