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

from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.format.deletion import DeletionFileType, decode_deletion_file
from tests.support import factory


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
    assert report.files_removed == 4 + sum(
        1 for f in lance.dataset(str(path), version=report.read_version).get_fragments() if f.metadata.deletion_file
    )
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


@pytest.mark.parametrize("reencode", [True, False], ids=["pylance_reencode", "binary_copy"])
def test_heavily_deleted_fragments_stay_in_their_run(tmp_path: Path, reencode: bool) -> None:
    """A fragment over the deletion threshold is merged with its neighbours, never left as a gap:
    re-encoded with them when pylance may (deleted rows dropped), else binary-copied with its
    deletions carried and a note saying so."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100, 100])
    ds.delete("id < 50")  # fragment 0: 50% deleted
    start = lance.dataset(str(path)).version
    options = CompactionOptions(reencode_fallback=reencode)
    plan = plan_compaction(str(path), options)
    assert plan.skipped == ()
    assert [(list(t.fragment_ids), t.reencode) for t in plan.tasks] == [([0, 1, 2, 3], reencode)]
    assert [(n.fragment_id, n.reason) for n in plan.notes] == ([] if reencode else [(0, "deletions_kept")])
    before = _rows(lance.dataset(str(path)))
    report = compact(str(path), options)
    assert report.committed_versions == [start + 1] and report.version == start + 1
    assert report.reencoded_fragments == (4 if reencode else 0)
    assert report.notes == list(plan.notes)
    ds = lance.dataset(str(path))
    (frag,) = ds.get_fragments()
    assert _rows(ds) == before
    assert ds.to_table()["id"].to_pylist() == list(range(50, 400))  # the inputs' order
    if reencode:
        assert frag.metadata.physical_rows == 350 and frag.metadata.deletion_file is None
    else:
        assert frag.metadata.physical_rows == 400 and frag.metadata.deletion_file.num_deleted_rows == 50


def test_one_commit_for_a_history_with_heavy_deletes(tmp_path: Path) -> None:
    """Six 200-row fragments, about 15% deleted in fragments 1 and 4: one new version, one group
    of all six adjacent fragments (pylance's own fallback once committed three versions and
    merged 1 with 4, changing the row order)."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.2", [200] * 6)
    ds.delete("(id >= 200 AND id < 230) OR (id >= 800 AND id < 832)")
    ds = lance.dataset(str(path))
    start, before = ds.version, ds.to_table().to_pylist()
    dry = compact(str(path), CompactionOptions(dry_run=True))
    report = compact(str(path), CompactionOptions())
    assert [list(t["fragment_ids"]) for t in dry.plan["tasks"]] == [[0, 1, 2, 3, 4, 5]] and dry.reencoded_fragments == 6
    assert report.committed_versions == [start + 1] and lance.dataset(str(path)).version == start + 1
    assert (report.fragments_removed, report.fragments_added, report.reencoded_fragments) == (6, 1, 6)
    ds = lance.dataset(str(path))
    assert ds.to_table().to_pylist() == before  # same rows, same order
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [1200 - 62]


def test_a_lone_heavily_deleted_fragment(tmp_path: Path) -> None:
    """Alone (at the target size), it is re-encoded by itself as Lance does; without re-encoding
    there is nothing binary copy could do for it, and it is skipped with the reason."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [300, 300])
    ds.delete("id < 200")
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=250, reencode_fallback=False))
    assert [(s.fragment_id, s.reason) for s in plan.skipped] == [(0, "materialize_deletions"), (1, "at_target_size")]
    assert "reencode_fallback" in plan.skipped[0].detail
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=250))
    assert report.reencoded_fragments == 1 and report.fragments_removed == 1
    ds = lance.dataset(str(path))
    assert sorted(f.metadata.physical_rows for f in ds.get_fragments()) == [100, 300]
    assert ds.to_table()["id"].to_pylist() == list(range(300, 600)) + list(range(200, 300))  # Lance's order: new fragment last


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
def test_fragments_over_the_threshold_are_reencoded_in_our_commit(tmp_path: Path, stable: bool) -> None:
    """pylance writes the re-encoded group's files; we commit them in our one Rewrite, with the
    inputs' row ids (deleted ones dropped) on stable-row-id datasets."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100, 100], enable_stable_row_ids=stable)
    ds.delete("id < 60 OR id = 150")  # fragment 0: 60% deleted; fragment 1: 1%
    ds = lance.dataset(str(path))
    before = _rows(ds, stable)
    start = ds.version
    report = compact(str(path), CompactionOptions())
    assert report.reencoded_fragments == 4 and report.committed_versions == [start + 1]
    assert report.skipped == [] and report.notes == []
    ds = lance.dataset(str(path))
    assert _rows(ds, stable) == before
    (frag,) = ds.get_fragments()
    assert frag.metadata.physical_rows == 339 and frag.metadata.deletion_file is None
    if stable:
        assert ds.to_table(with_row_id=True)["_rowid"].to_pylist() == [i for i in range(60, 400) if i != 150]
        ds.delete("id = 200")  # pylance keeps working on it
        assert 200 not in lance.dataset(str(path)).to_table()["id"].to_pylist()


def test_no_reencode_fallback_carries_their_deletions(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100, 100, 100])
    ds.delete("id < 60")
    report = compact(str(path), CompactionOptions(reencode_fallback=False))
    assert report.reencoded_fragments == 0 and report.skipped == []
    assert [(n.fragment_id, n.reason) for n in report.notes] == [(0, "deletions_kept")]
    (frag,) = lance.dataset(str(path)).get_fragments()
    assert frag.metadata.physical_rows == 300 and frag.metadata.deletion_file.num_deleted_rows == 60
