"""tokenyard's one typed settings object, read from TOKENYARD_* environment variables.

Validated once at process start (operator, autoscaler, router, CLI) and passed down;
the helm chart's values map onto these variables. Nested fields use ``__``, for example
``TOKENYARD_OPERATOR__NAMESPACES=team-a,team-b``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseModel):
    """Settings of the kopf operator (`tokenyard operator`)."""

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch; empty watches the whole cluster."""
    default_ray_image: str = "ghcr.io/tokenyard/tokenyard-ray:0.1.0"
    """Ray image for pools that set no spec.image (Dockerfile.ray: Ray LLM + tokenyard)."""
    tokenyard_image: str = "ghcr.io/tokenyard/tokenyard:0.1.0"
    """Image of the operator/autoscaler themselves."""
    # kopf's watch requests otherwise hang for ever on some API servers and load
    # balancers that drop idle connections silently (kopf issues #585, #847):
    # a server-side timeout makes the watch restart, a client-side one catches the rest.
    watch_server_timeout_s: int = Field(default=300, ge=10)
    watch_client_timeout_s: int = Field(default=330, ge=10)
    # How often level-based timers re-render pools and re-read RayService status.
    resync_interval_s: float = Field(default=30.0, gt=0)
    # Waiting on an external object (RayService CRD, Secret): retry after this long.
    retry_delay_s: float = Field(default=15.0, gt=0)
    # Routers answer their stats from memory; a slow answer means an unhealthy router,
    # and waiting longer would only delay status for the pool's other objects.
    router_stats_timeout_s: float = Field(default=2.0, gt=0)
    admin_token: SecretStr | None = Field(default=None, min_length=16)
    """Bearer token of the routers' ``/metrics`` and ``/v1/tokenyard/stats``
    (``TOKENYARD_OPERATOR__ADMIN_TOKEN``, from the chart's Secret). Its SHA-256, never the
    token, is rendered into every pool's router; the operator sends the token when it
    reads the stats. None: those endpoints answer anyone on the router's port."""
    health_port: int = Field(default=8080, ge=1, le=65535)
    """Port of the liveness/readiness endpoint."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of ``/metrics`` (tokenyard_operator_*); 0 serves none (the chart sets it)."""
    peering: str | None = None
    """kopf peering object name; None runs standalone (one replica)."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        # Comma-separated (NoDecode keeps pydantic-settings from json-decoding it first).
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("admin_token", mode="before")
    @classmethod
    def _strip_token(cls, v: object) -> object:
        # A Secret made with `kubectl create secret --from-file` often ends in a newline;
        # Prometheus trims its credentials file and the router the header, so must we.
        if isinstance(v, str):
            return v.strip() or None
        return v


class AutoscalerSettings(BaseModel):
    """Settings of the autoscaler (`tokenyard autoscaler`)."""

    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    """Prometheus base URL."""
    interval_s: float = Field(default=15.0, gt=0)
    """Seconds between decisions."""
    stale_after_s: float = Field(default=120.0, gt=0)
    """A series older than this counts as missing."""
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to manage; empty manages all."""
    lease_name: str = "tokenyard-autoscaler"
    """Lease used for leader election so two replicas never act at once."""
    lease_namespace: str = "tokenyard-system"
    lease_duration_s: float = Field(default=30.0, gt=0)
    health_port: int = Field(default=8081, ge=0, le=65535)
    """Port of ``GET /healthz`` (0: no endpoint): 200 while the loop passes at least every
    three intervals, 503 when it is stuck."""
    forecast_min_days: float = Field(default=2.0, ge=0)
    """Days of request-rate history in Prometheus a model needs before its daily profile
    is forecast and replicas are started one cold start ahead of a ramp (0: no
    forecast). With less, the model is sized on what it measures."""
    forecast_history_days: float = Field(default=14.0, gt=0)
    """Days of history the forecast is fitted on (Prometheus' retention may cut it)."""
    forecast_refit_s: float = Field(default=3600.0, gt=0)
    """Seconds between refits of the forecast from Prometheus history."""
    forecast_ready_share: float = Field(default=0.95, gt=0, lt=1)
    """Share of the scale-ups before a daily ramp meant to be ready before their load:
    replicas are pre-warmed for this quantile of how far the rate rose above its
    forecast (higher pre-warms more replicas, earlier)."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        # Comma-separated (NoDecode keeps pydantic-settings from json-decoding it first).
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v


class RouterSettings(BaseModel):
    """Settings of the router inside Ray Serve and of `tokenyard up`."""

    state_dir: str = "~/.local/state/tokenyard"
    """Where local mode keeps the spend ledger and audit log."""
    ledger_flush_interval_s: float = Field(default=5.0, gt=0)
    """How often spend is persisted: a crash loses at most this much accounting."""
    log_prompts: bool = False
    """Never log prompt text unless a policy's audit asks for it."""


class Settings(BaseSettings):
    """Every setting of tokenyard; one object, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENYARD_", env_nested_delimiter="__", extra="ignore"
    )

    log_level: str = "INFO"
    log_format: str = "json"
    """json (one object per line) or text."""
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)


def load_settings() -> Settings:
    """Read and validate the settings from the environment (raises on invalid input)."""
    return Settings()
