"""Routing-quality evaluation, kept apart from the routers it scores.

:mod:`.data` reads labelled prompts (the outcomes of a weak and a strong model),
:mod:`.metrics` computes RouteLLM's figures (APGR, CPT, cost at a quality target) and
:mod:`.evaluate` runs ``tokenyard eval-routing``. This package's ``__init__`` imports
nothing heavy, so the command line can read its defaults cheaply.
"""

# RouteLLM's prices per million tokens (GPT-4-1106-preview and Mixtral-8x7B, USD).
ROUTELLM_STRONG_PRICE = 24.7
ROUTELLM_WEAK_PRICE = 0.24
BASELINES = ("heuristic", "length", "random", "oracle")

__all__ = ["BASELINES", "ROUTELLM_STRONG_PRICE", "ROUTELLM_WEAK_PRICE"]
