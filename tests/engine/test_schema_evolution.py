"""Columns added to the schema after some files were written (``add_columns(pa.field(...))``:
metadata only, older files lack the column and read it as null) no longer keep fragments apart:
the merged file gets an all-null page for each input that lacks the column, in the dataset's own
encoding, and pylance reads every row as before -- whole scans, batch sizes 1, 3 and 1000, take,
filters on the added columns."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from lance_assets import CompactionOptions, compact, plan_compaction
from lance_assets.engine.dataset import Dataset
from lance_assets.format import v2file
from tests.support import factory

FIXED = [
    pa.field("n32", pa.int32()),
    pa.field("f64", pa.float64()),
    pa.field("flag", pa.bool_()),
    pa.field("ts", pa.timestamp("us", tz="UTC")),
    pa.field("vec", pa.list_(pa.float32(), 4)),
]
VARIABLE = [pa.field("label", pa.string())]


def _values(field: pa.Field, rows: int, rng: random.Random) -> pa.Array:
    def maybe(v):  # type: ignore[no-untyped-def]
        return None if rng.random() < 0.2 else v

    t = field.type
    if pa.types.is_int32(t):
        return pa.array([maybe(rng.randint(-1000, 1000)) for _ in range(rows)], t)
    if pa.types.is_float64(t):
        return pa.array([maybe(rng.random()) for _ in range(rows)], t)
    if pa.types.is_boolean(t):
        return pa.array([maybe(rng.random() < 0.5) for _ in range(rows)], t)
    if pa.types.is_timestamp(t):
        return pa.array([maybe(rng.randint(0, 2**40)) for _ in range(rows)], pa.int64()).cast(t)
    if pa.types.is_list(t):
        return pa.array([maybe([rng.randint(0, 9) for _ in range(rng.randint(0, 3))]) for _ in range(rows)], t)
    if pa.types.is_fixed_size_list(t):
        return pa.array([maybe([rng.random() for _ in range(4)]) for _ in range(rows)], t)
    return pa.array([maybe("x" * rng.randint(0, 12)) for _ in range(rows)], t)


def _evolve(path: Path, version: str, added: list[pa.Field], seed: int) -> pa.Table:
    """Appends, then each added field (metadata only) followed by appends that fill it; returns
    the rows as pylance reads them before any compaction."""
    rng = random.Random(seed)
    start = 0
    fields: list[pa.Field] = [pa.field("id", pa.int64())]

    def append(rows: int) -> None:
        nonlocal start
        cols = {"id": pa.array(range(start, start + rows), pa.int64())}
        cols |= {f.name: _values(f, rows, rng) for f in fields[1:]}
        factory.write(pa.table(cols, schema=pa.schema(fields)), path, version)
        start += rows

    for _ in range(2):
        append(rng.randint(1, 300))
    for field in added:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lance.dataset(str(path)).add_columns(field)
        fields.append(field)
        for _ in range(rng.randint(1, 2)):
            append(rng.randint(1, 300))
    return lance.dataset(str(path)).to_table()


def _assert_reads(path: Path, expected: pa.Table, added: list[pa.Field]) -> None:
    ds = lance.dataset(str(path))
    assert ds.to_table().equals(expected), "whole scan"
    for batch_size in (1, 3, 1000):
        assert ds.to_table(batch_size=batch_size).equals(expected), f"batch_size={batch_size}"
    rng = random.Random(7)
    picks = sorted(rng.sample(range(expected.num_rows), min(50, expected.num_rows)))
    assert ds.take(picks).to_pylist() == expected.take(picks).to_pylist(), "take"
    for field in added:
        want = [r["id"] for r in expected.to_pylist() if r[field.name] is None]
        assert ds.to_table(columns=["id"], filter=f"{field.name} IS NULL")["id"].to_pylist() == want, f"{field.name} IS NULL"
    assert ds.validate() is None


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
@pytest.mark.parametrize("seed", [1, 2])
def test_added_fixed_width_columns_merge_into_one_fragment(tmp_path: Path, version: str, seed: int) -> None:
    path = tmp_path / "ds.lance"
    added = FIXED[seed - 1 :: 2] + FIXED[:1]
    added = list({f.name: f for f in added}.values())
    before = _evolve(path, version, added, seed)
    assert len(lance.dataset(str(path)).get_fragments()) > 2
    dry = compact(str(path), CompactionOptions(dry_run=True))
    report = compact(str(path), CompactionOptions())
    assert report.tasks == dry.tasks == 1 and report.skipped == dry.skipped == []
    assert len(lance.dataset(str(path)).get_fragments()) == 1
    _assert_reads(path, before, added)
    # pylance keeps working on the merged file
    factory.write(lance.dataset(str(path)).to_table().slice(0, 5), path, version)
    assert lance.dataset(str(path)).count_rows() == before.num_rows + 5


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_added_string_column(tmp_path: Path, version: str) -> None:
    """2.1+: merged like any other. 2.0 writes offsets even for all-null string pages, so there
    the fragments before and after the column stay apart (each side merged on its own)."""
    path = tmp_path / "ds.lance"
    before = _evolve(path, version, VARIABLE + FIXED[:1], seed=3)
    report = compact(str(path), CompactionOptions())
    fragments = len(lance.dataset(str(path)).get_fragments())
    if version == "2.0":
        assert fragments == report.fragments_added == 2
    else:
        assert fragments == 1
    _assert_reads(path, before, VARIABLE + FIXED[:1])


def test_nested_added_columns_stay_apart(tmp_path: Path) -> None:
    """A struct or list column needs validity or offsets buffers: no all-null synthesis, the
    fragments before and after it are merged separately."""
    path = tmp_path / "ds.lance"
    before = _evolve(path, "2.1", [pa.field("tags", pa.list_(pa.int32()))], seed=4)
    compact(str(path), CompactionOptions())
    assert len(lance.dataset(str(path)).get_fragments()) == 2
    assert lance.dataset(str(path)).to_table().sort_by("id").equals(before.sort_by("id"))  # new fragments sort by id


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_all_null_page_encoding_is_the_one_lance_writes(tmp_path: Path, version: str) -> None:
    """Our constant all-null page encoding is byte for byte what pylance writes for a column
    whose values are all null, for every type we fill."""
    path = tmp_path / "ds.lance"
    fields = [pa.field("id", pa.int64()), *FIXED, *(VARIABLE if version != "2.0" else [])]
    table = pa.table({f.name: pa.nulls(5, f.type) if f.name != "id" else pa.array(range(5), pa.int64()) for f in fields})
    factory.write(table, path, version)
    ds = Dataset.open(str(path))
    (df,) = ds.fragments[0].files
    from lance_assets.engine.tail import read_v2_metadata

    meta = read_v2_metadata(ds.storage, ds.data_file_path(df), df.file_size_bytes)
    fillable = v2file.null_fillable_fields(ds.manifest.fields, v2file.FileVersion(version))
    assert fillable == {f.id for f in ds.manifest.fields if f.name != "id"} | {0}
    for column in meta.columns[1:]:
        assert [p.encoding.direct.encoding for p in column.pages] == [v2file.ALL_NULL_PAGE_ENCODING[v2file.FileVersion(version)]]
        assert all(not p.buffer_sizes for p in column.pages)


def test_plan_groups_across_the_added_column(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    _evolve(path, "2.2", FIXED[:2], seed=5)
    n = len(lance.dataset(str(path)).get_fragments())
    plan = plan_compaction(str(path))
    assert [list(t.fragment_ids) for t in plan.tasks] == [list(range(n))]
