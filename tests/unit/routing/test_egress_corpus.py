"""Egress evasions and benign twins, run through the router's own decision path.

Each case is a whole OpenAI request body. :func:`reaches_external` takes it where the
router takes it (``parse_request`` -> ``resolve_tenant`` -> ``extract_features`` ->
``decide``) under a policy that sends ``internal`` data to an External provider first, and
says whether the provider is among the targets the router would try. The evasion corpus
(> 500 bodies, built from families below) must never reach it, except the cases named in
:data:`KNOWN_LIMITS`; the benign corpus must reach it (a bounded false-positive count).
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import struct
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import CatalogueEntry
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.decision import BackendState
from tokenyard.routing.errors import RouterError
from tokenyard.routing.features import extract_features
from tokenyard.routing.policy_engine import decide
from tokenyard.routing.request import RequestKind, parse_request
from tokenyard.routing.tenants import resolve_tenant

NOW = 1_700_000_000.0
CATALOGUE = {
    "provider": CatalogueEntry(
        name="provider", servedModelName="provider", kind="External", quality=1.0,
        inputPer1M=1.0, outputPer1M=1.0, dataClasses=["public", "internal"], ready=True,
    ),
    "local": CatalogueEntry(
        name="local", servedModelName="local", kind="InCluster", quality=0.5,
        inputPer1M=0.1, outputPer1M=0.1, ready=True,
    ),
}  # fmt: skip
SPEC = RoutingPolicySpec.model_validate(
    {
        "pool": "p",
        "strategy": "Ordered",
        "targets": [{"model": "provider"}, {"model": "local"}],
        "egress": {"allowedExternalDataClasses": ["public", "internal"]},
    }
)


def reaches_external(body: dict[str, Any], kind: RequestKind = "chat") -> bool:
    """Whether the router would send ``body`` to the External provider (the router's path)."""
    try:
        parsed = parse_request(body, {}, kind)
        tenant = resolve_tenant(parsed.headers, SPEC.tenants, {})
        features = extract_features(parsed, SPEC, "chat", tenant)
        decision = decide(
            features,
            SPEC,
            CATALOGUE,
            {n: BackendState() for n in CATALOGUE},
            StaticSpend(),
            NOW,
            random.Random(0),
        )
    except RouterError:
        return False
    return any(c.model == "provider" for c in decision.targets)


# --- The secrets ------------------------------------------------------------------------

EMAILS = ["jane.doe@example.com", "m.mustermann@beispiel.de", "li.wei+pay@corp-mail.cn"]
CARDS = [
    "4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
    "4012888888881881", "5105105105105100", "3530111333300000", "2223003122003222",
]  # fmt: skip
IBANS = [
    "DE89370400440532013000", "GB82WEST12345698765432", "FR1420041010050500013M02606",
    "NL91ABNA0417164300", "ES9121000418450200051332",
]  # fmt: skip
SSNS = ["123-45-6789", "219-09-9999"]


def _pem(key: Any, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def _pgp_secret_key_block() -> tuple[str, str]:
    """An OpenPGP v4 RSA secret-key packet (tag 5), armored, and its bare base64 body."""
    rng = random.Random(7)

    def mpi(bits: int) -> bytes:
        value = rng.getrandbits(bits) | (1 << (bits - 1))
        return struct.pack(">H", bits) + value.to_bytes((bits + 7) // 8, "big")

    public = b"\x04" + struct.pack(">I", 1_700_000_000) + b"\x01" + mpi(1024) + mpi(17)
    secret = b"\x00" + mpi(1024) + mpi(512) + mpi(512) + mpi(512)
    packet = public + secret + struct.pack(">H", sum(secret[1:]) % 65536)
    data = bytes([0xC5, 0xFF]) + struct.pack(">I", len(packet)) + packet
    body = base64.b64encode(data).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    block = f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{lines}\n-----END PGP PRIVATE KEY BLOCK-----"
    return block, lines


def _keys() -> dict[str, str]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pgp_block, _ = _pgp_secret_key_block()
    return {
        "rsa-pkcs1": _pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
        "rsa-pkcs8": _pem(rsa_key, serialization.PrivateFormat.PKCS8),
        "ec-sec1": _pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL),
        "ed25519-pkcs8": _pem(ed_key, serialization.PrivateFormat.PKCS8),
        "openssh": _pem(ed_key, serialization.PrivateFormat.OpenSSH),
        "pgp": pgp_block,
    }


KEYS = _keys()


def _body_of(pem: str) -> str:
    """The base64 body of an armored key without its BEGIN/END lines."""
    lines = [ln for ln in pem.strip().splitlines() if ln and not ln.startswith("-----")]
    return "\n".join(lines)


# --- Building blocks ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    body: dict[str, Any]
    kind: RequestKind = "chat"

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "p", "messages": [{"role": "user", "content": content}], **extra}


def chat_msgs(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "p", "messages": list(messages), **extra}


def sentences(secret: str) -> str:
    return f"Please update the record, the value is {secret} thanks"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def png_with_text(text: str) -> bytes:
    """A 1x1 PNG carrying ``text`` in a tEXt chunk (what image metadata hides)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"Comment\x00" + text.encode())
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def pii_values() -> Iterator[tuple[str, str]]:
    """(label, text) of each kind of secret, in its plain written form."""
    for e in EMAILS:
        yield f"email:{e}", e
    for c in CARDS[:4]:
        yield f"card:{c}", " ".join(c[i : i + 4] for i in range(0, len(c), 4))
    for i in IBANS[:3]:
        yield f"iban:{i}", i
    yield "ssn", SSNS[0]
    yield "key-header", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA"


# --- Families: fields the router forwards -------------------------------------------------


def field_placements(s: str) -> Iterator[tuple[str, dict[str, Any], RequestKind]]:
    """The PII ``s`` in every field of a request other than plain message content."""
    hi = {"role": "user", "content": "hello"}
    fn = {"name": "lookup", "description": "Look up a record", "parameters": {"type": "object"}}
    yield "user", chat("hello", user=s), "chat"
    yield "metadata-value", chat("hello", metadata={"note": s}), "chat"
    yield "metadata-key", chat("hello", metadata={s: "x"}), "chat"
    yield "message-name", chat_msgs({"role": "user", "content": "hello", "name": s}), "chat"
    yield (
        "tool-call-arguments",
        chat_msgs(
            hi,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": json.dumps({"q": s})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ),
        "chat",
    )
    yield (
        "tool-result",
        chat_msgs(
            hi, {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": s}]}
        ),
        "chat",
    )
    yield (
        "tools-description",
        chat("hello", tools=[{"type": "function", "function": {**fn, "description": s}}]),
        "chat",
    )
    yield (
        "tools-parameters",
        chat(
            "hello",
            tools=[
                {
                    "type": "function",
                    "function": {
                        **fn,
                        "parameters": {
                            "type": "object",
                            "properties": {"q": {"type": "string", "default": s}},
                        },
                    },
                }
            ],
        ),
        "chat",
    )
    yield (
        "tools-parameter-name",
        chat(
            "hello",
            tools=[
                {
                    "type": "function",
                    "function": {**fn, "parameters": {"type": "object", "properties": {s: {}}}},
                }
            ],
        ),
        "chat",
    )
    yield (
        "response-format-schema",
        chat(
            "hello",
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "r",
                    "schema": {"type": "object", "properties": {"a": {"enum": [s]}}},
                },
            },
        ),
        "chat",
    )
    yield "stop", chat("hello", stop=s), "chat"
    yield "stop-list", chat("hello", stop=["\n", s]), "chat"
    yield "prediction", chat("hello", prediction={"type": "content", "content": s}), "chat"
    yield (
        "prediction-parts",
        chat("hello", prediction={"type": "content", "content": [{"type": "text", "text": s}]}),
        "chat",
    )
    yield "input-text-part", chat([{"type": "input_text", "text": s}]), "chat"
    yield "unknown-part-type", chat([{"type": "note", "note": s}]), "chat"
    yield "unknown-message-key", chat_msgs({"role": "user", "content": "hi", "extra": s}), "chat"
    yield (
        "image-data-url",
        chat([{"type": "image_url", "image_url": {"url": "data:text/plain;base64," + b64(s)}}]),
        "chat",
    )
    yield (
        "image-url-query",
        chat(
            [
                {
                    "type": "image_url",
                    "image_url": {"url": "https://img.example/x.png?c=" + urllib.parse.quote(s)},
                }
            ]
        ),
        "chat",
    )
    png = base64.b64encode(png_with_text(s)).decode()
    yield (
        "image-png-metadata",
        chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]),
        "chat",
    )
    yield (
        "audio-part",
        chat([{"type": "input_audio", "input_audio": {"data": b64(s), "format": "wav"}}]),
        "chat",
    )
    yield (
        "file-part",
        chat([{"type": "file", "file": {"filename": "a.txt", "file_data": b64(s)}}]),
        "chat",
    )
    yield (
        "assistant-refusal",
        chat_msgs(hi, {"role": "assistant", "content": "no", "refusal": s}),
        "chat",
    )
    yield (
        "legacy-functions",
        chat("hello", functions=[{"name": "f", "description": s, "parameters": {}}]),
        "chat",
    )
    yield (
        "web-search-options",
        chat("hello", web_search_options={"user_location": {"approximate": {"city": s}}}),
        "chat",
    )
    yield "completion-suffix", {"model": "p", "prompt": "hello", "suffix": s}, "completion"
    yield "completion-prompt-list", {"model": "p", "prompt": ["hello", s]}, "completion"


def family_fields() -> Iterator[Case]:
    for label, s in pii_values():
        for where, body, kind in field_placements(s):
            yield Case(f"field:{where}", label, body, kind)
    for n, tokens in enumerate([[1, 2, 3], [[15339, 1917], [220]], list(range(50))]):
        yield Case("field:token-ids", str(n), {"model": "p", "prompt": tokens}, "completion")
    for c in CARDS[:4]:
        yield Case("field:metadata-number", c, chat("hi", metadata={"n": int(c)}))


# --- Families: formatting of card numbers -------------------------------------------------

_DIGIT_SETS = {
    "arabic-indic": "٠١٢٣٤٥٦٧٨٩",
    "persian": "۰۱۲۳۴۵۶۷۸۹",
    "devanagari": "०१२३४५६७८९",
    "full-width": "０１２３４５６７８９",
    "bengali": "০১২৩৪৫৬৭৮৯",
    "math-bold": "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",
}


def _groups(c: str, sep: str, size: int = 4) -> str:
    return sep.join(c[i : i + size] for i in range(0, len(c), size))


def _digits_in(digits: str) -> Callable[[str], str]:
    table = str.maketrans("0123456789", digits)
    return lambda c: c.translate(table)


CARD_FORMATS: dict[str, Callable[[str], str]] = {
    "dots": lambda c: _groups(c, "."),
    "newlines": lambda c: _groups(c, "\n"),
    "double-spaces": lambda c: _groups(c, "  "),
    "nbsp": lambda c: _groups(c, "\u00a0"),
    "zero-width-space": "\u200b".join,
    "thin-space": lambda c: _groups(c, "\u2009"),
    "slashes": lambda c: _groups(c, "/"),
    "underscores": lambda c: _groups(c, "_"),
    "mixed-separators": lambda c: c[:4] + "-" + c[4:8] + " " + c[8:12] + "." + c[12:],
    "pairs": lambda c: _groups(c, " ", 2),
    "every-digit-spaced": " ".join,
    "with-expiry-and-cvv": lambda c: _groups(c, " ") + " 12/29 123",
    "soft-hyphens": lambda c: _groups(c, "\u00ad"),
    "commas": lambda c: _groups(c, ","),
    **{f"digits-{name}": _digits_in(d) for name, d in _DIGIT_SETS.items()},
    "arabic-indic-spaced": lambda c: _groups(c, " ").translate(
        str.maketrans("0123456789", _DIGIT_SETS["arabic-indic"])
    ),
}


def family_card_formats() -> Iterator[Case]:
    for (fmt, f), card in itertools.product(CARD_FORMATS.items(), CARDS):
        yield Case(f"card:{fmt}", card, chat(sentences(f(card))))


# --- Families: IBANs, e-mail addresses, national ids ---------------------------------------

IBAN_FORMATS: dict[str, Callable[[str], str]] = {
    "lower-case": str.lower,
    "lower-grouped": lambda i: _groups(i.lower(), " "),
    "dashes": lambda i: _groups(i, "-"),
    "lower-dashes": lambda i: _groups(i.lower(), "-"),
    "dots": lambda i: _groups(i, "."),
    "newlines": lambda i: _groups(i, "\n"),
    "nbsp": lambda i: _groups(i, "\u00a0"),
    "full-width": lambda i: i.translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)}),
    "zero-width": "\u200b".join,
}


def family_ibans() -> Iterator[Case]:
    for (fmt, f), iban in itertools.product(IBAN_FORMATS.items(), IBANS):
        yield Case(f"iban:{fmt}", iban, chat(sentences(f(iban))))


def _email_formats(e: str) -> dict[str, str]:
    local, domain = e.split("@")
    words = f"{local} at {domain.replace('.', ' dot ')}"
    return {
        "full-width-at": f"{local}＠{domain}",
        "small-at": f"{local}﹫{domain}",
        "cyrillic-a": e.replace("a", "а", 1) if "a" in e else e.replace("e", "е", 1),
        "cyrillic-domain": f"{local}@{domain.replace('e', 'е').replace('o', 'о')}",
        "at-dot-words": words,
        "at-dot-upper": words.replace(" at ", " AT ").replace(" dot ", " DOT "),
        "bracketed": f"{local} [at] {domain.replace('.', ' [dot] ')}",
        "parenthesised": f"{local}(at){domain.replace('.', '(dot)')}",
        "url-encoded": urllib.parse.quote(e),
        "mailto-url": "mailto:" + urllib.parse.quote(e, safe=""),
        "html-entity": e.replace("@", "&#64;"),
        "html-named-entity": e.replace("@", "&commat;"),
        "double-url-encoded": e.replace("@", "%2540"),
        "zero-width": "\u200b".join(e),
        "spaced-at": f"{local} @ {domain}",
        "upper-case": e.upper(),
        "full-width-all": e.translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)}),
        # Still shaped like an address, so still caught:
        "rot13": e.translate(
            str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")
        ),
        "json-escaped-at": json.dumps(f"{local}＠{domain}"),
    }


IDN_EMAILS = ["anna@müller-bau.de", "иван@почта.рф", "user@xn--mller-kva.de", "ömer@örnek.com.tr"]


def family_emails() -> Iterator[Case]:
    for e in EMAILS:
        for fmt, text in _email_formats(e).items():
            yield Case(f"email:{fmt}", e, chat(sentences(text)))
    for e in IDN_EMAILS:
        yield Case("email:idn", e, chat(sentences(e)))


def family_national_ids() -> Iterator[Case]:
    for ssn in SSNS:
        digits = ssn.replace("-", "")
        yield Case("ssn:dots", ssn, chat(sentences(f"{digits[:3]}.{digits[3:5]}.{digits[5:]}")))
        yield Case(
            "ssn:arabic-indic",
            ssn,
            chat(
                sentences(ssn.translate(str.maketrans("0123456789", _DIGIT_SETS["arabic-indic"])))
            ),
        )
        yield Case("ssn:nbsp", ssn, chat(sentences(ssn.replace("-", "\u00a0"))))
    yield Case("nino:lower-case", "JG103759A", chat(sentences("jg103759a")))


# --- Families: private keys -------------------------------------------------------------


def family_keys() -> Iterator[Case]:
    for name, pem in KEYS.items():
        yield Case("key:pem", name, chat(pem))
        yield Case("key:body-without-header", name, chat(_body_of(pem)))
        yield Case("key:body-one-line", name, chat(_body_of(pem).replace("\n", "")))
        yield Case(
            "key:body-url-safe",
            name,
            chat(_body_of(pem).replace("\n", "").replace("+", "-").replace("/", "_")),
        )
        yield Case("key:header-lower-case", name, chat(pem.lower()[:80] + pem[80:]))
        yield Case(
            "key:header-no-dashes",
            name,
            chat(pem.replace("-----", "").splitlines()[0] + "\n" + "x"),
        )
        yield Case(
            "key:in-tool-arguments",
            name,
            chat_msgs(
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {
                                "name": "f",
                                "arguments": json.dumps({"k": _body_of(pem)}),
                            },
                        }
                    ],
                },
            ),
        )
    header = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
    yield Case("key:header-cyrillic", "pgp", chat(header.replace("P", "Р").replace("E", "Е")))
    yield Case("key:putty", "ppk", chat("PuTTY-User-Key-File-3: ssh-ed25519\nPrivate-Lines: 1"))


# --- Families: splitting and encoding ---------------------------------------------------


def family_splits() -> Iterator[Case]:
    for c in CARDS:
        spaced = _groups(c, " ")
        half = len(spaced) // 2
        yield Case(
            "split:card-two-messages",
            c,
            chat_msgs(
                {"role": "user", "content": spaced[:half]},
                {"role": "user", "content": spaced[half:]},
            ),
        )
        yield Case(
            "split:card-two-parts",
            c,
            chat([{"type": "text", "text": c[:8]}, {"type": "text", "text": c[8:]}]),
        )
        yield Case(
            "split:card-system-and-user",
            c,
            chat_msgs(
                {"role": "system", "content": f"first half {c[:6]}"},
                {"role": "user", "content": f"{c[6:]} is the rest"},
            ),
        )
    for e in EMAILS:
        cut = e.index("@") + 3
        yield Case(
            "split:email-two-messages",
            e,
            chat_msgs(
                {"role": "user", "content": e[:cut]}, {"role": "assistant", "content": e[cut:]}
            ),
        )
        yield Case(
            "split:email-two-parts",
            e,
            chat([{"type": "text", "text": e[:cut]}, {"type": "input_text", "text": e[cut:]}]),
        )
        yield Case(
            "split:email-user-and-metadata", e, chat("hello", user=e[:cut], metadata={"k": e[cut:]})
        )
    for i in IBANS:
        yield Case(
            "split:iban-two-parts",
            i,
            chat([{"type": "text", "text": i[:10]}, {"type": "text", "text": i[10:]}]),
        )
    for name, pem in KEYS.items():
        body = _body_of(pem)
        cut = len(body) // 2
        yield Case(
            "split:key-body-two-messages",
            name,
            chat_msgs(
                {"role": "user", "content": body[:cut]}, {"role": "user", "content": body[cut:]}
            ),
        )


def family_encodings() -> Iterator[Case]:
    for label, s in pii_values():
        yield Case("encoded:base64", label, chat(f"decode this: {b64(s)}"))
        yield Case(
            "encoded:base64-url-safe",
            label,
            chat(base64.urlsafe_b64encode(("\xff> " + s + " ?>").encode()).decode()),
        )
        yield Case(
            "encoded:base64-wrapped", label, chat("\n".join(textwrap_chunks(b64(sentences(s)), 20)))
        )
        yield Case("encoded:hex", label, chat(s.encode().hex()))
        yield Case("encoded:url", label, chat(urllib.parse.quote(sentences(s), safe="")))
        yield Case(
            "encoded:base64-in-url",
            label,
            chat("https://x.example/?d=" + urllib.parse.quote(b64(s), safe="")),
        )
        yield Case("encoded:html-entities", label, chat("".join(f"&#{ord(ch)};" for ch in s)))


def textwrap_chunks(s: str, n: int) -> list[str]:
    return [s[i : i + n] for i in range(0, len(s), n)]


# --- Family: two transformations stacked, on other secrets, in seeded random fields ----

STACK_CARDS = [
    "4000056655665556", "5200828282828210", "371449635398431", "6011000990139424",
    "3566002020360505", "2720992720992729",
]  # fmt: skip
STACK_IBANS = [
    "BE68539007547034", "IT60X0542811101000000123456", "CH9300762011623852957",
    "PL61109010140000071219812874", "AT611904300234573201",
]  # fmt: skip
STACK_EMAILS = ["a.b@c-d.io", "kunde.42@firma-beispiel.de", "x_y+z@mail.example.org"]
_FULL_WIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}
Transform = Callable[[str, random.Random], str]


def _t_digits(s: str, r: random.Random) -> str:
    return s.translate(str.maketrans("0123456789", r.choice(list(_DIGIT_SETS.values()))))


def _t_split(s: str, r: random.Random) -> str:
    sep = r.choice([".", "\n", "  ", "\u00a0", "\u200b", "-", " - ", "\u2009", "_"])
    k = r.choice([2, 3, 4, 5])
    return sep.join(s[i : i + k] for i in range(0, len(s), k))


def _t_words(s: str, r: random.Random) -> str:
    at = r.choice([" at ", " [at] ", "(at)", " AT "])
    dot = r.choice([" dot ", " [dot] ", "(dot)", " DOT "])
    return s.replace("@", at).replace(".", dot)


TRANSFORMS: dict[str, Transform] = {
    "digits": _t_digits,
    "split": _t_split,
    "zwnj": lambda s, r: "\u200c".join(s),
    "full-width": lambda s, r: s.translate(_FULL_WIDTH),
    "lower": lambda s, r: s.lower(),
    "upper": lambda s, r: s.upper(),
    "cyrillic": lambda s, r: s.translate(str.maketrans("aoeAE", "аоеАЕ")),
    "base64": lambda s, r: b64(s),
    "url": lambda s, r: urllib.parse.quote(s, safe=""),
    "html": lambda s, r: "".join(f"&#x{ord(c):x};" for c in s),
    "json": lambda s, r: json.dumps(s)[1:-1],
    "words": _t_words,
}
_CARD_STEPS = ["digits", "split", "zwnj", "full-width", "base64", "url", "html", "json"]
_IBAN_STEPS = ["split", "zwnj", "full-width", "lower", "base64", "url", "html", "cyrillic"]
_EMAIL_STEPS = ["words", "zwnj", "full-width", "upper", "cyrillic", "base64", "url", "html"]
_STACKS: dict[str, tuple[list[str], list[str]]] = {
    "card": (STACK_CARDS, _CARD_STEPS),
    "iban": (STACK_IBANS, _IBAN_STEPS),
    "email": (STACK_EMAILS, [*_EMAIL_STEPS, "json"]),
}
# Fields that carry their value base64-encoded already (a data URL, audio, a file).
_BASE64_FIELDS = frozenset({"image-data-url", "audio-part", "file-part", "image-png-metadata"})


def stacked_limit(first: str, second: str, where: str) -> str | None:
    """The documented limit a stacked evasion falls under, or None when it must be caught."""
    if "base64" in (first, second) and where in _BASE64_FIELDS:
        return "base64 of base64"
    if first in ("base64", "html") and second in ("split", "zwnj", "lower", "upper"):
        return "an encoding mangled after encoding"
    return None


def family_stacked() -> Iterator[Case]:
    r = random.Random(2026)
    for kind, (secrets, names) in _STACKS.items():
        for s, (first, second) in itertools.product(secrets, itertools.permutations(names, 2)):
            text = TRANSFORMS[second](TRANSFORMS[first](s, r), r)
            where, body, k = r.choice(list(field_placements(f"ref {text} end")))
            if stacked_limit(first, second, where) is None:
                yield Case(f"stacked:{kind}", f"{s}:{first}+{second}@{where}", body, k)


def family_known_limits() -> Iterator[Case]:
    """Evasions the scan does not undo; each is named in KNOWN_LIMITS and documented."""
    e, c = EMAILS[0], CARDS[0]
    yield Case("limit:base64-of-base64", "email", chat(b64(b64(e))))
    yield Case("limit:base64-of-base64", "card", chat(b64(b64(_groups(c, " ")))))
    yield Case("limit:base64-then-split", "email", chat(_groups(b64(e), ".", 4)))
    yield Case(
        "limit:escape-then-split",
        "card",
        chat(" ".join(f"&#{ord(ch)}; " for ch in c).replace("&#", "& #")),
    )
    yield Case(
        "limit:digits-as-words",
        "card",
        chat(
            " ".join(
                ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][
                    int(d)
                ]
                for d in c
            )
        ),
    )
    yield Case("limit:bare-at-word", "email", chat("jane.doe at example.com"))
    yield Case("limit:reversed", "email", chat(EMAILS[1][::-1]))


KNOWN_LIMITS = frozenset(
    {
        "limit:base64-of-base64/email",
        "limit:base64-of-base64/card",
        "limit:base64-then-split/email",
        "limit:escape-then-split/card",
        "limit:digits-as-words/card",
        "limit:bare-at-word/email",
        "limit:reversed/email",
    }
)


def evasion_corpus() -> list[Case]:
    return [
        *family_fields(),
        *family_card_formats(),
        *family_ibans(),
        *family_emails(),
        *family_national_ids(),
        *family_keys(),
        *family_splits(),
        *family_encodings(),
        *family_stacked(),
        *family_known_limits(),
    ]


CORPUS = evasion_corpus()


def test_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CORPUS) >= 500
    assert len({c.id for c in CORPUS}) == len(CORPUS)


def test_no_evasion_reaches_the_external_target_but_the_named_limits() -> None:
    reached = {c.id for c in CORPUS if reaches_external(c.body, c.kind)}
    by_family = Counter(c.id.split("/")[0] for c in CORPUS if c.id in reached)
    assert reached == KNOWN_LIMITS, dict(by_family)


@pytest.mark.parametrize("case_id", sorted(KNOWN_LIMITS))
def test_known_limits_are_named(case_id: str) -> None:
    """Each documented limit really does get through (so the docs stay true)."""
    case = next(c for c in CORPUS if c.id == case_id)
    assert reaches_external(case.body, case.kind)


# --- The benign corpus: the same shapes with nothing to find -----------------------------

BENIGN_TEXTS = [
    "What is the capital of France?",
    "Order #4521 shipped on 2024-03-15; tracking 1Z999AA10123456784 arrives in 3-5 days.",
    "Call +1 (415) 555-2671 or +44 20 7946 0958 between 09:00 and 17:30.",
    "Sum the list: 161,455, 17,400, 11,633, 104,321, 106,213 and 125,466.",
    "The matrix is [[1, 2, 3], [4, 5, 6], [7, 8, 9]] and its determinant is 0.",
    "Sudoku row: 5 3 0 0 7 0 0 0 0 6 0 0 1 9 5 0 0 0 0 9 8 0 0 0 0 6 0",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed the bug in parser.py",
    "uuid 123e4567-e89b-12d3-a456-426614174000 and sha256 "
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Use `x @ self.weight.T` for the projection, and @property for getters.",
    "Docs are at docs.python.org and the repo is at github.com/python/cpython.",
    "Look at the dot product of a and b at each step.",
    "ISBN 978-3-16-148410-0, population 8,045,311,447 in 2023.",
    "Pi is 3.14159265358979323846264338327950288419716939937510.",
    "The time series: 2019 2020 2021 2022 2023 2024 grew 12.5% per year.",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "Translate to Russian: the weather is nice. Ответ: погода хорошая.",
    "Write a haiku about autumn leaves.",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
    "Explain the difference between TCP and UDP in two sentences.",
    "Ошибка 404: страница не найдена. Попробуйте ещё раз через 5 минут.",
    "Version 1.2.3-rc.4+build.5678 released on 05.12.2026 at 23:59 UTC.",
    "Coordinates 40.712776, -74.005974 and 51.507351, -0.127758.",
    "The request id is req_8f14e45fceea167a5a36dedd4bea2543 (base64 aGVsbG8gd29ybGQ=).",
    "Meet me at 10 at the cafe; bring the dot matrix printer.",
    "Thanks @john. It was great, and @mary.\nit was fun too.",
    "The number of songs in a playlist is 300. If John has 20 such playlists, how long?",
    "'2002-10-27 01:00:00 EST-0500' and '2002-10-27 01:50:00 EDT-0400'",
    "0 | 29871 | 1.000000 | 29871 | 1.000000\n1 | 24083 | 0.000027 | 18585 | 0.959473",
    "See https://www.example.com/posts/activity-trAp-x/ and twenty-five-year-old MAX_TOKENS",
    "Archived at https://web.example/2012-02-27/10273315 on 2019.05.17 18273645.",
    "IBAN stands for International Bank Account Number, e.g. a country code and digits.",
]


def benign_corpus() -> list[Case]:
    cases = []
    for n, text in enumerate(BENIGN_TEXTS):
        cases.append(Case("benign:content", str(n), chat(text)))
        for where, body, kind in field_placements(text):
            cases.append(Case(f"benign:{where}", str(n), body, kind))
    return cases


BENIGN = benign_corpus()
# The benign cases the scan is known to flag: a documented, bounded cost of fail-closed
# decoding (see docs/routing.md, "Egress scanning").
BENIGN_FALSE_POSITIVES_MAX = 0


def test_benign_corpus_reaches_the_external_target() -> None:
    blocked = sorted(c.id for c in BENIGN if not reaches_external(c.body, c.kind))
    assert len(BENIGN) >= 500
    assert len(blocked) <= BENIGN_FALSE_POSITIVES_MAX, blocked
