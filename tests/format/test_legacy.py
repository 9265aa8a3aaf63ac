"""Legacy (0.x) data files written by pylance 14.0.2, parsed and decoded from raw bytes."""

from __future__ import annotations

import datetime
import decimal
import itertools
import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets._proto import file_pb2, table_pb2
from lance_assets.errors import CorruptFileError, LanceAssetsError, UnsupportedVersionError
from lance_assets.format.legacy import (
    DEFAULT_TAIL_SIZE,
    LegacyEncoding,
    LegacyFileMetadata,
    LegacyPage,
    NeedMore,
    field_layouts,
    page_extent,
    parse_file,
    parse_footer,
    parse_tail,
)

lance = pytest.importorskip("lance")

ROWS_PER_GROUP = 7
APPENDS = [(0, 25), (25, 10), (35, 3)]  # (first id, rows) per write
COLORS = ["red", "green", "blue"]


def _table(start: int, n: int) -> pa.Table:
    r = range(start, start + n)
    return pa.table(
        {
            "id": pa.array(list(r), pa.int64()),
            "i8": pa.array([i % 100 for i in r], pa.int8()),
            "u32": pa.array(list(r), pa.uint32()),
            "f32": pa.array([i * 0.5 for i in r], pa.float32()),
            "f64": pa.array([i * 0.25 for i in r], pa.float64()),
            "flag": pa.array([i % 3 == 0 for i in r]),
            "s": pa.array([None if i % 7 == 3 else f"str{i}" * (1 + i % 4) for i in r]),
            "ls": pa.array([f"L{i}" for i in r], pa.large_string()),
            "bin": pa.array([bytes([i % 256]) * (1 + i % 5) for i in r], pa.binary()),
            "fsb": pa.array([bytes([i % 256]) * 4 for i in r], pa.binary(4)),
            "ts": pa.array(
                [datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=i) for i in r],
                pa.timestamp("us"),
            ),
            "tstz": pa.array(list(r), pa.timestamp("ms", tz="UTC")),
            "day": pa.array([datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in r], pa.date32()),
            "dec": pa.array([decimal.Decimal(i) / 100 for i in r], pa.decimal128(10, 2)),
            "l": pa.array([[i] * (i % 3) for i in r], pa.list_(pa.int32())),
            "ll": pa.array([[f"x{i}"] * (i % 2) for i in r], pa.large_list(pa.string())),
            "fsl": pa.array([[float(i) + k for k in range(8)] for i in r], pa.list_(pa.float32(), 8)),
            "st": pa.array([{"a": i, "b": f"n{i}", "c": {"z": float(i)}} for i in r]),
            "dict": pa.DictionaryArray.from_arrays(pa.array([i % 3 for i in r], pa.int32()), pa.array(COLORS)),
        }
    )


EXPECTED_KINDS = {
    "id": LegacyEncoding.PLAIN, "i8": LegacyEncoding.PLAIN, "u32": LegacyEncoding.PLAIN,
    "f32": LegacyEncoding.PLAIN, "f64": LegacyEncoding.PLAIN, "flag": LegacyEncoding.PLAIN,
    "s": LegacyEncoding.VAR_BINARY, "ls": LegacyEncoding.VAR_BINARY,
    "bin": LegacyEncoding.VAR_BINARY, "fsb": LegacyEncoding.PLAIN, "ts": LegacyEncoding.PLAIN,
    "tstz": LegacyEncoding.PLAIN, "day": LegacyEncoding.PLAIN, "dec": LegacyEncoding.PLAIN,
    "l": LegacyEncoding.LIST_OFFSETS, "l.item": LegacyEncoding.PLAIN,
    "ll": LegacyEncoding.LIST_OFFSETS, "ll.item": LegacyEncoding.VAR_BINARY,
    "fsl": LegacyEncoding.PLAIN, "st": LegacyEncoding.STRUCT, "st.a": LegacyEncoding.PLAIN,
    "st.b": LegacyEncoding.VAR_BINARY, "st.c": LegacyEncoding.STRUCT,
    "st.c.z": LegacyEncoding.PLAIN, "dict": LegacyEncoding.DICTIONARY,
}  # fmt: skip
EXPECTED_BITS = {"id": 64, "i8": 8, "u32": 32, "f32": 32, "flag": 1, "fsb": 32, "ts": 64,
                 "day": 32, "dec": 128, "l": 32, "ll": 64, "fsl": 256, "dict": 32}  # fmt: skip


@pytest.fixture(scope="module")
def legacy_ds(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("legacy") / "ds"
    for i, (start, n) in enumerate(APPENDS):
        lance.write_dataset(
            _table(start, n),
            str(path),
            mode="create" if i == 0 else "append",
            data_storage_version="legacy",
            max_rows_per_group=ROWS_PER_GROUP,
        )
    return path


def _latest_manifest(ds: Path) -> table_pb2.Manifest:
    """Newest of _versions/*.manifest (trailer: i64 position of a u32-prefixed Manifest)."""
    best = None
    for f in (ds / "_versions").glob("*.manifest"):
        data = f.read_bytes()
        (pos,) = struct.unpack_from("<q", data, len(data) - 16)
        (n,) = struct.unpack_from("<I", data, pos)
        m = table_pb2.Manifest.FromString(data[pos + 4 : pos + 4 + n])
        if best is None or m.version > best.version:
            best = m
    assert best is not None
    return best


def _dotted(fields) -> dict[int, str]:
    """field id -> dotted path name (parents resolved through parent_id)."""
    by_id = {f.id: f for f in fields}
    out = {}
    for f in fields:
        parts, cur = [], f
        while True:
            parts.append(cur.name)
            if cur.parent_id < 0:
                break
            cur = by_id[cur.parent_id]
        out[f.id] = ".".join(reversed(parts))
    return out


def _files(ds: Path):
    """(fragment, DataFile, bytes, parsed metadata) for every fragment of the dataset."""
    dataset = lance.dataset(str(ds))
    for frag in dataset.get_fragments():
        (df,) = frag.metadata.files
        data = (ds / "data" / df.path).read_bytes()
        yield frag, df, data, parse_file(data, path=df.path)


# --------------------------------------------------------------------------- structure


def test_every_file_matches_pylance(legacy_ds: Path) -> None:
    manifest = _latest_manifest(legacy_ds)
    assert manifest.data_format.version == "0.1"
    ds_fields = {f.id: f.name for f in manifest.fields}
    seen = 0
    for frag, df, data, meta in _files(legacy_ds):
        seen += 1
        rows = frag.metadata.physical_rows
        assert meta.num_rows == rows == frag.count_rows()
        expected = [ROWS_PER_GROUP] * (rows // ROWS_PER_GROUP) + ([rows % ROWS_PER_GROUP] if rows % ROWS_PER_GROUP else [])
        assert list(meta.batch_rows) == expected
        assert meta.num_batches == len(expected)
        assert meta.version == (df.file_major_version, df.file_minor_version) == (0, 2)
        assert meta.file_size == len(data) == df.file_size_bytes
        assert [f.id for f in meta.fields] == list(df.fields)
        assert {f.id: f.name for f in meta.fields} == ds_fields
        assert (meta.min_field_id, meta.max_field_id) == (0, max(ds_fields))
        assert len(meta.pages) == (max(ds_fields) + 1) * meta.num_batches
        last = (meta.max_field_id, meta.num_batches - 1)
        assert meta.page_table[last] == (meta.page(*last).position, meta.page(*last).length)
        assert len(meta.page_table) == len(meta.pages)
        # regions are ordered and end where the footer starts
        assert 0 < meta.data_end <= meta.page_table_end <= meta.dictionaries_start
        assert meta.dictionaries_start <= meta.manifest_position < meta.metadata_position
        assert meta.footer_position == len(data) - 16
        emb = table_pb2.Manifest.FromString(meta.embedded_manifest)
        assert [f.name for f in emb.fields] == [f.name for f in meta.fields]
    assert seen == len(APPENDS)


def test_statistics_page_table(legacy_ds: Path) -> None:
    """Decode the null_count statistics of column `s` and compare with the source data."""
    for frag, _, data, meta in _files(legacy_ds):
        stats = meta.statistics
        assert stats is not None
        s_id = next(f.id for f in meta.fields if f.name == "s")
        parent = next(f for f in stats.fields if f.name == str(s_id) and f.parent_id == -1)
        nc = next(f for f in stats.fields if f.parent_id == parent.id and f.name == "null_count")
        page = stats.pages[nc.id]
        assert page.length == meta.num_batches  # one statistics value per data batch
        assert stats.pages[parent.id] == LegacyPage(0, 0)
        assert meta.page_table_end <= page.position < stats.page_table_position
        counts = struct.unpack_from(f"<{page.length}q", data, page.position)
        start = APPENDS[frag.fragment_id][0]
        want = [
            sum(1 for i in range(start + lo, start + hi) if i % 7 == 3)
            for lo, hi in zip(meta.batch_offsets, meta.batch_offsets[1:])
        ]
        assert list(counts) == want


def test_tail_protocol_matches_whole_file(legacy_ds: Path) -> None:
    for _, _, data, meta in _files(legacy_ds):
        for first in (16, 17, 100, 1000, DEFAULT_TAIL_SIZE):
            offset = max(0, len(data) - first)
            reads = 0
            while True:
                reads += 1
                result = parse_tail(data[offset:], offset, len(data))
                if not isinstance(result, NeedMore):
                    break
                assert result.offset < offset  # always progress
                offset = result.offset
            assert result == meta
            assert reads <= 3
        assert parse_footer(data[-16:], len(data)).metadata_position == meta.metadata_position


def test_field_layouts(legacy_ds: Path) -> None:
    for _, _, _, meta in _files(legacy_ds):
        names = _dotted(meta.fields)
        layouts = {names[lay.field_id]: lay for lay in field_layouts(meta)}
        assert {k: v.encoding for k, v in layouts.items()} == EXPECTED_KINDS
        for name, bits in EXPECTED_BITS.items():
            assert layouts[name].value_bits == bits, name
        assert {k for k, v in layouts.items() if v.holds_file_positions} == {
            k for k, v in EXPECTED_KINDS.items() if v is LegacyEncoding.VAR_BINARY
        }
        d = layouts["dict"].dictionary
        assert d is not None and d.length == len(COLORS)
        assert d.values_encoding is LegacyEncoding.VAR_BINARY
        assert meta.dictionaries_start <= d.offset < meta.manifest_position


# --------------------------------------------------------------------------- decoding


def _var_binary(data: bytes, page: LegacyPage) -> list[bytes]:
    pos = struct.unpack_from(f"<{page.length + 1}q", data, page.position)
    return [data[a:b] for a, b in itertools.pairwise(pos)]


def _plain(data: bytes, page: LegacyPage, fmt: str) -> list:
    return list(struct.unpack_from(f"<{page.length}{fmt}", data, page.position))


def test_decode_pages_from_raw_bytes(legacy_ds: Path) -> None:
    """The real proof: values read at page-table positions equal what pylance returns."""
    for frag, _, data, meta in _files(legacy_ds):
        names = _dotted(meta.fields)
        ids = {v: k for k, v in names.items()}
        layouts = {lay.field_id: lay for lay in field_layouts(meta)}
        table = frag.to_table()
        for b in range(meta.num_batches):
            lo, n = meta.batch_offsets[b], meta.batch_rows[b]
            want = table.slice(lo, n).to_pydict()

            def page(
                name: str, meta: Any = meta, ids: dict[str, int] = ids, layouts: dict[int, Any] = layouts, b: int = b
            ) -> LegacyPage:
                p = meta.page(ids[name], b)
                _start, end = page_extent(layouts[ids[name]], p)
                assert end <= meta.data_end
                return p

            assert page("id").length == n
            assert _plain(data, page("id"), "q") == want["id"]
            assert _plain(data, page("f64"), "d") == want["f64"]
            # VAR_BINARY: the page holds n+1 absolute positions; the bytes sit just before them
            p = page("s")
            raw = _var_binary(data, p)
            assert [None if v == b"" else v.decode() for v in raw] == want["s"]
            assert struct.unpack_from("<q", data, p.position + 8 * n)[0] == p.position
            # bools are bit-packed LSB first
            bits = data[page("flag").position : page("flag").position + (n + 7) // 8]
            assert [bool(bits[i // 8] >> (i % 8) & 1) for i in range(n)] == want["flag"]
            # list: n+1 int32 offsets relative to this batch's items page
            offs = _plain(data, page("l"), "i")
            assert page("l").length == n + 1 and offs[0] == 0
            items = _plain(data, page("l.item"), "i")
            assert len(items) == offs[-1]
            assert [items[a:c] for a, c in itertools.pairwise(offs)] == want["l"]
            # fixed_size_list<float32, 8>: 8 floats per row
            fsl = _plain(data, LegacyPage(page("fsl").position, 8 * n), "f")
            assert [fsl[8 * i : 8 * i + 8] for i in range(n)] == want["fsl"]
            assert [v.decode() for v in _var_binary(data, page("st.b"))] == [x["b"] for x in want["st"]]
            # dictionary: int32 keys here, values at Field.dictionary (absolute offset)
            d = layouts[ids["dict"]].dictionary
            assert d is not None
            values = [v.decode() for v in _var_binary(data, LegacyPage(d.offset, d.length))]
            assert values == COLORS
            keys = _plain(data, page("dict"), "i")
            assert [values[k] for k in keys] == want["dict"]


# --------------------------------------------------------------------------- negative


@pytest.fixture(scope="module")
def sample(legacy_ds: Path) -> tuple[bytes, LegacyFileMetadata]:
    _, _, data, meta = next(iter(_files(legacy_ds)))
    return data, meta


def _flip(data: bytes, index: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def test_truncation_and_bad_footer(sample) -> None:
    data, meta = sample
    for cut in (0, 1, 5, 15, 16, 17, meta.metadata_position, len(data) // 2):
        with pytest.raises(CorruptFileError):
            parse_file(data[:cut])
    with pytest.raises(CorruptFileError):
        parse_file(data[:-1])
    with pytest.raises(CorruptFileError, match="magic"):
        parse_file(data[:-4] + b"LAND")
    for i in range(8):  # every byte of the metadata position: out of range or misaligned
        with pytest.raises(CorruptFileError):
            parse_file(_flip(data, len(data) - 16 + i, 0x80 if i == 7 else 0x40))
    with pytest.raises(UnsupportedVersionError):
        parse_file(data[:-8] + struct.pack("<HH", 0, 9) + b"LANC")


def test_corrupt_metadata_and_manifest(sample) -> None:
    data, meta = sample
    for pos in (meta.metadata_position, meta.manifest_position):
        with pytest.raises(CorruptFileError, match="claims"):
            parse_file(_flip(data, pos, 0x01))  # length prefix
        with pytest.raises(CorruptFileError):
            parse_file(_flip(data, pos + 4, 0xFF))  # first tag byte -> invalid wire type/field 0


def _rebuild(data: bytes, meta: LegacyFileMetadata, *, manifest=None, metadata=None) -> bytes:
    """Re-serialize the tail with edited messages (everything before the manifest kept)."""
    man = table_pb2.Manifest.FromString(meta.embedded_manifest)
    (n,) = struct.unpack_from("<I", data, meta.metadata_position)
    start = meta.metadata_position + 4
    md = file_pb2.Metadata.FromString(data[start : start + n])
    if manifest:
        manifest(man)
    if metadata:
        metadata(md)
    mb, mdb = man.SerializeToString(), md.SerializeToString()
    out = bytearray(data[: meta.manifest_position])
    out += struct.pack("<I", len(mb)) + mb
    md_pos = len(out)
    out += struct.pack("<I", len(mdb)) + mdb + struct.pack("<qHH", md_pos, 0, 2) + b"LANC"
    return bytes(out)


def test_forged_counts_are_rejected_cheaply(sample) -> None:
    data, meta = sample
    assert parse_file(_rebuild(data, meta)) == meta  # the rebuild itself is faithful

    def huge_id(m):
        m.fields[-1].id = 2**31 - 1

    def many_batches(md):
        md.batch_offsets.extend(range(md.batch_offsets[-1], md.batch_offsets[-1] + 10**5))

    def huge_stats(md):
        md.statistics.fields.append(2**31 - 1)

    def bad_offsets(md):
        md.batch_offsets[1] = -5

    def neg_id(m):
        m.fields[0].id = -3

    def dup_id(m):
        m.fields[1].id = m.fields[0].id

    def huge_dict(m):
        next(f for f in m.fields if f.name == "dict").dictionary.length = 2**40

    for edit in (huge_id, neg_id, dup_id):
        with pytest.raises(CorruptFileError):
            parse_file(_rebuild(data, meta, manifest=edit))
    for edit in (many_batches, huge_stats, bad_offsets):
        with pytest.raises(CorruptFileError):
            parse_file(_rebuild(data, meta, metadata=edit))
    with pytest.raises(CorruptFileError, match="dictionary"):
        field_layouts(parse_file(_rebuild(data, meta, manifest=huge_dict)))

    # page-table entries: a position past the data region, a length of 2**40, a length that
    # makes a plain page run past the data region
    entry = meta.page_table_position  # (field 0, batch 0)
    for pos, length in ((len(data), 1), (0, 2**40)):
        forged = bytearray(data)
        forged[entry : entry + 16] = struct.pack("<qq", pos, length)
        with pytest.raises(CorruptFileError):
            parse_file(bytes(forged))
    forged = bytearray(data)
    forged[entry : entry + 16] = struct.pack("<qq", 0, meta.data_end)
    with pytest.raises(CorruptFileError, match="data"):
        field_layouts(parse_file(bytes(forged)))
    # a value count that disagrees with the batch's row count (field 0 is a top-level int64)
    forged[entry : entry + 16] = struct.pack("<qq", 0, meta.batch_rows[0] - 1)
    with pytest.raises(CorruptFileError, match="values"):
        field_layouts(parse_file(bytes(forged)))

    def parent_cycle(m):
        m.fields[1].parent_id, m.fields[0].parent_id = m.fields[0].id, m.fields[1].id

    with pytest.raises(CorruptFileError, match="parent"):
        field_layouts(parse_file(_rebuild(data, meta, manifest=parent_cycle)))


@pytest.mark.parametrize("version,footer", [("2.0", (0, 3)), ("2.1", (2, 1))])
def test_v2_file_is_refused(tmp_path: Path, version: str, footer) -> None:
    ds = lance.write_dataset(_table(0, 10), str(tmp_path / "v2"), data_storage_version=version)
    (frag,) = ds.get_fragments()
    data = (tmp_path / "v2" / "data" / frag.metadata.files[0].path).read_bytes()
    assert struct.unpack_from("<HH", data, len(data) - 8) == footer
    with pytest.raises(UnsupportedVersionError, match="v2"):
        parse_file(data)
    with pytest.raises(UnsupportedVersionError):
        parse_tail(data[-40:], len(data) - 40, len(data))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_truncations_and_flips(sample, data) -> None:
    raw, meta = sample
    tail_start = meta.page_table_position
    if data.draw(st.booleans()):
        mutated = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(tail_start, len(raw) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
        mutated = bytes(b)
    first = data.draw(st.sampled_from([16, 64, 4096, len(mutated)]))
    offset = max(0, len(mutated) - first)
    try:
        for _ in range(4):
            result = parse_tail(mutated[offset:], offset, len(mutated))
            if not isinstance(result, NeedMore):
                break
            assert result.offset < offset
            offset = result.offset
        assert isinstance(result, LegacyFileMetadata)
        field_layouts(result)
    except (CorruptFileError, UnsupportedVersionError):
        pass
    except LanceAssetsError as exc:  # e.g. a flipped logical type: still typed
        assert type(exc).__name__ == "UnsupportedFeatureError"
