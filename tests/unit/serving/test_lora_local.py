"""Issue 14 in local mode and in the model app: `tokenyard up` renders adapters and the
replica router as the operator does, and the model app hands adapters to vLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tokenyard.api.manifests import ManifestError, load
from tokenyard.api.model import PREFIX_CACHE_AFFINITY_ROUTER
from tokenyard.serving.local import plan

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "local"


def _plan(tmp_path: Path, adapters: list[dict[str, Any]]) -> Any:
    m = load([str(EXAMPLES)])
    md = next(x for x in m.models if x.spec.inCluster is not None)
    doc = md.dump()
    doc["spec"]["inCluster"]["loraAdapters"] = adapters
    m.models[m.models.index(md)] = type(md).model_validate(doc)
    return md, plan(m, host="127.0.0.1", port=8000, state_dir=tmp_path, gpu=False, environ={})


def _app(p: Any, name: str) -> dict[str, Any]:
    return next(a for a in p.serve_config["applications"] if a["name"] == f"model-{name}")


def test_up_renders_the_affinity_router(tmp_path: Path) -> None:
    m = load([str(EXAMPLES)])
    p = plan(m, host="127.0.0.1", port=8000, state_dir=tmp_path, gpu=False, environ={})
    models = [a for a in p.serve_config["applications"] if a["name"].startswith("model-")]
    assert models
    for app in models:
        cfg = app["args"]["llm_config"]["deployment_config"]
        router = cfg["request_router_config"]
        assert router == {"request_router_class": PREFIX_CACHE_AFFINITY_ROUTER}


def test_up_serves_local_adapters_by_absolute_path(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    adapter = tmp_path / "adapters" / "sql"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    md, p = _plan(tmp_path, [{"name": "sql", "source": "file://~/adapters/sql"}])
    name = str(md.metadata["name"])
    kw = _app(p, name)["args"]["llm_config"]["engine_kwargs"]
    assert kw["enable_lora"] is True
    assert kw["lora_modules"] == [{"name": "sql", "path": str(adapter)}]
    entry = next(e for e in p.router_config.models if e.servedModelName == "sql")
    assert (entry.name, entry.adapterOf, entry.replicas) == (f"{name}:sql", name, 1)


def test_up_refuses_an_adapter_directory_without_its_config(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"LoRA adapter 'sql'.*adapter_config\.json"):
        _plan(tmp_path, [{"name": "sql", "source": f"file://{tmp_path}/missing"}])


def test_the_model_app_hands_adapters_to_vllm_as_lora_module_paths() -> None:
    pytest.importorskip("vllm", reason="needs vLLM")
    pytest.importorskip("ray.serve.llm", reason="needs ray[serve] with ray.serve.llm")
    from vllm.entrypoints.openai.models.protocol import LoRAModulePath

    from tokenyard.serving.model_app import ModelAppError, _with_lora_modules

    cfg = {"engine_kwargs": {"enable_lora": True, "lora_modules": [{"name": "a", "path": "/a"}]}}
    out = _with_lora_modules(cfg)
    assert out["engine_kwargs"]["lora_modules"] == [LoRAModulePath(name="a", path="/a")]
    assert cfg["engine_kwargs"]["lora_modules"] == [{"name": "a", "path": "/a"}]  # not mutated
    assert _with_lora_modules({"engine_kwargs": {}}) == {"engine_kwargs": {}}
    with pytest.raises(ModelAppError, match="list of"):
        _with_lora_modules({"engine_kwargs": {"lora_modules": [{"name": "a"}]}})


def test_a_model_with_a_custom_request_router_gets_a_zero_replica_placeholder_ingress() -> None:
    """Ray Serve refuses a custom request router on an app's ingress deployment under
    HAProxy; the LLMServer (called by handle) keeps the affinity router behind a
    placeholder ingress that runs no replica."""
    from ray.serve._private.build_app import build_app as ray_build_app

    from tokenyard import contract
    from tokenyard.api.model import PREFIX_CACHE_AFFINITY_ROUTER, ModelDeployment
    from tokenyard.serving.model_app import build_app

    spec = ModelDeployment.model_validate(
        {
            "metadata": {"name": "m"},
            "spec": {"pool": "p", "inCluster": {"source": "hf://a/b", "accelerator": "cpu"}},
        }
    ).spec
    cfg = contract.build_llm_config(
        "m", spec, None, min_replicas=1, max_replicas=1, initial_replicas=1, autoscale=False
    )
    assert cfg["deployment_config"]["request_router_config"] == {
        "request_router_class": PREFIX_CACHE_AFFINITY_ROUTER
    }
    built = ray_build_app(build_app({"llm_config": cfg}), name="model-m")
    by_name = {d.name: d for d in built.deployments}
    assert set(by_name) == {contract.MODEL_DEPLOYMENT, contract.MODEL_INGRESS_DEPLOYMENT}
    assert built.ingress_deployment_name == contract.MODEL_INGRESS_DEPLOYMENT
    ingress = by_name[contract.MODEL_INGRESS_DEPLOYMENT]
    assert ingress._deployment_config.autoscaling_config.initial_replicas == 0
    assert ingress._deployment_config.autoscaling_config.min_replicas == 0
    llm = by_name[contract.MODEL_DEPLOYMENT]
    assert llm._deployment_config.request_router_config.request_router_class == (
        PREFIX_CACHE_AFFINITY_ROUTER
    )

    plain = {**cfg, "deployment_config": {
        k: v for k, v in cfg["deployment_config"].items() if k != "request_router_config"
    }}  # fmt: skip
    built = ray_build_app(build_app({"llm_config": plain}), name="model-m")
    assert [d.name for d in built.deployments] == [contract.MODEL_DEPLOYMENT]


def test_running_replicas_leave_out_the_placeholder_ingress() -> None:
    """A woken placeholder ingress is no model replica: spill-over's capacity counts
    only the LLMServer's RUNNING replicas."""
    from types import SimpleNamespace

    from tokenyard import contract
    from tokenyard.serving.router import running_replicas

    def dep(n: int) -> SimpleNamespace:
        return SimpleNamespace(replica_states={"RUNNING": n})

    app = SimpleNamespace(
        deployments={contract.MODEL_DEPLOYMENT: dep(2), contract.MODEL_INGRESS_DEPLOYMENT: dep(1)}
    )
    assert running_replicas(app) == 2
