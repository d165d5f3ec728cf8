"""The accuracy study engine on a tiny synthetic data set with the hash embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.accuracy import Study, markdown, plot, run_study, training_set, tune
from benchmarks.datasets import Dataset, proportional_counts, stratified_take
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


def study(cache: Path, seeds: int = 2, sizes: tuple[int, ...] = (0, 6, 30, 90)) -> Study:
    loads: list[int] = []

    def encoder() -> HashTextEncoder:
        loads.append(1)
        return HashTextEncoder(dim=64)

    s = Study(
        datasets=["toy"],
        models=["hash"],
        sizes=sizes,
        seeds=seeds,
        cache=cache,
        loaders={"toy": toy},
        encoders={"hash": encoder},
    )
    s.loads = loads  # type: ignore[attr-defined]
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
        "LinearSVC",
        "RBF SVC",
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
    pngs = plot(results, tmp_path)
    assert [p.name for p in pngs] == ["accuracy-toy-hash.png"]
    assert pngs[0].stat().st_size > 1000


def test_tuning_never_touches_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.accuracy as acc

    ds = toy()
    test_rows = {ds.texts[i] for i in ds.test}
    seen: list[int] = []
    real = acc.make_task

    def spy(ds: Dataset, X, labels, train, test, **kw):  # type: ignore[no-untyped-def]
        seen.extend(train.tolist() + test.tolist())
        return real(ds, X, labels, train, test, **kw)

    monkeypatch.setattr(acc, "make_task", spy)
    monkeypatch.setattr(acc, "TUNE_GRID", {"C": (0.1, 1.0)})
    monkeypatch.setattr(acc, "TUNE_ITERS", (1, 10))
    tuned = tune(study(tmp_path / "cache", seeds=1, sizes=(0, 6, 30)), progress=False)
    assert seen
    assert not {ds.texts[i] for i in seen} & test_rows
    assert tuned["best"]["settings"]["C"] in (0.1, 1.0)
    assert set(tuned["num_iters_sweep"]) == {"1", "10"}
    assert tuned["best_temperature"] > 0


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
