"""Choose the few-shot learner's prototypes per class and growth step, on validation only.

    .venv/bin/python -m benchmarks.prototypes            # 20 seeds, ~1.2 min, cache warm
    .venv/bin/python -m benchmarks.prototypes --whiten   # the third stage: whitening
    .venv/bin/python -m benchmarks.prototypes --fade     # the fourth: the warm start fades
    .venv/bin/python -m benchmarks.prototypes --misses   # the fifth: grow on misses

The shipped learner (``models.fewshot``) may keep up to ``prototypes`` weight vectors per
class, scoring a class by the largest; a class gains one each ``grow`` examples. This is
the second stage of tuning: ``python -m benchmarks.accuracy --tune`` picks the linear
settings (centring, scaling, ``C``, warm start, temperature) with one prototype per class;
this module keeps those and measures each ``(prototypes, grow)`` pair in
:data:`SETTINGS` through the worker's own path (``benchmarks.accuracy.train_shipped``:
``apply_examples`` on a fresh record). It reads only validation splits carved from the
training pools (``validation_cells``), never the test split, so it may choose, and it
chooses by the tuner's rule (``benchmarks.accuracy.choose``): the best mean validation
macro-F1 over the group's data sets, models and sizes; within 0.1 points of it, the
setting that falls least short of the better offline SVM. Text models and image-only
models are chosen apart, as the worker picks their settings apart.

Writes ``benchmarks/results/prototypes-validation.json``: per group and setting the mean
F1, the shortfall, the cells below LinearSVC, the worst cell against one prototype, the
gap to the better SVM at the largest size, and the per-cell means; then the choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from benchmarks.accuracy import (
    Cell,
    Study,
    choose,
    class_indices,
    linear_svc,
    rbf_svc,
    train_shipped,
    validation_cells,
    validation_means,
)
from state.classifiers import IMAGE_LEARNER, TEXT_LEARNER, LearnerSettings

SETTINGS: tuple[dict[str, Any], ...] = tuple(
    {"prototypes": p, "grow": g}
    for p, g in ((1, 0), (2, 20), (2, 40), (3, 20), (3, 40), (3, 60), (4, 40), (4, 60))
)
"""(prototypes, grow) pairs measured; the first, (1, 0), is one linear score per class."""

WHITEN_SETTINGS: tuple[dict[str, Any], ...] = tuple({"whiten": w} for w in (0.0, 10.0, 50.0, 200.0))
"""``--whiten``, the third stage (on top of the chosen prototypes): diagonal whitening's
shrinkage (pseudo-examples towards the average variance); the first, 0, is off."""


FADE_SETTINGS: tuple[dict[str, Any], ...] = tuple(
    {"warm_start_fade": g} for g in (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)
)
"""``--fade``, the fourth stage (text learners: image-only ones start cold): after ``n``
examples of a class its warm start weighs ``g / (g + n)`` of itself; the first, 0, never
fades."""

MISSES_SETTINGS: tuple[dict[str, Any], ...] = tuple(
    {"grow_misses": m} for m in (0, 3, 5, 8, 10, 20)
)
"""``--misses``, the fifth stage: a class gains a prototype each ``m`` misses (examples of
it predicted wrong before they were learned) instead of each ``grow`` examples; the first,
0, grows on examples."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One tuning stage: the settings it sweeps (the first is the baseline), the groups it
    tunes, what the shipped settings had not chosen yet when it ran (undone, so a re-run
    reproduces its recorded results), and the file it writes."""

    settings: tuple[dict[str, Any], ...]
    tuned: tuple[str, ...]
    before: dict[str, Any]
    filename: str


STAGES = {
    "prototypes": Stage(
        SETTINGS,
        ("text", "image"),
        {"whiten": 0.0, "warm_start_fade": 0.0, "grow_misses": 0},
        "prototypes-validation.json",
    ),
    "whiten": Stage(
        WHITEN_SETTINGS,
        ("text", "image"),
        {"warm_start_fade": 0.0, "grow_misses": 0},
        "whitening-validation.json",
    ),
    "fade": Stage(FADE_SETTINGS, ("text",), {"grow_misses": 0}, "fading-validation.json"),
    "misses": Stage(MISSES_SETTINGS, ("text", "image"), {}, "misses-validation.json"),
}


def sweep(
    cells: Sequence[Cell],
    base: LearnerSettings,
    bar: Any,
    stage: Sequence[dict[str, Any]] = SETTINGS,
) -> dict[str, Any]:
    """Every setting of ``stage`` on top of ``base``, against the SVMs, and the choice
    (``worst_vs_first``: the worst cell against the stage's first setting)."""
    linear_svm, rbf = (
        validation_means(cells, linear_svc, bar),
        validation_means(cells, rbf_svc, bar),
    )
    peer = {w: {n: max(linear_svm[w][n], rbf[w][n]) for n in d} for w, d in rbf.items()}
    grid = []
    for changed in stage:
        settings = dataclasses.replace(base, **changed)
        by_set = validation_means(
            cells,
            lambda task, s=settings: class_indices(  # type: ignore[misc]
                train_shipped(task, s), task.classes, task.X_test
            ),
            bar,
        )
        keys = [(w, n) for w, d in by_set.items() for n in d]
        grid.append(
            {
                "settings": dict(changed),
                "mean_f1": float(np.mean([by_set[w][n] for w, n in keys])),
                "svm_shortfall": float(
                    np.mean([min(0.0, by_set[w][n] - peer[w][n]) for w, n in keys])
                ),
                "below_linear_svc": sum(by_set[w][n] < linear_svm[w][n] for w, n in keys),
                "by_set": by_set,
            }
        )
    one = grid[0]["by_set"]
    for row in grid:
        by_set = row["by_set"]
        row["worst_vs_first"] = min(by_set[w][n] - one[w][n] for w, d in one.items() for n in d)
        row["largest_size_vs_better_svm"] = {
            w: by_set[w][n] - peer[w][n] for w, d in by_set.items() for n in [max(d, key=int)]
        }
    chosen, tied = choose(sorted(grid, key=lambda r: -r["mean_f1"]))
    return {
        "base": base.as_dict(),
        "grid": grid,
        "linear_svc": linear_svm,
        "rbf_svc": rbf,
        "tied": [r["settings"] for r in tied],
        "chosen": chosen["settings"],
    }


def run(
    study: Study, *, stage: Stage = STAGES["prototypes"], progress: bool = True
) -> dict[str, Any]:
    """``stage`` on the shipped settings of the groups it tunes, less the settings chosen
    after it (``Stage.before``: the prototypes stage runs without whitening and fading)."""
    cells, datasets, items = validation_cells(study)
    shipped = {"text": TEXT_LEARNER, "image": IMAGE_LEARNER}
    groups = {g: dataclasses.replace(shipped[g], **stage.before) for g in stage.tuned}
    fits = sum(len(cells[g]) * (len(stage.settings) + 2) for g in groups)
    bar = tqdm(total=fits, desc="validation sweep", unit="fit", disable=not progress)
    out = {
        g: sweep(cells[g], base, bar, stage.settings) | {"datasets": datasets[g]}
        for g, base in groups.items()
        if cells[g]
    }
    bar.close()
    return {
        "validation_only": True,
        "validation_items": items,
        "seeds": study.seeds,
        "sizes": [n for n in study.sizes if n > 0],
        **out,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def summary(results: dict[str, Any]) -> list[str]:
    """One line per group and setting, then the choice."""
    lines = []
    for group in ("text", "image"):
        if group not in results:
            continue
        lines.append(f"{group} ({', '.join(results[group]['datasets'])}):")
        for row in results[group]["grid"]:
            named = " ".join(f"{k} {v:g}" for k, v in row["settings"].items())
            gaps = ", ".join(
                f"{w} {gap * 100:+.1f}" for w, gap in row["largest_size_vs_better_svm"].items()
            )
            lines.append(
                f"  {named}: mean {row['mean_f1']:.4f}"
                f"  shortfall {row['svm_shortfall'] * 100:+.2f}"
                f"  below LinearSVC {row['below_linear_svc']:2d}"
                f"  worst vs the first {row['worst_vs_first'] * 100:+.1f}"
                f"  at the largest size vs the better SVM: {gaps}"
            )
        lines.append(f"  chosen: {results[group]['chosen']} (ties: {results[group]['tied']})")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["bbc", "tweets", "fashion"])
    parser.add_argument(
        "--models", nargs="+", default=["multilingual-e5-small", "all-MiniLM-L6-v2"]
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32, 64, 128, 256, 400])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--whiten", action="store_true", help="the third stage: diagonal whitening's shrinkage"
    )
    chosen.add_argument(
        "--fade", action="store_true", help="the fourth stage: how fast the warm start fades"
    )
    chosen.add_argument(
        "--misses",
        action="store_true",
        help="the fifth stage: grow prototypes on a class's misses instead of its examples",
    )
    args = parser.parse_args(argv)
    study = Study(datasets=args.datasets, models=args.models, sizes=args.sizes, seeds=args.seeds)
    stages = {"whiten": args.whiten, "fade": args.fade, "misses": args.misses}
    name = next((stage for stage, asked in stages.items() if asked), "prototypes")
    results = run(study, stage=STAGES[name])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / STAGES[name].filename
    path.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(summary(results)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
