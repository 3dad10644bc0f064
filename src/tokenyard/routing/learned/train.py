"""Training the learned difficulty classifier (scikit-learn; never imported by the router).

:func:`fit` featurises labelled prompts with :class:`~.features.Featurizer` (the code the
router scores with), fits two logistic regressions, one on "the strong model does
better than the weak one" (``max(0, strong - weak)``: with 0/1 outcomes, strong right
and weak wrong) and one on "it does worse" (``max(0, weak - strong)``), soft outcomes as
weighted rows; their difference is the expected gain from the strong model. Isotonic
regression on out-of-fold predictions calibrates it into the score, and the same
predictions record which strong share each score threshold gave on held-out prompts.
:func:`kfold_scores` gives the out-of-fold scores ``tokenyard eval-routing --kfold``
reports. Called by ``tokenyard train-router``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenyard.routing.classifiers.base import ClassifiableRequest
from tokenyard.routing.learned.features import DENSE_NAMES, FeatureSettings, Featurizer
from tokenyard.routing.learned.model import DifficultyModel, LinearHead, QualityPoint
from tokenyard.routing.quality.metrics import quality_curve

FloatArray = npt.NDArray[np.float64]

LABEL = "expected-gain"
DEFAULT_C = 1.0
CALIBRATION_FOLDS = 3


def design_matrix(featurizer: Featurizer, parsed: Sequence[ClassifiableRequest]) -> Any:
    """The CSR matrix of hashed n-grams with the dense signals appended as columns."""
    from scipy import sparse

    dim = featurizer.settings.dim
    indices: list[npt.NDArray[np.int32]] = []
    values: list[FloatArray] = []
    indptr = [0]
    for p in parsed:
        f = featurizer.features(p)
        idx = np.concatenate((f.indices, np.arange(dim, dim + len(DENSE_NAMES), dtype=np.int32)))
        indices.append(idx)
        values.append(np.concatenate((f.values, f.dense)))
        indptr.append(indptr[-1] + idx.size)
    x = sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.asarray(indptr)),
        shape=(len(parsed), dim + len(DENSE_NAMES)),
    )
    x.sum_duplicates()
    return x


def labels(weak: FloatArray, strong: FloatArray) -> tuple[FloatArray, FloatArray]:
    """How much better, and how much worse, the strong model did, each in [0, 1]."""
    return np.clip(strong - weak, 0.0, 1.0), np.clip(weak - strong, 0.0, 1.0)


class _Constant:
    """A fitted-regression stand-in for a label that never varies (from-state training
    where the strong target was never rated worse): the same probability everywhere."""

    def __init__(self, p: float, n_features: int) -> None:
        p = min(max(p, 1e-4), 1 - 1e-4)
        self.coef_ = np.zeros((1, n_features))
        self.intercept_ = np.array([np.log(p / (1 - p))])

    def predict_proba(self, x: Any) -> FloatArray:
        p = 1 / (1 + np.exp(-self.intercept_[0]))
        return np.tile([1 - p, p], (x.shape[0], 1))


def _fit_lr(
    x: Any,
    y: FloatArray,
    c: float,
    seed: int,
    weights: FloatArray | None = None,
    *,
    constant_ok: bool = False,
) -> Any:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    base = np.ones(y.size) if weights is None else np.asarray(weights, np.float64)
    hard = np.isin(y, (0.0, 1.0))
    if not hard.all():  # soft labels: one row per class, weighted by the label
        soft = ~hard
        x = sparse.vstack([x[hard], x[soft], x[soft]]).tocsr()
        w = np.concatenate([base[hard], base[soft] * y[soft], base[soft] * (1 - y[soft])])
        y = np.concatenate([y[hard], np.ones(soft.sum()), np.zeros(soft.sum())])
    else:
        w = base
    if np.unique(y).size < 2:
        if constant_ok:
            return _Constant(float(np.average(y, weights=w)), x.shape[1])
        raise ValueError(
            "training needs prompts where the strong model did better than the weak one, "
            "where it did worse, and where it did neither"
        )
    lr = LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=seed)
    lr.fit(x, y, sample_weight=w)
    return lr


def _predict(lr: Any, x: Any) -> FloatArray:
    out: FloatArray = lr.predict_proba(x)[:, 1].astype(np.float64)
    return out


def _folds(n: int, k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


class _Heads:
    """The two fitted regressions; ``predict`` gives the raw expected gain."""

    def __init__(  # noqa: PLR0917
        self,
        x: Any,
        weak: FloatArray,
        strong: FloatArray,
        c: float,
        seed: int,
        weights: FloatArray | None = None,
    ):
        better, worse = labels(weak, strong)
        ok = weights is not None  # from-state training: one side may never vary
        self.better = _fit_lr(x, better, c, seed, weights, constant_ok=ok)
        self.worse = _fit_lr(x, worse, c, seed, weights, constant_ok=ok)

    def predict(self, x: Any) -> FloatArray:
        return _predict(self.better, x) - _predict(self.worse, x)


def _raw_oof(
    x: Any,
    weak: FloatArray,
    strong: FloatArray,
    *,
    k: int,
    c: float,
    seed: int,
    weights: FloatArray | None = None,
) -> FloatArray:
    """Out-of-fold raw gains (each prompt scored by models that did not see it)."""
    out = np.zeros(weak.size)
    for test in _folds(weak.size, k, seed):
        train = np.setdiff1d(np.arange(weak.size), test)
        w = None if weights is None else weights[train]
        out[test] = _Heads(x[train], weak[train], strong[train], c, seed, w).predict(x[test])
    return out


def _calibration(
    raw: FloatArray, y: FloatArray, points: int = 32, weights: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        raw, y, sample_weight=weights
    )
    xs = np.unique(np.quantile(raw, np.linspace(0, 1, points)))
    if xs.size < 2:
        xs = np.array([0.0, 1.0])
    ys = np.maximum.accumulate(np.clip(iso.predict(xs), 0, 1))
    return xs, ys


def _quality_table(
    score: FloatArray, weak: FloatArray, strong: FloatArray, steps: int = 50
) -> tuple[QualityPoint, ...]:
    curve = quality_curve(score, weak, strong)
    gap = curve.gap
    table: list[QualityPoint] = []
    for q in np.linspace(0, 1, steps + 1)[1:-1]:
        t = float(np.quantile(score, q))
        if table and t == table[-1].threshold:
            continue  # calibration ties: one row per distinct threshold
        share = float(np.mean(score >= t))
        quality = curve.at(share)
        table.append(
            QualityPoint(
                threshold=t,
                strong_share=share,
                quality_of_strong=quality / curve.q_strong if curve.q_strong > 0 else 1.0,
                pgr=(quality - curve.q_weak) / gap if gap > 0 else 1.0,
            )
        )
    return tuple(table)


def _head(lr: Any, dim: int) -> LinearHead:
    coef = np.asarray(lr.coef_[0], dtype=np.float64)
    ngram = coef[:dim]
    scale = float(np.max(np.abs(ngram)) / 127) or 1.0
    return LinearHead(
        weights=np.clip(np.round(ngram / scale), -127, 127).astype(np.int8),
        scale=scale,
        dense=coef[dim:],
        bias=float(lr.intercept_[0]),
    )


def fit(
    parsed: Sequence[ClassifiableRequest],
    weak: FloatArray,
    strong: FloatArray,
    *,
    settings: FeatureSettings | None = None,
    c: float = DEFAULT_C,
    seed: int = 0,
    calibrate: bool = True,
    training: dict[str, Any] | None = None,
    weights: FloatArray | None = None,
) -> DifficultyModel:
    """Train a :class:`DifficultyModel` on labelled prompts.

    ``weights`` weight each prompt in the regressions and the calibration (from-state
    training: the inverse of the probability that the target which answered was chosen,
    :mod:`.from_state`); with them, an outcome that never varies gives a constant head
    instead of an error."""
    import sklearn

    featurizer = Featurizer(settings)
    x = design_matrix(featurizer, parsed)
    weak = np.asarray(weak, np.float64)
    strong = np.asarray(strong, np.float64)
    if weights is not None:
        weights = np.asarray(weights, np.float64)
    heads = _Heads(x, weak, strong, c, seed, weights)
    dim = featurizer.settings.dim
    if calibrate and weak.size >= 10 * CALIBRATION_FOLDS:
        oof = _raw_oof(x, weak, strong, k=CALIBRATION_FOLDS, c=c, seed=seed, weights=weights)
        # The score is (1 + expected gain) / 2, the gain fitted on held-out prompts.
        cal_x, cal_y = _calibration(oof, (1 + strong - weak) / 2, weights=weights)
        table = _quality_table(np.interp(oof, cal_x, cal_y), weak, strong)
    else:
        cal_x, cal_y, table = np.array([-1.0, 1.0]), np.array([0.0, 1.0]), ()
    meta = {
        "trainedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "prompts": int(weak.size),
        "strongBetter": float(labels(weak, strong)[0].sum()),
        "strongWorse": float(labels(weak, strong)[1].sum()),
        "model": "two logistic regressions (liblinear, L2): strong better, strong worse",
        "C": c,
        "seed": seed,
        "calibration": f"isotonic on {CALIBRATION_FOLDS}-fold out-of-fold predictions",
        "sklearn": sklearn.__version__,
        **(training or {}),
    }
    return DifficultyModel(
        settings=featurizer.settings,
        better=_head(heads.better, dim),
        worse=_head(heads.worse, dim),
        # Rounded as the artifact stores them, so a saved model scores exactly alike.
        calibration_raw=np.round(cal_x, 6),
        calibration_prob=np.round(cal_y, 6),
        label=LABEL,
        quality_table=table,
        training=meta,
    )


def kfold_scores(
    parsed: Sequence[ClassifiableRequest],
    weak: FloatArray,
    strong: FloatArray,
    *,
    k: int = 5,
    settings: FeatureSettings | None = None,
    c: float = DEFAULT_C,
    seed: int = 0,
) -> FloatArray:
    """Each prompt's score from a model trained on the other k-1 folds (through the
    artifact's own scoring path: quantised weights, calibration)."""
    if k < 2 or k > len(parsed):
        raise ValueError(f"--kfold must be between 2 and the number of prompts, got {k}")
    out = np.zeros(len(parsed))
    for test in _folds(len(parsed), k, seed):
        train = np.setdiff1d(np.arange(len(parsed)), test)
        model = fit(
            [parsed[i] for i in train],
            weak[train],
            strong[train],
            settings=settings,
            c=c,
            seed=seed,
            calibrate=False,  # ranking metrics need no calibration; it costs 3 more fits
        )
        out[test] = [model.score(parsed[i]) for i in test]
    return out


__all__ = ["LABEL", "design_matrix", "fit", "kfold_scores", "labels"]
