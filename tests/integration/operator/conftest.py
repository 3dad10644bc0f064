"""Fixtures of the operator integration tests (helpers live in harness.py, imported once)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.operator.harness import API_CALLS, Cluster, declare_resources, operator_calls


@pytest.fixture(autouse=True)
def _record_api_calls(kmock: Any) -> Iterator[None]:
    yield
    API_CALLS.update(operator_calls(kmock))


@pytest.fixture()
def cluster(kmock: Any) -> Cluster:
    declare_resources(kmock)
    return Cluster(kmock)
