"""The operator's seam to the Kubernetes API: a small protocol, kopf's client behind it.

The reconciler talks only to :class:`KubeApi`; production and the kmock integration
tests use :class:`KopfKubeApi` (kopf's own authenticated aiohttp session, so whatever
``@kopf.on.login`` produced, in-cluster service account or a test server, applies);
unit tests use :class:`FakeKubeApi`, an in-memory dict of objects.
"""

from __future__ import annotations

import copy
import datetime
import logging
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tokenyard.api.common import GROUP, VERSION

EVENT_COMPONENT = "tokenyard-operator"


class ApiError(Exception):
    """A Kubernetes API error other than the ones below."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NotFound(ApiError):
    """404: the object (or its whole resource type) does not exist."""


class Conflict(ApiError):
    """409: the object already exists (create) or changed under us."""


@dataclass(frozen=True)
class Resource:
    """A resource type: group ('' for core), version, plural."""

    group: str
    version: str
    plural: str

    def path(
        self, namespace: str | None = None, name: str | None = None, sub: str | None = None
    ) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        parts = [base]
        if namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
        if sub is not None:
            parts.append(sub)
        return "/".join(parts)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


POOLS = Resource(GROUP, VERSION, "servingpools")
MODELS = Resource(GROUP, VERSION, "modeldeployments")
POLICIES = Resource(GROUP, VERSION, "routingpolicies")
RAY_SERVICES = Resource("ray.io", "v1", "rayservices")
SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
CLAIMS = Resource("", "v1", "persistentvolumeclaims")
EVENTS = Resource("", "v1", "events")


class KubeApi(Protocol):
    """The calls the reconciler makes; nothing else reaches the API server."""

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        """The object; raises NotFound."""
        ...

    async def create(
        self, resource: Resource, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create; raises Conflict if it exists, NotFound if the resource type does not."""
        ...

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the object (or its subresource); raises NotFound."""
        ...

    async def served(self, resource: Resource) -> bool:
        """Whether the API server serves this resource type (discovery)."""
        ...

    async def list(
        self, resource: Resource, namespace: str | None, *, limit: int, cont: str = ""
    ) -> dict[str, Any]:
        """One page of a LIST (every namespace when ``namespace`` is None): the list
        object, with ``metadata.continue`` set while more pages follow."""
        ...

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """Record a core/v1 Event about ``involved`` (never raises)."""
        ...


def event_body(
    involved: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    *,
    now: datetime.datetime,
    suffix: str,
) -> dict[str, Any]:
    """A core/v1 Event, as kopf and kubectl describe expect it."""
    meta = involved.get("metadata") or {}
    ref = {
        "apiVersion": involved.get("apiVersion"),
        "kind": involved.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
    }
    ts = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name')}.{suffix}", "namespace": meta.get("namespace")},
        "involvedObject": {k: v for k, v in ref.items() if v},
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _suffix() -> str:
    return uuid.uuid4().hex[:12]


class KopfKubeApi:
    """:class:`KubeApi` over kopf's authenticated API session.

    kopf keeps its client private (``kopf._cogs.clients``); tokenyard pins kopf to one
    version in pyproject.toml, and this class is the only place that touches it.
    """

    def __init__(
        self,
        settings: Any,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        suffix: Callable[[], str] = _suffix,
    ) -> None:
        from kopf._cogs.clients import api, errors

        self._api = api
        self._errors = errors
        self._settings = settings
        self._logger = logger
        self._clock = clock
        self._suffix = suffix

    async def _request(
        self,
        method: str,
        url: str,
        payload: object | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            # No retries here: the reconciler retries the whole pass (level-based).
            response = await self._api.request(
                method,
                url,
                payload=payload,
                headers=headers,
                settings=self._settings,
                logger=self._logger,
                backoffs=[],
            )
            async with response:
                data: dict[str, Any] = await response.json()
                return data
        except self._errors.APINotFoundError as e:
            raise NotFound(404, str(e)) from e
        except self._errors.APIConflictError as e:
            raise Conflict(409, str(e)) from e
        except self._errors.APIError as e:
            raise ApiError(int(getattr(e, "status", 0) or 0), str(e)) from e

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        return await self._request("get", resource.path(namespace, name))

    async def create(
        self, resource: Resource, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self._request("post", resource.path(namespace), payload=dict(body))

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self._request(
            "patch",
            resource.path(namespace, name, subresource),
            payload=dict(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def list(
        self, resource: Resource, namespace: str | None, *, limit: int, cont: str = ""
    ) -> dict[str, Any]:
        query = urllib.parse.urlencode({"limit": limit, **({"continue": cont} if cont else {})})
        return await self._request("get", f"{resource.path(namespace)}?{query}")

    async def served(self, resource: Resource) -> bool:
        base = (
            f"/api/{resource.version}"
            if not resource.group
            else f"/apis/{resource.group}/{resource.version}"
        )
        try:
            doc = await self._request("get", base)
        except NotFound:
            return False
        return any(r.get("name") == resource.plural for r in doc.get("resources") or [])

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        body = event_body(
            involved, type_, reason, message, now=self._clock(), suffix=self._suffix()
        )
        ns = str(body["metadata"]["namespace"] or "default")
        try:
            await self._request("post", EVENTS.path(ns), payload=body)
        except Exception as e:  # an Event is best effort; never fail a reconcile for it
            self._logger.warning(
                "could not post event %s/%s: %r", reason, body["metadata"]["name"], e
            )


class FakeKubeApi:
    """An in-memory :class:`KubeApi` for unit tests: objects by (resource, ns, name),
    merge patches applied like the API server, every call recorded."""

    def __init__(self, served: set[Resource] | None = None) -> None:
        self.objects: dict[tuple[Resource, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, str]] = []
        self.events: list[tuple[str, str, str, str]] = []
        self.served_resources = (
            served
            if served is not None
            else {RAY_SERVICES, POOLS, MODELS, POLICIES, SECRETS, CONFIGMAPS}
        )

    def put(self, resource: Resource, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.objects[(resource, meta.get("namespace", "default"), meta["name"])] = copy.deepcopy(
            dict(body)
        )

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", resource.plural, namespace, name))
        if resource not in self.served_resources:
            raise NotFound(404, "resource type not served")
        try:
            return copy.deepcopy(self.objects[(resource, namespace, name)])
        except KeyError:
            raise NotFound(404, f"{resource.plural} {namespace}/{name} not found") from None

    async def create(
        self, resource: Resource, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.calls.append(("create", resource.plural, namespace, name))
        if resource not in self.served_resources:
            raise NotFound(404, "resource type not served")
        key = (resource, namespace, name)
        if key in self.objects:
            raise Conflict(409, "already exists")
        self.objects[key] = copy.deepcopy(dict(body))
        return copy.deepcopy(self.objects[key])

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(
            ("patch" + (f"/{subresource}" if subresource else ""), resource.plural, namespace, name)
        )
        key = (resource, namespace, name)
        if key not in self.objects:
            raise NotFound(404, f"{resource.plural} {namespace}/{name} not found")
        self.objects[key] = apply_merge_patch(self.objects[key], patch)
        return copy.deepcopy(self.objects[key])

    async def list(
        self, resource: Resource, namespace: str | None, *, limit: int, cont: str = ""
    ) -> dict[str, Any]:
        self.calls.append(("list", resource.plural, namespace or "", cont))
        if resource not in self.served_resources:
            raise NotFound(404, "resource type not served")
        keys = sorted(k for k in self.objects if k[0] == resource and namespace in (None, k[1]))
        start = int(cont or 0)
        page = keys[start : start + limit]
        more = start + limit < len(keys)
        return {
            "metadata": {"continue": str(start + limit) if more else ""},
            "items": [copy.deepcopy(self.objects[k]) for k in page],
        }

    async def served(self, resource: Resource) -> bool:
        self.calls.append(("discover", resource.plural, "", ""))
        return resource in self.served_resources

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        name = str((involved.get("metadata") or {}).get("name"))
        self.events.append((name, type_, reason, message))


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge_patch(out.get(k), v)
    return out
