"""Compaction that must not happen: every refusal leaves the dataset exactly as it was.

Unknown feature flags, corrupt, truncated or missing data files, and other
writers committing between our plan and our commit. In each case the typed
error comes out, the files we wrote are gone, and pylance reads the state the
other writer (if any) left behind.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import lance
import pytest

from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import CompactionPlan, plan_compaction
from lance_assets.engine.report import RewriteResult
from lance_assets.errors import CommitConflictError, CorruptFileError, MissingFileError, UnknownFeatureFlagError
from lance_assets.format import manifest as mf
from tests.support import factory
from tests.support.assertions import tree_digest

TARGET = CompactionOptions(target_rows_per_fragment=250)  # 5 x 100 rows -> outputs [0, 1, 2] + [3, 4]


@pytest.fixture(scope="session")
def five(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("refusal-sources")
    built: dict[str, Path] = {}

    def build(version: str) -> Path:
        if version not in built:
            built[version] = root / f"five-{version}.lance"
            factory.appends(built[version], version, [100] * 5)
        return built[version]

    return build


@pytest.fixture
def copy_five(five: Callable[[str], Path], tmp_path: Path) -> Callable[[str], Path]:
    def copy(version: str = "2.1") -> Path:
        dst = tmp_path / f"five-{version}.lance"
        shutil.copytree(five(version), dst)
        return dst

    return copy


def listing(path: Path, folder: str) -> set[str]:
    d = path / folder
    return set(os.listdir(d)) if d.exists() else set()


def latest_manifest(path: Path) -> Path:
    return path / Dataset.open(str(path)).location.rel_path


def rewrite_latest_manifest(path: Path, change: Callable[[mf.Manifest], None]) -> None:
    target = latest_manifest(path)
    parsed = mf.parse_manifest_file(target.read_bytes())
    m = mf.Manifest()
    m.CopyFrom(parsed.manifest)
    change(m)
    target.write_bytes(mf.build_manifest_file(m, parsed.transaction, parsed.index_section))


def data_file_of(path: Path, fragment_id: int) -> Path:
    (frag,) = [f for f in lance.dataset(str(path)).get_fragments() if f.fragment_id == fragment_id]
    return path / "data" / frag.metadata.files[0].path


def plan_and_execute(path: Path, options: CompactionOptions = TARGET) -> tuple[CompactionPlan, list[RewriteResult]]:
    plan = plan_compaction(str(path), options)
    results = [execute_task(str(path), plan, t) for t in plan.tasks]
    assert all(r.ok for r in results)
    return plan, results


# --- feature flags -------------------------------------------------------------------------------------
def test_unknown_writer_flag_refused_before_anything_is_written(copy_five: Callable[[str], Path]) -> None:
    path = copy_five()
    rewrite_latest_manifest(path, lambda m: setattr(m, "writer_feature_flags", m.writer_feature_flags | 1 << 20))
    digest = tree_digest(path)
    with pytest.raises(UnknownFeatureFlagError):
        plan_compaction(str(path), TARGET)
    with pytest.raises(UnknownFeatureFlagError):
        compact(str(path), TARGET)
    with pytest.raises(UnknownFeatureFlagError):
        compact(str(path), CompactionOptions(target_rows_per_fragment=250, dry_run=True))
    assert tree_digest(path) == digest


def test_unknown_reader_flag_refused(copy_five: Callable[[str], Path]) -> None:
    path = copy_five()
    rewrite_latest_manifest(path, lambda m: setattr(m, "reader_feature_flags", m.reader_feature_flags | 1 << 20))
    digest = tree_digest(path)
    with pytest.raises(UnknownFeatureFlagError):
        compact(str(path), TARGET)
    assert tree_digest(path) == digest


def test_unknown_flag_appearing_before_commit(copy_five: Callable[[str], Path]) -> None:
    """A newer writer commits a version with a flag we do not know while our tasks run."""
    path = copy_five()
    data_before = listing(path, "data")
    plan, results = plan_and_execute(path)
    assert listing(path, "data") > data_before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(factory.simple_table(500, 10), str(path), mode="append")
    rewrite_latest_manifest(path, lambda m: setattr(m, "writer_feature_flags", m.writer_feature_flags | 1 << 20))
    ours = {p.split("/")[-1] for r in results for p in r.files_written}
    digest = tree_digest(path)
    with pytest.raises(UnknownFeatureFlagError):
        commit_compaction(str(path), plan, results)
    # only our files went away; no manifest or transaction file was written
    assert tree_digest(path) == {k: v for k, v in digest.items() if k.split("/")[-1] not in ours}
    assert len(listing(path, "data") - data_before) == 1  # pylance's appended file


# --- corrupt and missing data files ------------------------------------------------------------------------
def _truncate_half(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _truncate_one(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-1])


def _empty(f: Path) -> None:
    f.write_bytes(b"")


def _wrong_magic(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-4] + b"LANX")


def _footer_garbage(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-40:-8] = b"\xff" * 32  # positions and counts of the footer, magic kept
    f.write_bytes(bytes(data))


CORRUPTIONS = {"half": _truncate_half, "minus1": _truncate_one, "empty": _empty, "magic": _wrong_magic, "footer": _footer_garbage}


@pytest.mark.parametrize("victim", [0, 3], ids=["first-output", "second-output"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_data_file(copy_five: Callable[[str], Path], corruption: str, victim: int) -> None:
    path = copy_five("2.2")
    CORRUPTIONS[corruption](data_file_of(path, victim))
    digest = tree_digest(path)
    with pytest.raises(CorruptFileError) as info:
        compact(str(path), TARGET)
    assert data_file_of(path, victim).name in str(info.value)
    assert tree_digest(path) == digest  # no new file in data/, _versions/ or _transactions/


def test_truncated_data_file_without_recorded_size(copy_five: Callable[[str], Path]) -> None:
    path = copy_five("2.1")
    victim = data_file_of(path, 4)

    def forget_sizes(m: mf.Manifest) -> None:
        for frag in m.fragments:
            frag.files[0].file_size_bytes = 0

    rewrite_latest_manifest(path, forget_sizes)
    _truncate_one(victim)
    digest = tree_digest(path)
    with pytest.raises(CorruptFileError):
        compact(str(path), TARGET)
    assert tree_digest(path) == digest


@pytest.mark.parametrize("victim", [0, 4])
def test_missing_data_file(copy_five: Callable[[str], Path], victim: int) -> None:
    path = copy_five("2.0")
    f = data_file_of(path, victim)
    f.unlink()
    digest = tree_digest(path)
    with pytest.raises(MissingFileError) as info:
        compact(str(path), TARGET)
    assert f.name in str(info.value)
    assert tree_digest(path) == digest


def test_corrupt_file_in_distributed_task_leaves_no_files(copy_five: Callable[[str], Path]) -> None:
    path = copy_five("2.1")
    plan = plan_compaction(str(path), TARGET)
    _truncate_half(data_file_of(path, 4))
    digest = tree_digest(path)
    with pytest.raises(CorruptFileError):
        execute_task(str(path), plan, plan.tasks[0])
    assert tree_digest(path) == digest


# --- concurrent writers ----------------------------------------------------------------------------------------
def _delete_one(ds: lance.LanceDataset) -> None:
    ds.delete("id = 120")


def _delete_fragment(ds: lance.LanceDataset) -> None:
    ds.delete("id >= 100 AND id < 200")  # all of fragment 1


def _update(ds: lance.LanceDataset) -> None:
    ds.update({"name": "'changed'"}, where="id = 420")


def _pylance_compaction(ds: lance.LanceDataset) -> None:
    ds.optimize.compact_files(target_rows_per_fragment=250)


def _add_column(ds: lance.LanceDataset) -> None:
    ds.add_columns({"doubled": "id * 2"})


CONFLICTS = {
    "delete_row": _delete_one,
    "delete_fragment": _delete_fragment,
    "update": _update,
    "pylance_compaction": _pylance_compaction,
    "add_columns": _add_column,
}


@pytest.mark.parametrize("other", list(CONFLICTS))
def test_conflicting_commit_in_between(copy_five: Callable[[str], Path], other: str) -> None:
    path = copy_five("2.1")
    plan, results = plan_and_execute(path)
    ours = {p.split("/")[-1] for r in results for p in r.files_written}
    assert ours and ours <= listing(path, "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CONFLICTS[other](lance.dataset(str(path)))
    theirs = lance.dataset(str(path))
    their_rows = theirs.to_table().to_pylist()
    digest = {k: v for k, v in tree_digest(path).items() if k.split("/")[-1] not in ours}
    with pytest.raises(CommitConflictError):
        commit_compaction(str(path), plan, results)
    assert not (ours & listing(path, "data"))
    assert tree_digest(path) == digest  # nothing else written: no manifest, no .txn
    after = lance.dataset(str(path))
    assert after.version == theirs.version
    assert after.to_table().to_pylist() == their_rows
    assert after.validate() is None


def test_concurrent_delete_elsewhere_is_rebased(tmp_path: Path) -> None:
    """A delete on a fragment we do not rewrite is kept: our commit lands on top of it."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [30, 40, 500, 20, 10])
    options = CompactionOptions(target_rows_per_fragment=200)
    plan, results = plan_and_execute(path, options)
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1], [3, 4]]
    lance.dataset(str(path)).delete("id IN (100, 200, 300)")  # fragment 2 only
    mid = lance.dataset(str(path))
    report = commit_compaction(str(path), plan, results)
    assert report.version == mid.version + 1 and report.read_version == plan.read_version
    ds = lance.dataset(str(path))
    assert [f.fragment_id for f in ds.get_fragments()] == [2, 5, 6]
    assert ds.get_fragments()[0].metadata.deletion_file is not None
    want = [i for i in range(70, 570) if i not in (100, 200, 300)] + list(range(0, 70)) + list(range(570, 600))
    assert ds.to_table()["id"].to_pylist() == want
    assert ds.validate() is None


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_concurrent_append_is_rebased(copy_five: Callable[[str], Path], version: str) -> None:
    path = copy_five(version)
    plan, results = plan_and_execute(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        appended = lance.write_dataset(factory.simple_table(500, 50), str(path), mode="append")
    (their_id,) = [f.fragment_id for f in appended.get_fragments() if f.fragment_id not in range(5)]
    assert their_id == 5
    report = commit_compaction(str(path), plan, results)
    assert report.read_version == plan.read_version
    assert report.version == appended.version + 1
    ds = lance.dataset(str(path))
    ids = [f.fragment_id for f in ds.get_fragments()]
    assert ids == [5, 6]  # pylance's appended fragment, then ours with an id above it
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [50, 500]
    assert ds.to_table()["id"].to_pylist() == list(range(500, 550)) + list(range(0, 500))
    assert ds.validate() is None
    # and the next pylance append gets an id above every id ever used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = lance.write_dataset(factory.simple_table(550, 5), str(path), mode="append")
    assert max(f.fragment_id for f in again.get_fragments()) == 7
    assert again.count_rows() == 555


def test_concurrent_index_on_rewritten_fragments_conflicts(copy_five: Callable[[str], Path]) -> None:
    """Without stable row ids a new index over our fragments would point at removed rows."""
    path = copy_five("2.1")
    plan, results = plan_and_execute(path)
    lance.dataset(str(path)).create_scalar_index("id", "BTREE")
    theirs = lance.dataset(str(path))
    with pytest.raises(CommitConflictError):
        commit_compaction(str(path), plan, results)
    after = lance.dataset(str(path))
    assert after.version == theirs.version
    assert after.to_table(filter="id = 250")["id"].to_pylist() == [250]


# --- two compactions racing -------------------------------------------------------------------------------
def test_two_compactions_on_disjoint_fragments_both_commit(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [100, 100, 5000, 100, 100])
    first = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=1000, excluded_fragment_ids=frozenset({3, 4})))
    second = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=1000, excluded_fragment_ids=frozenset({0, 1})))
    assert [list(t.fragment_ids) for t in first.tasks] == [[0, 1]]
    assert [list(t.fragment_ids) for t in second.tasks] == [[3, 4]]
    r1 = [execute_task(str(path), first, t) for t in first.tasks]
    r2 = [execute_task(str(path), second, t) for t in second.tasks]
    a = commit_compaction(str(path), first, r1)
    b = commit_compaction(str(path), second, r2)
    assert (a.version, b.version) == (first.read_version + 1, first.read_version + 2)
    ds = lance.dataset(str(path))
    assert [f.fragment_id for f in ds.get_fragments()] == [2, 5, 6]
    assert ds.to_table()["id"].to_pylist() == list(range(200, 5200)) + list(range(0, 200)) + list(range(5200, 5400))
    assert ds.validate() is None


def test_two_compactions_on_the_same_fragments_second_conflicts(copy_five: Callable[[str], Path]) -> None:
    path = copy_five("2.1")
    p1, r1 = plan_and_execute(path)
    p2, r2 = plan_and_execute(path)
    commit_compaction(str(path), p1, r1)
    mine = {p.split("/")[-1] for r in r2 for p in r.files_written}
    digest = {k: v for k, v in tree_digest(path).items() if k.split("/")[-1] not in mine}
    with pytest.raises(CommitConflictError):
        commit_compaction(str(path), p2, r2)
    assert tree_digest(path) == digest
    ds = lance.dataset(str(path))
    assert ds.version == p1.read_version + 1
    assert ds.to_table()["id"].to_pylist() == list(range(500))


def test_many_compactions_committing_at_once(tmp_path: Path) -> None:
    """Eight disjoint compactions commit from eight threads: create-if-absent serialises them."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "ds.lance"
    sizes = []
    for _ in range(8):
        sizes += [10, 10, 5000]
    factory.appends(path, "2.1", sizes)
    want = lance.dataset(str(path)).to_table()["id"].to_pylist()
    plans = []
    for k in range(8):
        keep = {3 * k, 3 * k + 1}
        excluded = frozenset(i for i in range(len(sizes)) if i not in keep)
        plans.append(plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=1000, excluded_fragment_ids=excluded)))
    assert [list(p.tasks[0].fragment_ids) for p in plans] == [[3 * k, 3 * k + 1] for k in range(8)]
    results = [[execute_task(str(path), p, t) for t in p.tasks] for p in plans]
    with ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(lambda pr: commit_compaction(str(path), *pr), zip(plans, results)))
    read = plans[0].read_version
    assert sorted(r.version for r in reports) == list(range(read + 1, read + 9))
    ds = lance.dataset(str(path))
    assert ds.version == read + 8
    ids = [f.fragment_id for f in ds.get_fragments()]
    assert len(ids) == len(set(ids)) == 16
    assert sorted(ds.to_table()["id"].to_pylist()) == sorted(want)
    assert ds.validate() is None


def test_pylance_compaction_of_other_fragments_in_between(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", [100, 100, 5000, 100, 100])
    plan, results = plan_and_execute(
        path, CompactionOptions(target_rows_per_fragment=1000, excluded_fragment_ids=frozenset({3, 4}))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.compact_files(target_rows_per_fragment=1000, excluded_fragment_ids=[0, 1])
    theirs = lance.dataset(str(path))
    (their_new,) = [f.fragment_id for f in theirs.get_fragments() if f.fragment_id > 4]
    report = commit_compaction(str(path), plan, results)
    assert report.version == theirs.version + 1
    ds = lance.dataset(str(path))
    ids = [f.fragment_id for f in ds.get_fragments()]
    assert ids == [2, their_new, their_new + 1]
    assert ds.to_table()["id"].to_pylist() == list(range(200, 5200)) + list(range(5200, 5400)) + list(range(0, 200))
    assert ds.validate() is None


def test_concurrent_append_with_stable_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [100, 50, 30], enable_stable_row_ids=True)
    plan, results = plan_and_execute(path, CompactionOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(factory.simple_table(180, 20), str(path), mode="append")
    commit_compaction(str(path), plan, results)
    ds = lance.dataset(str(path))
    t = ds.to_table(with_row_id=True)
    # appended fragment (id 3) first, then ours (id 4); every row keeps the id it had
    assert t["id"].to_pylist() == list(range(180, 200)) + list(range(180))
    assert t["_rowid"].to_pylist() == t["id"].to_pylist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(factory.simple_table(200, 5), str(path), mode="append")
    t = lance.dataset(str(path)).to_table(with_row_id=True)
    assert sorted(t["_rowid"].to_pylist()) == list(range(205))
