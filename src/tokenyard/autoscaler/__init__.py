"""The autoscaler: sizes every model from Prometheus signals within its pool's GPUs and budget.

``tokenyard autoscaler`` (:mod:`~tokenyard.autoscaler.main`) runs the loop
(:mod:`~tokenyard.autoscaler.loop`, with leader election in
:mod:`~tokenyard.autoscaler.leader`): read signals (:mod:`~tokenyard.autoscaler.signals`,
PromQL in :mod:`~tokenyard.autoscaler.queries`), decide with the pure functions of
:mod:`~tokenyard.autoscaler.decide`, write replicas and status through
:mod:`~tokenyard.autoscaler.kube`. ``tokenyard simulate`` replays a trace through the same
decisions (:mod:`~tokenyard.autoscaler.sim`), routing spill-over with
:mod:`tokenyard.routing`. Nothing here imports the operator, serving or Ray.
"""
