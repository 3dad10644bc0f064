"""Shared test fixtures, and the CI rule that a skipped test is a failed one.

In CI (the CI environment variable set, as .ci/run runs) every test except the
real-cluster ones in tests/e2e must run: a skip there means a missing install step
(helm, Prometheus, vLLM...) and fails the run loudly instead of passing quietly.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _may_skip(path: Path | str) -> bool:
    return Path(path).resolve().is_relative_to(E2E)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    if _in_ci() and rep.skipped and not hasattr(rep, "wasxfail") and not _may_skip(item.path):
        rep.outcome = "failed"
        rep.longrepr = f"skipped in CI, where every step must run: {rep.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    path = getattr(collector, "path", None)
    if _in_ci() and rep.skipped and path is not None and not _may_skip(path):
        rep.outcome = "failed"
        rep.longrepr = f"module skipped in CI, where every step must run: {rep.longrepr}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return REPO / "examples"
