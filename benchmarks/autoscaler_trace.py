"""Replays the shared Azure LLM code trace through the autoscaler simulator and prints the table.

Run: ``.venv/bin/python benchmarks/autoscaler_trace.py [--trace CSV] [--scenario YAML]
[--plot PNG] [--json]``

Static (the fewest fixed replicas that meet the SLO target on this trace), a per-model
HPA-style utilisation target and tokenyard's decide_pool run on the same simulator and
workload; see tokenyard.autoscaler.simulate for the serving model and docs/autoscaling.md
for the scenario's assumptions. The trace lives beside the repository in ../shared/traces/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tokenyard.autoscaler import simulate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "azure_llm_code_2023.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--trace", default=str(DEFAULT_TRACE))
    p.add_argument("--scenario", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.trace).is_file():
        print(f"autoscaler_trace: trace not found: {args.trace}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    code = simulate.main(args)
    if not args.json:
        print(f"simulated in {time.perf_counter() - started:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
