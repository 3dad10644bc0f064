"""The learned difficulty classifier the router loads: an artifact of weights, read safely.

A :class:`DifficultyModel` is a linear model over :mod:`.features` (hashed n-grams and
dense signals) followed by a calibration map. :meth:`DifficultyModel.score` answers the
:class:`~tokenyard.routing.classifiers.base.DifficultyClassifier` call with the
calibrated probability that the strong model answers well where the weak one does not
(the training label, see :mod:`.train`), so a higher score means more to gain from the
strong model. Scoring needs numpy only.

The artifact (:func:`DifficultyModel.to_json` / :func:`load_model`) is one JSON document:
format name and version, the model's own version (a hash of its content), feature
settings, int8-quantised weights (zlib-compressed, base64), the calibration table and
the quality table (which strong-call share each score threshold gave on held-out
prompts), and the training metadata. Loading parses JSON and decodes numbers: nothing in
the file is executed. It fits a ConfigMap (under 1 MiB).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenyard.routing.classifiers.base import ClassifiableRequest
from tokenyard.routing.learned.features import DENSE_NAMES, FeatureSettings, Featurizer

ARTIFACT_KIND = "tokenyard.dev/DifficultyModel"
FORMAT_VERSION = 1
MAX_ARTIFACT_BYTES = 1 << 20  # a ConfigMap's limit
ARTIFACT_KEY = "model.json"
"""The ConfigMap key that holds the artifact."""
SCORE_MEANING = (
    "(1 + g) / 2, where g is the expected gain in correctness from sending the prompt "
    "to the strong model instead of the weak one, calibrated on held-out prompts: "
    "0.5 means no expected gain, 1 means the strong model is sure to be right where "
    "the weak one is wrong"
)


class ArtifactError(ValueError):
    """An artifact that cannot be loaded, with what is wrong in it."""


@dataclass(frozen=True)
class QualityPoint:
    """On held-out prompts: scores at or above ``threshold`` sent to the strong model gave
    a strong share of ``strong_share`` and ``quality_of_strong`` of its quality."""

    threshold: float
    strong_share: float
    quality_of_strong: float
    pgr: float


@dataclass(frozen=True)
class LinearHead:
    """One logistic model over the features: int8 n-gram weights times ``scale``, the
    dense signals' weights and a bias."""

    weights: npt.NDArray[np.int8]
    scale: float
    dense: npt.NDArray[np.float64]
    bias: float

    def check(self, dim: int, what: str) -> None:
        if self.weights.shape != (dim,):
            raise ArtifactError(f"{what}: n-gram weights must have {dim} entries")
        if self.dense.shape != (len(DENSE_NAMES),):
            raise ArtifactError(f"{what}: dense weights must have {len(DENSE_NAMES)} entries")
        if not (math.isfinite(self.scale) and math.isfinite(self.bias)):
            raise ArtifactError(f"{what}: scale and bias must be finite")

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoding": "int8+zlib+base64",
            "scale": self.scale,
            "ngrams": base64.b64encode(zlib.compress(self.weights.tobytes(), 9)).decode(),
            "dense": dict(zip(DENSE_NAMES, map(float, self.dense), strict=True)),
            "bias": self.bias,
        }


@dataclass(frozen=True)
class DifficultyModel:
    """A trained difficulty model; :meth:`score` is the router's call.

    Two logistic heads estimate the probability that the strong model does better
    (``better``) and worse (``worse``) than the weak one; their difference, the expected
    gain in [-1, 1], is mapped by the calibration table to the score in [0, 1].
    """

    settings: FeatureSettings
    better: LinearHead
    worse: LinearHead
    calibration_raw: npt.NDArray[np.float64]
    """Raw expected gains (non-decreasing) ..."""
    calibration_prob: npt.NDArray[np.float64]
    """... and the score at each (non-decreasing, in [0, 1]; linear in between)."""
    label: str
    quality_table: tuple[QualityPoint, ...] = ()
    training: Mapping[str, Any] = field(default_factory=dict)
    _featurizer: Featurizer = field(init=False, repr=False, compare=False)
    _w: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)
    _dense: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.better.check(self.settings.dim, "better")
        self.worse.check(self.settings.dim, "worse")
        x, y = self.calibration_raw, self.calibration_prob
        if x.ndim != 1 or x.shape != y.shape or x.size < 2:
            raise ArtifactError("calibration needs two equal lists of at least 2 points")
        if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ArtifactError("calibration points must be non-decreasing")
        if not np.all((y >= 0) & (y <= 1)):
            raise ArtifactError("calibrated scores must be in [0, 1]")
        object.__setattr__(self, "_featurizer", Featurizer(self.settings))
        # Both heads in one gather: column 0 better, column 1 worse.
        w = np.stack(
            [
                self.better.weights.astype(np.float64) * self.better.scale,
                self.worse.weights.astype(np.float64) * self.worse.scale,
            ],
            axis=1,
        )
        object.__setattr__(self, "_w", w)
        object.__setattr__(self, "_dense", np.stack([self.better.dense, self.worse.dense]))

    def raw(self, parsed: ClassifiableRequest) -> float:
        """The expected gain before calibration: P(strong better) - P(strong worse)."""
        f = self._featurizer.features(parsed)
        z = f.values @ self._w[f.indices] + self._dense @ f.dense
        zb = max(-60.0, min(60.0, float(z[0]) + self.better.bias))
        zw = max(-60.0, min(60.0, float(z[1]) + self.worse.bias))
        return 1.0 / (1.0 + math.exp(-zb)) - 1.0 / (1.0 + math.exp(-zw))

    def calibrate(self, raw: float) -> float:
        return float(np.interp(raw, self.calibration_raw, self.calibration_prob))

    def score(self, parsed: ClassifiableRequest) -> float:
        """The calibrated score in [0, 1]: (1 + expected gain in correctness) / 2."""
        return round(self.calibrate(self.raw(parsed)), 6)

    def threshold_for_quality(self, fraction_of_strong: float) -> QualityPoint | None:
        """The highest threshold whose held-out quality reached the target, if any."""
        ok = [p for p in self.quality_table if p.quality_of_strong >= fraction_of_strong]
        return max(ok, key=lambda p: p.threshold) if ok else None

    @property
    def version(self) -> str:
        """A hash of the content (features, weights, calibration): equal models, equal
        versions; the training metadata does not count."""
        return content_version(self._content())

    def _content(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "features": self.settings.as_dict(),
            "heads": {"better": self.better.to_dict(), "worse": self.worse.to_dict()},
            "calibration": {
                "raw": [round(float(v), 6) for v in self.calibration_raw],
                "probability": [round(float(v), 6) for v in self.calibration_prob],
            },
        }

    def to_dict(self) -> dict[str, Any]:
        content = self._content()
        return {
            "kind": ARTIFACT_KIND,
            "formatVersion": FORMAT_VERSION,
            "version": content_version(content),
            "scoreMeaning": SCORE_MEANING,
            **content,
            "qualityTable": [
                {
                    "threshold": round(p.threshold, 6),
                    "strongShare": round(p.strong_share, 4),
                    "qualityOfStrong": round(p.quality_of_strong, 4),
                    "pgr": round(p.pgr, 4),
                }
                for p in self.quality_table
            ],
            "training": dict(self.training),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> int:
        """Write the artifact; returns its size in bytes (an error past a ConfigMap's)."""
        text = self.to_json()
        size = len(text.encode())
        if size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"artifact is {size} bytes, over a ConfigMap's 1 MiB")
        Path(path).write_text(text)
        return size


def content_version(content: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of the content's canonical JSON."""
    canonical = json.dumps(
        {k: content[k] for k in ("label", "features", "heads", "calibration")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _floats(value: Any, what: str) -> npt.NDArray[np.float64]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ArtifactError(f"{what} must be a list of numbers")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ArtifactError(f"{what} must be finite")
    return arr


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ArtifactError(f"{what} must be a finite number")
    return float(value)


def _head(doc: Mapping[str, Any], dim: int, what: str) -> LinearHead:
    if doc.get("encoding") != "int8+zlib+base64":
        raise ArtifactError(f"{what}.encoding must be int8+zlib+base64")
    # Bounded decompression: a hostile artifact cannot inflate past the weights' size.
    raw = zlib.decompressobj().decompress(base64.b64decode(doc["ngrams"], validate=True), dim + 1)
    dense = doc["dense"]
    return LinearHead(
        weights=np.frombuffer(raw, dtype=np.int8).copy(),
        scale=_number(doc["scale"], f"{what}.scale"),
        dense=np.asarray([_number(dense[k], f"{what}.dense.{k}") for k in DENSE_NAMES]),
        bias=_number(doc["bias"], f"{what}.bias"),
    )


def model_from_dict(doc: Mapping[str, Any]) -> DifficultyModel:
    """A model from a parsed artifact; an :class:`ArtifactError` saying what is wrong."""
    if not isinstance(doc, Mapping) or doc.get("kind") != ARTIFACT_KIND:
        raise ArtifactError(f"not a difficulty model: kind must be {ARTIFACT_KIND}")
    if doc.get("formatVersion") != FORMAT_VERSION:
        raise ArtifactError(
            f"formatVersion {doc.get('formatVersion')!r} is not supported (this router "
            f"reads {FORMAT_VERSION})"
        )
    try:
        settings = FeatureSettings.from_dict(dict(doc["features"]))
        heads = doc["heads"]
        better = _head(heads["better"], settings.dim, "heads.better")
        worse = _head(heads["worse"], settings.dim, "heads.worse")
        cal = doc["calibration"]
        table = tuple(
            QualityPoint(
                threshold=_number(p["threshold"], "qualityTable.threshold"),
                strong_share=_number(p["strongShare"], "qualityTable.strongShare"),
                quality_of_strong=_number(p["qualityOfStrong"], "qualityTable.qualityOfStrong"),
                pgr=_number(p["pgr"], "qualityTable.pgr"),
            )
            for p in doc.get("qualityTable", [])
        )
        model = DifficultyModel(
            settings=settings,
            better=better,
            worse=worse,
            calibration_raw=_floats(cal["raw"], "calibration.raw"),
            calibration_prob=_floats(cal["probability"], "calibration.probability"),
            label=str(doc.get("label", "")),
            quality_table=table,
            training=dict(doc.get("training") or {}),
        )
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, zlib.error, AttributeError) as e:
        raise ArtifactError(f"malformed artifact: {type(e).__name__}: {e}") from None
    if doc.get("version") != content_version(doc):
        raise ArtifactError(
            f"version {doc.get('version')!r} does not match the content ({model.version})"
        )
    return model


def load_model(source: str | Path | bytes) -> DifficultyModel:
    """A model from an artifact file's path, or from its bytes (a ConfigMap value)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"artifact is {len(data)} bytes, over 1 MiB")
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"artifact is not JSON: {e}") from None
    return model_from_dict(doc)


__all__ = [
    "ARTIFACT_KEY",
    "ARTIFACT_KIND",
    "FORMAT_VERSION",
    "MAX_ARTIFACT_BYTES",
    "ArtifactError",
    "DifficultyModel",
    "LinearHead",
    "QualityPoint",
    "load_model",
    "model_from_dict",
]
