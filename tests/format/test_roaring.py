"""Our Roaring codec against CRoaring (pyroaring) and against hostile bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap, BitMap64

from lance_assets._proto import table_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.manifest import parse_manifest_file
from lance_assets.format.roaring import (
    decode_bitmap,
    decode_row_addr_map,
    decode_treemap,
    encode_bitmap,
    encode_row_addr_map,
    encode_treemap,
    lsb_bit_positions,
)

U32_MAX = (1 << 32) - 1


@st.composite
def u32_sets(draw: st.DrawFn) -> list[int]:
    """Mixtures that hit array, bitmap and run containers and several high keys."""
    parts: list[int] = draw(st.lists(st.integers(0, U32_MAX), max_size=50))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([0, 1, 7, 0xFFFF])) << 16
        kind = draw(st.sampled_from(["run", "dense", "sparse"]))
        if kind == "run":
            start = draw(st.integers(0, 60000))
            parts.extend(range(key + start, key + start + draw(st.integers(1, 5000))))
        elif kind == "dense":
            step = draw(st.integers(1, 12))
            parts.extend(range(key, key + 0x10000, step))
        else:
            parts.extend(key + v for v in draw(st.lists(st.integers(0, 0xFFFF), max_size=300)))
    return parts


def crroaring_bytes(values: list[int], runs: bool) -> bytes:
    """CRoaring's serialization; ``BitMap(list)`` would already add runs, ``update`` does not."""
    bitmap = BitMap()
    bitmap.update(list(values))
    if runs:
        bitmap.run_optimize()
    return bitmap.serialize()


@settings(max_examples=150, deadline=None)
@given(u32_sets(), st.booleans())
def test_round_trip_and_cross_reading_with_croaring(values: list[int], use_runs: bool) -> None:
    expected = sorted(set(values))
    ours = encode_bitmap(values, use_runs=use_runs)
    assert decode_bitmap(ours) == expected
    assert list(BitMap.deserialize(ours)) == expected
    assert decode_bitmap(crroaring_bytes(values, runs=True)) == expected
    assert decode_bitmap(crroaring_bytes(values, runs=False)) == expected


@settings(max_examples=150, deadline=None)
@given(u32_sets())
def test_bytes_identical_to_croaring(values: list[int]) -> None:
    """Same container choices as CRoaring, with and without run containers."""
    assert encode_bitmap(values) == crroaring_bytes(values, runs=False)
    assert encode_bitmap(values, use_runs=True) == crroaring_bytes(values, runs=True)


@st.composite
def u64_sets(draw: st.DrawFn) -> list[int]:
    highs = draw(st.lists(st.sampled_from([0, 1, 2, 1000, U32_MAX]), max_size=4))
    return [(h << 32) | low for h in highs for low in draw(u32_sets())] + draw(
        st.lists(st.integers(0, (1 << 64) - 1), max_size=20)
    )


@settings(max_examples=50, deadline=None)
@given(u64_sets())
def test_treemap_round_trip_against_bitmap64(values: list[int]) -> None:
    expected = sorted(set(values))
    ours = encode_treemap(values)
    assert decode_treemap(ours) == expected
    assert list(BitMap64.deserialize(ours)) == expected
    reference = BitMap64(values)
    reference.run_optimize()
    assert decode_treemap(reference.serialize()) == expected
    assert encode_treemap(values, use_runs=True) == reference.serialize()


def test_treemap_layout_is_count_then_key_and_bitmap() -> None:
    """The layout Lance's Rust crate writes: u64 count, then (u32 high, bitmap) pairs."""
    data = encode_treemap([5, (3 << 32) | 7])
    first = encode_bitmap([5])
    second = encode_bitmap([7])
    assert data == struct.pack("<QI", 2, 0) + first + struct.pack("<I", 3) + second


def test_empty_bitmap_and_treemap() -> None:
    assert encode_bitmap([]) == BitMap().serialize() == struct.pack("<II", 12346, 0)
    assert decode_bitmap(encode_bitmap([])) == []
    assert encode_treemap([]) == bytes(8)
    assert decode_treemap(bytes(8)) == []


def test_encode_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        encode_bitmap([1 << 32])
    with pytest.raises(ValueError):
        encode_bitmap([-1])
    with pytest.raises(ValueError):
        encode_treemap([1 << 64])


def test_million_values_is_fast_enough() -> None:
    values = list(range(0, 3_000_000, 3))
    data = encode_bitmap(values)
    assert decode_bitmap(data) == values


def test_lsb_bit_positions_order() -> None:
    assert list(lsb_bit_positions(bytes([0b0000_0101, 0b1000_0000]), 16)) == [0, 2, 15]
    assert list(lsb_bit_positions(bytes([0xFF]), 3)) == [0, 1, 2]


def test_bitmaps_pylance_writes_into_the_index_section(tmp_path: Path) -> None:
    """Fragment bitmaps and a deferred-remap ``changed_row_addrs`` treemap written by
    pylance 14: we decode them and re-encode them byte for byte."""
    path = str(tmp_path / "ds")
    for i, (first, count) in enumerate([(0, 100), (100, 50), (150, 30)]):
        table = pa.table({"id": pa.array(range(first, first + count), pa.int64())})
        lance.write_dataset(table, path, mode="create" if i == 0 else "append")
    lance.dataset(path).create_scalar_index("id", "BTREE")
    lance.dataset(path).delete("id in (3, 120)")
    lance.dataset(path).optimize.compact_files(defer_index_remap=True)

    newest = min((tmp_path / "ds" / "_versions").glob("*.manifest"))  # V2 names sort newest first
    section = parse_manifest_file(newest.read_bytes()).index_section
    assert section is not None
    indices = {index.name: index for index in section.indices}
    assert decode_bitmap(indices["id_idx"].fragment_bitmap) == [0, 1, 2]
    assert decode_bitmap(indices["__lance_frag_reuse"].fragment_bitmap) == [3]
    for index in indices.values():
        assert encode_bitmap(decode_bitmap(index.fragment_bitmap)) == index.fragment_bitmap

    details = table_pb2.FragmentReuseIndexDetails.FromString(indices["__lance_frag_reuse"].index_details.value)
    (version,) = details.inline.versions
    (group,) = version.groups
    moved = [(0 << 32) | o for o in range(100) if o != 3]
    moved += [(1 << 32) | o for o in range(50) if o != 20]
    moved += [(2 << 32) | o for o in range(30)]
    assert decode_treemap(group.changed_row_addrs) == moved
    # pylance builds these from row ranges, so they hold run containers (cookie 12347),
    # exactly the containers ``use_runs`` picks; deletion files have none (test_deletion).
    assert group.changed_row_addrs[12:14] == struct.pack("<H", 12347)
    assert encode_treemap(moved, use_runs=True) == group.changed_row_addrs


# ------------------------------------------------------------------ hostile input


def _samples() -> list[bytes]:
    """One of each header/container shape: plain cookie, bitmap container, run cookie
    without offsets (< 4 containers), run cookie with offsets, CRoaring's own bytes."""
    return [
        encode_bitmap([1, 2, 3, 70000]),
        encode_bitmap(range(0, 10000)),
        encode_bitmap(list(range(100)) + list(range(1 << 16, (1 << 16) + 50, 2)), use_runs=True),
        encode_bitmap(
            list(range(0, 20000, 2)) + [k << 16 | j for k in range(1, 5) for j in range(10)],
            use_runs=True,
        ),
        crroaring_bytes([k << 16 | j for k in range(5) for j in range(10)], runs=True),
    ]


@pytest.mark.parametrize("sample", range(5))
def test_every_truncation_is_corrupt(sample: int) -> None:
    data = _samples()[sample]
    step = max(1, len(data) // 400)
    for cut in range(0, len(data), step):
        with pytest.raises(CorruptFileError):
            decode_bitmap(data[:cut])


def test_treemap_truncation_is_corrupt() -> None:
    data = encode_treemap([1, 2, (5 << 32) + 9, (9 << 32) + 70000])
    for cut in range(len(data)):
        with pytest.raises(CorruptFileError):
            decode_treemap(data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.data())
def test_byte_flips_give_values_or_corrupt_only(sample: int, data: st.DataObject) -> None:
    raw = bytearray(_samples()[sample])
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        values = decode_bitmap(bytes(raw))
    except CorruptFileError:
        return
    assert values == sorted(set(values))
    assert list(BitMap.deserialize(encode_bitmap(values))) == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_values_or_corrupt_only(raw: bytes) -> None:
    for decode in (decode_bitmap, decode_treemap):
        try:
            decode(raw)
        except CorruptFileError:
            pass


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (struct.pack("<II", 12346, 0xFFFFFFFF), "container count"),
        (struct.pack("<II", 12346, 1000), "truncated"),
        (struct.pack("<I", 12347 | (0xFFFF << 16)), "truncated"),
        (struct.pack("<II", 99, 0), "unknown cookie"),
        (encode_bitmap([1]) + b"\x00", "unexpected bytes"),
        # two containers with keys 5 then 5
        (struct.pack("<IIHHHHII", 12346, 2, 5, 0, 5, 0, 24, 26) + b"\x01\x00\x02\x00", "keys"),
        # array container 3, 1
        (struct.pack("<IIHHI", 12346, 1, 0, 1, 16) + struct.pack("<HH", 3, 1), "ascending"),
        # wrong offset
        (struct.pack("<IIHHI", 12346, 1, 0, 0, 99) + struct.pack("<H", 3), "offset"),
        # bitmap container claiming 5000 values but holding 0
        (struct.pack("<IIHHI", 12346, 1, 0, 4999, 16) + bytes(8192), "bits set"),
        # run container (flag set): runs 10..20 and 15..16 overlap
        (struct.pack("<IBHH", 12347, 1, 0, 12) + struct.pack("<HHHHH", 2, 10, 10, 15, 1), "runs"),
        # run container leaving the 16-bit space
        (struct.pack("<IBHH", 12347, 1, 0, 0) + struct.pack("<HHH", 1, 0xFFFF, 1), "leaves"),
        # run container whose cardinality disagrees
        (struct.pack("<IBHH", 12347, 1, 0, 7) + struct.pack("<HHH", 1, 0, 1), "header says"),
        (struct.pack("<IBHH", 12347, 1, 0, 0) + struct.pack("<H", 0), "zero runs"),
    ],
)
def test_specific_corruptions_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptFileError, match=reason):
        decode_bitmap(data, path="x.bin")


def test_forged_treemap_count_is_rejected_without_looping() -> None:
    with pytest.raises(CorruptFileError, match="cannot fit"):
        decode_treemap(struct.pack("<Q", 1 << 62) + encode_bitmap([1]))
    with pytest.raises(CorruptFileError, match="ascending"):
        decode_treemap(struct.pack("<QI", 2, 4) + encode_bitmap([1]) + struct.pack("<I", 4) + encode_bitmap([2]))


def test_error_carries_path() -> None:
    with pytest.raises(CorruptFileError) as info:
        decode_bitmap(b"\x00", path="_deletions/0-1-2.bin")
    assert info.value.path == "_deletions/0-1-2.bin"


# --- row-address maps (per fragment a 32-bit bitmap; the null rows of zone maps and bloom filters)
@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, U32_MAX), st.one_of(st.none(), st.lists(st.integers(0, 70000), min_size=1, max_size=40)), max_size=6
    )
)
def test_row_addr_map_round_trip(entries: dict[int, list[int] | None]) -> None:
    data = encode_row_addr_map(entries)
    assert decode_row_addr_map(data) == {f: None if v is None else sorted(set(v)) for f, v in entries.items()}
    # layout: count, then per fragment ascending its id, the bitmap's size (0: every row), the bitmap
    assert int.from_bytes(data[:4], "little") == len(entries)


def test_row_addr_map_leaves_out_empty_fragments() -> None:
    assert decode_row_addr_map(encode_row_addr_map({3: [], 4: [1]})) == {4: [1]}


def test_row_addr_map_pylance_writes_for_null_rows(tmp_path: Path) -> None:
    """The null rows pylance records in a zone map's global buffer decode to their addresses."""
    import warnings

    from lance.file import LanceFileReader

    path = tmp_path / "ds.lance"
    for k in range(3):
        ids = list(range(20 * k, 20 * k + 20))
        table = pa.table({"id": ids, "v": [None if i % 6 == 1 else i for i in ids]})
        lance.write_dataset(table, str(path), mode="append", data_storage_version="2.2")
    ds = lance.dataset(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_scalar_index("v", "ZONEMAP", name="z")
    (segment,) = lance.dataset(str(path)).describe_indices()[0].segments
    reader = LanceFileReader(str(path / "_indices" / segment.uuid / "zonemap.lance"))
    at = int(reader.read_all().to_table().schema.metadata[b"null_bitmap"])
    got = decode_row_addr_map(reader.read_global_buffer(at))
    assert got == {k: [i - 20 * k for i in range(20 * k, 20 * k + 20) if i % 6 == 1] for k in range(3)}
    assert encode_row_addr_map(got) == reader.read_global_buffer(at)  # the bytes pylance writes


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x00",  # truncated count
        b"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # two fragments promised, one there
        b"\x01\x00\x00\x00\x05\x00\x00\x00\x20\x00\x00\x00",  # bitmap size past the end
        b"\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\xff",  # trailing byte
        b"\xff\xff\xff\xff",  # forged count
    ],
)
def test_row_addr_map_corruption_is_typed(data: bytes) -> None:
    with pytest.raises(CorruptFileError):
        decode_row_addr_map(data)
