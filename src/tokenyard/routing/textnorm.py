"""Text folding and one-level decoding for egress scans; used by :mod:`tokenyard.routing.egress`.

Detectors see text the way a reader would, not the way it was typed: :func:`fold` applies
Unicode compatibility decomposition (NFKD: full-width ``＠`` and digits, ligatures, small
forms), drops format and combining characters (zero-width spaces and joiners, bidi
marks, soft hyphens, variation selectors, accents), turns every Unicode space into a
tab and line and paragraph separators into a space, every decimal digit of any script
(Arabic-Indic, Devanagari, ...) into its ASCII digit, and Cyrillic, Greek and other
Latin look-alike letters into the Latin letter they imitate. :func:`decoded_views` adds
what URL encoding, HTML character references and JSON escapes undo to, and what base64
and hex decode to, one level deep, and reports a private key body it finds among the
decoded bytes. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import unquote

# Latin look-alikes that NFKD leaves alone (Unicode's confusables, the letters a reader
# cannot tell from Latin in an address or a PEM header).
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ү": "y", "һ": "h", "ӏ": "l", "ɡ": "g", "ь": "b", "ꞁ": "l",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "Х": "X", "У": "Y", "Ѕ": "S", "І": "I", "Ј": "J", "Ү": "Y",
    "Һ": "H", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I", "З": "3", "б": "6",
    # Greek
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
    "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "α": "a", "ο": "o",
    "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "υ": "u", "χ": "x", "ε": "e", "τ": "t",
    # Armenian, Latin extensions, letter-like symbols
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "ı": "i", "ȷ": "j", "ɑ": "a",
    "ɩ": "i", "ʋ": "u", "ᴀ": "A", "ᴄ": "c", "ᴏ": "o", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w",
    "ᴢ": "z", "ǀ": "l", "ⅼ": "l",
}  # fmt: skip

# Blocks searched for digits, spaces and format characters: everything assigned below
# the supplementary ideographs plus the tag characters (U+E0000..).
_TABLE_RANGES = (range(0x80, 0x20000), range(0xE0000, 0xE1000))


@cache
def _fold_table() -> dict[int, str | None]:
    """Translation table for :func:`fold`, built once on first use (~0.2 s)."""
    table: dict[int, str | None] = {}
    for rng in _TABLE_RANGES:
        for cp in rng:
            ch = chr(cp)
            cat = unicodedata.category(ch)
            if cat in ("Cf", "Mn", "Me"):
                table[cp] = None
            elif cat in ("Zs", "Zl", "Zp"):
                table[cp] = " "
            elif cat == "Nd":
                table[cp] = str(unicodedata.digit(ch))
    # Hangul fillers and the combining grapheme joiner render as nothing.
    for cp in (0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0):
        table[cp] = None
    for src, dst in _HOMOGLYPHS.items():
        table[ord(src)] = dst
    return table


@cache
def _space_table() -> dict[int, str]:
    """Spaces other than U+0020 become tabs, before NFKD would make them plain spaces: they
    still separate, but a reader can tell them from the space that ends a sentence."""
    return {
        cp: "\t" for rng in _TABLE_RANGES for cp in rng if unicodedata.category(chr(cp)) == "Zs"
    }


def _fold_run(m: re.Match[str]) -> str:
    spaced = m.group(0).translate(_space_table())
    return unicodedata.normalize("NFKD", spaced).translate(_fold_table())


def fold(text: str) -> str:
    """``text`` as detectors should read it (see the module docstring). ASCII is unchanged."""
    if text.isascii():
        return text
    # Only the non-ASCII runs change (NFKD leaves ASCII alone); most prompts are mostly
    # ASCII, and translating every character through the table is the slow part.
    return _NON_ASCII.sub(_fold_run, text)


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z]{2,8});")
# A run of base64 (standard or URL-safe) of at least 16 characters; PEM and armored
# bodies are wrapped in lines, so a run continues over line breaks.
_B64 = re.compile(
    r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{12,}={0,2}"
    r"(?:[ \t]*(?:\r?\n|\\r?\\n)[ \t]*[A-Za-z0-9+/_-]{4,}={0,2})*"
)
# JSON string escapes, as in tool-call arguments (a JSON document inside a string).
_JSON_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|([nrtbf\"/\\]))")
_JSON_SIMPLE = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
    '"': '"',
    "/": "/",
    "\\": "\\",
}
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}){8,}(?![0-9A-Fa-f])")
_MIN_TEXT_RUN = 8
_READABLE = re.compile(r"[^\x00-\x1f\x7f]{8}")
_WS = re.compile(r"\s+|\\r|\\n")
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
# Textual escapes undone in turn: URL encoding of an HTML reference of a JSON escape.
_ESCAPE_ROUNDS = 3
# Decoding stops here: a request is far past any context window before its base64
# runs add up to this much.
MAX_DECODED_BYTES = 8_000_000


@dataclass
class Views:
    """What :func:`decoded_views` found in one text."""

    texts: list[str] = field(default_factory=list)
    """Decoded texts to scan besides the original (not decoded further)."""
    private_key: bool = False
    """A decoded run is a private key body (PKCS#1/#8, SEC1, OpenSSH or OpenPGP)."""
    url_encoded: bool = False
    """The text is URL-encoded: its decoded form (first of :attr:`texts`) replaces it, as
    the hex digits of escapes would run into neighbouring numbers."""


def _json_unescape(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return chr(int(m.group(1), 16))
        return _JSON_SIMPLE[m.group(2)]

    out = _JSON_ESCAPE.sub(sub, text)
    # \ud835\udfce and the like: UTF-16 surrogate pairs make one character.
    return out.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _der_private_key(data: bytes) -> bool:
    """A DER SEQUENCE spanning the whole buffer whose first element is INTEGER 0 or 1:
    the layout of PKCS#1, PKCS#8 and SEC1 private keys (public keys and certificates start
    with a SEQUENCE instead)."""
    if len(data) < 40 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        length, header = first, 2
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or len(data) < 2 + n:
            return False
        length, header = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
    # PEM bodies decode exactly; allow a few trailing bytes of padding or checksum.
    if not 0 <= len(data) - (header + length) <= 4:
        return False
    return data[header : header + 3] in (b"\x02\x01\x00", b"\x02\x01\x01")


def _pgp_secret_key(data: bytes) -> bool:
    """An OpenPGP Secret-Key or Secret-Subkey packet (tags 5 and 7) with a known version."""
    if len(data) < 40:
        return False
    b = data[0]
    if b & 0xC0 == 0xC0:  # new format
        if b & 0x3F not in (5, 7):
            return False
        l0 = data[1]
        offset = 2 if l0 < 192 else 3 if l0 < 224 else 6 if l0 == 255 else -1
    elif b & 0x80:  # old format
        if (b >> 2) & 0x0F not in (5, 7):
            return False
        offset = {0: 2, 1: 3, 2: 5}.get(b & 0x03, -1)
    else:
        return False
    return offset > 0 and len(data) > offset and data[offset] in (3, 4, 5, 6)


def is_private_key_body(data: bytes) -> bool:
    """Whether decoded bytes are a private key (any of the layouts above)."""
    return data.startswith(_OPENSSH_MAGIC) or _der_private_key(data) or _pgp_secret_key(data)


def _bytes_text(data: bytes) -> str | None:
    """Readable text in decoded bytes: all of it when it is UTF-8, else its readable runs."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Binary (an image, a PDF): its readable UTF-8 stretches, one a line.
        pieces = data.decode("utf-8", errors="replace").split("\ufffd")
        runs = [p for p in pieces if len(p) >= _MIN_TEXT_RUN and _READABLE.search(p)]
        return "\n".join(runs) if runs else None


def _b64_bytes(run: str) -> bytes | None:
    compact = _WS.sub("", run).rstrip("=").replace("-", "+").replace("_", "/")
    if len(compact) % 4 == 1:
        compact = compact[:-1]
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _looks_like_a_word(run: str) -> bool:
    """Words, not base64: letters in one case or capitalised, maybe joined by dashes or
    underscores ("twenty-five-year-old", "MAX_TOKENS"), or digits alone (twelve base64
    characters like that by chance: a few in 100,000)."""
    if run.isdigit():
        return True
    parts = run.replace("_", "-").split("-")
    return all(p == "" or (p.isalpha() and (p[1:].islower() or p.isupper())) for p in parts)


def _runs(text: str) -> Iterator[bytes]:
    for m in _B64.finditer(text):
        if _looks_like_a_word(m.group(0)):
            continue
        data = _b64_bytes(m.group(0))
        if data:
            yield data
    for m in _HEX.finditer(text):
        yield bytes.fromhex(m.group(0))


def decoded_views(text: str) -> Views:
    """Texts hidden in ``text`` one level deep, and whether a private key body is among them.

    URL encoding, HTML character references and JSON string escapes are undone first
    (each also inside the others); base64 and hex runs are then decoded from the original
    and from those, and the textual escapes undone in what they yield. Base64 and hex are
    decoded once: base64 of base64 is a documented limit.
    """
    views = Views()
    views.url_encoded = _PCT.search(text) is not None
    surfaces = _unescaped(text)
    views.texts.extend(surfaces[1:])
    budget = MAX_DECODED_BYTES
    for surface in surfaces:
        for data in _runs(surface):
            budget -= len(data)
            if budget < 0:
                raise ValueError("too much encoded data to scan")
            if is_private_key_body(data):
                views.private_key = True
            decoded = _bytes_text(data)
            if decoded:
                views.texts.extend(_unescaped(fold(decoded)))
    views.texts = list(dict.fromkeys(views.texts))
    return views


def _unescaped(text: str) -> list[str]:
    """``text`` and what undoing its textual escapes gives: URL encoding, HTML character
    references and JSON string escapes, each applied to the others' results too (an
    HTML reference inside URL encoding), up to :data:`_ESCAPE_ROUNDS` deep."""
    out = [text]
    frontier = [text]
    for _ in range(_ESCAPE_ROUNDS):
        found = []
        for t in frontier:
            if _PCT.search(t):
                found.append(unquote(t, errors="replace"))
            if "&" in t and _ENTITY.search(t):
                found.append(html.unescape(t))
            if "\\" in t and _JSON_ESCAPE.search(t):
                found.append(_json_unescape(t))
        frontier = [fold(t) for t in found if t not in out]
        if not frontier:
            break
        out.extend(frontier)
    return out


__all__ = [
    "MAX_DECODED_BYTES",
    "Views",
    "decoded_views",
    "fold",
    "is_private_key_body",
]
