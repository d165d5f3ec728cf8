"""benchmarks.batcher: the paired micro-batcher benchmark runs end to end and is honest."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.batcher import ROOT, main, workloads


def test_workloads_are_the_documented_shapes() -> None:
    w = workloads(2000)
    assert len(w["w1"]) == 400
    assert {len(r) for r in w["w1"]} <= set(range(1, 49))
    assert len(w["w2"]) == 2000
    assert {len(r) for r in w["w2"]} == {8}
    assert w == workloads(2000)  # the same requests for every tree and round


def test_a_run_against_another_tree_writes_paired_ratios(tmp_path: Path) -> None:
    main(["--rounds", "2", "--against", f"same={ROOT}", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "batcher-free-cpu.json").read_text())
    assert set(results["trees"]) == {"this checkout", "same"}
    for w in ("w1", "w2"):
        mine, other = results["trees"]["this checkout"][w], results["trees"]["same"][w]
        assert len(mine) == len(other) == 2
        assert min(mine + other) > 0
        assert results["ratios"][w]["same"] == [a / b for a, b in zip(mine, other, strict=True)]
    assert (tmp_path / "batcher-free-cpu.png").stat().st_size > 0
    assert "| same |" in (tmp_path / "batcher-free-cpu.md").read_text()
