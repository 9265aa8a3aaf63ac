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

VERSIONS = ["2.1", "2.2"]


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


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("rows", [100, 1000])
def test_streaming_appends_become_one_page_per_column(tmp_path: Path, version: str, rows: int, no_pylance_writer: None) -> None:
    path = tmp_path / "ds.lance"
    tables = [streaming(k * rows, rows) for k in range(40 if rows == 100 else 8)]
    write_appends(path, tables, version)
    report = compact(str(path))
    assert report.fragments_added == 1 and report.columns_coalesced_pylance == []
    assert report.columns_coalesced_native == ["b", "f", "i", "l.item", "s"] and report.columns_left_small == []
    (pages,) = data_file_pages(path)
    assert pages == fresh_pages(pa.concat_tables(tables), version, tmp_path / "fresh.lance")
    assert report.pages_after == sum(pages) and report.pages_before == 5 * len(tables)
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


@pytest.mark.parametrize("version", VERSIONS)
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
@pytest.mark.parametrize("version", VERSIONS)
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
