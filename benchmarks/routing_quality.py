"""Routing quality on labelled data, and what scoring a request costs, side by side.

Run: ``.venv/bin/python benchmarks/routing_quality.py [--data CSV ...] [--kfold 5]``
(default data: the shared RouteLLM MMLU and GSM8K sets, ``../shared/routing/``).

Prints, for every set:
  * ``tokenyard eval-routing``'s table (heuristic, prompt length, random, oracle, and a
    learned model trained k-fold on the set: each prompt scored by a model that did not
    see it), the random router's 95% range;
  * train-on-one, test-on-each-other (held out across sets) beside the k-fold figures;
  * the heuristic against prompt length alone on two seeded halves of every set (the
    heuristic's signals were chosen on the whole sets: the halves show it holds on each);
  * with ``--fold-seeds N``, the learned model's k-fold APGR over N fold assignments
    (seeds 0..N-1; mean and range): on a set of ~1,000 prompts one assignment moves
    APGR by about a point, and the training's own selection sees different folds too;
and then the in-process cost of scoring a ~4,000-token prompt with the heuristic and the
learned model (p50/p99 over repeated calls, and their ratio), plus the router's whole
feature extraction with each. Timings are ratios against the heuristic measured in the
same process; no figure here is asserted by a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.routing.classifiers import DifficultyClassifier, HeuristicClassifier
from tokenyard.routing.features import extract_features
from tokenyard.routing.learned.train import fit
from tokenyard.routing.quality.data import LabelledSet, load_all
from tokenyard.routing.quality.evaluate import (
    LengthClassifier,
    Options,
    classifier_scores,
    evaluate_set,
    kfold_learner,
    plot,
    render_table,
    trained_learner,
)
from tokenyard.routing.quality.metrics import apgr, quality_curve
from tokenyard.routing.request import parse_request

SHARED = Path(__file__).resolve().parents[2] / "shared" / "routing"


def timings(clf: DifficultyClassifier, parsed: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        clf.score(parsed)  # type: ignore[arg-type]
        out.append(time.perf_counter() - t0)
    return out


def p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=None)
    ap.add_argument("--kfold", type=int, default=5)
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--plot", default=None, help="PNG of the k-fold curves")
    ap.add_argument("--calls", type=int, default=2000, help="scoring calls per timing")
    ap.add_argument("--timing-only", action="store_true", help="skip the quality runs")
    ap.add_argument(
        "--fold-seeds", type=int, default=1, help="k-fold APGR over this many fold seeds"
    )
    args = ap.parse_args()
    paths = args.data or [str(SHARED / "routellm_mmlu.csv"), str(SHARED / "routellm_gsm8k.csv")]
    opts = Options(draws=args.draws)
    sets = load_all(paths)
    if not args.timing_only:
        quality(sets, args, opts)
    timing(sets, args)
    return 0


def quality(sets: list[LabelledSet], args: argparse.Namespace, opts: Options) -> None:
    t0 = time.perf_counter()
    learners = [kfold_learner(args.kfold, opts.seed)]
    for s in sets:  # held out across sets: trained on one, scored on the others
        try:
            learners.append(trained_learner([s], opts.seed))
        except ValueError as e:  # its labels cannot train a model; the k-fold row says so too
            print(f"not trained on {s.name}: {e}")
    routers = ("heuristic", "length", "random", "oracle")
    results = [evaluate_set(s, routers, [], learners, opts) for s in sets]
    print(render_table(results, opts))
    if args.plot:
        plot(results, args.plot, opts)
    halves(sets, opts)
    if args.fold_seeds > 1:
        fold_seeds(sets, args)
    print(f"\nquality runs took {time.perf_counter() - t0:.0f} s")


def fold_seeds(sets: list[LabelledSet], args: argparse.Namespace) -> None:
    from tokenyard.routing.learned.train import kfold_scores

    print(f"\nlearned {args.kfold}-fold APGR over fold seeds 0-{args.fold_seeds - 1}:")
    for s in sets:
        parsed = [p.parsed for p in s.prompts]
        got = []
        try:
            for seed in range(args.fold_seeds):
                scores = kfold_scores(parsed, s.weak, s.strong, k=args.kfold, seed=seed)
                got.append(apgr(quality_curve(scores, s.weak, s.strong)))
        except ValueError as e:
            print(f"  {s.name:<10} not trained: {e}")
            continue
        if any(g is None for g in got):
            print(f"  {s.name:<10} no gap between the models: APGR undefined")
            continue
        each = " ".join(f"{g:.4f}" for g in got)
        print(
            f"  {s.name:<10} mean {np.mean(got):.4f}  range {min(got):.4f}-{max(got):.4f}  ({each})"
        )


def halves(sets: list[LabelledSet], opts: Options) -> None:
    rng = np.random.default_rng(opts.seed)
    print("\nheuristic against prompt length alone, APGR on seeded halves of each set:")
    for s in sets:
        order = rng.permutation(len(s.prompts))
        for i, idx in enumerate((order[: len(order) // 2], order[len(order) // 2 :])):
            part = LabelledSet(f"{s.name}/half{i + 1}", s.source, s.sha256,
                               tuple(s.prompts[j] for j in sorted(idx)))  # fmt: skip
            got = {}
            for name, clf in (("heuristic", HeuristicClassifier()), ("length", LengthClassifier())):
                got[name] = apgr(
                    quality_curve(classifier_scores(clf, part), part.weak, part.strong)
                )
            h, n = (_apgr(got[k]) for k in ("heuristic", "length"))
            print(f"  {part.name:<28} heuristic {h}  length {n}")


def _apgr(value: float | None) -> str:
    return "-     " if value is None else f"{value:.4f}"


def timing(sets: list[LabelledSet], args: argparse.Namespace) -> None:
    # Scoring cost: a ~4,000-token prompt (estimate: UTF-8 bytes / 4), in process.
    text = " ".join(p.parsed.prompt_text for p in sets[0].prompts)
    text = text[: 4000 * 4]
    parsed = parse_request(
        {"model": "m", "messages": [{"role": "user", "content": text}]}, {}, "chat"
    )
    model = None
    for pool in sets:  # the first set whose labels train a model
        try:
            model = fit(
                [x.parsed for x in pool.prompts[:2000]], pool.weak[:2000], pool.strong[:2000]
            )
            break
        except ValueError:
            continue
    if model is None:
        print("\nno set trains a learned model: its scoring cost is not measured")
        return
    heuristic = HeuristicClassifier()
    for clf in (heuristic, model):  # warm up
        timings(clf, parsed, 50)
    th = timings(heuristic, parsed, args.calls)
    tl = timings(model, parsed, args.calls)
    print(f"\nscoring one {parsed.prompt_tokens:,}-token prompt, {args.calls} calls each:")
    print(f"  heuristic  p50 {p(th, 50):.3f} ms  p99 {p(th, 99):.3f} ms")
    print(f"  learned    p50 {p(tl, 50):.3f} ms  p99 {p(tl, 99):.3f} ms  "
          f"(p50 ratio {statistics.median(tl) / statistics.median(th):.2f}x)")  # fmt: skip
    spec = RoutingPolicySpec.model_validate({"pool": "p", "targets": [{"model": "a"}]})
    for name, clf in (("heuristic", heuristic), ("learned", model)):
        xs = []
        for _ in range(args.calls // 4):
            t = time.perf_counter()
            extract_features(parsed, spec, "e", "t", classifier=clf)
            xs.append(time.perf_counter() - t)
        print(f"  router features with {name:<9}: p50 {p(xs, 50):.3f} ms  p99 {p(xs, 99):.3f} ms")
    size = len(model.to_json().encode())
    print(f"  artifact size: {size:,} bytes (ConfigMap limit 1,048,576)")


if __name__ == "__main__":
    sys.exit(main())
