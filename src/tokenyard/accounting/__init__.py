"""What requests cost and did: spend, rate limits, audit, metrics and traffic statistics.

The router (:mod:`tokenyard.serving`) checks a tenant's rate limits here before routing
and, once a request ends, accounts for it (:mod:`~tokenyard.accounting.books`): spend and
traffic into the pool's ledger (:mod:`~tokenyard.accounting.ledger`, shared by every
router replica through the Ray actor of :mod:`~tokenyard.accounting.ledger_actor`),
Prometheus metrics and one audit line. ``GET /v1/tokenyard/stats``
(:mod:`~tokenyard.accounting.stats`) shapes the ledger's counters for the operator.
The routing decision reads budgets back through
:class:`tokenyard.routing.budget.TenantSpendView`; nothing here imports the operator or
the autoscaler.
"""
