"""``tokenyard eval-routing``: how good each router's choices are on labelled data.

Every router is a :class:`~tokenyard.routing.classifiers.base.DifficultyClassifier`
scoring a request parsed exactly as the router parses it (:mod:`.data`): the heuristic,
prompt length alone (the router's token estimate), random, the oracle (which sees the
outcomes: it bounds what any router can reach), trained artifacts, and a learned model
trained here either k-fold on each set or on ``--train`` files. The figures come from
:mod:`.metrics`; every learned row says what it was trained on, and one trained on the
very prompts it is scored on is marked in-sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tokenyard.routing.classifiers import DifficultyClassifier, HeuristicClassifier
from tokenyard.routing.quality import BASELINES
from tokenyard.routing.quality.data import DataError, LabelledSet, load_all, merge
from tokenyard.routing.quality.metrics import (
    ROUTELLM_STRONG_PRICE,
    ROUTELLM_WEAK_PRICE,
    QualityCurve,
    RandomRange,
    RouterMetrics,
    quality_curve,
    random_range,
    summarize,
)

FloatArray = npt.NDArray[np.float64]


class LengthClassifier:
    """Prompt length alone: the router's token estimate (a baseline)."""

    def score(self, parsed: Any) -> float:
        return float(parsed.prompt_tokens)


def classifier_scores(classifier: DifficultyClassifier, data: LabelledSet) -> FloatArray:
    """Each prompt's score through the classifier's ``score`` call, as the router asks."""
    return np.array([classifier.score(p.parsed) for p in data.prompts], dtype=np.float64)


@dataclass(frozen=True)
class RouterResult:
    name: str
    trained_on: str
    """"-" for routers that learn nothing; "in-sample" marks scoring on training data."""
    metrics: RouterMetrics
    curve: QualityCurve = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"router": self.name, "trained_on": self.trained_on, **self.metrics.as_dict()}


@dataclass(frozen=True)
class SetResult:
    data: LabelledSet
    random: RandomRange
    routers: list[RouterResult]
    notes: list[str] = field(default_factory=list)
    """Why a figure is missing: no gap to recover, a learned row that could not train."""

    def as_dict(self) -> dict[str, Any]:
        s = self.data.summary()
        return {
            **s,
            "random_95": {
                "draws": self.random.draws,
                "apgr": self.random.apgr,
                "cost_saving_at_target": self.random.cost_saving_at_target,
            },
            "routers": [r.as_dict() for r in self.routers],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Options:
    quality_target: float = 0.95
    strong_price: float = ROUTELLM_STRONG_PRICE
    weak_price: float = ROUTELLM_WEAK_PRICE
    draws: int = 400
    seed: int = 0


def evaluate_scores(
    name: str, trained_on: str, scores: FloatArray, data: LabelledSet, opts: Options
) -> RouterResult:
    curve = quality_curve(scores, data.weak, data.strong)
    metrics = summarize(
        curve,
        quality_target=opts.quality_target,
        strong_price=opts.strong_price,
        weak_price=opts.weak_price,
    )
    return RouterResult(name=name, trained_on=trained_on, metrics=metrics, curve=curve)


def baseline_scores(name: str, data: LabelledSet, seed: int) -> FloatArray:
    if name == "heuristic":
        return classifier_scores(HeuristicClassifier(), data)
    if name == "length":
        return classifier_scores(LengthClassifier(), data)
    if name == "random":
        return np.random.default_rng(seed).random(len(data.prompts))
    if name == "oracle":
        return data.strong - data.weak
    raise ValueError(f"unknown router {name!r}")


Learner = Callable[[LabelledSet], tuple[str, str, FloatArray]]
"""Scores a set with a learned router: (row name, trained on, scores)."""


def evaluate_set(
    data: LabelledSet,
    routers: Sequence[str],
    artifacts: Sequence[tuple[str, DifficultyClassifier]],
    learners: Sequence[Learner],
    opts: Options,
) -> SetResult:
    results = [
        evaluate_scores(r, "-", baseline_scores(r, data, opts.seed), data, opts) for r in routers
    ]
    for name, clf in artifacts:
        results.append(evaluate_scores(name, "artifact", classifier_scores(clf, data), data, opts))
    notes = []
    weak, strong = float(data.weak.mean()), float(data.strong.mean())
    if strong <= weak:
        notes.append(
            f"the strong model does no better than the weak one here ({strong:.3f} against "
            f"{weak:.3f}): APGR and CPT measure how much of that gap a router recovers, so "
            "they are undefined; the weak model alone keeps the quality target"
        )
    for learn in learners:
        try:
            name, trained_on, scores = learn(data)
        except ValueError as e:  # this set's labels cannot train it; the other rows stand
            notes.append(f"learned: not trained on this set: {e}")
            continue
        results.append(evaluate_scores(name, trained_on, scores, data, opts))
    rr = random_range(
        data.weak,
        data.strong,
        draws=opts.draws,
        seed=opts.seed,
        quality_target=opts.quality_target,
        strong_price=opts.strong_price,
        weak_price=opts.weak_price,
    )
    return SetResult(data=data, random=rr, routers=results, notes=notes)


def kfold_learner(k: int, seed: int, features: str = "auto", form: str = "auto") -> Learner:
    from tokenyard.routing.learned.train import fixed_choices

    settings, fixed_form = fixed_choices(features, form)

    def learn(data: LabelledSet) -> tuple[str, str, FloatArray]:
        from tokenyard.routing.learned.train import kfold_scores

        parsed = [p.parsed for p in data.prompts]
        scores = kfold_scores(
            parsed, data.weak, data.strong, k=k, seed=seed, settings=settings, form=fixed_form
        )
        return "learned", f"{k}-fold", scores

    return learn


def trained_learner(
    train: Sequence[LabelledSet], seed: int, features: str = "auto", form: str = "auto"
) -> Learner:
    from tokenyard.routing.learned.train import fit, fixed_choices

    settings, fixed_form = fixed_choices(features, form)
    pool = merge(train, "+".join(s.name for s in train))
    model = fit(
        [p.parsed for p in pool.prompts],
        pool.weak,
        pool.strong,
        settings=settings,
        form=fixed_form,
        seed=seed,
        calibrate=False,
    )
    shas = {s.sha256 for s in train}
    names = {s.name for s in train}

    def learn(data: LabelledSet) -> tuple[str, str, FloatArray]:
        same = data.sha256 in shas and data.name in names
        label = f"{pool.name}, in-sample" if same else pool.name
        return "learned", label, classifier_scores(model, data)

    return learn


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:5.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_table(results: Sequence[SetResult], opts: Options) -> str:
    lines = []
    target = f"{100 * opts.quality_target:g}%"
    for res in results:
        d = res.data
        lines.append(
            f"\n{d.name} ({d.source}, {len(d.prompts):,} prompts): weak {d.weak.mean():.3f}, "
            f"strong {d.strong.mean():.3f}"
        )
        head = (
            f"  {'router':<11} {'trained on':<22} {'APGR':>6} {'CPT50':>7} {'CPT80':>7} "
            f"{'strong@' + target:>11} {'saving@' + target:>11}"
        )
        lines.append(head)
        for r in res.routers:
            m = r.metrics
            lines.append(
                f"  {r.name:<11} {r.trained_on[:22]:<22} {_num(m.apgr):>6} {_pct(m.cpt50):>7} "
                f"{_pct(m.cpt80):>7} {_pct(m.strong_share_at_target):>11} "
                f"{_pct(m.cost_saving_at_target):>11}"
            )
        ra, rs = res.random.apgr, res.random.cost_saving_at_target
        lines.append(
            f"  random 95% range ({res.random.draws} draws): APGR "
            + ("-" if ra is None else f"{ra[0]:.3f}-{ra[1]:.3f}")
            + ", saving "
            + ("-" if rs is None else f"{100 * rs[0]:.1f}%-{100 * rs[1]:.1f}%")
        )
        lines.extend(f"  note: {note}" for note in res.notes)
    return "\n".join(lines).lstrip("\n")


def plot(results: Sequence[SetResult], path: str | Path, opts: Options) -> None:
    """Quality against strong-call share, one panel per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for r in res.routers:
            label = r.name if r.trained_on in ("-", "artifact") else f"{r.name} ({r.trained_on})"
            ax.plot(100 * r.curve.share, r.curve.quality, label=label, lw=1.2)
        q_s = res.data.strong.mean()
        ax.axhline(q_s, color="k", lw=0.6, ls=":")
        ax.axhline(opts.quality_target * q_s, color="grey", lw=0.6, ls="--")
        ax.set_title(f"{res.data.name} ({len(res.data.prompts):,} prompts)")
        ax.set_xlabel("strong-model calls (%)")
        ax.set_ylabel("quality (mean correctness)")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    data_paths: Sequence[str],
    *,
    routers: Sequence[str] = BASELINES,
    artifacts: Sequence[str] = (),
    kfold: int | None = 5,
    train_paths: Sequence[str] = (),
    opts: Options | None = None,
    features: str = "auto",
    form: str = "auto",
) -> list[SetResult]:
    """Evaluate every router on every set of the data files (``features`` and ``form``
    fix the learned rows' choices; "auto": selected inside each training set)."""
    from tokenyard.routing.learned.model import load_model

    opts = opts or Options()
    sets = load_all(data_paths)
    loaded: list[tuple[str, DifficultyClassifier]] = [
        (f"artifact:{Path(a).stem}", load_model(a)) for a in artifacts
    ]
    learners: list[Learner] = []
    if train_paths:
        learners.append(trained_learner(load_all(train_paths), opts.seed, features, form))
    if kfold:
        learners.append(kfold_learner(kfold, opts.seed, features, form))
    return [evaluate_set(s, routers, loaded, learners, opts) for s in sets]


def main(args: argparse.Namespace) -> int:
    from tokenyard.routing.learned.model import ArtifactError

    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    bad = [r for r in routers if r not in BASELINES]
    problems = []
    if bad:
        problems.append(f"unknown router(s) {', '.join(bad)}; choose from {', '.join(BASELINES)}")
    if not 0 < args.quality_target <= 1:
        problems.append("--quality-target must be in (0, 1]")
    if args.strong_price <= 0 or args.weak_price < 0:
        problems.append("--strong-price must be > 0 and --weak-price >= 0")
    if args.kfold < 0 or args.kfold == 1:
        problems.append("--kfold must be 0 (off) or at least 2")
    if args.draws < 1:
        problems.append("--draws must be at least 1")
    if args.plot and not Path(args.plot).parent.is_dir():
        problems.append(f"--plot: no directory {Path(args.plot).parent}")
    if problems:
        for msg in problems:
            print(f"eval-routing: {msg}", file=sys.stderr)
        return 2
    opts = Options(args.quality_target, args.strong_price, args.weak_price, args.draws, args.seed)
    try:
        results = run(
            args.data,
            routers=routers,
            artifacts=args.artifact,
            kfold=args.kfold or None,
            train_paths=args.train,
            opts=opts,
            features=getattr(args, "features", "auto"),
            form=getattr(args, "form", "auto"),
        )
    except (DataError, ArtifactError, OSError, ValueError) as e:
        print(f"eval-routing: {e}", file=sys.stderr)
        return 1
    if args.plot:
        plot(results, args.plot, opts)
    if args.json:
        doc = {
            "quality_target": opts.quality_target,
            "strong_price": opts.strong_price,
            "weak_price": opts.weak_price,
            "sets": [r.as_dict() for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(results, opts))
        if args.plot:
            print(f"\nwrote {args.plot}")
    return 0


__all__ = [
    "BASELINES",
    "LengthClassifier",
    "Options",
    "RouterResult",
    "SetResult",
    "evaluate_set",
    "main",
    "render_table",
    "run",
]
