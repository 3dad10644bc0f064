"""The routing decision for one request without calling any model: `tokenyard explain`.

:func:`explain_request` is shared by the CLI (offline, from manifests) and the router's
``POST /v1/tokenyard/explain`` (live catalogue and ledger): it runs the same parsing,
tenant resolution, feature extraction and :func:`~tokenyard.routing.policy_engine.decide`
the router runs, and returns the decision as a dict. :func:`main` is the CLI.

Spill-over needs live load: the router passes its queue clock and the decision shows a
spill-over when the router would make it now; offline there is no load and none is shown.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import random
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenyard.api.manifests import ManifestError, Manifests, core_objects, load
from tokenyard.api.pool import AcceleratorClass
from tokenyard.contract import (
    CatalogueEntry,
    LearnedClassifierEntry,
    PolicyEntry,
    RouterConfig,
    catalogue_entries,
    direct_policy,
    learned_classifier_entry,
    tenant_keys_env,
)
from tokenyard.routing.budget import StaticSpend, TenantSpendView
from tokenyard.routing.classifiers import DifficultyClassifier, HeuristicClassifier
from tokenyard.routing.decision import BackendState
from tokenyard.routing.errors import RouterError, bad_request, model_not_found
from tokenyard.routing.features import extract_features
from tokenyard.routing.learned.policy import PolicyClassifier, build_policy_classifier
from tokenyard.routing.policy_engine import apply_spillover, decide
from tokenyard.routing.request import RequestKind, decode_body, parse_request
from tokenyard.routing.spillover import QueueClock
from tokenyard.routing.tenants import parse_api_keys, resolve_tenant


def find_policy(config: RouterConfig, endpoint: str) -> PolicyEntry | None:
    """The policy serving ``endpoint`` in the router's config: a RoutingPolicy's endpoint,
    or a model called by its servedModelName (:func:`contract.direct_policy`)."""
    for p in config.policies:
        if p.endpoint == endpoint:
            return p
    return direct_policy(config, endpoint)


def explain_request(
    body: Any,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    config: RouterConfig,
    ledger_view: TenantSpendView,
    now: float,
    *,
    kind: RequestKind = "chat",
    api_keys: Mapping[str, Mapping[str, str]] | None = None,
    backends: Mapping[str, BackendState] | None = None,
    classifier: DifficultyClassifier | None = None,
    policy_classifiers: Mapping[str, PolicyClassifier] | None = None,
    rng: random.Random | None = None,
    load: QueueClock | None = None,
    live_replicas: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The decision for a request as a JSON-ready dict; raises :class:`RouterError`.

    ``api_keys`` maps a policy name to its key-to-tenant map; ``backends`` is the live
    backend state (default: each catalogue entry's ``ready``, circuits closed); ``load``
    is the router's queue clock (default: none, so no spill-over) and ``live_replicas``
    the replicas Ray Serve reports running per model (default: the catalogue's count).
    ``policy_classifiers`` are the learned classifiers the router loaded, by endpoint
    (default: loaded here from the config's policy entries); a policy without one is
    scored by ``classifier`` (default: the heuristic).
    """
    parsed = parse_request(body, headers, kind)
    policy = find_policy(config, parsed.model)
    if policy is None:
        raise model_not_found(parsed.model)
    spec = policy.policy_spec()
    keyed = {t for keys in (api_keys or {}).values() for t in keys.values()}
    tenant = resolve_tenant(
        parsed.headers, spec.tenants, (api_keys or {}).get(policy.name, {}), keyed
    )
    catalogue: dict[str, CatalogueEntry] = {m.name: m for m in config.models}
    learned = _policy_classifier(policy, catalogue, policy_classifiers)
    features = extract_features(
        parsed, spec, policy.endpoint, tenant, classifier=learned or classifier
    )
    if backends is None:
        backends = {m.name: BackendState(ready=m.ready) for m in config.models}
    decision = decide(features, spec, catalogue, backends, ledger_view, now, rng or random.Random())
    if load is not None:
        decision = apply_spillover(
            decision,
            catalogue,
            load,
            features.prompt_tokens,
            now,
            spec.spillover,
            live_replicas=live_replicas,
        )
    out = decision.to_dict()
    out["difficultySource"] = features.difficulty_source
    if learned is not None:
        out["classifier"] = learned.explain(parsed)
    else:
        builtin = classifier is None or isinstance(classifier, HeuristicClassifier)
        out["classifier"] = {"type": "Heuristic" if builtin else type(classifier).__name__}
        if spec.classifier.type == "Learned":
            out["classifier"]["message"] = (
                "spec.classifier: the learned classifier is not loaded; the heuristic scores"
            )
    out["promptTokens"] = features.prompt_tokens
    out["maxTokens"] = features.max_tokens
    out["detected"] = {k: list(v) for k, v in features.detected.items()}
    out["policy"] = f"{policy.namespace}/{policy.name}"
    return out


def _policy_classifier(
    policy: PolicyEntry,
    catalogue: Mapping[str, CatalogueEntry],
    given: Mapping[str, PolicyClassifier] | None,
) -> PolicyClassifier | None:
    if given is not None:
        return given.get(policy.endpoint)
    if policy.classifier is None:
        return None
    targets = policy.policy_spec().targets
    qualities = [catalogue[t.model].quality for t in targets if t.model in catalogue]
    try:
        return build_policy_classifier(policy.classifier, qualities)
    except ValueError:
        return None


def _name(obj: Any) -> str:
    return str(obj.metadata.get("name", ""))


DEFAULT_NAMESPACE = "default"


def _namespace(obj: Any, default: str = DEFAULT_NAMESPACE) -> str:
    return str(obj.metadata.get("namespace") or default)


def _accelerator(m: Manifests, pool: str | None, accel: str) -> AcceleratorClass | None:
    for p in m.pools:
        if _name(p) == pool:
            for a in p.spec.accelerators:
                if a.name == accel:
                    return a
    return None


def router_config(m: Manifests, namespace: str | None = DEFAULT_NAMESPACE) -> RouterConfig:
    """A router config with every policy and model in the manifests, all models ready.
    Objects that name no namespace are in ``namespace`` (``explain -n``), as with
    ``kubectl apply -n`` and ``tokenyard render -n``. ``None`` (`tokenyard up`, which
    has no namespaces): a policy's ConfigMap is the one of its name in any namespace."""
    models: list[CatalogueEntry] = []
    for md in m.models:
        accel = None
        if md.spec.inCluster is not None:
            accel = _accelerator(m, md.spec.pool, md.spec.inCluster.accelerator)
        models.extend(catalogue_entries(md, ready=True, accel=accel))
    policies = [
        PolicyEntry(
            name=_name(p),
            namespace=_namespace(p, namespace or DEFAULT_NAMESPACE),
            endpoint=p.spec.endpoint or _name(p),
            generation=None,
            spec=p.spec.dump(),
            tenantKeysEnv=tenant_keys_env(_name(p)) if p.spec.tenants.apiKeysSecretRef else None,
            classifier=_learned_entry(m, p, namespace),
            shadow=_learned_entry(m, p, namespace, shadow=True),
        )
        for p in m.policies
    ]
    pool = m.policies[0].spec.pool if m.policies else (_name(m.pools[0]) if m.pools else "")
    return RouterConfig(pool=pool, namespace="default", models=models, policies=policies)


def configmap_value(
    m: Manifests,
    namespace: str | None,
    name: str,
    key: str,
    default_namespace: str = DEFAULT_NAMESPACE,
) -> str | None:
    """A key of a ConfigMap found among the manifests in ``namespace`` (that of the object
    referring to it: in the cluster, one elsewhere is not the referrer's). A ConfigMap
    that names no namespace, as `train-router --configmap` writes it, is in
    ``default_namespace``, where `kubectl apply -n` would put it. ``namespace`` None:
    the last of that name in any namespace (`tokenyard up`)."""
    maps = core_objects(m.others, "ConfigMap", default_namespace)
    if namespace is None:
        found = [by_name[name] for by_name in maps.values() if name in by_name]
        cm = found[-1] if found else None
    else:
        cm = maps.get(namespace, {}).get(name)
    if cm is None:
        return None
    value = (cm.get("data") or {}).get(key)
    return str(value) if value is not None else None


def _learned_entry(
    m: Manifests, p: Any, default_namespace: str | None, *, shadow: bool = False
) -> LearnedClassifierEntry | None:
    """A Learned policy's classifier (or, with ``shadow``, its spec.classifier.shadow
    candidate) from its ConfigMap in the manifests, if it is there and valid (else the
    heuristic, or no candidate, as in the cluster)."""
    c = p.spec.classifier
    ref = c.shadow if shadow else (c.artifactRef if c.type == "Learned" else None)
    if ref is None:
        return None
    ns = None if default_namespace is None else _namespace(p, default_namespace)
    text = configmap_value(m, ns, ref.name, ref.key, default_namespace or DEFAULT_NAMESPACE)
    if text is None:
        return None
    try:
        return learned_classifier_entry(text, c.quality_aim())
    except ValueError:
        return None


def classifier_warnings(m: Manifests, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Why a Learned policy's ConfigMap, present in the manifests, is not the policy's: it
    is in another namespace (often: it names none and ``-n`` is not the policy's)."""
    out: list[str] = []
    maps = core_objects(m.others, "ConfigMap", namespace)
    for p in m.policies:
        c = p.spec.classifier
        ns = _namespace(p, namespace)
        for field, ref in (("artifactRef", c.artifactRef), ("shadow", c.shadow)):
            if ref is None or (field == "artifactRef" and c.type != "Learned"):
                continue
            if ref.name in maps.get(ns, {}):
                continue
            elsewhere = sorted(n for n, by_name in maps.items() if ref.name in by_name)
            if elsewhere:
                out.append(
                    f"RoutingPolicy {ns}/{_name(p)}: spec.classifier.{field}: ConfigMap "
                    f"{ref.name!r} is in namespace {', '.join(elsewhere)}, not {ns} (objects "
                    f"without a namespace are in -n, here {namespace}); the router would not "
                    "read it"
                )
    return out


def secret_value(
    m: Manifests,
    name: str,
    key: str,
    namespace: str | None = None,
    default_namespace: str = DEFAULT_NAMESPACE,
) -> str | None:
    """A key of a Secret found among the manifests (stringData or base64 data): in
    ``namespace`` (a Secret naming none is in ``default_namespace``), or, without one
    (`tokenyard up`, where there are no namespaces), the first of that name."""
    if namespace is not None:
        found = core_objects(m.others, "Secret", default_namespace).get(namespace, {}).get(name)
        candidates = [found] if found is not None else []
    else:
        candidates = [
            o
            for o in m.others
            if o.get("kind") == "Secret" and (o.get("metadata") or {}).get("name") == name
        ]
    for obj in candidates:
        string_data = obj.get("stringData") or {}
        if key in string_data:
            return str(string_data[key])
        data = obj.get("data") or {}
        if key in data:
            try:
                return base64.b64decode(str(data[key]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


def api_keys_from_manifests(
    m: Manifests, namespace: str = DEFAULT_NAMESPACE
) -> dict[str, dict[str, str]]:
    """Each policy's key-to-tenant map, from Secrets included in the manifests (in the
    policy's namespace; objects that name none are in ``namespace``)."""
    out: dict[str, dict[str, str]] = {}
    for p in m.policies:
        ref = p.spec.tenants.apiKeysSecretRef
        if ref is None:
            continue
        text = secret_value(m, ref.name, ref.key, _namespace(p, namespace), namespace)
        if text is not None:
            out[_name(p)] = parse_api_keys(text)
    return out


def parse_header_args(values: Iterable[str]) -> dict[str, str]:
    """``--header 'Name: value'`` arguments as a header map; 400 when malformed."""
    out: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise bad_request(f"--header {raw!r}: expected 'Name: value'")
        out[name.strip().lower()] = value.strip()
    return out


def _read_body(path: str) -> Any:
    """The body as the router reads it (strict JSON: no NaN, no unpaired surrogate, no
    duplicate key), with the line of a syntax error."""
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        return decode_body(raw)
    except RouterError:
        try:  # parsed again only to say where a syntax error is
            json.loads(raw)
        except json.JSONDecodeError as err:
            raise bad_request(
                f"the request is not valid JSON: {err.msg} at line {err.lineno}"
            ) from None
        except ValueError:  # not UTF-8: decode_body's message says so
            pass
        raise


def error_json(err: RouterError) -> dict[str, Any]:
    """An error as explain prints it: the OpenAI error body plus status and Retry-After."""
    out = err.to_body()
    out["status"] = err.status
    if err.retry_after is not None:
        out["retryAfter"] = err.retry_after
    return out


def main(args: argparse.Namespace) -> int:
    """`tokenyard explain`: print the decision JSON (exit 0) or the error JSON (exit 1)."""
    try:
        manifests = load(args.filename)
    except (ManifestError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        body = _read_body(args.request)
        namespace = getattr(args, "namespace", None) or DEFAULT_NAMESPACE
        config = router_config(manifests, namespace)
        for line in classifier_warnings(manifests, namespace):
            print(f"warning: {line}", file=sys.stderr)
        endpoint = args.endpoint
        if endpoint is None and len(config.policies) == 1:
            # One policy in the manifests: a body without "model" can only mean it.
            endpoint = config.policies[0].endpoint
        if isinstance(body, dict) and "model" not in body and endpoint:
            body = {"model": endpoint, **body}
        kind: RequestKind = "completion" if isinstance(body, dict) and "prompt" in body else "chat"
        result = explain_request(
            body,
            parse_header_args(args.header or []),
            config,
            StaticSpend(),
            time.time(),
            kind=kind,
            api_keys=api_keys_from_manifests(manifests, namespace),
            # A fixed seed: explaining the same request twice gives the same answer.
            rng=random.Random(0),
        )
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # a malformed API-key Secret
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RouterError as err:
        print(json.dumps(error_json(err), indent=2))
        return 1
    print(json.dumps(result, indent=2))
    return 0


__all__ = [
    "api_keys_from_manifests",
    "classifier_warnings",
    "error_json",
    "explain_request",
    "find_policy",
    "main",
    "parse_header_args",
    "router_config",
    "secret_value",
]
