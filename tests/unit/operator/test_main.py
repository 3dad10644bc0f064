"""`tokenyard operator` maps settings onto kopf's run arguments."""

from __future__ import annotations

from tokenyard.operator.main import kopf_run_kwargs
from tokenyard.settings import OperatorSettings, Settings


def test_cluster_wide_standalone_with_liveness() -> None:
    assert kopf_run_kwargs(Settings()) == {
        "liveness_endpoint": "http://0.0.0.0:8080/healthz",
        "clusterwide": True,
        "standalone": True,
    }


def test_namespaces_and_peering() -> None:
    s = Settings(
        operator=OperatorSettings(namespaces=["a", "b"], peering="tokenyard", health_port=9000)
    )
    assert kopf_run_kwargs(s, liveness=False) == {
        "namespaces": ["a", "b"],
        "peering_name": "tokenyard",
        "standalone": False,
    }
    assert kopf_run_kwargs(s, ["c"])["namespaces"] == ["c"]


def test_namespaces_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tokenyard.settings import load_settings

    monkeypatch.setenv("TOKENYARD_OPERATOR__NAMESPACES", "team-a, team-b")
    assert kopf_run_kwargs(load_settings())["namespaces"] == ["team-a", "team-b"]
