"""The router's request handling, independent of how it is hosted (:class:`RouterCore`).

Ray Serve hosts it in :class:`tokenyard.serving.router_app.Router`; tests and the
benchmark drive it over ASGI. Per request (:meth:`RouterCore.completion`): parse, resolve
the tenant, extract features, rate-limit, decide and spill over (all pure, in
:mod:`tokenyard.routing`), then a :class:`~tokenyard.serving.router.routed.RoutedRequest`
tries the targets and :class:`~tokenyard.accounting.books.Books` accounts for the result.
Rate limits, circuit breakers and the spill-over queue clock are this replica's own
(each takes its share of the pool's traffic, :class:`~.serve_status.ServeStatus`);
budgets are shared by all replicas through the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tokenyard.accounting.audit import AuditLog, AuditRecord
from tokenyard.accounting.books import Books, Outcome
from tokenyard.accounting.learning import LearningStore
from tokenyard.accounting.ledger import strongest
from tokenyard.accounting.ledger_actor import LedgerClient
from tokenyard.accounting.metrics import RouterMetrics
from tokenyard.accounting.ratelimit import RateLimiter
from tokenyard.accounting.shadow import ShadowStats
from tokenyard.contract import ROUTER_APP_NAME, RouterAppArgs, RouterConfig
from tokenyard.routing.budget import budget_for
from tokenyard.routing.classifiers import HeuristicClassifier
from tokenyard.routing.decision import BackendState, Decision
from tokenyard.routing.errors import (
    RouterError,
    clip,
    internal_error,
    model_not_found,
    no_backend,
)
from tokenyard.routing.exploration import Exploration, explore
from tokenyard.routing.features import RequestFeatures, extract_features
from tokenyard.routing.learned.state_files import learning_dir
from tokenyard.routing.policy_engine import apply_spillover, decide
from tokenyard.routing.request import ParsedRequest, RequestKind, lower_headers, parse_request
from tokenyard.routing.spillover import QueueClock
from tokenyard.routing.tenants import resolve_tenant
from tokenyard.serving.backends import build_backends
from tokenyard.serving.circuit import CircuitBreakers
from tokenyard.serving.providers import ProviderClient
from tokenyard.serving.router import http
from tokenyard.serving.router.estimate import estimated_cost, servable_tokens
from tokenyard.serving.router.routed import RoutedRequest
from tokenyard.serving.router.serve_status import APP_STATUS_INTERVAL_S, ServeStatus
from tokenyard.serving.router.state import BackendFactory, EndpointPolicy, RouterState, build_state

logger = logging.getLogger("tokenyard.router")


# How long past the policy's total timeout an unsettled reservation is kept.
RESERVATION_MARGIN_S = 60.0
# Tenants with their own spend per endpoint. Tenant names on an open endpoint are the
# client's choice: past this many, further tenants share one budget key (OVERFLOW_TENANT)
# so that the ledger (about 1.5 KB a tenant, kept for the budget windows) stays bounded.
MAX_BUDGET_TENANTS = 10_000
OVERFLOW_TENANT = "_other"  # never a tenant name (those start with a letter or digit)
RETENTION_UNIT_S = {"h": 3600.0, "d": 86400.0}


def state_dir_of(args: RouterAppArgs) -> Path | None:
    """The pool's state directory: where its ledger (else its audit file) lives; None
    when the router keeps neither on disk."""
    path = args.ledgerPath or args.auditPath
    return Path(path).expanduser().parent if path else None


def retention_seconds(retention: str) -> float:
    """spec.learning.capture.retention (``48h``, ``30d``) in seconds."""
    return float(retention[:-1]) * RETENTION_UNIT_S[retention[-1]]


def budget_tenant(ledger: LedgerClient, tenant: str, scope: str) -> str:
    """The key the tenant's spend is kept under on ``scope`` (see MAX_BUDGET_TENANTS)."""
    mirror = ledger.mirror
    if mirror.knows(tenant, scope) or mirror.tenant_count(scope) < MAX_BUDGET_TENANTS:
        return tenant
    return OVERFLOW_TENANT


class ScopedSpend:
    """The ledger as the budget check of one endpoint reads it: spend of its scope
    (:attr:`EndpointPolicy.scope`), so every name of a model spends one budget, under
    the tenant's budget key (:func:`budget_tenant`)."""

    def __init__(self, ledger: LedgerClient, scope: str, key: str) -> None:
        self._ledger = ledger
        self._scope = scope
        self._key = key

    def spend(self, tenant: str, endpoint: str | None, window: str, now: float) -> float:
        return self._ledger.spend(self._key, self._scope, window, now)


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
        learning: LearningStore | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
        watch_apps: bool = True,
        backend_factory: BackendFactory = build_backends,
        app_name: str = ROUTER_APP_NAME,
        echo_request_id: bool = True,
    ) -> None:
        self.args = args
        self.echo_request_id = echo_request_id
        """Whether responses carry ``x-request-id``: False behind Ray Serve's proxy, which
        sets the header on the request (the id the audit line uses) and on the response,
        so a client sees it once."""
        self.app_name = app_name
        """This router's Serve application: its RUNNING replicas share the pool's traffic."""
        self.ledger = ledger
        self.provider = provider or ProviderClient()
        self.metrics = metrics or RouterMetrics()
        self.audit = audit or AuditLog(args.auditPath)
        self.clock = clock
        if learning is None:
            state_dir = state_dir_of(args)
            learning = LearningStore(
                learning_dir(state_dir, args.namespace, args.pool) if state_dir else None
            )
        self.learning = learning
        """Decisions, feedback and captured prompts, on the pool's state volume."""
        self.books = Books(self.ledger, self.metrics, self.audit, clock, learning)
        self._retention: dict[str, float] = {}
        self.shadow = ShadowStats()
        """How each endpoint's candidate classifier (spec.classifier.shadow) would route."""
        self.serve = ServeStatus(app_name)
        self.classifier = HeuristicClassifier()
        self._rng = rng or random.Random()
        self._env = env if env is not None else os.environ
        self._state: RouterState | None = None
        self._limiters: dict[str, RateLimiter] = {}
        self._breakers: dict[str, CircuitBreakers] = {}
        self._watch_apps = watch_apps
        self._watcher: asyncio.Task[None] | None = None
        self._make_backends = backend_factory
        # Per model, the prompts this replica sent and has not seen start (spill-over).
        # Kept across configs: its entries leave by themselves when nothing is in flight.
        self.load = QueueClock()

    # -- configuration -------------------------------------------------------------

    def apply_config(self, cfg: RouterConfig) -> None:
        """Swap in a new config atomically; requests in flight keep the old one."""
        state = build_state(cfg, self._state, self.provider, self._env, self._make_backends)
        self.serve.configured_routers = cfg.routerReplicas
        share = self.share  # limits are the pool's; each replica takes its part
        self.load.share = share
        for endpoint, pol in {**state.direct, **state.policies}.items():
            # Keyed by scope: a model called by name takes from its policy's buckets.
            limiter = self._limiters.get(pol.scope)
            if limiter is None:
                self._limiters[pol.scope] = RateLimiter(pol.spec.rateLimits, share)
            elif pol.scope == endpoint:
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
        self.shadow.forget_except({e for e, p in state.policies.items() if p.shadow is not None})
        self._retention = {
            e: retention_seconds(cap.retention)
            for e, p in state.policies.items()
            if (cap := p.spec.capture) is not None
        }
        logger.info(
            "router config applied",
            extra={
                "version": state.version,
                "models": len(state.catalogue),
                "endpoints": sorted(state.policies),
            },
        )

    @property
    def state(self) -> RouterState:
        if self._state is None:
            raise no_backend("the router has no configuration yet")
        return self._state

    @property
    def applied(self) -> RouterState | None:
        """The state of the last config applied; None before the first."""
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
                self.note_running(self.serve.read(st))
            except Exception:
                logger.warning("could not read Serve application status", exc_info=True)
            await asyncio.sleep(APP_STATUS_INTERVAL_S)

    def note_running(self, by_app: dict[str, int]) -> None:
        """Replicas Ray Serve runs per application, as the status watch read them. This
        router's own count sets the share of the pool's traffic each replica assumes."""
        if self.serve.note_running(by_app):
            self._reshare()

    @property
    def share(self) -> float:
        """This replica's part of the pool's traffic (:attr:`ServeStatus.share`)."""
        return self.serve.share

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
        the status watch has read them (:meth:`ServeStatus.live_replicas`)."""
        return self.serve.live_replicas(self.state)

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
        self.learning.close()

    # -- requests ------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Answer one HTTP request (:func:`tokenyard.serving.router.http.handle`)."""
        response = await http.handle(self, request)
        if not self.echo_request_id and http.REQUEST_ID_HEADER in response.headers:
            del response.headers[http.REQUEST_ID_HEADER]
        return response

    def update_gauges(self) -> None:
        """Each backend's circuit state into the metrics (read at ``/metrics``)."""
        now = self.clock()
        for breakers in self._breakers.values():
            for name, st in breakers.states(now).items():
                self.metrics.set_circuit(name, st)

    def _backend_states(
        self, state: RouterState, endpoint: str, now: float
    ) -> dict[str, BackendState]:
        ready = {name: self.serve.ready(e) for name, e in state.catalogue.items()}
        return self._breakers[endpoint].backend_states(ready, now)

    async def completion(self, request: Request, kind: RequestKind) -> Response:
        """A chat or completion request: routed, tried with fallback, accounted for."""
        started = time.perf_counter()
        now = self.clock()
        # A client's request id is kept (bounded) so its logs and the audit line join up.
        request_id = (request.headers.get(http.REQUEST_ID_HEADER) or uuid.uuid4().hex)[:128]
        record = AuditRecord(
            time=now, request_id=request_id, tenant="", endpoint="", kind=kind, status=0,
            latency_ms=0.0,
        )  # fmt: skip
        pol: EndpointPolicy | None = None
        try:
            state = self.state
            body = await http.read_json(request, state.config.max_request_bytes)
            headers = lower_headers(request.headers.items())
            parsed = parse_request(body, headers, kind)
            record.endpoint = clip(parsed.model)
            record.stream = parsed.stream
            pol = state.policies.get(parsed.model) or state.direct.get(parsed.model)
            if pol is None:
                raise model_not_found(parsed.model)
            decision, est, reservation, key, learn = self._route(
                state, pol, parsed, headers, record, now, started
            )
        except RouterError as err:
            record.status = err.status
            record.error = err.code or err.type
            if pol is not None:
                self.metrics.rejections.labels(
                    endpoint=pol.endpoint,
                    tenant=self.books.tenant_label(record.tenant),
                    reason=err.code or err.type,
                ).inc()
            self.books.finish(record, pol, started, Outcome(status=err.status))
            return http.error_response(err, request_id)
        except Exception:
            logger.exception("router failed before routing", extra={"request_id": request_id})
            self.books.finish(record, pol, started, Outcome(status=500))
            return http.error_response(internal_error(), request_id)

        routed = RoutedRequest(
            core=self,
            state=state,
            pol=pol,
            parsed=parsed,
            decision=decision,
            record=record,
            started=started,
            est_tokens=est,
            request_id=request_id,
            breakers=self._breakers[pol.endpoint],
            limiter=self._limiters[pol.scope],
        )
        routed.out.reservation = reservation
        routed.out.budget_key = key
        routed.out.first = decision.targets[0].model if decision.targets else None
        routed.out.first_probabilities = learn.exploration.probabilities
        routed.out.capture = learn.capture
        if self._retention:
            self.learning.purge(self._retention, now)
        if parsed.stream:
            return await routed.stream()
        return await routed.complete()

    def _held_by_in_flight(
        self, err: RouterError, pol: EndpointPolicy, tenant: str, now: float
    ) -> None:
        """A budget refused only because of this replica's requests in flight (settled
        spend is under the limit) frees up when they finish: retry in seconds, not at
        the end of the window."""
        budget = budget_for(pol.spec.budgets, tenant)
        if budget is None:
            return
        key = budget_tenant(self.ledger, tenant, pol.scope)
        settled = self.ledger.mirror.spend(key, pol.scope, budget.window, now)
        if settled < budget.limitUSD:
            err.message = (
                f"tenant '{tenant}' has its budget held by requests in flight; "
                "retry when they finish"
            )
            err.retry_after = min(err.retry_after or 1.0, pol.spec.fallback.totalTimeoutSeconds)

    # Positional, as completion calls it; each argument is one input of the routing step.
    def _route(  # noqa: PLR0917
        self,
        state: RouterState,
        pol: EndpointPolicy,
        parsed: ParsedRequest,
        headers: Mapping[str, str],
        record: AuditRecord,
        now: float,
        started: float,
    ) -> tuple[Decision, int, int | None, str, _Learn]:
        """Tenant, features, rate limit, decision and spill-over of a parsed request, noted
        in its audit record; returns the decision, the tokens the rate limit took, the
        budget reservation (None when the tenant has no budget here) and the key its
        spend is kept under (:func:`budget_tenant`).

        A request refused here (egress, context, budget, no backend) gives back what the
        rate limit took: a refused request charges nothing."""
        tenant = resolve_tenant(headers, pol.spec.tenants, pol.api_keys, state.keyed_tenants)
        record.tenant = tenant
        features = extract_features(
            parsed, pol.spec, pol.endpoint, tenant, classifier=pol.classifier or self.classifier
        )
        record.difficulty = round(features.difficulty, 4)
        record.classifier = pol.classifier.version if pol.classifier is not None else "heuristic"
        record.data_classes = sorted(features.data_classes)
        if pol.spec.audit.includePrompts:
            record.prompt = parsed.prompt_text
        key = budget_tenant(self.ledger, tenant, pol.scope)
        est = servable_tokens(parsed, [state.catalogue.get(t.model) for t in pol.spec.targets])
        limiter = self._limiters[pol.scope]
        limiter.check(tenant, est, now)
        try:
            decision = decide(
                features,
                pol.spec,
                state.catalogue,
                self._backend_states(state, pol.endpoint, now),
                ScopedSpend(self.ledger, pol.scope, key),
                now,
                self._rng,
            )
        except RouterError as err:
            limiter.refund(tenant, est, now)
            if err.code == "budget_exceeded":
                self._held_by_in_flight(err, pol, tenant, now)
            raise
        if pol.shadow is not None:
            self._score_shadow(state, pol, parsed, features, decision, key, now)
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
        exp = explore(decision, pol.spec.exploration, self._rng)
        decision = exp.decision
        record.chosen_target = exp.chosen or None
        record.explored = exp.explored
        if exp.explored:
            self.metrics.explorations.labels(
                pol.endpoint, exp.chosen, decision.targets[0].model
            ).inc()
        capture = self._capture(pol, parsed, features)
        self.metrics.decision_latency.labels(endpoint=pol.endpoint).observe(
            time.perf_counter() - started
        )
        record.rule = decision.rule
        record.strategy = decision.strategy
        record.downgraded = bool(decision.downgraded)
        reservation = None
        if budget_for(pol.spec.budgets, tenant) is not None:
            # Taken in the same step as the budget check (no await between), so every
            # request this replica has in flight counts against the next one's check.
            usd = max(
                (
                    estimated_cost(state.catalogue[c.model], parsed)
                    for c in decision.targets[: pol.spec.fallback.maxAttempts]
                ),
                default=0.0,
            )
            # Settled when the request ends; the TTL only covers a response that never
            # started (a stream whose client left before its first byte).
            ttl = pol.spec.fallback.totalTimeoutSeconds + RESERVATION_MARGIN_S
            reservation = self.ledger.reserve(key, pol.scope, usd, ttl_s=ttl)
        return decision, est, reservation, key, _Learn(exp, capture)

    # Positional, as _route calls it; each argument is one input of the live decision.
    def _score_shadow(  # noqa: PLR0917
        self,
        state: RouterState,
        pol: EndpointPolicy,
        parsed: ParsedRequest,
        features: RequestFeatures,
        live: Decision,
        key: str,
        now: float,
    ) -> None:
        """What the candidate classifier would have decided, counted beside the live
        decision (before spill-over and exploration, which do not depend on it)."""
        shadow = pol.shadow
        if shadow is None or not live.targets:
            return
        try:
            alt = decide(
                dataclasses.replace(features, difficulty=shadow.score(parsed)),
                pol.spec,
                state.catalogue,
                self._backend_states(state, pol.endpoint, now),
                ScopedSpend(self.ledger, pol.scope, key),
                now,
                random.Random(0),  # a Weighted draw must not move the live stream
            )
        except Exception:
            return  # the live decision stands; a candidate never fails a request
        if not alt.targets:
            return
        live_t, alt_t = live.targets[0].model, alt.targets[0].model
        strong = strongest(state.catalogue, (t.model for t in pol.spec.targets))
        best = strong.name if strong is not None else None
        live_cost = estimated_cost(state.catalogue[live_t], parsed)
        alt_cost = estimated_cost(state.catalogue[alt_t], parsed)
        self.shadow.add(pol.endpoint, shadow.version, live_t, alt_t, best, live_cost, alt_cost)
        m, v = self.metrics, shadow.version
        m.shadow_requests.labels(pol.endpoint, v, str(live_t != alt_t).lower()).inc()
        if live_t == best:
            m.shadow_strong.labels(pol.endpoint, v, "live").inc()
        if alt_t == best:
            m.shadow_strong.labels(pol.endpoint, v, "shadow").inc()
        m.shadow_cost.labels(pol.endpoint, v, "live").inc(live_cost)
        m.shadow_cost.labels(pol.endpoint, v, "shadow").inc(alt_cost)

    def _capture(
        self, pol: EndpointPolicy, parsed: ParsedRequest, features: RequestFeatures
    ) -> dict[str, Any] | None:
        """The request's prompt to keep for training, when its policy captures, the draw
        samples it and every data class it carries may be captured; else None."""
        spec = pol.spec.capture
        if spec is None or pol.direct or features.unscannable:
            return None
        if not features.data_classes <= spec.capturable(pol.spec.egress):
            return None
        if self._rng.random() >= spec.sampleRate:
            return None
        body = parsed.body
        prompt = (
            {"messages": body["messages"]} if "messages" in body else {"prompt": body.get("prompt")}
        )
        return {
            "kind": parsed.kind,
            **prompt,
            "max_tokens": parsed.max_tokens,
            "data_classes": sorted(features.data_classes),
            "targets": list(dict.fromkeys(t.model for t in pol.spec.targets)),
        }


class _Learn:
    """What a routed request carries for learning: its exploration and its capture."""

    __slots__ = ("capture", "exploration")

    def __init__(self, exploration: Exploration, capture: dict[str, Any] | None) -> None:
        self.exploration = exploration
        self.capture = capture


__all__ = ["MAX_BUDGET_TENANTS", "OVERFLOW_TENANT", "RouterCore", "ScopedSpend", "budget_tenant"]
