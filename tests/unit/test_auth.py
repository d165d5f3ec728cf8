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
