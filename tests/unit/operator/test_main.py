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


def _kubeconfig(tmp_path, user: dict) -> str:  # type: ignore[no-untyped-def]
    import yaml

    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return str(path)


def test_the_client_library_is_needed_only_for_logins_kopf_cannot_do(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tokenyard.operator.main import needs_client_library

    absent = tmp_path / "no-token"
    token = tmp_path / "token"
    token.write_text("t")
    # In a pod: kopf reads the service account itself.
    assert not needs_client_library({}, token_path=token)
    # Kubeconfigs with a token, client certificates or a password: kopf's own login.
    for user in (
        {"token": "t"},
        {"client-certificate-data": "Y2VydA==", "client-key-data": "a2V5"},
        {"username": "a", "password": "b"},
    ):
        env = {"KUBECONFIG": _kubeconfig(tmp_path, user)}
        assert not needs_client_library(env, token_path=absent), user
    # Exec plugins (EKS, GKE) and auth-providers need the library.
    for user in (
        {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1beta1"}},
        {"auth-provider": {"name": "oidc"}},
        {"tokenFile": "/some/file"},
    ):
        env = {"KUBECONFIG": _kubeconfig(tmp_path, user)}
        assert needs_client_library(env, token_path=absent), user
    # Nothing kopf could read, or an unreadable file: let the library report it.
    assert needs_client_library({"HOME": str(tmp_path)}, token_path=absent)
    assert needs_client_library({"KUBECONFIG": str(tmp_path / "nope")}, token_path=absent)


def test_the_operator_process_runs_without_the_client_library(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What `tokenyard operator` does before importing kopf: kopf then imports without
    the library (it only falls back to its own login and types)."""
    import subprocess
    import sys

    code = (
        "from tokenyard.operator.main import without_client_library as w; w(); "
        "import kopf, sys; "
        "from tokenyard.operator import handlers; "
        "print('kubernetes.client' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr
