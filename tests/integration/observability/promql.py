"""What a PromQL expression refers to: metric names, label matchers and grouping labels.

A small scanner for the expressions tokenyard ships (rules and dashboards), enough to
ask a real Prometheus whether each metric and label exists. It understands selectors,
matchers, range brackets, functions, aggregations with ``by``/``without`` before their
argument, and ``on``/``ignoring``/``group_left``/``group_right``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<range>\[[^\]]*\])
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    )""",
    re.X,
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", *GROUPING}


@dataclass
class Matcher:
    label: str
    op: str
    value: str


@dataclass
class Selector:
    metric: str
    matchers: list[Matcher] = field(default_factory=list)


@dataclass
class Grouping:
    keyword: str
    labels: list[str]
    metrics: list[str]
    """The metrics the labels must be found on: the aggregation's argument for by and
    without, both sides (the whole expression) for the vector-matching keywords."""


@dataclass
class Refs:
    selectors: list[Selector]
    groupings: list[Grouping]

    @property
    def metrics(self) -> list[str]:
        return sorted({s.metric for s in self.selectors})


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot scan {expr[pos:]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _close(tokens: list[tuple[str, str]], i: int) -> int:
    """Index of the parenthesis closing the one at ``i``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("op", "("):
            depth += 1
        elif tokens[j] == ("op", ")"):
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced parentheses")


def refs(expr: str) -> Refs:
    """Every selector and grouping of ``expr``."""
    toks = _tokens(expr)
    selectors: list[tuple[int, Selector]] = []
    groupings: list[tuple[str, list[str], tuple[int, int] | None]] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in GROUPING and nxt == ("op", "("):
            end = _close(toks, i + 1)
            labels = [t for k, t in toks[i + 2 : end] if k == "ident"]
            span = None
            if text in ("by", "without"):
                if end + 1 >= len(toks) or toks[end + 1] != ("op", "("):
                    raise ValueError(f"write `{text} (...)` before the argument: {expr}")
                span = (end + 1, _close(toks, end + 1))
            groupings.append((text, labels, span))
            i = end + 1
            continue
        if (
            kind == "ident"
            and text not in KEYWORDS
            and nxt != ("op", "(")
            and nxt[1] not in GROUPING
        ):
            sel = Selector(text)
            if nxt == ("op", "{"):
                j = i + 2
                while toks[j] != ("op", "}"):
                    if toks[j] == ("op", ","):
                        j += 1
                        continue
                    label, op, value = toks[j][1], toks[j + 1][1], toks[j + 2][1]
                    sel.matchers.append(Matcher(label, op, value[1:-1]))
                    j += 3
                selectors.append((i, sel))
                i = j + 1
                continue
            selectors.append((i, sel))
        i += 1
    everything = sorted({s.metric for _, s in selectors})
    out_groups = []
    for keyword, labels, span in groupings:
        if span is None:
            metrics = everything
        else:
            metrics = sorted({s.metric for at, s in selectors if span[0] < at < span[1]})
        out_groups.append(Grouping(keyword, labels, metrics))
    return Refs([s for _, s in selectors], out_groups)


def ends_in_filter(expr: str) -> bool:
    """True when the expression ends in a comparison with a number (``... == 1``): an
    empty answer then means "nothing crosses the threshold", not a missing metric."""
    return re.search(r"(==|!=|>=|<=|>|<)\s*[\d.eE+-]+\s*$", expr.strip()) is not None
