"""The model application: one in-cluster ModelDeployment as a Ray Serve LLM ``LLMServer``.

Ray Serve imports :func:`build_app` through ``contract.MODEL_IMPORT_PATH`` with the args the
operator (or `tokenyard up`) rendered: ``{"llm_config": contract.build_llm_config(...)}``.
The deployment always gets the fixed name ``contract.MODEL_DEPLOYMENT`` so the router can
find it with ``serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name)``.

A model whose replicas are picked by a custom request router (``replicaRouting``
PrefixCacheAffinity) gets a placeholder ingress, :class:`ModelIngress`, at zero
replicas: Ray Serve refuses a custom request router on an application's ingress
deployment under HAProxy (the router's default ingress), because HAProxy would bypass
it for HTTP. Nothing calls a model app over HTTP; the router calls the ``LLMServer``
deployment by handle, where the custom request router is used, so the placeholder costs
no replica and adds no hop.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from tokenyard.contract import LORA_MODULES_ARG, MODEL_DEPLOYMENT, MODEL_INGRESS_DEPLOYMENT


class ModelAppError(ValueError):
    """The model app's arguments are not a usable LLMConfig."""


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application serving one model with vLLM (GPU or CPU, as configured)."""
    cfg = args.get("llm_config")
    if not isinstance(cfg, dict):
        raise ModelAppError("model app args need an 'llm_config' mapping")
    llm_config = LLMConfig(**_with_lora_modules(cfg))
    app = build_llm_deployment(llm_config, override_serve_options={"name": MODEL_DEPLOYMENT})
    # Ray's builder prefixes and renames deployments; the router depends on this name.
    name = app._bound_deployment.name
    if name != MODEL_DEPLOYMENT:
        raise ModelAppError(f"LLM deployment is named {name!r}, expected {MODEL_DEPLOYMENT!r}")
    if has_custom_request_router(cfg):
        return MODEL_INGRESS.bind(app)
    return app


def has_custom_request_router(cfg: dict[str, Any]) -> bool:
    """Whether the rendered llm_config picks replicas with a custom request router."""
    dc = cfg.get("deployment_config")
    rc = dc.get("request_router_config") if isinstance(dc, dict) else None
    return isinstance(rc, dict) and bool(rc.get("request_router_class"))


class ModelIngress:
    """The placeholder ingress of a model app whose LLMServer has a custom request
    router (see the module docstring). It scales from zero only if something calls the
    model app's route over HTTP, and answers that with an OpenAI-style 404."""

    def __init__(self, server: Any) -> None:
        self._server = server  # bound so the LLMServer deployment is part of the app

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(
            {
                "error": {
                    "message": "models are called through the tokenyard router's endpoint",
                    "type": "invalid_request_error",
                    "code": "not_found",
                }
            },
            status_code=404,
        )


MODEL_INGRESS = serve.deployment(
    name=MODEL_INGRESS_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0},
    autoscaling_config={"min_replicas": 0, "max_replicas": 1, "initial_replicas": 0},
)(ModelIngress)


def _with_lora_modules(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with its LoRA adapters (engine argument ``lora_modules``, JSON objects in the
    rendered config) as vLLM's ``LoRAModulePath``: Ray Serve LLM hands vLLM's frontend
    arguments over as they are, and vLLM loads these adapters when the engine starts."""
    engine = cfg.get("engine_kwargs")
    if not isinstance(engine, dict) or not engine.get(LORA_MODULES_ARG):
        return cfg
    from vllm.entrypoints.openai.models.protocol import LoRAModulePath

    modules = engine[LORA_MODULES_ARG]
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("path"), str)
        for m in modules
    ):
        raise ModelAppError(f"engine_kwargs.{LORA_MODULES_ARG} must be a list of {{name, path}}")
    paths = [LoRAModulePath(name=m["name"], path=m["path"]) for m in modules]
    return {**cfg, "engine_kwargs": {**engine, LORA_MODULES_ARG: paths}}
