"""`tokenyard operator`: validate settings, configure logging, run kopf with our handlers.

Called by the CLI (``tokenyard.cli``) and, with an extra login module, by the
integration tests and the benchmark, so they run exactly this code path. kopf is imported
inside the functions: :func:`main` decides first whether the process may do without the
Kubernetes client library (see :func:`needs_client_library`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tokenyard.settings import Settings, load_settings

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Kubeconfig user fields that kopf's own kubeconfig login understands; anything else
# (exec plugins, auth-provider, tokenFile, ...) needs the Kubernetes client library.
_PLAIN_USER_KEYS = {
    "token",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
    "username",
    "password",
}


def kopf_run_kwargs(
    settings: Settings, namespaces: Sequence[str] | None = None, *, liveness: bool = True
) -> dict[str, object]:
    """kopf.operator() arguments from tokenyard settings (pure; tested)."""
    op = settings.operator
    ns = list(namespaces or op.namespaces)
    kwargs: dict[str, object] = {}
    if liveness:
        kwargs["liveness_endpoint"] = f"http://0.0.0.0:{op.health_port}/healthz"
    if ns:
        kwargs["namespaces"] = ns
    else:
        kwargs["clusterwide"] = True
    if op.peering:
        kwargs["peering_name"] = op.peering
        kwargs["standalone"] = False
    else:
        kwargs["standalone"] = True
    return kwargs


def needs_client_library(
    environ: Mapping[str, str], *, token_path: Path = SERVICE_ACCOUNT_TOKEN
) -> bool:
    """Whether logging in needs the Kubernetes client library (pure apart from reading
    the kubeconfig; tested).

    kopf imports the client library whenever it is installed, only to log in through it
    and to recognise its model classes, which the operator never passes. Importing it
    costs about 25 MB of the operator's memory (a sixth of its budget at 1,000 models).
    kopf's own login covers a pod's service account and kubeconfigs with a token, client
    certificates or a password; exec plugins and auth-providers need the library."""
    if token_path.exists():
        return False
    paths = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        home = Path(environ.get("HOME", "~")).expanduser() / ".kube" / "config"
        paths = [str(home)] if home.exists() else []
    if not paths:
        return True  # nothing kopf could read: let the library say what is wrong
    try:
        docs = [yaml.safe_load(Path(p).expanduser().read_text()) or {} for p in paths]
    except (OSError, yaml.YAMLError):
        return True
    current = next((d.get("current-context") for d in docs if d.get("current-context")), None)
    contexts = {c.get("name"): c.get("context") or {} for d in docs for c in _items(d, "contexts")}
    users = {u.get("name"): u.get("user") or {} for d in docs for u in _items(d, "users")}
    user = users.get(contexts.get(current, {}).get("user"))
    if not isinstance(user, dict):
        return True
    return not set(user) <= _PLAIN_USER_KEYS


def _items(doc: Any, key: str) -> list[dict[str, Any]]:
    items = doc.get(key) if isinstance(doc, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def without_client_library() -> None:
    """Make ``import kubernetes`` fail in this process, so kopf falls back to its own
    login and types. Only for the operator's own process, before kopf is imported."""
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]


def configure_logging(settings: Settings) -> None:
    import kopf

    fmt = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(
        debug=settings.log_level.upper() == "DEBUG",
        quiet=settings.log_level.upper() in ("WARNING", "ERROR"),
        log_format=fmt,
        log_refkey="k8s" if fmt is kopf.LogFormat.JSON else None,
    )
    logging.getLogger("tokenyard").setLevel(settings.log_level.upper())


async def run_operator(
    settings: Settings,
    namespaces: Sequence[str] | None = None,
    *,
    extra_modules: Sequence[str] = (),
    stop_flag: asyncio.Event | None = None,
    liveness: bool = True,
) -> bool:
    """Run the operator until stopped. ``extra_modules`` register more handlers (tests
    add a ``@kopf.on.login`` that points at the kmock API emulator). Returns False when
    it stopped because the reconciler failed (see handlers.startup)."""
    import kopf

    importlib.import_module("tokenyard.operator.handlers")
    for mod in extra_modules:
        importlib.import_module(mod)
    from tokenyard.operator.handlers import MEMO_SETTINGS, MEMO_STOP

    kwargs = kopf_run_kwargs(settings, namespaces, liveness=liveness)
    stop = stop_flag if stop_flag is not None else asyncio.Event()
    memo = kopf.Memo()
    memo[MEMO_SETTINGS] = settings
    memo[MEMO_STOP] = stop
    await kopf.operator(stop_flag=stop, memo=memo, **kwargs)  # type: ignore[arg-type]
    task = memo.get("controller_task")
    return not (task is not None and task.done() and not task.cancelled() and task.exception())


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not needs_client_library(os.environ):
        without_client_library()
    configure_logging(settings)
    ok = asyncio.run(run_operator(settings, getattr(args, "namespace", None) or None))
    return 0 if ok else 1
