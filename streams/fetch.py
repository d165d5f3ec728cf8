"""Fetching image URLs safely (no SSRF): checked addresses, caps, timeouts, redirects.

Every hop of a fetch — the URL given and each redirect — is handled the same way:

1. the scheme must be allowed (``https``/``http``);
2. the host name is resolved here, and *every* address it resolves to must be public
   (not loopback, private, link-local, multicast, reserved, shared or unspecified;
   IPv4-mapped IPv6 addresses are judged by their IPv4 address) unless it lies in a
   network on the allow-list;
3. the connection goes to the address that was checked — the URL is rewritten to it and
   the name travels in the ``Host`` header and TLS SNI (so certificates are still
   verified against the name). A DNS answer that changes between the check and the
   connect (DNS rebinding) therefore cannot redirect the connection;
4. redirects are not followed by httpx but by this loop, at most ``max_redirects``;
5. only ``200`` with an ``image/*`` content type is accepted (or a generic binary one,
   ``application/octet-stream``, ``binary/octet-stream`` or none at all, as object
   stores and CDNs often send: the decoder sniffs the format anyway); the body is read raw
   (``Accept-Encoding: identity``, no transparent decompression) and cut off as soon as
   it passes ``max_bytes``; a connect, read or whole-fetch deadline cuts off slow
   servers, including ones that drip bytes slowly enough to dodge the read timeout.

Connections are not kept alive: a pooled TLS connection is bound to the name it was
opened for, and reusing it for another name on the same address would skip a check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

import certifi
import httpx

from streams.settings import ImageSettings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
"""Content types that say nothing about the bytes (S3 and CDNs send them for images
uploaded without one): accepted like ``image/*``, since the decoder sniffs the format and
refuses what is not an image (``IMAGE_INVALID``)."""


class FetchError(Exception):
    """An image URL that could not or must not be fetched; the message says why."""


async def resolve(host: str, port: int) -> list[str]:
    """All addresses of ``host`` (the system resolver, off the event loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: IPAddress, allow: Sequence[IPNetwork]) -> str | None:
    """Why ``address`` may not be fetched from, or ``None`` if it may.

    >>> nets = [ipaddress.ip_network("127.0.0.0/8")]
    >>> refusal(ipaddress.ip_address("127.0.0.1"), nets) is None
    True
    >>> refusal(ipaddress.ip_address("10.1.2.3"), nets)
    'private'
    >>> refusal(ipaddress.ip_address("::ffff:169.254.169.254"), [])
    'link-local'
    >>> refusal(ipaddress.ip_address("2002:7f00:1::1"), [])  # 6to4 of 127.0.0.1
    'loopback'
    >>> refusal(ipaddress.ip_address("93.184.216.34"), []) is None
    True
    """
    if any(address.version == net.version and address in net for net in allow):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # both carry an IPv4 address a packet ends up at: judge that one (Python counts
        # 6to4, 2002::/16, as global whatever it embeds)
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal(embedded, allow)
        if address.is_site_local:  # fec0::/10: deprecated, but still routed inside sites
            return "site-local"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


class ImageFetcher:
    """Fetch image bytes from URLs under :class:`~streams.settings.ImageSettings`.

    Parameters
    ----------
    settings
        Timeouts, caps, redirects, schemes and the allow-list.
    resolver
        Host name → addresses (the system resolver by default; tests may pin names).
    """

    def __init__(self, settings: ImageSettings, resolver: Resolver = resolve) -> None:
        self.settings = settings
        self.allow: list[IPNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in settings.allow_list
        ]
        self._resolve = resolver
        self._verify: ssl.SSLContext | bool = True  # httpx's default: certifi's CAs
        if settings.ca_file is not None:  # read now: a bad file stops the worker at start
            self._verify = ssl.create_default_context(cafile=certifi.where())
            try:
                self._verify.load_verify_locations(cafile=settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"SHOTSTREAM_IMAGES__CA_FILE={settings.ca_file}: not a readable PEM file "
                    f"of certificates ({exc})"
                ) from exc
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=s.connect_timeout_s,
                    read=s.read_timeout_s,
                    write=s.read_timeout_s,
                    pool=s.connect_timeout_s,
                ),
                follow_redirects=False,
                verify=self._verify,
                trust_env=False,  # a proxy from the environment would bypass the checks
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, url: str) -> bytes:
        """The bytes of the image at ``url``; ``FetchError`` says why not."""
        try:
            async with asyncio.timeout(self.settings.total_timeout_s):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise FetchError(
                f"fetching took longer than {self.settings.total_timeout_s:g} s"
            ) from exc
        except httpx.TimeoutException as exc:
            raise FetchError(f"timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from exc
        except FetchError:
            raise
        except Exception as exc:  # anything else a URL provokes fails its image, not a bug
            log.warning("fetching %s failed unexpectedly", url[:200], exc_info=True)
            raise FetchError(f"{type(exc).__name__}: {exc}") from exc

    async def _fetch(self, url: str) -> bytes:
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise FetchError(f"invalid URL: {exc}") from exc
        client = self._http()
        for _hop in range(self.settings.max_redirects + 1):
            request = await self._pinned_request(client, current)
            response = await client.send(request, stream=True)
            try:
                if response.has_redirect_location:
                    location = response.headers["location"]
                    try:
                        current = current.join(location)
                    except httpx.InvalidURL as exc:
                        raise FetchError(f"invalid redirect location {location!r}") from exc
                    continue
                return await self._body(response)
            finally:
                await response.aclose()
        raise FetchError(f"more than {self.settings.max_redirects} redirects")

    async def _pinned_request(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Request:
        """A request for ``url`` that connects to a checked address of its host."""
        if url.scheme not in self.settings.schemes:
            raise FetchError(
                f"URL scheme {url.scheme!r} is not allowed "
                f"(allowed: {', '.join(self.settings.schemes)})"
            )
        try:
            host = url.host
        except UnicodeError as exc:  # a punycode label that is not valid IDNA ("xn--")
            raise FetchError(f"invalid host name: {exc}") from exc
        if not host:
            raise FetchError("URL has no host")
        # the name as it is resolved and travels: punycode for an internationalised one
        # (``url.host`` is the decoded Unicode, which neither a header nor SNI can carry)
        wire = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self._resolve(wire, port)
            except (OSError, UnicodeError) as exc:  # UnicodeError: a label over 63 chars
                raise FetchError(f"cannot resolve host {host!r}: {exc}") from exc
        if not addresses:
            raise FetchError(f"host {host!r} has no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
            reason = refusal(address, self.allow)
            if reason is not None:
                raise FetchError(
                    f"refusing to fetch from {host!r}: its address {address} is {reason} "
                    "and not on the allow-list (SHOTSTREAM_IMAGES__ALLOW_LIST)"
                )
        pinned = url.copy_with(host=addresses[0].split("%", 1)[0])
        host_header = wire if url.port is None else f"{wire}:{url.port}"
        if ":" in host and literal is not None:
            host_header = f"[{wire}]" if url.port is None else f"[{wire}]:{url.port}"
        extensions = {"sni_hostname": wire} if url.scheme == "https" and literal is None else {}
        return client.build_request(
            "GET",
            pinned,
            headers={"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"},
            extensions=extensions,
        )

    async def _body(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise FetchError(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (content_type.startswith("image/") or content_type in GENERIC_CONTENT_TYPES):
            raise FetchError(f"content type {content_type!r} is not an image")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in {"", "identity"}:
            raise FetchError(f"content encoding {encoding!r} is not accepted")
        cap = self.settings.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise FetchError(f"image is {declared} bytes, at most {cap} allowed")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > cap:
                raise FetchError(f"image is larger than {cap} bytes (cut off while reading)")
        if not body:
            raise FetchError("response body is empty")
        return bytes(body)
