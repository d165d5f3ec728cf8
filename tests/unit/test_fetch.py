"""Safe fetching: refused addresses (also behind DNS names and redirects), caps, timeouts.

A real HTTP server on 127.0.0.1 serves the allowed cases: the allow-list lets the
fetcher reach it, exactly as an operator would allow an internal image host.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from PIL import Image

from models.images import encode_png
from streams.fetch import FetchError, ImageFetcher
from streams.settings import ImageSettings
from tests.local_server import serve

PNG = encode_png(Image.new("RGB", (8, 8), "red"))


class Handler(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []  # noqa: RUF012 - shared log of Host headers seen

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        Handler.hosts.append(self.headers.get("Host", ""))
        path = self.path
        if path == "/ok.png":
            self._send(200, PNG, "image/png")
        elif path == "/page":
            self._send(200, b"<html></html>", "text/html")
        elif path == "/missing":
            self._send(404, b"no", "text/plain")
        elif path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/huge-declared":
            self._send(200, PNG, "image/png", length=100_000_000)
        elif path == "/huge-streamed":  # no Content-Length: the cap applies while reading
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/slow":  # drips one byte every 0.2 s: never trips a read timeout
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self._send(404, b"", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(Handler) as url:
        yield url


def fetch(url: str, resolver: Any = None, **settings: Any) -> bytes:
    async def go() -> bytes:
        kw = {"resolver": resolver} if resolver else {}
        fetcher = ImageFetcher(ImageSettings(**settings), **kw)
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


LOOPBACK = {"allow_list": ("127.0.0.1/32",)}


def to_loopback_noting(names: list[str]) -> Any:
    """A resolver that answers 127.0.0.1 for every name, noting the names it was asked."""

    async def resolver(host: str, port: int) -> list[str]:
        names.append(host)
        return ["127.0.0.1"]

    return resolver


def test_allowed_local_server_serves_the_image(server: str) -> None:
    assert fetch(f"{server}/ok.png", **LOOPBACK) == PNG


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/ok.png", "loopback"),
        ("http://127.8.9.10/x.png", "loopback"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://172.16.0.1/x.png", "private"),
        ("http://172.31.255.254/x.png", "private"),
        ("http://192.168.1.1/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:{port}/ok.png", "loopback"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://[fd00::1]/x.png", "private"),
        ("http://[::ffff:10.0.0.1]/x.png", "private"),
        ("http://[2002:7f00:1::1]:{port}/ok.png", "loopback"),  # 6to4 of 127.0.0.1
        ("http://[2002:a9fe:a9fe::]/x.png", "link-local"),  # 6to4 of 169.254.169.254
        ("http://[fec0::1]/x.png", "site-local"),
        ("http://[64:ff9b::a00:1]/x.png", "reserved"),  # NAT64 of 10.0.0.1
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://0.0.0.0:{port}/ok.png", "unspecified"),
        ("http://100.64.0.1/x.png", "not globally routable"),
        ("http://localhost:{port}/ok.png", "loopback"),  # a DNS name resolving to loopback
    ],
)
def test_refused_addresses(server: str, url: str, reason: str) -> None:
    port = server.rsplit(":", 1)[1]
    Handler.hosts.clear()
    with pytest.raises(FetchError, match=reason):
        fetch(url.format(port=port))
    assert Handler.hosts == []  # refused before connecting


def test_redirect_to_a_private_address_is_refused(server: str) -> None:
    with pytest.raises(FetchError, match=r"10\.0\.0\.7.*private"):
        fetch(f"{server}/redirect?to=http://10.0.0.7/x.png", **LOOPBACK)


def test_redirect_to_ipv6_loopback_is_refused_when_only_ipv4_loopback_is_allowed(
    server: str,
) -> None:
    port = server.rsplit(":", 1)[1]
    with pytest.raises(FetchError, match="loopback"):
        fetch(f"{server}/redirect?to=http://[::1]:{port}/ok.png", **LOOPBACK)


def test_redirects_are_followed_and_limited(server: str) -> None:
    assert fetch(f"{server}/redirect?to=/ok.png", **LOOPBACK) == PNG
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch(f"{server}/loop", **LOOPBACK)
    with pytest.raises(FetchError, match="scheme 'file'"):
        fetch(f"{server}/redirect?to=file:///etc/passwd", **LOOPBACK)


def test_a_name_is_resolved_once_and_the_checked_address_is_used(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    calls: list[str] = []
    resolver = to_loopback_noting(calls)
    Handler.hosts.clear()
    assert fetch(f"http://images.internal:{port}/ok.png", resolver, **LOOPBACK) == PNG
    assert calls == ["images.internal"]
    assert Handler.hosts == [f"images.internal:{port}"]  # the name travels in Host

    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "10.9.9.9"]  # any forbidden answer refuses the name

    with pytest.raises(FetchError, match=r"10\.9\.9\.9"):
        fetch(f"http://images.internal:{port}/ok.png", rebinding, **LOOPBACK)


def test_content_type_status_and_size(server: str) -> None:
    with pytest.raises(FetchError, match="'text/html' is not an image"):
        fetch(f"{server}/page", **LOOPBACK)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{server}/missing", **LOOPBACK)
    with pytest.raises(FetchError, match="100000000 bytes"):
        fetch(f"{server}/huge-declared", **LOOPBACK)
    with pytest.raises(FetchError, match="cut off while reading"):
        fetch(f"{server}/huge-streamed", **LOOPBACK, max_bytes=1_000_000)


def test_slow_responses_are_cut_off(server: str) -> None:
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch(f"{server}/slow", **LOOPBACK, total_timeout_s=1.0)


def test_scheme_and_malformed_urls() -> None:
    with pytest.raises(FetchError, match="scheme 'ftp'"):
        fetch("ftp://example.com/x.png")
    with pytest.raises(FetchError, match="scheme 'http'"):
        fetch("http://example.com/x.png", schemes=("https",))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://" + "a" * 64 + ".example/x.png", "cannot resolve host"),
        ("https://xn--ls8h.la/cat.png", "invalid host name"),  # punycode of a disallowed one
        ("https://xn--/x.png", "invalid host name"),
    ],
)
def test_a_host_name_idna_refuses_is_a_fetch_error(url: str, message: str) -> None:
    """The IDNA codec refuses a 64-character label, and punycode that does not decode to
    a valid name, with UnicodeError (they escaped as INTERNAL_ERROR before; they are
    IMAGE_FETCH_FAILED)."""
    fetcher = ImageFetcher(ImageSettings())

    async def go() -> None:
        try:
            with pytest.raises(FetchError, match=message):
                await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    asyncio.run(go())


# -- HTTPS: the connection goes to the checked address, the certificate is checked for the name


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


SNI_NAMES: list[str | None] = []
"""The server names (SNI) clients asked the HTTPS test server for."""


@contextlib.contextmanager
def https_server(ca: trustme.CA, name: str) -> Iterator[str]:
    """The test handler over HTTPS, with a certificate for ``name`` signed by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    context.sni_callback = lambda _sock, server_name, _ctx: SNI_NAMES.append(server_name)
    with serve(Handler, tls=context) as url:
        yield url


async def to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    tls_ca: trustme.CA, tmp_path: Path
) -> None:
    """The name travels in SNI and Host, the certificate is verified against it (not
    against the address connected to), and only CAs the operator trusts sign it."""
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    with https_server(tls_ca, "images.test") as url:
        port = url.rsplit(":", 1)[1]
        Handler.hosts.clear()
        SNI_NAMES.clear()
        image = f"https://images.test:{port}/ok.png"
        assert fetch(image, to_loopback, ca_file=ca_file, **LOOPBACK) == PNG
        assert Handler.hosts == [f"images.test:{port}"]
        assert SNI_NAMES == ["images.test"]  # not the address connected to
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(image, to_loopback, **LOOPBACK)  # the test CA is not a public one
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):  # no name: no SNI
            fetch(f"https://127.0.0.1:{port}/ok.png", ca_file=ca_file, **LOOPBACK)
    with https_server(tls_ca, "other.test") as url:  # a trusted CA, but another name
        port = url.rsplit(":", 1)[1]
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(f"https://images.test:{port}/ok.png", to_loopback, ca_file=ca_file, **LOOPBACK)


def test_a_ca_file_that_is_not_pem_stops_the_fetcher_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ValueError, match="SHOTSTREAM_IMAGES__CA_FILE"):
            ImageFetcher(ImageSettings(ca_file=path))


def test_an_internationalised_name_travels_as_punycode(server: str) -> None:
    """httpx gives the Unicode name (bücher.example); a Host header cannot carry it, and
    building one raised UnicodeEncodeError: an INTERNAL_ERROR for every IDN image URL.
    The name is resolved as it travels (IDNA 2008, not the socket module's IDNA 2003)."""
    port = server.rsplit(":", 1)[1]
    resolved: list[str] = []
    resolver = to_loopback_noting(resolved)
    Handler.hosts.clear()
    for name in ("bücher.example", "xn--bcher-kva.example"):
        assert fetch(f"http://{name}:{port}/ok.png", resolver, **LOOPBACK) == PNG
    assert Handler.hosts == [f"xn--bcher-kva.example:{port}"] * 2
    assert resolved == ["xn--bcher-kva.example"] * 2
