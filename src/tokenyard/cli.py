"""The `tokenyard` command line: one entry point, each subcommand in its own layer.

Subcommand implementations are imported lazily so that `tokenyard crds` or `render`
never pay for importing Ray or vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenyard import __version__


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"tokenyard {__version__}")
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    from tokenyard.api.crd import build_crds, crd_filename, render_yaml

    crds = build_crds()
    if not args.out:
        print("---\n".join(render_yaml(c) for c in crds), end="")
        return 0
    for out in args.out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        for crd in crds:
            (d / crd_filename(crd)).write_text(render_yaml(crd))
        print(f"wrote {len(crds)} CRDs to {d}")
    return 0


def _lazy(module: str, func: str = "main") -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        mod = importlib.import_module(module)
        result: int = getattr(mod, func)(args)
        return result

    return run


def eval_routing_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``tokenyard eval-routing`` (benchmarks/routing_quality.py reuses them)."""
    from tokenyard.routing.quality import BASELINES, ROUTELLM_STRONG_PRICE, ROUTELLM_WEAK_PRICE

    p.add_argument("--data", action="append", required=True, help="labelled CSV (repeatable)")
    p.add_argument(
        "--routers",
        default=",".join(BASELINES),
        help=f"comma-separated baselines to include (default: {','.join(BASELINES)})",
    )
    p.add_argument("--artifact", action="append", default=[], help="trained model artifact")
    p.add_argument(
        "--kfold", type=int, default=5, help="train and score a learned model k-fold (0: off)"
    )
    p.add_argument(
        "--train", action="append", default=[], help="also train a learned model on this CSV"
    )
    p.add_argument("--quality-target", type=float, default=0.95, help="share of strong quality")
    p.add_argument(
        "--strong-price", type=float, default=ROUTELLM_STRONG_PRICE, help="USD per 1M tokens"
    )
    p.add_argument("--weak-price", type=float, default=ROUTELLM_WEAK_PRICE, help="USD per 1M")
    p.add_argument("--draws", type=int, default=400, help="random routers for the 95%% range")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the quality curves as a PNG here")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    learner_arguments(p)


def learner_arguments(p: argparse.ArgumentParser) -> None:
    """The learned model's choices (``train-router``, and ``eval-routing``'s learned rows)."""
    p.add_argument(
        "--form",
        choices=("auto", "two-heads", "ordinal"),
        default="auto",
        help="the heads: independent, or one shared direction (auto: cross-validated)",
    )
    p.add_argument(
        "--features",
        choices=("auto", "presence", "counts"),
        default="auto",
        help="n-gram weighting: each distinct n-gram once, or by its count (auto: cross-validated)",
    )


def simulate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``tokenyard simulate`` after --trace (benchmarks/autoscaler_trace.py
    takes the same)."""
    p.add_argument("--scenario", default=None, help="scenario YAML (default: built-in)")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--seed", type=int, default=None, help="routing seed (default: the scenario's)")
    p.add_argument(
        "--no-spillover", action="store_true", help="route without spill-over (every policy alike)"
    )
    p.add_argument(
        "--downgrade",
        action="store_true",
        help="route as spillover.downgradeWhenCapped does (capped models shed to weaker ones)",
    )
    p.add_argument(
        "--replica-routing",
        choices=("PowerOfTwoChoices", "LeastQueuedTokens"),
        default=None,
        help="every model's replicaRouting (default: the scenario's)",
    )
    p.add_argument(
        "--max-gpus",
        default=None,
        metavar="CLASS=N,...",
        help="override accelerator classes' maxGPUs, e.g. a100=2,h100=2",
    )
    p.add_argument(
        "--start",
        type=float,
        default=None,
        metavar="SECONDS",
        help="replay from this many seconds after the trace's start (default 0)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="replay this many seconds of the trace (default: to its end)",
    )
    rate = p.add_argument_group(
        "rate traces",
        "a CSV with window_start_s, window_s, requests_per_s, mean_prompt_tokens, "
        "mean_output_tokens becomes load from the seed",
    )
    rate.add_argument(
        "--rate-scale",
        type=float,
        default=None,
        help="multiply every window's rate by this; a per-request trace is thinned to this "
        "share of its requests (<= 1, from the seed)",
    )
    rate.add_argument(
        "--target-mean-rps",
        type=float,
        default=None,
        help="scale the rates to this mean (default: the busiest window needs 70%% of the "
        "pool's capacity); a per-request trace is thinned to it",
    )
    rate.add_argument(
        "--arrivals",
        choices=["poisson", "bursty"],
        default=None,
        help="arrivals within a window: Poisson, or bursty (a Gamma rate factor of CV "
        "--burst-cv per minute)",
    )
    rate.add_argument(
        "--burst-cv",
        type=float,
        default=None,
        help="bursty: the factor's CV (default 1.0; an aggregated request trace: its own)",
    )
    rate.add_argument(
        "--token-cv",
        type=float,
        default=None,
        help="coefficient of variation of prompt and output tokens around a window's means "
        "(default 1.0; an aggregated request trace: its own)",
    )
    rate.add_argument(
        "--engine",
        choices=["auto", "requests", "fluid"],
        default="auto",
        help="per-request engine, or the aggregated one (auto: fluid beyond 6 hours; a "
        "request trace is then aggregated into 10-minute windows)",
    )
    rate.add_argument(
        "--step-seconds", type=float, default=10.0, help="the fluid engine's time step"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenyard",
        description="Multi-model LLM serving on Kubernetes: route each request to the "
        "cheapest good-enough model.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("version", help="print the version")
    s.set_defaults(func=_cmd_version)

    s = sub.add_parser("crds", help="print the generated CRDs, or write them with --out")
    s.add_argument("--out", action="append", help="directory to write into (repeatable)")
    s.set_defaults(func=_cmd_crds)

    s = sub.add_parser(
        "render",
        help="render, without a cluster, the RayServices and other objects the operator "
        "would create from manifests",
    )
    s.add_argument("-f", "--filename", action="append", required=True, help="file or directory")
    s.add_argument("-n", "--namespace", default="default", help="namespace of objects without one")
    s.set_defaults(func=_lazy("tokenyard.operator.render"))

    s = sub.add_parser("operator", help="run the kopf operator")
    s.add_argument("--namespace", action="append", help="watch only these namespaces")
    s.set_defaults(func=_lazy("tokenyard.operator.main"))

    s = sub.add_parser("up", help="run the whole data plane locally on Ray Serve, no Kubernetes")
    s.add_argument("-f", "--filename", action="append", required=True, help="file or directory")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--num-cpus", type=int, default=None, help="Ray logical CPUs")
    s.add_argument("--state-dir", default=None, help="ledger and audit directory")
    s.add_argument(
        "--ingress",
        choices=["HAProxy", "Proxy"],
        default=None,
        help="what serves --port (default: the pool's spec.router.ingress, else HAProxy)",
    )
    s.set_defaults(func=_lazy("tokenyard.serving.local"))

    s = sub.add_parser("make-tiny-model", help="build a tiny local model (no downloads)")
    s.add_argument("path", help="directory to write the model into")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_lazy("tokenyard.serving.tiny"))

    s = sub.add_parser("explain", help="show the routing decision for a request, offline")
    s.add_argument("-f", "--filename", action="append", required=True, help="manifests")
    s.add_argument("--request", required=True, help="request body JSON file ('-' for stdin)")
    s.add_argument("--header", action="append", default=[], help="NAME: VALUE (repeatable)")
    s.add_argument("--endpoint", default=None, help="policy endpoint if the body names none")
    s.add_argument("-n", "--namespace", default="default", help="namespace of objects without one")
    s.set_defaults(func=_lazy("tokenyard.routing.explain"))

    s = sub.add_parser(
        "eval-routing",
        help="measure routers' quality/cost trade-off on labelled prompts (APGR, CPT, saving)",
    )
    eval_routing_arguments(s)
    s.set_defaults(func=_lazy("tokenyard.routing.quality.evaluate"))

    s = sub.add_parser("train-router", help="train a learned difficulty classifier artifact")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", action="append", help="labelled CSV (repeatable)")
    src.add_argument(
        "--from-state",
        metavar="DIR",
        default=None,
        help="the pool's state directory (or its learning-NS-POOL folder): captured prompts "
        "joined with their feedback, inverse-propensity weighted",
    )
    s.add_argument(
        "--endpoint", default=None, help="with --from-state: only this endpoint's prompts"
    )
    s.add_argument("--out", required=True, help="artifact path (JSON, under 1 MiB)")
    s.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation strength")
    s.add_argument("--seed", type=int, default=0)
    learner_arguments(s)
    s.add_argument(
        "--configmap", default=None, metavar="NAME", help="also write a ConfigMap YAML beside it"
    )
    s.set_defaults(func=_lazy("tokenyard.routing.learned.cli"))

    s = sub.add_parser("autoscaler", help="run the autoscaler loop")
    s.add_argument("--once", action="store_true", help="decide and act once, then exit")
    s.add_argument("--signals-file", default=None, help="read signals from JSON, not Prometheus")
    s.set_defaults(func=_lazy("tokenyard.autoscaler.main"))

    s = sub.add_parser("report", help="an HTML page of spend, traffic split and savings")
    s.add_argument("audit", help="the router's audit log (JSON lines; '-' for stdin)")
    s.add_argument("-o", "--output", default="tokenyard-report.html", help="HTML file")
    s.add_argument("--since", default=None, help="a duration (24h, 7d) or an ISO 8601 time")
    s.add_argument("--tenant", default=None, help="only this tenant's requests")
    s.add_argument("--endpoint", default=None, help="only this endpoint's requests")
    s.set_defaults(func=_lazy("tokenyard.accounting.report"))

    s = sub.add_parser("simulate", help="replay a request trace against a pool's autoscaling")
    s.add_argument(
        "--trace",
        required=True,
        help="a request trace (Azure CSV: TIMESTAMP, ContextTokens, GeneratedTokens; "
        "BurstGPT CSV; Mooncake JSON lines) or a rate trace (CSV)",
    )
    simulate_arguments(s)
    s.set_defaults(func=_lazy("tokenyard.autoscaler.sim.cli"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
