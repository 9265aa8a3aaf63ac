"""Row-id and row-version sequences: our codec, our operations, and pylance 14."""

from __future__ import annotations

import itertools
import math
import shutil
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lance_assets._proto import rowids_pb2, table_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.deletion import DeletionFileType, decode_deletion_file, deletion_file_name
from lance_assets.format.rowids import (
    RowIdSequence,
    RowVersionSequence,
    VersionRun,
    decode_row_ids,
    decode_row_versions,
    encode_row_ids,
    encode_row_versions,
)

U64_MAX = (1 << 64) - 1
Seg = rowids_pb2.U64Segment
Arr = rowids_pb2.EncodedU64Array


# ------------------------------------------------------------------ generators


@st.composite
def id_lists(draw: st.DrawFn) -> list[int]:
    """Distinct ids shaped like real fragments: ranges, ranges with holes, scatter, disorder."""
    out: list[int] = []
    used: set[int] = set()
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["range", "holes", "dense", "sparse", "shuffled", "huge"]))
        start = draw(st.sampled_from([0, 7, 1000, 1 << 20, 1 << 40, U64_MAX - 5000]))
        start += draw(st.integers(0, 300))
        length = draw(st.integers(1, 400))
        if kind == "range":
            part = list(range(start, start + length))
        elif kind == "holes":
            holes = set(draw(st.lists(st.integers(0, length - 1), max_size=5)))
            part = [start + i for i in range(length) if i not in holes]
        elif kind == "dense":
            part = [start + i for i in range(length) if draw(st.booleans())]
        elif kind == "sparse":
            part = sorted({start + draw(st.integers(0, 1 << 34)) for _ in range(length % 40)})
        elif kind == "shuffled":
            part = draw(st.permutations(list(range(start, start + length % 30))))
        else:
            part = [draw(st.integers(0, U64_MAX)) for _ in range(length % 5)]
        part = [v for v in part if v < U64_MAX and v not in used]
        used.update(part)
        out.extend(part)
    return out


def _segment_values(segment: rowids_pb2.U64Segment) -> list[int]:
    message = rowids_pb2.RowIdSequence(segments=[segment])
    return decode_row_ids(message.SerializeToString()).to_list()


def lance_rule(values: list[int]) -> str:
    """Lance's segment choice for one run of values, restated independently."""
    if not values:
        return "range"
    if any(b <= a for a, b in itertools.pairwise(values)):
        return "array"
    span = values[-1] - values[0] + 1
    holes = span - len(values)
    if holes == 0:
        return "range"
    sizes = [24 + 4 * holes, 24 + math.ceil(span / 8), 24 + 2 * len(values)]
    return ["range_with_holes", "range_with_bitmap", "sorted_array"][sizes.index(min(sizes))]


# ------------------------------------------------------------------ row id codec


@settings(max_examples=200, deadline=None)
@given(id_lists())
def test_row_id_round_trip_and_segment_rules(values: list[int]) -> None:
    sequence = RowIdSequence.from_values(values)
    assert sequence.to_list() == values and len(sequence) == len(values)
    data = encode_row_ids(sequence)
    assert decode_row_ids(data).to_list() == values
    segments = rowids_pb2.RowIdSequence.FromString(data).segments
    previous: rowids_pb2.U64Segment | None = None
    for segment in segments:
        kind = segment.WhichOneof("segment")
        seg_values = _segment_values(segment)
        if kind != "array":
            assert kind == lance_rule(seg_values), seg_values
        if previous is not None and kind == "range" and previous.WhichOneof("segment") == "range":
            assert previous.range.end != segment.range.start, "touching ranges must merge"
        previous = segment


def test_width_rule_of_encoded_arrays() -> None:
    def array_of(values: list[int]) -> rowids_pb2.EncodedU64Array:
        segments = rowids_pb2.RowIdSequence.FromString(encode_row_ids(RowIdSequence.from_values(values))).segments
        assert [s.WhichOneof("segment") for s in segments] == ["array"]
        return segments[0].array

    u16 = array_of([70000, 5 + 70000 + 65530, 70000 + 3])
    assert u16.WhichOneof("array") == "u16_array" and u16.u16_array.base == 70000
    assert u16.u16_array.offsets == array("H", [0, 65535, 3]).tobytes()
    u32 = array_of([9, 1 << 31, 10])
    assert u32.WhichOneof("array") == "u32_array" and u32.u32_array.base == 9
    u64 = array_of([1 << 40, 0, 1 << 41])
    assert u64.WhichOneof("array") == "u64_array"
    assert u64.u64_array.values == array("Q", [1 << 40, 0, 1 << 41]).tobytes()


def test_each_segment_kind_decodes() -> None:
    """Hand-written messages in Lance's shapes, including LSB-first bitmaps (trap 18)."""
    message = rowids_pb2.RowIdSequence(
        segments=[
            Seg(range=Seg.Range(start=0, end=3)),
            Seg(range_with_holes=Seg.RangeWithHoles(start=10, end=15, holes=_u16(11, b"\x00\x00\x02\x00"))),
            Seg(range_with_bitmap=Seg.RangeWithBitmap(start=20, end=30, bitmap=bytes([0b0000_0101, 0b10]))),
            Seg(sorted_array=Arr(u32_array=Arr.U32Array(base=100, offsets=array("I", [0, 70000]).tobytes()))),
            Seg(array=Arr(u64_array=Arr.U64Array(values=array("Q", [5, 4]).tobytes()))),
        ]
    )
    assert decode_row_ids(message.SerializeToString()).to_list() == [
        0,
        1,
        2,
        10,
        12,
        14,
        20,
        22,
        29,
        100,
        70100,
        5,
        4,
    ]


def test_bitmap_segment_bytes_match_lance_layout() -> None:
    """0..100 without 5, 20, 21, 22: the exact bitmap PL14 wrote for that fragment."""
    values = [i for i in range(100) if i not in (5, 20, 21, 22)]
    data = encode_row_ids(RowIdSequence.from_values(values))
    (segment,) = rowids_pb2.RowIdSequence.FromString(data).segments
    assert segment.WhichOneof("segment") == "range_with_bitmap"
    assert segment.range_with_bitmap.bitmap == b"\xdf\xff\x8f" + b"\xff" * 9 + b"\x0f"


# ------------------------------------------------------------------ row id operations


@settings(max_examples=150, deadline=None)
@given(st.lists(id_lists(), min_size=1, max_size=4), st.data())
def test_concat_mask_split_match_list_model(parts: list[list[int]], data: st.DataObject) -> None:
    sequences = [RowIdSequence.from_values(p) for p in parts]
    joined = RowIdSequence.concat(sequences)
    model = [v for p in parts for v in p]
    assert joined.to_list() == model
    doomed = data.draw(st.sets(st.integers(0, max(len(model) - 1, 0))) if model else st.just(set()))
    kept = joined.without_offsets(doomed)
    model = [v for i, v in enumerate(model) if i not in doomed]
    assert kept.to_list() == model
    cuts = data.draw(st.lists(st.integers(0, len(model)), max_size=3))
    sizes = [b - a for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(model)])]
    chunks = kept.split(sizes)
    assert [c.to_list() for c in chunks] == [model[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
    for chunk in chunks:
        assert decode_row_ids(encode_row_ids(chunk)) == chunk


def test_large_masked_range_stays_compact_and_fast() -> None:
    sequence = RowIdSequence.from_range(0, 3_000_000)
    doomed = range(0, 3_000_000, 1000)
    kept = sequence.without_offsets(doomed)
    assert len(kept) == 3_000_000 - 3000
    assert all(isinstance(p, range) for p in kept.pieces)
    first, second = kept.split([1_000_000, len(kept) - 1_000_000])
    (segment,) = rowids_pb2.RowIdSequence.FromString(encode_row_ids(first)).segments
    assert segment.WhichOneof("segment") == "range_with_holes"
    assert decode_row_ids(encode_row_ids(second)) == second


def test_operations_reject_bad_arguments() -> None:
    sequence = RowIdSequence.from_range(0, 10)
    with pytest.raises(ValueError):
        sequence.without_offsets([10])
    with pytest.raises(ValueError):
        sequence.split([5, 4])
    with pytest.raises(ValueError):
        sequence.split([11, -1])
    assert RowIdSequence.concat([]) == RowIdSequence()
    assert encode_row_ids(RowIdSequence()) == b""


# ------------------------------------------------------------------ versions


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 4), max_size=40), min_size=1, max_size=4),
    st.data(),
)
def test_versions_round_trip_and_operations(parts: list[list[int]], data: st.DataObject) -> None:
    sequences = [RowVersionSequence.from_versions(p) for p in parts]
    for part, sequence in zip(parts, sequences):
        assert sequence.versions() == part
        assert decode_row_versions(encode_row_versions(sequence)) == sequence
    joined = RowVersionSequence.concat(sequences)
    model = [v for p in parts for v in p]
    assert joined.versions() == model and len(joined) == len(model)
    doomed = data.draw(st.sets(st.integers(0, len(model) - 1)) if model else st.just(set()))
    model = [v for i, v in enumerate(model) if i not in doomed]
    kept = joined.without_offsets(doomed)
    assert kept.versions() == model
    cut = data.draw(st.integers(0, len(model)))
    head, tail = kept.split([cut, len(model) - cut])
    assert head.versions() == model[:cut] and tail.versions() == model[cut:]


def test_version_spans_count_rows_whatever_their_shape() -> None:
    """Lance writes masked spans as holes/bitmaps over local positions; only the count matters."""
    message = rowids_pb2.RowDatasetVersionSequence(
        runs=[
            rowids_pb2.RowDatasetVersionRun(span=Seg(range=Seg.Range(end=50)), version=2),
            rowids_pb2.RowDatasetVersionRun(
                span=Seg(range_with_holes=Seg.RangeWithHoles(end=50, holes=_u16(20, b"\0\0"))),
                version=3,
            ),
            rowids_pb2.RowDatasetVersionRun(
                span=Seg(range_with_bitmap=Seg.RangeWithBitmap(end=9, bitmap=b"\x0f\x01")),
                version=3,
            ),
        ]
    )
    decoded = decode_row_versions(message.SerializeToString())
    assert decoded.runs == (VersionRun(50, 2), VersionRun(49 + 5, 3))
    encoded = rowids_pb2.RowDatasetVersionSequence.FromString(encode_row_versions(decoded))
    assert [(r.span.range.start, r.span.range.end, r.version) for r in encoded.runs] == [
        (0, 50, 2),
        (0, 54, 3),
    ]


# ------------------------------------------------------------------ hostile input


def _one(segment: rowids_pb2.U64Segment) -> bytes:
    return rowids_pb2.RowIdSequence(segments=[segment]).SerializeToString()


def _u16(base: int, offsets: bytes) -> rowids_pb2.EncodedU64Array:
    return Arr(u16_array=Arr.U16Array(base=base, offsets=offsets))


def _holes(start: int, end: int, holes: rowids_pb2.EncodedU64Array | None) -> bytes:
    return _one(Seg(range_with_holes=Seg.RangeWithHoles(start=start, end=end, holes=holes)))


def _bits(start: int, end: int, bitmap: bytes) -> bytes:
    return _one(Seg(range_with_bitmap=Seg.RangeWithBitmap(start=start, end=end, bitmap=bitmap)))


def _ranges(*bounds: tuple[int, int]) -> bytes:
    segments = [Seg(range=Seg.Range(start=a, end=b)) for a, b in bounds]
    return rowids_pb2.RowIdSequence(segments=segments).SerializeToString()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff", "does not parse"),
        (_one(Seg()), "no segment type"),
        (_ranges((5, 2)), "past its end"),
        (_ranges((0, U64_MAX)), "exceeds a fragment"),
        (_holes(0, 5, None), "no holes"),
        (_holes(0, 5, _u16(5, b"\0\0")), "holes must ascend"),
        (_holes(0, 5, _u16(0, b"\1\0\1\0")), "holes must ascend"),
        (_bits(0, 9, b"\xff"), "bitmap of 1 bytes"),
        (_bits(0, 1 << 40, b""), "exceeds"),
        (_one(Seg(sorted_array=_u16(0, b"\2\0\1\0"))), "not strictly"),
        (_one(Seg(array=Arr())), "no width"),
        (_one(Seg(array=Arr(u32_array=Arr.U32Array(offsets=b"\0\0\0")))), "whole number"),
        (_one(Seg(array=_u16(U64_MAX, b"\1\0"))), "overflows"),
        (_ranges((0, 1 << 32), (1 << 33, (1 << 33) + 1)), "more than"),
    ],
)
def test_row_id_corruptions_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptFileError, match=reason):
        decode_row_ids(data, path="_versions/1.manifest")


def test_version_run_without_span_is_corrupt() -> None:
    data = rowids_pb2.RowDatasetVersionSequence(runs=[rowids_pb2.RowDatasetVersionRun(version=1)])
    with pytest.raises(CorruptFileError, match="no span"):
        decode_row_versions(data.SerializeToString())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_give_sequences_or_corrupt_only(raw: bytes) -> None:
    for decode in (decode_row_ids, decode_row_versions):
        try:
            decode(raw)
        except CorruptFileError:
            pass


@settings(max_examples=200, deadline=None)
@given(id_lists(), st.data())
def test_byte_flips_give_sequences_or_corrupt_only(values: list[int], data: st.DataObject) -> None:
    raw = bytearray(encode_row_ids(RowIdSequence.from_values(values)))
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    for cut in (len(raw), data.draw(st.integers(0, len(raw)))):
        try:
            decode_row_ids(bytes(raw[:cut]))
        except CorruptFileError:
            pass


# ------------------------------------------------------------------ pylance 14


@dataclass(frozen=True)
class FragmentState:
    """What one fragment stores plus what pylance returns when scanning it."""

    id: int
    physical_rows: int
    row_ids: RowIdSequence
    created: RowVersionSequence
    updated: RowVersionSequence
    deleted: list[int]
    scanned_ids: list[int]
    scanned_created: list[int]
    scanned_updated: list[int]


def _states(path: Path) -> list[FragmentState]:
    states = []
    for fragment in lance.dataset(str(path)).get_fragments():
        meta = fragment.metadata.to_json()
        deleted: list[int] = []
        if meta["deletion_file"]:
            info = meta["deletion_file"]
            kind = DeletionFileType.BITMAP if info["file_type"] == "bitmap" else DeletionFileType.ARROW_ARRAY
            name = deletion_file_name(meta["id"], info["read_version"], info["id"], kind)
            deleted = decode_deletion_file((path / "_deletions" / name).read_bytes(), kind)
        scan = fragment.to_table(columns=["_row_created_at_version", "_row_last_updated_at_version"], with_row_id=True)
        states.append(
            FragmentState(
                id=meta["id"],
                physical_rows=meta["physical_rows"],
                row_ids=decode_row_ids(bytes(meta["row_id_meta"]["Inline"])),
                created=decode_row_versions(bytes(meta["created_at_version_meta"]["inline"])),
                updated=decode_row_versions(bytes(meta["last_updated_at_version_meta"]["inline"])),
                deleted=deleted,
                scanned_ids=scan["_rowid"].to_pylist(),
                scanned_created=scan["_row_created_at_version"].to_pylist(),
                scanned_updated=scan["_row_last_updated_at_version"].to_pylist(),
            )
        )
    return states


def _assert_state_consistent(state: FragmentState) -> None:
    """Decoded sequences minus decoded deletions == what pylance scans."""
    assert len(state.row_ids) == len(state.created) == len(state.updated) == state.physical_rows
    assert state.row_ids.without_offsets(state.deleted).to_list() == state.scanned_ids
    assert state.created.without_offsets(state.deleted).versions() == state.scanned_created
    assert state.updated.without_offsets(state.deleted).versions() == state.scanned_updated


def _write(path: Path, first: int, count: int, version: str, create: bool) -> None:
    table = pa.table({"id": pa.array(range(first, first + count), pa.int64())})
    lance.write_dataset(
        table,
        str(path),
        mode="create" if create else "append",
        data_storage_version=version,
        enable_stable_row_ids=True,
    )


@pytest.fixture(scope="module", params=["2.0", "2.1"])
def compacted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(before, after) copies of a stable-row-id dataset around ``compact_files``."""
    root = tmp_path_factory.mktemp(f"rowids-{request.param}")
    path = root / "ds"
    for i, (first, count) in enumerate([(0, 100), (100, 50), (150, 30), (180, 6120), (6300, 40)]):
        _write(path, first, count, request.param, create=i == 0)
    ds = lance.dataset(str(path))
    ds.delete("id in (5, 20, 21, 22, 120) or (id >= 200 and id < 6200 and id % 3 = 0)")
    ds.update({"id": "id + 100000"}, where="id = 160 or id = 6310")  # moves rows to a new fragment
    before = root / "before"
    shutil.copytree(path, before)
    lance.dataset(str(path)).optimize.compact_files(target_rows_per_fragment=1500)
    return before, path


def test_pylance_sequences_decode_before_and_after_compaction(compacted: tuple[Path, Path]) -> None:
    for path in compacted:
        for state in _states(path):
            _assert_state_consistent(state)


def test_our_compaction_of_sequences_matches_pylance(compacted: tuple[Path, Path]) -> None:
    """concat -> drop deleted -> split to the new fragment sizes reproduces pylance's output."""
    before, after = (_states(p) for p in compacted)
    kept_ids = {s.id for s in after}
    old = [s for s in before if s.id not in kept_ids]
    new = [s for s in after if s.id not in {b.id for b in before}]
    assert old and len(new) > 1, "the fixture should rewrite several fragments into several"
    sizes = [s.physical_rows for s in new]

    row_ids = RowIdSequence.concat(s.row_ids.without_offsets(s.deleted) for s in old)
    created = RowVersionSequence.concat(s.created.without_offsets(s.deleted) for s in old)
    updated = RowVersionSequence.concat(s.updated.without_offsets(s.deleted) for s in old)
    for produced, ours_ids, ours_created, ours_updated in zip(
        new, row_ids.split(sizes), created.split(sizes), updated.split(sizes)
    ):
        assert produced.row_ids == ours_ids
        assert produced.created == ours_created
        assert produced.updated == ours_updated
        assert len(encode_row_ids(ours_ids)) <= len(encode_row_ids(produced.row_ids)) + 16


def _patch_latest_manifest(path: Path, mutate: Callable[[table_pb2.Manifest], None]) -> None:
    """Rewrite the newest manifest in place (test-only): same prefix, new message, same trailer."""
    manifest_path = min((path / "_versions").glob("*.manifest"))  # V2 names: newest sorts first
    data = manifest_path.read_bytes()
    position = int.from_bytes(data[-16:-8], "little", signed=True)
    length = int.from_bytes(data[position : position + 4], "little")
    manifest = table_pb2.Manifest.FromString(data[position + 4 : position + 4 + length])
    mutate(manifest)
    body = manifest.SerializeToString()
    manifest_path.write_bytes(data[:position] + len(body).to_bytes(4, "little") + body + data[-16:])


def test_pylance_reads_our_encodings(compacted: tuple[Path, Path], tmp_path: Path) -> None:
    """Give each fragment row ids of a chosen shape (bitmap, holes, sorted array, array)
    and versions of our own, then let pylance scan them back."""
    before, _ = compacted
    copy = tmp_path / "ds"
    shutil.copytree(before, copy)
    shapes: dict[int, tuple[list[int], list[int]]] = {}

    def mutate(manifest: table_pb2.Manifest) -> None:
        for index, fragment in enumerate(manifest.fragments):
            n = fragment.physical_rows
            base = 10_000_000 * (index + 1)
            ids = [
                [base + 2 * i for i in range(n)],  # every other id -> bitmap
                [base + i + (i >= n // 2) for i in range(n)],  # one hole -> holes
                [base + 1000 * i for i in range(n)],  # sparse -> sorted array (u32)
                [base + n - i for i in range(n)],  # descending -> array
            ][index % 4]
            versions = [1 + (i % 3 == 0) for i in range(n)]
            shapes[fragment.id] = (ids, versions)
            fragment.inline_row_ids = encode_row_ids(RowIdSequence.from_values(ids))
            fragment.inline_created_at_versions = encode_row_versions(RowVersionSequence.from_versions(versions))

    _patch_latest_manifest(copy, mutate)
    kinds = {
        segment.WhichOneof("segment")
        for ids, _ in shapes.values()
        for segment in rowids_pb2.RowIdSequence.FromString(encode_row_ids(RowIdSequence.from_values(ids))).segments
    }
    assert kinds == {"range_with_bitmap", "range_with_holes", "sorted_array", "array"}
    states = {s.id: s for s in _states(copy)}
    for fragment_id, (ids, versions) in shapes.items():
        state = states[fragment_id]
        assert state.row_ids.to_list() == ids
        keep = [i for i in range(len(ids)) if i not in set(state.deleted)]
        assert state.scanned_ids == [ids[i] for i in keep]
        assert state.scanned_created == [versions[i] for i in keep]
