"""``tokenyard train-router``: train a difficulty model on labelled CSVs (or the pool's own
captured prompts and feedback, ``--from-state``), write the artifact.

Reads the CSVs with :mod:`tokenyard.routing.quality.data` (the router's own request
parsing), trains with :func:`.train.fit` and writes the JSON artifact, optionally
wrapped in a ConfigMap manifest that a RoutingPolicy can reference.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from tokenyard.api.common import DNS_SUBDOMAIN
from tokenyard.routing.learned.model import ARTIFACT_KEY, ArtifactError
from tokenyard.routing.learned.state_files import FEEDBACK_FILE
from tokenyard.routing.quality.data import DataError, load_all, merge


def state_root(path: Path) -> Path:
    """The learning directory of ``--from-state``: the path itself when it holds the
    feedback journal, else its only ``learning-*`` folder."""
    if (path / FEEDBACK_FILE).exists():
        return path
    found = sorted(p for p in path.glob("learning-*") if p.is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{path}: no feedback journal ({FEEDBACK_FILE}) or learning-* folder")
    names = ", ".join(p.name for p in found)
    raise ValueError(f"{path}: several pools ({names}); name one of them")


def main(args: argparse.Namespace) -> int:
    from tokenyard.routing.learned.from_state import load_state
    from tokenyard.routing.learned.train import fit, fixed_choices

    if not args.c > 0:
        print("train-router: --c must be > 0", file=sys.stderr)
        return 2
    configmap = getattr(args, "configmap", None)
    if configmap is not None and not (
        re.fullmatch(DNS_SUBDOMAIN, configmap) and len(configmap) <= 253
    ):
        print(
            f"train-router: --configmap {configmap!r} is not a ConfigMap name (lower-case "
            "letters, digits, '-' and '.', starting and ending with a letter or digit)",
            file=sys.stderr,
        )
        return 2
    if not Path(args.out).parent.is_dir():  # said before minutes of training, not after
        print(f"train-router: --out: no directory {Path(args.out).parent}", file=sys.stderr)
        return 2
    settings, form = fixed_choices(getattr(args, "features", "auto"), getattr(args, "form", "auto"))
    try:
        if getattr(args, "from_state", None):
            ts = load_state(state_root(Path(args.from_state)), getattr(args, "endpoint", None))
            model = fit(
                ts.parsed,
                ts.weak,
                ts.strong,
                settings=settings,
                form=form,
                c=args.c,
                seed=args.seed,
                training={"data": [ts.summary]},
                weights=ts.weights,
            )
            count = len(ts.parsed)
        else:
            sets = load_all(args.data)
            pool = merge(sets, "+".join(s.name for s in sets))
            model = fit(
                [p.parsed for p in pool.prompts],
                pool.weak,
                pool.strong,
                settings=settings,
                form=form,
                c=args.c,
                seed=args.seed,
                training={"data": [s.summary() for s in sets]},
            )
            count = len(pool.prompts)
        size = model.save(args.out)
    except (DataError, ArtifactError, OSError, ValueError) as e:
        print(f"train-router: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: version {model.version}, {size:,} bytes, {count:,} prompts")
    picked = model.training.get("selection")
    if picked:
        tried = ", ".join(
            f"{c['features']} {c['form']} {c['apgr'] if c['apgr'] is not None else '-'}"
            for c in picked["candidates"]
        )
        print(
            f"  {model.training['features']}, {model.training['form']} (by {picked['by']}: {tried})"
        )
    point = model.threshold_for_quality(0.95)
    if point is not None:
        print(
            f"  on held-out training prompts: score >= {point.threshold:.4f} sends "
            f"{100 * point.strong_share:.0f}% to the strong model and keeps "
            f"{100 * point.quality_of_strong:.1f}% of its quality"
        )
    if args.configmap:
        out = Path(args.out).with_suffix(".configmap.yaml")
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": args.configmap,
                "labels": {"tokenyard.dev/difficulty-model": model.version},
            },
            "data": {ARTIFACT_KEY: Path(args.out).read_text()},
        }
        out.write_text(yaml.safe_dump(cm, sort_keys=False, width=1 << 30))
        print(f"wrote {out}")
    return 0


__all__ = ["main"]
