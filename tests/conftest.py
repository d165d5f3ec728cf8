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


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP folder (``tests/clip.py``): unit tests use it directly, and it is
    what ``jina-clip-v1`` means for the integration tests' shared worker."""
    from tests.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
