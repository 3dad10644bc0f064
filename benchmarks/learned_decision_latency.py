"""The router's decision latency with a policy's learned classifier on and off.

Run: ``.venv/bin/python benchmarks/learned_decision_latency.py [--calls 3000]``

Two policies over the same two targets, one with the heuristic and one with a learned
classifier delivered as the operator delivers it (``contract.learned_classifier_entry``
on the artifact's text, loaded by the router's ``build_state``). Each call is the
router's routing step as ``RouterCore._route`` runs it: parse the body, resolve the
tenant, extract the features with the policy's classifier (``pol.classifier or`` the
heuristic), decide; the two
policies are called alternately in the same process, for a short and a ~4,000-token
prompt, and the script prints p50/p99 of each and the added latency (learned − heuristic).
The model is trained on 2,000 prompts of the shared MMLU set when it and scikit-learn
are there (a production-sized artifact), else the small test fixture is used.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenyard.contract import CatalogueEntry, PolicyEntry, RouterConfig, learned_classifier_entry
from tokenyard.routing.budget import StaticSpend
from tokenyard.routing.classifiers import HeuristicClassifier
from tokenyard.routing.decision import BackendState
from tokenyard.routing.features import extract_features
from tokenyard.routing.policy_engine import decide
from tokenyard.routing.request import parse_request
from tokenyard.routing.tenants import resolve_tenant
from tokenyard.serving.router.state import EndpointPolicy, RouterState, build_state

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "routing" / "routellm_mmlu.csv"
FIXTURE = ROOT / "tests" / "unit" / "fixtures" / "difficulty-model.json"


def artifact() -> tuple[str, str]:
    try:
        from tokenyard.routing.learned.train import fit  # optional: needs scikit-learn
        from tokenyard.routing.quality.data import load_csv
    except ImportError:
        return FIXTURE.read_text(), "test fixture (scikit-learn not installed)"
    if not SHARED.exists():
        return FIXTURE.read_text(), "test fixture (shared MMLU set not found)"
    (data,) = load_csv(SHARED)
    n = 2000
    model = fit([p.parsed for p in data.prompts[:n]], data.weak[:n], data.strong[:n])
    return model.to_json(), f"trained on {n} MMLU prompts"


def config(text: str) -> RouterConfig:
    models = [
        CatalogueEntry.model_validate(
            {"name": n, "servedModelName": n, "kind": "External", "quality": q,
             "inputPer1M": p, "outputPer1M": p, "ready": True}
        )
        for n, q, p in (("small", 0.3, 0.2), ("big", 0.9, 10.0))
    ]  # fmt: skip
    spec = {
        "pool": "p",
        "targets": [{"model": "small"}, {"model": "big"}],
        "egress": {"allowedExternalDataClasses": ["internal"]},
    }
    entry = learned_classifier_entry(text, 0.95)
    policies = [
        PolicyEntry(name="heuristic", namespace="ns", endpoint="heuristic", spec=spec),
        PolicyEntry(
            name="learned", namespace="ns", endpoint="learned", spec=spec, classifier=entry
        ),
    ]
    return RouterConfig(pool="p", namespace="ns", models=models, policies=policies)


def route(state: RouterState, pol: EndpointPolicy, body: Any) -> str:
    """The routing step of ``RouterCore._route`` (no rate limit, no audit)."""
    parsed = parse_request(body, {"x-tenant": "t"}, "chat")
    tenant = resolve_tenant(parsed.headers, pol.spec.tenants, pol.api_keys)
    f = extract_features(
        parsed, pol.spec, pol.endpoint, tenant, classifier=pol.classifier or HEURISTIC
    )
    backends = {n: BackendState(ready=True) for n in state.catalogue}
    d = decide(f, pol.spec, state.catalogue, backends, SPEND, 0.0, RNG)
    return d.models[0]


HEURISTIC = HeuristicClassifier()
SPEND = StaticSpend()
RNG = random.Random(0)


def ms(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per policy and prompt")
    args = ap.parse_args()
    text, source = artifact()
    cfg = config(text)
    state = build_state(cfg, None, None, {}, make_backends=lambda *_: {})  # type: ignore[arg-type]
    loaded = {e: p.classifier for e, p in state.policies.items() if p.classifier is not None}
    assert "learned" in loaded, "the learned classifier did not load"
    version = loaded["learned"].version
    print(f"artifact: {source}, {len(text.encode()):,} bytes, version {version}")
    words = "The committee reviewed the quarterly figures and asked why costs rose. "
    prompts = {"short (~20 tokens)": words, "long (~4,000 tokens)": words * 230}
    for label, prompt in prompts.items():
        times: dict[str, list[float]] = {"heuristic": [], "learned": []}
        bodies = {e: {"model": e, "messages": [{"role": "user", "content": prompt}]} for e in times}
        for i in range(args.calls + 100):
            for e, out in times.items():  # alternate: both see the same machine state
                t0 = time.perf_counter()
                route(state, state.policies[e], bodies[e])
                if i >= 100:  # warm-up
                    out.append(time.perf_counter() - t0)
        h, lrn = times["heuristic"], times["learned"]
        print(f"{label}, {args.calls} decisions each:")
        print(f"  heuristic  p50 {ms(h, 50):.3f} ms  p99 {ms(h, 99):.3f} ms")
        print(f"  learned    p50 {ms(lrn, 50):.3f} ms  p99 {ms(lrn, 99):.3f} ms")
        print(f"  added by the learned classifier: p50 {ms(lrn, 50) - ms(h, 50):+.3f} ms, "
              f"p99 {ms(lrn, 99) - ms(h, 99):+.3f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
