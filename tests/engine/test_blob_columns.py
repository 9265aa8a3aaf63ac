"""Blob columns compacted by binary copy, judged by pylance.

Datasets written by pylance 14 -- blob v2 (inline, packed, dedicated and external blobs, nulls,
empty values) in file versions 2.2 and 2.3, blob v1 in 2.0 and 2.1 -- are compacted through the
public API and the CLI; pylance then must read every other column exactly as before (whole
scans, batch sizes 1, 3 and 1000, takes, a filter), the same blob bytes through ``take_blobs``
and ``read_blobs``, the same ``_rowid`` on stable-row-id datasets, keep deleted rows deleted,
and keep appending, deleting and compacting on top. ``cleanup`` afterwards reclaims the old
sidecars and keeps the new ones.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pytest
from lance.blob import blob_array

from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets.cli import main
from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.cleanup import cleanup
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import CorruptFileError, MissingFileError
from lance_assets.format import v2file
from lance_assets.format.blobs import sidecar_dir
from lance_assets.io import Storage
from tests.support import blobs
from tests.support.assertions import rows, tree_digest

V2 = ["2.2", "2.3"]
V1 = ["2.0", "2.1"]


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --- what pylance reads -------------------------------------------------------------------------
@dataclass
class Seen:
    """Everything a compaction must leave readable as it was."""

    version: int
    fragment_ids: list[int]
    others: pa.Table  # every non-blob column, scan order
    descriptors: list[dict[str, Any] | None]  # the blob column's descriptors, scan order
    by_take: list[bytes | None]
    by_read: list[bytes | None]
    row_ids: list[int]
    files: set[str]  # every file under data/


def _others(ds: lance.LanceDataset) -> list[str]:
    return [n for n in ds.schema.names if n not in blobs.blob_names(ds)]


def _data_files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in (path / "data").rglob("*") if p.is_file()}


def see(path: Path) -> Seen:
    ds = lance.dataset(str(path))
    n = ds.count_rows()
    return Seen(
        version=ds.version,
        fragment_ids=[f.fragment_id for f in ds.get_fragments()],
        others=ds.to_table(columns=_others(ds)),
        descriptors=ds.to_table(columns=["blob"])["blob"].to_pylist(),
        by_take=blobs.blobs_by_take(ds, "blob", indices=list(range(n))),
        by_read=blobs.blobs_by_read(ds, "blob", indices=list(range(n))),
        row_ids=ds.to_table(columns=["id"], with_row_id=True)["_rowid"].to_pylist() if ds.has_stable_row_ids else [],
        files=_data_files(path),
    )


def _stable_part(descriptor: dict[str, Any] | None) -> Any:
    """What a compaction keeps of a descriptor: all of it for external blobs (v2 kind 3), the
    size (and kind, URI) otherwise -- positions and sidecar ids move with the bytes."""
    if descriptor is None:
        return None
    if descriptor.get("kind") == 3:
        return descriptor
    return {k: v for k, v in descriptor.items() if k not in ("position", "blob_id")}


def check_reads_as_before(path: Path, before: Seen) -> lance.LanceDataset:
    """Rows in the same order (every small fragment merged), blobs byte-identical, by every path."""
    ds = lance.dataset(str(path))
    others = _others(ds)
    n = ds.count_rows()
    assert n == before.others.num_rows
    assert rows(ds.to_table(columns=others)) == rows(before.others)
    for size in (1, 3, 1000):
        got = pa.Table.from_batches(ds.to_batches(columns=[*others, "blob"], batch_size=size))
        assert rows(got.select(others)) == rows(before.others)
        assert [_stable_part(d) for d in got["blob"].to_pylist()] == [_stable_part(d) for d in before.descriptors]
    assert blobs.blobs_by_take(ds, "blob", indices=list(range(n))) == before.by_take
    assert blobs.blobs_by_read(ds, "blob", indices=list(range(n))) == before.by_read
    picks = sorted({0, n - 1, n // 2, *range(0, n, 3)})
    assert rows(ds.take(picks, columns=others)) == [rows(before.others)[i] for i in picks]
    assert blobs.blobs_by_take(ds, "blob", indices=picks[::-1]) == [before.by_take[i] for i in picks[::-1]]
    # a filter, then the blobs of the rows it found (by row address)
    hits = ds.to_table(columns=["id"], filter="id % 3 = 1", with_row_address=True)
    want = {i: b for i, b in zip(before.others["id"].to_pylist(), before.by_take, strict=True)}
    assert hits["id"].to_pylist() == [i for i in before.others["id"].to_pylist() if i % 3 == 1]
    got_blobs = blobs.blobs_by_take(ds, "blob", addresses=hits["_rowaddr"].to_pylist())
    assert got_blobs == [want[i] for i in hits["id"].to_pylist()]
    if before.row_ids:
        assert ds.to_table(columns=["id"], with_row_id=True)["_rowid"].to_pylist() == before.row_ids
        assert blobs.blobs_by_take(ds, "blob", ids=before.row_ids) == before.by_take
    assert ds.validate() is None
    return ds


def check_one_rewrite(path: Path, before: Seen, report_version: int | None, groups: Sequence[Sequence[int]]) -> None:
    """One new version, a Rewrite of adjacent fragments; the old version still reads as it did."""
    ds = lance.dataset(str(path))
    assert report_version == before.version + 1 == ds.version
    (txn,) = ds.get_transactions(1)
    assert type(txn.operation).__name__ == "Rewrite"
    got = [[f.id for f in g.old_fragments] for g in txn.operation.groups]
    assert got == [list(g) for g in groups]
    for group in got:  # adjacent: a run of the old fragment list
        start = before.fragment_ids.index(group[0])
        assert before.fragment_ids[start : start + len(group)] == group
    old = lance.dataset(str(path), version=before.version)
    assert rows(old.to_table(columns=_others(old))) == rows(before.others)
    assert blobs.blobs_by_take(old, "blob", indices=list(range(old.count_rows()))) == before.by_take
    # nothing written before is touched; the new file has its own sidecars
    now = _data_files(path)
    assert before.files <= now
    new_files = [f.metadata.files[0].path for f in ds.get_fragments() if f.fragment_id not in before.fragment_ids]
    sidecars = {f for f in now - before.files if f.endswith(".blob")}
    assert {s.rsplit("/", 1)[0] for s in sidecars} <= {f"data/{sidecar_dir(p)}" for p in new_files}


def pylance_keeps_working(path: Path, version: str, make: Any) -> None:
    """pylance appends, deletes and compacts on top of our version; blobs stay right throughout."""
    ds = lance.dataset(str(path))
    extra = make(10_000, 6)
    ds = _quiet(
        lance.write_dataset, extra, str(path), mode="append", data_storage_version=version, allow_external_blob_outside_bases=True
    )
    expected = _blob_map(ds)
    assert [expected[i] for i in range(10_000, 10_006)] == [_plain(v) for v in extra["blob"].to_pylist()]
    ds.delete("id % 4 = 1")
    expected = {i: b for i, b in expected.items() if i % 4 != 1}
    assert _blob_map(lance.dataset(str(path))) == expected
    _quiet(lance.dataset(str(path)).optimize.compact_files)
    ds = lance.dataset(str(path))
    assert ds.validate() is None
    assert _blob_map(ds) == expected


def _plain(value: Any) -> bytes | None:
    """What pylance reads back for a value we wrote (v1 bytes, or a v2 inline/uri struct)."""
    if value is None or isinstance(value, bytes):
        return value
    if value.get("data") is not None:
        return value["data"]
    data = Path(value["uri"].removeprefix("file://")).read_bytes()
    return data[value["position"] : value["position"] + value["size"]]


def _blob_map(ds: lance.LanceDataset) -> dict[int, bytes | None]:
    ids = ds.to_table(columns=["id"])["id"].to_pylist()
    return dict(zip(ids, blobs.blobs_by_take(ds, "blob", indices=list(range(len(ids)))), strict=True))


def run_cli(path: Path, *extra: str) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["compact", str(path), "--json", *extra])
    assert code == 0
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


# --- blob v2 (2.2, 2.3) ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", V2)
def test_blob_v2_every_kind_through_the_cli(tmp_path: Path, version: str) -> None:
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, version, [7, 1, 12, 5, 30])
    _quiet(lance.dataset(str(path)).delete, "id IN (2, 9, 40)")  # a dedicated, a packed, an inline blob
    before = see(path)
    dry = run_cli(path, "--dry-run")
    report = run_cli(path)
    assert report["skipped"] == dry["skipped"] == [] and report["tasks"] == dry["tasks"] == 1
    assert report["fragments_removed"] == 5 and report["fragments_added"] == 1
    check_one_rewrite(path, before, report["version"], [before.fragment_ids])
    ds = check_reads_as_before(path, before)
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [55]
    assert ds.count_rows() == 52  # deleted rows stay deleted (a deletion file carried forward)
    kinds = {d["kind"] for d in ds.to_table(columns=["blob"])["blob"].to_pylist() if d}
    assert kinds == {0, 1, 2, 3}
    pylance_keeps_working(path, version, lambda s, n: blobs.v2_table(s, n, blobs.KINDS, blobs.external_file(tmp_path)))


@pytest.mark.parametrize("version", V2)
def test_blob_v2_stable_row_ids(tmp_path: Path, version: str) -> None:
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, version, [4, 9, 2], enable_stable_row_ids=True)
    _quiet(lance.dataset(str(path)).delete, "id = 5")
    before = see(path)
    report = compact(str(path))
    check_one_rewrite(path, before, report.version, [before.fragment_ids])
    check_reads_as_before(path, before)


def test_blob_v2_only_some_kinds(tmp_path: Path) -> None:
    """Fragments of only inline, only external or only null blobs (an all-null page) merge too."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [3], ("inline",))
    for i, kinds in enumerate([("external",), ("null",), ("packed", "null"), ("dedicated",)], start=1):
        _append_kinds(path, "2.2", 100 * i, 3 + i, kinds, tmp_path)
    before = see(path)
    report = compact(str(path))
    check_one_rewrite(path, before, report.version, [before.fragment_ids])
    check_reads_as_before(path, before)


def _append_kinds(path: Path, version: str, start: int, n: int, kinds: Sequence[str], tmp: Path) -> None:
    table = blobs.v2_table(start, n, kinds, blobs.external_file(tmp))
    _quiet(
        lance.write_dataset, table, str(path), mode="append", data_storage_version=version, allow_external_blob_outside_bases=True
    )


def test_blob_v2_large_fragments_several_outputs(tmp_path: Path) -> None:
    """Thousands of rows per fragment, a target that makes several output files: each output
    numbers its own sidecars; every blob reads back."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [1500, 700, 1200, 900, 50])
    before = see(path)
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=2000))
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=2000))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1], [2, 3, 4]]
    check_one_rewrite(path, before, report.version, [list(t.fragment_ids) for t in plan.tasks])
    check_reads_as_before(path, before)


@pytest.mark.parametrize("version", V1 + V2)
def test_descriptor_columns_of_several_pages(tmp_path: Path, version: str) -> None:
    """Small pages: every input's blob column has several descriptor pages, each rewritten."""
    path = tmp_path / "ds.lance"
    external = blobs.external_file(tmp_path)
    start = 0
    for i, n in enumerate([300, 120, 260]):
        table = blobs.v1_table(start, n) if version in V1 else blobs.v2_table(start, n, blobs.KINDS, external)
        reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=40))
        mode = "append" if i else "create"
        extra = {} if version in V1 else {"allow_external_blob_outside_bases": True}
        _quiet(
            lance.write_dataset,
            reader,
            str(path),
            mode=mode,
            data_storage_version=version,
            data_cache_bytes=4096,
            max_page_bytes=4096,
            **extra,
        )
        start += n
    for frag in lance.dataset(str(path)).get_fragments():
        raw = (path / "data" / frag.metadata.files[0].path).read_bytes()
        meta = v2file.parse_tail(raw, 0, len(raw))
        assert isinstance(meta, v2file.V2FileMetadata) and len(meta.columns[-1].pages) > 1
    before = see(path)
    report = compact(str(path))
    check_one_rewrite(path, before, report.version, [before.fragment_ids])
    check_reads_as_before(path, before)


def test_two_blob_columns_share_a_files_sidecars(tmp_path: Path) -> None:
    """Blob ids are per data file, shared by its blob columns (both columns' packed blobs go to
    one pack file): the rewrite maps them once for the whole file."""
    path = tmp_path / "ds.lance"
    schema = pa.schema([pa.field("id", pa.int64()), blobs.blob_v2_field("a"), blobs.blob_v2_field("b")])
    for k in range(3):
        ids = list(range(k * 6, k * 6 + 6))
        a = [blobs.value(i, ("packed", "dedicated", "inline")[i % 3], None) for i in ids]
        b = [blobs.value(i + 50, ("dedicated", "packed")[i % 2], None) for i in ids]
        table = pa.table({"id": ids, "a": blob_array(a), "b": blob_array(b)}, schema=schema)
        _quiet(lance.write_dataset, table, str(path), mode="append" if k else "create", data_storage_version="2.2")
    ds = lance.dataset(str(path))
    first = ds.to_table(columns=["a", "b"]).slice(0, 2).to_pylist()
    assert first[0]["a"]["blob_id"] == first[1]["b"]["blob_id"] == 1  # one pack file, two columns
    want = {c: blobs.blobs_by_take(ds, c, indices=list(range(18))) for c in "ab"}
    report = compact(str(path))
    assert report.fragments_removed == 3 and report.fragments_added == 1
    ds = lance.dataset(str(path))
    assert {c: blobs.blobs_by_take(ds, c, indices=list(range(18))) for c in "ab"} == want
    assert ds.to_table(columns=["id"])["id"].to_pylist() == list(range(18))


def test_blob_v2_dropped_column(tmp_path: Path) -> None:
    """A dropped column's pages are left behind, but inline blob bytes (in no page) come along."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [6, 8, 5])
    lance.dataset(str(path)).drop_columns(["tag"])
    before = see(path)
    report = compact(str(path))
    check_one_rewrite(path, before, report.version, [before.fragment_ids])
    check_reads_as_before(path, before)


def test_heavily_deleted_blob_fragments_are_copied_not_reencoded(tmp_path: Path) -> None:
    """pylance's scan returns descriptors, so a blob group is never re-encoded: deletions over the
    threshold are carried forward instead, and the dry run says so as the run does."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [10, 10, 10])
    _quiet(lance.dataset(str(path)).delete, "id < 6")
    plan = plan_compaction(str(path))
    assert len(plan.tasks) == 1 and not plan.tasks[0].reencode
    assert {(n.fragment_id, n.reason) for n in plan.notes} == {(0, "deletions_kept")}
    assert "blob" in plan.notes[0].detail
    before = see(path)
    dry = compact(str(path), CompactionOptions(dry_run=True))
    report = compact(str(path))
    assert (report.notes, report.skipped, report.reencoded_fragments) == (dry.notes, dry.skipped, 0)
    check_reads_as_before(path, before)


def test_a_plan_asking_to_reencode_blobs_is_refused(tmp_path: Path) -> None:
    """Our planner never asks; a plan from elsewhere that does is refused by the task, not run."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [4, 4])
    plan = plan_compaction(str(path))
    task = dataclasses.replace(plan.tasks[0], reencode=True)
    result = execute_task(str(path), plan, task)
    assert result.skipped_reason == "reencode_failed" and "descriptors, not their bytes" in result.skipped_detail
    assert result.files_written == ()


# --- blob v1 (2.0, 2.1) ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", V1)
def test_blob_v1(tmp_path: Path, version: str) -> None:
    path = tmp_path / "ds.lance"
    blobs.v1_appends(path, version, [7, 1, 12, 5])
    _quiet(lance.dataset(str(path)).delete, "id IN (0, 13)")
    before = see(path)
    report = run_cli(path)
    check_one_rewrite(path, before, report["version"], [before.fragment_ids])
    ds = check_reads_as_before(path, before)
    assert ds.count_rows() == 23
    pylance_keeps_working(path, version, blobs.v1_table)


@pytest.mark.parametrize("version", V1)
def test_blob_v1_stable_row_ids(tmp_path: Path, version: str) -> None:
    path = tmp_path / "ds.lance"
    blobs.v1_appends(path, version, [30, 1, 9], enable_stable_row_ids=True)
    before = see(path)
    report = compact(str(path))
    check_one_rewrite(path, before, report.version, [before.fragment_ids])
    check_reads_as_before(path, before)


# --- cleanup afterwards ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.2", "2.1"])
def test_cleanup_reclaims_the_old_sidecars(tmp_path: Path, version: str) -> None:
    path = tmp_path / "ds.lance"
    if version == "2.2":
        blobs.v2_appends(path, version, [5, 6, 7])
    else:
        blobs.v1_appends(path, version, [5, 6, 7])
    before = see(path)
    old_files = {f.metadata.files[0].path for f in lance.dataset(str(path)).get_fragments()}
    compact(str(path))
    report = cleanup(str(path), older_than=timedelta(seconds=0), retain_versions=1)
    left = _data_files(path)
    assert not any(f"data/{p}" in left for p in old_files)
    assert not any(f.startswith(tuple(f"data/{sidecar_dir(p)}/" for p in old_files)) for f in left)
    if version == "2.2":
        assert {f.kind for f in report.files} >= {"data", "blob"}
        assert any(f.endswith(".blob") for f in left)  # the merged file's sidecars stay
    ds = lance.dataset(str(path))
    assert blobs.blobs_by_take(ds, "blob", indices=list(range(ds.count_rows()))) == before.by_take


# --- refusals: never a descriptor that points at the wrong bytes ---------------------------------
def _rewrite_blob_page_encoding(data_file: Path, change: Any) -> None:
    """Rewrite the blob column's page encoding of one 2.2 data file in place (the data region
    stays; only the metadata after it is rebuilt)."""
    raw = data_file.read_bytes()
    meta = v2file.parse_tail(raw, 0, len(raw))
    assert isinstance(meta, v2file.V2FileMetadata)
    columns = [type(c)() for c in meta.columns]
    for new, old in zip(columns, meta.columns, strict=True):
        new.CopyFrom(old)
    from google.protobuf import any_pb2

    for page in columns[-1].pages:
        wrapped = any_pb2.Any()
        wrapped.ParseFromString(page.encoding.direct.encoding)
        layout = enc21.PageLayout()
        layout.ParseFromString(wrapped.value)
        change(layout)
        wrapped.value = layout.SerializeToString()
        page.encoding.direct.encoding = wrapped.SerializeToString()
    tail = v2file.build_tail(meta.data_end, columns, meta.descriptor, meta.version)
    data_file.write_bytes(raw[: meta.data_end] + tail)


def _fix_manifest_sizes(path: Path) -> None:
    """Record the rewritten files' sizes in the latest manifest (readers trust them)."""
    from lance_assets.format import manifest as mf

    target = path / Dataset.open(str(path)).location.rel_path
    parsed = mf.parse_manifest_file(target.read_bytes())
    for frag in parsed.manifest.fragments:
        for df in frag.files:
            df.file_size_bytes = (path / "data" / df.path).stat().st_size
    target.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))


def test_unknown_descriptor_layout_is_refused_per_fragment(tmp_path: Path) -> None:
    """A fragment whose blob pages are in a layout we do not know is left alone with a reason --
    in the plan, the dry run and the run alike -- and its neighbours still merge."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [4, 5, 6, 7, 8])
    frags = lance.dataset(str(path)).get_fragments()
    victim = path / "data" / frags[2].metadata.files[0].path

    def widen(layout: enc21.PageLayout) -> None:
        layout.full_zip_layout.value_compression.variable_packed_struct.fields[1].bits_per_value = 32  # not u64 positions

    _rewrite_blob_page_encoding(victim, widen)
    _fix_manifest_sizes(path)
    victim_bytes = victim.read_bytes()
    plan = plan_compaction(str(path))
    assert [(s.fragment_id, s.reason) for s in plan.skipped] == [(2, "blob_column")]
    assert "fixed-width" in plan.skipped[0].detail
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1], [3, 4]]
    dry = compact(str(path), CompactionOptions(dry_run=True))
    report = compact(str(path))
    assert report.tasks_skipped == 0 and report.skipped == dry.skipped and report.tasks == 2
    assert victim.read_bytes() == victim_bytes
    ds = lance.dataset(str(path))
    for frag in ds.get_fragments():
        if frag.fragment_id != 2:
            assert frag.to_table(columns=["id"]).num_rows in (9, 15)


def test_missing_sidecar_fails_and_leaves_the_dataset_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [6, 6, 6])
    frags = lance.dataset(str(path)).get_fragments()
    folder = path / "data" / sidecar_dir(frags[1].metadata.files[0].path)
    victim = sorted(folder.iterdir())[0]
    victim.unlink()
    digest = tree_digest(path)
    with pytest.raises(MissingFileError, match="sidecar"):
        compact(str(path))
    assert tree_digest(path) == digest


def test_descriptor_outside_the_file_fails_and_leaves_the_dataset_untouched(tmp_path: Path) -> None:
    """An inline position past the data region (a damaged file) is an error, never copied."""
    path = tmp_path / "ds.lance"
    blobs.v2_appends(path, "2.2", [5, 5], kinds=("inline",))
    data_file = path / "data" / lance.dataset(str(path)).get_fragments()[1].metadata.files[0].path
    raw = bytearray(data_file.read_bytes())
    meta = v2file.parse_tail(bytes(raw), 0, len(raw))
    assert isinstance(meta, v2file.V2FileMetadata)
    page = meta.columns[-1].pages[0]
    start = page.buffer_offsets[0]
    # first row: no validity word (all valid), a u32 row length, then kind and the u64 position
    raw[start + 5 : start + 13] = (10**9).to_bytes(8, "little")
    data_file.write_bytes(bytes(raw))
    digest = tree_digest(path)
    with pytest.raises(CorruptFileError, match="outside the data region"):
        compact(str(path))
    assert tree_digest(path) == digest


def test_legacy_blob_columns_stay_refused(dataset_copy: Any) -> None:
    """pylance 14 cannot read a legacy (0.x) blob column back, so nothing could check a merge."""
    path = dataset_copy("blob", "legacy")
    plan = plan_compaction(str(path))
    assert plan.tasks == () and {s.reason for s in plan.skipped} == {"blob_column"}
    assert "legacy" in plan.skipped[0].detail


def test_blob_v2_on_s3(s3_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sidecars are copied inside the store (no sidecar byte passes through this process);
    pylance reads every blob back from the bucket, also after ``cleanup``."""
    opts = s3_endpoint.pylance_options
    uri = f"s3://{s3_endpoint.new_bucket()}/blobs.lance"
    kinds = ("inline", "packed", "dedicated", "null", "empty")
    blobs.v2_appends(uri, "2.2", [5, 7, 3], kinds=kinds, storage_options=opts)
    before = lance.dataset(uri, storage_options=opts)
    n = before.count_rows()
    want = blobs.blobs_by_take(before, "blob", indices=list(range(n)))
    ids = before.to_table(columns=["id"])["id"].to_pylist()
    read: list[str] = []
    for method in ("read", "copy_range"):
        original = getattr(Storage, method)

        def spy(self: Storage, rel: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            read.append(rel)
            return _original(self, rel, *args, **kwargs)

        monkeypatch.setattr(Storage, method, spy)
    report = compact(uri, CompactionOptions(), storage_options=opts)
    assert report.version == before.version + 1 and report.fragments_added == 1
    assert read and not [rel for rel in read if rel.endswith(".blob")]
    after = lance.dataset(uri, storage_options=opts)
    assert after.to_table(columns=["id"])["id"].to_pylist() == ids
    assert blobs.blobs_by_take(after, "blob", indices=list(range(n))) == want
    assert blobs.blobs_by_read(after, "blob", indices=list(range(n))) == want
    cleanup(uri, older_than=timedelta(seconds=0), storage_options=opts)
    again = lance.dataset(uri, storage_options=opts)
    assert blobs.blobs_by_take(again, "blob", indices=list(range(n))) == want
