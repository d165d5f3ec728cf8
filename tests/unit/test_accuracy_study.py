"""The accuracy study engine on tiny synthetic data sets: texts with the hash embedder,
images with a stand-in image model (the pixels themselves)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from benchmarks.accuracy import (
    Study,
    choose,
    compare,
    comparison,
    macro_f1,
    markdown,
    plot,
    run_study,
    targets,
    training_set,
    tune,
)
from benchmarks.datasets import (
    FASHION_CLASSES,
    Dataset,
    load_bbc,
    load_fashion,
    load_fresh_bbc,
    load_fresh_fashion,
    load_fresh_tweets,
    load_tweets,
    proportional_counts,
    stratified_take,
    validation_split,
)
from benchmarks.embeddings import EmbeddingCache, embed_images, embed_texts
from models.embedders import HashTextEncoder

CLASSES = ["alpha", "beta", "gamma"]
FILLER = [f"w{i}" for i in range(40)]


def toy() -> Dataset:
    """Texts that mention their class name once among shared filler words, plus
    class-specific words: zero-shot works a little, few-shot much better."""
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for k, name in enumerate(CLASSES):
        for _ in range(60):
            words = [
                *rng.choice(FILLER, 6).tolist(),
                *[f"{name}{j}" for j in rng.integers(0, 5, 3)],
            ]
            if rng.random() < 0.5:
                words.append(name)
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(k)
    y = np.asarray(labels, dtype=np.int64)
    test = np.sort(stratified_take(y, [20, 20, 20], np.random.default_rng(1)))
    pool = np.setdiff1d(np.arange(len(y)), test)
    return Dataset("toy", texts, y, CLASSES, test, pool, [f"about {c}" for c in CLASSES])


SHAPES = ["top", "bottom", "left", "right"]


def pictures() -> Dataset:
    """16x16 grayscale images: a bright band on one side (the class) over noise."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for k in range(len(SHAPES)):
        for _ in range(30):
            image = rng.integers(0, 120, (16, 16))
            band = slice(0, 5) if k % 2 == 0 else slice(11, 16)
            if k < 2:
                image[band, :] += 120  # top, bottom
            else:
                image[:, band] += 120  # left, right
            images.append(image.astype(np.uint8))
            labels.append(k)
    y = np.asarray(labels, dtype=np.int64)
    test = np.sort(stratified_take(y, [10] * len(SHAPES), np.random.default_rng(1)))
    pool = np.setdiff1d(np.arange(len(y)), test)
    return Dataset(
        "pictures", [], y, SHAPES, test, pool, None, images=np.stack(images), models=("pixels",)
    )


class PixelEncoder:
    """A stand-in image model: the centred 8x8 grayscale pixels, L2-normalised."""

    name = "pixels"
    dim = 64
    size = 8

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        assert image.mode == "RGB"  # the worker's path: models.images.to_rgb first
        small = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32)
        return np.asarray((small - small.mean())[None], dtype=np.float32)

    def embed_pixels(self, batch: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        x = np.stack(batch).reshape(len(batch), -1)
        return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def study(cache: Path, seeds: int = 2, sizes: tuple[int, ...] = (0, 6, 30, 90)) -> Study:
    s = Study(
        datasets=["toy"],
        models=["hash"],
        sizes=sizes,
        seeds=seeds,
        cache=cache,
        loaders={"toy": toy},
        encoders={"hash": lambda: HashTextEncoder(dim=64)},
    )
    return s


def with_pictures(s: Study) -> Study:
    """``s`` with the image set added (embedded with the stand-in image model)."""
    s.datasets = [*s.datasets, "pictures"]
    s.loaders = {**s.loaders, "pictures": pictures}
    s.image_encoders["pixels"] = PixelEncoder
    return s


def test_proportional_counts_are_stratified_and_cover_every_class() -> None:
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    for n in (3, 8, 17, 100):
        counts = proportional_counts(y, n, 3)
        assert sum(counts) == n
        assert min(counts) >= 1
        assert counts == sorted(counts, reverse=True)


def test_training_sets_come_from_the_pool_and_are_reproducible() -> None:
    ds = toy()
    a = training_set(ds, ds.pool, 30, seed=3)
    assert len(set(a.tolist())) == 30
    assert not set(a.tolist()) & set(ds.test.tolist())
    assert np.bincount(ds.y[a]).tolist() == [10, 10, 10]
    assert np.array_equal(a, training_set(ds, ds.pool, 30, seed=3))
    assert not np.array_equal(a, training_set(ds, ds.pool, 30, seed=4))


def test_study_scores_every_method_and_caches_embeddings(tmp_path: Path) -> None:
    s = study(tmp_path / "cache")
    results = run_study(s, progress=False)
    scores = results["scores"]["toy"]["hash"]
    assert set(scores) == {
        "zero-shot",
        "zero-shot (descriptions)",
        "PA cold",
        "PA warm",
        "shipped",
        "shipped, linear",
        "shipped, streamed",
        "LinearSVC",
        "RBF SVC",
        "LinearSVC, tuned",
        "RBF SVC, tuned",
        "centroid",
    }
    assert set(scores["zero-shot"]) == {"0", "6", "30", "90"}
    assert set(scores["shipped"]) == {"6", "30", "90"}  # a classifier needs examples
    assert all(len(v) == 2 for m in scores.values() for v in m.values())
    zero = np.mean(scores["zero-shot"]["0"])
    assert 1 / 3 < zero < 0.9
    assert np.mean(scores["shipped"]["90"]) > max(0.8, zero + 0.05)
    assert results["embedding_seconds"]  # embedded this time ...
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3  # texts, labels, descriptions
    again = run_study(study(tmp_path / "cache"), progress=False)
    assert again["embedding_seconds"] == {}  # ... and read from the cache the next
    assert again["scores"] == results["scores"]  # deterministic given the seeds

    table = markdown(results)
    assert "## toy, hash" in table
    assert "| shipped |" in table
    assert "| shipped minus | 6 | 30 | 90 |" in table  # paired by seed, both SVMs
    assert "| RBF SVC | " in table.split("| shipped minus |")[1]
    pngs = plot(results, tmp_path)
    assert [p.name for p in pngs] == ["accuracy-toy-hash.png", "accuracy-paired.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_fashion_split_is_stratified_disjoint_and_fixed() -> None:
    ds = load_fashion()
    assert ds.is_image
    assert ds.images is not None
    assert ds.images.shape == (1500, 28, 28)
    assert ds.images.dtype == np.uint8
    assert ds.texts == []
    assert ds.descriptions is None
    assert ds.classes == list(FASHION_CLASSES)
    assert ds.models == ("efficientnet-lite0",)
    assert np.bincount(ds.y[ds.test]).tolist() == [50] * 10
    assert np.bincount(ds.y[ds.pool]).tolist() == [100] * 10
    assert not set(ds.test.tolist()) & set(ds.pool.tolist())
    assert len(np.unique(ds.images.reshape(1500, -1), axis=0)) == 1500  # distinct images
    again = load_fashion()
    assert np.array_equal(again.test, ds.test)
    assert again.images is not None
    assert np.array_equal(again.images, ds.images)


def test_the_fresh_tweet_split_keeps_the_pool_and_tests_on_tweets_never_taken() -> None:
    tweets, fresh = load_tweets(), load_fresh_tweets()
    assert fresh.shares == ("tweets", len(tweets.texts))
    assert fresh.texts[: len(tweets.texts)] == tweets.texts  # same pool, same training sets
    assert np.array_equal(fresh.pool, tweets.pool)
    assert np.array_equal(fresh.y[: len(tweets.y)], tweets.y)
    assert np.bincount(fresh.y[fresh.test]).tolist() == [1000] * 3
    tested = [fresh.texts[i] for i in fresh.test]
    assert len(set(tested)) == len(tested)
    assert not set(tested) & set(tweets.texts)  # neither pool nor the old test split
    again = load_fresh_tweets()
    assert np.array_equal(again.test, fresh.test)
    assert [again.texts[i] for i in again.test] == tested  # fixed


def test_the_fresh_bbc_split_tests_on_the_articles_no_choice_looked_at() -> None:
    bbc, fresh = load_bbc(), load_fresh_bbc()
    assert fresh.shares == ("bbc", len(bbc.texts))
    assert fresh.texts == bbc.texts
    assert np.array_equal(fresh.y, bbc.y)
    validation, unseen = validation_split(bbc)
    assert np.array_equal(fresh.test, unseen)
    assert len(fresh.test) == 1084
    assert not set(fresh.test.tolist()) & set(bbc.test.tolist())  # not the study's test
    assert not set(fresh.test.tolist()) & set(validation.tolist())  # nor tuning's
    assert not set(fresh.test.tolist()) & set(fresh.pool.tolist())
    assert set(fresh.pool.tolist()) == set(bbc.test.tolist()) | set(validation.tolist())
    assert len(fresh.pool) >= 400  # the study's largest training set
    assert (np.bincount(fresh.y[fresh.test]) > 150).all()  # every topic well tested


def test_the_fresh_fashion_split_keeps_the_pool_and_tests_on_images_never_taken() -> None:
    fashion, fresh = load_fashion(), load_fresh_fashion()
    assert fashion.images is not None
    assert fresh.images is not None
    n = len(fashion.y)
    assert fresh.shares == ("fashion", n)
    assert fresh.is_image
    assert fresh.models == fashion.models
    assert np.array_equal(fresh.images[:n], fashion.images)  # same pool, same training sets
    assert np.array_equal(fresh.pool, fashion.pool)
    assert np.array_equal(fresh.y[:n], fashion.y)
    assert np.bincount(fresh.y[fresh.test]).tolist() == [300] * 10
    tested = {image.tobytes() for image in fresh.images[fresh.test]}
    assert len(tested) == len(fresh.test)
    assert not tested & {image.tobytes() for image in fashion.images}  # no pixel-equal one
    again = load_fresh_fashion()
    assert again.images is not None
    assert np.array_equal(again.images, fresh.images)  # fixed


def test_an_image_set_that_shares_another_s_images_embeds_only_its_own(tmp_path: Path) -> None:
    base = pictures()
    assert base.images is not None
    extra = base.images[:4][:, ::-1].copy()  # four mirrored pictures
    n = len(base.y)
    wider = Dataset(
        "pictures-wider",
        [],
        np.concatenate([base.y, base.y[:4]]),
        SHAPES,
        np.arange(n, n + 4),
        base.pool,
        None,
        images=np.concatenate([base.images, extra]),
        models=("pixels",),
        shares=("pictures", n),
    )
    s = with_pictures(study(tmp_path / "cache"))
    cache = EmbeddingCache(s.cache)
    X, _, _ = s.embeddings(base, "pixels", cache)
    cache.stats.clear()
    X2, labels, described = s.embeddings(wider, "pixels", cache)
    assert set(cache.stats) == {"pictures-wider/pixels"}
    (own,) = s.cache.glob("pictures-wider-*.npy")
    assert np.load(own).shape == (4, PixelEncoder.dim)  # only the four new pictures
    assert np.array_equal(X2[:n], X)
    assert np.allclose(X2[n:], embed_images(PixelEncoder(), extra))  # type: ignore[arg-type]
    assert labels is None
    assert described is None


def test_a_set_that_shares_another_s_texts_embeds_only_its_own(tmp_path: Path) -> None:
    base = toy()
    extra = ["alpha0 alpha1 w1", "beta2 beta3 w2", "gamma4 gamma0 w3"]
    n = len(base.texts)
    wider = Dataset(
        "toy-wider",
        base.texts + extra,
        np.concatenate([base.y, np.arange(3)]),
        CLASSES,
        np.arange(n, n + 3),
        base.pool,
        base.descriptions,
        shares=("toy", n),
    )
    s = study(tmp_path / "cache")
    s.loaders = {"toy": toy, "toy-wider": lambda: wider}
    s.datasets = ["toy", "toy-wider"]
    cache = EmbeddingCache(s.cache)
    X, labels, described = s.embeddings(base, "hash", cache)
    assert set(cache.stats) == {"toy/hash", "toy-labels/hash", "toy-descriptions/hash"}
    cache.stats.clear()
    X2, labels2, described2 = s.embeddings(wider, "hash", cache)
    assert set(cache.stats) == {"toy-wider/hash"}  # only the three new texts
    assert np.array_equal(X2[:n], X)
    assert np.allclose(X2[n:], embed_texts(HashTextEncoder(dim=64), extra))
    assert labels is not None
    assert np.array_equal(labels2, labels)  # the class names' vectors: cached under toy
    assert described is not None
    assert np.array_equal(described2, described)


def test_a_set_that_shares_all_its_texts_embeds_nothing(tmp_path: Path) -> None:
    base = toy()
    turned = Dataset(
        "toy-turned",
        base.texts,
        base.y,
        CLASSES,
        base.pool,
        base.test,
        base.descriptions,
        shares=("toy", len(base.texts)),
    )
    s = study(tmp_path / "cache")
    cache = EmbeddingCache(s.cache)
    X, _, _ = s.embeddings(base, "hash", cache)
    cache.stats.clear()
    X2, _, _ = s.embeddings(turned, "hash", cache)
    assert cache.stats == {}  # no encoder loaded, nothing embedded
    assert not list(s.cache.glob("toy-turned-*"))
    assert np.array_equal(X2, X)


def test_an_image_set_runs_without_label_vectors_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.accuracy as acc
    from state.classifiers import apply_examples as real

    label_vectors: list[object] = []

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        label_vectors.append(kw["label_vectors"])
        return real(*args, **kw)

    monkeypatch.setattr(acc, "apply_examples", spy)
    s = with_pictures(study(tmp_path / "cache", seeds=1, sizes=(0, 3, 10, 40)))
    results = run_study(s, progress=False)
    assert set(results["scores"]) == {"toy", "pictures"}
    assert set(results["scores"]["pictures"]) == {"pixels"}  # its own model, not "hash"
    scores = results["scores"]["pictures"]["pixels"]
    assert set(scores) == {
        "PA cold",
        "shipped",
        "shipped, linear",
        "shipped, streamed",
        "LinearSVC",
        "RBF SVC",
        "LinearSVC, tuned",
        "RBF SVC, tuned",
        "centroid",
    }
    assert set(scores["shipped"]) == {"10", "40"}  # 3 examples cannot hold 4 classes
    assert set(results["scores"]["toy"]["hash"]["shipped"]) == {"3", "10", "40"}
    assert np.mean(scores["shipped"]["40"]) > 0.8
    assert None in label_vectors  # the image set: a cold start, as a worker's
    assert any(v is not None for v in label_vectors)  # the text set: warm
    (skipped,) = results["skipped"]["pictures"]["pixels"]
    assert skipped["methods"] == ["zero-shot", "zero-shot (descriptions)", "PA warm"]
    assert "no text tower" in skipped["why"]
    assert "toy" not in results["skipped"]
    assert results["datasets"]["pictures"]["modality"] == "image"
    assert len(list((tmp_path / "cache").glob("pictures-pixels-*.npy"))) == 1
    again = run_study(
        with_pictures(study(tmp_path / "cache", seeds=1, sizes=(0, 3, 10, 40))), progress=False
    )
    assert again["embedding_seconds"] == {}  # images cached too
    assert again["scores"] == results["scores"]

    table = markdown(results)
    section = table.split("## pictures, pixels")[1]
    assert "| zero-shot |" not in section
    assert "| shipped |" in section
    assert "Not run: zero-shot, zero-shot (descriptions), PA warm. pixels embeds" in section
    assert "Left out: training size 3 (fewer examples than its 4 classes" in section
    assert "| zero-shot |" in table.split("## pictures, pixels")[0]  # the text set keeps it
    lines = targets(results)
    assert any(line.startswith("pictures/pixels:") and "n/a" in line for line in lines)
    assert [p.name for p in plot(results, tmp_path)] == [
        "accuracy-toy-hash.png",
        "accuracy-pictures-pixels.png",
        "accuracy-paired.png",
    ]


def rows_tasks_see(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of ``ds`` every task made from now on trains or is scored on."""
    import benchmarks.accuracy as acc

    seen: list[int] = []
    real = acc.make_task

    def spy(data: Dataset, X, labels, train, test, **kw):  # type: ignore[no-untyped-def]
        if data.name == ds.name:
            seen.extend(train.tolist() + test.tolist())
        return real(data, X, labels, train, test, **kw)

    monkeypatch.setattr(acc, "make_task", spy)
    return seen


def test_tuning_never_touches_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.accuracy as acc

    ds = toy()
    test_rows = {ds.texts[i] for i in ds.test}
    seen = rows_tasks_see(ds, monkeypatch)
    monkeypatch.setattr(acc, "TUNE_GRID", {"C": (0.1, 1.0)})
    monkeypatch.setattr(acc, "IMAGE_TUNE_GRID", {"C": (0.03, 0.3)})
    monkeypatch.setattr(acc, "TUNE_ITERS", (1, 10))
    tuned = tune(
        with_pictures(study(tmp_path / "cache", seeds=1, sizes=(0, 6, 30))), progress=False
    )
    # text and image sets are tuned apart: a worker picks settings by modality
    assert tuned["datasets"] == ["toy"]
    assert tuned["image"]["datasets"] == ["pictures"]
    assert {r["settings"]["warm_start"] for r in tuned["image"]["grid"]} == {False}
    assert tuned["image"]["best"]["settings"]["C"] in (0.03, 0.3)
    assert set(tuned["image"]["num_iters_sweep"]) == {"1", "10"}
    only_images = with_pictures(study(tmp_path / "cache", seeds=1, sizes=(0, 6)))
    only_images.datasets = ["pictures"]
    with pytest.raises(ValueError, match="nothing to tune the text learner on"):
        tune(only_images, progress=False)
    assert seen
    assert not {ds.texts[i] for i in seen} & test_rows
    assert tuned["best"]["settings"]["C"] in (0.1, 1.0)
    assert tuned["best"]["svm_shortfall"] <= 0.0
    assert tuned["best"]["settings"] in tuned["tied"]
    assert set(tuned["svm_by_set"]) == {"toy/hash"}
    assert set(tuned["num_iters_sweep"]) == {"1", "10"}
    assert tuned["best_temperature"] > 0


def test_ties_on_validation_go_to_the_smaller_shortfall_below_the_svms() -> None:
    results = [
        {"settings": "a", "mean_f1": 0.7643, "svm_shortfall": -0.0041},
        {"settings": "b", "mean_f1": 0.7640, "svm_shortfall": -0.0029},
        {"settings": "c", "mean_f1": 0.7610, "svm_shortfall": -0.0001},  # not a tie
    ]
    chosen, tied = choose(results)
    assert chosen["settings"] == "b"
    assert [r["settings"] for r in tied] == ["a", "b"]
    assert choose(results[:1])[0]["settings"] == "a"


def test_weighted_macro_f1_with_unit_weights_is_sklearns() -> None:
    from benchmarks.accuracy import weighted_macro_f1

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 200)
    preds = np.where(rng.random((3, 200)) < 0.6, truth, rng.integers(0, 4, (3, 200)))
    got = weighted_macro_f1(truth, preds, np.ones((1, 200)), 4)[0]
    assert got == pytest.approx([macro_f1(truth, row) for row in preds])
    twice = np.r_[truth, truth[:50]], np.c_[preds, preds[:, :50]]  # weight 2 = listed twice
    weights = np.r_[np.full(50, 2.0), np.ones(150)][None, :]
    assert weighted_macro_f1(truth, preds, weights, 4)[0] == pytest.approx(
        [macro_f1(twice[0], row) for row in twice[1]]
    )


def test_compare_pairs_by_seed_and_counts_the_test_items_noise() -> None:
    import statistics

    rng = np.random.default_rng(4)
    truth = rng.integers(0, 3, 300)

    def guesses(right: float, seeds: int) -> npt.NDArray[np.int64]:
        noise = rng.integers(0, 3, (seeds, 300))
        return np.where(rng.random((seeds, 300)) < right, truth, noise)

    a, b = guesses(0.7, 6), guesses(0.6, 6)
    got = compare(truth, a, b, 3, draws=400)
    diff = [macro_f1(truth, x) - macro_f1(truth, y) for x, y in zip(a, b, strict=True)]
    assert got["mean"] == pytest.approx(statistics.fmean(diff))
    assert got["se_seeds"] == pytest.approx(statistics.stdev(diff) / np.sqrt(6))
    assert got["wins"] == sum(d > 0 for d in diff)
    assert got["seeds"] == 6
    assert got["se"] > 0
    same = compare(truth, a, a, 3, draws=50)
    assert same["mean"] == same["se"] == same["se_seeds"] == 0
    assert same["wins"] == 0
    # every seed predicts the same: no seed noise, but the test split is still a sample
    one_a, one_b = np.repeat(a[:1], 5, axis=0), np.repeat(b[:1], 5, axis=0)
    fixed = compare(truth, one_a, one_b, 3, draws=400)
    assert fixed["se_seeds"] == 0
    assert 0.01 < fixed["se"] < 0.1  # 300 items: a few points


def test_targets_tell_a_clear_miss_from_noise() -> None:
    """Shipped trails LinearSVC at 8 by less than twice its standard error and at 40 by
    more; at the largest size RBF SVC is the better SVM."""
    scores = {
        "shipped": {"8": [0.60, 0.62], "40": [0.80, 0.82]},
        "LinearSVC": {"8": [0.61, 0.62], "40": [0.82, 0.83]},
        "RBF SVC": {"8": [0.2, 0.2], "40": [0.83, 0.85]},
    }

    def cell(mean: float, se: float) -> dict[str, float]:
        return {"mean": mean, "se": se, "se_seeds": se / 2, "wins": 0, "seeds": 2}

    paired = {
        "LinearSVC": {"8": cell(-0.005, 0.01), "40": cell(-0.015, 0.005)},
        "RBF SVC": {"8": cell(0.41, 0.01), "40": cell(-0.03, 0.004)},
    }
    results = {"scores": {"toy": {"hash": scores}}, "paired": {"toy": {"hash": paired}}}
    (line,) = targets(results)
    assert "shipped >= LinearSVC at every size: MISS at [8, 40] (clear at [40])" in line
    assert "at 40: 3.0 ± 0.4 points behind RBF SVC (MISS)" in line
    table = "\n".join(comparison(paired))
    assert "| shipped minus | 8 | 40 |" in table
    assert "| LinearSVC | -0.5 ± 1.0 (0/2) | -1.5 ± 0.5 (0/2) |" in table
    paired["LinearSVC"]["40"] = cell(0.002, 0.005)
    paired["RBF SVC"]["40"] = cell(-0.008, 0.004)
    (line,) = targets(results)
    assert "MISS at [8] (clear at [])" in line
    assert "at 40: 0.8 ± 0.4 points behind RBF SVC (PASS)" in line
    paired["RBF SVC"]["40"] = cell(0.012, 0.004)  # shipped ahead of the better SVM
    (line,) = targets(results)
    assert "at 40: 1.2 ± 0.4 points ahead of RBF SVC (PASS)" in line


def test_bench_command_finds_the_checkout_or_says_it_needs_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    import streams.bench as bench
    from streams.cli import app

    assert (bench.checkout_root() / "benchmarks" / "accuracy.py").is_file()
    (tmp_path / "streams").mkdir()
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "streams" / "bench.py"))
    with pytest.raises(typer.BadParameter, match="source checkout"):
        bench.checkout_root()
    result = CliRunner().invoke(app, ["bench", "accuracy", "--seeds", "1"])
    assert result.exit_code == 2
    assert "source checkout" in result.output


def test_bench_command_runs_the_study_with_its_own_seeds_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`shotstream bench accuracy` reproduces the committed table (the study's 20 seeds),
    not a smaller default of its own; --seeds and pass-through options reach the study."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import streams.bench as bench
    from streams.cli import app

    calls: list[list[str]] = []
    study = SimpleNamespace(main=calls.append)
    monkeypatch.setattr(bench.importlib, "import_module", lambda name: study)
    runner = CliRunner()
    assert runner.invoke(app, ["bench", "accuracy"]).exit_code == 0
    assert runner.invoke(app, ["bench", "accuracy", "--seeds", "3", "--sizes", "8"]).exit_code == 0
    out = str(bench.checkout_root() / "benchmarks" / "results")
    assert calls == [["--out", out], ["--sizes", "8", "--seeds", "3", "--out", out]]


def test_the_svms_are_tuned_on_validation_only_defaults_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline peers get the same chance as the shipped learner: a grid on the
    validation cells (never a test item), per modality and kernel; a tie keeps the
    defaults, which come first."""
    from benchmarks import accuracy as acc

    ds = toy()
    test_rows = {ds.texts[i] for i in ds.test}
    seen = rows_tasks_see(ds, monkeypatch)
    monkeypatch.setattr(
        acc, "SVM_TUNE_GRID", {"C": (0.001, 1.0), "class_weight": (None,), "standardize": (False,)}
    )
    tuned = acc.tune_svms(
        with_pictures(study(tmp_path / "cache", seeds=2, sizes=(0, 6, 30))), progress=False
    )
    assert seen
    assert not {ds.texts[i] for i in seen} & test_rows
    for modality in ("text", "image"):
        for kind in ("LinearSVC", "RBF SVC"):
            got = tuned[modality][kind]
            assert [r["settings"]["C"] for r in got["grid"]] in ([1.0, 0.001], [0.001, 1.0])
            assert got["best"]["mean_f1"] >= max(r["mean_f1"] for r in got["grid"]) - acc.TIE_BAND
    # a C this small cannot separate the toy classes: the default wins for LinearSVC
    assert tuned["text"]["LinearSVC"]["best"]["settings"]["C"] == 1.0
