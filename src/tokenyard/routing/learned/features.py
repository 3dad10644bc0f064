"""Features of the learned difficulty classifier: hashed n-grams plus size and structure.

:class:`Featurizer` turns a request (a :class:`~tokenyard.routing.request.ParsedRequest`,
or anything with its fields) into a sparse vector: hashed word unigrams and bigrams and
(optionally) hashed character n-grams of the lower-cased prompt, each n-gram of a family
weighted 1/sqrt(n) for n in the family (so a long prompt does not outweigh a short one;
with ``binary``, the default, n counts distinct n-grams, each once), followed by a few
dense signals (prompt tokens, lines, digits, conversation depth, requested output). The
hashing is numpy-vectorised over the prompt's bytes (a polynomial hash modulo 2**64 with
prefix sums), deterministic across processes and Python versions, so training
(:mod:`.train`) and the router's scoring (:mod:`.model`) compute identical features.
Only the first ``head_bytes`` and last ``tail_bytes`` of a prompt are read: that bounds
the cost of scoring a very long prompt, and length has its own dense signal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenyard.routing.classifiers.base import ClassifiableRequest

IntArray = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]

_P = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier
_WORD_SEED = np.uint64(0x5BD1E995)
_BIGRAM_SEED = np.uint64(0xC2B2AE3D27D4EB4F)
_CHAR_SEED = np.uint64(0x27D4EB2F165667C5)

DENSE_NAMES = ("log_tokens", "log_lines", "digit_share", "upper_share", "depth", "log_output")


@dataclass(frozen=True)
class FeatureSettings:
    """The featurizer's settings, saved in the artifact (they define the weights' meaning)."""

    hash_bits: int = 18
    char_ngrams: tuple[int, ...] = ()
    word_bigrams: bool = True
    binary: bool = True
    """Count each distinct n-gram once (presence), instead of by its number of occurrences."""
    head_bytes: int = 4096
    tail_bytes: int = 2048

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["char_ngrams"] = list(self.char_ngrams)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSettings:
        known = {"hash_bits", "char_ngrams", "word_bigrams", "binary", "head_bytes", "tail_bytes"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown feature settings: {sorted(unknown)}")
        s = cls(
            hash_bits=int(d.get("hash_bits", 18)),
            char_ngrams=tuple(int(n) for n in d.get("char_ngrams", ())),
            word_bigrams=bool(d.get("word_bigrams", True)),
            binary=bool(d.get("binary", True)),
            head_bytes=int(d.get("head_bytes", 4096)),
            tail_bytes=int(d.get("tail_bytes", 2048)),
        )
        if not 8 <= s.hash_bits <= 24:
            raise ValueError("hash_bits must be between 8 and 24")
        if not all(1 <= n <= 8 for n in s.char_ngrams):
            raise ValueError("char_ngrams must be between 1 and 8")
        if s.head_bytes < 1 or s.tail_bytes < 0 or s.head_bytes + s.tail_bytes > 1 << 20:
            raise ValueError("head_bytes/tail_bytes out of range")
        return s

    @property
    def dim(self) -> int:
        return 1 << self.hash_bits


def _powers(n: int, base: np.uint64) -> U64:
    out = np.empty(n, dtype=np.uint64)
    out[0] = 1
    if n > 1:
        out[1:] = base
        with np.errstate(over="ignore"):
            np.cumprod(out[1:], out=out[1:])
    return out


@dataclass(frozen=True)
class SparseFeatures:
    """Hashed indices (with repeats) and their weights, plus the dense signals."""

    indices: IntArray
    values: npt.NDArray[np.float64]
    dense: npt.NDArray[np.float64]


class Featurizer:
    """Computes :class:`SparseFeatures` of a request under fixed :class:`FeatureSettings`."""

    def __init__(self, settings: FeatureSettings | None = None) -> None:
        self.settings = settings or FeatureSettings()
        n = self.settings.head_bytes + self.settings.tail_bytes + 1
        self._pow = _powers(n, _P)
        self._pow_inv = _powers(n, _P_INV)
        self._shift = np.uint64(64 - self.settings.hash_bits)

    def _bucket(self, h: U64, seed: np.uint64) -> IntArray:
        with np.errstate(over="ignore"):
            mixed = (h ^ seed) * _MIX
        return (mixed >> self._shift).astype(np.int32)

    def _family(self, fam: list[IntArray]) -> IntArray:
        idx = np.concatenate(fam)
        return np.unique(idx) if self.settings.binary else idx

    def _bytes(self, text: str) -> npt.NDArray[np.uint8]:
        """The bytes read: all of a short prompt, the head and tail of a long one."""
        raw = text.encode("utf-8", "replace")
        head, tail = self.settings.head_bytes, self.settings.tail_bytes
        if len(raw) > head + tail:
            raw = raw[:head] + b"\n" + (raw[-tail:] if tail else b"")
        return np.frombuffer(raw, dtype=np.uint8)

    def sparse(self, text: str) -> tuple[IntArray, npt.NDArray[np.float64]]:
        """Hashed word and character n-gram indices of ``text`` and their weights."""
        return self._sparse(self._bytes(text))

    def _sparse(self, raw: npt.NDArray[np.uint8]) -> tuple[IntArray, npt.NDArray[np.float64]]:
        if raw.size == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float64)
        upper = (raw >= 0x41) & (raw <= 0x5A)
        b = raw + upper.astype(np.uint8) * np.uint8(0x20)  # ASCII lower case
        parts: list[IntArray] = []
        weights: list[npt.NDArray[np.float64]] = []
        b64 = b.astype(np.uint64) + np.uint64(1)
        with np.errstate(over="ignore"):
            # G[i] = sum_{k<=i} b[k] P^-k, so sum_{k=s}^{e} b[k] P^(e-k) = P^e (G[e] - G[s-1]).
            g = np.cumsum(b64 * self._pow_inv[: b.size], dtype=np.uint64)
            g0 = np.concatenate((np.zeros(1, np.uint64), g))
            # Words: maximal runs of letters, digits and non-ASCII bytes.
            word = (b >= 0x80) | ((b >= 0x30) & (b <= 0x39)) | ((b >= 0x61) & (b <= 0x7A))
            edges = np.diff(np.concatenate(([False], word, [False])).astype(np.int8))
            starts = np.flatnonzero(edges == 1)
            ends = np.flatnonzero(edges == -1)
            if starts.size:
                wh: U64 = (g0[ends] - g0[starts]) * self._pow[ends - 1]
                fam = [self._bucket(wh, _WORD_SEED)]
                if self.settings.word_bigrams and wh.size > 1:
                    fam.append(self._bucket(wh[:-1] * _P ^ wh[1:], _BIGRAM_SEED))
                idx = self._family(fam)
                parts.append(idx)
                weights.append(np.full(idx.size, 1.0 / math.sqrt(idx.size)))
            fam = []
            for n in self.settings.char_ngrams:
                if b.size >= n:
                    # The hash of b[s:s + n] for every s, with slices instead of gathers.
                    ch: U64 = (g0[n:] - g0[:-n]) * self._pow[n - 1 : b.size]
                    fam.append(self._bucket(ch, _CHAR_SEED + np.uint64(n)))
            if fam:
                idx = self._family(fam)
                parts.append(idx)
                weights.append(np.full(idx.size, 1.0 / math.sqrt(idx.size)))
        if not parts:
            return np.zeros(0, np.int32), np.zeros(0, np.float64)
        return np.concatenate(parts), np.concatenate(weights)

    @staticmethod
    def _dense(parsed: ClassifiableRequest, raw: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """Size and structure signals, each scaled to about [0, 1]."""
        text = parsed.prompt_text
        n = max(1, raw.size)
        digits = int(np.count_nonzero((raw >= 0x30) & (raw <= 0x39)))
        upper = int(np.count_nonzero((raw >= 0x41) & (raw <= 0x5A)))
        user_turns = sum(1 for r in parsed.roles if r == "user")
        return np.array(
            [
                math.log1p(parsed.prompt_tokens) / math.log1p(4096),
                math.log1p(text.count("\n")) / math.log1p(256),
                digits / n,
                upper / n,
                min(1.0, max(0, user_turns - 1) / 7),
                math.log1p(parsed.max_tokens or 0) / math.log1p(8192),
            ],
            dtype=np.float64,
        )

    def features(self, parsed: ClassifiableRequest) -> SparseFeatures:
        """The request's features: the sparse n-grams and the dense signals."""
        raw = self._bytes(parsed.prompt_text)
        idx, val = self._sparse(raw)
        return SparseFeatures(indices=idx, values=val, dense=self._dense(parsed, raw))


__all__ = ["DENSE_NAMES", "FeatureSettings", "Featurizer", "SparseFeatures"]
