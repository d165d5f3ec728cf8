"""Worker and gateway child processes, for ``dev``, the demo, the tests and the benchmarks."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

READY_MARK = "shotstream worker ready"
GATEWAY_READY_MARK = "shotstream gateway ready"

PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal a child gets when its parent thread ends."""


def dies_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: on Linux the child gets SIGTERM when
    this process ends, however it ends (SIGKILL and OOM kills included), so that a child
    in its own session (Tansu) or a gateway is not left running, holding its port, after
    ``shotstream dev`` or ``demo`` is killed. Linux sends it when the thread that started
    the child ends, so this is ``None`` off the main thread (a pool thread's end would stop
    the child early), and off Linux. The function is looked up here, in the parent: the
    forked child only calls it."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: no signal comes
            os._exit(1)

    return preexec


class WorkerProcess:
    """``shotstream worker`` in a child process, its output in ``log_path``."""

    command = "worker"
    ready_mark = READY_MARK

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str] | None = None) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.args = args or []
        """Arguments after the command."""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        """Where this start's output begins in the (appended) log."""

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()  # an earlier run's ready line is not this one's
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.argv(),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=dies_with_this_process(),  # SIGTERM when we end, even SIGKILLed
        )
        return self

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "streams", self.command, *self.args]

    def log_text(self) -> str:
        """What this start of the process has written (the log file may hold earlier runs:
        the demo's does, run after run)."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode("utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Wait for this start's ``ready`` line; raise with the log if the process exits
        first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_mark in self.log_text():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(self.log_text().splitlines()[-40:])
        code = self.proc.poll() if self.proc else None
        if code is not None:
            raise RuntimeError(f"{self.command} exited (code {code}) before it was ready:\n{tail}")
        raise RuntimeError(f"{self.command} not ready after {timeout_s:g} s:\n{tail}")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()
        return proc.returncode if proc else None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no commit, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess(WorkerProcess):
    """``shotstream gateway`` in a child process (``SHOTSTREAM_HTTP_PORT`` in ``env``)."""

    command = "gateway"
    ready_mark = GATEWAY_READY_MARK
