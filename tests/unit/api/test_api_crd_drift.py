"""The CRDs on disk are exactly what the pydantic models generate (as `make manifests` checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokenyard.api.crd import build_crds, crd_filename, render_yaml

REPO = Path(__file__).resolve().parents[3]
CRD_DIRS = [REPO / "crds", REPO / "charts" / "tokenyard" / "crds"]
FIX = "the CRDs are out of date with src/tokenyard/api: run `make crds` and commit the result"


@pytest.mark.parametrize("crd_dir", CRD_DIRS, ids=lambda p: str(p.relative_to(REPO)))
def test_generated_crds_match_files_byte_for_byte(crd_dir: Path) -> None:
    expected = {crd_filename(c): render_yaml(c) for c in build_crds()}
    on_disk = {p.name: p.read_text() for p in crd_dir.glob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), FIX
    for name, text in expected.items():
        assert on_disk[name] == text, f"{crd_dir.name}/{name}: {FIX}"


def test_rendered_yaml_round_trips() -> None:
    for crd in build_crds():
        assert yaml.safe_load(render_yaml(crd)) == crd


def test_crds_cover_the_three_resources_with_short_names() -> None:
    names = {c["spec"]["names"]["kind"]: c["spec"]["names"] for c in build_crds()}
    assert set(names) == {"ServingPool", "ModelDeployment", "RoutingPolicy"}
    assert names["ServingPool"]["shortNames"] == ["spool"]
    assert names["ModelDeployment"]["shortNames"] == ["md"]
    assert names["RoutingPolicy"]["shortNames"] == ["rp"]
    for n in names.values():
        assert n["categories"] == ["tokenyard"]
