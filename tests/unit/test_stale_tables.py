"""Local tables older than their changelog topic are moved aside before faust opens them,
or, in ``shotstream dev``, written into it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from rocksdict import AccessType, Options, Rdict

from state.records import ClassifierRecord, decode_record, encode_record
from streams.settings import Settings
from streams.training import key_partition
from streams.worker import (
    FAUST_OFFSET_KEY,
    GROUP_MARK,
    TABLES_SUBDIR,
    ReseedRefused,
    local_changelog_offsets,
    read_tables,
    reseed_changelog,
    set_aside_stale_tables,
)

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


def write_records(
    data_dir: Path, partition: int, records: dict[bytes, bytes], offset: int | None
) -> None:
    path = data_dir / "faust" / "v1" / "tables" / f"classifiers-{partition}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_write())
    for key, value in records.items():
        db[key] = value
    if offset is not None:
        db[FAUST_OFFSET_KEY] = str(offset).encode()
    db.close()


def ids_in(partition: int, partitions: int, n: int) -> list[bytes]:
    """``n`` classifier ids the default partitioner puts in ``partition``."""
    found = (f"clf-{i}".encode() for i in range(10_000))
    return [k for k in found if key_partition(k, partitions) == partition][:n]


class FakeChangelog:
    """A topic in memory: each send appends to its partition and returns the offset."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[tuple[str, bytes, bytes]]] = {}

    async def send(self, topic: str, key: bytes, value: bytes, partition: int) -> int:
        log = self.partitions.setdefault(partition, [])
        log.append((topic, key, value))
        return len(log) - 1


def trained(classifier_id: bytes) -> bytes:
    """An encoded record that remembers offsets of the old train topic."""
    rec = ClassifierRecord.new(
        classifier_id.decode(), model="m", owner="o", access="private", dim=2, now=0.0
    )
    rec.labels, rec.weights, rec.version = ["a"], np.ones((1, 2), np.float32), 70
    rec.applied["shotstream-train:0"] = 169
    rec.hyper.update(
        {"C": 0.03, "_replay": {"shotstream-train:0": [[169, 70, 5.0]]}, "_used": {"x:0": [3, 1.0]}}
    )
    return encode_record(rec)


def test_a_new_changelog_is_filled_from_the_tables_and_they_are_marked_read(
    tmp_path: Path,
) -> None:
    """`shotstream dev` restarted: every classifier goes back into the changelog partition
    its table holds it in, having forgotten the old topics' offsets (new train records at
    offsets 0, 1 ... must not pass for replays), and each table stores it as sent, marked
    read up to its last record (faust then restores nothing and its next write follows
    on); a partition left with no classifier (all deleted) loses its offset, which the new
    topic has not reached; a record that cannot be read is kept as it is."""
    p0, p2 = ids_in(0, 4, 3), ids_in(2, 4, 1)
    write_records(tmp_path, 0, {k: trained(k) for k in p0}, offset=41)
    write_records(tmp_path, 2, {p2[0]: b"not a record"}, offset=7)
    write_records(tmp_path, 3, {}, offset=12)
    settings = Settings(data_dir=tmp_path, partitions=4)
    topic = FakeChangelog()
    assert asyncio.run(reseed_changelog(settings, topic.send)) == 4
    sent = {p: [(t, k, v) for t, k, v in log] for p, log in topic.partitions.items()}
    assert [(t, k) for t, k, _ in sent[0]] == [(CHANGELOG, k) for k in sorted(p0)]
    assert sent[2] == [(CHANGELOG, p2[0], b"not a record")]
    for _, key, value in sent[0]:
        again = decode_record(value)
        assert (again.applied, again.hyper, again.version) == ({}, {"C": 0.03}, 70)
        assert again.weights.tolist() == [[1.0, 1.0]]
        assert value != trained(key)
    tables = tmp_path / "faust" / TABLES_SUBDIR
    assert local_changelog_offsets(tmp_path / "faust") == {0: 2, 2: 0}
    assert read_tables(tables, 4)[0] == [(k, v) for _, k, v in sent[0]]  # stored as sent
    assert read_tables(tables, 4)[3] == []
    again = FakeChangelog()  # a start cut off after this one reseeds the same
    assert asyncio.run(reseed_changelog(settings, again.send)) == 4
    assert again.partitions == topic.partitions


def test_tables_a_group_worker_wrote_are_not_reseeded(tmp_path: Path) -> None:
    """`shotstream worker` marks its data directory: in a group its tables may hold
    partitions taken from it, at overtaken versions, which dev must not bring back."""
    write_records(tmp_path, 0, {k: trained(k) for k in ids_in(0, 4, 1)}, offset=3)
    (tmp_path / "faust" / GROUP_MARK).touch()
    topic = FakeChangelog()
    assert asyncio.run(reseed_changelog(Settings(data_dir=tmp_path), topic.send)) is None
    assert topic.partitions == {}
    assert local_changelog_offsets(tmp_path / "faust") == {0: 3}  # untouched


def test_tables_of_another_partition_count_are_not_reseeded(tmp_path: Path) -> None:
    """A record in a partition its id no longer maps to would never meet its train
    requests: such tables are set aside as before, and nothing is sent."""
    moved = next(k for k in ids_in(1, 2, 50) if key_partition(k, 4) != 1)  # 2 → 4 partitions
    write_records(tmp_path, 1, {moved: b"x"}, offset=3)
    topic = FakeChangelog()
    settings = Settings(data_dir=tmp_path, partitions=4)
    with pytest.raises(ReseedRefused, match="SHOTSTREAM_PARTITIONS changed"):
        read_tables(tmp_path / "faust" / TABLES_SUBDIR, 4)
    assert asyncio.run(reseed_changelog(settings, topic.send)) is None
    assert topic.partitions == {}
    assert local_changelog_offsets(tmp_path / "faust") == {1: 3}  # untouched


def test_no_tables_nothing_to_reseed(tmp_path: Path) -> None:
    topic = FakeChangelog()
    assert asyncio.run(reseed_changelog(Settings(data_dir=tmp_path), topic.send)) is None
    assert topic.partitions == {}


def test_the_tables_subdirectory_is_fausts() -> None:
    from streams.app import create_app

    settings = Settings()
    app, _ = create_app(settings)
    assert Path(app.conf.tabledir) == settings.data_dir / "faust" / TABLES_SUBDIR
