"""The model application: one in-cluster ModelDeployment as a Ray Serve LLM ``LLMServer``.

Ray Serve imports :func:`build_app` through ``contract.MODEL_IMPORT_PATH`` with the args the
operator (or `tokenyard up`) rendered: ``{"llm_config": contract.build_llm_config(...)}``.
The deployment always gets the fixed name ``contract.MODEL_DEPLOYMENT`` so the router can
find it with ``serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name)``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from tokenyard.contract import MODEL_DEPLOYMENT


class ModelAppError(ValueError):
    """The model app's arguments are not a usable LLMConfig."""


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application serving one model with vLLM (GPU or CPU, as configured)."""
    cfg = args.get("llm_config")
    if not isinstance(cfg, dict):
        raise ModelAppError("model app args need an 'llm_config' mapping")
    llm_config = LLMConfig(**cfg)
    app = build_llm_deployment(llm_config, override_serve_options={"name": MODEL_DEPLOYMENT})
    # Ray's builder prefixes and renames deployments; the router depends on this name.
    name = app._bound_deployment.name
    if name != MODEL_DEPLOYMENT:
        raise ModelAppError(f"LLM deployment is named {name!r}, expected {MODEL_DEPLOYMENT!r}")
    return app
