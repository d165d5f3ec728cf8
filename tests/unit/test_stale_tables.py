"""Local tables older than their changelog topic are moved aside before faust opens them."""

from __future__ import annotations

from pathlib import Path

import pytest
from rocksdict import AccessType, Options, Rdict

from streams.settings import Settings
from streams.worker import FAUST_OFFSET_KEY, local_changelog_offsets, set_aside_stale_tables

CHANGELOG = "shotstream-classifiers-changelog"


def write_tables(data_dir: Path, offsets: dict[int, int | None]) -> None:
    """Tables as faust's RocksDB store leaves them: one raw-mode DB per partition."""
    for partition, offset in offsets.items():
        path = data_dir / "faust" / "v1" / "tables" / f"classifiers-{partition}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_write())
        db[b"alice-classifier"] = b"{}"
        if offset is not None:
            db[FAUST_OFFSET_KEY] = str(offset).encode()
        db.close()


def test_local_offsets_are_read_per_partition(tmp_path: Path) -> None:
    write_tables(tmp_path, {0: 17, 1: None, 3: 4})
    assert local_changelog_offsets(tmp_path / "faust") == {0: 17, 3: 4}


@pytest.mark.parametrize(
    ("created", "ends", "moved"),
    [
        ([], {0: 18, 1: 5}, False),  # the changelog holds everything the tables do
        ([], {0: 17, 1: 5}, True),  # offset 17 was written, the topic ends before it
        ([], {0: 40, 1: 0}, True),  # one partition made anew is enough
        ([], {0: 18}, True),  # the topic has fewer partitions than the tables
        ([CHANGELOG], {0: 18, 1: 5}, True),  # this worker just made the changelog
        (["shotstream-classify"], {0: 18, 1: 5}, False),  # other topics do not matter
    ],
)
def test_tables_are_moved_aside_when_older_than_their_changelog(
    tmp_path: Path, created: list[str], ends: dict[int, int], moved: bool
) -> None:
    write_tables(tmp_path, {0: 17, 1: 4})
    stale = set_aside_stale_tables(Settings(data_dir=tmp_path), created, ends)
    assert (stale is not None) == moved
    assert (tmp_path / "faust").exists() != moved
    if stale is not None:
        assert local_changelog_offsets(stale) == {0: 17, 1: 4}  # renamed, not deleted


def test_no_tables_nothing_to_move(tmp_path: Path) -> None:
    (tmp_path / "faust").mkdir()
    assert set_aside_stale_tables(Settings(data_dir=tmp_path), [CHANGELOG], {}) is None
    assert (tmp_path / "faust").is_dir()
