"""The e2e tests' reading of an API server's 422 answers holds across versions: it
matches the field and the message (details.causes), not the sentence around them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parents[2] / "e2e" / "e2eutil.py"
if "tokenyard_e2e" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("tokenyard_e2e", _PATH)
    assert _spec is not None and _spec.loader is not None
    sys.modules["tokenyard_e2e"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["tokenyard_e2e"])
e2e = sys.modules["tokenyard_e2e"]

RULE = "minReplicas must be <= maxReplicas"


def _status(message: str, causes: list[dict[str, str]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "status": "Failure", "reason": "Invalid"}
    body["message"] = message
    body["code"] = 422
    if causes is not None:
        body["details"] = {"name": "m", "kind": "ModelDeployment", "causes": causes}
    return body


# Kubernetes up to 1.35 writes the type of the value; 1.36 leaves it out.
OLD = _status(
    f'ModelDeployment.tokenyard.dev "m" is invalid: spec.autoscaling: Invalid value: '
    f'"object": {RULE}',
    [{"reason": "FieldValueInvalid", "message": f'Invalid value: "object": {RULE}',
      "field": "spec.autoscaling"}],
)  # fmt: skip
NEW = _status(
    f'ModelDeployment.tokenyard.dev "m" is invalid: spec.autoscaling: Invalid value: {RULE}',
    [{"reason": "FieldValueInvalid", "message": f"Invalid value: {RULE}",
      "field": "spec.autoscaling"}],
)  # fmt: skip
NO_CAUSES = _status(
    f'ModelDeployment.tokenyard.dev "m" is invalid: [spec.tier: Unsupported value: "gold", '
    f"spec.autoscaling: Invalid value: {RULE}]",
    None,
)


@pytest.mark.parametrize("body", [OLD, NEW, NO_CAUSES], ids=["1.35", "1.36", "no-causes"])
def test_the_field_and_message_are_found_in_any_version(body: dict[str, Any]) -> None:
    assert e2e.rejected_at(body, "spec.autoscaling", RULE)


@pytest.mark.parametrize("body", [OLD, NEW, NO_CAUSES], ids=["1.35", "1.36", "no-causes"])
def test_another_field_or_message_is_not_a_match(body: dict[str, Any]) -> None:
    assert not e2e.rejected_at(body, "spec", RULE)
    assert not e2e.rejected_at(body, "spec.autoscaling", "pool is required")
    assert not e2e.rejected_at(body, "spec.autoscaling.minReplicas", RULE)


def test_a_message_under_another_field_does_not_count() -> None:
    body = _status(
        'x is invalid: [spec.tier: Unsupported value: "gold", spec.pool: Required value]',
        [
            {"field": "spec.tier", "message": 'Unsupported value: "gold"'},
            {"field": "spec.pool", "message": "Required value"},
        ],
    )
    assert e2e.rejected_at(body, "spec.pool", "Required value")
    assert not e2e.rejected_at(body, "spec.tier", "Required value")
