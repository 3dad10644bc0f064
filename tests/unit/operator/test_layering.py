"""Layers: the pure operator modules import no kopf and no Kubernetes client; the
operator imports nothing of the data plane (serving, routing, accounting): what it
shares with the apps is in tokenyard.contract."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[3] / "src" / "tokenyard" / "operator"
PURE = [
    *(
        f"builders/{m}.py"
        for m in (
            "__init__",
            "meta",
            "validation",
            "admission",
            "cluster",
            "serve_config",
            "ray_service",
        )
    ),
    "status.py",
    "plan.py",
    "controller.py",
    "pools.py",
    "orphans.py",
    "parsing.py",
    "store.py",
    "workqueue.py",
    "render.py",
]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_kopf_or_client(name: str) -> None:
    bad = {
        m for m in imports(OPERATOR / name) if m.split(".")[0] in ("kopf", "kubernetes", "aiohttp")
    }
    assert bad == set()


DATA_PLANE = ("tokenyard.serving", "tokenyard.routing", "tokenyard.accounting")


def test_operator_uses_only_the_serving_contract() -> None:
    for path in OPERATOR.rglob("*.py"):
        assert {m for m in imports(path) if m.startswith(DATA_PLANE)} == set(), path.name
