"""Child processes: this start's ready line, not an earlier run's in the same log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streams.processes import READY_MARK, WorkerProcess


class Child(WorkerProcess):
    """A stand-in child: ``python -c <script>`` instead of ``shotstream worker``."""

    def __init__(self, log_path: Path, script: str) -> None:
        super().__init__({}, log_path)
        self.script = script

    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.script]


def test_a_ready_line_left_by_an_earlier_run_is_not_this_run_s(tmp_path: Path) -> None:
    """`shotstream demo` appends to one log run after run: on a second run it found the
    first run's ready line at once, produced before the worker had made its topics, and a
    worker that crashed at start was never noticed (the user waited for 'no answer')."""
    log = tmp_path / "demo-worker.log"
    log.write_text(f"{READY_MARK}: from the last run\n")
    crashing = Child(log, "import sys; print('boom', flush=True); sys.exit(1)").start()
    with pytest.raises(RuntimeError, match=r"(?s)not ready .*exit 1.*boom"):
        crashing.wait_ready(10)
    crashing.stop()
    assert "from the last run" not in crashing.log_text()  # this run's output only
    ready = Child(log, f"print('{READY_MARK}: now', flush=True); import time; time.sleep(30)")
    ready.start().wait_ready(10)
    assert ready.log_text().startswith(f"{READY_MARK}: now")
    ready.stop()
