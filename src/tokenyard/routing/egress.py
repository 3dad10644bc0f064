"""Every string a request would carry out of the cluster, scanned; used by feature extraction.

:func:`scan_body` walks the whole request body the router forwards (every field, known
or not: message content of any part type, names, tool calls and tool definitions,
``response_format``, ``stop``, ``prediction``, ``user``, ``metadata``, ``prompt``,
``suffix``, dictionary keys too) and runs the enabled detectors over:

- the message contents (string contents, every content part's text, completion prompts
  and ``suffix``) joined in order, once with line breaks and once, around each boundary,
  with nothing between them, so that data split across two messages or two parts is
  seen whole;
- every other string (and integer of nine digits or more) joined the same two ways;
- each of these folded (:func:`tokenyard.routing.textnorm.fold`) and decoded one level
  (:func:`tokenyard.routing.textnorm.decoded_views`).

What it cannot scan it says in :attr:`EgressScan.unscannable`, and the policy engine then
keeps the request off every External target: a token-id prompt, text past
:data:`MAX_SCAN_CHARS`, or an error in scanning (fail closed). Results name detectors,
never the matched text. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from tokenyard.api.policy import DetectorName
from tokenyard.routing.detectors import ALL_DETECTORS, DETECTOR_CLASSES, LOOSE_CHECKS, detect
from tokenyard.routing.textnorm import decoded_views, fold

# Total characters of forwarded strings scanned; a request with more is not scanned
# but kept in the cluster (far past every model's context anyway).
MAX_SCAN_CHARS = 2_000_000
# Characters either side of a boundary between two strings that are read joined: more
# than an address, a grouped card number or IBAN, or a PEM header needs.
SEAM_CHARS = 96
# Integers this long may be a card or account number written as a JSON number.
_MIN_NUMBER_DIGITS = 9
# Numeric fields that are not text: token ids and the sampling seed. A token-id prompt
# is refused for External targets instead (its text cannot be known).
_NUMERIC_FIELDS = frozenset({"logit_bias", "seed"})
# Keys whose string values are what the model reads as the conversation.
_CONTENT_KEYS = frozenset({"content", "text", "prompt", "suffix"})

UNSCANNABLE_TOKEN_IDS = "prompt is token ids, which cannot be scanned"
UNSCANNABLE_TOO_LONG = f"request text is longer than the {MAX_SCAN_CHARS:,} characters scanned"
UNSCANNABLE_ERROR = "scanning the request failed"


@dataclass(frozen=True)
class EgressScan:
    """What the egress scan of one request found."""

    found: Mapping[str, tuple[str, ...]]
    """Detectors that fired, by data class (names only, never the matched text)."""
    unscannable: tuple[str, ...] = ()
    """Why part of the request could not be scanned; non-empty keeps it in the cluster."""


def _is_token_ids(prompt: Any) -> bool:
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return True
        return all(isinstance(p, list) for p in prompt)
    return False


def forwarded_strings(body: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """The strings of a request body, in document order: ``(content, other, unscannable)``.

    ``content`` holds what the model reads as the conversation, ``other`` every other
    string, dictionary key and long integer. ``model`` is left out (the router replaces
    it with the target's name), and so are the numeric ``logit_bias`` and ``seed``.
    """
    content: list[str] = []
    other: list[str] = []
    unscannable: list[str] = []
    if _is_token_ids(body.get("prompt")):
        unscannable.append(UNSCANNABLE_TOKEN_IDS)
    # (key, value) pairs; an explicit stack, as a deeply nested body must not recurse.
    top = [(str(k), v) for k, v in body.items() if k not in _NUMERIC_FIELDS and k != "model"]
    other.extend(k for k, _ in top)
    stack: list[tuple[str, Any]] = top[::-1]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            (content if key in _CONTENT_KEYS else other).append(value)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if key != "prompt" and abs(value) >= 10 ** (_MIN_NUMBER_DIGITS - 1):
                other.append(str(value))
        elif isinstance(value, float):
            if value.is_integer() and abs(value) >= 10 ** (_MIN_NUMBER_DIGITS - 1):
                other.append(str(int(value)) if abs(value) < 1e20 else str(value))
        elif isinstance(value, dict):
            other.extend(str(k) for k in value)
            stack.extend((str(k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list | tuple):
            # List items inherit their key: prompt ["a", "b"] and stop ["x"] stay what they are.
            stack.extend((key, v) for v in reversed(value))
        else:
            other.append(str(value))
    return content, other, unscannable


def _views(parts: list[str]) -> list[str]:
    """The parts joined by line breaks, and the seams between them joined by nothing.

    A line break between two halves of a number or a base64 body is a separator the
    detectors read through; a word cut in two ("jane.doe@exa" + "mple.com") is only seen
    whole with nothing between the halves. The seams view holds the text within
    :data:`SEAM_CHARS` of every boundary, overlapping windows merged, so it is never
    longer than the parts themselves.
    """
    if len(parts) <= 1:
        return parts
    flat = "".join(parts)
    windows: list[list[int]] = []
    edge = 0
    for part in parts[:-1]:
        edge += len(part)
        lo, hi = max(0, edge - SEAM_CHARS), min(len(flat), edge + SEAM_CHARS)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = hi
        else:
            windows.append([lo, hi])
    # Four line breaks: more than any separator run the detectors read through.
    seams = "\n\n\n\n".join(flat[lo:hi] for lo, hi in windows)
    return ["\n".join(parts), seams]


def _scan_texts(texts: Iterable[str], enabled: frozenset[DetectorName]) -> set[str]:
    fired: set[str] = set()
    for text in texts:
        if not text:
            continue
        folded = fold(text)
        views = decoded_views(folded)
        # URL-encoded text is read decoded: escapes' hex digits run into numbers nearby.
        plain = unquote(text, errors="replace") if views.url_encoded else text
        fired.update(n for ns in detect(plain, enabled).values() for n in ns)
        if views.private_key:
            fired.add("private-key")
        decoded = [fold(t) for t in views.texts]
        candidates = decoded if views.url_encoded else [folded, *decoded]
        for name in enabled - fired:
            check = LOOSE_CHECKS[name]
            if any(check(t) for t in candidates):
                fired.add(name)
        if fired >= enabled:
            break
    return fired & enabled


def scan_body(
    body: Mapping[str, Any], enabled: Iterable[DetectorName] = ALL_DETECTORS
) -> EgressScan:
    """Scan every string the router would forward from ``body`` (see the module docstring).

    Never raises: an error while scanning is reported as unscannable, which keeps the
    request off External targets (fail closed).
    """
    names = frozenset(enabled)
    unknown = names - set(LOOSE_CHECKS)
    if unknown:
        raise ValueError(f"unknown detector {sorted(unknown)[0]!r}")
    if not names:
        return EgressScan(found={})
    try:
        content, other, unscannable = forwarded_strings(body)
        if sum(map(len, content)) + sum(map(len, other)) > MAX_SCAN_CHARS:
            return EgressScan(found={}, unscannable=(*unscannable, UNSCANNABLE_TOO_LONG))
        fired = _scan_texts([*_views(content), *_views(other)], names)
    except Exception:
        return EgressScan(found={}, unscannable=(UNSCANNABLE_ERROR,))
    found: dict[str, list[str]] = {}
    for name in sorted(fired):
        found.setdefault(DETECTOR_CLASSES[name], []).append(name)
    return EgressScan(
        found={k: tuple(v) for k, v in sorted(found.items())},
        unscannable=tuple(unscannable),
    )


__all__ = [
    "MAX_SCAN_CHARS",
    "UNSCANNABLE_ERROR",
    "UNSCANNABLE_TOKEN_IDS",
    "UNSCANNABLE_TOO_LONG",
    "EgressScan",
    "forwarded_strings",
    "scan_body",
]
