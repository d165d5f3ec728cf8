from __future__ import annotations

from streams.auth import KeyRing, bearer_token, hash_key, header_value


def test_keys_are_hashed_and_checked() -> None:
    ring = KeyRing(["alpha", "beta"])
    assert ring.authenticate("Bearer alpha") == hash_key("alpha")
    assert ring.authenticate(b"bearer beta") == hash_key("beta")
    for bad in (None, "", "alpha", "Bearer", "Bearer gamma", "Basic alpha"):
        assert ring.authenticate(bad) is None
    assert "alpha" not in repr(ring.__dict__)


def test_header_lookup_is_case_insensitive() -> None:
    headers = [("Content-Type", b"x"), ("Authorization", b"Bearer k")]
    assert bearer_token(header_value(headers, "authorization")) == "k"
    assert header_value({"authorization": b"v"}, "authorization") == b"v"
    assert header_value(None, "authorization") is None


def test_a_record_without_a_valid_key_gets_jinas_auth_code() -> None:
    """The same codes as the gateway's 401s (and Jina's): missing, malformed, unknown."""
    import pytest

    from streams.auth import owner_or_refusal
    from streams.errors import ErrorCode, RequestError

    ring = KeyRing(["k-alice"])
    assert owner_or_refusal(ring, b"Bearer k-alice", "few-shot") == hash_key("k-alice")
    for header, code in (
        (None, ErrorCode.AUTH_MISSING_API_KEY),
        (b"", ErrorCode.AUTH_MISSING_API_KEY),
        (b"  ", ErrorCode.AUTH_MISSING_API_KEY),
        (b"Basic k-alice", ErrorCode.AUTH_INVALID_FORMAT),
        (b"Bearer ", ErrorCode.AUTH_INVALID_FORMAT),
        (b"Bearer k-mallory", ErrorCode.AUTH_INVALID_API_KEY),
    ):
        with pytest.raises(RequestError) as info:
            owner_or_refusal(ring, header, "few-shot")
        assert info.value.code == code
        assert "SHOTSTREAM_API_KEYS" not in info.value.detail  # keys exist: no hint


def test_with_no_key_configured_the_refusal_says_what_to_set() -> None:
    """A first ``shotstream dev`` without SHOTSTREAM_API_KEYS answered every HTTP call with
    a bare "Invalid API key"."""
    import pytest

    from streams.auth import owner_or_refusal
    from streams.errors import ErrorCode, RequestError

    with pytest.raises(RequestError) as info:
        owner_or_refusal(KeyRing([]), b"Bearer anything", "few-shot")
    assert info.value.code == ErrorCode.AUTH_INVALID_API_KEY
    assert "SHOTSTREAM_API_KEYS" in info.value.detail
