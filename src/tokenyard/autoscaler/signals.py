"""Signals the autoscaler decides on, and the sources that read them (Prometheus, or injected).

The loop asks a :class:`SignalSource` once per interval; tests and the simulator pass
their own source. A model whose core series (running and waiting requests) are missing
or older than ``stale_after_s`` comes back with ``available=False``: the decision then
holds its last safe value instead of reading "no series" as "no load".
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokenyard.autoscaler import queries

log = logging.getLogger("tokenyard.autoscaler")


@dataclass(frozen=True)
class ModelRef:
    """Which series belong to one ModelDeployment."""

    name: str
    """ModelDeployment name (the Ray Serve application is ``model-<name>``)."""
    served_name: str
    """``model_name`` label of the engine metrics."""
    namespace: str = "default"
    pool: str | None = None
    accelerator: str | None = None
    ttft_slo_s: float | None = None
    """The model's TTFT SLO: which of its first tokens count as late."""


@dataclass(frozen=True)
class ModelSignals:
    """What one model's engines report, as of ``observed_at`` (Unix seconds)."""

    observed_at: float
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    """KV-cache fill in [0, 1]."""
    kv_cache_tokens: float | None = None
    """Tokens of KV cache one replica holds (the smallest of the model's engines), from
    vLLM's ``cache_config_info``: blocks times block size."""
    request_rate: float | None = None
    """Finished requests per second."""
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    ttft_p95_s: float | None = None
    first_tokens_per_s: float | None = None
    """Requests per second whose first token came (vLLM's TTFT histogram's count)."""
    late_first_tokens_per_s: float | None = None
    """Of those, the ones whose TTFT exceeded the model's SLO (from the histogram's
    buckets around ``ttftSLOSeconds``)."""
    serve_ongoing: float | None = None
    """Ray Serve's count of requests at the model's replicas."""
    gpu_utilization: float | None = None
    """GPU busy fraction in [0, 1] of the model's accelerator class in its pool."""
    available: bool = True
    """False when the core series are missing or stale."""
    detail: str = ""
    """Why the signals are unavailable."""

    @property
    def ongoing(self) -> float:
        """Requests in flight: the engine's running plus waiting, or Ray Serve's count."""
        engine = (self.running or 0.0) + (self.waiting or 0.0)
        return max(engine, self.serve_ongoing or 0.0)

    @property
    def tokens_per_s(self) -> float:
        return (self.prompt_tokens_per_s or 0.0) + (self.generation_tokens_per_s or 0.0)

    @property
    def decode_tokens_per_sequence(self) -> float | None:
        """Generation tokens per second per running sequence: the engines' measured
        decode speed, which sets how long a request stays on its replica (None with
        fewer than one sequence running or no tokens generated)."""
        running, generated = self.running or 0.0, self.generation_tokens_per_s or 0.0
        if running < 1 or generated <= 0:
            return None
        return generated / running


def unavailable(now: float, detail: str) -> ModelSignals:
    """Signals of a model whose metrics cannot be read."""
    return ModelSignals(observed_at=now, available=False, detail=detail)


@dataclass(frozen=True)
class PoolSignals:
    """Per pool and accelerator class: GPUs present and how busy they are."""

    gpus_in_use: dict[str, float] = field(default_factory=dict)
    gpu_utilization: dict[str, float] = field(default_factory=dict)
    available: bool = True
    """False when Prometheus could not be read: no GPU series is not zero GPUs."""
    detail: str = ""


SpendKey = tuple[str, str]
"""(namespace, endpoint) of a router's spend series; namespace "" when the scrape adds
none."""


class SignalSource(Protocol):
    """Reads the signals of many models at once."""

    def model_signals(self, models: Sequence[ModelRef], now: float) -> dict[str, ModelSignals]:
        """Signals keyed by ModelDeployment name; every requested model has an entry."""
        ...

    def pool_signals(self, namespace: str, pool: str, now: float) -> PoolSignals:
        """GPU use of one pool per accelerator class."""
        ...

    def spend_usd_per_hour(self, now: float) -> dict[SpendKey, float] | None:
        """Spend rate per RoutingPolicy endpoint; None when it cannot be read or no router
        reports any (an absent counter is not a zero spend)."""
        ...


QueryFn = Callable[[str], list[dict[str, Any]]]
"""Runs one instant query; returns Prometheus' ``data.result`` list."""

RangeQueryFn = Callable[[str, float, float, float], list[dict[str, Any]]]
"""Runs one range query (query, start, end, step seconds); returns Prometheus'
``data.result`` matrix: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``."""


@runtime_checkable
class RateHistorySource(Protocol):
    """A source that can also read each model's past request rate (the forecast's
    history)."""

    def rate_history(
        self, models: Sequence[ModelRef], start: float, end: float, step_s: float
    ) -> dict[str, list[tuple[float, float]]]:
        """(time, finished requests/s over the step before it) per ModelDeployment name,
        oldest first; models without history are absent. Raises when the source cannot
        be read."""
        ...


def by_label_range(
    result: Sequence[Mapping[str, Any]], label: str
) -> dict[str, list[tuple[float, float]]]:
    """Prometheus matrix result -> {label value: [(time, value), ...]}; NaN, Inf and
    malformed points dropped."""
    out: dict[str, list[tuple[float, float]]] = {}
    for series in result:
        key = series.get("metric", {}).get(label)
        if key is None:
            continue
        points = out.setdefault(str(key), [])
        for raw in series.get("values") or []:
            v = _value({"value": raw})
            if v is not None:
                points.append((float(raw[0]), v))
        points.sort()
    return out


def kv_cache_tokens(result: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """:func:`queries.kv_cache_config` result -> {model_name: KV-cache tokens of its
    smallest engine}: ``num_gpu_blocks`` times ``block_size`` from the info gauge's
    labels (``kv_cache_size_tokens`` where vLLM reports it and the blocks are not known);
    engines not yet sized ("None") and unparseable labels are skipped."""
    out: dict[str, float] = {}
    for series in result:
        labels = series.get("metric", {})
        model = labels.get(queries.MODEL_LABEL)
        tokens = _label_number(labels, "num_gpu_blocks") * _label_number(labels, "block_size")
        if not tokens > 0:
            tokens = _label_number(labels, "kv_cache_size_tokens")
        if model is not None and tokens > 0:
            out[str(model)] = min(out.get(str(model), tokens), tokens)
    return out


def _label_number(labels: Mapping[str, Any], name: str) -> float:
    """A label's value as a finite number; NaN when absent or not a number."""
    try:
        v = float(labels.get(name, "nan"))
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _value(sample: Mapping[str, Any]) -> float | None:
    raw = sample.get("value")
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    try:
        v = float(raw[1])
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def ttft_over_slo(
    result: Sequence[Mapping[str, Any]], label: str, slos: Mapping[str, float]
) -> dict[str, tuple[float, float]]:
    """:func:`queries.ttft_buckets` result -> {label value: (first tokens per second,
    those later than its SLO in ``slos``)}. The histogram is cumulative: the rate at
    ``le="+Inf"`` counts them all, and the rate within the SLO is interpolated linearly
    between the buckets either side of it (as ``histogram_quantile`` does), so an SLO
    between vLLM's bucket bounds (5 s and 7.5 s, say) is read, not rounded to one.
    Models without an SLO in ``slos`` or without a ``+Inf`` bucket are left out."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for sample in result:
        metric = sample.get("metric", {})
        key, le, v = metric.get(label), metric.get("le"), _value(sample)
        if key is None or le is None or v is None:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        buckets.setdefault(str(key), []).append((bound, max(0.0, v)))
    out: dict[str, tuple[float, float]] = {}
    for key, points in buckets.items():
        slo = slos.get(key)
        points.sort()
        if slo is None or not points or not math.isinf(points[-1][0]):
            continue
        total = points[-1][1]
        within, lower = 0.0, (0.0, 0.0)
        for bound, count in points:
            if bound >= slo:
                if math.isinf(bound):
                    within = lower[1]
                else:
                    frac = (slo - lower[0]) / (bound - lower[0]) if bound > lower[0] else 1.0
                    within = lower[1] + (count - lower[1]) * frac
                break
            lower = (bound, count)
        out[key] = (total, max(0.0, total - min(within, total)))
    return out


def by_label(result: Sequence[Mapping[str, Any]], label: str) -> dict[str, float]:
    """Prometheus vector result -> {label value: sample value}; NaN and Inf dropped."""
    out: dict[str, float] = {}
    for sample in result:
        key = sample.get("metric", {}).get(label)
        v = _value(sample)
        if key is not None and v is not None:
            out[str(key)] = v
    return out


class PrometheusSignalSource:
    """Signals from Prometheus' HTTP API through ``prometheus-api-client``."""

    def __init__(
        self,
        url: str,
        *,
        stale_after_s: float = 120.0,
        rate_window: str = "1m",
        query: QueryFn | None = None,
        query_range: RangeQueryFn | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.rate_window = rate_window
        self._query_range = query_range
        if query is None or query_range is None:
            from prometheus_api_client import PrometheusConnect
            from urllib3.util.retry import Retry

            # One quick retry: the next interval is the real retry, and a long backoff
            # would delay the decisions of every model behind one slow query.
            prom = PrometheusConnect(
                url=url,
                disable_ssl=True,
                timeout=int(max(1, timeout_s)),
                retry=Retry(total=1, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
            )

            def _query(q: str) -> list[dict[str, Any]]:
                result: list[dict[str, Any]] = prom.custom_query(query=q)
                return result

            def _query_range(q: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
                result: list[dict[str, Any]] = prom.custom_query_range(
                    query=q,
                    start_time=datetime.fromtimestamp(start, UTC),
                    end_time=datetime.fromtimestamp(end, UTC),
                    step=f"{max(1, round(step))}s",
                )
                return result

            query = query or _query
            self._query_range = query_range or _query_range
        self._query = query

    def _q(self, q: str, label: str) -> dict[str, float]:
        return by_label(self._query(q), label)

    def model_signals(self, models: Sequence[ModelRef], now: float) -> dict[str, ModelSignals]:
        w = self.rate_window
        try:
            running = self._q(queries.running(), queries.MODEL_LABEL)
            waiting = self._q(queries.waiting(), queries.MODEL_LABEL)
            seen = self._q(queries.last_sample_time(), queries.MODEL_LABEL)
            kv = self._q(queries.kv_cache_usage(), queries.MODEL_LABEL)
            rps = self._q(queries.request_rate(w), queries.MODEL_LABEL)
            ptok = self._q(queries.prompt_tokens_rate(w), queries.MODEL_LABEL)
            gtok = self._q(queries.generation_tokens_rate(w), queries.MODEL_LABEL)
            ttft = self._q(queries.ttft_p95(w), queries.MODEL_LABEL)
            serve = self._q(queries.serve_ongoing(), queries.APPLICATION_LABEL)
            gpu = self._gpu_by_class()
        except Exception as exc:  # any transport or API error means "no signals"
            log.warning("prometheus query failed: %s", exc)
            return {m.name: unavailable(now, f"Prometheus query failed: {exc}") for m in models}
        try:  # the measured attainment only relaxes the SLO margin: without it, none
            slos = {m.served_name: m.ttft_slo_s for m in models if m.ttft_slo_s}
            late = ttft_over_slo(self._query(queries.ttft_buckets(w)), queries.MODEL_LABEL, slos)
        except Exception as exc:
            log.warning("prometheus query for the TTFT histogram failed: %s", exc)
            late = {}
        try:  # the cache's size only refines the SLO model: without it, no KV limit
            kv_size = kv_cache_tokens(self._query(queries.kv_cache_config()))
        except Exception as exc:
            log.warning("prometheus query for the KV cache's size failed: %s", exc)
            kv_size = {}
        out: dict[str, ModelSignals] = {}
        for m in models:
            key = m.served_name
            if key not in running or key not in waiting:
                out[m.name] = unavailable(now, f"no vLLM series for model_name={key}")
                continue
            age = now - seen.get(key, now)
            if age > self.stale_after_s:
                out[m.name] = unavailable(now, f"vLLM series for {key} are {age:.0f}s old")
                continue
            out[m.name] = ModelSignals(
                observed_at=now,
                running=running[key],
                waiting=waiting[key],
                kv_cache_usage=kv.get(key),
                kv_cache_tokens=kv_size.get(key),
                request_rate=rps.get(key),
                prompt_tokens_per_s=ptok.get(key),
                generation_tokens_per_s=gtok.get(key),
                ttft_p95_s=ttft.get(key),
                first_tokens_per_s=late[key][0] if key in late else None,
                late_first_tokens_per_s=late[key][1] if key in late else None,
                serve_ongoing=serve.get(f"model-{m.name}"),
                gpu_utilization=gpu.get((m.namespace, m.pool or "", m.accelerator or "")),
            )
        return out

    def rate_history(
        self, models: Sequence[ModelRef], start: float, end: float, step_s: float
    ) -> dict[str, list[tuple[float, float]]]:
        """Each model's finished requests per second over every ``step_s`` from
        ``start`` to ``end`` (one range query for all models)."""
        assert self._query_range is not None
        window = f"{max(1, round(step_s))}s"
        result = self._query_range(queries.request_rate(window), start, end, step_s)
        series = by_label_range(result, queries.MODEL_LABEL)
        return {m.name: series[m.served_name] for m in models if m.served_name in series}

    def _gpu_by_class(self) -> dict[tuple[str, str, str], float]:
        out: dict[tuple[str, str, str], float] = {}
        for s in self._query(queries.gpu_utilization_by_class()):
            labels = s.get("metric", {})
            v = _value(s)
            if v is not None:
                key = (
                    str(labels.get("namespace", "")),
                    str(labels.get(queries.POOL_LABEL, "")),
                    str(labels.get(queries.GROUP_LABEL, "")),
                )
                out[key] = v / 100.0
        return out

    def pool_signals(self, namespace: str, pool: str, now: float) -> PoolSignals:
        try:
            used = self._query(queries.gpus_in_use_by_class())
            util = self._gpu_by_class()
        except Exception as exc:
            log.warning("prometheus query failed: %s", exc)
            return PoolSignals(available=False, detail=f"Prometheus query failed: {exc}")
        gpus: dict[str, float] = {}
        for s in used:
            labels = s.get("metric", {})
            v = _value(s)
            if (
                v is not None
                and labels.get("namespace") == namespace
                and labels.get(queries.POOL_LABEL) == pool
            ):
                gpus[str(labels.get(queries.GROUP_LABEL, ""))] = v
        return PoolSignals(
            gpus_in_use=gpus,
            gpu_utilization={
                g: u for (ns, p, g), u in util.items() if ns == namespace and p == pool
            },
        )

    def spend_usd_per_hour(self, now: float) -> dict[SpendKey, float] | None:
        try:
            result = self._query(queries.spend_usd_per_hour(self.rate_window))
        except Exception as exc:
            log.warning("prometheus query failed: %s", exc)
            return None
        out: dict[SpendKey, float] = {}
        for sample in result:
            labels = sample.get("metric", {})
            endpoint = labels.get(queries.ENDPOINT_LABEL)
            v = _value(sample)
            if endpoint is not None and v is not None:
                key = (str(labels.get("namespace", "")), str(endpoint))
                out[key] = out.get(key, 0.0) + v
        return out or None


class StaticSignalSource:
    """Signals set by the caller (tests, dry runs) or read from a JSON file on every call.

    The file maps ModelDeployment names to :class:`ModelSignals` fields, for example
    ``{"models": {"llama-8b": {"running": 3, "waiting": 40}}}``. A model the file does not
    name is reported unavailable.
    """

    def __init__(
        self, signals: Mapping[str, ModelSignals] | None = None, path: str | None = None
    ) -> None:
        self.signals: dict[str, ModelSignals] = dict(signals or {})
        self.path = Path(path) if path else None
        self.pools: dict[tuple[str, str], PoolSignals] = {}
        self.spend: dict[SpendKey, float] | None = None

    def _load(self, now: float) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read signals file %s: %s", self.path, exc)
            self.signals = {}
            return
        self.signals = {
            name: ModelSignals(observed_at=now, **fields)
            for name, fields in data.get("models", {}).items()
        }
        # "namespace/endpoint" (or a bare endpoint: any namespace) -> USD per hour
        raw = data.get("spendUSDPerHour")
        self.spend = (
            {_spend_key(str(k)): float(v) for k, v in raw.items()} if raw is not None else None
        )

    def model_signals(self, models: Sequence[ModelRef], now: float) -> dict[str, ModelSignals]:
        self._load(now)
        out: dict[str, ModelSignals] = {}
        for m in models:
            s = self.signals.get(m.name)
            out[m.name] = (
                replace(s, observed_at=now)
                if s is not None
                else unavailable(now, f"no injected signals for {m.name}")
            )
        return out

    def pool_signals(self, namespace: str, pool: str, now: float) -> PoolSignals:
        unknown = PoolSignals(available=False, detail=f"no injected signals for {pool}")
        return self.pools.get((namespace, pool), unknown)

    def spend_usd_per_hour(self, now: float) -> dict[SpendKey, float] | None:
        self._load(now)
        return dict(self.spend) if self.spend is not None else None


def _spend_key(raw: str) -> SpendKey:
    ns, sep, endpoint = raw.partition("/")
    return (ns, endpoint) if sep else ("", raw)
