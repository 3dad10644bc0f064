"""The router's view of its config: endpoints, catalogue and backends, swapped whole.

:func:`build_state` turns a ``RouterConfig`` (the Router deployment's ``user_config``)
into a :class:`RouterState`; :class:`~tokenyard.serving.router.core.RouterCore` swaps it
in on each reconfigure, and a request in flight keeps the state it started with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import CatalogueEntry, PolicyEntry, RouterConfig, direct_policy
from tokenyard.routing.learned.policy import PolicyClassifier, build_policy_classifier
from tokenyard.routing.tenants import parse_api_keys
from tokenyard.serving.backends import Backend, build_backends
from tokenyard.serving.providers import ProviderClient

logger = logging.getLogger("tokenyard.router")

BackendFactory = Callable[
    [Mapping[str, CatalogueEntry], ProviderClient, Mapping[str, Backend] | None],
    Mapping[str, Backend],
]
"""Builds the backends of a catalogue, reusing the previous ones (:func:`build_backends`)."""


@dataclass(frozen=True)
class EndpointPolicy:
    """One endpoint as the router serves it: a RoutingPolicy or a model called directly."""

    endpoint: str
    name: str
    spec: RoutingPolicySpec
    api_keys: Mapping[str, str]
    direct: bool = False
    classifier: PolicyClassifier | None = None
    """The policy's learned classifier when delivered and loadable; None: the heuristic."""
    shadow: PolicyClassifier | None = None
    """The candidate classifier of spec.classifier.shadow: scored beside, never routing."""
    scope: str = ""
    """The endpoint whose budgets and rate limits this one spends: itself, or for a model
    called by name the endpoint of the policy that owns it, so a tenant has one budget
    whatever name reaches the model."""

    def __post_init__(self) -> None:
        if not self.scope:
            object.__setattr__(self, "scope", self.endpoint)


@dataclass(frozen=True)
class RouterState:
    """Everything one request reads from the config; swapped whole by reconfigure."""

    config: RouterConfig
    catalogue: Mapping[str, CatalogueEntry]
    policies: Mapping[str, EndpointPolicy]
    direct: Mapping[str, EndpointPolicy]
    backends: Mapping[str, Backend]
    version: int
    keyed_tenants: frozenset[str] = frozenset()
    """Tenants some policy of the pool maps an API key to: a header alone never names
    them (:func:`~tokenyard.routing.tenants.resolve_tenant`)."""


def _load_api_keys(entry: PolicyEntry, env: Mapping[str, str]) -> dict[str, str]:
    if not entry.tenantKeysEnv:
        return {}
    raw = env.get(entry.tenantKeysEnv, "")
    try:
        return parse_api_keys(raw)
    except ValueError:
        # Fail closed for keys (none known) rather than crash every replica on a typo.
        logger.error("tenant key map unreadable", extra={"policy": entry.name})
        return {}


def _load_classifier(
    entry: PolicyEntry,
    catalogue: Mapping[str, CatalogueEntry],
    previous: RouterState | None,
    *,
    shadow: bool = False,
) -> PolicyClassifier | None:
    learned = entry.shadow if shadow else entry.classifier
    if learned is None:
        return None
    cache = {}
    if previous is not None:
        for old in (*previous.policies.values(), *previous.direct.values()):
            for c in (old.classifier, old.shadow):
                if c is not None:
                    cache[c.version] = c.model
    spec = entry.policy_spec()
    qualities = [catalogue[t.model].quality for t in spec.targets if t.model in catalogue]
    try:
        return build_policy_classifier(learned, qualities, cache)
    except ValueError as e:
        # Keep serving with the heuristic rather than fail the whole reconfigure.
        logger.error(
            "%s classifier not loaded%s: %s",
            "shadow" if shadow else "learned",
            "" if shadow else ", using the heuristic",
            e,
            extra={"policy": entry.name},
        )
        return None


def build_state(
    cfg: RouterConfig,
    previous: RouterState | None,
    client: ProviderClient,
    env: Mapping[str, str],
    make_backends: BackendFactory = build_backends,
) -> RouterState:
    """The router state for a config; reuses backends whose target did not change."""
    catalogue = {m.name: m for m in cfg.models}
    policies: dict[str, EndpointPolicy] = {}
    for p in cfg.policies:
        spec = p.policy_spec()
        policies[p.endpoint] = EndpointPolicy(
            endpoint=p.endpoint,
            name=p.name,
            spec=spec,
            api_keys=_load_api_keys(p, env),
            classifier=_load_classifier(p, catalogue, previous),
            shadow=_load_classifier(p, catalogue, previous, shadow=True),
        )
    # A model called by its servedModelName: routed to itself only, but under the
    # tenants, budgets, rate limits, egress and audit of the first policy that lists it
    # (contract.direct_policy, which explain shares).
    direct: dict[str, EndpointPolicy] = {}
    for m in cfg.models:
        entry = direct_policy(cfg, m.servedModelName)
        if entry is None:
            continue
        owner = next(
            (p for p in cfg.policies if (p.name, p.namespace) == (entry.name, entry.namespace)),
            None,
        )
        direct[m.servedModelName] = EndpointPolicy(
            endpoint=m.servedModelName,
            name=entry.name,
            spec=entry.policy_spec(),
            api_keys=_load_api_keys(entry, env),  # the owner's keys (its tenantKeysEnv)
            direct=True,
            scope=owner.endpoint if owner is not None else m.servedModelName,
        )
    backends = make_backends(catalogue, client, previous.backends if previous else None)
    version = previous.version + 1 if previous else 1
    keyed = frozenset(t for p in policies.values() for t in p.api_keys.values())
    return RouterState(cfg, catalogue, policies, direct, backends, version, keyed)


__all__ = ["BackendFactory", "EndpointPolicy", "RouterState", "build_state"]
