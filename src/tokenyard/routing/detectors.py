"""Built-in data-class detectors that scan prompt text; used by request feature extraction.

Each detector is a regular expression for candidates plus a checksum or rule check
that weeds out look-alikes (Luhn for card numbers, mod-97 for IBANs, the issuing
rules for SSNs and NINOs), so ordinary numbers do not mark a request confidential.
Results name the detectors that fired, never the matched text, so they are safe to log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from tokenyard.api.policy import DetectorName

DETECTOR_CLASSES: Mapping[str, str] = {
    "email": "pii",
    "national-id": "pii",
    "payment-card": "pci",
    "iban": "pci",
    "private-key": "secret",
}
"""The data class each detector marks a request with."""

ALL_DETECTORS: tuple[DetectorName, ...] = (
    "email",
    "payment-card",
    "iban",
    "national-id",
    "private-key",
)

# Prompts beyond this many characters are scanned only up to here: detection must stay
# cheap, and a request this long is far past every model's context anyway.
MAX_SCAN_CHARS = 2_000_000

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)

# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")

# Country code, two check digits, then the BBAN, optionally in groups of four.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")

# IBAN length by country (ISO 13616 registry); other countries must match exactly.
_IBAN_LENGTHS: Mapping[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

# US SSN written with dashes or spaces (bare 9-digit numbers are too common to flag).
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")

# UK National Insurance number: two prefix letters, six digits, suffix A-D.
_NINO = re.compile(
    r"(?<![A-Za-z0-9])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])"
    r"(?![A-Za-z0-9])"
)
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})

_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn check (card numbers)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """True when ``iban`` (no spaces) has its country's length and a valid mod-97 check."""
    iban = iban.upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = _IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """True for a US SSN the SSA could issue: area not 000, 666 or 9xx; no zero group/serial."""
    return (
        area not in ("000", "666")
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def _has_email(text: str) -> bool:
    return _EMAIL.search(text) is not None


def _has_card(text: str) -> bool:
    for m in _CARD.finditer(text):
        raw = m.group(0)
        # Grouping must use one separator kind; "1234-5678 9012" is not a card layout.
        if "-" in raw and " " in raw:
            continue
        digits = raw.replace(" ", "").replace("-", "")
        if len(set(digits)) == 1:  # 0000 0000 ... passes Luhn but is a placeholder
            continue
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return True
    return False


def _has_iban(text: str) -> bool:
    for m in _IBAN.finditer(text):
        compact = m.group(0).replace(" ", "")
        expected = _IBAN_LENGTHS.get(compact[:2])
        # The pattern may run into a following code-like word; the country's length
        # tells where the IBAN ends.
        if expected is not None and len(compact) > expected:
            compact = compact[:expected]
        if iban_valid(compact):
            return True
    return False


def _has_national_id(text: str) -> bool:
    for m in _SSN.finditer(text):
        if ssn_valid(m.group(1), m.group(3), m.group(4)):
            return True
    return any(m.group(1) not in _NINO_BAD_PREFIXES for m in _NINO.finditer(text))


def _has_private_key(text: str) -> bool:
    return _PRIVATE_KEY.search(text) is not None


# --- Checks on folded text (see tokenyard.routing.textnorm.fold): separators, case and
# spelled-out forms an evasion uses. They keep the checksums, so they add little noise.

# Characters that may sit between the digits of a number someone split up on purpose:
# spaces and line breaks of any kind (folded to " " or kept), dots, dashes, slashes,
# commas. Not colons, bars or semicolons: times ("01:00:00") and table cells ("29871 |
# 1.000000") would join unrelated numbers.
_SEP = r"[\s.\-_/\\,*·•~]"
_DIGIT_RUN = re.compile(rf"(?<!\d)\d(?:{_SEP}{{0,3}}\d)*")
_DIGIT_GROUP = re.compile(r"\d+")
_LIST_BREAK = re.compile(r"[,;]\s")
_ISO_DATE = re.compile(r"^(?:19|20)\d\d([-/.])(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])")
# Major industry identifiers of payment cards that carry personal data: 2 and 5
# Mastercard, 3 Amex/JCB/Diners, 4 Visa, 6 Discover/UnionPay/Maestro.
_CARD_MII = frozenset("23456")
# A longer run may be a card number followed by its expiry or code ("4111 ... 12/29 123");
# its groups are tried as windows, but not in long grids of short numbers (puzzles,
# tables): more than eight groups averaging under three digits.
_MAX_WINDOW_GROUPS = 8
_MIN_WINDOW_GROUP_LEN = 3

_IBAN_LOOSE = re.compile(
    rf"(?<![A-Za-z0-9])([A-Za-z]{_SEP}{{0,3}}[A-Za-z]){_SEP}{{0,3}}(\d{_SEP}{{0,3}}\d)"
    rf"((?:{_SEP}{{0,3}}[A-Za-z0-9]){{11,30}})"
)
_IBAN_STRIP = re.compile(_SEP)

_EMAIL_LOOSE = re.compile(
    r"(?<![\w.%+-])[\w.%+'-]{1,64}@(?:\w(?:[\w-]{0,61}\w)?\.)+"
    r"(?:[^\W\d_]{2,24}|xn--[a-z0-9-]{1,59})(?![\w-])",
    re.IGNORECASE,
)
_AT = r"(?:\s*@\s*|\s*[\[({<]\s*(?:at|@)\s*[\])}>]\s*|\s+at\s+)"
_DOT = r"(?:\s*\.\s*|\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*|\s+dot\s+)"
_LABEL = r"\w(?:[\w-]{0,61}\w)?"
_EMAIL_SPELLED = re.compile(
    rf"(?<![\w.%+-])([\w.%+'-]{{1,64}})({_AT})((?:{_LABEL}{_DOT})+)([^\W\d_]{{2,24}}|xn--[a-z0-9-]{{1,59}})(?![\w-])",
    re.IGNORECASE,
)
_SPELLED_HINT = re.compile(r"[\[({<]\s*(?:at|dot|@|\.)\s*[\])}>]|\bdot\b", re.IGNORECASE)
_AT_SIGN = re.compile("@")
_BRACKETED_AT = re.compile(r"[\[({<]\s*(?:at|@)\s*[\])}>]", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"\S\.[ \n]\S")
_MAX_SPACED_ATS = 200
_SPACED_LOCAL = re.compile(r"[\w.%+'-](?:\s{0,3}[\w.%+'-])*\s{0,3}$")
_SPACED_DOMAIN = re.compile(r"\s{0,3}\w(?:\s{0,3}[\w.-])*")
_NON_SPACE = re.compile(r"\S+")
_SPELLED_AT = re.compile(r"\s*[\[({<]\s*(?:at|@)\s*[\])}>]\s*|\s+at\s+", re.IGNORECASE)
_SPELLED_DOTS = re.compile(r"\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*|\s+dot\s+", re.IGNORECASE)
_SPELLED_DOT = re.compile(r"[\[({<]|\sdot\s", re.IGNORECASE)
# Generic TLDs an address written out in words is checked against (with every two-letter
# country code); "see x at foo dot bar" must not read as an address.
_GENERIC_TLDS = frozenset(
    {
        "com", "org", "net", "edu", "gov", "mil", "int", "info", "biz", "name", "pro",
        "mobi", "app", "dev", "io", "ai", "co", "me", "tv", "cloud", "online", "site",
        "xyz", "tech", "email", "mail", "shop", "store", "live", "blog", "page", "world",
        "club", "web",
    }
)  # fmt: skip

_SSN_LOOSE = re.compile(r"(?<![\d-])(\d{3})([-. \t])(\d{2})\2(\d{4})(?![\d-])")
_NINO_LOOSE = re.compile(
    r"(?<![A-Za-z0-9])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z])[ \t.-]?(\d{2})[ \t.-]?(\d{2})"
    r"[ \t.-]?(\d{2})[ \t.-]?([A-D])(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SIX_DIGITS = re.compile(r"\d\d[ \t.-]?\d\d[ \t.-]?\d\d")
_PRIVATE_KEY_LOOSE = re.compile(
    r"BEGIN[\s_-]*(?:[A-Z0-9]+[\s_-]+){0,3}PRIVATE[\s_-]*KEY|PuTTY-User-Key-File-\d+:"
    r"|Private-Lines:\s*\d+",
    re.IGNORECASE,
)


def _card_digits_ok(digits: str) -> bool:
    return (
        13 <= len(digits) <= 19
        and digits[0] in _CARD_MII
        and len(set(digits)) > 1
        and luhn_valid(digits)
    )


def _card_runs(text: str) -> Iterator[list[str]]:
    """Digit groups of each run; a comma or semicolon and a space end a run (a list of
    numbers, "161,455, 17,400"), a bare comma does not."""
    for m in _DIGIT_RUN.finditer(text):
        for part in _LIST_BREAK.split(m.group(0)):
            # An ISO date first ("2012-02-27/10273315") is a unit of its own; no card
            # number starts with 19 or 20.
            yield _DIGIT_GROUP.findall(_ISO_DATE.sub("", part, count=1))


def _has_card_loose(text: str) -> bool:
    for groups in _card_runs(text):
        total = sum(len(g) for g in groups)
        if total < 13:
            continue
        if total <= 19:
            if _card_digits_ok("".join(groups)):
                return True
            continue
        if len(groups) > _MAX_WINDOW_GROUPS and total < _MIN_WINDOW_GROUP_LEN * len(groups):
            continue
        for i in range(len(groups)):
            digits = ""
            for g in groups[i:]:
                digits += g
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and _card_digits_ok(digits):
                    return True
    return False


def _has_iban_loose(text: str) -> bool:
    for m in _IBAN_LOOSE.finditer(text):
        country = _IBAN_STRIP.sub("", m.group(1)).upper()
        expected = _IBAN_LENGTHS.get(country)
        if expected is None:
            continue
        # Groups of letters alone after the check digits: a bank code (up to four
        # letters before any digit) or an upper-case group of up to four; any other word
        # ends the number ("is 300. If John has 20 ...").
        compact = country + _IBAN_STRIP.sub("", m.group(2))
        groups = [g for g in _IBAN_STRIP.split(m.group(3)) if g]
        bank_code = 0
        seen_digit = False
        for group in groups:
            if any(c.isdigit() for c in group):
                seen_digit = True
            elif not seen_digit and bank_code + len(group) <= 4:
                bank_code += len(group)
            elif not (group.isupper() and len(group) <= 4):
                break
            compact += group.upper()
        if len(compact) >= expected and iban_valid(compact[:expected]):
            return True
    return False


def _tld_ok(tld: str) -> bool:
    low = tld.lower()
    return len(low) == 2 or low in _GENERIC_TLDS or low.startswith("xn--")


def _has_email_spaced(text: str, *, any_tld: bool = False) -> bool:
    """An address cut up by white space ("hele\tn_92\t@mai\tlbox\t.exa\tmple"): the
    pieces around each "@" are joined and the address may end at any piece. A sentence
    break (a dot, then a space or a line break) or a capitalised word as the TLD ends it
    ("@john. It was"), and the TLD must be a known one."""
    for n, at in enumerate(_AT_SIGN.finditer(text)):
        if n >= _MAX_SPACED_ATS:
            return False
        left = _SPACED_LOCAL.search(text, max(0, at.start() - 96), at.start())
        right = _SPACED_DOMAIN.match(text, at.end(), at.end() + 256)
        if left is None or right is None:
            continue
        domain = ""
        gap_start = 0
        for piece in _NON_SPACE.finditer(right.group(0)):
            gap = right.group(0)[gap_start : piece.start()]
            gap_start = piece.end()
            # A dot, then one space or line break: a sentence ended. Tabs, carriage
            # returns or longer runs are how addresses get cut up, not how prose flows.
            if domain.endswith(".") and gap in (" ", "\n"):
                break
            domain += piece.group(0)
            address = domain.rstrip(".-")
            label = address.rsplit(".", 1)
            tld_ok = (
                len(label) == 2
                and not label[1].istitle()
                and (_tld_ok(label[1]) or (any_tld and label[1].isalpha()))
            )
            if tld_ok and label[0] and _EMAIL_LOOSE.fullmatch("x@" + address):
                return True
    return False


def _has_email_loose(text: str) -> bool:
    if "@" in text and (_EMAIL_LOOSE.search(text) or _has_email_spaced(text)):
        return True
    # Written-out addresses need a written-out "@" or a bracketed or written-out dot.
    if "@" not in text and not _SPELLED_HINT.search(text):
        return False
    for m in _EMAIL_SPELLED.finditer(text):
        at, domain, tld = m.group(2), m.group(3), m.group(4)
        bracketed = any(ch in at for ch in "[({<")
        # A bracketed "(at)" says what it is: any TLD then, not only the known ones.
        if not (_tld_ok(tld) or bracketed) or tld.istitle() or _SENTENCE_BREAK.search(domain + tld):
            continue  # "@john. It was": a mention, then a sentence
        # "at" as a bare word must come with a spelled-out or bracketed dot: "docs at
        # python.org" is a place, "jane at example dot com" an address.
        bare_word = not any(ch in at for ch in "@[({<")
        if bare_word and not _SPELLED_DOT.search(domain):
            continue
        return True
    # Written out and cut up by white space as well: make the words symbols, then join.
    symbols = _SPELLED_AT.sub("@", _SPELLED_DOTS.sub(".", text))
    bracketed = _BRACKETED_AT.search(text) is not None
    return symbols != text and "@" in symbols and _has_email_spaced(symbols, any_tld=bracketed)


def _has_national_id_loose(text: str) -> bool:
    # Both need six digits in pairs or more close together; most text has none.
    if not _SIX_DIGITS.search(text):
        return False
    for m in _SSN_LOOSE.finditer(text):
        if ssn_valid(m.group(1), m.group(3), m.group(4)):
            return True
    return any(m.group(1).upper() not in _NINO_BAD_PREFIXES for m in _NINO_LOOSE.finditer(text))


def _has_private_key_loose(text: str) -> bool:
    low = text.lower()
    if "begin" not in low and "putty" not in low and "private-lines" not in low:
        return False
    return _PRIVATE_KEY_LOOSE.search(text) is not None


LOOSE_CHECKS: Mapping[str, Callable[[str], bool]] = {
    "email": _has_email_loose,
    "payment-card": _has_card_loose,
    "iban": _has_iban_loose,
    "national-id": _has_national_id_loose,
    "private-key": _has_private_key_loose,
}
"""Checks run on folded and decoded text by :mod:`tokenyard.routing.egress`."""

_CHECKS: Mapping[str, Callable[[str], bool]] = {
    "email": _has_email,
    "payment-card": _has_card,
    "iban": _has_iban,
    "national-id": _has_national_id,
    "private-key": _has_private_key,
}


def detect(text: str, enabled: Iterable[DetectorName] = ALL_DETECTORS) -> dict[str, list[str]]:
    """Data classes found in ``text`` by the enabled detectors: ``{class: [detector, ...]}``.

    Classes and detector names come back sorted; the matched text never does.
    """
    if not text:
        return {}
    text = text[:MAX_SCAN_CHARS]
    found: dict[str, list[str]] = {}
    for name in sorted(set(enabled)):
        check = _CHECKS.get(name)
        if check is None:
            raise ValueError(f"unknown detector {name!r}")
        if check(text):
            found.setdefault(DETECTOR_CLASSES[name], []).append(name)
    return dict(sorted(found.items()))
