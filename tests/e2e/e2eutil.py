"""Helpers for the e2e tests, importable as ``tokenyard_e2e`` (tests/e2e/conftest.py
loads it, since tests run with --import-mode=importlib)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """Path of helm or kubectl: the copy `make tools` puts in .tools/, else PATH.

    A missing tool fails the test rather than skipping it: with KUBECONFIG set these
    tests exist to run, and a quiet skip would hide an untested chart."""
    local = REPO / ".tools" / name / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make tools` (puts it in .tools/{name}/)")
    return found


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def rejection_causes(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) of each cause in a 422 Status body from the API server.

    The server lists one cause per failed check under ``details.causes`` with the field
    path apart from the message, on every version; the flattened ``message`` around
    them changed wording between releases (up to 1.35 a CEL failure reads
    'spec.x: Invalid value: "object": <rule message>', 1.36 drops '"object": '), so
    tests match causes, not that sentence."""
    causes = (status.get("details") or {}).get("causes") or []
    return [(str(c.get("field", "")), str(c.get("message", ""))) for c in causes]


def rejected_at(status: dict[str, Any], field: str, message: str) -> bool:
    """Whether the server rejected ``field`` with a message containing ``message``.

    A cause naming the field is what counts; servers that list no causes are matched on
    the flattened message: the field path, then the message within the same error."""
    causes = rejection_causes(status)
    if causes:
        return any(f == field and message in m for f, m in causes)
    text = str(status.get("message", ""))
    return any(
        message in part for part in re.split(rf"(?:^|[\s,\[]){re.escape(field)}: ", text)[1:]
    )
