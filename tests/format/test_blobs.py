"""Blob descriptor pages (format.blobs) on files pylance 14 wrote: which layouts are recognised,
what their descriptors say, and that a rewrite changes exactly the positions and sidecar ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lance
import pytest
from google.protobuf import any_pb2

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets.errors import CompactionRefusedError, CorruptFileError
from lance_assets.format import blobs, v2file
from lance_assets.format.v2safety import copy_refusals, inspect_copy_safety
from tests.support import blobs as blob_data


def _blob_pages(path: Path) -> list[tuple[v2file.V2FileMetadata, bytes]]:
    """(metadata, bytes) of every data file of a dataset whose last column is the blob column."""
    out = []
    for frag in lance.dataset(str(path)).get_fragments():
        raw = (path / "data" / frag.metadata.files[0].path).read_bytes()
        meta = v2file.parse_tail(raw, 0, len(raw))
        assert isinstance(meta, v2file.V2FileMetadata)
        out.append((meta, raw))
    return out


def _buffers(page: v2file.Page, raw: bytes) -> list[bytes]:
    return [raw[o : o + s] for o, s in zip(page.buffer_offsets, page.buffer_sizes, strict=True)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("blob-format")
    made: dict[str, Path] = {}

    def make(version: str) -> Path:
        if version not in made:
            path = root / f"{version}.lance"
            if version in ("2.2", "2.3"):
                blob_data.v2_appends(path, version, [9, 20])
            else:
                blob_data.v1_appends(path, version, [9, 20])
            made[version] = path
        return made[version]

    return make


def test_sidecar_names() -> None:
    """Reverse-binary names, as pylance 14 writes them (ids 1, 2, 3 under data/<stem>/)."""
    assert blobs.sidecar_name(1) == "1" + "0" * 31 + ".blob"
    assert blobs.sidecar_name(2) == "01" + "0" * 30 + ".blob"
    assert blobs.sidecar_name(3) == "11" + "0" * 30 + ".blob"
    assert blobs.sidecar_name(2**32 - 1) == "1" * 32 + ".blob"
    with pytest.raises(ValueError):
        blobs.sidecar_name(2**32)
    assert blobs.sidecar_dir("data/abc.lance") == "data/abc"


def test_names_match_pylances_sidecars(written: Callable[[str], Path]) -> None:
    path = written("2.2")
    for meta, raw in _blob_pages(path):
        (page,) = meta.columns[-1].pages
        layout = blobs.page_layout(page, meta.version)
        assert isinstance(layout, blobs.DescriptorLayout)
        refs = blobs.read_refs(layout, _buffers(page, raw), page.length)
        stems = [f.metadata.files[0].path for f in lance.dataset(str(path)).get_fragments()]
        present = {p.name for stem in stems for p in (path / "data" / blobs.sidecar_dir(stem)).iterdir()}
        assert {blobs.sidecar_name(i) for i in blobs.sidecar_ids(refs)} <= present


@pytest.mark.parametrize(
    "version,flavor",
    [
        ("2.0", blobs.Flavor.V1_FLAT),
        ("2.1", blobs.Flavor.V1_MINIBLOCK),
        ("2.2", blobs.Flavor.V2_ZIPPED),
        ("2.3", blobs.Flavor.V2_ZIPPED),
    ],
)
def test_descriptors_and_rewrite(written: Callable[[str], Path], version: str, flavor: blobs.Flavor) -> None:
    """Every layout pylance writes is recognised; a rewrite moves inline positions by the shift,
    maps sidecar ids and leaves every other byte of the page as it was."""
    for meta, raw in _blob_pages(written(version)):
        column = meta.columns[-1]
        assert blobs.column_refusals(column, meta.version) == ()
        for page in column.pages:
            layout = blobs.page_layout(page, meta.version)
            assert isinstance(layout, blobs.DescriptorLayout) and layout.flavor is flavor
            buffers = _buffers(page, raw)
            refs = blobs.read_refs(layout, buffers, page.length)
            assert refs and all(r.position + r.size <= meta.data_end for r in refs if r.kind is blobs.BlobKind.INLINE)
            ids = blobs.sidecar_ids(refs)
            mapping = {old: 1000 + old for old in ids}
            new = blobs.rewrite(buffers[layout.buffer], refs, 4096, mapping)
            assert len(new) == len(buffers[layout.buffer])
            moved = buffers[:]
            moved[layout.buffer] = new
            again = blobs.read_refs(layout, moved, page.length)
            assert len(again) == len(refs)
            touched = set()
            for old, ref in zip(refs, again, strict=True):
                assert (ref.kind, ref.size, ref.at, ref.id_at) == (old.kind, old.size, old.at, old.id_at)
                if old.kind is blobs.BlobKind.INLINE:
                    assert ref.position == old.position + 4096
                    touched.update(range(old.at, old.at + 8))
                else:
                    assert ref.position == old.position
                if old.kind in (blobs.BlobKind.PACKED, blobs.BlobKind.DEDICATED):
                    assert ref.blob_id == mapping[old.blob_id]
                    touched.update(range(old.id_at, old.id_at + 4))
                else:
                    assert ref.blob_id == old.blob_id
            original = buffers[layout.buffer]
            assert all(new[i] == original[i] for i in range(len(new)) if i not in touched)
        last = meta.num_columns - 1
        assert copy_refusals(meta, list(range(meta.num_columns)), [last]) == ()
        # without knowing the blob column, the file is refused (its pages hold positions)
        assert not inspect_copy_safety(meta).copyable


def _with_layout(meta: v2file.V2FileMetadata, change: Callable[[enc21.PageLayout], None]) -> bytes:
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(meta.columns[-1].pages[0].encoding.direct.encoding)
    layout = enc21.PageLayout()
    layout.ParseFromString(wrapped.value)
    change(layout)
    wrapped.value = layout.SerializeToString()
    return wrapped.SerializeToString()


def _uri_field(layout: enc21.PageLayout) -> enc21.VariablePackedStruct.FieldEncoding:
    return layout.full_zip_layout.value_compression.variable_packed_struct.fields[4]


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda lay: setattr(lay.full_zip_layout, "bits_rep", 1), "top-level"),
        (lambda lay: lay.full_zip_layout.layers.append(enc21.REPDEF_NULLABLE_ITEM), "top-level"),
        (lambda lay: setattr(lay.full_zip_layout, "bits_def", 2), "definition bits"),
        (lambda lay: setattr(lay.full_zip_layout, "bits_per_value", 64), "row lengths"),
        (lambda lay: setattr(lay.full_zip_layout, "num_visible_items", 1), "invisible"),
        (lambda lay: lay.full_zip_layout.value_compression.variable_packed_struct.fields.pop(), "4 fields"),
        (
            lambda lay: setattr(lay.full_zip_layout.value_compression.variable_packed_struct.fields[1], "bits_per_value", 32),
            "fixed-width",
        ),
        (
            lambda lay: lay.full_zip_layout.value_compression.variable_packed_struct.fields[1].value.flat.data.SetInParent(),
            "fixed-width",
        ),
        (lambda lay: setattr(_uri_field(lay), "bits_per_length", 16), "length prefix"),
        (lambda lay: lay.full_zip_layout.value_compression.general.SetInParent(), "compressed as general"),
        (lambda lay: lay.mini_block_layout.SetInParent(), "mini_block_layout"),
    ],
)
def test_other_layouts_are_refused(
    written: Callable[[str], Path], change: Callable[[enc21.PageLayout], None], reason: str
) -> None:
    meta, _ = _blob_pages(written("2.2"))[0]
    found = blobs.descriptor_layout(_with_layout(meta, change), meta.version)
    assert isinstance(found, str) and reason in found


def test_version_specific_layouts(written: Callable[[str], Path]) -> None:
    """A 2.1 blob layout is refused in a 2.2 file, a 2.2 layout in a 2.1 file; a 2.0 packed
    struct of other children, and a 2.1 blob layout whose mini-blocks carry levels."""
    v21, _ = _blob_pages(written("2.1"))[0]
    v22, _ = _blob_pages(written("2.2"))[0]
    blob_21 = v21.columns[-1].pages[0].encoding.direct.encoding
    zip_22 = v22.columns[-1].pages[0].encoding.direct.encoding
    assert "blob_layout" in str(blobs.descriptor_layout(blob_21, v2file.FileVersion.V2_2))
    assert "full_zip_layout" in str(blobs.descriptor_layout(zip_22, v2file.FileVersion.V2_1))

    levels = _with_layout(v21, lambda lay: lay.blob_layout.inner_layout.mini_block_layout.def_compression.flat.SetInParent())
    assert "not plain" in str(blobs.descriptor_layout(levels, v2file.FileVersion.V2_1))

    v20, _ = _blob_pages(written("2.0"))[0]
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(v20.columns[-1].pages[0].encoding.direct.encoding)
    array = enc20.ArrayEncoding()
    array.ParseFromString(wrapped.value)
    array.packed_struct.inner.append(array.packed_struct.inner[0])
    wrapped.value = array.SerializeToString()
    assert "packed (position, size)" in str(blobs.descriptor_layout(wrapped.SerializeToString(), v2file.FileVersion.V2_0))
    # a 2.0 blob column must say so in its column encoding
    plain = any_pb2.Any(type_url="/lance.encodings.ColumnEncoding", value=b"\n\x00").SerializeToString()
    column = type(v20.columns[-1])()
    column.CopyFrom(v20.columns[-1])
    column.encoding.direct.encoding = plain
    assert any("column encoding" in r for r in blobs.column_refusals(column, v2file.FileVersion.V2_0))


def test_damaged_descriptors(written: Callable[[str], Path]) -> None:
    meta, raw = _blob_pages(written("2.2"))[0]
    page = meta.columns[-1].pages[0]
    layout = blobs.page_layout(page, meta.version)
    assert isinstance(layout, blobs.DescriptorLayout)
    buffers = _buffers(page, raw)
    with pytest.raises(CorruptFileError):
        blobs.read_refs(layout, [buffers[0][:-1], buffers[1]], page.length)
    with pytest.raises(CorruptFileError):
        blobs.read_refs(layout, [buffers[0] + b"\x00", buffers[1]], page.length)
    with pytest.raises(CorruptFileError):
        blobs.read_refs(layout, buffers, page.length + 1)
    refs = blobs.read_refs(layout, buffers, page.length)
    unknown = bytearray(buffers[0])
    unknown[refs[0].at - 1] = 9  # the kind byte precedes the position
    with pytest.raises(CompactionRefusedError, match="unknown kind 9"):
        blobs.read_refs(layout, [bytes(unknown), buffers[1]], page.length)

    v21, raw21 = _blob_pages(written("2.1"))[0]
    page21 = v21.columns[-1].pages[0]
    layout21 = blobs.page_layout(page21, v21.version)
    assert isinstance(layout21, blobs.DescriptorLayout)
    meta_words, chunks = _buffers(page21, raw21)
    with pytest.raises(CorruptFileError):
        blobs.read_refs(layout21, [meta_words, chunks[:-8]], page21.length)
    with pytest.raises(CorruptFileError):
        blobs.read_refs(layout21, [meta_words, b"\x01\x00" + chunks[2:]], page21.length)
