"""Small pages re-cut by the copy itself (``format.miniblock``), without pylance's writer.

pylance writes the datasets (many small appends of the streaming shapes, random data with
nulls, all-null appends and runs of equal values) and judges the result: every read way returns
the same rows, and the output's columns hold about as many pages as a fresh write. pylance's
writer is kept out of the compaction itself (``pylance_available`` answers False), so what
coalesces here is the native path alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets import compact
from lance_assets.errors import LanceAssetsError
from lance_assets.format.pages import MIN_SMALL_PAGES
from tests.engine.test_coalesce_pages import assert_reads_as, data_file_pages, few_names, fresh_pages, write_appends
from tests.support.assertions import tree_digest

VERSIONS = ["2.0", "2.1", "2.2"]
#: The versions whose small pages are mini-block pages (``format.miniblock``); 2.0 pages are
#: re-cut by ``format.pages20``.
MINIBLOCK_VERSIONS = ["2.1", "2.2"]


@pytest.fixture
def no_pylance_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lance_assets.engine.copying.coalesce.pylance_available", lambda: False)


def streaming(start: int, n: int, seed: int = 0) -> pa.Table:
    """The streaming shape: int64 id, float64, string, bool, list<int32> (small ints, which
    pylance bit-packs in appends of 1,000 rows)."""
    rng = np.random.default_rng(start + seed)
    lengths = rng.integers(0, 5, n)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    return pa.table(
        {
            "i": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "f": pa.array(rng.standard_normal(n)),
            "s": pa.array([f"name-{j}-{'x' * int(k)}" for j, k in zip(range(start, start + n), rng.integers(0, 20, n))]),
            "b": pa.array(rng.random(n) < 0.5),
            "l": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 1000, int(offsets[-1]), dtype=np.int32))),
        }
    )


def streaming_columns(version: str) -> list[str]:
    """The columns of ``streaming`` as the report names them: in 2.0 a list is two columns (its
    offsets, named by the list, and its items); later versions store it as one."""
    return ["b", "f", "i", "l", "l.item", "s"] if version == "2.0" else ["b", "f", "i", "l.item", "s"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("rows", [100, 1000])
def test_streaming_appends_become_one_page_per_column(tmp_path: Path, version: str, rows: int, no_pylance_writer: None) -> None:
    path = tmp_path / "ds.lance"
    tables = [streaming(k * rows, rows) for k in range(40 if rows == 100 else 8)]
    write_appends(path, tables, version)
    report = compact(str(path))
    assert report.fragments_added == 1 and report.columns_coalesced_pylance == []
    assert report.columns_coalesced_native == streaming_columns(version) and report.columns_left_small == []
    (pages,) = data_file_pages(path)
    assert pages == fresh_pages(pa.concat_tables(tables), version, tmp_path / "fresh.lance")
    assert report.pages_after == sum(pages) and report.pages_before == len(streaming_columns(version)) * len(tables)
    assert_reads_as(path, pa.concat_tables(tables))


@pytest.mark.parametrize("version", VERSIONS)
def test_nulls_in_some_appends_and_all_null_appends_share_pages(tmp_path: Path, version: str, no_pylance_writer: None) -> None:
    """Appends without nulls, with some and with nothing but nulls are pages of different
    layers; the copy puts them in one page (levels of the nullable layers)."""
    path = tmp_path / "ds.lance"
    tables = []
    for k in range(12):
        n, start = 50, k * 50
        kind = k % 3  # 0: no nulls, 1: some nulls, 2: all null
        ints = [None if kind == 2 or (kind == 1 and j % 4 == 0) else j * 3 for j in range(start, start + n)]
        text = [None if kind == 2 or (kind == 1 and j % 5 == 0) else f"t{j}" for j in range(start, start + n)]
        lists = [
            None if kind == 1 and j % 6 == 0 else ([] if j % 7 == 0 else [j, None] if kind else [j])
            for j in range(start, start + n)
        ]
        tables.append(
            pa.table(
                {
                    "i": pa.array(range(start, start + n), pa.int64()),
                    "x": pa.array(ints, pa.int64()),
                    "t": pa.array(text, pa.string()),
                    "l": pa.array(lists, pa.list_(pa.int64())),
                }
            )
        )
    write_appends(path, tables, version)
    report = compact(str(path))
    assert {"x", "t", "l.item"} <= set(report.columns_coalesced_native)
    assert report.columns_left_small == []
    assert max(max(p) for p in data_file_pages(path)) <= 2
    assert_reads_as(path, pa.concat_tables(tables))


@pytest.mark.parametrize("version", VERSIONS)
def test_runs_of_equal_values_are_decoded(tmp_path: Path, version: str, no_pylance_writer: None) -> None:
    """pylance run-length encodes values that repeat; those pages are re-cut too."""
    path = tmp_path / "ds.lance"
    tables = [
        pa.table({"i": pa.array(range(k * 200, k * 200 + 200), pa.int64()), "c": pa.array([k % 3] * 200, pa.int32())})
        for k in range(10)
    ]
    write_appends(path, tables, version)
    report = compact(str(path))
    assert "c" in report.columns_coalesced_native and report.columns_left_small == []
    assert_reads_as(path, pa.concat_tables(tables))


@pytest.mark.parametrize("version", VERSIONS)
def test_small_fixed_size_lists_are_recut(tmp_path: Path, version: str, no_pylance_writer: None) -> None:
    path = tmp_path / "ds.lance"
    rng = np.random.default_rng(7)
    tables = [
        pa.table(
            {
                "i": pa.array(range(k * 80, k * 80 + 80), pa.int64()),
                "xyz": pa.array(rng.integers(-9, 9, (80, 3)).tolist(), pa.list_(pa.int32(), 3)),
                "emb": pa.array(rng.standard_normal((80, 4)).astype(np.float32).tolist(), pa.list_(pa.float32(), 4)),
            }
        )
        for k in range(8)
    ]
    write_appends(path, tables, version)
    report = compact(str(path))
    assert {"xyz", "emb"} <= set(report.columns_coalesced_native) and report.columns_left_small == []
    assert data_file_pages(path)[0] == [1, 1, 1]
    assert_reads_as(path, pa.concat_tables(tables))


# --- random data ---------------------------------------------------------------------------------
_TYPES = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint32(),
    pa.float32(),
    pa.float64(),
    pa.string(),
    pa.binary(),
    pa.bool_(),
]


def _values(t: pa.DataType) -> st.SearchStrategy[Any]:
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_floating(t):
        return st.floats(allow_nan=False, width=32 if t == pa.float32() else 64)
    if pa.types.is_string(t):
        return st.text(max_size=12)
    if pa.types.is_binary(t):
        return st.binary(max_size=12)
    bits = t.bit_width
    if pa.types.is_unsigned_integer(t):
        return st.integers(0, 2**bits - 1)
    # mostly small values (bit-packed by pylance), some of any size
    return st.one_of(st.integers(-4, 40), st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))


@st.composite
def appends(draw: st.DrawFn) -> list[pa.Table]:
    types = draw(st.lists(st.sampled_from(_TYPES), min_size=1, max_size=4))
    listed = draw(st.sampled_from(_TYPES))
    tables = []
    start = 0
    for _ in range(draw(st.integers(MIN_SMALL_PAGES, 12))):
        n = draw(st.sampled_from([1, 2, 7, 60, 300, 1100]))
        nulls = draw(st.sampled_from(["none", "some", "all"]))
        cols: dict[str, pa.Array] = {"i": pa.array(range(start, start + n), pa.int64())}
        for k, t in enumerate(types):
            one = st.none() if nulls == "all" else st.one_of(st.none(), _values(t)) if nulls == "some" else _values(t)
            if draw(st.booleans()):  # a run of one value, as counters and flags give
                value = draw(one)
                cols[f"c{k}"] = pa.array([value] * n, t)
            else:
                cols[f"c{k}"] = pa.array(draw(st.lists(one, min_size=n, max_size=n)), t)
        item = st.one_of(st.none(), _values(listed)) if nulls != "none" else _values(listed)
        lists = st.lists(item, max_size=4)
        cols["l"] = pa.array(
            draw(st.lists(st.one_of(st.none(), lists) if nulls == "some" else lists, min_size=n, max_size=n)), pa.list_(listed)
        )
        tables.append(pa.table(cols))
        start += n
    return tables


@pytest.mark.parametrize("version", VERSIONS)
def test_random_appends_read_back_the_same(
    tmp_path_factory: pytest.TempPathFactory, version: str, no_pylance_writer: None
) -> None:
    @settings(max_examples=12, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(tables=appends())
    def check(tables: list[pa.Table]) -> None:
        path = tmp_path_factory.mktemp("native") / "ds.lance"
        write_appends(path, tables, version)
        report = compact(str(path))
        assert report.fragments_added == 1
        assert_reads_as(path, pa.concat_tables(tables))
        # Flat columns coalesce. Left small may be a list column (pylance writes a list of
        # nothing but nulls in another layout).
        assert set(report.columns_left_small) <= {"l.item"}, report.notes

    check()


def test_a_later_input_the_copy_cannot_recut_goes_to_pylance(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The copy judges from the first input which columns it re-cuts; when later inputs hold
    small pages it cannot decode (here 2.2 dictionary-encoded string pages), the output is
    written again with that column re-encoded by pylance, in the same single commit."""
    path = tmp_path / "ds.lance"
    tables = [streaming(k * 100, 100) for k in range(8)]
    for k in range(2, 2 + MIN_SMALL_PAGES):  # enough such pages that the column would read slowly
        tables[k] = tables[k].set_column(2, "s", few_names(100, k))
    write_appends(path, tables, "2.2")
    version = lance.dataset(str(path)).version
    with caplog.at_level(logging.INFO, logger="lance_assets.engine.copying"):
        report = compact(str(path))
    assert any("writing the file again with pylance" in r.getMessage() for r in caplog.records)
    assert report.columns_coalesced_pylance == ["s"] and report.columns_coalesced_native == ["b", "f", "i", "l.item"]
    assert report.columns_left_small == [] and lance.dataset(str(path)).version == version + 1
    assert max(data_file_pages(path)[0]) == 1
    assert_reads_as(path, pa.concat_tables(tables))


@pytest.mark.parametrize("nulls", [False, True])
def test_one_page_the_copy_cannot_recut_stays_between_large_ones(tmp_path: Path, nulls: bool, no_pylance_writer: None) -> None:
    path = tmp_path / "ds.lance"
    tables = [streaming(k * 100, 100) for k in range(8)]
    tables[3] = tables[3].set_column(2, "s", few_names(100, 3, nulls))
    write_appends(path, tables, "2.2")
    report = compact(str(path))
    assert report.columns_coalesced_native == ["b", "f", "i", "l.item", "s"] and report.columns_left_small == []
    pages = dict(zip(["i", "f", "s", "b", "l"], data_file_pages(path)[0]))
    assert pages["s"] == 3 and pages["i"] == 1  # rows 0-299 re-cut, the dictionary page, rows 400-799 re-cut
    assert_reads_as(path, pa.concat_tables(tables))


@pytest.mark.parametrize("odd", [["same"] * 100, ["same", None] * 50, [""] * 100, [None, ""] * 50])
def test_a_repeated_string_is_recut_with_its_neighbours(tmp_path: Path, odd: list[str | None], no_pylance_writer: None) -> None:
    """2.2 stores a string repeated in every row (with or without nulls) as an all-null layout
    with the value in a buffer (the second has the very encoding bytes of an all-null page, but
    buffers): the copy decodes it and re-cuts it with the ordinary pages around it."""
    path = tmp_path / "ds.lance"
    tables = [streaming(k * 100, 100) for k in range(8)]
    tables[3] = tables[3].set_column(2, "s", pa.array(odd, pa.string()))
    write_appends(path, tables, "2.2")
    report = compact(str(path))
    assert report.columns_coalesced_native == ["b", "f", "i", "l.item", "s"] and report.columns_left_small == []
    assert report.columns_coalesced_pylance == []
    pages = dict(zip(["i", "f", "s", "b", "l"], data_file_pages(path)[0]))
    assert pages["s"] == 1 and pages["i"] == 1
    assert_reads_as(path, pa.concat_tables(tables))


@pytest.mark.parametrize("version", MINIBLOCK_VERSIONS)
def test_pages_that_cannot_be_recut_after_all_are_written_as_they_came(
    tmp_path: Path,
    version: str,
    no_pylance_writer: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pages are decoded only when their run is written; a value found too long for a chunk
    then (here: the limit lowered to 8 bytes, which every string passes) leaves that run's pages
    unchanged in the output, as binary copy would have, and the report says why."""
    from lance_assets.format import miniblock

    monkeypatch.setattr(miniblock, "MAX_VALUE_BYTES", 8)
    miniblock._codec.cache_clear()  # encodings judged under the usual limit are judged again
    request.addfinalizer(miniblock._codec.cache_clear)  # and nothing judged under this one stays
    path = tmp_path / "ds.lance"
    tables = [streaming(k * 100, 100) for k in range(8)]
    write_appends(path, tables, version)
    with caplog.at_level(logging.INFO, logger="lance_assets.engine.copying.coalesce"):
        report = compact(str(path))
    assert any("written as they came" in r.getMessage() for r in caplog.records)
    assert report.columns_left_small == ["s"] and "s" not in report.columns_coalesced_native
    assert any("s: values longer than 8 bytes" in note.detail for note in report.notes)
    pages = dict(zip(["i", "f", "s", "b", "l"], data_file_pages(path)[0]))
    assert pages["s"] == 8 and pages["i"] == 1
    assert_reads_as(path, pa.concat_tables(tables))


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", MINIBLOCK_VERSIONS)
def test_a_corrupt_page_leaves_the_dataset_as_it_was(tmp_path: Path, version: str, no_pylance_writer: None) -> None:
    path = tmp_path / "ds.lance"
    tables = [streaming(k * 100, 100) for k in range(6)]
    write_appends(path, tables, version)
    ds = lance.dataset(str(path))
    # Overwrite the first chunk-size word of the id column's page in the third input with one
    # that claims far more bytes than the page holds.
    from lance.file import LanceFileReader

    third = ds.get_fragments()[2].data_files()[0].path
    file_path = path / "data" / third
    page = LanceFileReader(str(file_path)).metadata().columns[0].pages[0]
    size_words = page.buffers[0]
    raw = bytearray(file_path.read_bytes())
    raw[size_words.position : size_words.position + 2] = (0xFFF0).to_bytes(2, "little")
    file_path.write_bytes(bytes(raw))
    digest = tree_digest(path)
    with pytest.raises(LanceAssetsError) as caught:
        compact(str(path))
    assert "chunk" in str(caught.value)
    assert tree_digest(path) == digest


# --- 2.0 pages (format.pages20) -------------------------------------------------------------------
def _typed_appends(appends: int, n: int) -> list[pa.Table]:
    """Appends of the flat types streaming writers send, in the three null patterns (none,
    some, all), strings sometimes of few distinct values (pylance writes those 2.0 pages as
    dictionaries) and sometimes all distinct."""
    rng = np.random.default_rng(23)
    tables = []
    for k in range(appends):
        start, kind = k * n, k % 3  # 0: no nulls, 1: some nulls, 2: all null

        def nulled(values: list[Any], every: int, kind: int = kind) -> list[Any]:
            return [None if kind == 2 or (kind == 1 and j % every == 0) else v for j, v in enumerate(values)]

        few = k % 2 == 0
        text = [f"name-{j % 5}" if few else f"row-{start + j}-{'y' * (j % 9)}" for j in range(n)]
        tables.append(
            pa.table(
                {
                    "i": pa.array(range(start, start + n), pa.int64()),
                    "i64": pa.array(nulled(rng.integers(-(2**40), 2**40, n).tolist(), 3), pa.int64()),
                    "f64": pa.array(nulled(rng.standard_normal(n).tolist(), 4), pa.float64()),
                    "f32": pa.array(nulled(rng.standard_normal(n).astype(np.float32).tolist(), 5), pa.float32()),
                    "i32": pa.array(nulled(rng.integers(-100, 100, n).tolist(), 6), pa.int32()),
                    "b": pa.array(nulled((rng.random(n) < 0.5).tolist(), 7), pa.bool_()),
                    "s": pa.array(nulled(text, 3), pa.string()),
                    "ls": pa.array(nulled(text, 4), pa.large_string()),
                    "bin": pa.array(nulled([bytes([j % 256]) * (j % 6) for j in range(n)], 5), pa.binary()),
                }
            )
        )
    return tables


def test_2_0_appends_of_every_flat_type_become_a_page_per_column(tmp_path: Path, no_pylance_writer: None) -> None:
    """3,000 rows in 30 appends: each column ends as few pages as pylance's writer makes of the
    rows (dictionary pages are written back as plain strings, with the others)."""
    path = tmp_path / "ds.lance"
    tables = _typed_appends(30, 100)
    write_appends(path, tables, "2.0")
    report = compact(str(path))
    columns = sorted(tables[0].column_names)
    assert report.columns_coalesced_native == columns and report.columns_left_small == []
    (pages,) = data_file_pages(path)
    assert max(pages) <= 2 and report.pages_before == len(columns) * 30 and report.pages_after == sum(pages)
    assert_reads_as(path, pa.concat_tables(tables))


def test_2_0_fixed_size_lists_with_null_rows_and_items_share_pages(tmp_path: Path, no_pylance_writer: None) -> None:
    """pylance writes a null vector as null items too (a second bitmap); appends without nulls,
    with null rows or items, and of nothing but nulls are re-cut into one page."""
    path = tmp_path / "ds.lance"
    rng = np.random.default_rng(5)
    tables = []
    for k in range(9):
        n, kind = 40, k % 3  # 0: no nulls, 1: null rows and items, 2: all null
        vectors: list[Any] = rng.standard_normal((n, 4)).astype(np.float32).tolist()
        pairs: list[Any] = rng.integers(-(2**50), 2**50, (n, 2)).tolist()
        if kind == 1:
            vectors = [None if j % 3 == 0 else v for j, v in enumerate(vectors)]
            pairs = [[p[0], None] if j % 4 == 0 else None if j % 5 == 0 else p for j, p in enumerate(pairs)]
        elif kind == 2:
            vectors, pairs = [None] * n, [None] * n
        tables.append(
            pa.table(
                {
                    "i": pa.array(range(k * n, k * n + n), pa.int64()),
                    "emb": pa.array(vectors, pa.list_(pa.float32(), 4)),
                    "pair": pa.array(pairs, pa.list_(pa.int64(), 2)),
                }
            )
        )
    write_appends(path, tables, "2.0")
    report = compact(str(path))
    assert report.columns_coalesced_native == ["emb", "i", "pair"] and report.columns_left_small == []
    assert data_file_pages(path)[0] == [1, 1, 1]
    assert_reads_as(path, pa.concat_tables(tables))


def test_2_0_large_runs_are_cut_into_pages_of_the_native_size(tmp_path: Path, no_pylance_writer: None) -> None:
    """With a small read budget the re-cut pages are bounded (``native_page_bytes``): several
    pages per column, each larger than a small one, read back the same."""
    from lance_assets import CompactionOptions

    path = tmp_path / "ds.lance"
    tables = _typed_appends(24, 2000)
    write_appends(path, tables, "2.0")
    report = compact(str(path), CompactionOptions(read_batch_bytes=4 * 1024 * 1024))
    assert report.columns_left_small == []
    (pages,) = data_file_pages(path)
    assert 1 < max(pages) < 24
    assert_reads_as(path, pa.concat_tables(tables))


def test_2_0_compressed_pages_are_left_to_pylance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of a column with compression asked in its field metadata are not decoded here: with
    pylance its writer re-encodes that column, without it the pages stay as they came."""
    schema = pa.schema([pa.field("i", pa.int64()), pa.field("s", pa.string(), metadata={"lance-encoding:compression": "zstd"})])
    tables = [
        pa.table(
            {"i": range(k * 100, k * 100 + 100), "s": [f"text-{j}" * 3 for j in range(k * 100, k * 100 + 100)]}, schema=schema
        )
        for k in range(8)
    ]
    with_pylance, without = tmp_path / "with.lance", tmp_path / "without.lance"
    write_appends(with_pylance, tables, "2.0")
    write_appends(without, tables, "2.0")
    report = compact(str(with_pylance))
    assert report.columns_coalesced_native == ["i"] and report.columns_coalesced_pylance == ["s"]
    assert_reads_as(with_pylance, pa.concat_tables(tables))
    monkeypatch.setattr("lance_assets.engine.copying.coalesce.pylance_available", lambda: False)
    report = compact(str(without))
    assert report.columns_coalesced_native == ["i"] and report.columns_left_small == ["s"]
    assert data_file_pages(without)[0] == [1, 8]
    assert_reads_as(without, pa.concat_tables(tables))


@pytest.mark.parametrize("where", ["offsets", "dictionary"])
def test_a_corrupt_2_0_page_leaves_the_dataset_as_it_was(tmp_path: Path, where: str, no_pylance_writer: None) -> None:
    """A string page whose offsets point past its bytes, or a dictionary page whose index points
    past its values: a typed error, and nothing changed."""
    from lance.file import LanceFileReader

    path = tmp_path / "ds.lance"
    tables = _typed_appends(6, 100)
    write_appends(path, tables, "2.0")
    ds = lance.dataset(str(path))
    # append 3: distinct strings without nulls; append 4: five names with nulls
    name = ds.get_fragments()[3 if where == "offsets" else 4].data_files()[0].path
    file_path = path / "data" / name
    page = LanceFileReader(str(file_path)).metadata().columns[tables[0].column_names.index("s")].pages[0]
    assert len(page.buffers) == (2 if where == "offsets" else 3)
    raw = bytearray(file_path.read_bytes())
    at = page.buffers[0].position
    if where == "offsets":
        raw[at + 8 : at + 16] = (2**62).to_bytes(8, "little")  # a null whose end lies far past the bytes
    else:
        raw[at + 1] = 200  # value 200 of a dictionary of five
    file_path.write_bytes(bytes(raw))
    digest = tree_digest(path)
    with pytest.raises(LanceAssetsError) as caught:
        compact(str(path))
    assert ("offsets past" if where == "offsets" else "dictionary index") in str(caught.value)
    assert tree_digest(path) == digest


def test_2_0_dictionary_typed_columns_keep_their_pages(tmp_path: Path, no_pylance_writer: None) -> None:
    """An Arrow dictionary column is stored with its own keys (no null shift), in pages shaped
    like pylance's dictionary-encoded strings: they are not decoded, and read back the same."""
    path = tmp_path / "ds.lance"
    tables = [
        pa.table(
            {
                "i": pa.array(range(k * 120, k * 120 + 120), pa.int64()),
                "d": pa.DictionaryArray.from_arrays(pa.array([j % 3 for j in range(120)], pa.int8()), pa.array(["a", "b", "c"])),
            }
        )
        for k in range(6)
    ]
    write_appends(path, tables, "2.0")
    report = compact(str(path))
    assert report.columns_coalesced_native == ["i"] and report.columns_left_small == ["d"]
    assert data_file_pages(path)[0] == [1, 6]
    assert_reads_as(path, pa.concat_tables(tables))


def _real_2_0_pages(path: Path) -> list[tuple[Any, list[bytes], str]]:
    """Every page of the first data files of a 2.0 dataset of ``_typed_appends`` (with nulls and
    dictionary pages), with its buffers and its column's logical type."""
    from lance_assets.engine.tail import read_v2_metadata
    from lance_assets.io import Storage

    write_appends(path, _typed_appends(5, 100), "2.0")
    ds = lance.dataset(str(path))
    names = {"i": "int64", "i64": "int64", "f64": "double", "f32": "float", "i32": "int32", "b": "bool"}
    names |= {"s": "string", "ls": "large_string", "bin": "binary"}  # the manifest's logical types
    assert set(names) == set(ds.schema.names)
    storage, out = Storage(str(path)), []
    for frag in ds.get_fragments():
        rel = f"data/{frag.data_files()[0].path}"
        meta = read_v2_metadata(storage, rel)
        raw = (path / rel).read_bytes()
        for name, column in zip(ds.schema.names, meta.columns):
            for page in column.pages:
                buffers = [raw[o : o + n] for o, n in zip(page.buffer_offsets, page.buffer_sizes)]
                out.append((page, buffers, names[name]))
    return out


def test_2_0_pages_decode_to_what_their_re_encoding_decodes_to(tmp_path: Path) -> None:
    """Each page pylance wrote, re-encoded alone by ``pages20``, decodes to the same rows."""
    from lance_assets._proto import file2_pb2
    from lance_assets.format import pages20
    from lance_assets.format.v2file import FileVersion

    for page, buffers, logical_type in _real_2_0_pages(tmp_path / "ds.lance"):
        run = pages20.materialize([pages20.defer_page(page, buffers, FileVersion.V2_0, logical_type)])
        encoded = pages20.encode_page(run)
        again = file2_pb2.ColumnMetadata.Page(length=encoded.rows, buffer_sizes=[len(b) for b in encoded.buffers])
        again.encoding.direct.encoding = encoded.encoding
        back = pages20.materialize([pages20.defer_page(again, encoded.buffers, FileVersion.V2_0, logical_type)])
        assert back.rows == run.rows == page.length and back.shape == run.shape
        for name in ("valid", "values", "lengths", "item_valid"):
            assert np.array_equal(getattr(back, name), getattr(run, name)), (logical_type, name)


def test_damaged_2_0_pages_give_only_typed_errors(tmp_path: Path) -> None:
    """Bytes of a page's buffers overwritten or cut short: the page decodes (pages carry no
    checksum: a changed value is a value) or raises CorruptFileError, never anything else."""
    from lance_assets.errors import CorruptFileError
    from lance_assets.format import pages20
    from lance_assets.format.v2file import FileVersion

    pages = _real_2_0_pages(tmp_path / "ds.lance")
    pages = [(p, b, t) for p, b, t in pages if b]

    @settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        page, buffers, logical_type = data.draw(st.sampled_from(pages))
        damaged = list(buffers)
        k = data.draw(st.integers(0, len(damaged) - 1))
        raw = bytearray(damaged[k])
        if raw and data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at : at + 8] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[data.draw(st.integers(0, len(raw))) :]
        damaged[k] = bytes(raw)
        try:
            pages20.encode_page(pages20.materialize([pages20.defer_page(page, damaged, FileVersion.V2_0, logical_type)]))
        except CorruptFileError:
            pass

    check()


def test_2_0_list_offsets_that_disagree_with_their_item_count_are_refused(tmp_path: Path, no_pylance_writer: None) -> None:
    """A list page's last row must end at the page's item count (the next page's items start
    there): a page whose last row was cut short gives a typed error, and nothing changes."""
    from lance.file import LanceFileReader

    path = tmp_path / "ds.lance"
    write_appends(path, [streaming(k * 100, 100) for k in range(6)], "2.0")
    for fragment in lance.dataset(str(path)).get_fragments()[1:]:
        file_path = path / "data" / fragment.data_files()[0].path
        (page,) = LanceFileReader(str(file_path)).metadata().columns[4].pages  # the list's offsets
        raw = bytearray(file_path.read_bytes())
        last = page.buffers[0].position + page.buffers[0].size - 8
        if raw[last : last + 8] != raw[last - 8 : last]:  # the last row holds items: end it where the one before ends
            raw[last : last + 8] = raw[last - 8 : last]
            file_path.write_bytes(bytes(raw))
            break
    else:
        pytest.fail("no append ends with a non-empty list")
    digest = tree_digest(path)
    with pytest.raises(LanceAssetsError, match="list offsets end at item"):
        compact(str(path))
    assert tree_digest(path) == digest


def test_random_nested_2_0_data_is_recut_readably(tmp_path_factory: pytest.TempPathFactory, no_pylance_writer: None) -> None:
    """Random nested types (lists of structs of lists, fixed-size lists, nulls at every depth):
    2.0 stores each list's offsets and each child as columns of their own, re-cut one by one."""
    from tests.engine.test_nested_layers import _property

    _property("2.0", 100, derandomize=True)(tmp_path_factory)
