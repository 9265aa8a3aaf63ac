"""Decoding many mini-block pages at once (``miniblock.materialize``) gives exactly what decoding
them one by one gives, on pages pylance wrote; damaged pages raise typed errors only.

The page-by-page decoder is the reference: it is the one the coalescing tests judged against
pylance's reads first. Pages come from real datasets of many appends (random types, nulls,
nested lists), so every encoding pylance picks for small pages appears.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets._proto import file2_pb2
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.tail import read_v2_tail
from lance_assets.errors import CorruptFileError
from lance_assets.format import miniblock
from lance_assets.format.v2file import FileVersion
from lance_assets.io import Storage
from tests.engine.test_coalesce_pages import TEXT_COLUMNS, appends_of_many_types, constant_with_nulls, varied_text, write_appends

VERSIONS = {"2.1": FileVersion.V2_1, "2.2": FileVersion.V2_2}


def column_pages(path: Path, version: FileVersion) -> list[list[miniblock.Undecoded]]:
    """Per column (in file order), every decodable page of every data file, in row order."""
    storage = Storage(str(path))
    logical_types = {f.id: f.logical_type for f in Dataset.open(str(path)).manifest.fields}
    columns: list[list[miniblock.Undecoded]] = []
    for frag in lance.dataset(str(path)).get_fragments():
        for df in frag.data_files():
            rel = f"data/{df.path}"
            meta, _, _ = read_v2_tail(storage, rel)
            raw = storage.read(rel)
            types = {col: logical_types[fid] for fid, col in zip(df.fields, df.column_indices) if col >= 0}
            for i, column in enumerate(meta.columns):
                while len(columns) <= i:
                    columns.append([])
                for page in column.pages:
                    if miniblock.decodable(page, version, types.get(i, "")):
                        buffers = [raw[o : o + n] for o, n in zip(page.buffer_offsets, page.buffer_sizes)]
                        columns[i].append(miniblock.defer_page(page, buffers, version, types.get(i, "")))
    return columns


def one_by_one(parts: list[miniblock.Undecoded]) -> miniblock.Run:
    runs = [miniblock._decode_page(p.codec, p.rows, p.buffers) for p in parts]
    for other in runs[1:]:
        runs[0].extend(other)
    return runs[0]


def encoded(make: object) -> miniblock.EncodedPage | str:
    try:
        return miniblock.encode_page(make())  # type: ignore[operator]
    except miniblock.NotNative as exc:
        return f"not native: {exc}"


def assert_batches_decode_as_pages(columns: list[list[miniblock.Undecoded]]) -> int:
    """Each column's pages, in stretches that share a page (``combine``), decode the same both ways."""
    compared = 0
    for parts in columns:
        stretch: list[miniblock.Undecoded] = []
        shape = None
        for part in [*parts, None]:
            joined = miniblock.combine(shape, part.shape) if part is not None and stretch else None
            if part is not None and (not stretch or joined is not None):
                stretch.append(part)
                shape = joined or part.shape
                continue
            if stretch:
                assert encoded(lambda s=stretch: miniblock.materialize(s)) == encoded(lambda s=stretch: one_by_one(s))
                compared += len(stretch)
            stretch, shape = ([part], part.shape) if part is not None else ([], None)
    return compared


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_random_appends_decode_the_same_in_batches(tmp_path_factory: pytest.TempPathFactory, version: str) -> None:
    compared: list[int] = []

    @settings(max_examples=12, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        tables = data.draw(appends_of_many_types(version), label="tables")
        path = tmp_path_factory.mktemp("batch") / "ds.lance"
        try:
            write_appends(path, tables, version)
        except BaseException as exc:  # pylance cannot write some random data: nothing to judge
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        compared.append(assert_batches_decode_as_pages(column_pages(path, VERSIONS[version])))

    check()
    assert sum(compared) > 100  # the property saw real pages


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_pages_of_thousands_of_rows_decode_the_same_in_batches(tmp_path: Path, version: str) -> None:
    """Appends of 1,000-3,000 rows: chunks of many values, bit-packed values and levels packed
    out of line (whole blocks, then a packed or a raw partial block), strings over several chunks."""
    rng = np.random.default_rng(7)
    tables = []
    for k, n in enumerate([1000, 1500, 3000, 1024, 2049]):
        lengths = rng.integers(0, 6, n)
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 50, int(offsets[-1]), dtype=np.int32)))
        valid = rng.random(n) > 0.1
        tables.append(
            pa.table(
                {
                    "i": pa.array(np.arange(n, dtype=np.int64) + 10_000 * k),
                    "small": pa.array(rng.integers(0, 100, n), mask=~valid),
                    "s": pa.array([f"v{j}" * int(rng.integers(0, 4)) for j in range(n)]),
                    "b": pa.array(rng.random(n) < 0.3),
                    "l": lists,
                    "nl": pa.array([None if j % 9 == 0 else [j, None] if j % 4 else [] for j in range(n)], pa.list_(pa.int64())),
                }
            )
        )
    path = tmp_path / "ds.lance"
    write_appends(path, tables, version)
    columns = column_pages(path, VERSIONS[version])
    kinds = {p.codec.values.WhichOneof("compression") for parts in columns for p in parts}
    levels = {p.codec.rep.WhichOneof("compression") for parts in columns for p in parts if p.codec.rep is not None}
    assert "inline_bitpacking" in kinds and "variable" in kinds
    assert levels  # list columns with repetition levels were seen
    assert assert_batches_decode_as_pages(columns) >= 20


@settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_damaged_pages_raise_typed_errors_only(damaged_source: list[list[miniblock.Undecoded]], data: st.DataObject) -> None:
    """A page whose bytes were changed either still decodes or raises CorruptFileError or
    NotNative, never a numpy or struct error, and never reads outside its buffers."""
    parts = data.draw(st.sampled_from([p for p in damaged_source if p]), label="column")
    k = data.draw(st.integers(0, len(parts) - 1), label="page")
    if not parts[k].buffers:
        return
    which = data.draw(st.integers(0, len(parts[k].buffers) - 1), label="buffer")
    target = parts[k].buffers[which]
    if not target:
        return
    at = data.draw(st.integers(0, len(target) - 1), label="at")
    value = data.draw(st.integers(0, 255), label="value")
    cut = data.draw(st.booleans(), label="truncate")
    changed = target[:at] if cut else target[:at] + bytes([value]) + target[at + 1 :]
    buffers = list(parts[k].buffers)
    buffers[which] = changed
    damaged = dataclasses.replace(parts[k], buffers=tuple(buffers))
    broken = [*parts[:k], damaged, *parts[k + 1 :]]
    try:
        miniblock.encode_page(miniblock.materialize(broken))
    except (CorruptFileError, miniblock.NotNative):
        pass


@pytest.fixture(scope="module")
def damaged_source(tmp_path_factory: pytest.TempPathFactory) -> list[list[miniblock.Undecoded]]:
    rng = np.random.default_rng(3)
    tables = []
    for k in range(6):
        n = 60 if k % 2 else 1100
        tables.append(
            pa.table(
                {
                    "i": pa.array(rng.integers(0, 1 << (4 * k + 3), n)),
                    "s": pa.array([None if j % 7 == 0 else f"t{j}" for j in range(n)]),
                    "b": pa.array(rng.random(n) < 0.5),
                    "l": pa.array([None if j % 5 == 0 else [j] * (j % 3) for j in range(n)], pa.list_(pa.int32())),
                }
            )
        )
    path = tmp_path_factory.mktemp("damaged") / "ds.lance"
    write_appends(path, tables, "2.1")
    # 2.2 pages of one repeated string or binary value (with and without nulls) beside ordinary ones
    text = [constant_with_nulls(60 * k, 60, k).select(["i", *TEXT_COLUMNS]) for k in range(4)]
    text[1] = varied_text(text[1], 1)
    text[2] = text[2].filter(pa.array([j % (2 + 2) != 1 for j in range(60)]))  # the append without nulls
    text_path = tmp_path_factory.mktemp("damaged") / "text.lance"
    write_appends(text_path, text, "2.2")
    repeated = column_pages(text_path, FileVersion.V2_2)
    assert sum(p.codec.repeated for parts in repeated for p in parts) == 3 * len(TEXT_COLUMNS)
    return column_pages(path, FileVersion.V2_1) + repeated


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(bits=st.sampled_from([8, 16, 32, 64]), data=st.data())
def test_fast_lanes_blocks_unpack_as_the_layout_says(bits: int, data: st.DataObject) -> None:
    """Each lane's words, read as one little-endian bit stream, hold its rows ``width`` bits
    apart; row r of lane l is the value at 128 * (r % 8) + 16 * order[r // 8] + l."""
    width = data.draw(st.integers(0, bits), label="width")
    lanes = 1024 // bits
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    dtype = miniblock._UINT[bits]
    words = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, (2, width * lanes), dtype=dtype, endpoint=True)
    got = miniblock._unpack_blocks(words, width, bits)
    order = (0, 4, 2, 6, 1, 5, 3, 7)
    for block in range(2):
        for lane in range(lanes):
            stream = sum(int(words[block, j * lanes + lane]) << (j * bits) for j in range(width))
            for row in range(bits):
                want = (stream >> (row * width)) & ((1 << width) - 1)
                assert int(got[block, 128 * (row % 8) + 16 * order[row // 8] + lane]) == want


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(bits=st.sampled_from([8, 16, 32, 64]), data=st.data())
def test_fast_lanes_blocks_pack_as_they_unpack(bits: int, data: st.DataObject) -> None:
    """Packing (what the copy writes for re-cut integer pages) is the inverse of unpacking, which
    the test above checks against the layout itself."""
    width = data.draw(st.integers(0, bits), label="width")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    dtype = miniblock._UINT[bits]
    top = (1 << width) - 1
    values = (
        np.random.default_rng(seed).integers(0, top, (3, 1024), dtype=dtype, endpoint=True)
        if width
        else np.zeros((3, 1024), dtype)
    )
    words = miniblock._pack_blocks(values, width, bits)
    assert words.shape == (3, width * 1024 // bits)
    assert (miniblock._unpack_blocks(words, width, bits) == values).all()


def test_levels_compressed_differently_in_one_batch(tmp_path: Path) -> None:
    """2.2 appends of a list column compress their definition levels by bit-packing in some
    files and run-length in others; the pages still decode in one batch, and as one by one."""
    from tests.engine.test_native_coalesce import streaming

    path = tmp_path / "ds.lance"
    write_appends(path, [streaming(k * 100, 100) for k in range(40)], "2.2")
    columns = column_pages(path, FileVersion.V2_2)
    lists = columns[4]
    assert len({p.codec.levels_key for p in lists}) > 1 and len({p.codec.values_key for p in lists}) == 1
    assert assert_batches_decode_as_pages(columns) == 5 * 40


def test_constant_pages_with_nulls_decode_as_pylance_reads_them(tmp_path: Path) -> None:
    """2.2 writes a flat column of one repeated value with nulls as a constant page with one u16
    definition level per row; decoded, it holds the value in every row and pylance's nulls."""
    from tests.engine.test_coalesce_pages import constant_with_nulls

    path = tmp_path / "ds.lance"
    table = constant_with_nulls(0, 40, 3).drop_columns(["m"])
    write_appends(path, [table], "2.2")
    columns = column_pages(path, FileVersion.V2_2)
    seen = 0
    for name, parts in zip(table.column_names, columns):
        constants = [p for p in parts if p.codec.constant is not None and p.shape.defs]
        for part in constants:
            run = miniblock.materialize([part])
            (levels,) = run.levels
            nulls = np.concatenate([np.asarray(d) for d in levels.defs]).astype(bool)
            assert nulls.tolist() == table.column(name).is_null().to_pylist()
            assert run.rows == run.num_values == len(table)
            seen += 1
    assert seen == 7  # every flat column but the key: i8, u16, i32, f, b, d, t

    part = next(p for parts in columns for p in parts if p.codec.constant is not None and p.shape.defs)
    for buffers in [(b"", part.buffers[1][:-2]), (b"\x00\x00", part.buffers[1]), (b"", b"\x02\x00" + part.buffers[1][2:])]:
        with pytest.raises(CorruptFileError):
            miniblock.materialize([dataclasses.replace(part, buffers=buffers)])


def _texts(run: miniblock.Run) -> list[bytes | None]:
    """The values of a decoded run of one flat variable-width column (None where null)."""
    _, defs = miniblock._run_levels(run)  # each page's levels renumbered into the run's layers
    nulls = defs.astype(bool) if defs is not None else np.zeros(run.rows, bool)
    lengths = np.concatenate([np.asarray(x) for x in run.lengths])
    data = b"".join(bytes(d) for d in run.data)
    ends = np.cumsum(lengths).tolist()
    return [None if null else data[end - n : end] for null, end, n in zip(nulls.tolist(), ends, lengths.tolist())]


def test_repeated_text_pages_decode_as_pylance_reads_them(tmp_path: Path) -> None:
    """2.2 writes a string or binary column whose rows hold one value as an all-null layout with
    the value in a buffer (32- or 64-bit offsets, as the column's type says), and with nulls
    one u16 definition level per row; decoded, the pages hold what pylance reads, in the shape
    of the column's ordinary pages."""
    path = tmp_path / "ds.lance"
    with_nulls = constant_with_nulls(0, 40, 3).select(["i", *TEXT_COLUMNS])
    without = constant_with_nulls(40, 40, 1).select(["i", *TEXT_COLUMNS]).filter(pa.array([j % 3 != 1 for j in range(40)]))
    varied = varied_text(constant_with_nulls(80, 40, 2).select(["i", *TEXT_COLUMNS]), 2)
    tables = [with_nulls, without, varied]
    write_appends(path, tables, "2.2")
    columns = column_pages(path, FileVersion.V2_2)
    for name, parts in zip(with_nulls.column_names[1:], columns[1:]):
        assert [p.codec.repeated for p in parts] == [True, True, False], name
        assert [p.shape.defs for p in parts[:2]] == [True, False]
        assert miniblock.combine(parts[0].shape, parts[2].shape) == parts[2].shape  # ordinary pages with nulls
        assert miniblock.combine(parts[1].shape, parts[2].shape) == parts[2].shape
        assert {p.shape.bits for p in parts} == {64 if name.startswith("l") else 32}
        want = [v.encode() if isinstance(v, str) else v for t in tables for v in t.column(name).to_pylist()]
        assert _texts(miniblock.materialize(parts)) == want, name
        page = miniblock.encode_page(miniblock.materialize(parts))
        assert page.rows == sum(map(len, tables))

    s, ls = columns[1][0], columns[3][0]  # a string's page and a large string's, with nulls
    wrong_width = dataclasses.replace(s, codec=ls.codec)  # read as if its offsets were 64-bit
    value, empty, levels = s.buffers
    for part in [
        wrong_width,
        dataclasses.replace(s, buffers=(value[:-1], empty, levels)),
        dataclasses.replace(s, buffers=(b"\x03" + value[1:], empty, levels)),
        dataclasses.replace(s, buffers=(value[:12] + b"\x01" + value[13:], empty, levels)),
        dataclasses.replace(s, buffers=(value, b"\x00", levels)),
        dataclasses.replace(s, buffers=(value, empty, levels[:-2])),
        dataclasses.replace(s, buffers=(value, empty, b"\x02\x00" + levels[2:])),
        dataclasses.replace(s, buffers=(value,)),
    ]:
        with pytest.raises(CorruptFileError):
            miniblock.materialize([part])
    # the encoding alone does not say the offsets' width: a column of another type is not decoded
    assert miniblock.page_codec(_page_of(path, 1), FileVersion.V2_2, "int32") is None
    assert miniblock.page_codec(_page_of(path, 1), FileVersion.V2_2, "string") is not None


def _page_of(path: Path, column: int) -> file2_pb2.ColumnMetadata.Page:
    """The first page of ``column`` in the dataset's first data file."""
    df = lance.dataset(str(path)).get_fragments()[0].data_files()[0]
    meta, _, _ = read_v2_tail(Storage(str(path)), f"data/{df.path}")
    page: file2_pb2.ColumnMetadata.Page = meta.columns[column].pages[0]
    return page
