"""The routers' admin token in the chart: a Secret created once (or the user's), the
operator's env from it, and the router PodMonitor scraping /metrics with it.

``helm template`` has no cluster, so ``lookup`` finds nothing there: the reuse of an
existing Secret's token is checked as far as offline rendering allows (the template's
lookup branch is present and keyed on the Secret it renders; a fresh render gets a fresh
random token). The kubelet reads the Secret for the operator's pod: RBAC is unchanged
(tests/unit/chart/test_chart_rbac.py).
"""

from __future__ import annotations

import base64
import re
from typing import Any

from .test_chart_render import CHART, NAMESPACE, VALUE_SETS, by_kind, render

MONITORS = ["--set", "monitoring.podMonitors.enabled=true"]
DEFAULT_SECRET = "t-tokenyard-router-admin"


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator")]
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def router_endpoint(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ray,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"] == "t-tokenyard-ray"]
    (router,) = [e for e in ray["spec"]["podMetricsEndpoints"] if e["port"] == "serve"]
    return router


def ray_metrics_endpoint(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ray,) = [d for d in by_kind(docs, "PodMonitor") if d["metadata"]["name"] == "t-tokenyard-ray"]
    (metrics,) = [e for e in ray["spec"]["podMetricsEndpoints"] if e["port"] == "metrics"]
    return metrics


def test_default_creates_a_random_token_secret_in_the_release_namespace() -> None:
    docs = render(*MONITORS)
    (secret,) = by_kind(docs, "Secret")
    assert secret["metadata"]["name"] == DEFAULT_SECRET
    # PodMonitor credentials are read from the monitor's namespace: the same one.
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert router_endpoint(docs)["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": DEFAULT_SECRET, "key": "token"},
    }
    for pm in by_kind(docs, "PodMonitor"):
        assert pm["metadata"]["namespace"] == NAMESPACE
    # Ray's own metrics port is not the router: no token sent there.
    assert "authorization" not in ray_metrics_endpoint(docs)
    # Uninstall removes it with the release (only the CRDs and custom resources stay).
    assert "helm.sh/resource-policy" not in secret["metadata"].get("annotations", {})
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    env = operator_env(docs)["TOKENYARD_OPERATOR__ADMIN_TOKEN"]
    assert env == {
        "name": "TOKENYARD_OPERATOR__ADMIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": DEFAULT_SECRET, "key": "token"}},
    }
    # Offline there is nothing to look up: each render draws a new token.
    (again,) = by_kind(render(), "Secret")
    assert again["data"]["token"] != secret["data"]["token"]


def test_the_template_reuses_the_token_of_the_secret_it_renders() -> None:
    text = (CHART / "templates" / "secret-router-admin.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert '$token = index $existing.data "token"' in text
    assert "randAlphaNum 40" in text


def test_existing_secret_is_used_and_none_is_created() -> None:
    docs = render(*MONITORS, *VALUE_SETS["admin-token-existing"])
    assert by_kind(docs, "Secret") == []
    ref = operator_env(docs)["TOKENYARD_OPERATOR__ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "my-admin", "key": "token"}
    assert router_endpoint(docs)["authorization"]["credentials"] == {
        "name": "my-admin",
        "key": "token",
    }


def test_disabled_leaves_the_endpoints_open_and_renders_no_token() -> None:
    docs = render(*MONITORS, *VALUE_SETS["admin-token-off"])
    assert by_kind(docs, "Secret") == []
    assert "TOKENYARD_OPERATOR__ADMIN_TOKEN" not in operator_env(docs)
    assert "authorization" not in router_endpoint(docs)
