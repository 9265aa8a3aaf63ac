"""Nested columns whose pages differ in repetition/definition layers (issue 11).

pylance judges every compacted dataset by reading it every way a user does -- whole scans,
batch sizes 1, 3 and 1000, ``take`` and a filter -- because a merged file can pass
``validate()`` and still be misread where a read batch spans pages from different inputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets.cli import main as cli_main
from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import execute_task, verify_output
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.planning.plan import CompactionPlan, CompactionTask, OutputFile, plan_compaction
from lance_assets.engine.report import Reason
from lance_assets.engine.tail import read_v2_metadata
from lance_assets.errors import CompactionRefusedError
from lance_assets.format import repdef, v2file
from lance_assets.format.v2file import FileVersion, build_tail
from tests.support import factory, nested
from tests.support.assertions import assert_reads_every_way, tree_digest

STRUCTURAL = ["2.1", "2.2", "2.3"]


# --- helpers ----------------------------------------------------------------------------------
def write_fragments(path: Path, tables: list[pa.Table], version: str) -> None:
    for i, t in enumerate(tables):
        factory.write(t, path, version, mode="create" if i == 0 else "append")


def cli_compact(path: Path, *extra: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["compact", str(path), "--json", *extra])
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def assert_reads_as(path: Path, expected: pa.Table) -> None:
    """Every way a user reads the dataset returns ``expected`` (its rows keyed by ``i``)."""
    assert_reads_every_way(path, expected, key="i")


def assert_lance_order(path: Path, tables: list[pa.Table], plan: dict[str, Any]) -> None:
    """Rows come back in Lance's order: fragments left alone by id, then each new fragment's
    inputs in order (fragment k of the dataset holds ``tables[k]``)."""
    merged = [i for t in plan["tasks"] for i in t["fragment_ids"]]
    order = [i for i in range(len(tables)) if i not in merged] + [
        i for t in plan["tasks"] for o in t["outputs"] for i in o["fragment_ids"]
    ]
    expected = [v for k in order for v in tables[k]["i"].to_pylist()]
    assert lance.dataset(str(path)).to_table(columns=["i"])["i"].to_pylist() == expected


# --- the three reproductions of the issue -------------------------------------------------------
@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_null_struct_then_empty_list(tmp_path: Path, version: str) -> None:
    """``struct<x: list<int64>>``: [None] then [{"x": []}] -- the layers differ above the list.
    Without re-encoding, the fragments are left apart with the reason."""
    t = pa.struct([("x", pa.list_(pa.int64()))])
    tables = [
        pa.table({"i": pa.array([0], pa.int64()), "s": pa.array([None], t)}),
        pa.table({"i": pa.array([1], pa.int64()), "s": pa.array([{"x": []}], t)}),
    ]
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, version)
    before = tree_digest(path)
    dry = cli_compact(path, "--dry-run", "--no-reencode-fallback")
    report = cli_compact(path, "--no-reencode-fallback")
    assert report["tasks"] == dry["tasks"] == 0
    assert {s["reason"] for s in report["skipped"]} == {Reason.INCOMPATIBLE_LAYERS}
    assert report["skipped"] == dry["skipped"]
    assert dry["plan"]["splits"] == [
        {
            "left_fragment_id": 0,
            "right_fragment_id": 1,
            "reason": Reason.INCOMPATIBLE_LAYERS,
            "detail": dry["plan"]["splits"][0]["detail"],
        }
    ]
    assert "'s.x.item'" in dry["plan"]["splits"][0]["detail"]
    assert tree_digest(path) == before
    assert_reads_as(path, pa.concat_tables(tables))
    # With pylance installed (the default), the group is re-encoded in our commit instead.
    dry = cli_compact(path, "--dry-run")
    report = cli_compact(path)
    assert [(t["fragment_ids"], t["reencode"]) for t in dry["plan"]["tasks"]] == [([0, 1], True)]
    assert report["tasks"] == 1 and report["reencoded_fragments"] == 2 and report["skipped"] == []
    assert [(n["fragment_id"], n["reason"]) for n in report["notes"]] == [(1, "reencoded")]
    assert len(lance.dataset(str(path)).get_fragments()) == 1
    assert_reads_as(path, pa.concat_tables(tables))


def test_stream_of_structs_with_tag_lists(tmp_path: Path) -> None:
    """20 appends x 200 rows of ``struct<tags: list<string>, score: double>``, a few null structs:
    appends with null structs merge with each other, the rest with each other, nothing is misread."""
    t = pa.struct([("tags", pa.list_(pa.string())), ("score", pa.float64())])
    tables = []
    for k in range(20):
        rows = [{"tags": [f"t{j}" for j in range(r % 4)], "score": r / 7} for r in range(200)]
        if k % 5 in (1, 2):  # appends 1, 2, 6, 7, 11, 12, 16, 17 hold null structs
            rows[17] = None
        tables.append(pa.table({"i": pa.array(range(k * 200, (k + 1) * 200), pa.int64()), "s": pa.array(rows, t)}))
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, "2.2")
    dry = cli_compact(path, "--dry-run", "--no-reencode-fallback")
    report = cli_compact(path, "--no-reencode-fallback")
    merged = [t["fragment_ids"] for t in dry["plan"]["tasks"]]
    # Runs of equal layers: [0] alone, then alternating runs of 2 (null structs) and 3 (none).
    assert merged == [[1, 2], [3, 4, 5], [6, 7], [8, 9, 10], [11, 12], [13, 14, 15], [16, 17], [18, 19]]
    assert [s["fragment_id"] for s in dry["skipped"]] == [0]
    assert dry["skipped"][0]["reason"] == Reason.INCOMPATIBLE_LAYERS
    assert report["tasks"] == dry["tasks"] == 8 and report["fragments_removed"] == dry["fragments_removed"] == 19
    assert len(dry["plan"]["splits"]) == 8
    assert_reads_as(path, pa.concat_tables(tables))
    assert_lance_order(path, tables, dry["plan"])
    # the default (pylance installed) re-encodes the runs together into one fragment
    report = cli_compact(path)
    assert report["tasks"] == 1 and report["reencoded_fragments"] == 9 and len(lance.dataset(str(path)).get_fragments()) == 1
    assert_reads_as(path, pa.concat_tables(tables))


def test_nested_lists_in_a_struct_fragments_of_3_1_3_40_40_3(tmp_path: Path) -> None:
    """``struct<l: list<list<int8>>, s: string>`` on 2.2: a whole scan once returned None for
    row 0 ({'l': [[]], 's': 'a'}) -- a silent wrong answer."""
    t = pa.struct([("l", pa.list_(pa.list_(pa.int8()))), ("s", pa.string())])
    sizes = [3, 1, 3, 40, 40, 3]
    shapes = [None, {"l": None, "s": "b"}, {"l": [[1, 2], []], "s": None}, {"l": [None, [3]], "s": "c"}]
    rows: list[Any] = [{"l": [[]], "s": "a"}]
    rows += [shapes[(7 * r) % 4] for r in range(1, sum(sizes))]
    rows[4] = {"l": [[5]], "s": "x"}  # fragment 1 (one row): no null struct, no null list
    path = tmp_path / "ds.lance"
    tables, start = [], 0
    for n in sizes:
        tables.append(pa.table({"i": pa.array(range(start, start + n), pa.int64()), "v": pa.array(rows[start : start + n], t)}))
        start += n
    write_fragments(path, tables, "2.2")
    dry = cli_compact(path, "--dry-run")
    cli_compact(path)
    assert lance.dataset(str(path)).to_table().sort_by("i")["v"][0].as_py() == {"l": [[]], "s": "a"}
    assert_reads_as(path, pa.concat_tables(tables))
    assert_lance_order(path, tables, dry["plan"])


def test_struct_of_list_of_structs_on_2_3(tmp_path: Path) -> None:
    """2.3, ``struct<a, l: list<struct<x, y, z: list<double>>>>`` with nulls, appends of 1, 2000
    and 3 rows: once "Structural sibling fields have incompatible validity metadata" on a whole
    scan while batch_size=1 read correctly (the data below, seed 39, did exactly that)."""
    inner = pa.struct([("x", pa.int64()), ("y", pa.string()), ("z", pa.list_(pa.float64()))])
    t = pa.struct([("a", pa.int64()), ("l", pa.list_(inner))])
    rng = random.Random(39)

    def values(n: int, nulls: bool, empties: bool) -> list[Any]:
        def maybe(v: Any) -> Any:
            return None if nulls and rng.random() < 0.2 else v

        def items(make: Any, most: int) -> list[Any]:
            return [make() for _ in range(rng.randint(0 if empties else 1, most))]

        def item() -> Any:
            return maybe({"x": maybe(rng.randint(0, 9)), "y": maybe("s"), "z": maybe(items(lambda: maybe(rng.random()), 3))})

        return [maybe({"a": maybe(rng.randint(0, 9)), "l": maybe(items(item, 3))}) for _ in range(n)]

    tables, start = [], 0
    for n in (1, 2000, 3):
        column = values(n, rng.random() < 0.5, rng.random() < 0.5)
        tables.append(pa.table({"i": pa.array(range(start, start + n), pa.int64()), "v": pa.array(column, t)}))
        start += n
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, "2.3")
    dry = cli_compact(path, "--dry-run")
    report = cli_compact(path)
    assert report["tasks"] == dry["tasks"]
    assert_reads_as(path, pa.concat_tables(tables))
    assert_lance_order(path, tables, dry["plan"])


def test_all_null_struct_above_a_list_stays_apart_on_2_3(tmp_path: Path) -> None:
    """2.3 ``list<struct<l: list<list<string>>, s: string>>``: a file whose structs are all null
    beside one whose structs are partly null. Copied side by side, pylance 14 could not read them
    ("Structural sibling fields have incompatible validity metadata"); found by the random test
    below and shrunk to these rows. The 2.3 explicit layer form marks an all-null item layer on
    its own (``repdef.ALL_NULL``), so the two files stay apart and everything reads."""
    t = pa.list_(pa.struct([("l", pa.list_(pa.list_(pa.string()))), ("s", pa.string())]))
    rows: list[list[Any]] = [[[None, None]], [None, [None, {"l": [[""]], "s": None}]]]
    tables, start = [], 0
    for part in rows:
        tables.append(pa.table({"i": pa.array(range(start, start + len(part)), pa.int64()), "v": pa.array(part, t)}))
        start += len(part)
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, "2.3")
    layers = {repdef.page_layers(p.encoding.direct.encoding, FileVersion.V2_3) for p in _pages_of(path, "v.item.l.item.item")}
    assert {"VLLAL", "VLLNL"} <= layers, layers
    dry = cli_compact(path, "--dry-run", "--no-reencode-fallback")
    report = cli_compact(path, "--no-reencode-fallback")
    assert [s["reason"] for s in report["skipped"]] == [s["reason"] for s in dry["skipped"]]
    assert {s["reason"] for s in report["skipped"]} <= {"incompatible_layers"}
    assert_reads_as(path, pa.concat_tables(tables))


def _pages_of(path: Path, name: str) -> list[Any]:
    """The pages of the column that field ``name`` (dotted path) owns, over every data file."""
    ds = Dataset.open(str(path))
    paths = repdef.field_paths(ds.manifest.fields)
    field_id = next(i for i, p in paths.items() if p == name)
    pages = []
    for frag in ds.fragments:
        for df in frag.files:
            meta = read_v2_metadata(ds.storage, ds.data_file_path(df), df.file_size_bytes)
            column = dict(zip(df.fields, df.column_indices))[field_id]
            pages.extend(meta.columns[column].pages)
    return pages


def test_a_reencode_pylance_would_misread_is_refused(tmp_path: Path) -> None:
    """pylance 14 misreads ``list<struct<l: list<map<string, int64>>, s>>`` holding [], [], [None]
    when it writes them in one go, although each one-row file reads fine: the re-encoded group is
    read back before commit, refused (``reencode_failed``), and the dataset stays as it was."""
    t = pa.list_(pa.struct([pa.field("l", pa.list_(pa.map_(pa.string(), pa.int64()))), pa.field("s", pa.string())]))
    tables = [pa.table({"i": pa.array([k], pa.int64()), "v": pa.array(v, t)}) for k, v in enumerate([[[]], [[]], [[None]]])]
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, "2.2")
    one_go = tmp_path / "one_go.lance"
    factory.write(pa.concat_tables(tables), one_go, "2.2", mode="create")
    with pytest.raises(Exception, match="Incorrect number of nulls"):
        lance.dataset(str(one_go)).to_table()
    before = tree_digest(path)
    report = cli_compact(path)
    assert report["version"] is None and {s["reason"] for s in report["skipped"]} == {"reencode_failed"}
    assert "cannot read back" in report["skipped"][0]["detail"]
    assert tree_digest(path) == before
    assert_reads_as(path, pa.concat_tables(tables))


def test_lance_own_binary_copy_misreads_these_files(tmp_path: Path) -> None:
    """The README says pylance's own binary copy breaks the first reproduction while we refuse
    it; if a pylance release fixes this, this test fails and the README must change."""
    t = pa.struct([("x", pa.list_(pa.int64()))])
    path = tmp_path / "ds.lance"
    write_fragments(path, [pa.table({"s": pa.array([None], t)}), pa.table({"s": pa.array([{"x": []}], t)})], "2.2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.compact_files(compaction_mode="force_binary_copy")
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1
    ds.validate()
    with pytest.raises(Exception, match="Incorrect number of nulls"):
        ds.to_table()


# --- fixed-size lists of structs (issue 26) -------------------------------------------------------
_A = pa.struct([("a", pa.int32())])
FIXED_SIZE_SHAPES: dict[str, tuple[pa.DataType, Any]] = {
    # the two shapes of the issue: once "column 1 pages hold 4 rows but the file has 2"
    # (pylance 14 cannot write or read null or empty lists of this shape in 2.2: none here)
    "list<fsl<struct>>": (pa.list_(pa.list_(_A, 2)), lambda k: [[{"a": k}, {"a": -k}]] * (1 + k % 3)),
    "fsl<struct<list, x>>": (
        pa.list_(pa.struct([("l", pa.list_(pa.int64())), ("x", pa.int64())]), 2),
        lambda k: [{"l": [k] * (k % 3), "x": k}, {"l": [], "x": None}],
    ),
    "struct<fsl<struct>>": (pa.struct([("x", pa.list_(_A, 2))]), lambda k: {"x": [{"a": k}, None]} if k % 3 else None),
    "fsl<struct<fsl<struct>>>": (
        pa.list_(pa.struct([("y", pa.list_(_A, 2)), ("z", pa.int8())]), 3),
        lambda k: [{"y": [{"a": k}, {"a": None}], "z": k % 100}] * 3,
    ),
    "map<fsl<struct>>": (pa.map_(pa.string(), pa.list_(_A, 2)), lambda k: [("k", [{"a": k}, {"a": 1}])] if k % 2 else []),
}


def assert_column_reads_as(path: Path, expected: pa.Array) -> None:
    """A dataset of one column ``v`` (pylance 14 cannot read some fixed-size lists of structs
    beside another column) reads back as ``expected``, in order, every way a user reads it."""
    ds = lance.dataset(str(path))
    want = expected.to_pylist()
    assert ds.to_table()["v"].to_pylist() == want, "whole scan"
    for batch_size in (1, 3, 1000):
        assert ds.to_table(batch_size=batch_size)["v"].to_pylist() == want, f"batch_size={batch_size}"
    assert pa.Table.from_batches(list(ds.to_batches()))["v"].to_pylist() == want, "to_batches"
    picked = list(range(len(want)))[::-2]
    assert ds.take(picked)["v"].to_pylist() == [want[i] for i in picked], "take"


#: Shapes whose four appends above agree in every guarded layer: one binary copy merges them.
#: In the others a struct above the fixed-size list is null in some appends only, which binary
#: copy may not put side by side (pylance's own binary copy then fails to read 2.2 files).
PYLANCE_CANNOT_READ_2_2 = {"list<fsl<struct>>", "fsl<struct<list, x>>"}
PYLANCE_CANNOT_WRITE_2_2 = {"map<fsl<struct>>"}
BINARY_MERGEABLE = {"list<fsl<struct>>", "fsl<struct<list, x>>", "fsl<struct<fsl<struct>>>", "map<fsl<struct>>"}


@pytest.mark.parametrize("version", ["2.2", "2.3"])
@pytest.mark.parametrize("shape", list(FIXED_SIZE_SHAPES))
def test_fixed_size_lists_of_structs_merge(tmp_path: Path, version: str, shape: str) -> None:
    """Below a fixed-size list of structs a column's pages count one value per list item (rows x
    list sizes): read as rows, every such file was refused and with it the whole dataset. Four
    appends now merge -- by binary copy where their layers agree, else split by binary copy
    alone and merged by a re-encode by default -- and pylance reads the same values."""
    t, make = FIXED_SIZE_SHAPES[shape]
    parts, start = [], 0
    for n in (2, 1, 5, 3):
        parts.append(pa.array([make(k) for k in range(start, start + n)], t))
        start += n
    expected = pa.concat_arrays(parts)
    path = tmp_path / "ds.lance"
    if version == "2.2" and shape in PYLANCE_CANNOT_WRITE_2_2:
        with pytest.raises(BaseException, match="unwrap"):  # a Rust panic
            write_fragments(path, [pa.table({"v": a}) for a in parts], version)
        pytest.skip("pylance 14 cannot write this shape in 2.2")
    write_fragments(path, [pa.table({"v": a}) for a in parts], version)
    if version == "2.2" and shape in PYLANCE_CANNOT_READ_2_2:
        with pytest.raises(Exception, match="FSL"):  # nothing to judge by
            assert_column_reads_as(path, expected)
        pytest.skip("pylance 14 cannot read this shape in 2.2")
    assert_column_reads_as(path, expected)
    copy = tmp_path / "binary.lance"
    shutil.copytree(path, copy)
    # binary copy only
    dry = cli_compact(copy, "--dry-run", "--no-reencode-fallback")
    report = cli_compact(copy, "--no-reencode-fallback")
    assert report["skipped"] == dry["skipped"]
    assert (report["tasks"], report["fragments_removed"]) == (dry["tasks"], dry["fragments_removed"])
    assert report["reencoded_fragments"] == 0
    if shape in BINARY_MERGEABLE:
        assert report["skipped"] == [] and report["fragments_removed"] == 4
        assert len(lance.dataset(str(copy)).get_fragments()) == 1
    else:
        assert {s["reason"] for s in report["skipped"]} == {"incompatible_layers"}
    assert_column_reads_as(copy, expected)
    # the default: whatever binary copy may not merge is re-encoded in the same commit
    dry = cli_compact(path, "--dry-run")
    report = cli_compact(path)
    assert report["skipped"] == dry["skipped"] == [] and report["tasks"] == dry["tasks"] == 1
    assert len(lance.dataset(str(path)).get_fragments()) == 1
    assert_column_reads_as(path, expected)


def test_pylance_binary_copy_misreads_a_struct_above_a_fixed_size_list_on_2_2(tmp_path: Path) -> None:
    """Why a fixed-size list of structs guards the layers above it: 2.2 files whose struct above
    the list is null in one and all valid in the other, put side by side by pylance's own binary
    copy, fail to read ("Incorrect length of values buffer for FixedSizeListArray"). If a pylance
    release fixes this, the rule may be relaxed (``repdef.fixed_size_templates``)."""
    t, make = FIXED_SIZE_SHAPES["struct<fsl<struct>>"]
    path = tmp_path / "ds.lance"
    write_fragments(path, [pa.table({"v": pa.array([make(k) for k in ks], t)}) for ks in ((0, 1), (2,))], "2.2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.compact_files(compaction_mode="force_binary_copy")
    assert len(lance.dataset(str(path)).get_fragments()) == 1
    with pytest.raises(Exception, match="FixedSizeListArray"):
        lance.dataset(str(path)).to_table()


def test_fixed_size_list_of_structs_beside_other_columns_on_2_3(tmp_path: Path) -> None:
    """2.3 reads ``list<fsl<struct>>`` (with null and empty lists, null structs) beside a
    row-number column: the full judge applies."""
    t = FIXED_SIZE_SHAPES["list<fsl<struct>>"][0]

    def make(k: int) -> Any:
        return [[{"a": k}, None if k % 2 else {"a": None}]] * (k % 3) if k % 5 else None

    tables, start = [], 0
    for n in (3, 1, 4):
        tables.append(
            pa.table(
                {"i": pa.array(range(start, start + n), pa.int64()), "v": pa.array([make(k) for k in range(start, start + n)], t)}
            )
        )
        start += n
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, "2.3")
    dry = cli_compact(path, "--dry-run")
    report = cli_compact(path)
    assert report["tasks"] == dry["tasks"] == 1 and report["skipped"] == dry["skipped"] == []
    assert_reads_as(path, pa.concat_tables(tables))
    assert_lance_order(path, tables, dry["plan"])


def test_values_per_row_follows_the_schema(tmp_path: Path) -> None:
    """Per column: the product of the sizes of the fixed-size lists of structs above it; a
    fixed-size list of primitives is one value per row (its items are folded into the value)."""
    t = pa.table(
        {
            "i": pa.array([1], pa.int64()),
            "vec": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2)),
            "w": pa.array([[{"y": [{"a": 1}, {"a": 2}], "z": 1}] * 3], FIXED_SIZE_SHAPES["fsl<struct<fsl<struct>>>"][0]),
        }
    )
    path = tmp_path / "ds.lance"
    factory.write(t, path, "2.2", mode="create")
    ds = Dataset.open(str(path))
    df = ds.fragments[0].files[0]
    meta = read_v2_metadata(ds.storage, ds.data_file_path(df))
    assert v2file.values_per_row(meta.fields) == (1, 1, 6, 3)
    assert [sum(p.length for p in c.pages) for c in meta.columns] == [1, 1, 6, 3]


def test_a_fragment_whose_files_cannot_be_judged_is_left_alone(tmp_path: Path) -> None:
    """The planner reads nested fragments' file metadata; one it cannot parse is skipped with the
    reason (not_copyable) and the others still merge, in the dry run as in the run."""
    t = pa.struct([("x", pa.list_(pa.int64()))])
    tables = [pa.table({"i": pa.array([k], pa.int64()), "s": pa.array([{"x": [k] * k}], t)}) for k in range(4)]
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, "2.2")
    ds = Dataset.open(str(path))
    last = path / "data" / ds.fragments[-1].files[0].path
    data = bytearray(last.read_bytes())
    data[-4:] = b"XXXX"  # the magic: no longer a Lance file
    last.write_bytes(bytes(data))
    dry = cli_compact(path, "--dry-run")
    report = cli_compact(path)
    assert [(s["fragment_id"], s["reason"]) for s in report["skipped"]] == [(3, "not_copyable")]
    assert report["skipped"] == dry["skipped"] and "magic" in report["skipped"][0]["detail"]
    assert report["tasks"] == dry["tasks"] == 1 and report["fragments_removed"] == 3
    assert next(f.fragment_id for f in lance.dataset(str(path)).get_fragments()) == 3


# --- the rule itself ------------------------------------------------------------------------------
def test_guarded_fields_follow_the_schema(tmp_path: Path) -> None:
    t = pa.table(
        {
            "flat": pa.array([1], pa.int64()),
            "lst": pa.array([[1]], pa.list_(pa.int64())),
            "ll": pa.array([[[1]]], pa.list_(pa.list_(pa.int64()))),
            "st": pa.array([{"a": 1}], pa.struct([("a", pa.int64())])),
            "st_l": pa.array([{"x": [1]}], pa.struct([("x", pa.list_(pa.int64()))])),
            "l_st_l": pa.array([[{"z": [1.0]}]], pa.list_(pa.struct([("z", pa.list_(pa.float64()))]))),
            "l_st": pa.array([[{"p": 1}]], pa.list_(pa.struct([("p", pa.int64())]))),
            "mp": pa.array([[("k", [1])]], pa.map_(pa.string(), pa.list_(pa.int64()))),
        }
    )
    factory.write(t, tmp_path / "ds.lance", "2.2", mode="create")
    fields = Dataset.open(str(tmp_path / "ds.lance")).manifest.fields
    names = {f.id: f.name for f in fields}
    parents = {f.id: f.parent_id for f in fields}

    def top(fid: int) -> str:
        while parents[fid] != -1:
            fid = parents[fid]
        return names[fid]

    guarded = repdef.guarded_field_ids(fields, FileVersion.V2_2)
    assert not repdef.guarded_field_ids(fields, FileVersion.V2_0)
    assert {top(f) for f in guarded} == {"st_l", "l_st_l", "mp"}
    assert all(names[f] not in ("key",) for f in guarded)


@pytest.mark.parametrize("version", STRUCTURAL)
def test_page_layers_match_what_pylance_wrote(tmp_path: Path, version: str) -> None:
    """Layers read from real pages, innermost first, for values whose layers we know."""
    t = pa.struct([("x", pa.list_(pa.int64()))])
    cases = {
        "valid": ([{"x": [1]}, {"x": [2, 3]}], "VLV"),
        "null_struct": ([None, {"x": [2]}], "VLN"),
        "null_item": ([{"x": [None, 1]}], "NLV"),
    }
    for name, (values, expected) in cases.items():
        path = tmp_path / f"{name}.lance"
        factory.write(pa.table({"s": pa.array(values, t)}), path, version, mode="create")
        ds = Dataset.open(str(path))
        df = ds.fragments[0].files[0]
        meta = read_v2_metadata(ds.storage, ds.data_file_path(df))
        (page,) = meta.columns[0].pages
        assert repdef.page_layers(page.encoding.direct.encoding, FileVersion(version)) == expected, name


def test_guarded_positions() -> None:
    assert repdef.guarded_positions("V") == ()
    assert repdef.guarded_positions("NL") == ()
    assert repdef.guarded_positions("VLN") == (2,)
    assert repdef.guarded_positions("VLLNLV") == (3, 5)


def test_copier_refuses_a_plan_that_mixes_layers(tmp_path: Path) -> None:
    """A plan made elsewhere (an older planner, a hand-made fan-out plan) that puts incompatible
    files in one output is refused by the copier; nothing is written, nothing committed."""
    t = pa.struct([("x", pa.list_(pa.int64()))])
    path = tmp_path / "ds.lance"
    write_fragments(path, [pa.table({"s": pa.array([None], t)}), pa.table({"s": pa.array([{"x": [1, 2]}], t)})], "2.2")
    before = tree_digest(path)
    plan = plan_compaction(str(path))
    forced = CompactionPlan(
        plan.uri,
        plan.read_version,
        plan.storage_version,
        (CompactionTask(0, (0, 1), 2, 0, (OutputFile((0, 1), 2, 0),), files=2),),
        (),
        plan.options,
    )
    result = execute_task(str(path), forced, forced.tasks[0])
    assert result.skipped_reason == "not_copyable"
    assert "'s.x.item'" in (result.skipped_detail or "") and "nullable" in (result.skipped_detail or "")
    assert tree_digest(path) == before


@pytest.mark.parametrize("version", STRUCTURAL)
def test_multi_file_fragments_with_nested_columns_merge(tmp_path: Path, version: str) -> None:
    """After ``add_columns`` each fragment has two files, only one holding the struct above a
    list: the copier compares layers per field, not per file, so the fragments still merge."""
    t = pa.struct([("x", pa.list_(pa.int64()))])
    tables = [pa.table({"i": pa.array([k], pa.int64()), "s": pa.array([{"x": [k, k]}], t)}) for k in range(3)]
    path = tmp_path / "ds.lance"
    write_fragments(path, tables, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).add_columns({"d": "i * 2"})
    assert [len(f.metadata.files) for f in lance.dataset(str(path)).get_fragments()] == [2, 2, 2]
    expected = lance.dataset(str(path)).to_table()
    dry = cli_compact(path, "--dry-run", "--no-reencode-fallback")
    report = cli_compact(path, "--no-reencode-fallback")
    assert report["tasks"] == dry["tasks"] == 1 and report["tasks_skipped"] == 0 and report["skipped"] == []
    assert len(lance.dataset(str(path)).get_fragments()) == 1
    assert_reads_as(path, expected)


def test_self_check_refuses_a_file_that_differs_from_what_was_meant(tmp_path: Path) -> None:
    """``verify_output`` reads the written file back: a changed byte of its metadata, a wrong
    row count or a layer mix is refused."""
    path = tmp_path / "ds.lance"
    t = pa.struct([("x", pa.list_(pa.int64()))])
    write_fragments(path, [pa.table({"s": pa.array([{"x": [1]}], t)}), pa.table({"s": pa.array([{"x": [2, 3]}], t)})], "2.2")
    compact(str(path))
    ds = Dataset.open(str(path))
    (frag,) = ds.fragments
    df = frag.files[0]
    rel = ds.data_file_path(df)
    meta = read_v2_metadata(ds.storage, rel)
    version = FileVersion.V2_2
    verify_output(ds.storage, rel, meta.file_size, 2, meta.columns, version, [0])  # as written: fine
    with pytest.raises(CompactionRefusedError, match="rows"):
        verify_output(ds.storage, rel, meta.file_size, 3, meta.columns, version, [0])
    # The same pages, but one of them now claims a nullable struct above the list: refused.
    other = tmp_path / "other.lance"
    factory.write(pa.table({"s": pa.array([None, {"x": [4]}], t)}), other, "2.2", mode="create")
    ods = Dataset.open(str(other))
    nullable_page = read_v2_metadata(ods.storage, ods.data_file_path(ods.fragments[0].files[0])).columns[0].pages[0]
    mixed = [type(meta.columns[0])()]
    mixed[0].CopyFrom(meta.columns[0])
    mixed[0].pages[1].encoding.CopyFrom(nullable_page.encoding)
    data = (path / "data" / df.path).read_bytes()
    rewritten = data[: meta.data_end] + build_tail(meta.data_end, mixed, meta.descriptor, version)
    (path / "data" / df.path).write_bytes(rewritten)
    with pytest.raises(CompactionRefusedError, match="layers"):
        verify_output(ds.storage, rel, len(rewritten), 2, mixed, version, [0])
    with pytest.raises(CompactionRefusedError, match="differs"):
        verify_output(ds.storage, rel, len(rewritten), 2, meta.columns, version, [0])


# --- random nested data -------------------------------------------------------------------------
def _property(version: str, max_examples: int, derandomize: bool):  # type: ignore[no-untyped-def]
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
        maps = version not in ("2.0", "2.1")  # maps need file version 2.2+
        t = data.draw(st.one_of(nested.arrow_types(3, maps=maps), nested.guarded_types(maps=maps)), label="type")
        sizes = data.draw(st.lists(st.one_of(st.integers(1, 4), st.integers(1, 60)), min_size=2, max_size=6), label="sizes")
        tables = data.draw(nested.tables(t, sizes, null_structs=version != "2.0"), label="tables")
        path = tmp_path_factory.mktemp("nested") / "ds.lance"
        try:
            write_fragments(path, tables, version)
        except BaseException as exc:  # pylance cannot write some types in some versions (or panics)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            shutil.rmtree(path, ignore_errors=True)
            return
        try:  # pylance 14 misreads some nested values it wrote itself; nothing to judge us by then
            assert_reads_as(path, pa.concat_tables(tables))
        except Exception:
            return
        before_version = lance.dataset(str(path)).version
        before = tree_digest(path)
        # binary copy only (groups split where layers disagree), or re-encoding such groups
        extra = ["--no-reencode-fallback"] if data.draw(st.booleans(), label="binary copy only") else []
        dry = cli_compact(path, "--dry-run", *extra)
        report = cli_compact(path, *extra)
        # A re-encode pylance then misreads (its own bug on some nested values) is refused at run
        # time, which no dry run can foresee: those groups are untouched; all else must agree.
        failed = {s["fragment_id"] for s in report["skipped"] if s["reason"] == "reencode_failed"}
        assert failed <= {i for t in dry["plan"]["tasks"] if t["reencode"] for i in t["fragment_ids"]}
        kept = [s for s in report["skipped"] if s["reason"] != "reencode_failed"]
        if not failed:
            assert (report["tasks"], report["fragments_removed"]) == (dry["tasks"], dry["fragments_removed"])
        assert kept == dry["skipped"]
        if report["version"] is None:
            assert tree_digest(path) == before, "an untouched dataset changed"
        else:
            assert report["version"] == before_version + 1
        assert_reads_as(path, pa.concat_tables(tables))
        assert_lance_order(path, tables, dry["plan"])

    return check


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_random_nested_data_compacts_readably(tmp_path_factory: pytest.TempPathFactory, version: str) -> None:
    # The same 150 examples on every run (CI must not turn red by chance; a known 2.3 failure
    # is listed in docs/how-it-works.md); the slow run below draws new ones each time.
    _property(version, 150, derandomize=True)(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_random_nested_data_compacts_readably_many(tmp_path_factory: pytest.TempPathFactory, version: str) -> None:
    _property(version, 1500, derandomize=False)(tmp_path_factory)
