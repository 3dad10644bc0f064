"""Who sends a request: its tenant, from a mapped API key or the policy's tenant header.

The router calls :func:`resolve_tenant` with a request's headers and the endpoint's
key-to-tenant map (:func:`parse_api_keys` reads it from the Secret the operator puts in
the router's environment); the tenant then selects budgets, rate limits and rules.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import yaml

from tokenyard.api.policy import TenantSpec
from tokenyard.routing.errors import bad_request, unauthorized
from tokenyard.routing.request import lower_headers

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,252}$")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of the Authorization header (lower-cased names), if any."""
    auth = headers.get("authorization", "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def resolve_tenant(
    headers: Mapping[str, str],
    spec: TenantSpec,
    api_keys: Mapping[str, str],
    keyed_tenants: Collection[str] = (),
) -> str:
    """The request's tenant: from its API key if mapped, else the tenant header, else default.

    A mapped API key wins over the header (the key is a credential; the header is a
    claim). A header naming a tenant that has an API key anywhere in the pool
    (``keyed_tenants``) is refused (401) without that key: an open endpoint cannot
    spend or rate-limit a keyed tenant. With ``requireKnownTenant`` (its default when
    the policy has keys, :meth:`TenantSpec.require_known`): when keys are configured,
    only a mapped key identifies a tenant; without keys, the tenant header must be
    present. Otherwise 401.
    """
    headers = lower_headers(headers)
    token = bearer_token(headers)
    if token is not None and token in api_keys:
        return api_keys[token]
    claimed = headers.get(spec.header.lower(), "").strip()
    if claimed and not _TENANT_RE.match(claimed):
        raise bad_request(f"{spec.header}: not a valid tenant name", param=spec.header)
    if spec.require_known():
        if api_keys or spec.apiKeysSecretRef is not None:
            raise unauthorized(
                "a valid API key is required" if token is None else "the API key is not known"
            )
        if not claimed:
            raise unauthorized(f"the {spec.header} header is required")
    tenant = claimed or spec.defaultTenant
    if tenant in keyed_tenants:
        raise unauthorized(f"tenant '{tenant}' must authenticate with its API key")
    return tenant


def parse_api_keys(text: str) -> dict[str, str]:
    """The 'key: tenant' YAML map of a tenant-keys Secret; ValueError if malformed."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ValueError(f"API key map is not valid YAML: {err.__class__.__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("API key map must be a mapping of 'key: tenant'")
    out: dict[str, str] = {}
    for i, (key, tenant) in enumerate(data.items()):
        # Never echo the key itself: error messages end up in logs.
        if not isinstance(key, str | int) or not str(key).strip():
            raise ValueError(f"API key map entry {i}: the key must be a non-empty string")
        if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
            raise ValueError(f"API key map entry {i}: the tenant must be a valid name")
        out[str(key).strip()] = tenant
    return out


__all__ = ["bearer_token", "parse_api_keys", "resolve_tenant"]
