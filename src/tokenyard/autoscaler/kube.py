"""The Kubernetes API as the autoscaler uses it, behind a small interface tests replace.

:class:`KubeApi` is what the loop and the leader election call; :class:`KubernetesApi`
implements it with the official client's ``CustomObjectsApi``, which speaks plain dicts
for any group, so Leases (coordination.k8s.io) and Events (events.k8s.io) go through it
too. Replicas are written only through the ModelDeployment scale subresource and status
(of models, pools and policies) only through the status subresource, all as merge
patches that carry only the autoscaler's own fields.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

from tokenyard.api.common import GROUP, VERSION

PLURAL_POOLS = "servingpools"
PLURAL_MODELS = "modeldeployments"
PLURAL_POLICIES = "routingpolicies"
COMPONENT = "tokenyard-autoscaler"


class Conflict(Exception):
    """Someone else changed or created the object first (HTTP 409)."""


class KubeApi(Protocol):
    """Reads pools and models, writes scale, status, Events and the Lease."""

    def list_pools(self, namespace: str | None) -> list[dict[str, Any]]: ...

    def list_models(self, namespace: str | None) -> list[dict[str, Any]]: ...

    def list_policies(self, namespace: str | None) -> list[dict[str, Any]]: ...

    def patch_scale(self, namespace: str, name: str, replicas: int) -> None: ...

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merges ``status`` into a ModelDeployment's status."""
        ...

    def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def create_event(
        self, obj: dict[str, Any], reason: str, note: str, type_: str = "Normal"
    ) -> None: ...

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None: ...

    def patch_lease(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...


def micro_time(ts: float) -> str:
    """RFC 3339 with microseconds, as MicroTime fields (Lease, Event) expect."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: object) -> float | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class KubernetesApi:
    """:class:`KubeApi` over the official Kubernetes client."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        self._co = client.CustomObjectsApi(api_client)
        self._exc = client.exceptions.ApiException

    def _list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        if namespace:
            res = self._co.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        else:
            res = self._co.list_cluster_custom_object(GROUP, VERSION, plural)
        items: list[dict[str, Any]] = res.get("items", []) if isinstance(res, dict) else []
        return items

    def list_pools(self, namespace: str | None) -> list[dict[str, Any]]:
        return self._list(PLURAL_POOLS, namespace)

    def list_models(self, namespace: str | None) -> list[dict[str, Any]]:
        return self._list(PLURAL_MODELS, namespace)

    def list_policies(self, namespace: str | None) -> list[dict[str, Any]]:
        return self._list(PLURAL_POLICIES, namespace)

    def patch_scale(self, namespace: str, name: str, replicas: int) -> None:
        self._co.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL_MODELS, name, {"spec": {"replicas": replicas}}
        )

    def _patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._co.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": status}
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._patch_status(PLURAL_MODELS, namespace, name, status)

    def patch_pool_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._patch_status(PLURAL_POOLS, namespace, name, status)

    def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._patch_status(PLURAL_POLICIES, namespace, name, status)

    def create_event(
        self, obj: dict[str, Any], reason: str, note: str, type_: str = "Normal"
    ) -> None:
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default")
        now = datetime.now(tz=UTC).timestamp()
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # Named like client-go's recorder (object name + hex nanoseconds).
            "metadata": {
                "name": f"{meta.get('name', 'object')}.{time.time_ns():x}",
                "namespace": ns,
            },
            "eventTime": micro_time(now),
            "reportingController": f"{GROUP}/autoscaler",
            "reportingInstance": COMPONENT,
            "action": "Autoscale",
            "reason": reason,
            "note": note[:1024],
            "type": type_,
            "regarding": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", "ModelDeployment"),
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
            },
        }
        self._co.create_namespaced_custom_object("events.k8s.io", "v1", ns, "events", body)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            res = self._co.get_namespaced_custom_object(
                "coordination.k8s.io", "v1", namespace, "leases", name
            )
        except self._exc as exc:
            if exc.status == 404:
                return None
            raise
        return res if isinstance(res, dict) else None

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self._co.create_namespaced_custom_object(
                "coordination.k8s.io", "v1", namespace, "leases", body
            )
        except self._exc as exc:
            if exc.status == 409:
                raise Conflict(str(exc)) from exc
            raise

    def patch_lease(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        # body carries metadata.resourceVersion: the API server rejects the patch with 409
        # when another candidate renewed the Lease in between (optimistic concurrency).
        try:
            self._co.patch_namespaced_custom_object(
                "coordination.k8s.io", "v1", namespace, "leases", name, body
            )
        except self._exc as exc:
            if exc.status == 409:
                raise Conflict(str(exc)) from exc
            raise
