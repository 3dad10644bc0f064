"""Spill-over: a request leaves a saturated in-cluster model for a better one with room.

Pure (no Ray, no clock, no I/O): the router and the autoscaler's simulator use the same
code, so the simulator routes exactly as the router would.

The router sees every request it sends to a model and when the model starts answering
it, so it keeps, per model, a **queue clock**: the time at which the prompts it has sent
would all be prefilled, if the model's ready replicas prefill ``tokensPerSecond`` each
(the model's ``nominalTokensPerSecond``). Each request sent moves the clock on by its
prompt tokens / (replicas x rate x share), where ``share`` is this router replica's part
of the traffic (1 / router replicas): each request it sees stands for 1 / share requests
from all routers. The clock never lies in the past, and it drops to ``now`` whenever
nothing is in flight, so a wrong nominal rate cannot build up a phantom queue. A
request's expected time to first token on a model is then the clock's lead over ``now``
plus its own prefill (prompt tokens / (replicas x rate): its own tokens are prefilled
once, whatever the share).

:func:`choose` applies the policy: when the first target's expected TTFT exceeds
``threshold`` x its TTFT SLO, the first later target that is in-cluster, of at least the
same quality (never a weaker model than the one the policy chose) and expected to start
the request within half its own SLO (``SPILL_HEADROOM``: spare capacity only) goes
first; the original stays next, as a fallback. A model whose capacity is unknown (no
ready replicas, no rate) neither spills nor takes spill-over.

With ``downgrade`` (spillover.downgradeWhenCapped), a first target that would miss its
SLO, has no better target with room and is *capped* (the autoscaler cannot give it the
replicas it asks for) sends the request to the strongest weaker in-cluster target with
the same spare capacity instead: a capped model's queue does not shrink by waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SPILL_HEADROOM = 0.5
"""A model takes spill-over only while it is expected to start it within this share of
its TTFT SLO."""


@dataclass(frozen=True)
class Capacity:
    """How fast a model prefills, as the router knows it."""

    replicas: int
    """Ready replicas."""
    tokens_per_s: float
    """Prompt tokens one replica prefills per second (nominalTokensPerSecond)."""
    ttft_slo_s: float
    """Time to first token the model should keep (autoscaling.ttftSLOSeconds)."""

    @property
    def known(self) -> bool:
        return self.replicas > 0 and self.tokens_per_s > 0 and self.ttft_slo_s > 0


@dataclass(frozen=True)
class Option:
    """A target of the routing decision, as spill-over sees it."""

    name: str
    quality: float
    in_cluster: bool
    capacity: Capacity | None = None
    capped: str | None = None
    """Why the autoscaler cannot grow the model (GPUCapped, BudgetCapped), or None."""
    queue: str | None = None
    """The queue clock the target's requests wait in, when not its own name: a LoRA
    adapter waits in its base model's (the same replicas serve both)."""

    @property
    def queue_key(self) -> str:
        return self.queue or self.name


@dataclass(frozen=True)
class Spill:
    """The outcome: the index of the target to try first, and why."""

    index: int
    reason: str
    downgrade: bool = False
    """True when the target is weaker than the one it replaces (a capped model's)."""


class QueueClock:
    """Per model, when the prompts sent and not yet started would all be prefilled."""

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self._clock: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}

    @property
    def share(self) -> float:
        """This router replica's part of all traffic, in (0, 1]."""
        return self._share

    @share.setter
    def share(self, share: float) -> None:
        # Settable so a router keeps its queue state when its replica count changes.
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self._share = share

    def _rate(self, cap: Capacity) -> float:
        return cap.replicas * cap.tokens_per_s * self.share

    def backlog_s(self, model: str, now: float) -> float:
        """Seconds of prefill queued ahead of a new request."""
        return max(0.0, self._clock.get(model, now) - now)

    def expected_ttft(self, model: str, cap: Capacity, prompt_tokens: float, now: float) -> float:
        """Expected seconds to the first token of a new request of this size."""
        if not cap.known:
            return float("inf")
        own = max(0.0, prompt_tokens) / (cap.replicas * cap.tokens_per_s)
        return self.backlog_s(model, now) + own

    def in_flight(self, model: str) -> int:
        """Requests sent to the model that have not started yet."""
        return self._in_flight.get(model, 0)

    def sent(self, model: str, cap: Capacity | None, prompt_tokens: float, now: float) -> None:
        """A request was sent to the model; pair it with exactly one :meth:`started`."""
        self._in_flight[model] = self._in_flight.get(model, 0) + 1
        if cap is None or not cap.known:
            return
        start = max(self._clock.get(model, now), now)
        self._clock[model] = start + max(0.0, prompt_tokens) / self._rate(cap)

    def started(self, model: str, now: float) -> None:
        """The model started answering (first token) or the request ended."""
        left = self._in_flight.get(model, 0) - 1
        if left > 0:
            self._in_flight[model] = left
            return
        self._in_flight.pop(model, None)
        self._clock.pop(model, None)  # nothing in flight: no queue, whatever the estimate


# Positional, as the router and the simulator call it; keyword use works as well.
def choose(  # noqa: PLR0917
    options: Sequence[Option],
    clock: QueueClock,
    prompt_tokens: float,
    now: float,
    threshold: float = 1.0,
    headroom: float = SPILL_HEADROOM,
    downgrade: bool = False,
) -> Spill | None:
    """The target to try first instead of ``options[0]``, or None to keep the order.

    A target takes spill-over only if it is expected to start the request within
    ``headroom`` x its own SLO: spill-over uses spare capacity, it must not push a better
    model's own traffic towards its SLO (nor make its autoscaler scale up for load that
    is not its own). With ``downgrade``, a capped first target that finds no better one
    goes to the strongest weaker target meeting the same test (the earliest of equals)."""
    if len(options) < 2:
        return None
    first = options[0]
    cap = first.capacity
    if not first.in_cluster or cap is None or not cap.known:
        return None
    mine = clock.expected_ttft(first.queue_key, cap, prompt_tokens, now)
    if mine <= threshold * cap.ttft_slo_s:
        return None

    def room(o: Option) -> float | None:
        """The expected TTFT on an in-cluster target with spare capacity, else None."""
        oc = o.capacity
        if not o.in_cluster or oc is None or not oc.known:
            return None
        theirs = clock.expected_ttft(o.queue_key, oc, prompt_tokens, now)
        return theirs if theirs <= headroom * oc.ttft_slo_s and theirs < mine else None

    for i, o in enumerate(options[1:], start=1):
        if o.quality >= first.quality and (theirs := room(o)) is not None:
            assert o.capacity is not None
            return Spill(
                i,
                f"spill-over: {first.name} expected TTFT {mine:.1f}s > "
                f"{threshold:g} x SLO {cap.ttft_slo_s:g}s; {o.name} expected {theirs:.1f}s "
                f"(SLO {o.capacity.ttft_slo_s:g}s)",
            )
    if not downgrade or first.capped is None:
        return None
    best: tuple[float, int, float] | None = None
    for i, o in enumerate(options[1:], start=1):
        if o.quality >= first.quality or (theirs := room(o)) is None:
            continue
        if best is None or o.quality > best[0]:
            best = (o.quality, i, theirs)
    if best is None:
        return None
    _, i, theirs = best
    o = options[i]
    return Spill(
        i,
        f"capacity downgrade: {first.name} is {first.capped} and expected TTFT {mine:.1f}s > "
        f"{threshold:g} x SLO {cap.ttft_slo_s:g}s with no better model free; {o.name} "
        f"(quality {o.quality:g} < {first.quality:g}) expected {theirs:.1f}s",
        downgrade=True,
    )


__all__ = ["Capacity", "Option", "QueueClock", "Spill", "choose"]
