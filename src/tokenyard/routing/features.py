"""What the routing decision reads of a request: difficulty, data classes, tags.

:func:`extract_features` turns a :class:`~tokenyard.routing.request.ParsedRequest` and its
tenant into :class:`RequestFeatures`, everything
:func:`tokenyard.routing.policy_engine.decide` looks at: the difficulty from a classifier
(:mod:`tokenyard.routing.classifiers`) or the client's header, the data classes declared
in the policy's header plus those the detectors (:mod:`tokenyard.routing.detectors`)
find, and the request's tags. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenyard.api.common import DATA_CLASS
from tokenyard.api.policy import DetectorName, RoutingPolicySpec
from tokenyard.routing.classifiers import (
    DifficultyClassifier,
    HeuristicClassifier,
    difficulty_from_header,
)
from tokenyard.routing.egress import scan_body
from tokenyard.routing.errors import bad_request
from tokenyard.routing.request import ParsedRequest

TAGS_HEADER = "X-Tokenyard-Tags"

_DATA_CLASS_RE = re.compile(DATA_CLASS)
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,62}$")

Detector = Callable[[str, Iterable[DetectorName]], dict[str, list[str]]]


@dataclass(frozen=True)
class RequestFeatures:
    """Everything the policy engine decides on; ``prompt_text`` is for detectors/audit only."""

    endpoint: str
    tenant: str
    prompt_tokens: int
    max_tokens: int | None
    messages: int
    difficulty: float
    difficulty_source: str
    """"classifier" or "header"."""
    data_classes: frozenset[str]
    tags: frozenset[str]
    headers: Mapping[str, str]
    stream: bool
    prompt_text: str = field(repr=False)
    detected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Detectors that fired, by data class (names only, never the matched text)."""
    declared_classes: frozenset[str] = frozenset()
    """Data classes the client declared in the data-class header."""
    unscannable: tuple[str, ...] = ()
    """Why part of the request could not be scanned (token ids, a scan error): the policy
    engine keeps such a request off External targets."""


def _split_header(value: str | None) -> list[str]:
    if not value:
        return []
    return [x.strip() for x in value.split(",") if x.strip()]


def declared_data_classes(headers: Mapping[str, str], header: str) -> frozenset[str]:
    """Data classes named in the policy's data-class header; a malformed name is a 400."""
    out: set[str] = set()
    for raw in _split_header(headers.get(header.lower())):
        name = raw.lower()
        if not _DATA_CLASS_RE.match(name):
            raise bad_request(f"{header}: {raw[:64]!r} is not a valid data class name", header)
        out.add(name)
    return frozenset(out)


def request_tags(headers: Mapping[str, str]) -> frozenset[str]:
    """Tags from X-Tokenyard-Tags (comma-separated); a malformed tag is a 400."""
    out: set[str] = set()
    for raw in _split_header(headers.get(TAGS_HEADER.lower())):
        if not _TAG_RE.match(raw):
            raise bad_request(f"{TAGS_HEADER}: {raw[:64]!r} is not a valid tag", TAGS_HEADER)
        out.add(raw)
    return frozenset(out)


def extract_features(
    parsed: ParsedRequest,
    policy: RoutingPolicySpec | Any,
    endpoint: str,
    tenant: str,
    *,
    classifier: DifficultyClassifier | None = None,
    detectors: Detector | Iterable[DetectorName] | None = None,
) -> RequestFeatures:
    """The routing features of one request under one policy (a spec or a PolicyEntry).

    Difficulty: the X-Tokenyard-Difficulty header when the policy allows it, else the
    classifier (default :class:`HeuristicClassifier`). Data classes: those declared in
    the policy's header plus those the detectors find in every string of the body the
    router would forward (:func:`~tokenyard.routing.egress.scan_body`); the policy's
    default class only when both are empty. ``detectors`` is a detect function run on
    the prompt text alone with the policy's enabled detectors, or a list of detector
    names to run instead of the policy's.
    """
    policy = spec_of(policy)
    enabled: Iterable[DetectorName] = policy.egress.detectors
    run: Detector | None = None
    if callable(detectors):
        run = detectors
    elif detectors is not None:
        enabled = list(detectors)
    headers = parsed.headers
    override = difficulty_from_header(headers, policy.classifier.allowHeaderOverride)
    if override is not None:
        difficulty, source = override, "header"
    else:
        scorer = classifier if classifier is not None else HeuristicClassifier()
        difficulty, source = min(1.0, max(0.0, float(scorer.score(parsed)))), "classifier"
    declared = declared_data_classes(headers, policy.egress.dataClassHeader)
    unscannable: tuple[str, ...] = ()
    if run is not None:
        found = run(parsed.prompt_text, enabled) if parsed.prompt_text else {}
    else:
        scan = scan_body(parsed.body, enabled)
        found = {k: list(v) for k, v in scan.found.items()}
        unscannable = scan.unscannable
    classes = set(declared) | set(found)
    if not classes:
        classes.add(policy.egress.defaultDataClass)
    return RequestFeatures(
        endpoint=endpoint,
        tenant=tenant,
        prompt_tokens=parsed.prompt_tokens,
        max_tokens=parsed.max_tokens,
        messages=parsed.messages,
        difficulty=difficulty,
        difficulty_source=source,
        data_classes=frozenset(classes),
        tags=request_tags(headers),
        headers=headers,
        stream=parsed.stream,
        prompt_text=parsed.prompt_text,
        detected={k: tuple(v) for k, v in sorted(found.items())},
        declared_classes=declared,
        unscannable=unscannable,
    )


def spec_of(policy: Any) -> RoutingPolicySpec:
    """The RoutingPolicySpec of a spec, a PolicyEntry or a RoutingPolicy."""
    if isinstance(policy, RoutingPolicySpec):
        return policy
    if hasattr(policy, "policy_spec"):
        spec = policy.policy_spec()
        assert isinstance(spec, RoutingPolicySpec)
        return spec
    inner = getattr(policy, "spec", None)
    if isinstance(inner, RoutingPolicySpec):
        return inner
    raise TypeError(f"not a routing policy: {type(policy).__name__}")


__all__ = [
    "TAGS_HEADER",
    "Detector",
    "RequestFeatures",
    "declared_data_classes",
    "extract_features",
    "request_tags",
    "spec_of",
]
