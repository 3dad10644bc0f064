"""What the router keeps to learn from its own traffic: decisions, feedback and captures.

One :class:`LearningStore` per router replica, on the pool's state volume beside the
ledger (file layout in :mod:`tokenyard.routing.learned.state_files`). Every replica
appends to the same files under an exclusive ``flock`` (one line per write), so feedback
reaching any replica finds a decision made by another, and everything survives a
restart. Journals are bounded (rotated to one older part past ``max_bytes``); capture
files are hourly and deleted once past the policy's retention.

:class:`~tokenyard.accounting.books.Books` notes each answered request
(:meth:`LearningStore.note_decision`) and its capture; the feedback endpoint looks a
request up (:meth:`LearningStore.find`) and appends the rating
(:meth:`LearningStore.add_feedback`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenyard.routing.learned.state_files import (
    CAPTURE_DIR,
    DECISIONS_FILE,
    FEEDBACK_FILE,
    ROTATED_SUFFIX,
    endpoint_dir,
)

logger = logging.getLogger("tokenyard.router")

DEFAULT_MAX_BYTES = 32 << 20
"""Each journal's bound before it is rotated (one rotated part kept: twice this at most)."""
DEFAULT_MAX_INDEX = 200_000
"""Decisions kept in memory per replica for feedback lookups (about 300 bytes each)."""
PURGE_INTERVAL_S = 60.0
RETENTION_FILE = "retention"
RETENTION_UNKNOWN_S = 7 * 86400.0
"""Retention of a capture folder that remembers none (the API's default, 7d)."""
MAX_RATINGS_PER_REQUEST = 3
"""Ratings one replica takes for one request: a tenant can add to the feedback journal
only in proportion to the requests it made (which its rate limits bound)."""
HOUR_S = 3600


@dataclass
class DecisionNote:
    """What feedback on a request is joined with: who sent it and how it was routed."""

    request_id: str
    time: float
    tenant: str
    endpoint: str
    target: str
    chosen: str | None = None
    """The target the policy put first, before exploration."""
    explored: bool = False
    propensity: float | None = None
    """Probability that ``target`` was put first; None when a fallback served."""
    difficulty: float | None = None
    classifier: str = "heuristic"
    """The classifier that scored it: ``heuristic`` or the Learned artifact's version."""

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy costs more than the rest of the note.
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionNote | None:
        try:
            return cls(
                request_id=str(d["request_id"]),
                time=float(d["time"]),
                tenant=str(d["tenant"]),
                endpoint=str(d["endpoint"]),
                target=str(d["target"]),
                chosen=d.get("chosen"),
                explored=bool(d.get("explored", False)),
                propensity=d.get("propensity"),
                difficulty=d.get("difficulty"),
                classifier=str(d.get("classifier", "heuristic")),
            )
        except (KeyError, TypeError, ValueError):
            return None


class _Journal:
    """An append-only JSON-lines file shared by replicas, rotated past ``max_bytes``.

    The file stays open between writes; each write takes the file lock, reopens the
    file if another replica rotated it meanwhile, rotates it if the line would not fit,
    and appends the line in one ``write``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is not None:
            os.close(self._fd)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def _current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def append(self, obj: dict[str, Any]) -> None:
        self.append_lines([_line(obj)])

    def append_lines(self, lines: list[bytes]) -> None:
        """Append ``lines`` in one ``write`` under one lock (rotating first if they would
        not fit: a batch is never split across the two parts)."""
        data = b"".join(lines)
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if not self._current(fd):  # rotated (or removed) by another replica
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    fd = self._open()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and size + len(data) > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ROTATED_SUFFIX))
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    fd = self._open()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, data)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


class _QueuedJournal:
    """A :class:`_Journal` written by a thread of its own, so that a request's answer
    does not wait for the file lock and the write (about 0.1 ms each, more on a busy
    volume).

    :meth:`put` only queues the record; the thread writes everything queued since its
    last write in one batch. Past ``max_pending`` queued records (a volume that stalls)
    :meth:`put` writes in the caller's thread instead, so nothing is dropped and memory
    stays bounded. :meth:`flush` waits until everything queued is written; :meth:`close`
    flushes, then closes the file. The thread ends itself after 5 s with nothing to
    write, and the next :meth:`put` starts another. What a killed process had queued
    and not yet written (the records of the last moments) is lost, as a write the
    kernel had not flushed would be."""

    def __init__(self, journal: _Journal, max_pending: int = 10_000) -> None:
        self.journal = journal
        self.max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.journal.path

    def put(self, obj: dict[str, Any]) -> None:
        with self._cond:
            if len(self._pending) < self.max_pending:
                self._pending.append(obj)
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="tokenyard-decision-journal", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
                return
        self.journal.append(obj)  # the writer is behind: back-pressure, not loss

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._busy = False
                    self._cond.notify_all()
                    if not self._cond.wait(timeout=5.0) and not self._pending:
                        self._thread = None  # idle: a later put starts another
                        return
                batch, self._pending = self._pending, []
                self._busy = True
            lines = []
            for obj in batch:
                try:
                    lines.append(_line(obj))
                except (TypeError, ValueError):  # one record's value, not the batch's
                    logger.error(
                        "decision journal: a record is not JSON; skipped",
                        exc_info=True,
                        extra={"request_id": obj.get("request_id")},
                    )
            try:
                self.journal.append_lines(lines)
            except Exception:  # the writer outlives any one write: flush must not hang
                logger.warning(
                    "could not write the decision journal",
                    exc_info=True,
                    extra={"records": len(batch)},
                )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending and not self._busy, timeout=timeout
            )

    def close(self) -> None:
        if not self.flush():
            logger.warning("decision journal: queued records not written at close")
        self.journal.close()


class LearningStore:
    """Decisions, feedback and captured prompts of one pool, on its state volume."""

    def __init__(
        self,
        root: str | Path | None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_index: int = DEFAULT_MAX_INDEX,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.max_index = max_index
        self._index: OrderedDict[str, DecisionNote] = OrderedDict()
        self._ratings: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._read: dict[str, tuple[int, int]] = {}  # file name -> (inode, offset read)
        self._last_purge = float("-inf")
        self._decisions = (
            _QueuedJournal(_Journal(self.root / DECISIONS_FILE, max_bytes)) if self.root else None
        )
        self._feedback = _Journal(self.root / FEEDBACK_FILE, max_bytes) if self.root else None
        self._captures: dict[Path, _Journal] = {}

    def flush(self) -> None:
        """Wait until the decisions noted so far are in the journal."""
        if self._decisions is not None:
            self._decisions.flush()

    def close(self) -> None:
        """Write what is queued and close the open journal files (a later write reopens
        them)."""
        for j in (self._decisions, self._feedback, *self._captures.values()):
            if j is not None:
                j.close()

    @property
    def durable(self) -> bool:
        """Whether this store writes files (a router without a state directory does not)."""
        return self.root is not None

    # -- decisions -------------------------------------------------------------------

    def _remember(self, note: DecisionNote) -> None:
        with self._lock:
            self._index[note.request_id] = note
            self._index.move_to_end(note.request_id)
            while len(self._index) > self.max_index:
                self._index.popitem(last=False)

    def note_decision(self, note: DecisionNote) -> None:
        """Keep an answered request for feedback: in memory at once (feedback reaching
        this replica finds it), and in the shared journal from the writer thread (other
        replicas and restarts find it once written, normally within a millisecond)."""
        self._remember(note)
        if self._decisions is not None:
            try:
                self._decisions.put(note.to_dict())
            except OSError:
                logger.warning("could not write the decision journal", exc_info=True)

    def find(self, request_id: str) -> DecisionNote | None:
        """The decision of a request: this replica's memory, else what other replicas (or
        this one before a restart) wrote to the journal since it was last read."""
        with self._lock:
            note = self._index.get(request_id)
        if note is not None or self._decisions is None:
            return note
        self._catch_up(self._decisions.path)
        with self._lock:
            return self._index.get(request_id)

    def _catch_up(self, path: Path) -> None:
        """Index the journal's lines this replica has not read yet (its rotated part too
        when it rotated since)."""
        rotated = path.with_name(path.name + ROTATED_SUFFIX)
        for p in (rotated, path):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            inode, offset = self._read.get(p.name, (st.st_ino, 0))
            if inode != st.st_ino:
                # Rotated since: the part this replica was reading is now ``rotated``.
                offset = self._read.get(path.name, (0, 0))[1] if p == rotated else 0
            if st.st_size < offset:
                offset = 0
            with p.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            for line in data[:end].splitlines():
                try:
                    note = DecisionNote.from_dict(json.loads(line))
                except ValueError:
                    note = None
                if note is not None:
                    self._remember(note)
            self._read[p.name] = (st.st_ino, offset + end)

    # -- feedback --------------------------------------------------------------------

    def may_rate(self, request_id: str) -> bool:
        """Whether this replica still takes a rating of ``request_id``
        (MAX_RATINGS_PER_REQUEST); counts the rating when it does."""
        with self._lock:
            n = self._ratings.get(request_id, 0)
            if n >= MAX_RATINGS_PER_REQUEST:
                return False
            self._ratings[request_id] = n + 1
            self._ratings.move_to_end(request_id)
            while len(self._ratings) > self.max_index:
                self._ratings.popitem(last=False)
            return True

    def add_feedback(self, record: dict[str, Any]) -> None:
        """Append one rating (already joined with its decision). Raises OSError when the
        volume cannot take it: the client is told, the rating is not silently lost."""
        if self._feedback is not None:
            self._feedback.append(record)

    # -- capture ---------------------------------------------------------------------

    def capture(self, record: dict[str, Any], endpoint: str, now: float) -> None:
        """Append one captured prompt to its endpoint's file for the current hour."""
        if self.root is None:
            return
        hour = int(now // HOUR_S)
        path = self.root / CAPTURE_DIR / endpoint_dir(endpoint) / f"{hour}.jsonl"
        journal = self._captures.get(path)
        if journal is None:
            # One open file per endpoint: its previous hour's is closed.
            for p in [p for p in self._captures if p.parent == path.parent]:
                self._captures.pop(p).close()
            journal = self._captures[path] = _Journal(path, 1 << 62)
        try:
            journal.append(record)
        except OSError:
            logger.warning("could not write a captured prompt", exc_info=True)

    def purge(self, retention_s: dict[str, float], now: float, *, force: bool = False) -> int:
        """Delete capture files past their endpoint's retention (at most once a minute
        unless ``force``). Each endpoint's folder remembers the last retention its policy
        set (``retention``, a number of seconds), so files of an endpoint that no longer
        captures (or is missing from one config) are still deleted on that schedule;
        without a remembered one, RETENTION_UNKNOWN_S. Returns the files deleted."""
        if self.root is None or (not force and now - self._last_purge < PURGE_INTERVAL_S):
            return 0
        self._last_purge = now
        keep = {endpoint_dir(e): r for e, r in retention_s.items()}
        deleted = 0
        for d in (self.root / CAPTURE_DIR).glob("*"):
            if not d.is_dir():
                continue
            retention = keep.get(d.name)
            marker = d / RETENTION_FILE
            if retention is not None:
                _remember(marker, repr(retention))
            else:
                try:
                    retention = float(marker.read_text())
                except (OSError, ValueError):
                    retention = RETENTION_UNKNOWN_S
            deleted += _delete_older(d, now - retention)
        return deleted


def _remember(marker: Path, text: str) -> None:
    """Write ``text`` to ``marker`` unless it holds it already (best effort)."""
    try:
        if marker.read_text() == text:
            return
    except (OSError, ValueError):  # unreadable or not text: written again below
        pass
    with contextlib.suppress(OSError):
        marker.write_text(text)


def _delete_older(d: Path, before: float) -> int:
    """Delete the hourly files of ``d`` whose whole hour ends at or before ``before``."""
    deleted = 0
    for f in d.glob("*.jsonl"):
        try:
            hour = int(f.stem)
        except ValueError:
            continue
        if (hour + 1) * HOUR_S <= before:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                deleted += 1
    return deleted


__all__ = ["MAX_RATINGS_PER_REQUEST", "DecisionNote", "LearningStore"]
