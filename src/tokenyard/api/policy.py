"""The RoutingPolicy resource: a virtual model endpoint and how its requests are routed."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, model_validator

from tokenyard.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    TARGET_NAME,
    ApiModel,
    Condition,
    DataClass,
    ModelName,
    SecretKeyRef,
    cel,
    list_map,
    require,
    require_unique,
)

Strategy = Literal["CheapestSufficient", "Weighted", "Ordered"]
FailureKind = Literal["Error", "Timeout", "Unavailable", "Overloaded", "RateLimited", "Budget"]
DetectorName = Literal["email", "payment-card", "iban", "national-id", "private-key"]
DEFAULT_FALLBACK_ON: tuple[FailureKind, ...] = ("Error", "Timeout", "Unavailable", "Overloaded")
DEFAULT_DETECTORS: tuple[DetectorName, ...] = (
    "email",
    "payment-card",
    "iban",
    "national-id",
    "private-key",
)
WINDOW = r"^[1-9][0-9]*(m|h|d)$"
HEADER_NAME = r"^[A-Za-z0-9-]+$"
CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"
DEFAULT_KEEP_STRONG_QUALITY = 0.95

# CEL rules the API server enforces; the model validators below raise the same messages
# so `tokenyard render` rejects offline what `kubectl apply` would reject.
RULE_RANGE_MIN_MAX = (
    "!has(self.min) || !has(self.max) || self.min <= self.max",
    "min must be <= max",
)
RULE_RULE_TARGETS_KNOWN = (
    "self.rules.all(r, r.targets.all(t, self.targets.exists(x, x.model == t)))",
    "every rules[].targets entry must name a model in spec.targets",
)
RULE_LEARNED_NEEDS_ARTIFACT = (
    "self.type != 'Learned' || has(self.artifactRef)",
    "classifier type Learned needs artifactRef",
)
RULE_ARTIFACT_ONLY_LEARNED = (
    "self.type == 'Learned' || !has(self.artifactRef)",
    "artifactRef is only used with classifier type Learned",
)
RULE_WEIGHTED_NEEDS_WEIGHT = (
    "self.strategy != 'Weighted' || self.targets.exists(t, has(t.weight) && t.weight > 0)",
    "the Weighted strategy needs at least one target with weight > 0",
)


class Target(ApiModel):
    """A model the endpoint may send requests to."""

    model: str = Field(pattern=TARGET_NAME, max_length=127)
    """model is the name of a ModelDeployment in the same namespace, or MODEL:ADAPTER for
    one of that model's LoRA adapters (spec.inCluster.loraAdapters[].name)."""
    weight: int | None = Field(default=None, ge=0, le=100)
    """weight is the target's share of traffic under the Weighted strategy (relative)."""


class Range(ApiModel):
    """An inclusive range; either bound may be left out."""

    model_config = ApiModel.model_config | {"json_schema_extra": cel(RULE_RANGE_MIN_MAX)}

    min: float | None = None
    """min is the smallest value that matches."""
    max: float | None = None
    """max is the largest value that matches."""

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(self.min is None or self.max is None or self.min <= self.max, RULE_RANGE_MIN_MAX[1])
        return self


class Match(ApiModel):
    """Conditions a request must meet for a rule to apply; all given ones must hold."""

    difficulty: Range | None = None
    """difficulty matches the estimated difficulty, in [0, 1]."""
    promptTokens: Range | None = None
    """promptTokens matches the estimated prompt length in tokens."""
    tenants: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list, max_length=64
    )
    """tenants matches any of these tenants."""
    headers: dict[str, str] = Field(default_factory=dict)
    """headers matches requests carrying every one of these header values (names are
    case-insensitive)."""
    tags: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=32)
    """tags matches requests tagged (X-Tokenyard-Tags header) with any of these tags."""
    dataClasses: list[DataClass] = Field(default_factory=list, max_length=32)
    """dataClasses matches requests carrying any of these data classes."""


class Rule(ApiModel):
    """An explicit routing rule: requests that match go to its targets, in order."""

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """name of the rule, unique in the policy; shown in audit lines and decisions."""
    match: Match = Field(default_factory=Match)
    """match says which requests the rule applies to; empty matches all."""
    targets: list[ModelName] = Field(min_length=1, max_length=16)
    """targets are model names (or MODEL:ADAPTER) from spec.targets, tried in this
    order."""


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """name of the ConfigMap, in the same namespace as the RoutingPolicy."""
    key: str = Field(default="model.json", min_length=1, max_length=253, pattern=CONFIGMAP_KEY)
    """key inside the ConfigMap's data holding the artifact (tokenyard train-router
    --configmap writes it under model.json)."""


class ClassifierSpec(ApiModel):
    """How request difficulty is estimated."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(RULE_LEARNED_NEEDS_ARTIFACT, RULE_ARTIFACT_ONLY_LEARNED)
    }

    type: Literal["Heuristic", "Learned"] = "Heuristic"
    """type of classifier. Heuristic (the default) scores prompt length, conversation depth
    and requested output length. Learned loads a difficulty model trained with tokenyard
    train-router from artifactRef; until it is loaded (or while the ConfigMap is missing
    or invalid) the policy uses the heuristic."""
    artifactRef: ConfigMapKeyRef | None = None
    """artifactRef names the ConfigMap key holding the Learned classifier's artifact;
    required with type Learned. A new artifact in it is delivered to the router on the
    operator's next pass and loaded without restarting replicas."""
    keepStrongQuality: float | None = Field(default=None, gt=0, le=1)
    """keepStrongQuality is the Learned classifier's aim (default 0.95): the share of the
    strongest target's quality to keep. The router sends a request to the strongest target when
    its score reaches the highest threshold of the artifact's quality table that kept at
    least this share on held-out data, and to the cheaper targets otherwise."""
    allowHeaderOverride: bool = False
    """allowHeaderOverride lets a client set the difficulty with the
    X-Tokenyard-Difficulty header (a number in [0, 1])."""
    shadow: ConfigMapKeyRef | None = None
    """shadow names a candidate Learned artifact (a ConfigMap key, like artifactRef) that
    scores live traffic beside the classifier in use without routing anything: the
    router counts how often the decision it would make differs from the live one, the
    share of requests it would send to the strongest target and their estimated cost
    (status.shadow and the router's stats), so a candidate can be judged before anyone
    switches to it. Its threshold comes from keepStrongQuality, as a Learned
    classifier's does; while the artifact is missing or invalid nothing is scored."""

    def quality_aim(self) -> float:
        """keepStrongQuality, or its default."""
        return (
            DEFAULT_KEEP_STRONG_QUALITY
            if self.keepStrongQuality is None
            else self.keepStrongQuality
        )

    @model_validator(mode="after")
    def _cel(self) -> Self:
        require(
            self.type != "Learned" or self.artifactRef is not None, RULE_LEARNED_NEEDS_ARTIFACT[1]
        )
        require(self.type == "Learned" or self.artifactRef is None, RULE_ARTIFACT_ONLY_LEARNED[1])
        return self


class CircuitBreakerSpec(ApiModel):
    """Stops sending to a failing backend for a while."""

    failureThreshold: int = Field(default=5, ge=1, le=1000)
    """failureThreshold consecutive failures open the breaker."""
    cooldownSeconds: float = Field(default=30.0, gt=0, le=3600)
    """cooldownSeconds after which one probe request is let through (half-open)."""


class FallbackSpec(ApiModel):
    """When and how a failed request is retried on the next target."""

    retryOn: list[FailureKind] = Field(
        default_factory=lambda: list(DEFAULT_FALLBACK_ON),
        max_length=6,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """retryOn lists the failures that move a request to the next target: Error, Timeout,
    Unavailable, Overloaded, RateLimited (the backend said 429) and Budget."""
    maxAttempts: int = Field(default=3, ge=1, le=10)
    """maxAttempts counts every target tried, the first included."""
    perAttemptTimeoutSeconds: float = Field(default=60.0, gt=0, le=3600)
    """perAttemptTimeoutSeconds bounds one attempt until its first token."""
    totalTimeoutSeconds: float = Field(default=120.0, gt=0, le=7200)
    """totalTimeoutSeconds bounds the whole request, fallbacks included."""
    circuitBreaker: CircuitBreakerSpec = Field(default_factory=CircuitBreakerSpec)
    """circuitBreaker settings, per backend."""


class SpilloverSpec(ApiModel):
    """Moves a request off an in-cluster model that is expected to answer too late."""

    enabled: bool = True
    """enabled turns spill-over on. The router estimates, per in-cluster model, the time
    to first token a new request would see: the prompt tokens it has sent that model and
    not yet seen start, divided by the model's replicas times its
    spec.inCluster.nominalTokensPerSecond, plus the request's own prefill (each router
    replica takes what it sends for 1 / the router's running replicas of the load).
    When the first target of a request is an in-cluster model whose estimate exceeds
    threshold x its autoscaling.ttftSLOSeconds, the request goes first to the next target
    in the decision's order that is in-cluster, of at least the same quality and expected
    to start it within half its own ttftSLOSeconds (spare capacity only: spill-over must
    not push that model's own traffic toward its SLO); the original target stays next,
    as a fallback. Never to an External target, never to a weaker model; spend is charged
    at the price of the model that served."""
    threshold: float = Field(default=1.0, gt=0, le=10)
    """threshold multiplies the first target's ttftSLOSeconds: spill-over starts when
    that model's expected time to first token exceeds threshold x its SLO (1 spills as
    soon as the SLO would be missed; 2 tolerates twice the SLO)."""
    downgradeWhenCapped: bool = False
    """downgradeWhenCapped lets a request go to a weaker model when its own model cannot
    keep up and cannot grow: the model is Capped (the autoscaler gives it fewer replicas
    than it asks for, for lack of GPUs or budget: its Capped condition), its expected
    time to first token exceeds threshold x its SLO, and no target of at least its
    quality has room. The request then goes first to the strongest weaker in-cluster
    target of the decision expected to start it within half its own ttftSLOSeconds; the
    capped model stays next, as a fallback. Off by default: it trades answer quality
    for latency, and only targets within fallback.maxAttempts are candidates."""


class Budget(ApiModel):
    """A spend limit for a tenant."""

    tenant: str = Field(min_length=1, max_length=253)
    """tenant the budget applies to; * applies to every tenant without its own entry
    (each gets the limit separately)."""
    limitUSD: float = Field(ge=0, le=100_000_000)
    """limitUSD is the most the tenant may spend in one window."""
    window: str = Field(default="24h", pattern=WINDOW)
    """window is the budget period, such as 60m, 24h or 30d (fixed windows from the
    Unix epoch)."""
    onExceeded: Literal["Downgrade", "Reject"] = "Downgrade"
    """onExceeded: Downgrade sends the tenant to the cheapest target only; Reject answers
    429 until the window ends."""


class RateLimit(ApiModel):
    """Request and token rate limits for a tenant."""

    tenant: str = Field(min_length=1, max_length=253)
    """tenant the limit applies to; * applies to every tenant without its own entry."""
    requestsPerMinute: int | None = Field(default=None, ge=1, le=100_000_000)
    """requestsPerMinute allowed for the tenant."""
    tokensPerMinute: int | None = Field(default=None, ge=1, le=10_000_000_000)
    """tokensPerMinute (prompt plus output) allowed for the tenant."""


class TenantSpec(ApiModel):
    """How the router tells tenants apart."""

    header: str = Field(default="X-Tenant", pattern=HEADER_NAME, max_length=128)
    """header that carries the tenant name."""
    apiKeysSecretRef: SecretKeyRef | None = None
    """apiKeysSecretRef names a Secret key whose value maps API keys to tenants, one
    'key: tenant' per line (YAML); a bearer token found there sets the tenant."""
    requireKnownTenant: bool | None = None
    """requireKnownTenant rejects requests (401) with no tenant or an API key not in the
    Secret. Unset: true when apiKeysSecretRef is set (a policy with keys refuses callers
    without a known key), false otherwise; set it false explicitly to let callers without
    a key in as the header's or the default tenant."""

    def require_known(self) -> bool:
        """requireKnownTenant as it applies (its default follows apiKeysSecretRef)."""
        if self.requireKnownTenant is not None:
            return self.requireKnownTenant
        return self.apiKeysSecretRef is not None

    defaultTenant: str = Field(default="default", min_length=1, max_length=253)
    """defaultTenant is used when a request names none (and unknown tenants are allowed)."""


class EgressSpec(ApiModel):
    """Which data may leave the cluster to external targets. Fails closed."""

    allowedExternalDataClasses: list[DataClass] = Field(
        default_factory=lambda: ["public"],
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """allowedExternalDataClasses may be sent to external targets; a request with any
    other class (from the header or a detector) never leaves the cluster."""
    dataClassHeader: str = Field(default="X-Data-Class", pattern=HEADER_NAME, max_length=128)
    """dataClassHeader carries the request's data classes, comma-separated."""
    defaultDataClass: DataClass = "internal"
    """defaultDataClass is assumed for requests that declare none and trip no detector."""
    detectors: list[DetectorName] = Field(
        default_factory=lambda: list(DEFAULT_DETECTORS),
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """detectors scan prompts: email and national-id mark pii, payment-card (Luhn
    checked) and iban mark pci, private-key marks secret."""


class AuditSpec(ApiModel):
    """The per-request audit log."""

    enabled: bool = True
    """enabled writes one JSON line per request to the router's audit stream."""
    includePrompts: bool = False
    """includePrompts adds prompt text to audit lines (off by default)."""


RETENTION = r"^[1-9][0-9]{0,3}(h|d)$"


class CaptureSpec(ApiModel):
    """Keeps a sample of prompts with their routing decision for training the classifier."""

    sampleRate: float = Field(default=0.1, gt=0, le=1)
    """sampleRate is the share of answered requests whose prompt and routing decision are
    kept (0.1: one in ten), drawn at random per request."""
    retention: str = Field(default="7d", pattern=RETENTION)
    """retention is how long captured prompts are kept, such as 48h or 30d (at most
    9999h or 9999d): older records are deleted from the pool's state volume."""
    dataClasses: list[DataClass] | None = Field(
        default=None, max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """dataClasses are the data classes a request may carry and still be captured: a
    request with any other class (declared in the data-class header or found by a
    detector), or one that could not be scanned, is never captured. Unset: the classes
    spec.egress.allowedExternalDataClasses lets leave the cluster (public by default),
    so data the policy keeps in the cluster is not kept for training either."""

    def capturable(self, egress: EgressSpec) -> frozenset[str]:
        """dataClasses, or its default."""
        if self.dataClasses is not None:
            return frozenset(self.dataClasses)
        return frozenset(egress.allowedExternalDataClasses)


class ExplorationSpec(ApiModel):
    """Sends a small share of requests to another allowed target than the chosen one."""

    share: float = Field(default=0.05, gt=0, le=0.5)
    """share of requests (at most 0.5) sent first to another target than the one the policy
    chose, drawn uniformly among the other targets the decision already allows (egress,
    context, budget, availability and fallback.maxAttempts are applied first); the chosen
    target stays next, as a fallback. The probability of the target that served is recorded
    in the audit line and the capture record, so training can correct for it. Never for
    a request whose budget forced a downgrade or that spill-over moved."""


class LearningSpec(ApiModel):
    """How the endpoint learns from its own traffic (feedback is always accepted)."""

    capture: CaptureSpec | None = None
    """capture keeps a sample of prompts with their routing decision, only in the pool's
    own state volume, for tokenyard train-router --from-state. Unset: no prompt is
    kept."""
    exploration: ExplorationSpec | None = None
    """exploration sends a small share of requests to another allowed target, so feedback
    tells what each target would have done. Unset: never."""


class RoutingPolicySpec(ApiModel):
    """RoutingPolicySpec describes a virtual model and how its requests are routed."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel(RULE_RULE_TARGETS_KNOWN, RULE_WEIGHTED_NEEDS_WEIGHT)
    }

    pool: str = Field(pattern=DNS_LABEL, max_length=63)
    """pool is the ServingPool whose router serves this endpoint."""
    endpoint: str | None = Field(default=None, min_length=1, max_length=256)
    """endpoint is the virtual model name clients send as model; defaults to
    metadata.name."""
    targets: list[Target] = Field(min_length=1, max_length=32, json_schema_extra=list_map("model"))
    """targets are the ModelDeployments this endpoint may use."""
    strategy: Strategy = "CheapestSufficient"
    """strategy when no rule matches: CheapestSufficient (cheapest target whose quality
    covers the estimated difficulty), Weighted (split by weight, for canaries) or
    Ordered (targets in the order listed)."""
    rules: list[Rule] = Field(
        default_factory=list, max_length=32, json_schema_extra=list_map("name")
    )
    """rules are tried in order before the strategy; the first match decides the
    targets."""
    classifier: ClassifierSpec = Field(default_factory=ClassifierSpec)
    """classifier estimates request difficulty."""
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)
    """fallback says which failures try the next target."""
    spillover: SpilloverSpec = Field(default_factory=SpilloverSpec)
    """spillover sends a request to a better in-cluster target with room when its first
    target is expected to miss its time-to-first-token SLO (and, with
    downgradeWhenCapped, to a weaker one when that target is capped)."""
    tenants: TenantSpec = Field(default_factory=TenantSpec)
    """tenants says how requests are attributed to tenants."""
    budgets: list[Budget] = Field(
        default_factory=list, max_length=256, json_schema_extra=list_map("tenant")
    )
    """budgets cap each tenant's spend per window."""
    rateLimits: list[RateLimit] = Field(
        default_factory=list, max_length=256, json_schema_extra=list_map("tenant")
    )
    """rateLimits cap each tenant's requests and tokens per minute, for the pool as a
    whole: each router replica enforces 1 / the router's running replicas of them (Ray
    Serve's count, read every 2 s; spec.router.minReplicas until it is known)."""
    egress: EgressSpec = Field(default_factory=EgressSpec)
    """egress says which data classes may reach external targets."""
    audit: AuditSpec = Field(default_factory=AuditSpec)
    """audit configures the per-request audit log."""
    learning: LearningSpec | None = None
    """learning configures prompt capture and exploration for training the classifier
    from this endpoint's own traffic and feedback (POST /v1/tokenyard/feedback, always
    accepted). Unset: neither."""

    @property
    def capture(self) -> CaptureSpec | None:
        """spec.learning.capture, if set."""
        return self.learning.capture if self.learning is not None else None

    @property
    def exploration(self) -> ExplorationSpec | None:
        """spec.learning.exploration, if set."""
        return self.learning.exploration if self.learning is not None else None

    @model_validator(mode="after")
    def _cel(self) -> Self:
        known = {t.model for t in self.targets}
        require(all(t in known for r in self.rules for t in r.targets), RULE_RULE_TARGETS_KNOWN[1])
        require(
            self.strategy != "Weighted"
            or any(t.weight is not None and t.weight > 0 for t in self.targets),
            RULE_WEIGHTED_NEEDS_WEIGHT[1],
        )
        # List-map keys and set items the API server rejects as "Duplicate value".
        require_unique((t.model for t in self.targets), "targets[].model")
        require_unique((r.name for r in self.rules), "rules[].name")
        require_unique((b.tenant for b in self.budgets), "budgets[].tenant")
        require_unique((r.tenant for r in self.rateLimits), "rateLimits[].tenant")
        require_unique(self.fallback.retryOn, "fallback.retryOn")
        require_unique(self.egress.allowedExternalDataClasses, "egress.allowedExternalDataClasses")
        require_unique(self.egress.detectors, "egress.detectors")
        return self


class TargetStatus(ApiModel):
    """The observed state of one target."""

    model: str
    """model is the ModelDeployment name."""
    ready: bool = False
    """ready is true when the model serves requests."""
    location: str | None = None
    """location is the Ray Serve application (in-cluster) or provider URL (external)."""
    external: bool = False
    """external is true for provider-hosted models."""
    quality: float | None = None
    """quality score of the model."""
    costPer1MTokens: float | None = None
    """costPer1MTokens is the model's effective blended price."""
    trafficShare: float | None = None
    """trafficShare is the fraction of recent requests sent here."""
    requests: int | None = None
    """requests sent to this target since the router started."""
    message: str | None = None
    """message explains why the target is not ready."""


class ClassifierStatus(ApiModel):
    """The classifier the router uses for this policy."""

    type: Literal["Heuristic", "Learned"] = "Heuristic"
    """type of the classifier in use: Heuristic while a Learned one is not loadable."""
    version: str | None = None
    """version of the Learned artifact in use (a hash of its content)."""
    threshold: float | None = None
    """threshold: Learned scores at or above it go to the strongest target."""
    expectedStrongShare: float | None = None
    """expectedStrongShare is the share of requests the artifact's quality table expects
    at the threshold (on its held-out training data)."""


class ShadowStatus(ApiModel):
    """How a candidate classifier (spec.classifier.shadow) would have routed live traffic,
    as one router replica counted it since it loaded the candidate."""

    version: str | None = None
    """version of the candidate artifact being scored."""
    requests: int | None = None
    """requests the candidate scored."""
    disagreement: float | None = None
    """disagreement is the share of those requests whose first target would differ."""
    strongShare: float | None = None
    """strongShare is the share the candidate would send to the strongest target."""
    liveStrongShare: float | None = None
    """liveStrongShare is the share the classifier in use sent to the strongest target."""
    estimatedCostUSDPer1K: float | None = None
    """estimatedCostUSDPer1K is the candidate's estimated spend per 1,000 requests (each
    priced at its first target from the prompt estimate and max_tokens)."""
    liveEstimatedCostUSDPer1K: float | None = None
    """liveEstimatedCostUSDPer1K is the same estimate for the classifier in use."""


class RoutingPolicyStatus(ApiModel):
    """RoutingPolicyStatus is the observed state of the endpoint."""

    observedGeneration: int | None = None
    """observedGeneration is the spec generation this status reflects."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    """conditions: Ready says whether at least one target serves; ClassifierReady (with
    spec.classifier type Learned) whether the learned classifier is delivered."""
    endpoint: str | None = None
    """endpoint is the model name clients use."""
    targets: list[TargetStatus] = Field(default_factory=list)
    """targets shows each target's readiness, location, price and traffic."""
    readyTargets: str | None = None
    """readyTargets summarises ready/total targets."""
    classifier: ClassifierStatus | None = None
    """classifier is the difficulty classifier delivered to the router; the
    ClassifierReady condition says why a Learned one is not in use."""
    shadow: ShadowStatus | None = None
    """shadow compares the candidate classifier of spec.classifier.shadow with the one in
    use on live traffic (from the router's stats)."""
    requests: int | None = None
    """requests served by the endpoint."""
    fallbacks: int | None = None
    """fallbacks taken by the endpoint."""
    spendUSD: float | None = None
    """spendUSD is the endpoint's spend in the current budget window."""
    spendUSDPerHour: float | None = None
    """spendUSDPerHour is the endpoint's spend rate now, from the router's
    tokenyard_cost_usd_total in Prometheus over the autoscaler's rate window. Written by
    the autoscaler; unset until the router reports spend."""


class RoutingPolicy(ApiModel):
    """RoutingPolicy is a virtual model endpoint that routes each request to the cheapest
    model good enough for it, with fallback, budgets, rate limits, egress rules and audit."""

    KIND: ClassVar[str] = "RoutingPolicy"
    PLURAL: ClassVar[str] = "routingpolicies"
    SHORT_NAMES: ClassVar[list[str]] = ["rp"]

    apiVersion: str = "tokenyard.dev/v1alpha1"
    kind: str = "RoutingPolicy"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None
