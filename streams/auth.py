"""API keys: kept only as SHA-256 hashes, compared in constant time.

A key arrives in a Kafka header ``authorization: Bearer <key>`` (or the HTTP header of
the same name). Its hash is the owner id stored in classifier records, so records never
hold a key in clear.

>>> ring = KeyRing(["k-alice", "k-bob"])
>>> ring.authenticate("Bearer k-alice") == hash_key("k-alice")
True
>>> ring.authenticate("Bearer nope") is None
True
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence

from streams.errors import ErrorCode, RequestError


def hash_key(key: str) -> str:
    """The owner id of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer_token(value: str | bytes | None) -> str | None:
    """``Bearer <key>`` → ``<key>`` (None when absent or malformed)."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def header_value(
    headers: Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
    name: str,
    *,
    null: bytes | None = None,
) -> bytes | None:
    """A Kafka header's value, case-insensitively (first wins); ``None`` without one.

    Kafka headers may have no value (null): such a header reads as ``null``, as if absent
    unless the caller tells them apart."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in pairs:
        if key.lower() == name:
            return null if value is None else value
    return None


class KeyRing:
    """The configured API keys, as hashes only."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._hashes = [bytes.fromhex(hash_key(k)) for k in keys if k]

    def __len__(self) -> int:
        return len(self._hashes)

    def authenticate(self, authorization: str | bytes | None) -> str | None:
        """The owner id for a valid ``Bearer`` value, else None (constant time per key)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found = False
        for known in self._hashes:  # no early exit: timing does not tell which key matched
            found |= hmac.compare_digest(presented, known)
        return presented.hex() if found else None


def owner_or_refusal(keys: KeyRing, header: str | bytes | None, what: str) -> str:
    """The owner id of an ``authorization`` header (a Kafka record's or an HTTP request's),
    or a ``RequestError`` with Jina's code (``what`` names what needs the key)."""
    if header is None or not header.strip():  # an empty header: a key variable left unset
        raise RequestError(
            ErrorCode.AUTH_MISSING_API_KEY,
            f"Authentication required: {what} needs an 'authorization: Bearer <key>' header",
        )
    if bearer_token(header) is None:
        raise RequestError(
            ErrorCode.AUTH_INVALID_FORMAT, "Invalid authorization format: use 'Bearer <key>'"
        )
    owner = keys.authenticate(header)
    if owner is None:
        raise RequestError(ErrorCode.AUTH_INVALID_API_KEY, "Invalid API key" + _none_hint(keys))
    return owner


NO_KEYS = "no API key is configured: set SHOTSTREAM_API_KEYS or SHOTSTREAM_API_KEY_FILE"


def _none_hint(keys: KeyRing) -> str:
    """Why every key is invalid when none is configured (nothing to keep secret then)."""
    return "" if len(keys) else f" ({NO_KEYS})"
