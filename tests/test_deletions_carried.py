"""Deletion vectors carried forward by binary copy, judged by pylance.

A merged fragment keeps every physical row of its inputs and gets one deletion
file holding their deleted offsets shifted by each input's row offset, in
Lance's own formats (Arrow IPC below 5000 rows, roaring bitmap from 5000 on).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lance
import pytest

import factory
from lance_assets.engine.compaction import compact
from lance_assets.engine.copy import execute_task
from lance_assets.engine.commit import commit_compaction
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.plan import plan_compaction
from lance_assets.format.deletion import DeletionFileType, decode_deletion_file


def _rows(ds: lance.LanceDataset, with_row_id: bool = False) -> list[dict]:
    return sorted(ds.to_table(with_row_id=with_row_id).to_pylist(), key=lambda r: r["id"])


def _deleted_offsets(path: Path, fragment_id: int) -> list[int]:
    ds = Dataset.open(str(path))
    frag = next(f for f in ds.fragments if f.id == fragment_id)
    data = ds.storage.read(ds.deletion_file_path(frag))
    return decode_deletion_file(data, DeletionFileType(frag.deletion_file.file_type), physical_rows=frag.physical_rows)


@pytest.mark.parametrize("version", factory.STORAGE_VERSIONS)
@pytest.mark.parametrize("stable", [False, True], ids=["addresses", "stable_row_ids"])
def test_deleted_rows_stay_deleted(tmp_path: Path, version: str, stable: bool) -> None:
    path = tmp_path / "ds.lance"
    sizes = [1024, 1024, 1024, 500] if version == "legacy" else [1000, 700, 1, 300]
    ds = factory.appends(path, version, sizes, enable_stable_row_ids=stable)
    ds.delete("id % 37 = 5")
    ds = lance.dataset(str(path))
    before = _rows(ds, stable)
    by_fragment = {f.fragment_id: f.to_table()["id"].to_pylist() for f in ds.get_fragments()}
    report = compact(str(path), CompactionOptions())
    assert report.fragments_removed == 4 and report.fragments_added == 1
    assert report.files_removed == 4 + sum(1 for f in lance.dataset(str(path), version=report.read_version).get_fragments() if f.metadata.deletion_file)
    ds = lance.dataset(str(path))
    assert _rows(ds, stable) == before  # same live rows, same _rowid where stable
    assert ds.count_rows() == len(before)
    (frag,) = ds.get_fragments()
    assert frag.metadata.physical_rows == sum(sizes)
    assert frag.metadata.deletion_file.num_deleted_rows == sum(sizes) - len(before)
    # the merged fragment's rows are the inputs' live rows in input order
    assert frag.to_table()["id"].to_pylist() == [i for fid in sorted(by_fragment) for i in by_fragment[fid]]
    # offsets in the new file are the old ones shifted by each input's position
    expected, base = [], 0
    for n in sizes:
        expected += [base + k for k in range(n) if (base + k) % 37 == 5]
        base += n
    assert _deleted_offsets(path, frag.fragment_id) == expected
    assert ds.validate() is None
    # pylance keeps working on it: more deletes land in a new deletion file, its own compaction re-encodes
    ds.delete("id = 1")
    ds = lance.dataset(str(path))
    assert ds.count_rows() == len(before) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.optimize.compact_files()
    assert lance.dataset(str(path)).count_rows() == len(before) - 1


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_bitmap_deletion_file_for_large_sets(tmp_path: Path, version: str) -> None:
    """6,000 deleted rows under the 10% threshold: the merged file uses Lance's bitmap form."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, version, [30_000, 30_000, 5_000])
    ds.delete("id % 11 = 0")
    ds = lance.dataset(str(path))
    before = _rows(ds)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=100_000))
    assert report.fragments_removed == 3
    ds = lance.dataset(str(path))
    assert _rows(ds) == before
    (frag,) = ds.get_fragments()
    assert frag.metadata.deletion_file.num_deleted_rows == 65_000 - len(before) > 5000
    assert next(iter((path / "_deletions").glob(f"{frag.fragment_id}-*"))).suffix == ".bin"


def test_threshold_leaves_heavily_deleted_fragments(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100, 100])
    ds.delete("id < 50")  # fragment 0: 50% deleted
    plan = plan_compaction(str(path), CompactionOptions())
    assert [s.reason for s in plan.skipped] == ["materialize_deletions"]
    assert [list(t.fragment_ids) for t in plan.tasks] == [[1, 2, 3]]
    before = _rows(lance.dataset(str(path)))
    compact(str(path), CompactionOptions(materialize_deletions=False))
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1 and _rows(ds) == before


def test_deletion_files_follow_fragment_ids_shifted_by_a_concurrent_append(tmp_path: Path) -> None:
    """Ids are assigned at commit; an append landing first moves them, and the deletion file follows."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100])
    ds.delete("id IN (3, 150)")
    plan = plan_compaction(str(path), CompactionOptions())
    results = [execute_task(str(path), plan, t) for t in plan.tasks]
    factory.write(factory.simple_table(300, 10), path, "2.1")  # takes the next fragment id
    before = _rows(lance.dataset(str(path)))
    report = commit_compaction(str(path), plan, results)
    ds = lance.dataset(str(path))
    assert _rows(ds) == before
    merged = max(f.fragment_id for f in ds.get_fragments())
    assert _deleted_offsets(path, merged) == [3, 150]
    # only the deletion files of live fragments and of older versions exist: nothing stray
    names = {p.name.split("-")[0] for p in (path / "_deletions").iterdir()}
    assert str(merged) in names and report.version == ds.version


@pytest.mark.parametrize("stable", [False, True], ids=["addresses", "stable_row_ids"])
def test_fragments_over_the_threshold_are_reencoded_by_pylance(tmp_path: Path, stable: bool) -> None:
    """Binary copy merges the lightly deleted run; pylance re-encodes the heavily deleted fragment."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100, 100], enable_stable_row_ids=stable)
    ds.delete("id < 60 OR id = 150")  # fragment 0: 60% deleted; fragment 1: 1%
    ds = lance.dataset(str(path))
    before = _rows(ds, stable)
    start = ds.version
    report = compact(str(path), CompactionOptions())
    assert report.reencoded_fragments == 1
    # ours, then pylance's (which commits a ReserveFragments version before its Rewrite)
    assert report.committed_versions == [start + 1, start + 3] and report.version == lance.dataset(str(path)).version
    assert all(s["reason"] != "materialize_deletions" for s in report.skipped)
    ds = lance.dataset(str(path))
    assert _rows(ds, stable) == before
    frags = {f.fragment_id: f for f in ds.get_fragments()}
    assert sorted(f.metadata.physical_rows for f in frags.values()) == [40, 300]  # deleted rows dropped; 1-3 merged
    assert sum(1 for f in frags.values() if f.metadata.deletion_file) == 1  # the merged fragment carries id 150's deletion


def test_no_reencode_fallback_leaves_them(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100])
    ds.delete("id < 60")
    report = compact(str(path), CompactionOptions(reencode_fallback=False))
    assert report.reencoded_fragments == 0
    assert [s["reason"] for s in report.skipped] == ["materialize_deletions"]
    assert lance.dataset(str(path)).get_fragments()[0].metadata.physical_rows == 100
