"""What a request may use at most, before it is sent: tokens and cost.

Admission (:meth:`~tokenyard.serving.router.core.RouterCore.completion`) takes
:func:`servable_tokens` from the rate limit and reserves :func:`estimated_cost` against
the budget; a request its client abandons is charged :func:`estimated_cost`
(:class:`~tokenyard.serving.router.routed.RoutedRequest`). Both are settled with the real
usage when the backend reports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenyard.accounting.ledger import cost_usd
from tokenyard.contract import DEFAULT_OUTPUT_ESTIMATE, CatalogueEntry
from tokenyard.routing.request import ParsedRequest


def servable_tokens(parsed: ParsedRequest, targets: Sequence[CatalogueEntry | None]) -> int:
    """Tokens a request can use at most: prompt plus max_tokens (or the default),
    capped at the longest context of the targets it may reach (unknown: uncapped), so a
    huge max_tokens cannot drain a tenant's token bucket for days."""
    est = parsed.prompt_tokens + (parsed.max_tokens or DEFAULT_OUTPUT_ESTIMATE)
    contexts = [t.maxModelLen for t in targets if t is not None]
    if contexts and all(c is not None for c in contexts):
        est = min(est, max(c for c in contexts if c is not None))
    return est


def output_tokens(entry: CatalogueEntry, parsed: ParsedRequest) -> int:
    """Output tokens a request may get from ``entry``: max_tokens (or the default),
    capped at what the target's context leaves after the prompt."""
    out = parsed.max_tokens or DEFAULT_OUTPUT_ESTIMATE
    if entry.maxModelLen is not None:
        out = max(0, min(out, entry.maxModelLen - parsed.prompt_tokens))
    return out


def estimated_cost(entry: CatalogueEntry, parsed: ParsedRequest) -> float:
    """What a request may cost on ``entry`` at most: its prompt plus
    :func:`output_tokens` at the target's prices."""
    return cost_usd(entry, parsed.prompt_tokens, output_tokens(entry, parsed))


__all__ = ["estimated_cost", "output_tokens", "servable_tokens"]
