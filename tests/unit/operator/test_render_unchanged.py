"""The RayServices rendered from the examples are what they were before the layout of
issue 11 (the fixtures were saved from `tokenyard render` before anything moved), apart
from the Ray Serve import paths that moved, which MOVED lists.

Changed on purpose since (issue 14): every model app's deployment_config gains
``request_router_config`` (PrefixCacheAffinityRouter: replicaRouting Auto with prefix
caching on, the default); the router deployment's ray_actor_options gain the head pin
(``node:__internal_head__``, where the state volume is); every Ray container's env gains
``RAY_SERVE_ENABLE_HA_PROXY=1`` (spec.router.ingress, default HAProxy); and with them the
spec hash; nothing else moved."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tokenyard.operator import render
from tokenyard.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures"

MOVED: dict[str, str] = {}
"""Old Serve import path -> new one. Empty: the router and model apps kept theirs
(``tokenyard.serving.router_app:build_app``, ``tokenyard.serving.model_app:build_app``),
so an upgrade re-renders no RayService for this restructuring."""


@pytest.mark.parametrize(
    ("examples", "fixture"),
    [("examples", "render-examples.yaml"), ("examples/local", "render-local.yaml")],
)
def test_render_matches_the_output_saved_before_the_restructuring(
    examples: str, fixture: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = render.run(
        [str(REPO / examples)], "default", stdout=out, stderr=err, settings=OperatorSettings()
    )
    assert code == 0, err.getvalue()
    expected = (FIXTURES / fixture).read_text()
    for old, new in MOVED.items():
        expected = expected.replace(f"import_path: {old}", f"import_path: {new}")
    assert out.getvalue() == expected
