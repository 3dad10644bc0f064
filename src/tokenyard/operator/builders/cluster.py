"""The Ray cluster of a pool: its head group, one worker group per class, the state claim.

The head runs the router, Serve and the ledger's state volume; each accelerator class in
use gets a worker group the Ray autoscaler sizes. Secrets reach every Ray container as
environment variables by reference, never by value.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenyard import contract
from tokenyard.api.common import SecretKeyRef
from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.api.pool import AcceleratorClass, ServingPool
from tokenyard.operator.builders.admission import pvc_sources
from tokenyard.operator.builders.meta import (
    obj_name,
    obj_namespace,
    owner_references,
    pool_labels,
    volume_name_for_claim,
)

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


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def cpu_cores(quantity: str) -> float:
    """CPU cores of a Kubernetes quantity such as ``2``, ``1.5`` or ``500m``."""
    m = _QUANTITY.match(quantity)
    if not m:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "m" else value


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


def ingress_env_vars(pool: ServingPool) -> list[dict[str, Any]]:
    """Env vars of every Ray container that pick what serves the Serve port
    (spec.router.ingress): Serve reads them once per process, and the controller (head),
    the router replicas (head) and the model replicas (workers) must agree, so head and
    workers get the same ones. With HAProxy every pod runs HAProxy on the Serve port
    (so KubeRay's serve Service and its readiness probes on /-/healthz stay as they are),
    and the replicas listen on their own ports (Ray's direct-ingress range, 30000-31000),
    which HAProxy on any pod reaches by pod IP."""
    env = contract.ingress_env(pool.spec.router.ingress)
    return [{"name": k, "value": env[k]} for k in sorted(env)]


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
    """The PersistentVolumeClaims the models' weights and LoRA adapters load from."""
    return sorted({claim for m in models for _, claim in pvc_sources(m)})


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
