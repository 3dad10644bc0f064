"""Pure desired-state builders: ServingPool + members -> one KubeRay RayService.

Called by the operator's reconciler and by ``tokenyard render``; imports no kopf and no
Kubernetes client, takes everything it needs as arguments, and returns plain dicts, so
every function here is tested with whole-object equality and no cluster.

:func:`render_pool` (:mod:`.ray_service`) puts a pool's render together: GPU admission
(:mod:`.admission`), the Ray cluster's head and worker groups (:mod:`.cluster`) and the
serveConfigV2 applications (:mod:`.serve_config`); :mod:`.validation` holds the CRDs'
CEL rules in Python and :mod:`.meta` the names, labels and owners they all share.
"""

from tokenyard.operator.builders.admission import (
    Admission,
    ClassUsage,
    Decision,
    Replicas,
    accelerator,
    admit,
    current_gpus,
    in_cluster_members,
    min_gpus,
    model_replicas,
    replica_gpus,
)
from tokenyard.operator.builders.cluster import (
    ACCEL_RESOURCE_PER_WORKER,
    HEAD_CONTAINER,
    HEAD_PORTS,
    RAY_IMAGE_GID,
    WORKER_CONTAINER,
    build_head_group,
    build_state_claim,
    build_worker_group,
    cpu_cores,
    head_num_cpus,
    secret_env_vars,
    state_volume,
    worker_max_replicas,
)
from tokenyard.operator.builders.meta import (
    MANAGED_BY,
    RAY_API_VERSION,
    RAY_SERVICE_KIND,
    RAY_SERVICE_PLURAL,
    Secrets,
    obj_generation,
    obj_name,
    obj_namespace,
    owner_references,
    pool_labels,
    ray_service_name,
    secret_message,
    secret_missing,
    volume_name_for_claim,
)
from tokenyard.operator.builders.ray_service import (
    PoolRender,
    Problem,
    build_ray_service,
    orphan_problems,
    render_pool,
)
from tokenyard.operator.builders.serve_config import (
    build_serve_config,
    model_application,
    policy_entry,
    router_application,
    router_config,
    serve_config_text,
    serve_config_yaml,
    spec_hash,
)
from tokenyard.operator.builders.validation import (
    FieldProblem,
    model_semantic_problems,
    policy_semantic_problems,
    pool_semantic_problems,
)

__all__ = [
    "ACCEL_RESOURCE_PER_WORKER",
    "HEAD_CONTAINER",
    "HEAD_PORTS",
    "MANAGED_BY",
    "RAY_API_VERSION",
    "RAY_IMAGE_GID",
    "RAY_SERVICE_KIND",
    "RAY_SERVICE_PLURAL",
    "WORKER_CONTAINER",
    "Admission",
    "ClassUsage",
    "Decision",
    "FieldProblem",
    "PoolRender",
    "Problem",
    "Replicas",
    "Secrets",
    "accelerator",
    "admit",
    "build_head_group",
    "build_ray_service",
    "build_serve_config",
    "build_state_claim",
    "build_worker_group",
    "cpu_cores",
    "current_gpus",
    "head_num_cpus",
    "in_cluster_members",
    "min_gpus",
    "model_application",
    "model_replicas",
    "model_semantic_problems",
    "obj_generation",
    "obj_name",
    "obj_namespace",
    "orphan_problems",
    "owner_references",
    "policy_entry",
    "policy_semantic_problems",
    "pool_labels",
    "pool_semantic_problems",
    "ray_service_name",
    "render_pool",
    "replica_gpus",
    "router_application",
    "router_config",
    "secret_env_vars",
    "secret_message",
    "secret_missing",
    "serve_config_text",
    "serve_config_yaml",
    "spec_hash",
    "state_volume",
    "volume_name_for_claim",
    "worker_max_replicas",
]
