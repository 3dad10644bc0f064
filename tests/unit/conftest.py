"""Unit tests run without a cluster, Ray or network; each gets a short timeout."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None and "tests/unit/" in str(item.path):
            item.add_marker(pytest.mark.timeout(60))
