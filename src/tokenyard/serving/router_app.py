"""The router: the OpenAI-compatible Ray Serve ingress of a pool (``contract.ROUTER_IMPORT_PATH``).

Ray Serve builds it with :func:`build_app` from ``RouterAppArgs``; the pool's catalogue
and policies arrive as the ``Router`` deployment's ``user_config`` (a ``RouterConfig``)
through :meth:`Router.reconfigure`, so a RoutingPolicy edit reaches running replicas
without a restart. All request logic lives in
:class:`~tokenyard.serving.router.core.RouterCore`, which holds no Ray object but the
backends' handles and the ledger client, so it is also used directly.

Per request: parse, resolve the tenant, extract features (detectors, classifier),
rate-limit, decide (the pure policy engine), spill over when the first target is an
in-cluster model expected to miss its TTFT SLO (``spec.spillover``, estimated from this
replica's :class:`~tokenyard.routing.spillover.QueueClock`), then try the targets in order
with fallback on the failure kinds the policy names (never after the first streamed chunk
was sent), per-attempt and total timeouts and a circuit breaker per backend. Spend
goes to the shared ledger actor; each request leaves one audit line and metrics, and is
counted (endpoint, served target, fallbacks) in the ledger for ``GET /v1/tokenyard/stats``,
which the operator reads into RoutingPolicy status.
Rate limits, circuit breakers and the spill-over queue clock are per replica (local
state, no round-trip; rate limits and the clock take 1 / the router's RUNNING replicas of
the pool's traffic); budgets are shared by all replicas through the ledger.

This module's path is rendered into every RayService: keep :func:`build_app` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.contract import ROUTER_APP_NAME, ROUTER_DEPLOYMENT, RouterAppArgs, RouterConfig
from tokenyard.serving.router import RouterCore


def default_ledger_path(args: RouterAppArgs, state_dir: str) -> str:
    """Where the ledger persists when the app names no ledgerPath."""
    return str(Path(state_dir).expanduser() / f"ledger-{args.namespace}-{args.pool}.json")


@serve.deployment(
    name=ROUTER_DEPLOYMENT,
    # The router only awaits backends; one replica carries many concurrent streams.
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.1},
    health_check_period_s=5,
)
class Router:
    """The Ray Serve ingress deployment; the policy config arrives via reconfigure."""

    def __init__(self, args: dict[str, Any]) -> None:
        from tokenyard.accounting.ledger_actor import get_or_create_ledger
        from tokenyard.settings import load_settings

        settings = load_settings().router
        self._args = RouterAppArgs.model_validate(args)
        path = self._args.ledgerPath or default_ledger_path(self._args, settings.state_dir)
        actor = get_or_create_ledger(
            self._args.namespace, self._args.pool, path, settings.ledger_flush_interval_s
        )
        ledger = LedgerClient(actor)
        # Load spend before serving: a restarted replica must not forget budgets.
        ledger.load_blocking()
        try:
            app_name = serve.get_replica_context().app_name or ROUTER_APP_NAME
        except Exception:  # not inside a Serve replica (direct construction)
            app_name = ROUTER_APP_NAME
        # Serve puts x-request-id on every response already (the id it passes in the
        # request, which the audit line uses), whether its Python proxy or the replica's
        # own HTTP server behind HAProxy took the request: the router adds none of its own.
        self.core = RouterCore(self._args, ledger=ledger, app_name=app_name, echo_request_id=False)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.core.apply_config(RouterConfig.model_validate(user_config))

    async def __call__(self, request: Request) -> Response:
        return await self.core.handle(request)

    async def check_health(self) -> None:
        if self.core.applied is None:
            raise RuntimeError("no router config applied yet")

    async def __del__(self) -> None:
        # Ray Serve awaits an async __del__ on graceful shutdown: persist spend.
        await self.core.aclose()


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application of the router (``contract.ROUTER_IMPORT_PATH``)."""
    parsed = RouterAppArgs.model_validate(args)
    return Router.bind(parsed.model_dump(mode="json"))  # type: ignore[attr-defined]


def build_app_with_config(args: RouterAppArgs, config: RouterConfig) -> Any:
    """The router application with its user_config set (when not deployed from a config)."""
    dep = Router.options(user_config=config.model_dump(mode="json"))  # type: ignore[attr-defined]
    return dep.bind(args.model_dump(mode="json"))


__all__ = ["Router", "build_app", "build_app_with_config", "default_ledger_path"]
