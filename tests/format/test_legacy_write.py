"""Writing legacy (0.x) tails: shifted positions arrays and rebuilt page tables, checked against pylance's files."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lance_assets._proto import file_pb2, table_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.legacy import (
    MAX_ROWS,
    LegacyEncoding,
    LegacyPage,
    build_legacy_tail,
    field_layouts,
    parse_file,
    shift_positions,
)

lance = pytest.importorskip("lance")
from tests.support import factory  # noqa: E402


def _pack(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


@given(st.lists(st.integers(0, 2**40), min_size=0, max_size=50), st.integers(-(2**40), 2**40))
def test_shift_positions_adds_delta(values: list[int], delta: int) -> None:
    values = sorted(values)
    lo, hi = (values[0], values[-1]) if values else (0, 0)
    if lo + delta < 0:
        delta = -lo
    assert shift_positions(_pack(values), delta, lo=lo, hi=hi) == _pack([v + delta for v in values])


def test_shift_positions_refuses_bad_arrays() -> None:
    with pytest.raises(CorruptFileError, match="outside"):
        shift_positions(_pack([5, 6, 20]), 100, lo=5, hi=10)
    with pytest.raises(CorruptFileError, match="outside"):
        shift_positions(_pack([4, 6]), 100, lo=5, hi=10)
    with pytest.raises(CorruptFileError, match="non-decreasing"):
        shift_positions(_pack([5, 9, 7, 10]), 100, lo=5, hi=10)
    with pytest.raises(ValueError):
        shift_positions(b"\0" * 12, 1, lo=0, hi=0)
    with pytest.raises(ValueError):
        shift_positions(_pack([5]), -6, lo=5, hi=5)  # would go negative
    assert shift_positions(b"", 7, lo=0, hi=0) == b""


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory) -> tuple[bytes, object]:
    path = tmp_path_factory.mktemp("legacy-write") / "ds"
    ds = factory.write(factory.mixed_table(0, 30, "legacy"), path, "legacy", mode="create", max_rows_per_group=7)
    (frag,) = ds.get_fragments()
    data = (path / "data" / frag.metadata.files[0].path).read_bytes()
    return data, parse_file(data)


def test_rebuilt_tail_parses_back(legacy_file) -> None:
    """Rebuild a pylance file's tail from its own parsed metadata: same pages, offsets and schema, no statistics."""
    data, meta = legacy_file
    emb = table_pb2.Manifest.FromString(meta.embedded_manifest)
    tail = build_legacy_tail(
        data_end=meta.data_end,
        min_field_id=meta.min_field_id,
        max_field_id=meta.max_field_id,
        pages=meta.pages,
        batch_offsets=meta.batch_offsets,
        fields=list(emb.fields),
        schema_metadata=meta.schema_metadata,
        embedded_manifest=meta.embedded_manifest,
    )
    rebuilt = data[: meta.data_end] + tail
    again = parse_file(rebuilt)
    assert again.statistics is None
    assert again.pages == meta.pages
    assert again.batch_offsets == meta.batch_offsets
    assert again.fields == meta.fields
    assert again.embedded_manifest == meta.embedded_manifest  # same message, unknown tags included
    assert again.version == (0, 2)
    # region order and prefixes as pylance writes them: page table right after the data,
    # u32-prefixed Manifest, u32-prefixed Metadata, 16-byte footer
    assert again.page_table_position == meta.data_end
    assert again.manifest_position == again.page_table_end
    assert rebuilt[-4:] == b"LANC" and struct.unpack_from("<qHH", rebuilt, len(rebuilt) - 16) == (again.metadata_position, 0, 2)
    md = file_pb2.Metadata.FromString(rebuilt[again.metadata_position + 4 : len(rebuilt) - 16])
    assert not md.HasField("statistics") and md.manifest_position == again.manifest_position
    # the pylance file has the same shape, plus statistics between page table and manifest
    assert meta.page_table_position == meta.data_end and meta.statistics is not None
    assert {lay.field_id: lay.encoding for lay in field_layouts(again)} == {
        lay.field_id: lay.encoding for lay in field_layouts(meta)
    }


def test_default_embedded_manifest_mirrors_pylance(legacy_file) -> None:
    data, meta = legacy_file
    emb = table_pb2.Manifest.FromString(meta.embedded_manifest)
    tail = build_legacy_tail(
        data_end=meta.data_end, min_field_id=meta.min_field_id, max_field_id=meta.max_field_id,
        pages=meta.pages, batch_offsets=meta.batch_offsets, fields=list(emb.fields),
    )  # fmt: skip
    ours = table_pb2.Manifest.FromString(parse_file(data[: meta.data_end] + tail).embedded_manifest)
    assert (
        (ours.version, ours.data_format.file_format, ours.data_format.version)
        == (emb.version, "lance", "0.1")
        == (1, "lance", "0.1")
    )
    assert list(ours.fields) == list(emb.fields)


def test_build_legacy_tail_refuses_bad_input(legacy_file) -> None:
    _data, meta = legacy_file
    emb = table_pb2.Manifest.FromString(meta.embedded_manifest)
    base = dict(
        data_end=meta.data_end, min_field_id=meta.min_field_id, max_field_id=meta.max_field_id,
        pages=meta.pages, batch_offsets=meta.batch_offsets, fields=list(emb.fields),
    )  # fmt: skip
    bad = [
        {"batch_offsets": (1, 5)},
        {"batch_offsets": (0, 5, 5)},
        {"batch_offsets": (0, MAX_ROWS + 1), "pages": meta.pages[: len(meta.pages) // meta.num_batches]},
        {"pages": meta.pages[:-1]},
        {"pages": (LegacyPage(meta.data_end + 1, 1), *tuple(meta.pages[1:]))},
        {"max_field_id": meta.max_field_id + 1},
        {"fields": [*list(emb.fields), emb.fields[0]]},
    ]
    for change in bad:
        with pytest.raises(ValueError):
            build_legacy_tail(**{**base, **change})


def test_var_binary_positions_are_absolute(legacy_file) -> None:
    """The fact shift_positions relies on: a VAR_BINARY page entry points at n + 1 absolute offsets."""
    data, meta = legacy_file
    s = next(lay for lay in field_layouts(meta) if lay.encoding is LegacyEncoding.VAR_BINARY)
    for batch in range(meta.num_batches):
        page = meta.page(s.field_id, batch)
        pos = struct.unpack_from(f"<{page.length + 1}q", data, page.position)
        assert pos[-1] == page.position and 0 <= pos[0] <= pos[-1]


def test_shift_positions_refuses_overflow() -> None:
    with pytest.raises(ValueError):
        shift_positions(_pack([5, 2**62]), 2**62, lo=5, hi=2**62)
