"""The import paths the operator renders into serveConfigV2 name real symbols."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml
from tests.unit.operator.factories import model, pool

from tokenyard import contract
from tokenyard.operator import builders


def rendered_import_paths() -> set[str]:
    rs = builders.render_pool(pool(), [model("economy")], []).ray_service
    return {a["import_path"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]}


def test_rendered_paths_are_the_contract_ones() -> None:
    assert rendered_import_paths() == {contract.ROUTER_IMPORT_PATH, contract.MODEL_IMPORT_PATH}


@pytest.mark.parametrize("path", sorted({contract.ROUTER_IMPORT_PATH, contract.MODEL_IMPORT_PATH}))
def test_import_path_is_importable(path: str) -> None:
    module, _, attr = path.partition(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet (the serving layer writes it)")
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install -e '.[serving]')")
    # In a child process: Ray Serve LLM imports torch and vLLM, which install logging
    # handlers and warnings filters that should not leak into the other tests.
    code = (
        "import importlib, sys\n"
        f"mod = importlib.import_module({module!r})\n"
        f"sys.exit(0 if callable(getattr(mod, {attr!r}, None)) else 3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{path} does not import as a callable:\n{proc.stderr[-2000:]}"
