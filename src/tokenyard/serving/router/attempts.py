"""The fallback loop's bookkeeping: which target to try next, and what each try taught.

:class:`Attempts` walks a decision's targets in order until the policy's total timeout:
it skips a target whose circuit is open or that has no backend (a fallback), tells the
circuit breaker how each attempt went, counts the attempt in spill-over's queue clock
while it waits, and says why the request failed when no target answered.
:class:`~tokenyard.serving.router.routed.RoutedRequest` drives it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tokenyard.accounting.books import Outcome
from tokenyard.routing.decision import Decision
from tokenyard.routing.errors import RouterError, no_backend, prompt_too_long, timeout
from tokenyard.routing.policy_engine import capacity_of
from tokenyard.serving.backends import BackendFailure, as_context_length, classify_exception
from tokenyard.serving.circuit import CircuitBreakers
from tokenyard.serving.router.state import EndpointPolicy, RouterState

if TYPE_CHECKING:
    from tokenyard.serving.router.core import RouterCore


class Attempts:
    """The targets of one decision, tried in order until the total deadline passes."""

    def __init__(
        self,
        *,
        core: RouterCore,
        state: RouterState,
        pol: EndpointPolicy,
        decision: Decision,
        prompt_tokens: int,
        breakers: CircuitBreakers,
        out: Outcome,
    ) -> None:
        self.core = core
        self.state = state
        self.pol = pol
        self.decision = decision
        self.prompt_tokens = prompt_tokens
        self.breakers = breakers
        self.out = out
        self.fb = pol.spec.fallback
        self.deadline = time.monotonic() + self.fb.totalTimeoutSeconds
        self.refused: list[tuple[str, int | None, BackendFailure]] = []
        """Targets that refused the request as longer than their context: (target, the
        context it refused with, the failure), in order."""
        self.context_blocked = False
        """The last target tried refused on context and no longer one was tried since."""

    def candidates(self) -> list[tuple[str, str]]:
        return [(c.model, c.reason) for c in self.decision.targets][: self.fb.maxAttempts]

    def note_fallback(self, target: str, reason: str, detail: str) -> None:
        self.out.fallbacks.append({"target": target, "reason": reason, "detail": detail[:200]})
        self.core.metrics.fallbacks.labels(self.pol.endpoint, target, reason).inc()

    def exhausted(self, last: BackendFailure | None) -> RouterError:
        """Why no target answered: the deadline, every target timing out, or a 503 with
        the earliest time a circuit lets a request through."""
        if time.monotonic() >= self.deadline:
            return timeout("the request timed out after all attempts")
        if self.context_blocked:
            return self._too_long()
        reasons = {f["reason"] for f in self.out.fallbacks}
        if last is not None and reasons == {"Timeout"}:
            return timeout("every target timed out")
        now = self.core.clock()
        waits = [
            w
            for name, _ in self.candidates()
            if (w := self.breakers.get(name).retry_after(now)) is not None
        ]
        tried = ", ".join(f["target"] for f in self.out.fallbacks) or "none"
        msg = f"no backend could serve the request (tried: {tried})"
        return no_backend(msg, retry_after=min(waits)) if waits else no_backend(msg)

    def _too_long(self) -> RouterError:
        """413: every target long enough to try refused the request on context."""
        longest = max(self.refused, key=lambda r: r[1] or 0)
        target, limit, _ = longest
        said = []
        for name, _, f in self.refused:
            figures = []
            if f.context_limit is not None:
                figures.append(f"maximum context length {f.context_limit} tokens")
            if f.context_requested is not None:
                figures.append(f"request {f.context_requested} tokens")
            said.append(f"{name}: {', '.join(figures) or 'context length exceeded'}")
        context = f"{limit} tokens" if limit is not None else "unknown"
        return prompt_too_long(
            f"the request is longer than every target tried accepts (longest context "
            f"tried: {context}, {target}; {'; '.join(said)})"
        )

    def _refused_limit(self) -> int | None:
        """The longest context that refused the request; None when none said it."""
        limits = [limit for _, limit, _ in self.refused if limit is not None]
        return max(limits) if limits else None

    @staticmethod
    def classify(exc: BaseException, target: str) -> BackendFailure:
        if isinstance(exc, TimeoutError) and not isinstance(exc, BackendFailure):
            return BackendFailure(f"{target}: attempt timed out", kind="Timeout", status=504)
        return as_context_length(classify_exception(exc, target))

    def after_failure(self, target: str, failure: BackendFailure) -> bool:
        """Record a failed attempt; True when the policy lets the request move on."""
        now = self.core.clock()
        entry = self.state.catalogue.get(target)
        if failure.replica_died and entry is not None and entry.app is not None:
            # Serve would queue the next requests until it replaces the replica: if it
            # was the last one, they go elsewhere at once (ServeStatus.replica_died).
            self.core.serve.replica_died(entry.app)
        breaker = self.breakers.get(target)
        if failure.kind == "ContextLength":
            # The target answered: the request was too long for it. Its circuit is not
            # touched as a failure, and the request moves on to a longer-context target
            # whatever retryOn says (skipping the ones no longer than this one).
            breaker.record_success(now)
            self.core.metrics.set_circuit(target, breaker.state(now))
            limit = failure.context_limit
            if limit is None and entry is not None:
                limit = entry.maxModelLen
            self.refused.append((target, limit, failure))
            self.context_blocked = True
            self.note_fallback(target, "ContextLength", str(failure))
            return True
        if failure.kind in ("Error", "Timeout", "Unavailable", "Overloaded"):
            breaker.record_failure(now)
        elif failure.kind is None:
            breaker.record_success(now)  # it answered; the request itself was at fault
        else:
            breaker.release(now)  # rate limited: says nothing about its health
        self.core.metrics.set_circuit(target, breaker.state(now))
        if failure.kind is None or failure.kind not in self.fb.retryOn:
            return False
        self.note_fallback(target, failure.kind, str(failure))
        return True

    def succeeded(self, target: str) -> None:
        """The target answered (or sent its first chunk): its circuit closes."""
        self.breakers.get(target).record_success(self.core.clock())
        self.core.metrics.set_circuit(target, "closed")

    def cancelled(self, target: str) -> None:
        """The client went away mid-attempt: no verdict on the target's health."""
        self.breakers.get(target).release(self.core.clock())

    @contextlib.contextmanager
    def in_flight(self, target: str) -> Iterator[None]:
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
        # A LoRA adapter's requests queue on its base model's replicas.
        queue = entry.adapterOf or target
        load.sent(queue, cap, self.prompt_tokens, self.core.clock())
        try:
            yield
        finally:
            load.started(queue, self.core.clock())

    def __iter__(self) -> Iterator[tuple[str, str, Any, float]]:
        """(target, reason, backend, per-attempt timeout) for each target to try, in
        order, until the total deadline passes. A target whose circuit is open or that
        has no backend is skipped, which counts as a fallback. Lazy: the remaining time
        is measured when the caller asks for the next attempt."""
        for target, reason in self.candidates():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return
            if not self.breakers.get(target).allow(self.core.clock()):
                self.note_fallback(target, "CircuitOpen", "circuit breaker open")
                continue
            backend = self.state.backends.get(target)
            if backend is None:
                self.note_fallback(target, "Unavailable", "no backend for target")
                continue
            entry = self.state.catalogue.get(target)
            refused = self._refused_limit()
            if (
                refused is not None
                and entry is not None
                and entry.maxModelLen is not None
                and entry.maxModelLen <= refused
            ):
                self.note_fallback(
                    target,
                    "ContextLength",
                    f"context {entry.maxModelLen} tokens is not longer than the "
                    f"{refused} that refused the request",
                )
                continue
            if entry is not None and not self.core.serve.ready(entry):
                self.note_fallback(target, "Unavailable", "not ready (its replica died)")
                continue
            self.context_blocked = False
            yield target, reason, backend, min(self.fb.perAttemptTimeoutSeconds, remaining)


__all__ = ["Attempts"]
