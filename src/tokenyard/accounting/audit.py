"""The per-request audit log: one JSON line per request from the router.

Lines go to the ``tokenyard.audit`` logger (stdout, so any log collector ships them)
and, when the router app names ``auditPath``, are appended to that file too. Prompt
text appears only when the request's policy sets ``audit.includePrompts``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

AUDIT_LOGGER = "tokenyard.audit"


class _StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is now (Ray and test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            # One line per request must reach the collector even if the replica dies.
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


@dataclass
class AuditRecord:
    """What one audit line says about a request."""

    time: float
    request_id: str
    tenant: str
    endpoint: str
    kind: str
    status: int
    latency_ms: float
    target: str | None = None
    reason: str | None = None
    rule: str | None = None
    strategy: str | None = None
    difficulty: float | None = None
    data_classes: list[str] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    baseline_target: str | None = None
    """The endpoint's strongest target, on which ``baseline_cost_usd`` is priced."""
    baseline_cost_usd: float = 0.0
    """What the same tokens would have cost on ``baseline_target``."""
    stream: bool = False
    error: str | None = None
    downgraded: bool = False
    spilled_from: str | None = None
    """The target the policy chose first when spill-over sent the request elsewhere."""
    capacity_downgrade: bool = False
    """True when that elsewhere was a weaker model (spillover.downgradeWhenCapped)."""
    classifier: str | None = None
    """The classifier that scored the request: ``heuristic`` or a Learned artifact's
    version."""
    chosen_target: str | None = None
    """The target the policy put first, before exploration (spec.learning.exploration)."""
    explored: bool = False
    """True when exploration sent the request first to another allowed target."""
    propensity: float | None = None
    """Probability that ``target`` was put first (1 without exploration); None when a
    fallback served."""
    prompt: str | None = None

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        d["time"] = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        if d["prompt"] is None:
            del d["prompt"]
        return json.dumps(d, separators=(",", ":"), sort_keys=False)


class AuditLog:
    """Writes audit lines; one instance per router replica."""

    def __init__(self, path: str | None = None) -> None:
        self._logger = logging.getLogger(AUDIT_LOGGER)
        if not any(getattr(h, "_tokenyard_audit", False) for h in self._logger.handlers):
            handler = _StdoutHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler._tokenyard_audit = True  # type: ignore[attr-defined]
            self._logger.addHandler(handler)
        self._logger.setLevel(logging.INFO)
        # Audit lines must not be re-emitted (and re-formatted) by Ray's root handlers.
        self._logger.propagate = False
        self._path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Kept open, line-buffered: one write per request, no reopen.
            self._file = self._path.open("a", encoding="utf-8", buffering=1)

    @property
    def path(self) -> Path | None:
        return self._path

    def write(self, record: AuditRecord) -> str:
        line = record.to_json()
        self._logger.info(line)
        if self._file is not None:
            with self._lock:
                self._file.write(line + "\n")
        return line

    def close(self) -> None:
        if self._file is not None:
            with self._lock:
                self._file.close()
                self._file = None
