"""`tokenyard up` as a subprocess for the serving tests, its output collected line by line.

A waiter fails as soon as the process exits (with its last lines), not at its timeout."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

URL_RE = re.compile(r"OpenAI base URL: (http://\S+/v1)")
READY = "Press Ctrl-C"


class Up:
    """`tokenyard up -f MANIFESTS --port PORT --state-dir STATE` (tiny models offline)."""

    def __init__(
        self, manifests: Path, state: Path, port: int, env: Mapping[str, str] | None = None
    ) -> None:
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            **(env or {}),
        }
        exe = shutil.which("tokenyard", path=str(Path(sys.executable).parent)) or "tokenyard"
        self.proc = subprocess.Popen(
            [exe, "up", "-f", str(manifests), "--port", str(port), "--state-dir", str(state)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        self.proc.wait()
        with self.cond:  # the process ended: wake a waiter so it fails now, not at timeout
            self.cond.notify_all()

    @property
    def output(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def urls(self) -> list[str]:
        """The OpenAI base URLs it printed."""
        return URL_RE.findall(self.output)

    def wait_for(self, text: str, timeout_s: float, after: int = 0) -> None:
        def seen() -> bool:
            return any(text in ln for ln in self.lines[after:])

        with self.cond:
            ok = self.cond.wait_for(lambda: seen() or self.proc.poll() is not None, timeout_s)
            found = seen()
        assert ok and found, f"no {text!r} from tokenyard up:\n" + "".join(self.lines[-40:])

    def wait_ready(self, timeout_s: float = 420) -> str:
        """Wait until it serves; its OpenAI base URL."""
        self.wait_for(READY, timeout_s)
        urls = self.urls()
        assert urls, "tokenyard up printed no base URL:\n" + self.output[-3000:]
        return urls[0]

    def reload(self) -> None:
        """SIGHUP, then wait for the router to run the new config."""
        mark = len(self.lines)
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for("reloaded.", 300, after=mark)

    def stop(self) -> int:
        """Ctrl-C, then its exit code (killed, and the timeout raised, past 120 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(10)
        return code
