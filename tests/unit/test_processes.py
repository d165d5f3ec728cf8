"""Child processes: this start's ready line, not an earlier run's in the same log; children
that end with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streams.processes import READY_MARK, WorkerProcess, dies_with_this_process


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
    with pytest.raises(RuntimeError, match=r"(?s)exited \(code 1\) before it was ready.*boom"):
        crashing.wait_ready(10)
    crashing.stop()
    assert "from the last run" not in crashing.log_text()  # this run's output only
    ready = Child(log, f"print('{READY_MARK}: now', flush=True); import time; time.sleep(30)")
    ready.start().wait_ready(10)
    assert ready.log_text().startswith(f"{READY_MARK}: now")
    ready.stop()


def test_a_data_dir_is_held_by_one_worker_at_a_time(tmp_path: Path) -> None:
    """Two workers on one data directory opened the same RocksDB tables; one setting them
    aside moved the other's live database, and the next flush corrupted both."""
    import subprocess

    from streams.worker import DataDirInUseError, lock_data_dir

    held = lock_data_dir(tmp_path)
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from streams.worker import lock_data_dir; "
            "lock_data_dir(Path(sys.argv[1]))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert other.returncode != 0
    assert f"in use by another worker (pid {os.getpid()})" in other.stderr
    held.close()  # this worker ends: the next one may start
    again = lock_data_dir(tmp_path)
    with pytest.raises(DataDirInUseError):  # within a process too (a second open file)
        lock_data_dir(tmp_path)
    again.close()


def test_a_topic_kafka_refused_to_create_is_an_error_not_created() -> None:
    """aiokafka returns CreateTopics errors in the response and raises nothing: a topic
    refused for permissions (29), replication factor (38) or a policy was logged as
    created, and the worker started against topics that did not exist."""
    from types import SimpleNamespace

    from streams.broker import TopicCreationError, topic_created

    def response(*entries: tuple[object, ...]) -> SimpleNamespace:
        return SimpleNamespace(topic_errors=list(entries))

    assert topic_created(response(("t", 0)), "t")
    assert topic_created(response(("t", 0, None)), "t")
    assert not topic_created(response(("t", 36, "exists")), "t")  # another worker's
    assert not topic_created(response(("t", 7, None)), "t")  # timed out: may go on, checked after
    with pytest.raises(TopicCreationError, match=r"topic t: InvalidReplicationFactor.*38"):
        topic_created(response(("t", 38, "3 > 1 brokers")), "t")
    with pytest.raises(TopicCreationError, match="TopicAuthorizationFailed"):
        topic_created(response(("t", 29, None)), "t")


def test_dev_can_call_off_its_worker_s_exit_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped worker app ends its process after drain + 15 s; in `dev` that came while
    the gateway and the broker were still being stopped, and Tansu kept its port."""
    import threading

    from streams import app

    exits: list[int] = []
    monkeypatch.setattr(app.os, "_exit", exits.append)
    monkeypatch.setattr(app.logging, "shutdown", lambda: None)  # (this is pytest's process)
    monkeypatch.setattr(app, "_EXIT_CANCELLED", threading.Event())
    fired = threading.Thread(target=app._exit_after, args=(0.05,))
    fired.start()
    fired.join(5)
    assert exits == [1]  # the deadline, uncancelled
    called_off = threading.Thread(target=app._exit_after, args=(0.5,))
    called_off.start()
    app.cancel_exit_deadline()
    called_off.join(5)
    assert exits == [1]


def test_a_worker_stops_on_a_hangup_as_on_sigterm() -> None:
    """mode handles SIGINT and SIGTERM only: a closed terminal took the default action
    (no drain, no commit), and in `shotstream dev` the command's handler raised
    SystemExit inside whichever of the worker's tasks was running."""
    import asyncio
    import signal

    from streams.settings import Settings
    from streams.worker import HangupStopsWorker, build_worker

    app, _, _ = build_worker(Settings())
    loop = asyncio.new_event_loop()
    try:
        worker = HangupStopsWorker(app, loop=loop, quiet=True, redirect_stdouts=False)
        worker.install_signal_handlers()
        handlers = loop._signal_handlers  # type: ignore[attr-defined]
        assert handlers[signal.SIGHUP]._callback == worker._on_sigterm
        assert handlers[signal.SIGTERM]._callback == worker._on_sigterm
    finally:
        for signum in (
            signal.SIGHUP,
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGUSR1,
            signal.SIGUSR2,
        ):
            loop.remove_signal_handler(signum)
        loop.close()


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is not: PID 1 in a container may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_ends_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """`kill -9` of `shotstream dev` left its gateway and Tansu running, holding their ports
    (Tansu is in its own session, so not even the terminal's Ctrl-C reached it): the next
    `dev` said the port was in use. Children started through ``dies_with_this_process``
    get SIGTERM when their parent ends, however it ends."""
    script = (
        "import subprocess, sys, time\n"
        "from streams.processes import dies_with_this_process\n"
        "child = subprocess.Popen(['sleep', '300'], start_new_session=True,\n"
        "                         preexec_fn=dies_with_this_process())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        try:
            assert alive(child)
            parent.kill()
            parent.wait()
            deadline = time.monotonic() + 10
            while alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(child), "the child outlived its SIGKILLed parent"
        finally:
            if alive(child):
                os.kill(child, signal.SIGKILL)


def test_only_the_main_thread_s_children_are_tied_to_it() -> None:
    """Linux signals the child when the thread that started it ends: a child started from a
    pool thread (the tests' ``asyncio.to_thread(worker.start)``) would be stopped when the
    pool closes, so none is tied there."""
    assert (dies_with_this_process() is not None) == (sys.platform == "linux")
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(dies_with_this_process).result() is None
