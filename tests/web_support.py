"""The tools the web side's tests need (Node.js, TypeScript, Chromium), found or skipped.

A missing tool skips its tests with the reason, unless ``ROOMD_REQUIRE_BROWSER=1`` (as in CI):
then the web side's tests fail instead, so that a machine without them cannot pass in silence.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
JS_TESTS = REPO / "tests" / "js"
WEB = REPO / "roomd" / "web"
CHROMIUM = Path("/usr/bin/chromium")


def required() -> bool:
    return os.environ.get("ROOMD_REQUIRE_BROWSER") == "1"


def missing(reason: str) -> NoReturn:
    if required():
        pytest.fail(f"{reason} (ROOMD_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@functools.cache
def _node_argv() -> tuple[str, ...] | None:
    node = shutil.which("node")
    if node is None:
        return None
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for argv in ((node,), (node, "--experimental-websocket")):
        if subprocess.run([*argv, "-e", probe], capture_output=True, timeout=30).returncode == 0:
            return argv
    return None


def node_argv() -> list[str]:
    """``node`` with what it needs for a global WebSocket (Node.js 20: a flag), or skip."""
    argv = _node_argv()
    if argv is None:
        missing("Node.js with a WebSocket client (20 or newer) is not installed")
    return list(argv)


def tsc() -> Path:
    path = JS_TESTS / "node_modules" / ".bin" / "tsc"
    if not path.exists():
        missing("TypeScript is not installed: run `npm ci` in tests/js")
    return path


def chromium() -> Path:
    if not CHROMIUM.exists():
        missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def run(argv: list[str], *, timeout: float, cwd: Path = REPO, **env: str) -> str:
    """Run a tool; its output, or a test failure that shows it."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env},
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"{argv[0]} took longer than {timeout} s:\n{out}")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{output}", pytrace=False)
    return output


class LoggedProcess:
    """A child process whose output lines a thread collects, so that a synchronous test (a
    browser test) can wait for a line without blocking the process on a full pipe."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env  # (None: this process's)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> LoggedProcess:
        self.lines.clear()
        self.process = subprocess.Popen(
            self.argv,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        return self

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first output line from index ``start`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if left <= 0 or exited:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"{self.name}: no line matching {pattern!r}:\n{tail}")
                self._changed.wait(left)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
