"""The pool's serveConfigV2: one app per admitted model, then the router; YAML and hash.

The router's application carries its catalogue and the pool's policies as user_config.
Shapes and import paths come from :mod:`tokenyard.contract`, which the apps read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tokenyard import contract
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import ConfigMapKeyRef, RoutingPolicy
from tokenyard.api.pool import ServingPool
from tokenyard.operator.builders.admission import accelerator, model_replicas
from tokenyard.operator.builders.meta import (
    Secrets,
    obj_generation,
    obj_name,
    obj_namespace,
    secret_missing,
)


def model_application(pool: ServingPool, md: ModelDeployment) -> dict[str, Any]:
    """The Ray Serve application of one admitted in-cluster model."""
    assert md.spec.inCluster is not None
    name = obj_name(md)
    acc = accelerator(pool, md.spec.inCluster.accelerator)
    r = model_replicas(md)
    llm_config = contract.build_llm_config(
        name,
        md.spec,
        acc,
        min_replicas=r.min,
        max_replicas=r.max,
        initial_replicas=r.initial,
        autoscale=r.autoscale,
    )
    return {
        "name": contract.model_app_name(name),
        "route_prefix": contract.model_route_prefix(name),
        "import_path": contract.MODEL_IMPORT_PATH,
        "args": {"llm_config": llm_config},
    }


ConfigMaps = Mapping[str, Mapping[str, str]]
"""ConfigMaps read in the namespace: name -> data (absent ones left out)."""

FIELD_ARTIFACT_REF = "spec.classifier.artifactRef"
FIELD_SHADOW_REF = "spec.classifier.shadow"


def policy_classifier(
    policy: RoutingPolicy, configmaps: ConfigMaps | None
) -> tuple[contract.LearnedClassifierEntry | None, str | None]:
    """(the learned classifier to deliver, why it cannot be) for a policy; (None, None)
    for the heuristic. ``configmaps`` None: they could not be read."""
    c = policy.spec.classifier
    if c.type != "Learned" or c.artifactRef is None:
        return None, None
    return _artifact_entry(
        policy, c.artifactRef, FIELD_ARTIFACT_REF, configmaps, "using the heuristic"
    )


def shadow_classifier(
    policy: RoutingPolicy, configmaps: ConfigMaps | None
) -> tuple[contract.LearnedClassifierEntry | None, str | None]:
    """(the candidate classifier of spec.classifier.shadow, why it cannot be delivered);
    (None, None) without one."""
    ref = policy.spec.classifier.shadow
    if ref is None:
        return None, None
    return _artifact_entry(policy, ref, FIELD_SHADOW_REF, configmaps, "nothing is scored")


def _artifact_entry(
    policy: RoutingPolicy,
    ref: ConfigMapKeyRef,
    field: str,
    configmaps: ConfigMaps | None,
    meanwhile: str,
) -> tuple[contract.LearnedClassifierEntry | None, str | None]:
    c = policy.spec.classifier
    where = f"{field}: ConfigMap {ref.name!r}"
    if configmaps is None:
        return None, f"{where} could not be read; {meanwhile}"
    data = configmaps.get(ref.name)
    if data is None:
        return (
            None,
            f"{where} not found in namespace {obj_namespace(policy)!r}; {meanwhile}",
        )
    text = data.get(ref.key)
    if text is None:
        return None, f"{where} has no key {ref.key!r}; {meanwhile}"
    try:
        return contract.learned_classifier_entry(text, c.quality_aim()), None
    except ValueError as e:
        return None, f"{where} key {ref.key!r}: {e}; {meanwhile}"


def policy_entry(
    policy: RoutingPolicy, configmaps: ConfigMaps | None = None
) -> contract.PolicyEntry:
    name = obj_name(policy)
    return contract.PolicyEntry(
        name=name,
        namespace=obj_namespace(policy),
        endpoint=policy.spec.endpoint or name,
        generation=obj_generation(policy),
        spec=policy.spec.dump(),
        tenantKeysEnv=(
            contract.tenant_keys_env(name) if policy.spec.tenants.apiKeysSecretRef else None
        ),
        classifier=policy_classifier(policy, configmaps)[0],
        shadow=shadow_classifier(policy, configmaps)[0],
    )


def router_config(
    pool: ServingPool,
    models: Sequence[ModelDeployment],
    externals: Sequence[ModelDeployment],
    policies: Sequence[RoutingPolicy],
    secrets: Secrets | None,
    *,
    configmaps: ConfigMaps | None = None,
) -> contract.RouterConfig:
    """The router's user_config: its catalogue (admitted in-cluster models and external
    ones) and the pool's policies. Readiness here depends on specs and Secrets only, never
    on observed state, so the rendered RayService does not churn with KubeRay's status.
    For the same reason spill-over's replica count is what the model app asks Ray Serve
    for (``model_replicas(...).initial``, already part of the model app), not the
    status's readyReplicas. The one status the catalogue follows is each model's Capped
    condition, and only when a policy of the pool sets spillover.downgradeWhenCapped."""
    with_capped = any(
        p.spec.spillover.enabled and p.spec.spillover.downgradeWhenCapped for p in policies
    )
    entries: list[contract.CatalogueEntry] = []
    for m in models:
        assert m.spec.inCluster is not None
        acc = accelerator(pool, m.spec.inCluster.accelerator)
        entries.extend(
            contract.catalogue_entries(
                m,
                ready=True,
                accel=acc,
                replicas=model_replicas(m).initial,
                with_capped=with_capped,
            )
        )
    for m in externals:
        assert m.spec.external is not None
        ready = not secret_missing(m.spec.external.apiKeySecretRef, secrets)
        entries.append(contract.catalogue_entry(m, ready=ready))
    entries.sort(key=lambda e: e.name)
    return contract.RouterConfig(
        pool=obj_name(pool),
        namespace=obj_namespace(pool),
        models=entries,
        policies=[policy_entry(p, configmaps) for p in policies],
        routerReplicas=pool.spec.router.minReplicas,
        maxRequestBytes=(
            None
            if pool.spec.router.maxRequestBytes == contract.DEFAULT_MAX_REQUEST_BYTES
            else pool.spec.router.maxRequestBytes
        ),
    )


def router_application(
    pool: ServingPool, config: contract.RouterConfig, admin_token_sha256: str | None = None
) -> dict[str, Any]:
    """The router's Serve application; ``admin_token_sha256`` (never the token) guards
    its ``/metrics`` and stats endpoints."""
    r = pool.spec.router
    args = contract.RouterAppArgs(
        pool=obj_name(pool),
        namespace=obj_namespace(pool),
        ledgerPath=contract.LEDGER_PATH,
        adminTokenSha256=admin_token_sha256,
    )
    return {
        "name": contract.ROUTER_APP_NAME,
        "route_prefix": contract.ROUTER_ROUTE_PREFIX,
        "import_path": contract.ROUTER_IMPORT_PATH,
        "args": args.model_dump(mode="json", exclude_none=True),
        "deployments": [
            {
                "name": contract.ROUTER_DEPLOYMENT,
                "autoscaling_config": {
                    "min_replicas": r.minReplicas,
                    "max_replicas": max(r.maxReplicas, r.minReplicas),
                    "target_ongoing_requests": contract.ROUTER_TARGET_ONGOING_REQUESTS,
                },
                # On the head node, where the state volume is mounted (STATE_MOUNT):
                # the ledger, audit and learning journals must not land on a worker.
                "ray_actor_options": {
                    "num_cpus": r.cpu,
                    "resources": {"node:__internal_head__": 0.001},
                },
                "user_config": config.model_dump(mode="json", exclude_none=True),
            }
        ],
    }


def build_serve_config(
    pool: ServingPool,
    models: Sequence[ModelDeployment],
    router: contract.RouterConfig,
    admin_token_sha256: str | None = None,
) -> dict[str, Any]:
    """serveConfigV2 as a dict: one app per admitted in-cluster model, then the router."""
    apps = [model_application(pool, m) for m in models]
    apps.append(router_application(pool, router, admin_token_sha256))
    return {
        "http_options": {"host": "0.0.0.0", "port": contract.SERVE_PORT},
        "applications": apps,
    }


# libyaml's emitter when PyYAML has it: a pool of 50 models renders ~6x faster.
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _NoAliasDumper(_BaseDumper):  # type: ignore[misc]
    """Equal sub-objects are written out each time, never as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def serve_config_yaml(config: Mapping[str, Any]) -> str:
    """KubeRay takes serveConfigV2 as a YAML string; keys sorted so it is stable."""
    text: str = yaml.dump(
        dict(config), Dumper=_NoAliasDumper, sort_keys=True, default_flow_style=False, width=1000
    )
    return text


# Serializing a big pool's serve config to YAML costs far more than building it, and
# most passes render an unchanged config: remember the text of recent ones by content.
_YAML_CACHE: dict[str, str] = {}
_YAML_CACHE_SIZE = 256


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _serve_yaml_cached(config: Mapping[str, Any], canonical: str) -> str:
    key = hashlib.sha256(canonical.encode()).hexdigest()
    text = _YAML_CACHE.get(key)
    if text is None:
        text = serve_config_yaml(config)
        if len(_YAML_CACHE) >= _YAML_CACHE_SIZE:
            _YAML_CACHE.pop(next(iter(_YAML_CACHE)))
        _YAML_CACHE[key] = text
    return text


def serve_config_text(config: Mapping[str, Any]) -> str:
    """The serveConfigV2 YAML of ``config`` (remembered for recent configs)."""
    return _serve_yaml_cached(config, _canonical(config))


def spec_hash(spec: Mapping[str, Any], serve_config: Mapping[str, Any] | None = None) -> str:
    """Stable hash of a rendered spec (the tokenyard.dev/spec-hash annotation).

    With ``serve_config`` the hash covers that dict in place of the serveConfigV2 text,
    so a different YAML emitter (libyaml or not) never changes the hash.
    """
    content = dict(spec)
    if serve_config is not None:
        content["serveConfigV2"] = serve_config
    return hashlib.sha256(_canonical(content).encode()).hexdigest()[:16]
