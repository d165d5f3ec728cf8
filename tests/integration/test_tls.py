"""Secured Kafka: a worker and a client reach the brokers over mutual TLS.

The embedded broker cannot serve TLS itself (Tansu 0.6 refuses ``--cert`` with ``--key``,
and ``--cert`` alone serves no TLS: measured), so a TLS-terminating proxy stands in front
of it and the broker advertises the proxy's address. Every client therefore reaches it
through TLS, with a certificate the proxy checks, or not at all (checked first: a
plaintext client and a TLS client without a certificate both fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from streams.broker import EmbeddedBroker, kafka_security, tansu_binary, wait_for_broker
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.settings import KafkaSettings, Settings
from tests.integration.conftest import API_KEYS, with_client, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.model]


class TLSProxy:
    """TLS on 127.0.0.1:``port`` (client certificates required), plaintext to
    ``upstream``; counts the connections whose handshake succeeded."""

    def __init__(self, port: int, upstream: int, context: ssl.SSLContext) -> None:
        self.port, self.upstream, self.context = port, upstream, context
        self.handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    def __enter__(self) -> TLSProxy:
        self._thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:  # the connections still piped
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@contextlib.contextmanager
def broker_behind(proxy_port: int) -> Iterator[int]:
    """Tansu on a port of its own, advertising ``proxy_port`` to its clients."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{proxy_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield port
        finally:
            process.terminate()
            process.wait(10)


def test_a_worker_and_a_client_work_over_mutual_tls(tmp_path: Path, model_cache: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no connection
    ca_file, client_pem = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("shotstream-worker").private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=ca_file, ssl_certfile=client_pem)
    proxy_port = free_port()
    address = f"127.0.0.1:{proxy_port}"
    with broker_behind(proxy_port) as port, TLSProxy(proxy_port, port, server) as proxy:
        asyncio.run(wait_for_broker([address], 30, security=kafka_security(kafka)))
        no_certificate = KafkaSettings(security_protocol="SSL", ssl_cafile=ca_file)
        for refused in (KafkaSettings(), no_certificate):  # plaintext; TLS, no certificate
            with pytest.raises(TimeoutError):
                asyncio.run(wait_for_broker([address], 3, security=kafka_security(refused)))

        env = worker_env(
            EmbeddedBroker(proxy_port),  # never started: its address is the proxy's
            tmp_path / "data",
            model_cache,
            SHOTSTREAM_KAFKA__SECURITY_PROTOCOL="SSL",
            SHOTSTREAM_KAFKA__SSL_CAFILE=str(ca_file),
            SHOTSTREAM_KAFKA__SSL_CERTFILE=str(client_pem),
        )
        before = proxy.handshakes
        with WorkerProcess(env, tmp_path / "worker.log") as worker:
            worker.wait_ready(600)

            async def go(c: ShotstreamClient) -> tuple[str, int]:
                zero = await c.classify(
                    ["the match went to extra time"], labels=["sports", "politics"]
                )
                trained = await c.train(
                    [
                        {"text": "The striker scored twice.", "label": "sports"},
                        {"text": "Parliament passed the budget.", "label": "politics"},
                    ],
                    classifier_id="over-tls",
                    api_key=API_KEYS["alice"],
                    model="jina-embeddings-v3",
                )
                return zero["data"][0]["prediction"], trained["version"]

            prediction, version = with_client(Settings(brokers=address, kafka=kafka), go)
        assert (prediction, version) == ("sports", 1)
        assert proxy.handshakes > before  # everything went through TLS: there is no other way
