"""The router's request handling, hosted by Ray Serve in :mod:`tokenyard.serving.router_app`.

:mod:`~tokenyard.serving.router.core` holds :class:`RouterCore` (config, the routing
step of each request); :mod:`~tokenyard.serving.router.state` turns a ``RouterConfig``
into what requests read; :mod:`~tokenyard.serving.router.http` maps paths to handlers;
:mod:`~tokenyard.serving.router.routed` answers a routed request from the targets that
:mod:`~tokenyard.serving.router.attempts` hands out in order;
:mod:`~tokenyard.serving.router.serve_status` is what the replica knows of Ray Serve.
"""

from tokenyard.serving.router.core import RouterCore
from tokenyard.serving.router.serve_status import running_replicas
from tokenyard.serving.router.state import BackendFactory, build_state

__all__ = ["BackendFactory", "RouterCore", "build_state", "running_replicas"]
