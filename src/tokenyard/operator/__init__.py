"""The kopf operator: each ServingPool and its members into a RayService, statuses back.

``tokenyard operator`` (:mod:`~tokenyard.operator.main`) starts kopf with the handlers
of :mod:`~tokenyard.operator.handlers`, which only validate and enqueue; the
:class:`~tokenyard.operator.controller.Controller` runs level-based passes over pools
(:mod:`~tokenyard.operator.pools`) and orphans (:mod:`~tokenyard.operator.orphans`) with
the pure :mod:`~tokenyard.operator.builders`, :mod:`~tokenyard.operator.plan` and
:mod:`~tokenyard.operator.status`, through :mod:`~tokenyard.operator.kube`.
``tokenyard render`` (:mod:`~tokenyard.operator.render`) runs the same builders offline.
What the rendered Serve config shares with the apps is in :mod:`tokenyard.contract`;
nothing here imports the data plane (serving, routing, accounting).
"""
