"""Pure desired-state builders: ServingPool + members -> one KubeRay RayService.

Called by the operator's reconciler and by ``tokenyard render``; imports no kopf and no
Kubernetes client, takes everything it needs as arguments, and returns plain dicts, so
every function here is tested with whole-object equality and no cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from tokenyard import contract
from tokenyard.api.common import (
    ANNOTATION_SPEC_HASH,
    API_VERSION,
    LABEL_MANAGED_BY,
    LABEL_POOL,
    REASON_ACCELERATOR_NOT_FOUND,
    REASON_GPU_LIMIT_EXCEEDED,
    REASON_POOL_NOT_FOUND,
    REASON_SECRET_NOT_FOUND,
    SecretKeyRef,
)
from tokenyard.api.model import ModelDeployment, ModelDeploymentSpec
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import AcceleratorClass, ServingPool
from tokenyard.settings import OperatorSettings

RAY_API_VERSION = "ray.io/v1"
RAY_SERVICE_KIND = "RayService"
RAY_SERVICE_PLURAL = "rayservices"
MANAGED_BY = "tokenyard"

HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"

# Ray's well-known head ports; KubeRay builds the head Service from these names.
HEAD_PORTS: tuple[tuple[str, int], ...] = (
    ("gcs-server", 6379),
    ("dashboard", 8265),
    ("client", 10001),
    ("serve", contract.SERVE_PORT),
)

# One unit per worker pod: model placement bundles ask for 0.001 of it (see
# contract.build_llm_config), so the GPU count, not this resource, bounds packing.
ACCEL_RESOURCE_PER_WORKER = 1

Secrets = Mapping[str, Collection[str]]
"""Secrets known to exist in the namespace: Secret name -> its data keys."""


# --------------------------------------------------------------------------- names


def ray_service_name(pool_name: str) -> str:
    """The RayService of a pool has the pool's name (KubeRay derives its Services from it)."""
    return pool_name


def obj_name(obj: ServingPool | ModelDeployment | RoutingPolicy) -> str:
    return str(obj.metadata.get("name", ""))


def obj_namespace(
    obj: ServingPool | ModelDeployment | RoutingPolicy, default: str = "default"
) -> str:
    ns = obj.metadata.get("namespace")
    return str(ns) if ns else default


def obj_generation(obj: ServingPool | ModelDeployment | RoutingPolicy) -> int | None:
    gen = obj.metadata.get("generation")
    return gen if isinstance(gen, int) else None


def pool_labels(pool_name: str) -> dict[str, str]:
    """Labels on everything the operator creates for a pool (and on its Ray pods)."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_POOL: pool_name}


def volume_name_for_claim(claim: str) -> str:
    """A DNS-label volume name for a PVC (claims may be longer or contain dots)."""
    base = "pvc-" + re.sub(r"[^a-z0-9-]", "-", claim.lower())
    if len(base) <= 63:
        return base.rstrip("-") or "pvc"
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-')}-{digest}"


# --------------------------------------------------------------------------- quantities


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def cpu_cores(quantity: str) -> float:
    """CPU cores of a Kubernetes quantity such as ``2``, ``1.5`` or ``500m``."""
    m = _QUANTITY.match(quantity)
    if not m:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "m" else value


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class FieldProblem:
    """An invalid field: the path as kubectl explain spells it, and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def model_semantic_problems(spec: ModelDeploymentSpec) -> list[FieldProblem]:
    """The CRD's CEL rules for ModelDeployment, for API servers that do not run them
    (the kmock emulator, an older CRD) and for `tokenyard render`."""
    out: list[FieldProblem] = []
    if (spec.inCluster is None) == (spec.external is None):
        out.append(FieldProblem("spec", "exactly one of inCluster or external must be set"))
    if spec.inCluster is not None and spec.pool is None:
        out.append(FieldProblem("spec.pool", "pool is required for inCluster models"))
    a = spec.autoscaling
    if a.minReplicas > a.maxReplicas:
        out.append(
            FieldProblem(
                "spec.autoscaling.minReplicas",
                f"minReplicas ({a.minReplicas}) must be <= maxReplicas ({a.maxReplicas})",
            )
        )
    elif (
        spec.replicas is not None
        and spec.inCluster is not None
        and a.mode == "Tokenyard"
        and not a.minReplicas <= spec.replicas <= a.maxReplicas
    ):
        out.append(
            FieldProblem(
                "spec.replicas",
                f"replicas ({spec.replicas}) must lie within autoscaling.minReplicas "
                f"({a.minReplicas}) and maxReplicas ({a.maxReplicas})",
            )
        )
    return out


def pool_semantic_problems(pool: ServingPool) -> list[FieldProblem]:
    """The CRD's CEL rules for ServingPool (see :func:`model_semantic_problems`)."""
    out: list[FieldProblem] = []
    spec = pool.spec
    if spec.router.minReplicas > spec.router.maxReplicas:
        out.append(
            FieldProblem(
                "spec.router.minReplicas", "router.minReplicas must be <= router.maxReplicas"
            )
        )
    seen: set[str] = set()
    for i, acc in enumerate(spec.accelerators):
        if acc.name in seen:
            out.append(FieldProblem(f"spec.accelerators[{i}].name", f"duplicate name {acc.name!r}"))
        seen.add(acc.name)
        if acc.gpusPerNode == 0 and acc.maxWorkers is None:
            out.append(
                FieldProblem(
                    f"spec.accelerators[{i}].maxWorkers",
                    "maxWorkers is required when gpusPerNode is 0 (a CPU-only class)",
                )
            )
    return out


def policy_semantic_problems(policy: RoutingPolicy) -> list[FieldProblem]:
    """The CRD's CEL rules for RoutingPolicy (see :func:`model_semantic_problems`)."""
    out: list[FieldProblem] = []
    spec = policy.spec
    targets = [t.model for t in spec.targets]
    for i, t in enumerate(targets):
        if t in targets[:i]:
            out.append(FieldProblem(f"spec.targets[{i}].model", f"duplicate target {t!r}"))
    rule_names: set[str] = set()
    for i, rule in enumerate(spec.rules):
        if rule.name in rule_names:
            out.append(FieldProblem(f"spec.rules[{i}].name", f"duplicate rule name {rule.name!r}"))
        rule_names.add(rule.name)
        for j, t in enumerate(rule.targets):
            if t not in targets:
                out.append(
                    FieldProblem(
                        f"spec.rules[{i}].targets[{j}]",
                        f"{t!r} is not a model in spec.targets",
                    )
                )
    if spec.strategy == "Weighted" and not any((t.weight or 0) > 0 for t in spec.targets):
        out.append(
            FieldProblem(
                "spec.targets", "the Weighted strategy needs at least one target with weight > 0"
            )
        )
    return out


# --------------------------------------------------------------------------- replicas


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


# --------------------------------------------------------------------------- admission


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


def admit(pool: ServingPool, models: Iterable[ModelDeployment]) -> Admission:
    """Admit the pool's in-cluster models class by class, highest priority first.

    A model whose minimum GPUs do not fit what is left of its class's maxGPUs is
    excluded (GPULimitExceeded) and smaller, lower-priority models may still fit. A
    replica that cannot fit on one node (gpusPerReplica > gpusPerNode) is excluded too:
    its placement group is STRICT_PACK.
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


# --------------------------------------------------------------------------- secrets


def secret_missing(ref: SecretKeyRef | None, secrets: Secrets | None) -> bool:
    """True when ``ref`` names a Secret key known to be absent (None: nothing known)."""
    if ref is None or secrets is None:
        return False
    keys = secrets.get(ref.name)
    return keys is None or ref.key not in keys


def secret_message(ref: SecretKeyRef, field_path: str, secrets: Secrets | None) -> str:
    if secrets is not None and ref.name in secrets:
        return f"{field_path}: Secret {ref.name!r} has no key {ref.key!r}"
    return f"{field_path}: Secret {ref.name!r} not found"


# --------------------------------------------------------------------------- render


@dataclass(frozen=True)
class Problem:
    """Something `tokenyard render` reports and the operator turns into a condition."""

    kind: str
    name: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.reason}: {self.message}"


@dataclass(frozen=True)
class PoolRender:
    """Everything the operator derives from one pool's inputs."""

    ray_service: dict[str, Any]
    admission: Admission
    models: list[ModelDeployment]
    """In-cluster members that got an application (admitted), by name."""
    externals: list[ModelDeployment]
    """External models in the router's catalogue, by name."""
    policies: list[RoutingPolicy]
    """The pool's policies, by name."""
    problems: list[Problem] = field(default_factory=list)
    state_claim: dict[str, Any] | None = None
    """The PersistentVolumeClaim of the router's spend ledger (None when not persistent)."""


def _pool_policies(pool: ServingPool, policies: Iterable[RoutingPolicy]) -> list[RoutingPolicy]:
    name, ns = obj_name(pool), obj_namespace(pool)
    out = [p for p in policies if p.spec.pool == name and obj_namespace(p, ns) == ns]
    return sorted(out, key=obj_name)


def _catalogue_externals(
    pool: ServingPool, models: Iterable[ModelDeployment], policies: Sequence[RoutingPolicy]
) -> list[ModelDeployment]:
    """External models the pool's router must know: those in the pool and any external
    target of the pool's policies (an external model needs no GPUs, any router calls it)."""
    name, ns = obj_name(pool), obj_namespace(pool)
    wanted = {t.model for p in policies for t in p.spec.targets}
    out = [
        m
        for m in models
        if m.spec.external is not None
        and obj_namespace(m, ns) == ns
        and (m.spec.pool == name or obj_name(m) in wanted)
    ]
    return sorted(out, key=obj_name)


def _secret_env(env_name: str, ref: SecretKeyRef) -> dict[str, Any]:
    # optional: a missing Secret must not keep the head pod (and every model) from
    # starting; the router treats an empty key as "not ready" for that one model.
    return {
        "name": env_name,
        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key, "optional": True}},
    }


def secret_env_vars(
    externals: Sequence[ModelDeployment], policies: Sequence[RoutingPolicy]
) -> list[dict[str, Any]]:
    """Env vars of every Ray container: API keys and tenant-key maps by Secret reference,
    never by value, sorted by name so the rendered spec is stable."""
    env: dict[str, dict[str, Any]] = {}
    for m in externals:
        assert m.spec.external is not None
        ref = m.spec.external.apiKeySecretRef
        if ref is not None:
            n = contract.api_key_env(obj_name(m))
            env[n] = _secret_env(n, ref)
    for p in policies:
        ref = p.spec.tenants.apiKeysSecretRef
        if ref is not None:
            n = contract.tenant_keys_env(obj_name(p))
            env[n] = _secret_env(n, ref)
    return [env[k] for k in sorted(env)]


def _resources(cpu: str, memory: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": memory, **(extra or {})}
    return {"limits": dict(amounts), "requests": dict(amounts)}


def _ray_resources_param(resources: Mapping[str, int]) -> str:
    # KubeRay passes rayStartParams through a shell to `ray start`, so the JSON must be
    # wrapped in double quotes with its own quotes escaped (KubeRay's documented form).
    inner = json.dumps(dict(sorted(resources.items())), separators=(", ", ": "))
    return '"' + inner.replace('"', '\\"') + '"'


def head_num_cpus(pool: ServingPool) -> int:
    """Logical CPUs the Ray head advertises.

    The head runs the router (and Serve's controller and proxy), never a model: model
    placement bundles ask for an accelerator class's custom resource that only that
    class's workers advertise. So the head advertises its CPUs, and at least enough
    for the router's maxReplicas; the router is I/O bound (it proxies HTTP), so
    oversubscribing the head's logical CPUs is preferred to a pending router replica.
    """
    cores = math.floor(cpu_cores(pool.spec.head.cpu))
    router = math.ceil(pool.spec.router.maxReplicas * pool.spec.router.cpu)
    return max(1, cores, router)


def _container(
    name: str,
    image: str,
    resources: dict[str, Any],
    env: list[dict[str, Any]],
    *,
    ports: Sequence[tuple[str, int]] = (),
    mounts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image}
    if ports:
        c["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    c["resources"] = resources
    if env:
        c["env"] = copy.deepcopy(list(env))
    if mounts:
        c["volumeMounts"] = list(mounts)
    return c


def _pod_spec(
    pool: ServingPool,
    container: dict[str, Any],
    *,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[dict[str, Any]] = (),
    volumes: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if pool.spec.serviceAccountName:
        spec["serviceAccountName"] = pool.spec.serviceAccountName
    if node_selector:
        spec["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        spec["tolerations"] = list(tolerations)
    if volumes:
        spec["volumes"] = list(volumes)
    return spec


# The Ray images run as user ray (uid 1000) in group users (gid 100); a fresh volume is
# owned by root, so the pod's fsGroup makes the state volume writable for the ledger.
RAY_IMAGE_GID = 100


def state_volume(pool: ServingPool) -> dict[str, Any]:
    """The head's state volume: the pool's claim when persistent, else the pod's disk."""
    if pool.spec.router.state.persistent:
        claim = {"claimName": contract.state_claim_name(obj_name(pool))}
        return {"name": contract.STATE_VOLUME, "persistentVolumeClaim": claim}
    return {"name": contract.STATE_VOLUME, "emptyDir": {}}


def build_state_claim(pool: ServingPool) -> dict[str, Any] | None:
    """The PersistentVolumeClaim holding the router's spend ledger, owned by the pool.

    One writer (the ledger actor on the head), so ReadWriteOnce suffices. The operator
    creates it once and never patches it: a claim's spec is immutable once bound."""
    st = pool.spec.router.state
    if not st.persistent:
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": st.size}},
    }
    if st.storageClassName is not None:
        spec["storageClassName"] = st.storageClassName
    metadata: dict[str, Any] = {
        "name": contract.state_claim_name(obj_name(pool)),
        "namespace": obj_namespace(pool),
        "labels": pool_labels(obj_name(pool)),
    }
    owners = owner_references(pool)
    if owners:
        metadata["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def build_head_group(pool: ServingPool, image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """The CPU-only head group: GCS, dashboard, Serve controller and proxy, the router,
    and the router's spend ledger on the state volume."""
    h = pool.spec.head
    mount = {"name": contract.STATE_VOLUME, "mountPath": contract.STATE_MOUNT}
    container = _container(
        HEAD_CONTAINER,
        image,
        _resources(h.cpu, h.memory),
        env,
        ports=HEAD_PORTS,
        mounts=[mount],
    )
    spec = _pod_spec(pool, container, volumes=[state_volume(pool)])
    spec["securityContext"] = {"fsGroup": RAY_IMAGE_GID}
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": str(head_num_cpus(pool))},
        "template": {
            "metadata": {"labels": pool_labels(obj_name(pool))},
            "spec": spec,
        },
    }


def worker_max_replicas(acc: AcceleratorClass) -> int:
    """maxWorkers, else as many pods as maxGPUs fill (0 for a CPU class without it)."""
    if acc.maxWorkers is not None:
        return acc.maxWorkers
    if acc.gpusPerNode > 0:
        return acc.maxGPUs // acc.gpusPerNode
    return 0


def _pvc_claims(models: Iterable[ModelDeployment]) -> list[str]:
    claims: set[str] = set()
    for m in models:
        if m.spec.inCluster is not None and m.spec.inCluster.source.startswith("pvc://"):
            claims.add(m.spec.inCluster.source[len("pvc://") :].split("/", 1)[0])
    return sorted(claims)


def build_worker_group(
    pool: ServingPool,
    acc: AcceleratorClass,
    image: str,
    env: list[dict[str, Any]],
    models: Sequence[ModelDeployment],
) -> dict[str, Any]:
    """One worker group for one accelerator class; the Ray autoscaler sizes it in
    [0, maxReplicas] from the placement groups the models' replicas ask for."""
    extra: dict[str, str] = {}
    params: dict[str, str] = {}
    if acc.gpusPerNode > 0:
        extra[acc.resourceName] = str(acc.gpusPerNode)
        params["num-gpus"] = str(acc.gpusPerNode)
    params["resources"] = _ray_resources_param(
        {contract.accel_resource(acc.name): ACCEL_RESOURCE_PER_WORKER}
    )
    claims = _pvc_claims(models)
    volumes = [
        {
            "name": volume_name_for_claim(c),
            "persistentVolumeClaim": {"claimName": c, "readOnly": True},
        }
        for c in claims
    ]
    mounts = [
        {
            "name": volume_name_for_claim(c),
            "mountPath": f"{contract.PVC_MOUNT_ROOT}/{c}",
            "readOnly": True,
        }
        for c in claims
    ]
    container = _container(
        WORKER_CONTAINER, image, _resources(acc.cpu, acc.memory, extra), env, mounts=mounts
    )
    tolerations = [t.dump() for t in acc.tolerations]
    return {
        "groupName": acc.name,
        "replicas": 0,
        "minReplicas": 0,
        "maxReplicas": worker_max_replicas(acc),
        "rayStartParams": params,
        "template": {
            "metadata": {"labels": pool_labels(obj_name(pool))},
            "spec": _pod_spec(
                pool,
                container,
                node_selector=acc.nodeSelector,
                tolerations=tolerations,
                volumes=volumes,
            ),
        },
    }


def model_application(pool: ServingPool, md: ModelDeployment) -> dict[str, Any]:
    """The Ray Serve application of one admitted in-cluster model."""
    assert md.spec.inCluster is not None
    name = obj_name(md)
    acc = accelerator(pool, md.spec.inCluster.accelerator)
    r = model_replicas(md)
    llm_config = contract.build_llm_config(
        name,
        md.spec,
        acc,
        min_replicas=r.min,
        max_replicas=r.max,
        initial_replicas=r.initial,
        autoscale=r.autoscale,
    )
    return {
        "name": contract.model_app_name(name),
        "route_prefix": contract.model_route_prefix(name),
        "import_path": contract.MODEL_IMPORT_PATH,
        "args": {"llm_config": llm_config},
    }


def policy_entry(policy: RoutingPolicy) -> contract.PolicyEntry:
    name = obj_name(policy)
    return contract.PolicyEntry(
        name=name,
        namespace=obj_namespace(policy),
        endpoint=policy.spec.endpoint or name,
        generation=obj_generation(policy),
        spec=policy.spec.dump(),
        tenantKeysEnv=(
            contract.tenant_keys_env(name) if policy.spec.tenants.apiKeysSecretRef else None
        ),
    )


def router_config(
    pool: ServingPool,
    models: Sequence[ModelDeployment],
    externals: Sequence[ModelDeployment],
    policies: Sequence[RoutingPolicy],
    secrets: Secrets | None,
) -> contract.RouterConfig:
    """The router's user_config: its catalogue (admitted in-cluster models and external
    ones) and the pool's policies. Readiness here depends on specs and Secrets only, never
    on observed state, so the rendered RayService does not churn with KubeRay's status.
    For the same reason spill-over's replica count is what the model app asks Ray Serve
    for (``model_replicas(...).initial``, already part of the model app), not the
    status's readyReplicas. The one status the catalogue follows is each model's Capped
    condition, and only when a policy of the pool sets spillover.downgradeWhenCapped."""
    with_capped = any(
        p.spec.spillover.enabled and p.spec.spillover.downgradeWhenCapped for p in policies
    )
    entries: list[contract.CatalogueEntry] = []
    for m in models:
        assert m.spec.inCluster is not None
        acc = accelerator(pool, m.spec.inCluster.accelerator)
        entries.append(
            contract.catalogue_entry(
                m,
                ready=True,
                accel=acc,
                replicas=model_replicas(m).initial,
                with_capped=with_capped,
            )
        )
    for m in externals:
        assert m.spec.external is not None
        ready = not secret_missing(m.spec.external.apiKeySecretRef, secrets)
        entries.append(contract.catalogue_entry(m, ready=ready))
    entries.sort(key=lambda e: e.name)
    return contract.RouterConfig(
        pool=obj_name(pool),
        namespace=obj_namespace(pool),
        models=entries,
        policies=[policy_entry(p) for p in policies],
        routerReplicas=pool.spec.router.minReplicas,
    )


def router_application(pool: ServingPool, config: contract.RouterConfig) -> dict[str, Any]:
    r = pool.spec.router
    args = contract.RouterAppArgs(
        pool=obj_name(pool), namespace=obj_namespace(pool), ledgerPath=contract.LEDGER_PATH
    )
    return {
        "name": contract.ROUTER_APP_NAME,
        "route_prefix": contract.ROUTER_ROUTE_PREFIX,
        "import_path": contract.ROUTER_IMPORT_PATH,
        "args": args.model_dump(mode="json", exclude_none=True),
        "deployments": [
            {
                "name": contract.ROUTER_DEPLOYMENT,
                "autoscaling_config": {
                    "min_replicas": r.minReplicas,
                    "max_replicas": max(r.maxReplicas, r.minReplicas),
                    "target_ongoing_requests": contract.ROUTER_TARGET_ONGOING_REQUESTS,
                },
                "ray_actor_options": {"num_cpus": r.cpu},
                "user_config": config.model_dump(mode="json", exclude_none=True),
            }
        ],
    }


def build_serve_config(
    pool: ServingPool, models: Sequence[ModelDeployment], router: contract.RouterConfig
) -> dict[str, Any]:
    """serveConfigV2 as a dict: one app per admitted in-cluster model, then the router."""
    apps = [model_application(pool, m) for m in models]
    apps.append(router_application(pool, router))
    return {
        "http_options": {"host": "0.0.0.0", "port": contract.SERVE_PORT},
        "applications": apps,
    }


# libyaml's emitter when PyYAML has it: a pool of 50 models renders ~6x faster.
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _NoAliasDumper(_BaseDumper):  # type: ignore[misc]
    """Equal sub-objects are written out each time, never as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def serve_config_yaml(config: Mapping[str, Any]) -> str:
    """KubeRay takes serveConfigV2 as a YAML string; keys sorted so it is stable."""
    text: str = yaml.dump(
        dict(config), Dumper=_NoAliasDumper, sort_keys=True, default_flow_style=False, width=1000
    )
    return text


# Serializing a big pool's serve config to YAML costs far more than building it, and
# most passes render an unchanged config: remember the text of recent ones by content.
_YAML_CACHE: dict[str, str] = {}
_YAML_CACHE_SIZE = 256


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _serve_yaml_cached(config: Mapping[str, Any], canonical: str) -> str:
    key = hashlib.sha256(canonical.encode()).hexdigest()
    text = _YAML_CACHE.get(key)
    if text is None:
        text = serve_config_yaml(config)
        if len(_YAML_CACHE) >= _YAML_CACHE_SIZE:
            _YAML_CACHE.pop(next(iter(_YAML_CACHE)))
        _YAML_CACHE[key] = text
    return text


def spec_hash(spec: Mapping[str, Any], serve_config: Mapping[str, Any] | None = None) -> str:
    """Stable hash of a rendered spec (the tokenyard.dev/spec-hash annotation).

    With ``serve_config`` the hash covers that dict in place of the serveConfigV2 text,
    so a different YAML emitter (libyaml or not) never changes the hash.
    """
    content = dict(spec)
    if serve_config is not None:
        content["serveConfigV2"] = serve_config
    return hashlib.sha256(_canonical(content).encode()).hexdigest()[:16]


def owner_references(pool: ServingPool) -> list[dict[str, Any]]:
    """The pool owns its RayService, so deleting the pool garbage-collects it.

    No uid (kmock, `tokenyard render`) means no reference: the API server rejects one
    without a uid. blockOwnerDeletion stays unset, which spares the operator the
    servingpools/finalizers permission that admission would otherwise demand.
    """
    uid = pool.metadata.get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": ServingPool.KIND,
            "name": obj_name(pool),
            "uid": str(uid),
            "controller": True,
        }
    ]


def render_pool(
    pool: ServingPool,
    models: Iterable[ModelDeployment],
    policies: Iterable[RoutingPolicy],
    *,
    secrets: Secrets | None = None,
    settings: OperatorSettings | None = None,
) -> PoolRender:
    """Render a pool's RayService and say which members got in and which did not.

    ``models`` and ``policies`` may hold more than the pool's members (for example a
    whole namespace); members are picked here. ``secrets`` None means "unknown":
    every referenced Secret is assumed present.
    """
    settings = settings or OperatorSettings()
    models = list(models)
    name, ns = obj_name(pool), obj_namespace(pool)
    image = pool.spec.image or settings.default_ray_image
    admission = admit(pool, models)
    members = in_cluster_members(pool, models)
    admitted = [m for m in members if admission.admitted(obj_name(m))]
    pol = _pool_policies(pool, policies)
    externals = _catalogue_externals(pool, models, pol)

    problems: list[Problem] = []
    for m in members:
        d = admission.decisions[obj_name(m)]
        if not d.admitted:
            problems.append(Problem(ModelDeployment.KIND, obj_name(m), d.reason, d.message))
    for m in externals:
        assert m.spec.external is not None
        ref = m.spec.external.apiKeySecretRef
        if ref is not None and secret_missing(ref, secrets):
            msg = secret_message(ref, "spec.external.apiKeySecretRef", secrets)
            problems.append(
                Problem(ModelDeployment.KIND, obj_name(m), REASON_SECRET_NOT_FOUND, msg)
            )
    for p in pol:
        ref = p.spec.tenants.apiKeysSecretRef
        if ref is not None and secret_missing(ref, secrets):
            msg = secret_message(ref, "spec.tenants.apiKeysSecretRef", secrets)
            problems.append(Problem(RoutingPolicy.KIND, obj_name(p), REASON_SECRET_NOT_FOUND, msg))

    env = secret_env_vars(externals, pol)
    router = router_config(pool, admitted, externals, pol, secrets)
    serve = build_serve_config(pool, admitted, router)
    used = {m.spec.inCluster.accelerator for m in admitted if m.spec.inCluster is not None}
    groups = [
        build_worker_group(
            pool,
            acc,
            image,
            env,
            [m for m in admitted if m.spec.inCluster and m.spec.inCluster.accelerator == acc.name],
        )
        for acc in sorted(pool.spec.accelerators, key=lambda a: a.name)
        if acc.name in used
    ]
    spec: dict[str, Any] = {
        "serveConfigV2": _serve_yaml_cached(serve, _canonical(serve)),
        "rayClusterConfig": {
            "rayVersion": pool.spec.rayVersion,
            "enableInTreeAutoscaling": True,
            "headGroupSpec": build_head_group(pool, image, env),
            "workerGroupSpecs": groups,
        },
    }
    metadata: dict[str, Any] = {
        "name": ray_service_name(name),
        "namespace": ns,
        "labels": pool_labels(name),
        "annotations": {ANNOTATION_SPEC_HASH: spec_hash(spec, serve)},
    }
    owners = owner_references(pool)
    if owners:
        metadata["ownerReferences"] = owners
    ray_service = {
        "apiVersion": RAY_API_VERSION,
        "kind": RAY_SERVICE_KIND,
        "metadata": metadata,
        "spec": spec,
    }
    return PoolRender(
        ray_service=ray_service,
        admission=admission,
        models=admitted,
        externals=externals,
        policies=pol,
        problems=problems,
        state_claim=build_state_claim(pool),
    )


def build_ray_service(
    pool: ServingPool,
    models: Iterable[ModelDeployment],
    policies: Iterable[RoutingPolicy],
    secrets: Secrets | None = None,
    settings: OperatorSettings | None = None,
) -> dict[str, Any]:
    """The RayService for a pool (see :func:`render_pool`)."""
    return render_pool(pool, models, policies, secrets=secrets, settings=settings).ray_service


def orphan_problems(
    pools: Iterable[ServingPool],
    models: Iterable[ModelDeployment],
    policies: Iterable[RoutingPolicy],
) -> list[Problem]:
    """Models and policies that name a pool that does not exist (in their namespace)."""
    known = {(obj_namespace(p), obj_name(p)) for p in pools}
    out: list[Problem] = []
    for m in models:
        pool = m.spec.pool
        if pool is not None and (obj_namespace(m), pool) not in known:
            out.append(
                Problem(
                    ModelDeployment.KIND,
                    obj_name(m),
                    REASON_POOL_NOT_FOUND,
                    f"spec.pool: ServingPool {pool!r} not found in namespace {obj_namespace(m)!r}",
                )
            )
    for p in policies:
        if (obj_namespace(p), p.spec.pool) not in known:
            out.append(
                Problem(
                    RoutingPolicy.KIND,
                    obj_name(p),
                    REASON_POOL_NOT_FOUND,
                    f"spec.pool: ServingPool {p.spec.pool!r} not found in namespace "
                    f"{obj_namespace(p)!r}",
                )
            )
    return out
