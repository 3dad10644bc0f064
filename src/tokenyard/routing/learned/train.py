"""Training the learned difficulty classifier (scikit-learn; never imported by the router).

:func:`fit` featurises labelled prompts with :class:`~.features.Featurizer` (the code the
router scores with) and fits two logistic heads: the probability that the strong model
does better than the weak one (``max(0, strong - weak)``: with 0/1 outcomes, strong right
and weak wrong) and that it does worse (``max(0, weak - strong)``), soft outcomes as
weighted rows; their difference is the expected gain from the strong model. The heads
take one of two forms:

- ``two-heads``: two independent regressions, for sets where the prompts the strong
  model loses on are not simply the easy end of the ones it wins on;
- ``ordinal``: one direction shared by both heads with a threshold each (the gain is an
  ordered outcome, worse < same < better: a cumulative-logit model fitted as one
  regression on the prompts stacked once per threshold), which learns from every prompt
  where the two-heads form learns each direction from the rarer side alone.

Unless the caller fixes them, the form and the n-gram weighting (presence, or counts:
see :class:`~.features.FeatureSettings`) are chosen by cross-validation on the training
prompts: each of the four candidates scores every prompt from models trained on the
other folds, and the one with the highest APGR wins (ties go to presence and
two heads, the earlier defaults). Isotonic regression on the winner's out-of-fold
predictions calibrates it into the score, and the same predictions record which strong
share each score threshold gave on held-out prompts. :func:`kfold_scores` gives the
out-of-fold scores ``tokenyard eval-routing --kfold`` reports (the selection runs inside
each training fold). Called by ``tokenyard train-router``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tokenyard.routing.classifiers.base import ClassifiableRequest
from tokenyard.routing.learned.features import DENSE_NAMES, FeatureSettings, Featurizer
from tokenyard.routing.learned.model import DifficultyModel, LinearHead, QualityPoint
from tokenyard.routing.quality.metrics import apgr, quality_curve

FloatArray = npt.NDArray[np.float64]

LABEL = "expected-gain"
DEFAULT_C = 1.0
CV_FOLDS = 5
"""Folds of the cross-validation that selects the form and calibrates the score."""
MIN_CV_FOLDS = 3
"""Folds used instead when the set has fewer than 10 prompts per fold of CV_FOLDS."""

NEEDS_BOTH = (
    "training needs prompts where the strong model did better than the weak one, "
    "where it did worse, and where it did neither"
)
NEEDS_BETTER = (
    "training needs prompts where the strong model did better than the weak one and "
    "prompts where it did not"
)
"""What the ordinal form needs (the two-heads form needs NEEDS_BOTH)."""

Form = Literal["two-heads", "ordinal"]
FORMS: tuple[Form, ...] = ("two-heads", "ordinal")


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
    intercept: bool = True,
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
        raise ValueError(NEEDS_BOTH)
    lr = LogisticRegression(
        C=c, solver="liblinear", max_iter=1000, random_state=seed, fit_intercept=intercept
    )
    lr.fit(x, y, sample_weight=w)
    return lr


def _predict(lr: Any, x: Any) -> FloatArray:
    out: FloatArray = lr.predict_proba(x)[:, 1].astype(np.float64)
    return out


def _folds(n: int, k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


class _Linear:
    """One head of the ordinal form, shaped like a fitted regression (``coef_``,
    ``intercept_``, ``predict_proba``) so both forms save and score alike."""

    def __init__(self, coef: FloatArray, bias: float) -> None:
        self.coef_ = coef.reshape(1, -1)
        self.intercept_ = np.array([bias])

    def predict_proba(self, x: Any) -> FloatArray:
        z = np.clip(np.asarray(x @ self.coef_[0]).ravel() + self.intercept_[0], -60, 60)
        p = 1 / (1 + np.exp(-z))
        return np.stack([1 - p, p], axis=1)


def _ordinal(
    x: Any,
    better: FloatArray,
    worse: FloatArray,
    *,
    c: float,
    seed: int,
    weights: FloatArray | None,
) -> tuple[_Linear, _Linear]:
    """The cumulative-logit heads: P(gain >= 0) = s(w.x + t1), P(gain > 0) = s(w.x + t2).

    One regression on the prompts stacked twice, each copy with an indicator column for
    its threshold (labels "not worse" and "better"); C is halved because every prompt
    appears twice, so the penalty per prompt matches the two-heads form."""
    from scipy import sparse

    if np.ptp(better) == 0:  # the stacked labels would vary, but nothing would rank prompts
        raise ValueError(NEEDS_BETTER)
    n = better.size
    ones = np.ones((n, 1))
    zeros = np.zeros((n, 1))
    stacked = sparse.vstack(
        [sparse.hstack([x, ones, zeros]), sparse.hstack([x, zeros, ones])]
    ).tocsr()
    y = np.concatenate([1 - worse, better])
    w = None if weights is None else np.concatenate([weights, weights])
    lr = _fit_lr(stacked, y, c / 2, seed, w, intercept=False)
    coef = np.asarray(lr.coef_[0], dtype=np.float64)
    direction, t1, t2 = coef[:-2], float(coef[-2]), float(coef[-1])
    # P(better) = s(w.x + t2); P(worse) = 1 - s(w.x + t1) = s(-w.x - t1).
    return _Linear(direction, t2), _Linear(-direction, -t1)


class _Heads:
    """The two fitted heads of either form; ``predict`` gives the raw expected gain."""

    def __init__(  # noqa: PLR0917
        self,
        x: Any,
        weak: FloatArray,
        strong: FloatArray,
        c: float,
        seed: int,
        weights: FloatArray | None = None,
        form: Form = "two-heads",
    ):
        better, worse = labels(weak, strong)
        if form == "ordinal":
            self.better, self.worse = _ordinal(x, better, worse, c=c, seed=seed, weights=weights)
            return
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
    form: Form = "two-heads",
) -> FloatArray:
    """Out-of-fold raw gains (each prompt scored by models that did not see it)."""
    out = np.zeros(weak.size)
    for test in _folds(weak.size, k, seed):
        train = np.setdiff1d(np.arange(weak.size), test)
        w = None if weights is None else weights[train]
        heads = _Heads(x[train], weak[train], strong[train], c, seed, w, form)
        out[test] = heads.predict(x[test])
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


@dataclass(frozen=True)
class Candidate:
    """One n-gram weighting and head form the selection tries, with its cross-validated
    APGR (None when the training labels show no gap, or when it could not be fitted)."""

    settings: FeatureSettings
    form: Form
    apgr: float | None = None

    @property
    def weighting(self) -> str:
        return "presence" if self.settings.binary else "counts"

    def as_dict(self) -> dict[str, Any]:
        score = None if self.apgr is None else round(self.apgr, 4)
        return {"features": self.weighting, "form": self.form, "apgr": score}


def candidates(settings: FeatureSettings | None, form: Form | None) -> list[Candidate]:
    """What the selection tries: both n-gram weightings unless ``settings`` fixes the
    features, both forms unless ``form`` fixes it; the defaults first (they win ties)."""
    if form is not None and form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    base = settings or FeatureSettings()
    weightings = [base] if settings is not None else [base, replace(base, binary=False)]
    forms: Sequence[Form] = [form] if form is not None else FORMS
    return [Candidate(w, f) for w in weightings for f in forms]


def fixed_choices(features: str, form: str) -> tuple[FeatureSettings | None, Form | None]:
    """The ``--features`` and ``--form`` options as :func:`fit`'s arguments ("auto": None,
    chosen by the selection)."""
    if features not in {"auto", "presence", "counts"}:
        raise ValueError(f"features must be auto, presence or counts, got {features!r}")
    if form != "auto" and form not in FORMS:
        raise ValueError(f"form must be auto or one of {', '.join(FORMS)}, got {form!r}")
    settings = None if features == "auto" else FeatureSettings(binary=features == "presence")
    return settings, next((f for f in FORMS if f == form), None)


def cv_folds(n: int) -> int:
    """Folds of the selection and calibration for ``n`` prompts (0: too few for either)."""
    if n >= 10 * CV_FOLDS:
        return CV_FOLDS
    return MIN_CV_FOLDS if n >= 10 * MIN_CV_FOLDS else 0


def _select(
    parsed: Sequence[ClassifiableRequest],
    weak: FloatArray,
    strong: FloatArray,
    tried: list[Candidate],
    *,
    k: int,
    c: float,
    seed: int,
    weights: FloatArray | None,
) -> tuple[list[Candidate], int, dict[FeatureSettings, Any], dict[int, FloatArray]]:
    """Each candidate's out-of-fold gains and APGR; the index of the best one."""
    matrices: dict[FeatureSettings, Any] = {}
    oofs: dict[int, FloatArray] = {}
    scored: list[Candidate] = []
    failed: ValueError | None = None
    for i, cand in enumerate(tried):
        if cand.settings not in matrices:
            matrices[cand.settings] = design_matrix(Featurizer(cand.settings), parsed)
        score = None
        if k:
            try:
                oof = _raw_oof(
                    matrices[cand.settings], weak, strong,
                    k=k, c=c, seed=seed, weights=weights, form=cand.form,
                )  # fmt: skip
            except ValueError as e:  # a fold without both outcomes: this form cannot fit
                failed = e
                scored.append(cand)
                continue
            oofs[i] = oof
            score = apgr(quality_curve(oof, weak, strong, weights))
        scored.append(replace(cand, apgr=score))
    if not oofs and failed is not None and len(tried) > 1:
        raise failed
    fitted = [i for i in range(len(tried)) if i in oofs] or [0]

    def rank(i: int) -> float:
        score = scored[i].apgr
        return -np.inf if score is None else score

    best = max(fitted, key=rank)
    return scored, best, matrices, oofs


def fit(
    parsed: Sequence[ClassifiableRequest],
    weak: FloatArray,
    strong: FloatArray,
    *,
    settings: FeatureSettings | None = None,
    form: Form | None = None,
    c: float = DEFAULT_C,
    seed: int = 0,
    calibrate: bool = True,
    training: dict[str, Any] | None = None,
    weights: FloatArray | None = None,
) -> DifficultyModel:
    """Train a :class:`DifficultyModel` on labelled prompts.

    ``settings`` and ``form`` fix the features and the head form; left as None, each is
    chosen by cross-validated APGR on these prompts (see the module docstring).
    ``weights`` weight each prompt in the regressions, the selection and the calibration
    (from-state training: the inverse of the probability that the target which answered
    was chosen, :mod:`.from_state`); with them, an outcome that never varies gives a
    constant head instead of an error."""
    import sklearn

    weak = np.asarray(weak, np.float64)
    strong = np.asarray(strong, np.float64)
    if weights is not None:
        weights = np.asarray(weights, np.float64)
    tried = candidates(settings, form)
    k = cv_folds(weak.size)
    if not (calibrate or len(tried) > 1):
        k = 0  # nothing to choose and nothing to calibrate: no cross-validation
    scored, best, matrices, oofs = _select(
        parsed, weak, strong, tried, k=k, c=c, seed=seed, weights=weights
    )
    # Without cross-validation (too few prompts) nothing was scored: the defaults first,
    # then the next candidate whose form these labels can fit (a set where the strong
    # model never does worse fits the ordinal form, not two heads).
    order = [best] if best in oofs else [best, *(i for i in range(len(tried)) if i != best)]
    for i in order:
        chosen = scored[i]
        x = matrices[chosen.settings]
        try:
            heads = _Heads(x, weak, strong, c, seed, weights, chosen.form)
        except ValueError:
            if i == order[-1]:
                raise
            continue
        best = i
        break
    dim = chosen.settings.dim
    if calibrate and best in oofs:
        oof = oofs[best]
        # The score is (1 + expected gain) / 2, the gain fitted on held-out prompts.
        cal_x, cal_y = _calibration(oof, (1 + strong - weak) / 2, weights=weights)
        table = _quality_table(np.interp(oof, cal_x, cal_y), weak, strong)
    else:
        cal_x, cal_y, table = np.array([-1.0, 1.0]), np.array([0.0, 1.0]), ()
    described = {
        "two-heads": "two logistic regressions (liblinear, L2): strong better, strong worse",
        "ordinal": "cumulative logit (liblinear, L2): one direction, thresholds for "
        "strong not worse and strong better",
    }
    meta: dict[str, Any] = {
        "trainedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "prompts": int(weak.size),
        "strongBetter": float(labels(weak, strong)[0].sum()),
        "strongWorse": float(labels(weak, strong)[1].sum()),
        "model": described[chosen.form],
        "form": chosen.form,
        "features": chosen.weighting,
        "C": c,
        "seed": seed,
        "calibration": (f"isotonic on {k}-fold out-of-fold predictions" if table else "none"),
        "sklearn": sklearn.__version__,
    }
    if len(tried) > 1:
        meta["selection"] = {
            "by": f"{k}-fold out-of-fold APGR" if k else "too few prompts: the first that fits",
            "candidates": [cand.as_dict() for cand in scored],
        }
    meta.update(training or {})
    return DifficultyModel(
        settings=chosen.settings,
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
    form: Form | None = None,
    c: float = DEFAULT_C,
    seed: int = 0,
) -> FloatArray:
    """Each prompt's score from a model trained on the other k-1 folds (through the
    artifact's own scoring path: quantised weights, calibration; the form and features
    selected inside each training fold unless fixed)."""
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
            form=form,
            c=c,
            seed=seed,
            calibrate=False,  # ranking metrics need no calibration
        )
        out[test] = [model.score(parsed[i]) for i in test]
    return out


__all__ = [
    "FORMS",
    "LABEL",
    "Candidate",
    "Form",
    "candidates",
    "cv_folds",
    "design_matrix",
    "fit",
    "fixed_choices",
    "kfold_scores",
    "labels",
]
