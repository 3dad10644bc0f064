"""Harness for the operator integration tests: the real operator against kmock.

kopf runs in the test's event loop next to kmock; a ``@kopf.on.login`` handler points
it at the emulator. Settings come from TOKENYARD_* environment variables set here,
before the operator reads them, so timers and retries are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import yaml

from tokenyard.operator.main import run_operator
from tokenyard.settings import Settings, load_settings

# Short intervals so each scenario takes seconds, set the way the chart sets them: as
# environment variables, read by load_settings() (only while the operator starts).
OPERATOR_ENV = {
    "TOKENYARD_OPERATOR__RESYNC_INTERVAL_S": "1",
    "TOKENYARD_OPERATOR__RETRY_DELAY_S": "0.5",
}


def operator_settings() -> Settings:
    saved = {k: os.environ.get(k) for k in OPERATOR_ENV}
    os.environ.update(OPERATOR_ENV)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


MANIFESTS = Path(__file__).parents[1] / "manifests"
NS_DEFAULT = "default"
GROUP = "tokenyard.dev/v1alpha1"
POOLS = f"{GROUP}/servingpools"
MODELS = f"{GROUP}/modeldeployments"
POLICIES = f"{GROUP}/routingpolicies"
RAYSERVICES = "ray.io/v1/rayservices"
SECRETS = "v1/secrets"
CONFIGMAPS = "v1/configmaps"
CLAIMS = "v1/persistentvolumeclaims"

_server: dict[str, str] = {}


@kopf.on.login()
def kmock_login(**_: Any) -> kopf.ConnectionInfo:
    """Point kopf at the current test's emulator (production uses kopf's own login)."""
    return kopf.ConnectionInfo(server=_server["url"], insecure=True)


def declare_resources(emulator: Any, *, rayservices: bool = True) -> None:
    with warnings.catch_warnings():
        # kmock 0.8 reads its bundle with the deprecated importlib.resources.read_binary.
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for plural, kind, subs in (
        ("servingpools", "ServingPool", {"status"}),
        ("modeldeployments", "ModelDeployment", {"status", "scale"}),
        ("routingpolicies", "RoutingPolicy", {"status"}),
    ):
        emulator.resources[f"{GROUP}/{plural}"] = kmock.ResourceInfo(
            kind=kind, namespaced=True, verbs=verbs, subresources=subs
        )
    if rayservices:
        emulator.resources[RAYSERVICES] = kmock.ResourceInfo(
            kind="RayService", namespaced=True, verbs=verbs, subresources={"status"}
        )


def load_manifests(*names: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for n in names:
        docs.extend(d for d in yaml.safe_load_all((MANIFESTS / n).read_text()) if d)
    return docs


def resource_of(doc: dict[str, Any]) -> str:
    kind = doc["kind"]
    return {
        "ServingPool": POOLS,
        "ModelDeployment": MODELS,
        "RoutingPolicy": POLICIES,
        "Secret": SECRETS,
        "ConfigMap": CONFIGMAPS,
        "PersistentVolumeClaim": CLAIMS,
    }[kind]


class _OneShot:
    """``async with`` one request on its own connection and session."""

    def __init__(self, method: str, url: str, kwargs: dict[str, Any]) -> None:
        self.method, self.url, self.kwargs = method, url, kwargs
        self.session: aiohttp.ClientSession | None = None
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            headers={"User-Agent": TEST_AGENT},
        )
        self.response = await self.session.request(self.method, self.url, **self.kwargs)
        return self.response

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.release()
        if self.session is not None:
            await self.session.close()


def _res_str(r: Any) -> str:
    gv = f"{r.group}/{r.version}" if r.group else r.version
    return f"{gv}/{r.plural}"


TEST_AGENT = "tokenyard-tests"


class Cluster:
    """Helpers over the emulator: apply objects like kubectl would, read them back.

    Requests go over fresh connections: kopf.operator() cancels, when it stops, every
    task born while it ran, which includes the emulator's handlers of keep-alive
    connections a shared client session would reuse.
    """

    def __init__(self, emulator: Any) -> None:
        self.k = emulator

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return _OneShot(method, f"{str(self.k.url).rstrip('/')}{path}", kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self._request("PATCH", path, **kwargs)

    def delete_(self, path: str, **kwargs: Any) -> Any:
        return self._request("DELETE", path, **kwargs)

    async def apply(self, *docs: dict[str, Any]) -> None:
        for original in docs:
            doc = copy.deepcopy(original)
            res = resource_of(doc)
            ns = doc["metadata"].get("namespace", "default")
            doc["metadata"]["namespace"] = ns
            url = f"/apis/{res.rsplit('/', 1)[0]}" if "/" in res.split("/", 1)[1] else "/api/v1"
            plural = res.rsplit("/", 1)[1]
            if self.get(res, ns, doc["metadata"]["name"]) is not None:
                async with self.patch(
                    f"{url}/namespaces/{ns}/{plural}/{doc['metadata']['name']}",
                    json={"spec": doc.get("spec")},
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as r:
                    assert r.status < 300, await r.text()
            else:
                async with self.post(f"{url}/namespaces/{ns}/{plural}", json=doc) as r:
                    assert r.status < 300, await r.text()

    async def delete(self, res: str, ns: str, name: str) -> None:
        group_version, plural = res.rsplit("/", 1)
        url = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        async with self.delete_(f"{url}/namespaces/{ns}/{plural}/{name}") as r:
            assert r.status < 300, await r.text()

    def get(self, res: str, ns: str, name: str) -> dict[str, Any] | None:
        for (r, ons, oname), obj in list(self.k.objects.items()):
            if _res_str(r) == res and ons == ns and oname == name and not obj.deleted:
                return copy.deepcopy(obj.raw)
        return None

    def all(self, res: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj.raw)
            for (r, _, _), obj in list(self.k.objects.items())
            if _res_str(r) == res and not obj.deleted
        ]

    async def eventually(
        self, check: Callable[[], Any], within: float = 30.0, what: str = "condition"
    ) -> Any:
        deadline = asyncio.get_running_loop().time() + within
        last: Any = None
        while True:
            try:
                last = check()
                if last:
                    return last
            except (KeyError, TypeError, IndexError, AssertionError):
                last = None
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


def reason(obj: dict[str, Any] | None) -> str | None:
    """The Ready condition's reason, if any."""
    c = ready(obj)
    return None if c is None else str(c["reason"])


def ready(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Ready condition of an object, if any."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return dict(c)
    return None


@contextlib.asynccontextmanager
async def operator(
    emulator: Any, *, health_port: int | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the real operator until the block ends (kopf's cleanup handlers run)."""
    _server["url"] = str(emulator.url).rstrip("/")
    stop = asyncio.Event()
    settings = operator_settings()
    if health_port is not None:
        settings.operator.health_port = health_port
    task = asyncio.create_task(
        run_operator(settings, stop_flag=stop, liveness=health_port is not None)
    )
    try:
        # kopf lists then watches each resource; wait until all three watches are open.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            watched = {
                str(r.resource.plural)
                for r in list(emulator)
                if r.resource is not None and r.params.get("watch") == "true"
            }
            if {"servingpools", "modeldeployments", "routingpolicies"} <= watched:
                break
            if task.done():
                task.result()
            assert asyncio.get_running_loop().time() < deadline, "kopf never started watching"
            await asyncio.sleep(0.05)
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


# Every API call the operator made in this session: (verb, group, resource, subresource,
# namespaced). tests/integration/test_rbac.py checks them against the chart's RBAC.
API_CALLS: set[tuple[str, str, str, str, bool]] = set()


def operator_calls(emulator: Any) -> set[tuple[str, str, str, str, bool]]:
    """The operator's requests (kopf's client, not ours) as RBAC tuples; discovery
    requests (/api, /apis/<group>/<version>) are non-resource URLs and left out."""
    out: set[tuple[str, str, str, str, bool]] = set()
    for r in list(emulator):
        if r.headers.get("User-Agent", "").startswith(TEST_AGENT):
            continue
        res = r.resource
        if res is None or not res.plural:
            continue
        method = str(r.method.value if hasattr(r.method, "value") else r.method).upper()
        if method == "GET":
            verb = "watch" if r.params.get("watch") == "true" else ("get" if r.name else "list")
        else:
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
        out.add((verb, res.group or "", res.plural, r.subresource or "", r.namespace is not None))
    return out
