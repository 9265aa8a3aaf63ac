"""Tests for lance_assets.format.v2file against files written by pylance 14.

The decisive test is ``test_merged_file_reads_back``: a minimal merger (here, not in the
package) copies the data regions of several real files into one, rewrites their metadata with
the module's functions, and pylance's own file reader must return the concatenated rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import itertools
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from google.protobuf import any_pb2
from hypothesis import event, given, settings
from hypothesis import strategies as st
from lance.file import LanceFileReader, LanceFileWriter

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2
from lance_assets.errors import (
    CompactionRefusedError,
    CorruptFileError,
    UnsupportedVersionError,
)
from lance_assets.format import v2file
from lance_assets.format.protobuf import varint, wire_fields
from lance_assets.format.v2file import (
    ALIGNMENT,
    DEFAULT_TAIL_BYTES,
    FOOTER_SIZE,
    ColumnMerger,
    FileVersion,
    NeedMore,
    V2FileMetadata,
    build_tail,
    is_struct_header_column,
    merge_column,
    padding_for,
    parse_footer,
    parse_tail,
    with_num_rows,
)
from lance_assets.format.v2safety import blob_fields, inspect_copy_safety

VERSIONS = ["2.0", "2.1", "2.2", "2.3"]

warnings.filterwarnings("ignore", message=".*unstable.*")


# ------------------------------------------------------------------------------------------
# data


def mixed_table(n: int, start: int, version: str) -> pa.Table:
    """Every type the compactor must carry, with nulls where the version allows them."""
    r = range(start, start + n)
    cols: dict[str, pa.Array] = {
        "i8": pa.array([i % 100 - 50 for i in r], pa.int8()),
        "i16": pa.array([i % 30000 for i in r], pa.int16()),
        "i32": pa.array([i * 7 if i % 5 else None for i in r], pa.int32()),
        "i64": pa.array([i * 1_000_003 for i in r], pa.int64()),
        "u8": pa.array([i % 256 for i in r], pa.uint8()),
        "u16": pa.array([i % 60000 for i in r], pa.uint16()),
        "u32": pa.array([i * 3 for i in r], pa.uint32()),
        "u64": pa.array([i * 2**40 for i in r], pa.uint64()),
        "f16": pa.array(np.array([i / 2 for i in r], dtype=np.float16)),
        "f32": pa.array([i * 1.5 for i in r], pa.float32()),
        "f64": pa.array([i * 2.25 if i % 3 else None for i in r], pa.float64()),
        "b": pa.array([i % 2 == 0 if i % 7 else None for i in r], pa.bool_()),
        "s": pa.array([f"str{i}" * (i % 4) if i % 6 else None for i in r], pa.string()),
        "ls": pa.array([f"L{i}" for i in r], pa.large_string()),
        "bin": pa.array([bytes([i % 256]) * (i % 5) for i in r], pa.binary()),
        "lbin": pa.array([bytes([i % 256]) * (i % 9) for i in r], pa.large_binary()),
        "fsb": pa.array([bytes([i % 256]) * 4 for i in r], pa.binary(4)),
        "dec": pa.array([decimal.Decimal(i) / 100 for i in r], pa.decimal128(10, 2)),
        "d32": pa.array([datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in r], pa.date32()),
        "ts": pa.array([i * 1_000_000 for i in r], pa.timestamp("us", tz="UTC")),
        "dict": pa.array([["a", "b", "c"][i % 3] for i in r]).dictionary_encode(),
        "lst": pa.array([list(range(i % 4)) if i % 8 else None for i in r], pa.list_(pa.int64())),
        "llst": pa.array([list(range(i % 3)) for i in r], pa.large_list(pa.int32())),
        "ll": pa.array([[list(range(i % 3)), []] for i in r], pa.list_(pa.list_(pa.int32()))),
        "fsl": pa.array([[float(i + j) for j in range(8)] for i in r], pa.list_(pa.float32(), 8)),
        "st": pa.array(
            [{"x": i, "y": f"y{i}"} if (i % 9 or version == "2.0") else None for i in r],
            pa.struct([("x", pa.int32()), ("y", pa.string())]),
        ),
        "stl": pa.array(
            [{"a": list(range(i % 3)), "z": i % 30000} for i in r],
            pa.struct([("a", pa.list_(pa.int64())), ("z", pa.int16())]),
        ),
        "lst_st": pa.array(
            [[{"p": i, "q": "q"}] * (i % 4) for i in r],
            pa.list_(pa.struct([("p", pa.int64()), ("q", pa.string())])),
        ),
        "alln": pa.array([None] * n, pa.int32()),
    }
    if version not in ("2.0", "2.1"):  # maps need file version 2.2+
        cols["map"] = pa.array([[(f"k{j}", j) for j in range(i % 3)] for i in r], pa.map_(pa.string(), pa.int32()))
    return pa.table(cols)


def big_table(n: int, start: int) -> pa.Table:
    """Large values: full-zip / zipped layouts, FSST-compressed strings, wide vectors."""
    r = range(start, start + n)
    return pa.table(
        {
            "big": pa.array(["x" * (3000 + i % 50) + str(i) for i in r], pa.large_string()),
            "bigb": pa.array([bytes([i % 250]) * (300 + i % 7) for i in r], pa.binary()),
            "vec": pa.array([[float(i)] * 256 for i in r], pa.list_(pa.float32(), 256)),
            "rnd": pa.array(np.random.default_rng(start).integers(0, 2**62, n)),
        }
    )


def _write(path: Path, version: str, tables: list[pa.Table], **kwargs: object) -> str:
    for k, table in enumerate(tables):
        mode = "create" if k == 0 else "append"
        lance.write_dataset(table, str(path), mode=mode, data_storage_version=version, **kwargs)
    return str(path)


@pytest.fixture(scope="module", params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def mixed_ds(version: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three appends of 100, 50 and 30 rows: three single-page fragments."""
    tables = [mixed_table(100, 0, version), mixed_table(50, 100, version), mixed_table(30, 150, version)]
    return _write(tmp_path_factory.mktemp(f"mixed{version}") / "ds", version, tables)


@pytest.fixture(scope="module")
def multipage_ds(version: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Files of 150 rows written from 50-row batches with no page cache: 3 pages per column."""
    table = mixed_table(400, 0, version)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=50))
    path = tmp_path_factory.mktemp(f"multipage{version}") / "ds"
    lance.write_dataset(reader, str(path), data_storage_version=version, max_rows_per_file=150, data_cache_bytes=1)
    return str(path)


@pytest.fixture(scope="module")
def big_ds(version: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp(f"big{version}") / "ds"
    lance.write_dataset(big_table(900, 0), str(path), data_storage_version=version, max_rows_per_file=400)
    return str(path)


# ------------------------------------------------------------------------------------------
# helpers


def read_meta(path: str, first: int = DEFAULT_TAIL_BYTES) -> V2FileMetadata:
    """What an I/O caller does: read a tail, prepend what parse_tail asks for, repeat."""
    data = Path(path).read_bytes()
    size = len(data)
    offset = max(0, size - first)
    while True:
        result = parse_tail(data[offset:], offset, size, path=path)
        if isinstance(result, NeedMore):
            assert result.offset < offset
            offset = result.offset
            continue
        return result


def data_files(ds_path: str) -> list[tuple[lance.fragment.LanceFragment, str]]:
    ds = lance.dataset(ds_path)
    out = []
    for fragment in ds.get_fragments():
        (data_file,) = fragment.data_files()
        out.append((fragment, f"{ds_path}/data/{data_file.path}"))
    return out


def lance_fields(ds_path: str) -> list[tuple[str, int, int]]:
    """(name, id, parent id) of pylance's schema, pre-order."""

    def walk(fields: list, parent: int) -> Iterator[tuple[str, int, int]]:
        for field in fields:
            yield field.name(), field.id(), parent
            yield from walk(field.children(), field.id())

    return list(walk(lance.dataset(ds_path).lance_schema.fields(), -1))


def merge_files(paths: list[str], out_path: str) -> V2FileMetadata:
    """Tiny copy engine: copy each data region 64-aligned, rewrite metadata, append the tail."""
    metas = [read_meta(p) for p in paths]
    version = metas[0].version
    out = bytearray()
    deltas, row_offsets, rows = [], [], 0
    for path, meta in zip(paths, metas, strict=True):
        out += bytes(padding_for(len(out)))
        deltas.append(len(out))
        row_offsets.append(rows)
        out += Path(path).read_bytes()[: meta.data_end]
        rows += meta.num_rows
    columns = [merge_column([m.columns[i] for m in metas], deltas, row_offsets, version) for i in range(metas[0].num_columns)]
    out += build_tail(len(out), columns, with_num_rows(metas[0].descriptor, rows), version)
    Path(out_path).write_bytes(out)
    return read_meta(out_path)


def normalize(table: pa.Table) -> pa.Table:
    """Dictionary columns come back with per-file or merged dictionaries: compare values."""
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(cols, names=table.column_names).combine_chunks()


def read_file(path: str) -> pa.Table:
    return normalize(LanceFileReader(path).read_all().to_table())


def encoding_any(page: file2_pb2.ColumnMetadata.Page) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(page.encoding.direct.encoding)
    return wrapped


def with_page_encoding(meta: V2FileMetadata, column: int, type_url: str, value: bytes) -> V2FileMetadata:
    """Copy of ``meta`` whose column's pages all carry the given Any-wrapped encoding."""
    columns = list(meta.columns)
    changed = file2_pb2.ColumnMetadata()
    changed.CopyFrom(columns[column])
    for page in changed.pages:
        page.encoding.direct.encoding = any_pb2.Any(type_url=type_url, value=value).SerializeToString()
    columns[column] = changed
    return dataclasses.replace(meta, columns=tuple(columns))


def unknown_field(number: int, payload: bytes = b"\x01") -> bytes:
    """A length-delimited protobuf field with a tag our protos do not define."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


# ------------------------------------------------------------------------------------------
# reading real files


def test_versions_map_both_spellings() -> None:
    assert FileVersion.from_footer_pair(0, 3) is FileVersion.V2_0
    assert FileVersion.from_footer_pair(2, 0) is FileVersion.V2_0  # Lance's reader accepts both
    assert FileVersion.V2_0.footer_pair == (0, 3)
    assert FileVersion.V2_0.manifest_pair == (2, 0)
    for v in ("2.1", "2.2", "2.3"):
        version = FileVersion(v)
        assert FileVersion.from_footer_pair(*version.footer_pair) is version
        assert FileVersion.from_manifest_pair(*version.manifest_pair) is version
        assert version.aligned
    assert not FileVersion.V2_0.aligned
    for pair in [(0, 0), (0, 1), (0, 2)]:
        with pytest.raises(UnsupportedVersionError, match="legacy"):
            FileVersion.from_footer_pair(*pair)
    for pair in [(2, 9), (3, 0), (1, 0), (0, 4)]:
        with pytest.raises(UnsupportedVersionError):
            FileVersion.from_footer_pair(*pair)


@pytest.mark.parametrize("kind", ["mixed", "multipage", "big"])
def test_parse_every_data_file(kind: str, version: str, request: pytest.FixtureRequest) -> None:
    ds_path = request.getfixturevalue(f"{kind}_ds")
    expected_fields = lance_fields(ds_path)
    files = data_files(ds_path)
    assert len(files) >= 2
    for fragment, path in files:
        meta = read_meta(path)
        data_file = fragment.metadata.files[0]
        assert meta.version is FileVersion(version)
        assert (data_file.file_major_version, data_file.file_minor_version) == meta.version.manifest_pair
        assert meta.num_rows == fragment.metadata.physical_rows == fragment.count_rows()
        assert meta.num_columns == len(data_file.column_indices)
        assert sorted(data_file.column_indices) == list(range(meta.num_columns))
        assert [(f.name, f.id, f.parent_id) for f in meta.fields] == expected_fields
        assert meta.file_size == Path(path).stat().st_size
        if data_file.file_size_bytes:
            assert data_file.file_size_bytes == meta.file_size
        assert meta.global_buffers[0][0] == meta.data_end
        for column in meta.columns:
            assert len(column.pages) >= 1
            rows = 0
            for info in column.pages:
                for offset, size in zip(info.buffer_offsets, info.buffer_sizes, strict=True):
                    assert offset >= 0 and offset + size <= meta.data_end
                    if meta.version.aligned:
                        assert offset % ALIGNMENT == 0
                if meta.version.aligned:  # 2.1+: priority = first row of the page
                    assert info.priority == rows
                rows += info.length
        if meta.version.aligned:
            assert meta.data_end % ALIGNMENT == 0
        safety = inspect_copy_safety(meta)
        assert safety.copyable, safety.reasons
        assert not any(c.deferred_encodings or c.column_buffers for c in safety.columns)
        struct_headers = [c.index for c in safety.columns if c.struct_header]
        if version == "2.0" and kind != "big":
            names = [f.name for f in meta.fields]
            # 2.0: one column per field; struct parents (st, stl, lst_st's item) are headers
            assert struct_headers == [names.index("st"), names.index("stl"), names.index("lst_st") + 1]
        else:
            assert struct_headers == []


def test_tail_protocol_asks_for_missing_bytes(mixed_ds: str) -> None:
    _, path = data_files(mixed_ds)[0]
    data = Path(path).read_bytes()
    size = len(data)
    full = read_meta(path, size)
    for first in (1, 39, 40, 41, 100, 200, 1000, size - 1):
        assert read_meta(path, first) == full
    first_ask = parse_tail(data[-FOOTER_SIZE:], size - FOOTER_SIZE, size, path=path)
    assert first_ask == NeedMore(full.footer.column_meta_start)
    second_ask = parse_tail(data[first_ask.offset :], first_ask.offset, size, path=path)
    assert second_ask == NeedMore(full.data_end)
    with pytest.raises(ValueError):
        parse_tail(data[-100:], size - 99, size)


def test_rebuilt_tail_is_byte_identical(mixed_ds: str) -> None:
    """Re-serialising parsed metadata reproduces pylance's bytes exactly (unknown fields too)."""
    for _, path in data_files(mixed_ds):
        data = Path(path).read_bytes()
        meta = read_meta(path)
        tail = build_tail(meta.data_end, meta.columns, meta.descriptor, meta.version)
        assert tail == data[meta.data_end :]
        for column, (pos, size) in zip(meta.columns, meta.column_ranges, strict=True):
            unmoved = merge_column([column], [0], [0], meta.version)
            assert unmoved.SerializeToString() == column.SerializeToString()
            assert column.SerializeToString() == data[pos : pos + size]


def test_column_merger_changes_only_offsets_and_priority(mixed_ds: str) -> None:
    _, path = data_files(mixed_ds)[0]
    meta = read_meta(path)
    column = next(c for c in meta.columns if any(len(p.buffer_offsets) >= 2 for p in c.pages))
    before = column.SerializeToString()

    def shifted(page: file2_pb2.ColumnMetadata.Page) -> list[int]:
        return [o + 4096 for o in page.buffer_offsets]

    def mapped(page: file2_pb2.ColumnMetadata.Page) -> list[int]:
        # a relocation function is asked only about buffers that hold bytes
        return [o + 4096 if n else 0 for o, n in zip(page.buffer_offsets, page.buffer_sizes, strict=True)]

    for relocation, expected in ((4096, shifted), (lambda offset: offset + 4096, mapped)):
        merger = ColumnMerger(meta.version)
        merger.add(column, relocation, row_offset=250)
        merged = merger.finish()
        assert len(merged.pages) == len(column.pages)
        for page, moved in zip(column.pages, merged.pages, strict=True):
            assert list(moved.buffer_offsets) == expected(page)
            assert moved.priority == page.priority + 250
            assert moved.buffer_sizes == page.buffer_sizes and moved.length == page.length
            assert moved.encoding.SerializeToString() == page.encoding.SerializeToString()
        assert merged.encoding == column.encoding
    assert column.SerializeToString() == before  # input untouched


# ------------------------------------------------------------------------------------------
# the proof: merged files read back with pylance


@pytest.mark.parametrize("kind", ["mixed", "multipage", "big"])
def test_merged_file_reads_back(kind: str, version: str, request: pytest.FixtureRequest) -> None:
    ds_path = request.getfixturevalue(f"{kind}_ds")
    paths = [p for _, p in data_files(ds_path)][:3]
    metas = [read_meta(p) for p in paths]
    out_path = f"{ds_path}/data/merged-{kind}.lance"
    merged = merge_files(paths, out_path)

    expected = pa.concat_tables([read_file(p) for p in paths]).combine_chunks()
    got = read_file(out_path)
    assert got.num_rows == expected.num_rows == sum(m.num_rows for m in metas)
    for name in expected.column_names:
        assert got[name].equals(expected[name]), name

    # ranges and takes that cross input-file boundaries
    reader = LanceFileReader(out_path)
    first = metas[0].num_rows
    window = normalize(reader.read_range(first - 3, 7).to_table())
    assert window.equals(expected.slice(first - 3, 7))
    indices = [0, first - 1, first, merged.num_rows - 1]
    taken = normalize(reader.take_rows(indices).to_table())
    assert taken.equals(pa.concat_tables([expected.slice(i, 1) for i in indices]))

    # metadata of the merged file
    assert merged.version is metas[0].version and merged.num_rows == expected.num_rows
    assert len(merged.global_buffers) == 1 and merged.data_end % ALIGNMENT == 0
    assert inspect_copy_safety(merged).copyable
    for i, column in enumerate(merged.columns):
        if version == "2.0" and is_struct_header_column(metas[0].columns[i]):
            (page,) = column.pages
            assert page.length == sum(p.length for m in metas for p in m.columns[i].pages)
            assert page.priority == 0
            continue
        expected_priorities = [
            p.priority + sum(m.num_rows for m in metas[:k]) for k, m in enumerate(metas) for p in m.columns[i].pages
        ]
        assert [p.priority for p in column.pages] == expected_priorities


def test_merged_file_merges_again(mixed_ds: str) -> None:
    """Output files are valid inputs: merge (merged 0+1) with file 2."""
    paths = [p for _, p in data_files(mixed_ds)]
    first = f"{mixed_ds}/data/pair.lance"
    merge_files(paths[:2], first)
    again = f"{mixed_ds}/data/pair-plus-one.lance"
    merge_files([first, paths[2]], again)
    expected = pa.concat_tables([read_file(p) for p in paths]).combine_chunks()
    assert read_file(again).equals(expected)


# ------------------------------------------------------------------------------------------
# position independence (the 2.3 evidence; checked for every version)


@pytest.mark.parametrize("kind", ["mixed", "wide"])
def test_encodings_do_not_depend_on_file_position(kind: str, version: str, tmp_path: Path) -> None:
    """Write the same data at three file offsets (a leading global buffer shifts every page):
    page encodings and page bytes must be identical, so no encoding embeds an absolute offset.
    ("wide" = the large-value table without its long strings, whose FSST symbol tables are
    not deterministic between writes.)"""
    if kind == "mixed":
        table = mixed_table(3000, 0, version)
    else:
        table = big_table(600, 0).drop_columns(["big"])
    metas, blobs = [], []
    for shift in (0, 1000, 7777):
        path = tmp_path / f"shift{shift}.lance"
        writer = LanceFileWriter(str(path), version=version)
        if shift:
            writer.add_global_buffer(b"z" * shift)
        writer.write_batch(table)
        writer.close()
        metas.append(read_meta(str(path)))
        blobs.append(path.read_bytes())
    base, base_bytes = metas[0], blobs[0]
    for meta, data in zip(metas[1:], blobs[1:], strict=True):
        assert meta.columns[0].pages[0].buffer_offsets[0] != base.columns[0].pages[0].buffer_offsets[0]
        for col_a, col_b in zip(base.columns, meta.columns, strict=True):
            assert col_a.encoding == col_b.encoding
            for page_a, page_b in zip(col_a.pages, col_b.pages, strict=True):
                assert page_a.encoding == page_b.encoding
                assert page_a.buffer_sizes == page_b.buffer_sizes
                for off_a, off_b, size in zip(page_a.buffer_offsets, page_b.buffer_offsets, page_a.buffer_sizes, strict=True):
                    assert base_bytes[off_a : off_a + size] == data[off_b : off_b + size]


def test_planar_layouts_have_the_accepted_shape(tmp_path: Path) -> None:
    """Every 2.3 page pylance writes for our types is field 1 (structure) + field 2 (value
    plane) whose single field names the plane: chunked, zipped, constant or all-null."""
    seen = set()
    constant = pa.table({"c": pa.array([7] * 5000, pa.int64())})
    tables = [("mixed", mixed_table(2000, 0, "2.3")), ("big", big_table(300, 0)), ("const", constant)]
    for name, table in tables:
        path = tmp_path / f"{name}.lance"
        with LanceFileWriter(str(path), version="2.3") as writer:
            writer.write_batch(table)
        meta = read_meta(str(path))
        assert inspect_copy_safety(meta).copyable
        for column in meta.columns:
            for page in column.pages:
                wrapped = encoding_any(page)
                assert wrapped.type_url == "/lance.encodings23.PlanarLayout"
                top = wire_fields(wrapped.value)
                assert top is not None and [number for number, _, _ in top] == [1, 2]
                (plane,) = wire_fields(top[1][2])  # type: ignore[misc, arg-type]
                seen.add(plane[0])
    assert seen == {1, 2, 3, 4}


# ------------------------------------------------------------------------------------------
# refusals


def test_blob_columns_are_refused(version: str, tmp_path: Path) -> None:
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("blob", pa.large_binary(), metadata={"lance-encoding:blob": "true"}),
        ]
    )
    table = pa.table({"id": list(range(10)), "blob": [bytes([i]) * 1000 for i in range(10)]}, schema=schema)
    datasets = [_write(tmp_path / "legacy_blob", version, [table])]
    if version not in ("2.0", "2.1"):
        from lance.blob import blob_array, blob_field

        v2_schema = pa.schema([pa.field("id", pa.int64()), blob_field("blob")])
        values = blob_array([bytes([i]) * (10 if i < 5 else 100_000) for i in range(10)])
        v2_table = pa.table({"id": list(range(10)), "blob": values}, schema=v2_schema)
        datasets.append(_write(tmp_path / "blob_v2", version, [v2_table]))
    for ds_path in datasets:
        for _, path in data_files(ds_path):
            meta = read_meta(path)
            assert [f.name for f in blob_fields(meta.descriptor)] == ["blob"]
            safety = inspect_copy_safety(meta)
            assert not safety.copyable
            assert any("blob field 'blob'" in r for r in safety.file_reasons)
            if version == "2.0":
                assert "blob column encoding" in (safety.columns[1].reason or "")
            if version == "2.1":
                assert "blob page layout" in (safety.columns[1].reason or "")


def test_extra_global_buffers_are_refused(version: str, tmp_path: Path) -> None:
    path = tmp_path / "gb.lance"
    writer = LanceFileWriter(str(path), version=version)
    writer.add_global_buffer(b"user data")
    writer.write_batch(pa.table({"x": list(range(10))}))
    writer.close()
    meta = read_meta(str(path))
    assert len(meta.global_buffers) == 2
    safety = inspect_copy_safety(meta)
    assert not safety.copyable and "2 global buffers" in safety.file_reasons[0]
    assert all(c.copyable for c in safety.columns)


@pytest.fixture(scope="module")
def simple_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, V2FileMetadata]:
    """One small single-column int file per version, for hand-crafted encodings."""
    out = {}
    for v in VERSIONS:
        path = tmp_path_factory.mktemp(f"simple{v}") / "f.lance"
        with LanceFileWriter(str(path), version=v) as writer:
            writer.write_batch(pa.table({"x": pa.array([1, None, 3] * 10, pa.int64())}))
        out[v] = read_meta(str(path))
    return out


def _reasons(meta: V2FileMetadata) -> str:
    safety = inspect_copy_safety(meta)
    assert not safety.copyable
    return " | ".join(safety.reasons)


def test_v20_encodings_that_point_outside_the_page(simple_files: dict[str, V2FileMetadata]) -> None:
    meta = simple_files["2.0"]
    url = "/lance.encodings.ArrayEncoding"
    for buffer_type, word in [(enc20.Buffer.file, "file buffer"), (enc20.Buffer.column, "column buffer")]:
        buffer = enc20.Buffer(buffer_type=buffer_type)
        flat = enc20.ArrayEncoding(flat=enc20.Flat(bits_per_value=64, buffer=buffer))
        nested = enc20.ArrayEncoding(nullable=enc20.Nullable(no_nulls=enc20.Nullable.NoNull(values=flat)))
        assert word in _reasons(with_page_encoding(meta, 0, url, nested.SerializeToString()))
    # an unknown field deep in the tree, and an unknown variant
    flat_with_unknown = enc20.Flat()
    flat_with_unknown.ParseFromString(enc20.Flat(bits_per_value=64).SerializeToString() + unknown_field(9))
    values = enc20.ArrayEncoding(flat=flat_with_unknown)
    tampered = enc20.ArrayEncoding(nullable=enc20.Nullable(no_nulls=enc20.Nullable.NoNull(values=values)))
    reasons = _reasons(with_page_encoding(meta, 0, url, tampered.SerializeToString()))
    assert "lance.encodings.Flat has unknown field(s) [9]" in reasons
    assert "selects no known variant" in _reasons(with_page_encoding(meta, 0, url, unknown_field(30)))
    assert "unexpected page encoding type" in _reasons(with_page_encoding(meta, 0, "/lance.encodings21.PageLayout", b""))


def test_column_encodings_and_buffers(simple_files: dict[str, V2FileMetadata]) -> None:
    meta = simple_files["2.1"]
    url = "/lance.encodings.ColumnEncoding"
    cases = [
        (enc20.ColumnEncoding(zone_index=enc20.ZoneIndex(rows_per_zone=10)), "column statistics"),
        (enc20.ColumnEncoding(blob=enc20.Blob()), "blob column encoding"),
        (enc20.ColumnEncoding(), "selects no known variant"),
    ]
    for encoding, word in cases:
        column = file2_pb2.ColumnMetadata()
        column.CopyFrom(meta.columns[0])
        wrapped = any_pb2.Any(type_url=url, value=encoding.SerializeToString())
        column.encoding.direct.encoding = wrapped.SerializeToString()
        assert word in _reasons(dataclasses.replace(meta, columns=(column,)))
    column = file2_pb2.ColumnMetadata()
    column.CopyFrom(meta.columns[0])
    column.buffer_offsets.append(0)
    column.buffer_sizes.append(8)
    with_buffers = dataclasses.replace(meta, columns=(column,))
    assert "column-level buffers" in _reasons(with_buffers)
    assert inspect_copy_safety(with_buffers).columns[0].column_buffers == ((0, 8),)


def test_deferred_and_missing_encodings(simple_files: dict[str, V2FileMetadata]) -> None:
    meta = simple_files["2.2"]
    column = file2_pb2.ColumnMetadata()
    column.CopyFrom(meta.columns[0])
    column.pages[0].encoding.indirect.buffer_location = 128
    column.pages[0].encoding.indirect.buffer_length = 20
    changed = dataclasses.replace(meta, columns=(column,))
    assert "deferred page encoding" in _reasons(changed)
    assert inspect_copy_safety(changed).columns[0].deferred_encodings == ((128, 20),)
    with pytest.raises(ValueError, match="deferred encoding"):
        ColumnMerger(meta.version).add(column, 0, 0)
    column.pages[0].ClearField("encoding")
    assert "missing page encoding" in _reasons(dataclasses.replace(meta, columns=(column,)))


def test_v21_v22_layouts(simple_files: dict[str, V2FileMetadata]) -> None:
    url = "/lance.encodings21.PageLayout"
    for v in ("2.1", "2.2"):
        meta = simple_files[v]
        blob = enc21.PageLayout(blob_layout=enc21.BlobLayout()).SerializeToString()
        assert "blob page layout" in _reasons(with_page_encoding(meta, 0, url, blob))
        assert "selects no known variant" in _reasons(with_page_encoding(meta, 0, url, unknown_field(9)))
        original = encoding_any(meta.columns[0].pages[0]).value
        extended = with_page_encoding(meta, 0, url, original + unknown_field(12))
        assert "has unknown field(s) [12]" in _reasons(extended)
    # the mini-block field pylance 14 adds in 2.2 is accepted there, refused in 2.1
    mini = enc21.MiniBlockLayout(num_items=30)
    extended = mini.SerializeToString() + b"\x50\x01"  # field 10, varint 1
    layout = b"\x0a" + varint(len(extended)) + extended
    assert inspect_copy_safety(with_page_encoding(simple_files["2.2"], 0, url, layout)).copyable
    assert "MiniBlockLayout has unknown field(s) [10]" in _reasons(with_page_encoding(simple_files["2.1"], 0, url, layout))


def test_v23_unknown_planar_shapes(simple_files: dict[str, V2FileMetadata]) -> None:
    meta = simple_files["2.3"]
    url = "/lance.encodings23.PlanarLayout"
    original = encoding_any(meta.columns[0].pages[0]).value
    assert inspect_copy_safety(with_page_encoding(meta, 0, url, original)).copyable
    bad = {
        "unknown 2.3 PlanarLayout shape": original + unknown_field(3),
        "value plane": b"\x12\x02" + unknown_field(5, b""),  # plane kind 5 is unknown
        "malformed": b"\x12\x7f\x00",
    }
    for word, value in bad.items():
        assert word in _reasons(with_page_encoding(meta, 0, url, value))
    assert "shape" in _reasons(with_page_encoding(meta, 0, url, b""))


def test_merge_column_refusals(simple_files: dict[str, V2FileMetadata], mixed_ds: str) -> None:
    meta = simple_files["2.1"]
    other = file2_pb2.ColumnMetadata()
    other.CopyFrom(meta.columns[0])
    other.encoding.direct.encoding = b"different"
    with pytest.raises(CompactionRefusedError, match="different column encoding"):
        merge_column([meta.columns[0], other], [0, 1024], [0, 30], meta.version)
    other.CopyFrom(meta.columns[0])
    other.buffer_offsets.append(0)
    other.buffer_sizes.append(1)
    with pytest.raises(CompactionRefusedError, match="column-level buffers"):
        merge_column([meta.columns[0], other], [0, 1024], [0, 30], meta.version)
    with pytest.raises(ValueError):
        merge_column([meta.columns[0]], [0, 1], [0], meta.version)


def test_build_tail_rejects_unreadable_layouts(simple_files: dict[str, V2FileMetadata]) -> None:
    meta = simple_files["2.1"]
    shifted = [merge_column([c], [8], [0], meta.version) for c in meta.columns]
    with pytest.raises(ValueError, match="aligned"):
        build_tail(meta.data_end + 8, shifted, meta.descriptor, meta.version)
    with pytest.raises(ValueError, match="past the data region"):
        build_tail(10, list(meta.columns), meta.descriptor, meta.version)
    # 2.0 has no alignment rule
    meta20 = simple_files["2.0"]
    shifted20 = [merge_column([c], [8], [0], meta20.version) for c in meta20.columns]
    assert build_tail(meta20.data_end + 8, shifted20, meta20.descriptor, meta20.version)


@pytest.mark.parametrize("version", ["2.0"], indirect=True)  # struct headers exist only in 2.0
def test_struct_header_pages_collapse_to_their_summed_length(mixed_ds: str) -> None:
    metas = [read_meta(p) for _, p in data_files(mixed_ds)]
    names = [f.name for f in metas[0].fields]
    nested = names.index("lst_st") + 1  # the list's struct item: length counts items, not rows
    merger = ColumnMerger(metas[0].version)
    for row_offset, meta in zip(itertools.accumulate([0] + [m.num_rows for m in metas]), metas):
        assert is_struct_header_column(meta.columns[nested])
        merger.add(meta.columns[nested], 0, row_offset)
    (merged,) = merger.finish().pages
    pages = [p for m in metas for p in m.columns[nested].pages]
    assert merged.length == sum(p.length for p in pages) != sum(m.num_rows for m in metas)
    assert merged.priority == 0 and not merged.buffer_offsets
    assert not is_struct_header_column(metas[0].columns[names.index("i64")])
    with pytest.raises(ValueError):
        ColumnMerger(metas[0].version).finish()


# ------------------------------------------------------------------------------------------
# damaged files: only our typed errors


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("sample") / "ds"
    _write(path, "2.1", [mixed_table(40, 0, "2.1")])
    ((_, file_path),) = data_files(str(path))
    return Path(file_path).read_bytes()


def _parse_bytes(data: bytes, first: int = DEFAULT_TAIL_BYTES) -> V2FileMetadata:
    size = len(data)
    offset = max(0, size - first)
    while True:
        result = parse_tail(data[offset:], offset, size, path="mem.lance")
        if not isinstance(result, NeedMore):
            return result
        assert result.offset < offset
        offset = result.offset


def _patch_footer(data: bytes, **changes: int) -> bytes:
    names = ["cm", "cmo", "gbo", "ngb", "ncol", "major", "minor"]
    values = dict(zip(names, struct.unpack("<QQQIIHH", data[-40:-4]), strict=True))
    values.update(changes)
    return data[:-40] + struct.pack("<QQQIIHH", *(values[n] for n in names)) + data[-4:]


def test_truncated_and_wrong_magic(sample_file: bytes) -> None:
    for cut in (0, 10, 39, 40, len(sample_file) // 2, len(sample_file) - 1):
        with pytest.raises(CorruptFileError):
            _parse_bytes(sample_file[:cut])
    with pytest.raises(CorruptFileError, match="magic"):
        _parse_bytes(sample_file[:-4] + b"LANX")
    with pytest.raises(CorruptFileError, match="too small"):
        parse_footer(b"LANC", 4)


def test_footer_fields_are_validated(sample_file: bytes) -> None:
    meta = _parse_bytes(sample_file)
    cases = [
        {"cm": meta.footer.cmo_table_position + 1},
        {"cmo": len(sample_file)},
        {"ncol": 2**32 - 1},  # a forged count must not allocate anything
        {"ngb": 0, "gbo": len(sample_file) - 40},
        {"ngb": 2**32 - 1},
        {"gbo": 0},
    ]
    for change in cases:
        with pytest.raises(CorruptFileError):
            _parse_bytes(_patch_footer(sample_file, **change))
    with pytest.raises(UnsupportedVersionError, match="unknown"):
        _parse_bytes(_patch_footer(sample_file, major=3, minor=0))
    with pytest.raises(UnsupportedVersionError, match="legacy"):
        _parse_bytes(_patch_footer(sample_file, major=0, minor=2))


def test_damaged_metadata_regions(sample_file: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = _parse_bytes(sample_file)
    pos, size = meta.column_ranges[0]
    garbage = sample_file[:pos] + b"\xff" * size + sample_file[pos + size :]
    with pytest.raises(CorruptFileError, match="column 0 metadata"):
        _parse_bytes(garbage)
    gb0, gb0_size = meta.global_buffers[0]
    garbage = sample_file[:gb0] + b"\xff" * gb0_size + sample_file[gb0 + gb0_size :]
    with pytest.raises(CorruptFileError, match="file descriptor"):
        _parse_bytes(garbage)
    # a page pointing past the data region
    column = file2_pb2.ColumnMetadata()
    column.CopyFrom(meta.columns[0])
    column.pages[0].buffer_offsets[0] = meta.data_end
    with monkeypatch.context() as patch:  # build_tail itself refuses to write such a file
        patch.setattr(v2file, "_check_buffers", lambda *args: None)
        tail = build_tail(meta.data_end, [column, *meta.columns[1:]], meta.descriptor, meta.version)
    with pytest.raises(CorruptFileError, match="past the data region"):
        _parse_bytes(sample_file[: meta.data_end] + tail)
    # a 2.1+ column whose pages do not cover the file's rows
    column.CopyFrom(meta.columns[0])
    column.pages[0].length += 1
    tail = build_tail(meta.data_end, [column, *meta.columns[1:]], meta.descriptor, meta.version)
    with pytest.raises(CorruptFileError, match="rows"):
        _parse_bytes(sample_file[: meta.data_end] + tail)


def test_legacy_file_is_reported_as_legacy(tmp_path: Path) -> None:
    ds_path = _write(tmp_path / "legacy", "legacy", [pa.table({"x": list(range(10))})])
    ((_, path),) = data_files(ds_path)
    with pytest.raises(UnsupportedVersionError, match="legacy"):
        read_meta(path)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_tails_raise_only_typed_errors(sample_file: bytes, data: st.DataObject) -> None:
    meta = _parse_bytes(sample_file)
    blob = bytearray(sample_file)
    mutation = data.draw(st.sampled_from(["truncate", "delete", "flip"]), label="mutation")
    if mutation == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    elif mutation == "delete":  # drop a slice of the metadata: every later position shifts
        start = data.draw(st.integers(meta.data_end, len(blob) - 1), label="start")
        del blob[start : start + data.draw(st.integers(1, 64), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 6), label="flips")):
            at = data.draw(st.integers(meta.data_end, len(blob) - 1), label="at")
            blob[at] ^= data.draw(st.integers(1, 255), label="mask")
    first = data.draw(st.sampled_from([40, 200, 4096, DEFAULT_TAIL_BYTES]), label="first")
    try:
        parsed = _parse_bytes(bytes(blob), first)
    except (CorruptFileError, UnsupportedVersionError) as exc:
        event(f"{mutation}: {type(exc).__name__}")
        return
    try:
        event(f"{mutation}: parsed, copyable={inspect_copy_safety(parsed).copyable}")
    except CorruptFileError:
        event(f"{mutation}: parsed, encoding corrupt")
    assert parsed.num_columns == parsed.footer.num_columns
