"""The autoscaler: Prometheus signals, pure scaling decisions, the loop, the simulator."""
