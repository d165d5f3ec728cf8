"""``shotstream bench``: run the benchmarks of a source checkout from the CLI.

``benchmarks/`` is not an installed package (it lives beside ``streams/`` in the
repository), so these commands find the checkout the installed ``streams`` package was
installed from (``pip install -e .``) and import the benchmark from there. Outside a
checkout they fail with a message that says so.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(
    help="Run the benchmarks of a source checkout (results go to benchmarks/results/).",
    no_args_is_help=True,
)


def checkout_root() -> Path:
    """The repository root holding ``benchmarks/`` beside the ``streams`` package."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "accuracy.py").is_file():
        raise typer.BadParameter(
            f"no benchmarks/ next to the installed streams package ({root}): the benchmarks "
            "run from a source checkout installed with `pip install -e .`",
            param_hint="shotstream bench",
        )
    return root


@bench_app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def accuracy(
    ctx: typer.Context,
    tune: Annotated[bool, typer.Option(help="tune the learner on a validation split")] = False,
    setfit: Annotated[bool, typer.Option(help="add SetFit (needs `pip install setfit`)")] = False,
    seeds: Annotated[
        int | None,
        typer.Option(help="repetitions per training size (default: the study's 20)"),
    ] = None,
) -> None:
    """F1 vs number of training examples for every method (progress bar; see
    benchmarks/accuracy.py). Further options (--datasets, --models, --sizes, --out,
    --cache) pass through to `python -m benchmarks.accuracy`."""
    root = checkout_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("benchmarks.accuracy")
    argv = list(ctx.args)
    if seeds is not None:
        argv += ["--seeds", str(seeds)]
    if "--out" not in argv:
        argv += ["--out", str(root / "benchmarks" / "results")]
    if tune:
        argv.append("--tune")
    if setfit:
        argv.append("--setfit")
    module.main(argv)
