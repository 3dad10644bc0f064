"""How far a real tokenizer counts over the router's prompt estimate (ceil(bytes / 4)).

Run: ``.venv/bin/python benchmarks/estimate_undercount.py [--n 1000] [--seed 0]``

Counts prompts of the shared RouteLLM sets (../shared/routing/) with the tiny in-cluster
test model's byte-level BPE (tokenyard.serving.tiny, offline) and prints the ratio of its
count to ``estimate_tokens``: gsm8k as the set looked at, mmlu held out. The router's
bound (``ESTIMATE_UNDERCOUNT_MAX``, one token per byte) must stay above every ratio.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path

from tokenyard.routing.request import ESTIMATE_UNDERCOUNT_MAX, estimate_tokens
from tokenyard.serving.tiny import build_tiny_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "routing"


def prompts(path: Path, n: int, seed: int) -> list[str]:
    with path.open(newline="") as fh:
        rows = [row["prompt"] for row in csv.DictReader(fh) if row["prompt"]]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(build_tiny_model(Path(tmp) / "m", seed=0)))
        for name, role in (("gsm8k", "in-sample"), ("mmlu", "held-out")):
            texts = prompts(args.data / f"routellm_{name}.csv", args.n, args.seed)
            ratios = sorted(
                len(tok(t, add_special_tokens=False)["input_ids"]) / estimate_tokens(t)
                for t in texts
            )

            def q(p: float, r: list[float] = ratios) -> float:
                return r[min(len(r) - 1, int(p * len(r)))]

            print(
                f"{name:6} ({role}, {len(ratios)} prompts): tokens / estimate median "
                f"{q(0.5):.2f} p95 {q(0.95):.2f} p99 {q(0.99):.2f} max {ratios[-1]:.2f} "
                f"(bound {ESTIMATE_UNDERCOUNT_MAX})"
            )


if __name__ == "__main__":
    main()
