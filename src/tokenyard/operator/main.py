"""`tokenyard operator`: validate settings, configure logging, run kopf with our handlers.

Called by the CLI (``tokenyard.cli``) and, with an extra login module, by the
integration tests and the benchmark, so they run exactly this code path.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from collections.abc import Sequence

import kopf

from tokenyard.settings import Settings, load_settings


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


def configure_logging(settings: Settings) -> None:
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
) -> None:
    """Run the operator until stopped. ``extra_modules`` register more handlers (tests
    add a ``@kopf.on.login`` that points at the kmock API emulator)."""
    importlib.import_module("tokenyard.operator.handlers")
    for mod in extra_modules:
        importlib.import_module(mod)
    from tokenyard.operator.handlers import MEMO_SETTINGS

    kwargs = kopf_run_kwargs(settings, namespaces, liveness=liveness)
    memo = kopf.Memo()
    memo[MEMO_SETTINGS] = settings
    await kopf.operator(stop_flag=stop_flag, memo=memo, **kwargs)  # type: ignore[arg-type]


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    asyncio.run(run_operator(settings, getattr(args, "namespace", None) or None))
    return 0
