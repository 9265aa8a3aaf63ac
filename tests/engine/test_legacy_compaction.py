"""Binary-copy compaction of legacy (0.x) datasets, verified by pylance (the oracle).

pylance 14 refuses binary copy for legacy datasets; we concatenate the inputs' batches, shift
the absolute positions of var-binary pages, rebuild page table, batch offsets and embedded
schema, and drop the page statistics. Every check below asks pylance: same values in Lance's
order, counts, filters (pylance's legacy pushdown scan, which uses page statistics and locates
batch i at row ``i * rows_in_batch(0)``), takes, ranges, the old version, and pylance's own
append / delete / compact_files on top of our version.
"""

from __future__ import annotations

import datetime
import decimal
import os
import random
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets._proto import table_pb2
from lance_assets.engine.compaction import compact
from lance_assets.engine.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.plan import CompactionPlan, CompactionTask, OutputFile, plan_compaction
from lance_assets.errors import CorruptFileError
from lance_assets.format import manifest as mf
from lance_assets.format.legacy import LegacyEncoding, field_layouts, parse_file
from tests.support import factory
from tests.support.assertions import Before, capture, expected_layout, expected_row_ids, expected_rows, rows, tree_digest

lance = pytest.importorskip("lance")

GROUP = 7  # max_rows_per_group: files of several batches


def legacy_table(start: int, n: int) -> pa.Table:
    """Every type the legacy format stores (no dictionary: see the refusal tests), with nulls."""
    r = range(start, start + n)
    return pa.table(
        {
            "id": pa.array(list(r), pa.int64()),
            "i8": pa.array([None if i % 7 == 3 else i % 100 for i in r], pa.int8()),
            "i16": pa.array([i - 50 for i in r], pa.int16()),
            "u32": pa.array(list(r), pa.uint32()),
            "u64": pa.array([2**63 + i for i in r], pa.uint64()),
            "f16": pa.array(np.arange(start, start + n, dtype=np.float16)),
            "f32": pa.array([i * 0.5 for i in r], pa.float32()),
            "f64": pa.array([None if i % 5 == 1 else i * 0.25 for i in r], pa.float64()),
            "flag": pa.array([i % 3 == 0 for i in r]),
            "s": pa.array([None if i % 7 == 3 else f"str{i}" * (1 + i % 4) for i in r]),
            "ls": pa.array([f"L{i}" * (i % 3) for i in r], pa.large_string()),
            "bin": pa.array([bytes([i % 256]) * (1 + i % 5) for i in r], pa.binary()),
            "lbin": pa.array([bytes([i % 256]) * (i % 4) for i in r], pa.large_binary()),
            "fsb": pa.array([bytes([i % 256]) * 4 for i in r], pa.binary(4)),
            "ts": pa.array([datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=i) for i in r], pa.timestamp("us")),
            "tstz": pa.array(list(r), pa.timestamp("ms", tz="UTC")),
            "day": pa.array([datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in r], pa.date32()),
            "d64": pa.array([datetime.datetime(2020, 1, 1) + datetime.timedelta(days=i) for i in r], pa.date64()),
            "t32": pa.array([i * 1000 for i in r], pa.time32("ms")),
            "t64": pa.array([i * 1000 for i in r], pa.time64("us")),
            "dur": pa.array(list(r), pa.duration("s")),
            "dec": pa.array([decimal.Decimal(i) / 100 for i in r], pa.decimal128(10, 2)),
            "d256": pa.array([decimal.Decimal(i) / 100 for i in r], pa.decimal256(40, 2)),
            "nul": pa.array([None] * n, pa.null()),
            "l": pa.array([[i] * (i % 3) for i in r], pa.list_(pa.int32())),
            "lb": pa.array([[i % 2 == 0] * (i % 4) for i in r], pa.list_(pa.bool_())),
            "ll": pa.array([[f"x{i}"] * (i % 2) for i in r], pa.large_list(pa.string())),
            "fsl": pa.array([[float(i) + k for k in range(8)] for i in r], pa.list_(pa.float32(), 8)),
            "fsl2": pa.array([[[i, i + 1], [i + 2, i + 3]] for i in r], pa.list_(pa.list_(pa.int32(), 2), 2)),
            "st": pa.array([{"a": i, "b": f"n{i}", "c": {"z": float(i)}} for i in r]),
            "st_l": pa.array([{"x": [i] * (i % 3)} for i in r], pa.struct([("x", pa.list_(pa.int64()))])),
            "l_st": pa.array([[{"p": i, "q": f"q{i}"}] * (i % 2) for i in r], pa.list_(pa.struct([("p", pa.int64()), ("q", pa.string())]))),
        }
    )


def dict_table(start: int, n: int) -> pa.Table:
    r = range(start, start + n)
    colors = pa.array(["red", "green", "blue"])
    return pa.table({"id": pa.array(list(r), pa.int64()), "color": pa.DictionaryArray.from_arrays(pa.array([i % 3 for i in r], pa.int32()), colors)})


def appends(path: Path, sizes: list[int], make: Callable[[int, int], pa.Table] = legacy_table, **kwargs: Any) -> None:
    factory.appends(path, "legacy", sizes, make=make, max_rows_per_group=GROUP, **kwargs)


# --- helpers ---------------------------------------------------------------------------------------
def check_after(path: Path, before: Before, plan: CompactionPlan, report) -> lance.LanceDataset:
    assert plan.tasks and report.tasks_skipped == 0, report.skipped
    ds = lance.dataset(str(path))
    unmerged, outputs = expected_layout(before, plan)
    new_ids = list(range(before.max_fragment_id + 1, before.max_fragment_id + 1 + len(outputs)))
    assert report.version == before.version + 1 == ds.version
    by_id = {f.fragment_id: f for f in ds.get_fragments()}
    assert list(by_id) == unmerged + new_ids
    live = sorted(f.id for f in Dataset.open(str(path)).manifest.fields)
    for fid, inputs in zip(new_ids, outputs):
        meta = by_id[fid].metadata
        (df,) = meta.files
        assert meta.physical_rows == sum(before.tables[i].num_rows for i in inputs)
        assert (df.file_major_version, df.file_minor_version) == (0, 2) and list(df.column_indices) == []
        assert list(df.fields) == live  # every live field id, parents included, sorted
        data = (path / "data" / df.path).read_bytes()
        assert len(data) == df.file_size_bytes
        parsed = parse_file(data)
        assert parsed.statistics is None and parsed.num_rows == meta.physical_rows
        sizes = parsed.batch_rows
        assert all(n == sizes[0] for n in sizes[:-1]) and sizes[-1] <= sizes[0]
        field_layouts(parsed)  # every page inside the data region, counts match
        assert rows(by_id[fid].to_table()) == [r for i in inputs for r in rows(before.tables[i])]
    for fid in unmerged:
        assert rows(by_id[fid].to_table()) == rows(before.tables[fid])

    want = expected_rows(before, plan)
    n = len(want)
    assert rows(ds.to_table()) == want
    assert ds.count_rows() == n == before.table.num_rows
    # filters go through pylance's legacy pushdown scan (statistics, batch row arithmetic)
    assert rows(ds.to_table(filter="id > 10")) == [r for r in want if r["id"] > 10]
    assert ds.count_rows("id > 10") == sum(r["id"] > 10 for r in want)
    scan = ds.to_table(with_row_id=True, columns=["id"])
    filtered = ds.to_table(filter="id >= 0", with_row_id=True, columns=["id"])
    assert filtered["_rowid"].to_pylist() == scan["_rowid"].to_pylist()
    if before.stable:
        assert scan["_rowid"].to_pylist() == expected_row_ids(before, plan)
    picks = sorted({0, n - 1, n // 2, *range(0, n, max(1, n // 13))})
    assert rows(ds.take(picks)) == [want[i] for i in picks]
    assert rows(ds.take(picks[::-1])) == [want[i] for i in picks[::-1]]
    for offset, limit in ((0, 1), (n // 3, 9), (max(0, n - 5), 5)):
        assert rows(ds.to_table(offset=offset, limit=limit)) == want[offset : offset + limit]
    assert ds.validate() is None
    old = lance.dataset(str(path), version=before.version)
    assert rows(old.to_table()) == rows(before.table)
    return ds


def run_and_check(path: Path, options: CompactionOptions | None = None):
    options = options or CompactionOptions()
    before = capture(path)
    plan = plan_compaction(str(path), options)
    report = compact(str(path), options)
    return plan, report, check_after(path, before, plan, report), before


def pylance_keeps_working(path: Path) -> None:
    """pylance appends, deletes (which finds rows through a filtered scan) and compacts on top."""
    ds = lance.dataset(str(path))
    current = ds.to_table()
    extra = current.slice(0, min(5, current.num_rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = lance.write_dataset(extra, str(path), mode="append")
    want = pa.concat_tables([current, extra])
    assert rows(ds.to_table()) == rows(want)
    ids = current["id"].to_pylist()
    victims = sorted(set(ids[1 :: max(1, len(ids) // 5)]))
    ds.delete(f"id IN ({', '.join(map(str, victims))})")
    want = want.filter(pc.invert(pc.is_in(want["id"], pa.array(victims, pa.int64()))))
    ds = lance.dataset(str(path))
    assert rows(ds.to_table()) == rows(want)
    assert rows(ds.to_table(filter="id >= 0")) == rows(want)
    assert ds.validate() is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.optimize.compact_files()
    ds = lance.dataset(str(path))
    assert ds.validate() is None
    assert sorted(map(repr, rows(ds.to_table()))) == sorted(map(repr, rows(want)))


# --- datasets --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("legacy-compaction")
    builders: dict[str, Callable[[Path], Any]] = {
        # every input but the last holds whole batches, so the merged batches stay uniform
        "all_types": lambda p: appends(p, [14, 21, 7, 5]),
        "single_batches": lambda p: appends(p, [5, 5, 5, 2], make=factory.simple_table),
        "multi_file": lambda p: factory.multi_file(p, "legacy"),
        "dropped_column": lambda p: factory.dropped_column(p, "legacy"),
        "reordered": lambda p: factory.reordered(p, "legacy"),
        "stable_row_ids": lambda p: appends(p, [14, 14, 3], enable_stable_row_ids=True),
        "sevens": lambda p: appends(p, [7] * 5, make=factory.simple_table),
        "uneven": lambda p: appends(p, [10, 25, 10], make=factory.simple_table),
        "dictionary": lambda p: appends(p, [7, 7, 3], make=dict_table),
    }
    cache: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in cache:
            cache[name] = root / f"{name}.lance"
            builders[name](cache[name])
        return cache[name]

    return build


@pytest.fixture
def copy_of(built: Callable[[str], Path], tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        dst = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.lance"
        shutil.copytree(built(name), dst)
        return dst

    return copy


# --- merges ----------------------------------------------------------------------------------------
def test_all_types(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("all_types")
    before_files = [parse_file((path / "data" / f.metadata.files[0].path).read_bytes()) for f in lance.dataset(str(path)).get_fragments()]
    assert [m.batch_rows for m in before_files] == [(7, 7), (7, 7, 7), (7,), (5,)]
    assert all(m.statistics is not None for m in before_files)
    kinds = {lay.encoding for lay in field_layouts(before_files[0])}
    assert kinds == set(LegacyEncoding) - {LegacyEncoding.DICTIONARY}
    plan, report, ds, _ = run_and_check(path)
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1, 2, 3]]
    (frag,) = ds.get_fragments()
    merged = parse_file((path / "data" / frag.metadata.files[0].path).read_bytes())
    assert merged.batch_rows == (7,) * 6 + (5,)
    assert report.rows == 47 and report.bytes_written == merged.file_size
    # only page data was read: every input's data region, nothing of their tails
    assert report.bytes_read == sum(m.data_end for m in before_files)
    assert merged.data_end == report.bytes_read  # no column was dropped: the regions tile the output
    pylance_keeps_working(path)


def test_filters_agree_with_pylance(copy_of: Callable[[str], Path]) -> None:
    """Filters on merged files (no statistics) give what the same filters gave on the inputs."""
    path = copy_of("all_types")
    old = lance.dataset(str(path))
    exprs = ["id > 10", "s = 'str12str12str12'", "f64 < 3", "flag", "st.a >= 20", "ls = 'L5L5'", "u32 BETWEEN 3 AND 30", "s IS NULL"]
    wanted = {e: rows(old.to_table(filter=e)) for e in exprs}
    compact(str(path))
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1
    for e in exprs:
        assert rows(ds.to_table(filter=e)) == wanted[e], e
        assert wanted[e] or e == "s = 'str12str12str12'"


def test_pylance_updates_merged_fragments(copy_of: Callable[[str], Path]) -> None:
    """add_columns after a delete (Lance's updater restores deleted rows per batch of the first
    batch's size) and merge_insert both work on a merged file."""
    path = copy_of("sevens")
    compact(str(path))
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1
    ds.delete("id IN (3, 15, 30)")
    lance.dataset(str(path)).add_columns({"doubled": "id * 2"})
    t = lance.dataset(str(path)).to_table()
    assert t["id"].to_pylist() == [i for i in range(35) if i not in (3, 15, 30)]
    assert t["doubled"].to_pylist() == [2 * i for i in t["id"].to_pylist()]
    new = pa.table({"id": pa.array([4, 20, 100], pa.int64()), "value": [-1.0, -2.0, -3.0], "name": ["a", "b", "c"], "doubled": pa.array([0, 0, 0], pa.int64())})
    lance.dataset(str(path)).merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(new)
    got = {r["id"]: r for r in lance.dataset(str(path)).to_table().to_pylist()}
    assert len(got) == 33 and got[20]["name"] == "b" and got[100]["value"] == -3.0 and got[5]["doubled"] == 10


@pytest.mark.parametrize("name", ["single_batches", "multi_file", "dropped_column", "reordered"])
def test_shapes(copy_of: Callable[[str], Path], name: str) -> None:
    path = copy_of(name)
    plan, report, ds, _ = run_and_check(path)
    assert len(ds.get_fragments()) == 1
    pylance_keeps_working(path)


def test_dropped_column_is_not_copied(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("dropped_column")  # fields id, value (dropped), name
    old_sizes = [parse_file((path / "data" / f.metadata.files[0].path).read_bytes()).data_end for f in lance.dataset(str(path)).get_fragments()]
    _, report, ds, _ = run_and_check(path)
    (frag,) = ds.get_fragments()
    assert list(frag.metadata.files[0].fields) == [0, 2]
    merged = parse_file((path / "data" / frag.metadata.files[0].path).read_bytes())
    assert merged.data_end == sum(old_sizes) - 2 * 100 * 8  # the float64 pages stayed behind


def test_multi_file_fragments_become_one_file(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("multi_file")
    assert all(len(f.metadata.files) == 2 for f in lance.dataset(str(path)).get_fragments())
    _, _, ds, _ = run_and_check(path)
    (frag,) = ds.get_fragments()
    assert [list(df.fields) for df in frag.metadata.files] == [[0, 1, 2, 3]]


def test_stable_row_ids_are_kept(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("stable_row_ids")
    _, _, ds, before = run_and_check(path)
    assert before.stable and len(ds.get_fragments()) == 1
    pylance_keeps_working(path)


def test_max_rows_per_file_splits(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("sevens")
    plan, _, ds, _ = run_and_check(path, CompactionOptions(max_rows_per_file=14))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1], [2, 3]]  # 4 alone gains nothing
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [7, 14, 14]


def test_tiny_read_batches_give_identical_files(copy_of: Callable[[str], Path]) -> None:
    """Positions arrays shifted in 8-byte pieces and pages copied in 16-byte reads: same bytes."""
    a, b = copy_of("all_types"), copy_of("all_types")
    compact(str(a))
    run_and_check(b, CompactionOptions(read_batch_bytes=16))
    files = [
        [(p / "data" / df.path).read_bytes() for f in lance.dataset(str(p)).get_fragments() for df in f.metadata.files] for p in (a, b)
    ]
    assert files[0] == files[1]


def big_table(start: int, n: int) -> pa.Table:
    r = range(start, start + n)
    return pa.table({"id": pa.array(list(r), pa.int64()), "s": pa.array([f"value-{i}-" * (1 + i % 9) for i in r]), "l": pa.array([[i] * (i % 5) for i in r], pa.list_(pa.int32()))})


def test_large_files_copied_by_range(tmp_path: Path) -> None:
    """Files larger than the metadata read: pages go through copy_range, positions through ranged reads."""
    a, b = tmp_path / "a.lance", tmp_path / "b.lance"
    for p in (a, b):
        factory.appends(p, "legacy", [6000, 6000, 1234], make=big_table, max_rows_per_group=1000)
    sizes = [f.metadata.files[0].file_size_bytes for f in lance.dataset(str(a)).get_fragments()]
    assert min(sizes[:2]) > 4 * 64 * 1024
    compact(str(a))
    _, report, ds, _ = run_and_check(b, CompactionOptions(read_batch_bytes=4096))
    assert parse_file((b / "data" / ds.get_fragments()[0].metadata.files[0].path).read_bytes()).batch_rows == (1000,) * 13 + (234,)
    files = [[(p / "data" / df.path).read_bytes() for f in lance.dataset(str(p)).get_fragments() for df in f.metadata.files] for p in (a, b)]
    assert files[0] == files[1]
    pylance_keeps_working(b)


def test_s3(s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """Through s3fs: ranged reads instead of copy_file_range; pylance reads the result from the bucket."""
    opts = s3_endpoint.pylance_options
    uri = f"s3://{s3_endpoint.new_bucket()}/legacy.lance"
    factory.appends(uri, "legacy", [3000, 3000, 500], make=big_table, max_rows_per_group=1000, storage_options=opts)
    before = lance.dataset(uri, storage_options=opts).to_table()
    report = compact(uri, CompactionOptions(read_batch_bytes=10_000, storage_options=opts))
    assert report.fragments_removed == 3 and report.fragments_added == 1 and report.tasks_skipped == 0
    ds = lance.dataset(uri, storage_options=opts)
    assert len(ds.get_fragments()) == 1
    assert rows(ds.to_table()) == rows(before)
    assert rows(ds.to_table(filter="id % 7 = 3")) == [r for r in rows(before) if r["id"] % 7 == 3]
    assert rows(ds.take([0, 2999, 3000, 6499])) == [rows(before)[i] for i in (0, 2999, 3000, 6499)]


# --- the 32-bit batch offsets ------------------------------------------------------------------------
def _claim_rows(path: Path, rows_per_fragment: int) -> None:
    """Commit a manifest (only planning reads it) whose fragments claim ``rows_per_fragment`` rows."""
    d = Dataset.open(str(path))
    m = table_pb2.Manifest()
    m.CopyFrom(d.manifest)
    for f in m.fragments:
        f.physical_rows = rows_per_fragment
    m.version += 1
    loc = mf.manifest_name(m.version, d.location.scheme)
    (path / "_versions" / loc).write_bytes(mf.build_manifest_file(m, None, d.file.index_section))


@pytest.mark.parametrize("version", ["legacy", "2.1"])
def test_outputs_respect_legacy_row_limit(tmp_path: Path, version: str) -> None:
    """Legacy outputs stay under 2**31 rows (int32 batch offsets); v2 ones only under 2**32."""
    path = tmp_path / f"{version}.lance"
    factory.appends(path, version, [5, 5, 5])
    options = CompactionOptions(target_rows_per_fragment=2**34)
    _claim_rows(path, 3 * 2**28)  # 2 inputs fit under 2**31, 3 do not
    plan = plan_compaction(str(path), options)
    outputs = [o.rows for t in plan.tasks for o in t.outputs]
    assert outputs == ([2 * 3 * 2**28, 3 * 2**28] if version == "legacy" else [3 * 3 * 2**28])
    _claim_rows(path, 2**30)  # no two inputs fit under 2**31
    plan = plan_compaction(str(path), options)
    if version == "legacy":
        assert not plan.tasks and {s.reason for s in plan.skipped} == {"no_reduction"}
    else:
        assert [o.rows for t in plan.tasks for o in t.outputs] == [3 * 2**30]


# --- refusals ----------------------------------------------------------------------------------------
def test_uneven_batches_are_split_in_the_plan(copy_of: Callable[[str], Path]) -> None:
    """[7, 3] + [7, 7, 7, 4] + [7, 3] would put batches of different sizes in one file.

    Lance's legacy pushdown scan (and delete, which finds rows with it) would then compute
    wrong row addresses: we verified that such a file makes ``delete("id = 12")`` remove the
    row with id 16. The planner reads the batch sizes and splits the bin, so the dry run and
    the run agree: every fragment ends with a partial batch, none merges, nothing changes.
    """
    path = copy_of("uneven")
    digest = tree_digest(path)
    dry = compact(str(path), CompactionOptions(dry_run=True, reencode_fallback=False))
    report = compact(str(path), CompactionOptions(reencode_fallback=False))
    assert report.version is None and report.tasks == dry.tasks == 0
    assert report.skipped == dry.skipped
    assert {s.reason for s in report.skipped} == {"uneven_batches"}
    assert all("partial batch" in s.detail for s in report.skipped)
    assert [(s["left_fragment_id"], s["right_fragment_id"]) for s in dry.plan["splits"]] == [(0, 1), (1, 2)]
    assert tree_digest(path) == digest


def test_uneven_batches_are_reencoded_in_our_commit(copy_of: Callable[[str], Path]) -> None:
    """With pylance installed, the group is re-encoded instead (one new version, one fragment),
    and pylance's filtered scans and deletes find the right rows in it."""
    path = copy_of("uneven")
    start = lance.dataset(str(path)).version
    report = compact(str(path))
    assert report.committed_versions == [start + 1] and report.reencoded_fragments == 3
    assert [(n.fragment_id, n.reason) for n in report.notes] == [(1, "reencoded"), (2, "reencoded")]
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1 and ds.to_table()["id"].to_pylist() == list(range(45))
    ds.delete("id = 12")
    assert 12 not in lance.dataset(str(path)).to_table()["id"].to_pylist()
    assert lance.dataset(str(path)).count_rows() == 44


def test_uneven_batches_are_refused_by_the_copier(copy_of: Callable[[str], Path]) -> None:
    """A plan made elsewhere that merges them anyway is refused at execution, nothing written."""
    path = copy_of("uneven")
    digest = tree_digest(path)
    d = Dataset.open(str(path))
    task = CompactionTask(0, (0, 1, 2), 45, 0, (OutputFile((0, 1, 2), 45, 0),))
    plan = CompactionPlan(str(path), d.version, "legacy", (task,), (), CompactionOptions())
    result = execute_task(str(path), plan, task)
    assert result.skipped_reason == "not_copyable"
    assert "same size" in result.skipped_detail and "[7, 3, 7, 7, 7, 4, 7, 3]" in result.skipped_detail
    assert tree_digest(path) == digest


def test_uneven_batches_would_break_pylance(copy_of: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the refusal above exists: with the check disabled, plain scans of the merged file look
    right, but pylance's filtered scan assigns wrong row addresses and delete removes a wrong row."""
    import lance_assets.engine.copy_legacy as copy_legacy
    from lance_assets.engine.commit import commit_compaction

    path = copy_of("uneven")
    monkeypatch.setattr(copy_legacy, "_check_batches", lambda batch_rows, where: None)
    d = Dataset.open(str(path))
    task = CompactionTask(0, (0, 1, 2), 45, 0, (OutputFile((0, 1, 2), 45, 0),))
    plan = CompactionPlan(str(path), d.version, "legacy", (task,), (), CompactionOptions())
    commit_compaction(str(path), plan, [execute_task(str(path), plan, task)])
    ds = lance.dataset(str(path))
    assert ds.to_table()["id"].to_pylist() == list(range(45))
    scan = ds.to_table(with_row_id=True, columns=["id"])["_rowid"].to_pylist()
    assert ds.to_table(filter="id >= 0", with_row_id=True, columns=["id"])["_rowid"].to_pylist() != scan
    ds.delete("id = 12")
    assert 12 in lance.dataset(str(path)).to_table()["id"].to_pylist()  # another row went instead


def test_dictionary_fields_are_skipped(copy_of: Callable[[str], Path]) -> None:
    path = copy_of("dictionary")
    digest = tree_digest(path)
    plan = plan_compaction(str(path))
    assert not plan.tasks
    assert {s.fragment_id: s.reason for s in plan.skipped} == {0: "legacy_dictionary", 1: "legacy_dictionary", 2: "legacy_dictionary"}
    assert all("color" in s.detail for s in plan.skipped)
    report = compact(str(path))
    assert report.version is None and report.skipped == list(plan.skipped)
    assert tree_digest(path) == digest


def test_dictionary_refused_at_execution_too(copy_of: Callable[[str], Path]) -> None:
    """A task that reaches the copier anyway (e.g. a plan made elsewhere) is skipped with the reason."""
    path = copy_of("dictionary")
    digest = tree_digest(path)
    d = Dataset.open(str(path))
    task = CompactionTask(0, (0, 1), 14, 0, (OutputFile((0, 1), 14, 0),))
    plan = CompactionPlan(str(path), d.version, "legacy", (task,), (), CompactionOptions())
    result = execute_task(str(path), plan, task)
    assert result.skipped_reason == "not_copyable" and "dictionary field 'color'" in result.skipped_detail
    assert tree_digest(path) == digest


def test_forged_positions_array_is_refused(copy_of: Callable[[str], Path]) -> None:
    """A var-binary offset pointing outside its page's values raises; nothing is left behind."""
    path = copy_of("single_batches")
    frag = lance.dataset(str(path)).get_fragments()[1]
    file = path / "data" / frag.metadata.files[0].path
    data = bytearray(file.read_bytes())
    meta = parse_file(bytes(data))
    name = next(lay for lay in field_layouts(meta) if lay.name == "name")
    page = meta.page(name.field_id, 0)
    struct.pack_into("<q", data, page.position + 8, len(data) * 2)
    file.write_bytes(bytes(data))
    files = sorted(os.listdir(path / "data"))
    with pytest.raises(CorruptFileError, match="positions"):
        compact(str(path))
    assert sorted(os.listdir(path / "data")) == files
    assert lance.dataset(str(path)).version == 4


# --- property: random legacy schemas -------------------------------------------------------------------
LEAVES = [pa.int8(), pa.int16(), pa.int64(), pa.uint32(), pa.float32(), pa.float64(), pa.bool_(), pa.string(), pa.large_string(), pa.binary(), pa.date32()]


def _types() -> st.SearchStrategy[pa.DataType]:
    leaf = st.sampled_from(LEAVES)
    names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
    struct_ = st.lists(st.tuples(names, leaf), min_size=1, max_size=3, unique_by=lambda t: t[0]).map(lambda fs: pa.struct(fs))
    return st.one_of(leaf, leaf.map(pa.list_), struct_, leaf.map(pa.large_list))


def _value(t: pa.DataType, rng: random.Random) -> Any:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_value(t.value_type, rng) for _ in range(rng.randint(0, 3))]
    if pa.types.is_struct(t):
        return {t.field(i).name: _value(t.field(i).type, rng) for i in range(t.num_fields)}
    if rng.random() < 0.15:
        return None
    if pa.types.is_boolean(t):
        return rng.random() < 0.5
    if pa.types.is_integer(t):
        return rng.randint(0, 100)
    if pa.types.is_floating(t):
        return rng.uniform(-1e3, 1e3)
    if pa.types.is_date32(t):
        return datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randint(0, 9000))
    if pa.types.is_binary(t):
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 5)))
    return "".join(rng.choice("abcé✓") for _ in range(rng.randint(0, 5)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_types(), min_size=1, max_size=5),
    st.integers(1, 6),
    st.lists(st.integers(1, 3), min_size=2, max_size=5),
    st.integers(1, 9),
    st.integers(0, 2**32),
)
def test_random_legacy_datasets(types: list[pa.DataType], group: int, batches: list[int], last: int, seed: int) -> None:
    rng = random.Random(seed)
    schema = pa.schema([pa.field("id", pa.int64())] + [pa.field(f"c{i}", t) for i, t in enumerate(types)])
    sizes = [group * b for b in batches[:-1]] + [min(last, group * batches[-1])]
    tmp = Path(tempfile.mkdtemp(prefix="lance-assets-legacy-"))
    try:
        path = tmp / "ds.lance"
        start = 0
        for i, n in enumerate(sizes):
            cols = [pa.array(range(start, start + n), pa.int64())] + [pa.array([_value(t, rng) for _ in range(n)], t) for t in types]
            factory.write(pa.Table.from_arrays(cols, schema=schema), path, "legacy", mode="append" if i else "create", max_rows_per_group=group)
            start += n
        plan, report, ds, _ = run_and_check(path, CompactionOptions(read_batch_bytes=rng.choice([8, 64, 1 << 20])))
        assert len(ds.get_fragments()) == 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
