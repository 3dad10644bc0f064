"""GPU admission: which in-cluster models get into a pool's RayService, at which replicas.

Models are admitted class by class, highest priority first, while their minimum GPUs fit
what is left of the class's maxGPUs; the outcome feeds the render and every status.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from tokenyard.api.common import (
    REASON_ACCELERATOR_NOT_FOUND,
    REASON_CLAIM_NOT_FOUND,
    REASON_GPU_LIMIT_EXCEEDED,
)
from tokenyard.api.model import ModelDeployment
from tokenyard.api.pool import AcceleratorClass, ServingPool
from tokenyard.operator.builders.meta import obj_name, obj_namespace


@dataclass(frozen=True)
class Replicas:
    """What Ray Serve is asked for one in-cluster model."""

    autoscale: bool
    min: int
    max: int
    initial: int


def model_replicas(md: ModelDeployment) -> Replicas:
    """Replica bounds for Ray Serve.

    In Tokenyard mode Ray Serve autoscales within the bounds the tokenyard autoscaler
    wrote to status.autoscaling (else spec.autoscaling), starting at spec.replicas.
    In Manual and External mode the count is spec.replicas, fixed.
    """
    spec = md.spec
    a = spec.autoscaling
    if a.mode == "Tokenyard":
        st = md.status.autoscaling if md.status is not None else None
        lo = st.minReplicas if st is not None and st.minReplicas is not None else a.minReplicas
        hi = st.maxReplicas if st is not None and st.maxReplicas is not None else a.maxReplicas
        hi = max(hi, lo, 1)
        initial = spec.replicas if spec.replicas is not None else lo
        initial = min(max(initial, lo), hi)
        return Replicas(autoscale=True, min=lo, max=hi, initial=initial)
    n = spec.desired_replicas()
    return Replicas(autoscale=False, min=n, max=n, initial=n)


def replica_gpus(md: ModelDeployment, acc: AcceleratorClass | None) -> int:
    """GPUs one replica takes on its class: spec.inCluster.gpusPerReplica if set, else
    tensor x pipeline parallel size, except on a CPU-only class (gpusPerNode 0) where
    the default is 0 (the engine runs on CPU)."""
    ic = md.spec.inCluster
    if ic is None:
        return 0
    if ic.gpusPerReplica is None and acc is not None and acc.gpusPerNode == 0:
        return 0
    return md.spec.gpus_per_replica()


def min_gpus(md: ModelDeployment, acc: AcceleratorClass | None) -> int:
    """GPUs the model needs at its minimum replica count (what admission reserves)."""
    r = model_replicas(md)
    return replica_gpus(md, acc) * (r.min if r.autoscale else r.initial)


def current_gpus(md: ModelDeployment, acc: AcceleratorClass | None) -> int:
    """GPUs the model asks for at the replicas it currently asks Ray Serve for."""
    return replica_gpus(md, acc) * model_replicas(md).initial


@dataclass(frozen=True)
class Decision:
    """Whether an in-cluster model gets into its pool's RayService, and why not."""

    admitted: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class ClassUsage:
    """GPU accounting of one accelerator class."""

    name: str
    max_gpus: int
    reserved_gpus: int = 0
    """Sum of admitted models' minimum GPUs (what admission counts against maxGPUs)."""
    requested_gpus: int = 0
    """Sum of admitted models' GPUs at their current replicas (pool status)."""


@dataclass(frozen=True)
class Admission:
    """The outcome of GPU admission for one pool."""

    decisions: dict[str, Decision]
    usage: dict[str, ClassUsage]

    def admitted(self, name: str) -> bool:
        d = self.decisions.get(name)
        return d is not None and d.admitted


def accelerator(pool: ServingPool, name: str) -> AcceleratorClass | None:
    for acc in pool.spec.accelerators:
        if acc.name == name:
            return acc
    return None


def _accel_index(pool: ServingPool, name: str) -> int:
    for i, acc in enumerate(pool.spec.accelerators):
        if acc.name == name:
            return i
    return -1


def _priority_key(md: ModelDeployment) -> tuple[int, str]:
    return (-md.spec.autoscaling.priority, obj_name(md))


def in_cluster_members(
    pool: ServingPool, models: Iterable[ModelDeployment]
) -> list[ModelDeployment]:
    """In-cluster models of the pool (same namespace, spec.pool == pool), by name."""
    name, ns = obj_name(pool), obj_namespace(pool)
    out = [
        m
        for m in models
        if m.spec.inCluster is not None and m.spec.pool == name and obj_namespace(m, ns) == ns
    ]
    return sorted(out, key=obj_name)


def pvc_sources(md: ModelDeployment) -> list[tuple[str, str]]:
    """(field, claim) for every PersistentVolumeClaim a model's weights or LoRA adapters
    load from (``pvc://CLAIM/path``)."""
    ic = md.spec.inCluster
    if ic is None:
        return []
    fields = [("spec.inCluster.source", ic.source)] + [
        (f"spec.inCluster.loraAdapters[{i}].source", a.source)
        for i, a in enumerate(ic.loraAdapters or [])
    ]
    return [
        (field, source[len("pvc://") :].split("/", 1)[0])
        for field, source in fields
        if source.startswith("pvc://")
    ]


def admit(
    pool: ServingPool,
    models: Iterable[ModelDeployment],
    claims: Collection[str] | None = None,
) -> Admission:
    """Admit the pool's in-cluster models class by class, highest priority first.

    A model whose minimum GPUs do not fit what is left of its class's maxGPUs is
    excluded (GPULimitExceeded) and smaller, lower-priority models may still fit. A
    replica that cannot fit on one node (gpusPerReplica > gpusPerNode) is excluded too:
    its placement group is STRICT_PACK. So is a model that loads from a
    PersistentVolumeClaim not in ``claims`` (ClaimNotFound; None: unknown, every claim
    assumed present): the class's worker pods mount every admitted model's claims, and
    one missing claim would leave all of them Pending, every model of the class with them.
    """
    pool_name = obj_name(pool)
    decisions: dict[str, Decision] = {}
    reserved: dict[str, int] = {a.name: 0 for a in pool.spec.accelerators}
    requested: dict[str, int] = {a.name: 0 for a in pool.spec.accelerators}
    holders: dict[str, list[str]] = {a.name: [] for a in pool.spec.accelerators}

    for md in sorted(in_cluster_members(pool, models), key=_priority_key):
        assert md.spec.inCluster is not None
        name = obj_name(md)
        acc_name = md.spec.inCluster.accelerator
        acc = accelerator(pool, acc_name)
        if acc is None:
            known = ", ".join(a.name for a in pool.spec.accelerators) or "none"
            decisions[name] = Decision(
                False,
                REASON_ACCELERATOR_NOT_FOUND,
                f"spec.inCluster.accelerator: ServingPool {pool_name!r} has no accelerator "
                f"class {acc_name!r} (it has: {known})",
            )
            continue
        idx = _accel_index(pool, acc_name)
        per_replica = replica_gpus(md, acc)
        if per_replica > acc.gpusPerNode:
            decisions[name] = Decision(
                False,
                REASON_GPU_LIMIT_EXCEEDED,
                f"spec.inCluster.gpusPerReplica: one replica takes {per_replica} GPUs but a "
                f"{acc_name} node has {acc.gpusPerNode} (ServingPool {pool_name!r} "
                f"spec.accelerators[{idx}].gpusPerNode); a replica must fit on one node",
            )
            continue
        missing = [] if claims is None else [(f, c) for f, c in pvc_sources(md) if c not in claims]
        if missing:
            field_name, claim = missing[0]
            decisions[name] = Decision(
                False,
                REASON_CLAIM_NOT_FOUND,
                f"{field_name}: PersistentVolumeClaim {claim!r} not found in namespace "
                f"{obj_namespace(pool)!r}; the model is left out until it exists (its "
                f"{acc_name} workers would mount it, and wait for it, with every other model "
                "of the class)",
            )
            continue
        need = min_gpus(md, acc)
        if reserved[acc_name] + need > acc.maxGPUs:
            r = model_replicas(md)
            field_name = "spec.autoscaling.minReplicas" if r.autoscale else "spec.replicas"
            count = r.min if r.autoscale else r.initial
            held = ", ".join(holders[acc_name])
            taken = f"; {reserved[acc_name]} already go to {held}" if held else ""
            decisions[name] = Decision(
                False,
                REASON_GPU_LIMIT_EXCEEDED,
                f"{field_name}: {count} replicas x {per_replica} GPUs = {need} GPUs do not fit "
                f"ServingPool {pool_name!r} spec.accelerators[{idx}].maxGPUs={acc.maxGPUs} "
                f"({acc_name}){taken}",
            )
            continue
        reserved[acc_name] += need
        requested[acc_name] += current_gpus(md, acc)
        if need:
            holders[acc_name].append(name)
        decisions[name] = Decision(True)

    usage = {
        a.name: ClassUsage(a.name, a.maxGPUs, reserved[a.name], requested[a.name])
        for a in pool.spec.accelerators
    }
    return Admission(decisions=decisions, usage=usage)
