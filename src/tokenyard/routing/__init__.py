"""The routing decision, pure: which model answers a request, and why.

A request's path through it: :mod:`~tokenyard.routing.request` validates the OpenAI body,
:mod:`~tokenyard.routing.tenants` resolves who sent it, :mod:`~tokenyard.routing.features`
extracts what the decision reads (difficulty from :mod:`~tokenyard.routing.classifiers`,
data classes from :mod:`~tokenyard.routing.detectors`),
:mod:`~tokenyard.routing.policy_engine` orders the targets (budgets from
:mod:`~tokenyard.routing.budget`, the result shaped in :mod:`~tokenyard.routing.decision`)
and :mod:`~tokenyard.routing.spillover` moves one first under live load. Every error the
router answers is built in :mod:`~tokenyard.routing.errors`;
:mod:`~tokenyard.routing.explain` prints a decision without calling a model.

Called by the router (:mod:`tokenyard.serving`), ``tokenyard explain`` and the
autoscaler's simulator (spill-over). It imports no Ray, vLLM, kopf, Kubernetes client or
web framework, and nothing of serving, accounting, the operator or the autoscaler
(import-linter holds it to that), so every step runs in a unit test exactly as in the
router. The learned classifier, its training and its evaluation belong here as well.
"""
