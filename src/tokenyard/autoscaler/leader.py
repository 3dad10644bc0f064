"""Leader election on a coordination.k8s.io Lease, so two autoscaler replicas never act at once.

Called by the loop before every interval, with ``now`` passed in. The holder renews the
Lease each interval; a candidate takes it over only after ``leaseDurationSeconds`` have
passed since the last renewal. Updates carry the Lease's resourceVersion, so of two
candidates racing for an expired Lease the API server lets exactly one win.
"""

from __future__ import annotations

import logging
import math

from tokenyard.autoscaler.kube import Conflict, KubeApi, micro_time, parse_time

log = logging.getLogger("tokenyard.autoscaler")


class LeaderElector:
    """Acquires and renews one Lease for one identity."""

    def __init__(
        self, api: KubeApi, namespace: str, name: str, identity: str, duration_s: float
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.leading = False

    def try_acquire(self, now: float) -> bool:
        """True when this identity holds the Lease after the call."""
        try:
            self.leading = self._try(now)
        except Conflict:
            self.leading = False
        except Exception as exc:  # an unreachable API server means: do not act
            log.warning("leader election failed: %s", exc)
            self.leading = False
        return self.leading

    def _try(self, now: float) -> bool:
        lease = self.api.get_lease(self.namespace, self.name)
        duration = max(1, math.ceil(self.duration_s))
        if lease is None:
            self.api.create_lease(
                self.namespace,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": duration,
                        "acquireTime": micro_time(now),
                        "renewTime": micro_time(now),
                        "leaseTransitions": 0,
                    },
                },
            )
            log.info("acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime"))
        held_for = float(spec.get("leaseDurationSeconds") or duration)
        expired = renewed is None or now > renewed + held_for
        if holder and holder != self.identity and not expired:
            return False
        patch: dict[str, object] = {
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": duration,
                "renewTime": micro_time(now),
            }
        }
        rv = (lease.get("metadata") or {}).get("resourceVersion")
        if rv:
            patch["metadata"] = {"resourceVersion": rv}
        if holder != self.identity:
            spec_patch = patch["spec"]
            assert isinstance(spec_patch, dict)
            spec_patch["acquireTime"] = micro_time(now)
            spec_patch["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            log.info("taking over lease %s/%s from %s", self.namespace, self.name, holder)
        self.api.patch_lease(self.namespace, self.name, patch)
        return True
