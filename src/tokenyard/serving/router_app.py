"""The router: the OpenAI-compatible Ray Serve ingress of a pool (``contract.ROUTER_IMPORT_PATH``).

Ray Serve builds it with :func:`build_app` from ``RouterAppArgs``; the pool's catalogue
and policies arrive as the ``Router`` deployment's ``user_config`` (a ``RouterConfig``)
through :meth:`Router.reconfigure`, so a RoutingPolicy edit reaches running replicas
without a restart. All request logic lives in :class:`RouterCore`, which holds no Ray
object but the backends' handles and the ledger client, so it is also used directly.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tokenyard.accounting.audit import AuditLog, AuditRecord
from tokenyard.accounting.ledger import cost_usd
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.accounting.metrics import RouterMetrics
from tokenyard.accounting.stats import STATS_PATH, build_stats
from tokenyard.api.policy import RoutingPolicySpec
from tokenyard.contract import (
    ROUTER_APP_NAME,
    ROUTER_DEPLOYMENT,
    CatalogueEntry,
    PolicyEntry,
    RouterAppArgs,
    RouterConfig,
    direct_policy,
)
from tokenyard.routing.classifiers import HeuristicClassifier
from tokenyard.routing.decision import BackendState, Decision
from tokenyard.routing.errors import (
    RouterError,
    bad_request,
    internal_error,
    model_not_found,
    no_backend,
    timeout,
)
from tokenyard.routing.features import extract_features
from tokenyard.routing.policy_engine import apply_spillover, capacity_of, decide
from tokenyard.routing.request import ParsedRequest, RequestKind, lower_headers, parse_request
from tokenyard.routing.spillover import QueueClock
from tokenyard.routing.tenants import parse_api_keys, resolve_tenant
from tokenyard.serving.backends import (
    Backend,
    BackendFailure,
    build_backends,
    classify_exception,
)
from tokenyard.serving.circuit import CircuitBreakers
from tokenyard.serving.providers import ProviderClient

logger = logging.getLogger("tokenyard.router")

# Token estimate for the tokens-per-minute check when a request sets no max_tokens;
# the bucket is corrected with the real count after the response (RateLimiter.commit).
DEFAULT_OUTPUT_ESTIMATE = 256
# Tenant names come from clients: past this many distinct values per replica, metrics
# label further tenants "_other" so a client cannot blow up series cardinality.
MAX_TENANT_LABELS = 200
# How often a replica re-reads Ray Serve application statuses (model app readiness).
APP_STATUS_INTERVAL_S = 2.0

ENDPOINT_HEADER = "x-tokenyard-endpoint"
TARGET_HEADER = "x-tokenyard-target"
REQUEST_ID_HEADER = "x-request-id"

BackendFactory = Callable[
    [Mapping[str, CatalogueEntry], ProviderClient, Mapping[str, Backend] | None],
    Mapping[str, Backend],
]
"""Builds the backends of a catalogue, reusing the previous ones (:func:`build_backends`)."""


@dataclass(frozen=True)
class _Policy:
    """One endpoint as the router serves it: a RoutingPolicy or a model called directly."""

    endpoint: str
    name: str
    spec: RoutingPolicySpec
    api_keys: Mapping[str, str]
    direct: bool = False


@dataclass(frozen=True)
class _State:
    """Everything one request reads from the config; swapped whole by reconfigure."""

    config: RouterConfig
    catalogue: Mapping[str, CatalogueEntry]
    policies: Mapping[str, _Policy]
    direct: Mapping[str, _Policy]
    backends: Mapping[str, Backend]
    version: int


@dataclass
class _Outcome:
    """What one request did, for the ledger, metrics and audit line."""

    status: int = 200
    target: str | None = None
    reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    error: str | None = None
    fallbacks: list[dict[str, str]] = field(default_factory=list)


def _error_response(err: RouterError, request_id: str) -> JSONResponse:
    headers = dict(err.headers())
    headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(err.to_body(), status_code=err.status, headers=headers)


def running_replicas(app: Any) -> int:
    """Replicas of a Serve application's deployments in state RUNNING (a
    ``serve.status()`` ApplicationStatusOverview)."""
    total = 0
    for dep in getattr(app, "deployments", {}).values():
        for state, n in getattr(dep, "replica_states", {}).items():
            if str(getattr(state, "value", state)) == "RUNNING":
                total += int(n)
    return total


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _usage(obj: Mapping[str, Any] | None) -> tuple[int, int] | None:
    if not isinstance(obj, Mapping):
        return None
    u = obj.get("usage")
    if not isinstance(u, Mapping):
        return None
    return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)


def _load_api_keys(entry: PolicyEntry, env: Mapping[str, str]) -> dict[str, str]:
    if not entry.tenantKeysEnv:
        return {}
    raw = env.get(entry.tenantKeysEnv, "")
    try:
        return parse_api_keys(raw)
    except ValueError:
        # Fail closed for keys (none known) rather than crash every replica on a typo.
        logger.error("tenant key map unreadable", extra={"policy": entry.name})
        return {}


def build_state(
    cfg: RouterConfig,
    previous: _State | None,
    client: ProviderClient,
    env: Mapping[str, str],
    make_backends: BackendFactory = build_backends,
) -> _State:
    """The router state for a config; reuses backends whose target did not change."""
    catalogue = {m.name: m for m in cfg.models}
    policies: dict[str, _Policy] = {}
    for p in cfg.policies:
        spec = p.policy_spec()
        policies[p.endpoint] = _Policy(
            endpoint=p.endpoint, name=p.name, spec=spec, api_keys=_load_api_keys(p, env)
        )
    # A model called by its servedModelName: routed to itself only, but under the
    # tenants, budgets, rate limits, egress and audit of the first policy that lists it
    # (contract.direct_policy, which explain shares).
    direct: dict[str, _Policy] = {}
    for m in cfg.models:
        entry = direct_policy(cfg, m.servedModelName)
        if entry is None:
            continue
        direct[m.servedModelName] = _Policy(
            endpoint=m.servedModelName,
            name=entry.name,
            spec=entry.policy_spec(),
            api_keys=_load_api_keys(entry, env),  # the owner's keys (its tenantKeysEnv)
            direct=True,
        )
    backends = make_backends(catalogue, client, previous.backends if previous else None)
    version = previous.version + 1 if previous else 1
    return _State(cfg, catalogue, policies, direct, backends, version)


class RouterCore:
    """The router's request handling, independent of how it is hosted."""

    def __init__(
        self,
        args: RouterAppArgs,
        *,
        ledger: LedgerClient,
        provider: ProviderClient | None = None,
        metrics: RouterMetrics | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
        watch_apps: bool = True,
        backend_factory: BackendFactory = build_backends,
        app_name: str = ROUTER_APP_NAME,
    ) -> None:
        self.args = args
        self.app_name = app_name
        """This router's Serve application: its RUNNING replicas share the pool's traffic."""
        self.ledger = ledger
        self.provider = provider or ProviderClient()
        self.metrics = metrics or RouterMetrics()
        self.audit = audit or AuditLog(args.auditPath)
        self._clock = clock
        self._rng = rng or random.Random()
        self._env = env if env is not None else os.environ
        self._classifier = HeuristicClassifier()
        self._state: _State | None = None
        self._limiters: dict[str, Any] = {}
        self._breakers: dict[str, CircuitBreakers] = {}
        self._app_status: dict[str, str] | None = None
        self._was_running: set[str] = set()
        self._running_replicas: dict[str, int] = {}
        """Replicas Ray Serve reports RUNNING, per model app (from the status watch)."""
        self._running_reads = 0
        self._configured_routers = 1
        """spec.router.minReplicas as rendered (routerReplicas): the share's basis until
        the status watch has counted this router's RUNNING replicas."""
        self._running_routers: int | None = None
        self._live: dict[str, int] | None = None
        self._live_key: tuple[int, int] | None = None
        self._watch_apps = watch_apps
        self._watcher: asyncio.Task[None] | None = None
        self._tenant_labels: set[str] = set()
        self._make_backends = backend_factory
        # Per model, the prompts this replica sent and has not seen start (spill-over).
        # Kept across configs: its entries leave by themselves when nothing is in flight.
        self.load = QueueClock()

    # -- configuration -------------------------------------------------------------

    def apply_config(self, cfg: RouterConfig) -> None:
        """Swap in a new config atomically; requests in flight keep the old one."""
        from tokenyard.accounting.ratelimit import RateLimiter

        state = build_state(cfg, self._state, self.provider, self._env, self._make_backends)
        self._configured_routers = cfg.routerReplicas
        share = self.share  # limits are the pool's; each replica takes its part
        self.load.share = share
        for endpoint, pol in {**state.direct, **state.policies}.items():
            limiter = self._limiters.get(endpoint)
            if limiter is None:
                self._limiters[endpoint] = RateLimiter(pol.spec.rateLimits, share)
            else:
                limiter.configure(pol.spec.rateLimits, share)
            breakers = self._breakers.get(endpoint)
            if breakers is None:
                self._breakers[endpoint] = CircuitBreakers(pol.spec.fallback.circuitBreaker)
            else:
                breakers.configure(pol.spec.fallback.circuitBreaker)
                breakers.forget(state.catalogue)
        windows = sorted({b.window for p in state.policies.values() for b in p.spec.budgets})
        if windows:
            self.ledger.configure_windows(windows)
        self._state = state
        logger.info(
            "router config applied",
            extra={
                "version": state.version,
                "models": len(state.catalogue),
                "endpoints": sorted(state.policies),
            },
        )

    @property
    def state(self) -> _State:
        if self._state is None:
            raise no_backend("the router has no configuration yet")
        return self._state

    # -- background ----------------------------------------------------------------

    def start_background(self) -> None:
        """Start the ledger refresh and app-status watch on the running loop."""
        self.ledger.start()
        if self._watch_apps and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_app_status())

    async def _watch_app_status(self) -> None:
        from ray import serve

        while True:
            try:
                st = await asyncio.to_thread(serve.status)
                self._app_status = {
                    name: str(getattr(app.status, "value", app.status))
                    for name, app in st.applications.items()
                }
                self.note_running({n: running_replicas(a) for n, a in st.applications.items()})
            except Exception:
                logger.warning("could not read Serve application status", exc_info=True)
            await asyncio.sleep(APP_STATUS_INTERVAL_S)

    def note_running(self, by_app: dict[str, int]) -> None:
        """Replicas Ray Serve runs per application, as the status watch read them. This
        router's own count sets the share of the pool's traffic each replica assumes."""
        self._running_replicas = by_app
        self._running_reads += 1
        routers = by_app.get(self.app_name, 0)
        if routers > 0 and routers != self._running_routers:
            before = self.share
            self._running_routers = routers
            if self.share != before:
                self._reshare()

    @property
    def share(self) -> float:
        """This replica's part of the pool's traffic: 1 / the router's RUNNING replicas
        (Ray Serve scales it between spec.router.minReplicas and maxReplicas), or
        1 / minReplicas until the status watch has counted them. Rate limits and the
        spill-over queue estimate are the pool's, each replica takes this part."""
        return 1 / (self._running_routers or self._configured_routers)

    def _reshare(self) -> None:
        share = self.share
        self.load.share = share
        for limiter in self._limiters.values():
            limiter.configure(limiter.limits, share)
        logger.info(
            "router replicas changed: each takes its share of limits and queues",
            extra={"routerReplicas": round(1 / share), "share": round(share, 4)},
        )

    def live_replicas(self) -> dict[str, int] | None:
        """Model name to replicas Ray Serve reports running, for spill-over; None until
        the status watch has read them (the catalogue's count is used meanwhile).
        Mapped once per status read or config, not per request."""
        running, state = self._running_replicas, self.state
        key = (self._running_reads, state.version)
        if self._live_key != key:
            out: dict[str, int] = {}
            for name, entry in state.catalogue.items():
                if entry.app is not None and entry.app in running:
                    out[name] = running[entry.app]
            self._live, self._live_key = (out if running else None), key
        return self._live

    def _ready(self, entry: CatalogueEntry) -> bool:
        if not entry.ready:
            return False
        if entry.kind != "InCluster" or entry.app is None or self._app_status is None:
            return True
        status = self._app_status.get(entry.app)
        if status == "RUNNING":
            self._was_running.add(entry.app)
            return True
        # A running app being updated (scaling, new version) keeps serving meanwhile.
        return status == "DEPLOYING" and entry.app in self._was_running

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        with contextlib.suppress(Exception):
            await self.ledger.flush()
        await self.ledger.aclose()
        await self.provider.aclose()
        self.audit.close()

    # -- HTTP ----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        self.start_background()
        path = request.url.path.rstrip("/") or "/"
        method = request.method
        if method == "POST" and path == "/v1/chat/completions":
            return await self.completion(request, "chat")
        if method == "POST" and path == "/v1/completions":
            return await self.completion(request, "completion")
        if method == "GET" and path == "/v1/models":
            return JSONResponse(self.models())
        if method == "GET" and path in ("/healthz", "/-/healthz"):
            return self.health()
        if method == "GET" and path == "/metrics":
            self._update_gauges()
            body, ctype = self.metrics.exposition()
            return Response(body, media_type=ctype)
        if method == "POST" and path == "/v1/tokenyard/explain":
            return await self.explain(request)
        if method == "GET" and path == STATS_PATH:
            try:
                return JSONResponse(self.stats())
            except RouterError as not_ready:
                return _error_response(not_ready, uuid.uuid4().hex)
        err = RouterError(404, f"no route {method} {path}", type="invalid_request_error")
        return _error_response(err, uuid.uuid4().hex)

    def health(self) -> Response:
        if self._state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "configVersion": self._state.version,
                # Tells a config change applied in place from a restarted replica.
                "pid": os.getpid(),
                "endpoints": sorted(self._state.policies),
                "models": sorted(self._state.catalogue),
            }
        )

    def models(self) -> dict[str, Any]:
        state = self.state
        data: list[dict[str, Any]] = []
        for endpoint, pol in sorted(state.policies.items()):
            data.append(
                {
                    "id": endpoint,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tokenyard",
                    "tokenyard": {
                        "type": "endpoint",
                        "policy": pol.name,
                        "strategy": pol.spec.strategy,
                        "targets": [t.model for t in pol.spec.targets],
                    },
                }
            )
        for name, entry in sorted(state.catalogue.items()):
            data.append(
                {
                    "id": entry.servedModelName,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tokenyard",
                    "tokenyard": {
                        "type": "model",
                        "name": name,
                        "kind": entry.kind,
                        "quality": entry.quality,
                        "inputPer1M": entry.inputPer1M,
                        "outputPer1M": entry.outputPer1M,
                        "ready": self._ready(entry),
                    },
                }
            )
        return {"object": "list", "data": data}

    def stats(self) -> dict[str, Any]:
        """Observed traffic and spend per endpoint, summed over every router replica
        (read from the ledger mirror: at most the refresh interval behind)."""
        state = self.state
        return build_stats(
            pool=self.args.pool,
            namespace=self.args.namespace,
            now=self._clock(),
            policies={e: p.spec for e, p in state.policies.items()},
            direct={e: p.spec for e, p in state.direct.items()},
            source=self.ledger.mirror,
        )

    async def explain(self, request: Request) -> Response:
        from tokenyard.routing.explain import explain_request

        request_id = uuid.uuid4().hex
        try:
            payload = await self._json(request)
            state = self.state
            kind: RequestKind = (
                "completion" if isinstance(payload, dict) and "prompt" in payload else "chat"
            )
            result = explain_request(
                payload,
                dict(request.headers.items()),
                state.config,
                self.ledger,
                self._clock(),
                kind=kind,
                api_keys={p.name: p.api_keys for p in state.policies.values()},
                backends={
                    n: BackendState(ready=self._ready(e)) for n, e in state.catalogue.items()
                },
                classifier=self._classifier,
                load=self.load,
                live_replicas=self.live_replicas(),
            )
        except RouterError as err:
            return _error_response(err, request_id)
        return JSONResponse(result, headers={REQUEST_ID_HEADER: request_id})

    @staticmethod
    async def _json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None

    # -- completions ---------------------------------------------------------------

    def _backend_states(self, state: _State, endpoint: str, now: float) -> dict[str, BackendState]:
        ready = {name: self._ready(e) for name, e in state.catalogue.items()}
        return self._breakers[endpoint].backend_states(ready, now)

    async def completion(self, request: Request, kind: RequestKind) -> Response:
        started = time.perf_counter()
        now = self._clock()
        # A client's request id is kept (bounded) so its logs and the audit line join up.
        request_id = (request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)[:128]
        record = AuditRecord(
            time=now, request_id=request_id, tenant="", endpoint="", kind=kind, status=0,
            latency_ms=0.0,
        )  # fmt: skip
        pol: _Policy | None = None
        try:
            state = self.state
            body = await self._json(request)
            headers = lower_headers(request.headers.items())
            parsed = parse_request(body, headers, kind)
            record.endpoint = parsed.model
            record.stream = parsed.stream
            pol = state.policies.get(parsed.model) or state.direct.get(parsed.model)
            if pol is None:
                raise model_not_found(parsed.model)
            tenant = resolve_tenant(headers, pol.spec.tenants, pol.api_keys)
            record.tenant = tenant
            features = extract_features(
                parsed, pol.spec, pol.endpoint, tenant, classifier=self._classifier
            )
            record.difficulty = round(features.difficulty, 4)
            record.data_classes = sorted(features.data_classes)
            if pol.spec.audit.includePrompts:
                record.prompt = parsed.prompt_text
            est = parsed.prompt_tokens + (parsed.max_tokens or DEFAULT_OUTPUT_ESTIMATE)
            self._limiters[pol.endpoint].check(tenant, est, now)
            decision = decide(
                features,
                pol.spec,
                state.catalogue,
                self._backend_states(state, pol.endpoint, now),
                self.ledger,
                now,
                self._rng,
            )
            decision = apply_spillover(
                decision,
                state.catalogue,
                self.load,
                features.prompt_tokens,
                now,
                pol.spec.spillover,
                live_replicas=self.live_replicas(),
            )
            if decision.spilled_from is not None:
                record.spilled_from = decision.spilled_from
                record.capacity_downgrade = decision.capacity_downgrade
                counter = (
                    self.metrics.capacity_downgrades
                    if decision.capacity_downgrade
                    else self.metrics.spillovers
                )
                counter.labels(pol.endpoint, decision.spilled_from, decision.targets[0].model).inc()
            self.metrics.decision_latency.labels(endpoint=pol.endpoint).observe(
                time.perf_counter() - started
            )
            record.rule = decision.rule
            record.strategy = decision.strategy
            record.downgraded = bool(decision.downgraded)
        except RouterError as err:
            record.status = err.status
            record.error = err.code or err.type
            if pol is not None:
                self.metrics.rejections.labels(
                    endpoint=pol.endpoint,
                    tenant=self._tenant_label(record.tenant),
                    reason=err.code or err.type,
                ).inc()
            self._finish(record, pol, started, _Outcome(status=err.status))
            return _error_response(err, request_id)
        except Exception:
            logger.exception("router failed before routing", extra={"request_id": request_id})
            self._finish(record, pol, started, _Outcome(status=500))
            return _error_response(internal_error(), request_id)

        ctx = _Ctx(
            core=self,
            state=state,
            pol=pol,
            parsed=parsed,
            decision=decision,
            record=record,
            started=started,
            est_tokens=est,
            request_id=request_id,
        )
        if parsed.stream:
            return await ctx.stream()
        return await ctx.complete()

    def _finish(
        self, record: AuditRecord, pol: _Policy | None, started: float, out: _Outcome
    ) -> None:
        """Account one finished request: ledger, rate limiter, metrics, audit."""
        now = self._clock()
        latency = time.perf_counter() - started
        record.status = out.status
        record.latency_ms = round(latency * 1000, 3)
        record.target = out.target
        record.reason = out.reason
        record.tokens_in = out.tokens_in
        record.tokens_out = out.tokens_out
        record.cost_usd = round(out.cost, 10)
        record.fallbacks = out.fallbacks
        if out.error and not record.error:
            record.error = out.error
        endpoint = pol.endpoint if pol is not None else "-"
        tenant = self._tenant_label(record.tenant)
        target = out.target or "-"
        try:
            # Tokens a target produced are spent even if the request then failed (a
            # stream that broke midway): providers bill them.
            if pol is not None and out.target is not None and out.tokens_in + out.tokens_out:
                self.ledger.record(
                    tenant=record.tenant,
                    endpoint=pol.endpoint,
                    model=out.target,
                    cost_usd=out.cost,
                    tokens_in=out.tokens_in,
                    tokens_out=out.tokens_out,
                    now=now,
                )
            if pol is not None:
                self.ledger.record_traffic(
                    endpoint=pol.endpoint,
                    target=out.target,
                    fallbacks=len(out.fallbacks),
                    now=now,
                )
            if pol is not None and out.target is not None:
                self.metrics.tokens_in.labels(endpoint, target, tenant).inc(out.tokens_in)
                self.metrics.tokens_out.labels(endpoint, target, tenant).inc(out.tokens_out)
                self.metrics.cost_usd.labels(endpoint, target, tenant).inc(out.cost)
            self.metrics.requests.labels(endpoint, target, tenant, str(out.status)).inc()
            if pol is not None:
                self.metrics.request_latency.labels(endpoint=endpoint).observe(latency)
                self._update_budget_gauge(pol, record.tenant, now)
        except Exception:
            logger.exception("accounting failed", extra={"request_id": record.request_id})
        if pol is None or pol.spec.audit.enabled:
            self.audit.write(record)

    def _tenant_label(self, tenant: str) -> str:
        if not tenant:
            return "-"
        if tenant in self._tenant_labels:
            return tenant
        if len(self._tenant_labels) < MAX_TENANT_LABELS:
            self._tenant_labels.add(tenant)
            return tenant
        return "_other"

    def _update_budget_gauge(self, pol: _Policy, tenant: str, now: float) -> None:
        budget = next((b for b in pol.spec.budgets if b.tenant == tenant), None) or next(
            (b for b in pol.spec.budgets if b.tenant == "*"), None
        )
        if budget is None:
            return
        spent = self.ledger.spend(tenant, pol.endpoint, budget.window, now)
        label = self._tenant_label(tenant)
        self.metrics.budget_remaining.labels(endpoint=pol.endpoint, tenant=label).set(
            max(0.0, budget.limitUSD - spent)
        )

    def _update_gauges(self) -> None:
        now = self._clock()
        for breakers in self._breakers.values():
            for name, st in breakers.states(now).items():
                self.metrics.set_circuit(name, st)


class _Ctx:
    """One routed request: the attempt loop, streaming and accounting."""

    def __init__(
        self,
        *,
        core: RouterCore,
        state: _State,
        pol: _Policy,
        parsed: ParsedRequest,
        decision: Decision,
        record: AuditRecord,
        started: float,
        est_tokens: int,
        request_id: str,
    ) -> None:
        self.core = core
        self.state = state
        self.pol = pol
        self.parsed = parsed
        self.decision = decision
        self.record = record
        self.started = started
        self.est = est_tokens
        self.request_id = request_id
        self.fb = pol.spec.fallback
        self.deadline = time.monotonic() + self.fb.totalTimeoutSeconds
        self.out = _Outcome()
        self.breakers = core._breakers[pol.endpoint]
        self.body = dict(parsed.body)
        self.client_wants_usage = bool(
            isinstance(self.body.get("stream_options"), Mapping)
            and self.body["stream_options"].get("include_usage")
        )
        if parsed.stream:
            # Always ask for usage: spend is accounted from it, even when the client
            # did not ask (the usage-only chunk is then not forwarded).
            opts = dict(self.body.get("stream_options") or {})
            opts["include_usage"] = True
            self.body["stream_options"] = opts

    def _headers(self) -> dict[str, str]:
        return {
            REQUEST_ID_HEADER: self.request_id,
            ENDPOINT_HEADER: self.pol.endpoint,
            TARGET_HEADER: self.out.target or "",
        }

    def _fail(self, err: RouterError) -> Response:
        self.out.status = err.status
        self.out.error = err.code or err.type
        self.core._finish(self.record, self.pol, self.started, self.out)
        return _error_response(err, self.request_id)

    def _candidates(self) -> list[tuple[str, str]]:
        return [(c.model, c.reason) for c in self.decision.targets][: self.fb.maxAttempts]

    def _note_fallback(self, target: str, reason: str, detail: str) -> None:
        self.out.fallbacks.append({"target": target, "reason": reason, "detail": detail[:200]})
        self.core.metrics.fallbacks.labels(self.pol.endpoint, target, reason).inc()

    def _exhausted(self, last: BackendFailure | None) -> RouterError:
        if time.monotonic() >= self.deadline:
            return timeout("the request timed out after all attempts")
        reasons = {f["reason"] for f in self.out.fallbacks}
        if last is not None and reasons == {"Timeout"}:
            return timeout("every target timed out")
        now = self.core._clock()
        waits = [
            w
            for name, _ in self._candidates()
            if (w := self.breakers.get(name).retry_after(now)) is not None
        ]
        tried = ", ".join(f["target"] for f in self.out.fallbacks) or "none"
        msg = f"no backend could serve the request (tried: {tried})"
        return no_backend(msg, retry_after=min(waits)) if waits else no_backend(msg)

    def _passthrough(self, failure: BackendFailure) -> Response:
        """A failure that another target would repeat (a 4xx): answer it as it came."""
        self.out.status = failure.status
        self.out.error = "backend_rejected"
        self.core._finish(self.record, self.pol, self.started, self.out)
        body = (
            failure.body
            or RouterError(failure.status, str(failure), type="invalid_request_error").to_body()
        )
        return JSONResponse(body, status_code=failure.status, headers=self._headers())

    def _account(self, usage: tuple[int, int] | None, streamed_chunks: int) -> None:
        entry = self.state.catalogue[self.out.target or ""]
        if usage is None:
            # No usage from the backend: charge the estimate, never zero.
            usage = (self.parsed.prompt_tokens, streamed_chunks)
        self.out.tokens_in, self.out.tokens_out = usage
        self.out.cost = cost_usd(entry, usage[0], usage[1])
        self.core._limiters[self.pol.endpoint].commit(
            self.record.tenant, self.est, usage[0] + usage[1], self.core._clock()
        )

    def _classify(self, exc: BaseException, target: str) -> BackendFailure:
        if isinstance(exc, BackendFailure):
            return exc
        if isinstance(exc, TimeoutError):
            return BackendFailure(f"{target}: attempt timed out", kind="Timeout", status=504)
        return classify_exception(exc, target)

    def _after_failure(self, target: str, failure: BackendFailure) -> bool:
        """Record a failed attempt; True when the policy lets the request move on."""
        now = self.core._clock()
        breaker = self.breakers.get(target)
        if failure.kind in ("Error", "Timeout", "Unavailable", "Overloaded"):
            breaker.record_failure(now)
        elif failure.kind is None:
            breaker.record_success(now)  # it answered; the request itself was at fault
        else:
            breaker.release(now)  # rate limited: says nothing about its health
        self.core.metrics.set_circuit(target, breaker.state(now))
        if failure.kind is None or failure.kind not in self.fb.retryOn:
            return False
        self._note_fallback(target, failure.kind, str(failure))
        return True

    @contextlib.contextmanager
    def _in_flight(self, target: str) -> Iterator[None]:
        """One attempt on ``target`` as spill-over's queue clock sees it: sent on entry,
        started exactly once on exit, whatever ends the wait (first chunk, answer,
        failure, timeout, cancellation), so the in-flight count cannot leak. External
        targets are not counted: spill-over never uses their load."""
        entry = self.state.catalogue.get(target)
        if entry is None or entry.kind != "InCluster":
            yield
            return
        load = self.core.load
        cap = capacity_of(entry, self.core.live_replicas())
        load.sent(target, cap, self.parsed.prompt_tokens, self.core._clock())
        try:
            yield
        finally:
            load.started(target, self.core._clock())

    def _attempts(self) -> Iterator[tuple[str, str, Any, float]]:
        """(target, reason, backend, per-attempt timeout) for each target to try, in
        order, until the total deadline passes. A target whose circuit is open or that
        has no backend is skipped, which counts as a fallback. Lazy: the remaining time
        is measured when the caller asks for the next attempt."""
        for target, reason in self._candidates():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return
            if not self.breakers.get(target).allow(self.core._clock()):
                self._note_fallback(target, "CircuitOpen", "circuit breaker open")
                continue
            backend = self.state.backends.get(target)
            if backend is None:
                self._note_fallback(target, "Unavailable", "no backend for target")
                continue
            yield target, reason, backend, min(self.fb.perAttemptTimeoutSeconds, remaining)

    async def complete(self) -> Response:
        last: BackendFailure | None = None
        for target, reason, backend, per in self._attempts():
            try:
                # Without a stream the first token is not seen: the answer ends the wait.
                with self._in_flight(target):
                    result = await asyncio.wait_for(
                        backend.complete(self.parsed.kind, self.body, per), per
                    )
            except asyncio.CancelledError:
                self.breakers.get(target).release(self.core._clock())
                raise
            except Exception as exc:
                failure = self._classify(exc, target)
                last = failure
                if not self._after_failure(target, failure):
                    if failure.status < 500 and failure.status != 429:
                        self.out.target = target
                        return self._passthrough(failure)
                    err = RouterError(
                        failure.status,
                        str(failure),
                        type="server_error" if failure.status >= 500 else "rate_limit_error",
                        code=(failure.kind or "error").lower(),
                        retry_after=failure.retry_after,
                    )
                    self.out.target = target
                    return self._fail(err)
                continue
            self.breakers.get(target).record_success(self.core._clock())
            self.core.metrics.set_circuit(target, "closed")
            self.out.target, self.out.reason = target, reason
            result["model"] = self.state.catalogue[target].servedModelName
            self._account(_usage(result), 0)
            self.out.status = 200
            self.core._finish(self.record, self.pol, self.started, self.out)
            return JSONResponse(result, headers=self._headers())
        return self._fail(self._exhausted(last))

    async def stream(self) -> Response:
        last: BackendFailure | None = None
        for target, reason, backend, per in self._attempts():
            agen = backend.stream(self.parsed.kind, self.body, per)
            try:
                with self._in_flight(target):
                    first = await asyncio.wait_for(agen.__anext__(), per)
            except StopAsyncIteration:
                failure = BackendFailure(f"{target}: empty stream", kind="Error")
            except asyncio.CancelledError:
                self.breakers.get(target).release(self.core._clock())
                await _aclose(agen)
                raise
            except Exception as exc:
                failure = self._classify(exc, target)
            else:
                self.breakers.get(target).record_success(self.core._clock())
                self.core.metrics.set_circuit(target, "closed")
                self.out.target, self.out.reason = target, reason
                return StreamingResponse(
                    self._relay(first, agen),
                    media_type="text/event-stream",
                    headers=self._headers(),
                )
            await _aclose(agen)
            last = failure
            if not self._after_failure(target, failure):
                self.out.target = target
                if failure.status < 500 and failure.status != 429:
                    return self._passthrough(failure)
                return self._fail(
                    RouterError(
                        failure.status,
                        str(failure),
                        type="server_error",
                        code=(failure.kind or "error").lower(),
                        retry_after=failure.retry_after,
                    )
                )
        return self._fail(self._exhausted(last))

    async def _relay(
        self, first: dict[str, Any], agen: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[bytes]:
        """Forward chunks; after the first one, failures end the stream with an error event."""
        served = self.state.catalogue[self.out.target or ""].servedModelName
        usage: tuple[int, int] | None = None
        chunks = 0
        self.out.status = 200
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                u = _usage(chunk)
                if u is not None:
                    usage = u
                is_usage_only = not chunk.get("choices") and u is not None
                if is_usage_only and not self.client_wants_usage:
                    pass
                else:
                    if not is_usage_only:
                        chunks += 1
                        if not self.client_wants_usage:
                            chunk.pop("usage", None)
                    chunk["model"] = served
                    yield _sse(chunk)
                remaining = self.deadline - time.monotonic()
                try:
                    async with asyncio.timeout(max(remaining, 0.001)):
                        chunk = await agen.__anext__()
                except StopAsyncIteration:
                    chunk = None
            yield b"data: [DONE]\n\n"
        except Exception as exc:
            failure = self._classify(exc, self.out.target or "")
            self.out.status = 504 if failure.kind == "Timeout" else 502
            self.out.error = f"stream broke: {failure.kind or 'Error'}"
            err = timeout() if failure.kind == "Timeout" else RouterError(
                502, "the backend failed after the stream started", type="server_error",
                code="stream_interrupted",
            )  # fmt: skip
            yield _sse(err.to_body())
            yield b"data: [DONE]\n\n"
        finally:
            await _aclose(agen)
            self._account(usage, chunks)
            self.core._finish(self.record, self.pol, self.started, self.out)


async def _aclose(agen: Any) -> None:
    close = getattr(agen, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


# -- Ray Serve ---------------------------------------------------------------------


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
        self.core = RouterCore(self._args, ledger=ledger, app_name=app_name)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.core.apply_config(RouterConfig.model_validate(user_config))

    async def __call__(self, request: Request) -> Response:
        return await self.core.handle(request)

    async def check_health(self) -> None:
        if self.core._state is None:
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


__all__ = [
    "Router",
    "RouterCore",
    "build_app",
    "build_app_with_config",
    "build_state",
]
