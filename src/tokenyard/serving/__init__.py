"""What runs on Ray Serve: the router and model apps, and how the router reaches models.

:mod:`~tokenyard.serving.router_app` and :mod:`~tokenyard.serving.model_app` are the
Serve applications the operator renders into each RayService (their import paths are in
:mod:`tokenyard.contract`); the router's request handling is in
:mod:`~tokenyard.serving.router`. It sends each request through
:mod:`~tokenyard.serving.backends` (Ray Serve handles for in-cluster models,
:mod:`~tokenyard.serving.providers` for external ones), guarded by
:mod:`~tokenyard.serving.circuit` breakers. ``tokenyard up``
(:mod:`~tokenyard.serving.local`) runs the same apps on one machine, with tiny models
from :mod:`~tokenyard.serving.tiny`. The decision itself comes from
:mod:`tokenyard.routing`, accounting from :mod:`tokenyard.accounting`; nothing here
imports the operator, the autoscaler or kopf.
"""
