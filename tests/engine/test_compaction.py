"""End-to-end binary-copy compaction, verified by pylance (the oracle), never by our own reader.

For every storage version and dataset shape we compact with ``compact`` and then
ask pylance: are the values the same, in the order Lance itself would put them
(fragments sorted by id, merged groups get new, higher ids); are stable row ids
unchanged; does the old version still read the old data; does ``validate``
pass; can pylance append, delete and compact on top of our version; does each
new data file read on its own; does the report say what happened.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lance
import lance.file
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.compaction import compact, run_plan
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import CompactionPlan, plan_compaction
from lance_assets.engine.report import CompactionReport, RewriteResult
from tests.support import factory
from tests.support.assertions import Before, capture, expected_layout, expected_row_ids, expected_rows, rows, tree_digest

REPORT_KEYS = {
    "read_version",
    "version",
    "fragments_removed",
    "fragments_added",
    "files_removed",
    "files_added",
    "rows",
    "bytes_read",
    "bytes_written",
    "seconds",
    "tasks",
    "skipped",
}


# --- datasets ----------------------------------------------------------------------------------------
def _stable(p: Path, v: str) -> None:
    factory.appends(p, v, [100, 50, 30, 1], enable_stable_row_ids=True)


def _stable_indexed(p: Path, v: str) -> None:
    ds = factory.appends(p, v, [100, 100, 100, 100], enable_stable_row_ids=True)
    ds.create_scalar_index("id", "BTREE")
    factory.write(factory.simple_table(400, 50), p, v)
    factory.write(factory.simple_table(450, 50), p, v)


def _multi_page(p: Path, v: str) -> None:
    """Columns of several pages each (batches of 250 rows, tiny page cache), in unequal fragments."""
    start = 0
    for i, n in enumerate([1000, 700, 1300]):
        t = factory.mixed_table(start, n, v)
        reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=250))
        factory.write(reader, p, v, mode="append" if i else "create", data_cache_bytes=4096, max_page_bytes=4096)
        start += n


# name -> (builder, options for the generic test)
SHAPES: dict[str, tuple[Callable[[Path, str], object], dict[str, Any]]] = {
    "equal": (lambda p, v: factory.appends(p, v, [100, 100, 100, 100]), {}),
    "unequal": (lambda p, v: factory.appends(p, v, [100, 1, 250, 30]), {}),
    "single_rows": (lambda p, v: factory.appends(p, v, [1, 1, 1, 1, 1]), {}),
    # 500 >= target breaks the bins: {0,1} and {3,4} merge, 2 stays and moves to the front
    "large_between": (lambda p, v: factory.appends(p, v, [30, 40, 500, 20, 10]), {"target_rows_per_fragment": 200}),
    "multi_file": (factory.multi_file, {}),
    "reordered": (factory.reordered, {}),
    "dropped_column": (factory.dropped_column, {}),
    "metadata_only_column": (factory.metadata_only_column, {}),
    "stable_row_ids": (_stable, {}),
    "mixed": (lambda p, v: factory.appends(p, v, [40, 60, 25], make=lambda s, n: factory.mixed_table(s, n, v)), {}),
    "multi_page": (_multi_page, {}),
}


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    root = tmp_path_factory.mktemp("compaction-sources")
    built: dict[tuple[str, str], Path] = {}

    def build(name: str, version: str) -> Path:
        if (name, version) not in built:
            path = root / f"{name}-{version}.lance"
            builders = {
                **{k: b for k, (b, _) in SHAPES.items()},
                "stable_indexed": _stable_indexed,
                "five_100": lambda p, v: factory.appends(p, v, [100] * 5),
                "big_middle": lambda p, v: factory.appends(p, v, [100, 300, 100, 100]),
                "two_bins": lambda p, v: factory.appends(p, v, [100, 100, 100, 5000, 100, 100, 100]),
            }
            builders[name](path, version)
            built[(name, version)] = path
        return built[(name, version)]

    return build


@pytest.fixture
def copy_of(sources: Callable[[str, str], Path], tmp_path: Path) -> Callable[[str, str], Path]:
    def copy(name: str, version: str) -> Path:
        dst = tmp_path / f"{name}-{version}-{len(list(tmp_path.iterdir()))}.lance"
        shutil.copytree(sources(name, version), dst)
        return dst

    return copy


# --- helpers -----------------------------------------------------------------------------------------


def multiset(table: pa.Table) -> list[str]:
    return sorted(map(repr, table.to_pylist()))


def check_after(path: Path, before: Before, plan: CompactionPlan, report: CompactionReport) -> lance.LanceDataset:
    """Everything pylance must agree with after ``report`` committed ``plan``."""
    assert plan.tasks, "the case must compact something"
    ds = lance.dataset(str(path))
    unmerged, outputs = expected_layout(before, plan)
    new_ids = list(range(before.max_fragment_id + 1, before.max_fragment_id + 1 + len(outputs)))

    # version and fragment layout
    assert report.version == before.version + 1 == ds.version
    frags = ds.get_fragments()
    assert [f.fragment_id for f in frags] == unmerged + new_ids
    by_id = {f.fragment_id: f for f in frags}
    for fid, inputs in zip(new_ids, outputs):
        meta = by_id[fid].metadata
        assert meta.physical_rows == sum(before.tables[i].num_rows for i in inputs)
        assert len(meta.files) == 1 and meta.deletion_file is None
        data_file = path / "data" / meta.files[0].path
        assert data_file.stat().st_size == meta.files[0].file_size_bytes
        want_version = (0, 2) if plan.storage_version == "legacy" else tuple(map(int, plan.storage_version.split(".")))
        assert (meta.files[0].file_major_version, meta.files[0].file_minor_version) == want_version
        # the fragment alone reads the concatenation of its inputs
        got = by_id[fid].to_table()
        assert rows(got) == [r for i in inputs for r in rows(before.tables[i])]
        if plan.storage_version != "legacy":  # pylance's file reader reads v2 files only
            # the new file read standalone, without the manifest, holds the same rows
            standalone = lance.file.LanceFileReader(str(data_file)).read_all().to_table()
            assert standalone.num_rows == meta.physical_rows
            assert set(standalone.column_names) <= set(got.column_names)
            assert rows(standalone) == rows(got.select(standalone.column_names))
    for fid in unmerged:
        assert rows(by_id[fid].to_table()) == rows(before.tables[fid])

    # values, in Lance's order, and row counts
    after = ds.to_table()
    assert after.schema.names == before.table.schema.names
    assert rows(after) == expected_rows(before, plan)
    assert ds.count_rows() == before.table.num_rows
    # random access (takes and ranges), which uses page row positions rather than a full scan
    want = expected_rows(before, plan)
    n = len(want)
    picks = sorted({0, n - 1, n // 2, *range(0, n, max(1, n // 37)), *(i for i in range(1, n) if i % 97 == 1)})
    assert rows(ds.take(picks)) == [want[i] for i in picks]
    assert rows(ds.take(picks[::-1])) == [want[i] for i in picks[::-1]]
    for offset, limit in ((0, 1), (n // 3, 17), (max(0, n - 5), 5)):
        assert rows(ds.to_table(offset=offset, limit=limit)) == want[offset : offset + limit]
    if before.stable:
        assert ds.to_table(with_row_id=True)["_rowid"].to_pylist() == expected_row_ids(before, plan)
    assert ds.validate() is None

    # pylance reads our transaction: one Rewrite group per task, on our read version
    (txn,) = ds.get_transactions(1)
    assert txn.read_version == before.version
    groups = txn.operation.groups
    assert [[f.id for f in g.old_fragments] for g in groups] == [list(t.fragment_ids) for t in plan.tasks]
    assert [f.id for g in groups for f in g.new_fragments] == new_ids

    # the transaction file and the version hint a pylance reader starts from
    ours = Dataset.open(str(path))
    assert ours.version == ds.version
    txn_file = path / "_transactions" / ours.manifest.transaction_file
    assert ours.manifest.transaction_file.startswith(f"{before.version}-") and txn_file.is_file()
    assert txn_file.read_bytes() == ours.file.transaction.SerializeToString()
    assert json.loads((path / "_versions" / "latest_version_hint.json").read_text()) == {"version": ds.version}

    # the old version is untouched
    old = lance.dataset(str(path), version=before.version)
    assert rows(old.to_table()) == rows(before.table)
    assert [f.fragment_id for f in old.get_fragments()] == before.fragment_ids

    # the report
    d = report.to_dict()
    assert d.keys() >= REPORT_KEYS
    json.dumps(d)
    removed = [i for t in plan.tasks for i in t.fragment_ids]
    assert d["read_version"] == before.version
    assert d["version"] == before.version + 1
    assert d["fragments_removed"] == len(removed)
    assert d["fragments_added"] == len(outputs)
    assert d["files_removed"] == sum(before.files[i] for i in removed)
    assert d["files_added"] == len(outputs)
    assert d["rows"] == sum(before.tables[i].num_rows for i in removed)
    assert d["bytes_written"] == sum((path / "data" / by_id[f].metadata.files[0].path).stat().st_size for f in new_ids)
    assert 0 < d["bytes_read"] <= sum(before.file_bytes[i] for i in removed)
    assert d["seconds"] >= 0
    assert d["tasks"] == len(plan.tasks)
    assert d["skipped"] == [{"fragment_id": s.fragment_id, "reason": s.reason, "detail": s.detail} for s in plan.skipped]
    assert d.get("tasks_skipped", 0) == 0
    return ds


def run_and_check(path: Path, options: CompactionOptions) -> tuple[CompactionPlan, CompactionReport, lance.LanceDataset, Before]:
    before = capture(path)
    plan = plan_compaction(str(path), options)
    report = compact(str(path), options)
    ds = check_after(path, before, plan, report)
    return plan, report, ds, before


def pylance_keeps_working(path: Path, before: Before) -> None:
    """pylance cleans up, appends, deletes and compacts on top of our version; the data stays right."""
    ds = lance.dataset(str(path))
    current = ds.to_table()
    live = {df.path for f in ds.get_fragments() for df in f.metadata.files}
    ds.cleanup_old_versions(older_than=timedelta(0), delete_unverified=True)
    ds = lance.dataset(str(path))
    assert {p.name for p in (path / "data").iterdir()} == live  # inputs gone, our outputs kept
    assert rows(ds.to_table()) == rows(current)
    assert ds.validate() is None
    extra = current.slice(0, min(5, current.num_rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = lance.write_dataset(extra, str(path), mode="append")
    expected = pa.concat_tables([current, extra])
    assert ds.count_rows() == expected.num_rows
    assert rows(ds.to_table()) == rows(expected)

    ids = current["id"].to_pylist()
    victims = sorted(set(ids[:: max(1, len(ids) // 4)]))  # rows spread over old and new fragments
    ds.delete(f"id IN ({', '.join(map(str, victims))})")
    keep = pc.invert(pc.is_in(expected["id"], pa.array(victims, pa.int64())))
    expected = expected.filter(keep)
    ds = lance.dataset(str(path))
    assert rows(ds.to_table()) == rows(expected)
    assert ds.validate() is None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.optimize.compact_files()
    ds = lance.dataset(str(path))
    assert ds.validate() is None
    assert multiset(ds.to_table()) == multiset(expected)
    if before.stable:
        # original rows keep their stable ids through pylance's own compaction too
        t = ds.to_table(with_row_id=True, columns=["id"])
        original = {
            i: r for fid in before.fragment_ids for i, r in zip(before.tables[fid]["id"].to_pylist(), before.row_ids[fid])
        }
        seen = {}
        for i, r in zip(t["id"].to_pylist(), t["_rowid"].to_pylist()):
            seen.setdefault(i, set()).add(r)
        for i, rs in seen.items():
            if i in original:
                assert original[i] in rs


# --- every storage version x shape ---------------------------------------------------------------------
@pytest.mark.parametrize("version", factory.V2_VERSIONS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_compact_shape(copy_of: Callable[[str, str], Path], shape: str, version: str) -> None:
    path = copy_of(shape, version)
    options = CompactionOptions(**SHAPES[shape][1])
    _plan, _report, ds, before = run_and_check(path, options)
    if shape == "large_between":
        # the large fragment keeps its id and now comes first
        assert [f.fragment_id for f in ds.get_fragments()] == [2, 5, 6]
    else:
        assert len(ds.get_fragments()) == 1
    pylance_keeps_working(path, before)


def test_thousand_single_row_fragments(tmp_path: Path) -> None:
    path = tmp_path / "tiny.lance"
    table = factory.simple_table(0, 1200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(table, str(path), max_rows_per_file=1, data_storage_version="2.1")
    assert len(lance.dataset(str(path)).get_fragments()) == 1200
    started = time.monotonic()
    _plan, report, ds, _ = run_and_check(path, CompactionOptions())
    assert time.monotonic() - started < 20
    assert len(ds.get_fragments()) == 1
    assert report.fragments_removed == 1200
    assert rows(ds.to_table()) == rows(table)


def _stable_vector_indexed(p: Path, v: str) -> None:
    ds = factory.appends(p, v, [300, 300, 300], make=_vectors, enable_stable_row_ids=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_PQ", num_partitions=2, num_sub_vectors=2)
    factory.write(_vectors(900, 100), p, v)


def _vectors(start: int, n: int) -> pa.Table:
    import numpy as np

    vecs = np.random.default_rng(start).standard_normal((n, 16), dtype=np.float32)
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 16),
        }
    )


def test_stable_row_ids_with_scalar_index(copy_of: Callable[[str, str], Path]) -> None:
    """Indexed fragments of a stable-row-id dataset are compacted; queries stay right.

    pylance 14's BTree stores row *addresses* even with stable row ids, so the
    rewritten fragments must come out of the index's fragment bitmap (pylance
    then scans them) rather than being named in it (pylance would trust stale
    addresses and find nothing). This is what the commit does before the default
    (``index_remap="defer"``) re-indexes with pylance (tests/engine/test_indices.py); "drop" stops there.
    """
    path = copy_of("stable_indexed", "2.1")
    plan, _report, ds, before = run_and_check(path, CompactionOptions(index_remap="drop"))
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1, 2, 3], [4, 5]]
    assert [f.fragment_id for f in ds.get_fragments()] == [6, 7]
    (index,) = ds.describe_indices()
    assert index.num_rows_indexed == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds.stats.index_stats(index.name)["num_unindexed_rows"] == 500

    def queries_right(ds: lance.LanceDataset) -> None:
        for value in (0, 123, 399, 400, 499):
            got = ds.to_table(filter=f"id = {value}", with_row_id=True)
            assert got["id"].to_pylist() == [value]
            assert got["_rowid"].to_pylist() == [value]
        assert ds.to_table(filter="id >= 390 AND id < 410")["id"].to_pylist() == list(range(390, 410))

    queries_right(ds)
    ds.optimize.optimize_indices()
    ds = lance.dataset(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds.stats.index_stats(index.name)["num_indexed_rows"] == 500
    queries_right(ds)
    pylance_keeps_working(path, before)


def test_stable_row_ids_with_vector_index(tmp_path: Path) -> None:
    path = tmp_path / "vec.lance"
    _stable_vector_indexed(path, "2.1")
    ds = lance.dataset(str(path))
    probes = _vectors(0, 900)["vec"].to_pylist()[::150]
    exact = [ds.to_table(nearest={"column": "vec", "q": q, "k": 3, "use_index": False})["id"].to_pylist() for q in probes]
    plan, _report, ds, _ = run_and_check(path, CompactionOptions(index_remap="drop"))
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1, 2]]
    for q, want in zip(probes, exact):
        got = ds.to_table(nearest={"column": "vec", "q": q, "k": 3})["id"].to_pylist()
        assert got[0] == want[0]  # each probe is a stored vector: the index must find itself
        assert ds.to_table(nearest={"column": "vec", "q": q, "k": 3, "use_index": False})["id"].to_pylist() == want


# --- options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_target_rows_leaves_no_remainder_file_below_target(copy_of: Callable[[str, str], Path], version: str) -> None:
    path = copy_of("five_100", version)
    plan, report, ds, _ = run_and_check(path, CompactionOptions(target_rows_per_fragment=250))
    assert [(list(o.fragment_ids), o.rows) for t in plan.tasks for o in t.outputs] == [([0, 1, 2, 3, 4], 500)]
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [500]
    assert report.fragments_added == 1


def test_max_rows_per_file(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("five_100", "2.1")
    plan, _, ds, _ = run_and_check(path, CompactionOptions(max_rows_per_file=250))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1], [2, 3]]  # 4 alone gains nothing
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [100, 200, 200]


def test_max_rows_per_file_exceeded_only_by_one_larger_input(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("big_middle", "2.2")  # 100, 300, 100, 100
    plan, _, ds, _ = run_and_check(path, CompactionOptions(max_rows_per_file=250))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[2, 3]]
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [100, 300, 200]


def test_max_bytes_per_file(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("five_100", "2.1")
    sizes = [f.metadata.files[0].file_size_bytes for f in lance.dataset(str(path)).get_fragments()]
    cap = sizes[0] + sizes[1] + sizes[2] // 2
    plan, _, ds, _ = run_and_check(path, CompactionOptions(max_bytes_per_file=cap))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1], [2, 3]]  # 4 alone gains nothing
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [100, 200, 200]
    # one input larger than the cap on its own is still copied, alone
    path = copy_of("big_middle", "2.1")
    sizes = [f.metadata.files[0].file_size_bytes for f in lance.dataset(str(path)).get_fragments()]
    cap = sizes[2] + sizes[3]
    assert sizes[1] > cap
    plan, _, ds, _ = run_and_check(path, CompactionOptions(max_bytes_per_file=cap))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[2, 3]]


def test_max_source_fragments(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("two_bins", "2.1")  # 100,100,100 | 5000 | 100,100,100
    plan, _, ds, _ = run_and_check(path, CompactionOptions(target_rows_per_fragment=1000, max_source_fragments=4))
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1, 2]]
    assert {s.fragment_id: s.reason for s in plan.skipped} == {
        3: "at_target_size",
        4: "max_source_fragments",
        5: "max_source_fragments",
        6: "max_source_fragments",
    }
    assert [f.fragment_id for f in ds.get_fragments()] == [3, 4, 5, 6, 7]


def test_excluded_fragment_ids(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("equal", "2.0")  # 4 x 100
    plan, _, ds, _ = run_and_check(path, CompactionOptions(excluded_fragment_ids=frozenset({1})))
    # 0 is alone before the excluded fragment; 2 and 3 merge
    assert [list(t.fragment_ids) for t in plan.tasks] == [[2, 3]]
    assert {s.fragment_id: s.reason for s in plan.skipped} == {0: "no_neighbour", 1: "excluded"}
    assert [f.fragment_id for f in ds.get_fragments()] == [0, 1, 4]


@pytest.mark.parametrize("version", ["2.0", "2.2"])
def test_tiny_read_batches_give_identical_files(copy_of: Callable[[str, str], Path], version: str) -> None:
    a, b = copy_of("mixed", version), copy_of("mixed", version)
    compact(str(a), CompactionOptions())
    _, _, ds_b, _ = run_and_check(b, CompactionOptions(read_batch_bytes=1000))
    ds_a = lance.dataset(str(a))
    assert rows(ds_a.to_table()) == rows(ds_b.to_table())
    files_a = [(a / "data" / df.path).read_bytes() for f in ds_a.get_fragments() for df in f.metadata.files]
    files_b = [(b / "data" / df.path).read_bytes() for f in ds_b.get_fragments() for df in f.metadata.files]
    assert files_a == files_b


def test_dry_run_changes_nothing(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("unequal", "2.1")
    digest = tree_digest(path)
    options = CompactionOptions(dry_run=True)
    report = compact(str(path), options)
    assert tree_digest(path) == digest
    assert report.dry_run and report.version is None
    plan = plan_compaction(str(path), CompactionOptions())
    assert report.plan == {**plan.to_dict(), "options": options.to_dict()}
    assert report.tasks == len(plan.tasks) == 1
    assert report.fragments_removed == 4 and report.fragments_added == 1
    assert report.bytes_read == plan.bytes_to_read
    assert report.to_dict().keys() >= REPORT_KEYS
    assert lance.dataset(str(path)).version == report.read_version


def test_nothing_to_do(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("equal", "2.1")
    compact(str(path), CompactionOptions())
    digest = tree_digest(path)
    report = compact(str(path), CompactionOptions())
    assert report.version is None and report.tasks == 0
    assert [(s.fragment_id, s.reason) for s in report.skipped] == [(4, "no_neighbour")]
    assert tree_digest(path) == digest


# --- the distributed API -------------------------------------------------------------------------------
def _execute_in_child(uri: str, plan_json: str, task_index: int) -> dict[str, Any]:
    plan = CompactionPlan.from_dict(json.loads(plan_json))
    return execute_task(uri, plan, plan.tasks[task_index]).to_dict()


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_distributed_api_in_other_processes(copy_of: Callable[[str, str], Path], version: str) -> None:
    one, dist = copy_of("two_bins", version), copy_of("two_bins", version)
    options = CompactionOptions(target_rows_per_fragment=1000)
    compact(str(one), options)

    before = capture(dist)
    plan = plan_compaction(str(dist), options)
    assert len(plan.tasks) == 2
    plan_json = plan.to_json()
    shipped = CompactionPlan.from_dict(json.loads(plan_json))
    assert shipped == plan
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        dicts = pool.starmap(_execute_in_child, [(str(dist), plan_json, i) for i in range(len(shipped.tasks))])
    assert lance.dataset(str(dist)).version == before.version  # tasks commit nothing
    results = [RewriteResult.from_dict(json.loads(json.dumps(d))) for d in dicts]
    assert all(r.ok for r in results)
    assert [r.task_id for r in results] == [0, 1]
    report = commit_compaction(str(dist), shipped, results)
    check_after(dist, before, plan, report)
    a, b = lance.dataset(str(one)), lance.dataset(str(dist))
    assert rows(a.to_table()) == rows(b.to_table())
    assert [(f.fragment_id, f.metadata.physical_rows) for f in a.get_fragments()] == [
        (f.fragment_id, f.metadata.physical_rows) for f in b.get_fragments()
    ]


# --- more dataset states ---------------------------------------------------------------------------------
def _v1_names(p: Path, v: str) -> None:
    factory.appends(p, v, [100, 50, 30], enable_v2_manifest_paths=False)


def _with_config(p: Path, v: str) -> None:
    ds = factory.appends(p, v, [100, 50, 30])
    ds.update_config({"owner": "tests", "lance.compaction.target_rows_per_fragment": "1000000"})


def _multi_file_drop_added(p: Path, v: str) -> None:
    ds = factory.multi_file(p, v)
    ds.drop_columns(["doubled"])  # the second data file of every fragment now holds only a dropped field


def _multi_file_drop_base(p: Path, v: str) -> None:
    ds = factory.multi_file(p, v)
    ds.drop_columns(["value"])


def _renamed(p: Path, v: str) -> None:
    ds = factory.appends(p, v, [100, 50, 30])
    ds.alter_columns({"path": "name", "name": "label"})


def _mixed(v: str) -> Callable[[int, int], pa.Table]:
    return lambda s, n: factory.mixed_table(s, n, v)


def _after_pylance(mode: str) -> Callable[[Path, str], None]:
    """Inputs that pylance's own compaction wrote (binary copy or re-encode), plus fresh appends."""

    def build(p: Path, v: str) -> None:
        ds = factory.appends(p, v, [40, 40, 40, 40], make=_mixed(v))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.optimize.compact_files(target_rows_per_fragment=80, compaction_mode=mode)
        assert len(lance.dataset(str(p)).get_fragments()) == 2
        for start in (160, 190):
            factory.write(factory.mixed_table(start, 30, v), p, v)

    return build


def _after_ours(p: Path, v: str) -> None:
    """Second generation: our own output file is an input again."""
    factory.appends(p, v, [40, 60, 25], make=_mixed(v))
    compact(str(p), CompactionOptions())
    for start in (125, 150):
        factory.write(factory.mixed_table(start, 25, v), p, v)


def _mixed_dropped(p: Path, v: str) -> None:
    """Mixed types with columns dropped: only some columns' extents are copied (all-null pages too)."""
    ds = factory.appends(p, v, [40, 60, 25], make=_mixed(v))
    ds.drop_columns(["s", "lst", "st"])


def _multi_page_dropped(p: Path, v: str) -> None:
    _multi_page(p, v)
    lance.dataset(str(p)).drop_columns(["i8", "vec", "dec"])


MORE = {
    "mixed_dropped": _mixed_dropped,
    "multi_page_dropped": _multi_page_dropped,
    "after_pylance_binary_copy": _after_pylance("force_binary_copy"),
    "after_pylance_reencode": _after_pylance("reencode"),
    "after_our_compaction": _after_ours,
    "v1_manifest_names": _v1_names,
    "table_config": _with_config,
    "multi_file_drop_added": _multi_file_drop_added,
    "multi_file_drop_base": _multi_file_drop_base,
    "renamed_column": _renamed,
}


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
@pytest.mark.parametrize("state", list(MORE))
def test_more_dataset_states(tmp_path: Path, state: str, version: str) -> None:
    path = tmp_path / "ds.lance"
    MORE[state](path, version)
    before_config = lance.dataset(str(path)).config()
    _, _, ds, before = run_and_check(path, CompactionOptions())
    assert len(ds.get_fragments()) == 1
    assert ds.config() == before_config
    if state == "v1_manifest_names":
        names = sorted(p.name for p in (path / "_versions").iterdir() if p.name.endswith(".manifest"))
        assert f"{ds.version}.manifest" in names and all(len(n) < 20 for n in names)
    pylance_keeps_working(path, before)


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
@pytest.mark.parametrize("shape", ["equal", "mixed", "multi_page", "stable_row_ids"])
def test_pylance_binary_copy_accepts_our_files(copy_of: Callable[[str, str], Path], shape: str, version: str) -> None:
    """Our output files pass every check of pylance's own binary copy (``compaction_mode="force_binary_copy"``) and merge again."""
    path = copy_of(shape, version)
    compact(str(path), CompactionOptions())
    ds = lance.dataset(str(path))
    extra = ds.to_table().slice(0, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = lance.write_dataset(extra, str(path), mode="append")
        want = rows(ds.to_table())
        metrics = ds.optimize.compact_files(compaction_mode="force_binary_copy")
    assert metrics.fragments_removed == 2 and metrics.fragments_added == 1
    ds = lance.dataset(str(path))
    assert rows(ds.to_table()) == want
    assert ds.validate() is None


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_index_remap_drop_leaves_rewritten_fragments_unindexed(tmp_path: Path, version: str) -> None:
    """``index_remap="drop"``: the rewritten fragments leave the index bitmap, queries stay exact."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, version, [100, 100, 100])
    ds.create_scalar_index("id", "BTREE")
    factory.write(factory.simple_table(300, 50), path, version)
    factory.write(factory.simple_table(350, 50), path, version)
    queries = ["id = 0", "id = 150", "id = 299", "id >= 290 AND id < 310", "id = 399", "id > 1000"]
    before = {q: sorted(lance.dataset(str(path)).to_table(filter=q)["id"].to_pylist()) for q in queries}
    plan, _, ds, _ = run_and_check(path, CompactionOptions(index_remap="drop"))
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1, 2], [3, 4]]
    assert [f.fragment_id for f in ds.get_fragments()] == [5, 6]
    (index,) = ds.describe_indices()
    assert index.num_rows_indexed == 0  # the old fragments are gone, the new ones not yet indexed
    assert {q: sorted(ds.to_table(filter=q)["id"].to_pylist()) for q in queries} == before
    ds.optimize.optimize_indices()
    ds = lance.dataset(str(path))
    assert ds.describe_indices()[0].num_rows_indexed == 400
    assert {q: sorted(ds.to_table(filter=q)["id"].to_pylist()) for q in queries} == before


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_vector_index_without_stable_row_ids_matches_flat_search(tmp_path: Path, version: str) -> None:
    """Nearest-neighbour queries after compaction agree with a flat search at least as well as before."""
    import numpy as np

    path = tmp_path / "vec.lance"
    ds = factory.vector_index(path, version)
    rng = np.random.default_rng(7)
    queries = [rng.standard_normal(16).astype("float32") for _ in range(5)]

    def recall(d: lance.LanceDataset) -> list[float]:
        out = []
        for q in queries:
            flat = set(d.to_table(nearest={"column": "vec", "q": q, "k": 10, "use_index": False})["id"].to_pylist())
            hits = set(d.to_table(nearest={"column": "vec", "q": q, "k": 10})["id"].to_pylist())
            out.append(len(flat & hits) / 10)
        return out

    before = recall(ds)
    flat_before = [
        sorted(ds.to_table(nearest={"column": "vec", "q": q, "k": 10, "use_index": False})["id"].to_pylist()) for q in queries
    ]
    report = compact(str(path), CompactionOptions(index_remap="drop"))
    assert report.fragments_removed == 3
    ds = lance.dataset(str(path))
    assert [
        sorted(ds.to_table(nearest={"column": "vec", "q": q, "k": 10, "use_index": False})["id"].to_pylist()) for q in queries
    ] == flat_before
    after = recall(ds)
    assert all(a >= b for a, b in zip(after, before))
    ds.optimize.optimize_indices()
    assert lance.dataset(str(path)).describe_indices()[0].num_rows_indexed == 900


def test_sizes_missing_from_the_manifest(tmp_path: Path) -> None:
    """``file_size_bytes`` 0 (older writers) means unknown: sizes are looked up, outputs record theirs."""
    from lance_assets.format import manifest as mf

    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", [100, 1, 250, 30])
    target = path / Dataset.open(str(path)).location.rel_path
    parsed = mf.parse_manifest_file(target.read_bytes())
    for frag in parsed.manifest.fragments:
        for df in frag.files:
            df.file_size_bytes = 0
    target.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))
    _, _report, ds, _ = run_and_check(path, CompactionOptions())
    (frag,) = ds.get_fragments()
    assert frag.metadata.files[0].file_size_bytes == (path / "data" / frag.metadata.files[0].path).stat().st_size > 0


@pytest.mark.parametrize("form", ["file_url", "trailing_slash", "relative"])
def test_uri_forms(tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [10, 20, 30])
    monkeypatch.chdir(tmp_path)
    uri = {"file_url": path.as_uri(), "trailing_slash": f"{path}/", "relative": "ds.lance"}[form]
    before = capture(path)
    plan = plan_compaction(uri, CompactionOptions())
    report = compact(uri, CompactionOptions())
    check_after(path, before, plan, report)


def test_byte_cap_with_sizes_missing_from_the_manifest(tmp_path: Path) -> None:
    from lance_assets.format import manifest as mf

    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [100] * 5)
    sizes = [f.metadata.files[0].file_size_bytes for f in lance.dataset(str(path)).get_fragments()]
    target = path / Dataset.open(str(path)).location.rel_path
    parsed = mf.parse_manifest_file(target.read_bytes())
    for frag in parsed.manifest.fragments:
        frag.files[0].file_size_bytes = 0
    target.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))
    cap = sizes[0] + sizes[1] + sizes[2] // 2
    plan = plan_compaction(str(path), CompactionOptions(max_bytes_per_file=cap))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    "shape,version,target,reasons",
    [
        ("blob", "legacy", 1_000_000, {"blob_column"}),
        ("deletes_arrow", "2.2", 10, {"at_target_size"}),
        ("stable_row_ids", "2.1", 10, {"at_target_size"}),
    ],
)
def test_nothing_to_compact_leaves_the_dataset_untouched(
    dataset_copy: Callable[[str, str], Path], shape: str, version: str, target: int, reasons: set[str]
) -> None:
    path = dataset_copy(shape, version)
    digest = tree_digest(path)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=target))
    assert report.version is None and report.tasks == 0 and report.fragments_removed == 0
    assert {s.reason for s in report.skipped} == reasons
    assert len(report.skipped) == len(lance.dataset(str(path)).get_fragments())
    assert tree_digest(path) == digest


# --- legacy (0.x) datasets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ["simple", "mixed"])
def test_legacy_whole_batches(tmp_path: Path, make: str) -> None:
    """Legacy inputs of whole 1024-row batches (the legacy group size) merge and read back."""
    path = tmp_path / "legacy.lance"
    maker = factory.simple_table if make == "simple" else (lambda s, n: factory.mixed_table(s, n, "legacy"))
    factory.appends(path, "legacy", [1024, 1024, 300], make=maker)
    _, _report, ds, before = run_and_check(path, CompactionOptions())
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [2348]
    pylance_keeps_working(path, before)


def test_legacy_appends_merge_into_one(dataset_copy: Callable[[str, str], Path]) -> None:
    """100, 1, 250, 30 rows (one batch each): one legacy file, its batches re-cut to one size."""
    path = dataset_copy("appends", "legacy")
    plan, report, ds, _ = run_and_check(path, CompactionOptions(reencode_fallback=False))
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1, 2, 3]]
    assert report.tasks == 1 and report.tasks_skipped == 0 and len(ds.get_fragments()) == 1


def test_one_task_refused_the_other_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task the copier refuses is reported and leaves no file; the other tasks still commit."""
    import lance_assets.engine.copying.copy_legacy as copy_legacy
    from lance_assets.errors import CompactionRefusedError

    def refuse(*args: Any) -> None:
        raise CompactionRefusedError("refused by the test")

    path = tmp_path / "legacy.lance"
    factory.appends(path, "legacy", [1, 100, 3000, 1024, 1024])
    before = capture(path)
    data_before = {p.name for p in (path / "data").iterdir()}
    options = CompactionOptions(target_rows_per_fragment=2000, reencode_fallback=False)
    plan = plan_compaction(str(path), options)
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1], [3, 4]]
    # batches of 1 and 100 rows need re-cutting (1024 + 1024 do not): refuse that, mid-write
    monkeypatch.setattr(copy_legacy, "Repager", refuse)
    report = run_plan(plan)
    assert report.version == before.version + 1
    assert report.tasks == 1 and report.tasks_skipped == 1
    assert report.fragments_removed == 2 and report.fragments_added == 1
    assert {s.fragment_id: s.reason for s in report.skipped} == {0: "not_copyable", 1: "not_copyable", 2: "at_target_size"}
    ds = lance.dataset(str(path))
    assert [f.fragment_id for f in ds.get_fragments()] == [0, 1, 2, 5]  # ids go to committed outputs only
    new = {p.name for p in (path / "data").iterdir()} - data_before
    assert new == {ds.get_fragments()[-1].metadata.files[0].path}
    assert rows(ds.to_table()) == [r for i in (0, 1, 2, 3, 4) for r in rows(before.tables[i])]


def test_pylance_restores_the_version_before_ours(copy_of: Callable[[str, str], Path]) -> None:
    path = copy_of("mixed", "2.1")
    before = capture(path)
    compact(str(path), CompactionOptions())
    ds = lance.dataset(str(path), version=before.version)
    ds.restore()
    ds = lance.dataset(str(path))
    assert ds.version == before.version + 2
    assert [f.fragment_id for f in ds.get_fragments()] == before.fragment_ids
    assert rows(ds.to_table()) == rows(before.table)
    # and we can compact again on top of the restore
    _plan, _report, ds, _ = run_and_check(path, CompactionOptions())
    assert [f.fragment_id for f in ds.get_fragments()] == [before.max_fragment_id + 2]


@pytest.mark.parametrize("dry_run", [False, True])
def test_on_plan_sees_the_plan_before_anything_is_copied(tmp_path: Path, dry_run: bool) -> None:
    """The hook a progress display sizes itself with: called once, with the plan that is then
    run, while the dataset is still as it was."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [5, 6, 7, 8])
    digest = tree_digest(path)
    seen: list[tuple[CompactionPlan, dict[str, str]]] = []
    done: list[RewriteResult] = []
    report = compact(
        str(path),
        CompactionOptions(dry_run=dry_run),
        on_plan=lambda p: seen.append((p, tree_digest(path))),
        on_task_done=done.append,
    )
    assert len(seen) == 1
    plan, at_plan = seen[0]
    assert at_plan == digest
    assert plan.read_version == report.read_version and len(plan.tasks) == report.tasks == 1
    if dry_run:
        assert plan.bytes_to_read == report.bytes_read
    assert [r.task_id for r in done] == ([] if dry_run else [t.task_id for t in plan.tasks])
    assert lance.dataset(str(path)).to_table().to_pylist() == factory.simple_table(0, 26).to_pylist()
