"""Shared fixtures: a hash-embedder service for unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.embedders import HashTextEncoder
from models.registry import ModelRegistry, ModelSpec
from streams.settings import Settings


def hash_registry(cache_dir: Path, dim: int = 64, max_length: int = 32) -> ModelRegistry:
    """A registry whose default model is the deterministic hash encoder."""
    spec = ModelSpec(
        "hash",
        "test hash encoder",
        lambda _c: "",
        build=lambda: HashTextEncoder(dim=dim, max_length=max_length),
    )
    return ModelRegistry(
        cache_dir=cache_dir,
        default="hash",
        aliases={"jina-embeddings-v3": "hash"},
        builtins={"hash": spec},
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)
