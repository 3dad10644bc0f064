"""The reconcile pass over a namespace's orphans: models and policies no pool reconciles.

:meth:`tokenyard.operator.controller.Controller.process` runs :func:`reconcile_namespace`
for a namespace key: the statuses of models and policies naming a pool that does not
exist (PoolNotFound), and of external models that name none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenyard.api.model import ModelDeployment
from tokenyard.api.policy import RoutingPolicy
from tokenyard.operator import status
from tokenyard.operator.kube import MODELS, POLICIES
from tokenyard.operator.parsing import parse
from tokenyard.operator.store import Body

if TYPE_CHECKING:
    from tokenyard.operator.controller import Controller


async def reconcile_namespace(ctrl: Controller, ns: str) -> None:
    """Statuses of models and policies no existing pool reconciles: those naming a
    missing pool, and external models that name none."""
    now = ctrl.timestamp()
    pools = {name for pns, name in ctrl.store.pools() if pns == ns}
    for ref in sorted(ctrl.store.pool_refs(ns)):
        if ref and ref in pools:
            continue
        if ref and await ctrl.pool_exists(ns, ref):
            # Created, but its watch event has not reached the index yet.
            ctrl.enqueue_pool(ns, ref)
            continue
        for b in ctrl.store.models_of_pool(ns, ref):
            await _model_status(ctrl, ns, b, now)
        for b in ctrl.store.policies_of_pool(ns, ref):
            await _policy_status(ctrl, ns, b, now)


async def _model_status(ctrl: Controller, ns: str, b: Body, now: str) -> None:
    p = parse(ModelDeployment, b)
    if p.obj is None:
        await ctrl.report_invalid(MODELS, "ModelDeployment", b, p)
        return
    md: ModelDeployment = p.obj
    secrets: dict[str, set[str]] | None = None
    if md.spec.external is not None and md.spec.external.apiKeySecretRef is not None:
        secrets = await ctrl.secret_keys([md.spec.external.apiKeySecretRef.name], ns)
    ctx = status.ModelContext(pool=None, secrets=secrets)
    await ctrl.write_status(
        MODELS, "ModelDeployment", b, status.build_model_status(md, ctx, now=now)
    )


async def _policy_status(ctrl: Controller, ns: str, b: Body, now: str) -> None:
    pp = parse(RoutingPolicy, b)
    if pp.obj is None:
        await ctrl.report_invalid(POLICIES, "RoutingPolicy", b, pp)
        return
    pol: RoutingPolicy = pp.obj
    models: dict[str, ModelDeployment] = {}
    invalid: set[str] = set()
    for t in pol.spec.targets:
        await ctrl.collect_target(ns, t.model, models, invalid)
    pctx = status.PolicyContext(pool=None, models=models, invalid=invalid)
    await ctrl.write_status(
        POLICIES, "RoutingPolicy", b, status.build_policy_status(pol, pctx, now=now)
    )


__all__ = ["reconcile_namespace"]
