"""Deletion files: read what pylance 14 writes, and have pylance read what we write."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lance_assets.errors import CorruptFileError
from lance_assets.format.deletion import (
    DeletionFileType,
    decode_arrow_deletion_file,
    decode_deletion_file,
    deletion_file_name,
    deletion_file_type_for,
    deletion_schema,
    encode_arrow_deletion_file,
    encode_deletion_file,
)
from lance_assets.format.roaring import encode_bitmap

# Fragment layout of the test dataset: (first id, row count). Row offset = id - first id.
FRAGMENTS = [(0, 8000), (8000, 100), (8100, 6000)]
# One delete touching all three fragments: 3 rows, 1 row, and exactly 5000 rows.
FIRST_DELETE = "id in (7, 5, 3) or id = 8050 or (id >= 8100 and id < 13100)"
# A second delete grows fragment 0's set to 6003 entries.
SECOND_DELETE = "id >= 1000 and id < 7000"


@dataclass(frozen=True)
class Written:
    """One deletion file pylance wrote, as its manifest describes it."""

    fragment_id: int
    file_type: DeletionFileType
    name: str
    num_deleted_rows: int
    physical_rows: int


def _deletion_files(dataset_path: Path) -> list[Written]:
    found = []
    for fragment in lance.dataset(str(dataset_path)).get_fragments():
        meta = fragment.metadata.to_json()
        info = meta["deletion_file"]
        if info is None:
            continue
        file_type = {"array": DeletionFileType.ARROW_ARRAY, "bitmap": DeletionFileType.BITMAP}[info["file_type"]]
        name = deletion_file_name(meta["id"], info["read_version"], info["id"], file_type)
        found.append(Written(meta["id"], file_type, name, info["num_deleted_rows"], meta["physical_rows"]))
    return found


def _expected_offsets(fragment_id: int, deleted_ids: set[int]) -> list[int]:
    first, count = FRAGMENTS[fragment_id]
    return sorted(i - first for i in deleted_ids if first <= i < first + count)


FIRST_IDS = {3, 5, 7, 8050, *range(8100, 13100)}
ALL_IDS = FIRST_IDS | set(range(1000, 7000))


@pytest.fixture(scope="module", params=["2.0", "2.2"])
def datasets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(after the first delete, after the second delete) copies of one dataset."""
    root = tmp_path_factory.mktemp(f"deletions-{request.param}")
    path = root / "ds"
    for i, (first, count) in enumerate(FRAGMENTS):
        table = pa.table({"id": pa.array(range(first, first + count), pa.int64())})
        lance.write_dataset(
            table,
            str(path),
            mode="create" if i == 0 else "append",
            data_storage_version=request.param,
        )
    lance.dataset(str(path)).delete(FIRST_DELETE)
    first_copy = root / "first"
    shutil.copytree(path, first_copy)
    lance.dataset(str(path)).delete(SECOND_DELETE)
    return first_copy, path


def test_pylance_first_delete_files_decode(datasets: tuple[Path, Path]) -> None:
    first, _ = datasets
    written = _deletion_files(first)
    assert [(w.fragment_id, w.file_type) for w in written] == [
        (0, DeletionFileType.ARROW_ARRAY),
        (1, DeletionFileType.ARROW_ARRAY),
        (2, DeletionFileType.BITMAP),  # exactly 5000 in one go: already a bitmap
    ]
    for w in written:
        data = (first / "_deletions" / w.name).read_bytes()
        offsets = decode_deletion_file(data, w.file_type, physical_rows=w.physical_rows, path=w.name)
        assert offsets == _expected_offsets(w.fragment_id, FIRST_IDS)
        assert len(offsets) == w.num_deleted_rows
        assert deletion_file_type_for(len(offsets)) is w.file_type


def test_pylance_arrow_file_shape(datasets: tuple[Path, Path]) -> None:
    """The trap-17 facts: UInt32 ``row_id``, not null, one batch, values unsorted.

    The batch is flagged ZSTD, but arrow-rs stores a buffer raw (length prefix -1)
    when compressing would not shrink it, so a 3-row file holds no ZSTD frame.
    """
    first, _ = datasets
    w = _deletion_files(first)[0]
    data = (first / "_deletions" / w.name).read_bytes()
    reader = ipc.open_file(pa.py_buffer(data))
    assert reader.schema.equals(deletion_schema(), check_metadata=True)
    assert reader.num_record_batches == 1
    assert sorted(reader.get_batch(0).column(0).to_pylist()) == [3, 5, 7]


# Every ZSTD frame starts with these bytes; IPC body compression stores one frame per buffer.
ZSTD_FRAME_MAGIC = bytes.fromhex("28b52ffd")


def test_pylance_second_delete_grows_to_bitmap(datasets: tuple[Path, Path]) -> None:
    _, second = datasets
    by_fragment = {w.fragment_id: w for w in _deletion_files(second)}
    w = by_fragment[0]
    assert w.file_type is DeletionFileType.BITMAP and w.num_deleted_rows == 6003
    data = (second / "_deletions" / w.name).read_bytes()
    assert decode_deletion_file(data, w.file_type) == _expected_offsets(0, ALL_IDS)


def test_our_bitmap_bytes_equal_pylance_bitmap_bytes(datasets: tuple[Path, Path]) -> None:
    """Lance's roaring crate writes array/bitmap containers only; so do we, byte for byte."""
    _, second = datasets
    for w in _deletion_files(second):
        if w.file_type is DeletionFileType.BITMAP:
            data = (second / "_deletions" / w.name).read_bytes()
            assert encode_bitmap(_expected_offsets(w.fragment_id, ALL_IDS)) == data


def _scan_ids(path: Path) -> list[int]:
    return sorted(lance.dataset(str(path)).to_table()["id"].to_pylist())


@pytest.mark.parametrize("use_runs", [False, True])
def test_pylance_reads_our_files(datasets: tuple[Path, Path], tmp_path: Path, use_runs: bool) -> None:
    """Swap each deletion file for our encoding of a *different* set: pylance must
    then hide exactly our rows, which proves it read our bytes (arrow and bitmap)."""
    _, second = datasets
    copy = tmp_path / "ds"
    shutil.copytree(second, copy)
    expected_ids = set(range(FRAGMENTS[-1][0] + FRAGMENTS[-1][1]))
    for w in _deletion_files(copy):
        first_id, _ = FRAGMENTS[w.fragment_id]
        offsets = _expected_offsets(w.fragment_id, ALL_IDS)
        if len(offsets) > 1:
            offsets = offsets[1:]  # resurrect one row, keep the format's size class
        if w.file_type is DeletionFileType.BITMAP:
            data = encode_bitmap(offsets, use_runs=use_runs)
        else:
            data = encode_deletion_file(offsets, DeletionFileType.ARROW_ARRAY).data
        (copy / "_deletions" / w.name).write_bytes(data)
        expected_ids -= {first_id + o for o in offsets}
    assert _scan_ids(copy) == sorted(expected_ids)


def test_pylance_reads_same_offsets_unchanged(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    _, second = datasets
    copy = tmp_path / "ds"
    shutil.copytree(second, copy)
    before = _scan_ids(copy)
    for w in _deletion_files(copy):
        encoded = encode_deletion_file(_expected_offsets(w.fragment_id, ALL_IDS))
        assert encoded.file_type is w.file_type
        assert encoded.num_deleted_rows == w.num_deleted_rows
        (copy / "_deletions" / w.name).write_bytes(encoded.data)
    assert _scan_ids(copy) == before


# ------------------------------------------------------------------ unit behaviour


def test_file_names() -> None:
    assert deletion_file_name(0, 3, 3434608076984466054, DeletionFileType.ARROW_ARRAY) == ("0-3-3434608076984466054.arrow")
    assert deletion_file_name(12, 1, 7, 1) == "12-1-7.bin"


def test_size_rule_boundary() -> None:
    assert deletion_file_type_for(1) is DeletionFileType.ARROW_ARRAY
    assert deletion_file_type_for(4999) is DeletionFileType.ARROW_ARRAY
    assert deletion_file_type_for(5000) is DeletionFileType.BITMAP
    assert encode_deletion_file(range(4999)).file_type is DeletionFileType.ARROW_ARRAY
    assert encode_deletion_file(range(5000)).file_type is DeletionFileType.BITMAP


def test_our_arrow_file_is_zstd_with_lance_schema() -> None:
    data = encode_arrow_deletion_file([9, 1, 4, 1])
    assert data[:6] == b"ARROW1" and data[-6:] == b"ARROW1"
    reader = ipc.open_file(pa.py_buffer(data))
    assert reader.schema.equals(deletion_schema(), check_metadata=True)
    assert reader.num_record_batches == 1
    assert reader.get_batch(0).column(0).to_pylist() == [1, 4, 9]
    assert ZSTD_FRAME_MAGIC in data


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.integers(0, (1 << 32) - 1), min_size=1, max_size=300),
    st.sampled_from(list(DeletionFileType)),
)
def test_round_trip(offsets: set[int], file_type: DeletionFileType) -> None:
    encoded = encode_deletion_file(offsets, file_type)
    assert encoded.num_deleted_rows == len(offsets)
    assert decode_deletion_file(encoded.data, file_type) == sorted(offsets)


def test_encode_refuses_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_deletion_file([])
    with pytest.raises(ValueError):
        encode_deletion_file([1 << 32])
    with pytest.raises(ValueError):
        encode_arrow_deletion_file([-1])


def _ipc_file(schema: pa.Schema, batches: list[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _batch(values: list[int]) -> pa.RecordBatch:
    return pa.record_batch([pa.array(values, pa.uint32())], schema=deletion_schema())


def _single(schema: pa.Schema, values: list[int | None]) -> bytes:
    column = pa.array(values, schema.field(0).type)
    return _ipc_file(schema, [pa.record_batch([column], schema=schema)])


def _stream_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, deletion_schema()) as writer:
        writer.write_batch(_batch([1]))
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_single(pa.schema([pa.field("row_id", pa.int32(), nullable=False)]), [1]), "schema"),
        (_single(pa.schema([pa.field("row_id", pa.uint32())]), [1]), "schema"),
        (_single(pa.schema([pa.field("rowid", pa.uint32(), nullable=False)]), [1]), "schema"),
        (_single(deletion_schema().with_metadata({"a": "b"}), [1]), "schema"),
        (_ipc_file(deletion_schema(), []), "0 record batches"),
        (_ipc_file(deletion_schema(), [_batch([1]), _batch([2])]), "2 record batches"),
        (_single(deletion_schema(), [1, None]), "null"),
        (_stream_bytes(), "not an Arrow IPC file"),
        (b"ARROW1", "not an Arrow IPC file"),
        (b"ARROW1\x00\x00garbageARROW1", "not a readable"),
    ],
)
def test_arrow_corruptions_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptFileError, match=reason):
        decode_arrow_deletion_file(data, path="_deletions/0-1-2.arrow")


def test_offset_past_physical_rows_is_corrupt() -> None:
    data = encode_deletion_file([3, 10]).data
    assert decode_deletion_file(data, DeletionFileType.ARROW_ARRAY, physical_rows=11) == [3, 10]
    with pytest.raises(CorruptFileError, match="physical rows"):
        decode_deletion_file(data, DeletionFileType.ARROW_ARRAY, physical_rows=10)


def test_arrow_truncations_are_corrupt() -> None:
    data = encode_arrow_deletion_file(range(0, 300, 7))
    for cut in range(len(data)):
        with pytest.raises(CorruptFileError):
            decode_arrow_deletion_file(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_arrow_byte_flips_give_offsets_or_corrupt_only(data: st.DataObject) -> None:
    raw = bytearray(encode_arrow_deletion_file([7, 5, 3, 1000]))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        offsets = decode_arrow_deletion_file(bytes(raw))
    except CorruptFileError:
        return
    assert offsets == sorted(set(offsets))
