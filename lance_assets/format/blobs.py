"""Blob columns: the descriptor pages whose positions and sidecar ids a copy must rewrite.

A blob column keeps its values out of line. Each of its pages holds one small *descriptor* per
row saying where the value's bytes are: at an absolute position in the same data file (inline
bytes, written into the data region but referenced by no page buffer), in a sidecar file
``data/<stem>/<name>.blob`` beside the data file ``data/<stem>.lance`` (blob v2: packed and
dedicated blobs), or behind a URI (blob v2 external blobs). Copying a page byte for byte would
keep positions into the *old* file and ids of the *old* file's sidecars, so the merged file
must carry rewritten descriptors (docs/format.md, "Blob columns").

Every field we rewrite -- a position, a blob id -- has a fixed width, so a rewritten page keeps
its size, its page encoding and (2.2+) its repetition index byte for byte: only those fields
change. This module recognises the descriptor layouts pylance 14 writes and nothing else
(``descriptor_layout`` names why it refuses any other), reads one page's descriptors, and
rewrites them. Pure functions over bytes: the caller does the I/O.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from google.protobuf import any_pb2

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2
from lance_assets.errors import CompactionRefusedError, CorruptFileError
from lance_assets.format.protobuf import has_unknown_fields, wire_fields
from lance_assets.format.v2file import ARRAY_ENCODING_URL, FileVersion

_URL_COLUMN = "/lance.encodings.ColumnEncoding"
_URL_LAYOUT_21 = "/lance.encodings21.PageLayout"
_URL_PLANAR_23 = "/lance.encodings23.PlanarLayout"

#: Sidecar files of a data file live in the folder named after its stem, one per blob id.
SIDECAR_SUFFIX = ".blob"


def sidecar_name(blob_id: int) -> str:
    """The file name of blob id ``blob_id``'s sidecar: the id's 32 bits in reverse order, as
    binary digits (so sequential ids spread over object-store key prefixes)."""
    if not 0 <= blob_id < 1 << 32:
        raise ValueError(f"blob id {blob_id} does not fit 32 bits")
    return f"{blob_id:032b}"[::-1] + SIDECAR_SUFFIX


def sidecar_dir(data_file: str) -> str:
    """The sidecar folder of a data file (``data/<stem>.lance`` -> ``data/<stem>``)."""
    if not data_file.endswith(".lance"):
        raise ValueError(f"not a data file name: {data_file!r}")
    return data_file[: -len(".lance")]


class BlobKind(IntEnum):
    """Where a blob v2 descriptor's bytes live (its ``kind`` field). Blob v1 values are all inline."""

    INLINE = 0  # in the data file's data region, at an absolute position
    PACKED = 1  # a slice (position, size) of the sidecar named by the blob id
    DEDICATED = 2  # the whole sidecar named by the blob id
    EXTERNAL = 3  # an object named by the descriptor's URI: outside the dataset, never moved


class Flavor(StrEnum):
    """The descriptor page layouts pylance 14 writes."""

    V1_FLAT = "v1 (2.0): packed (position, size) pairs"
    V1_MINIBLOCK = "v1 (2.1): blob layout over mini-blocks of (position, size) pairs"
    V2_ZIPPED = "v2: zipped rows of (kind, position, size, blob id, uri)"
    ALL_NULL = "all-null page (no descriptors)"


@dataclass(frozen=True)
class DescriptorLayout:
    """How one page stores its descriptors.

    ``buffer`` is the page buffer holding them (-1: none). For ``V2_ZIPPED`` rows,
    ``control_bytes`` is the width of the per-row validity word (0 when no row is null),
    ``length_bytes`` the width of each row's length prefix and ``uri_length_bytes`` that of the
    URI's length prefix inside the row.
    """

    flavor: Flavor
    buffer: int = -1
    control_bytes: int = 0
    length_bytes: int = 0
    uri_length_bytes: int = 0


@dataclass(frozen=True, slots=True)
class BlobRef:
    """One non-null descriptor: what it says and where its rewritable fields sit in the buffer.

    ``at`` is the offset of the 8-byte position, ``id_at`` that of the 4-byte blob id (-1 in v1,
    which has none). Blob v1 has no kind: its values are inline.
    """

    kind: BlobKind
    position: int
    size: int
    blob_id: int
    at: int
    id_at: int = -1


# --- which layouts we can rewrite ---------------------------------------------------------------
def column_refusals(column: file2_pb2.ColumnMetadata, version: FileVersion) -> tuple[str, ...]:
    """Why a blob column's descriptors cannot be rewritten exactly; empty when every page can.

    Judges encodings only (no page bytes): what the planner can know from file metadata.
    """
    reasons: dict[str, None] = {}
    if column.buffer_offsets or column.buffer_sizes:
        reasons["column-level buffers"] = None
    encoding = column.encoding
    if encoding.WhichOneof("location") != "direct":
        reasons["the column encoding is not stored inline"] = None
    else:
        problem = _column_encoding_problem(encoding.direct.encoding, version)
        if problem:
            reasons[problem] = None
    for page in column.pages:
        found = page_layout(page, version)
        if isinstance(found, str):
            reasons[found] = None
    return tuple(reasons)


def page_layout(page: file2_pb2.ColumnMetadata.Page, version: FileVersion) -> DescriptorLayout | str:
    """The descriptor layout of one blob column page, or why it is not one we can rewrite."""
    if page.encoding.WhichOneof("location") != "direct":
        return "blob page with a deferred or missing encoding"
    layout = descriptor_layout(page.encoding.direct.encoding, version)
    if isinstance(layout, str):
        return layout
    if layout.flavor is Flavor.ALL_NULL:
        return layout if not page.buffer_offsets else "all-null blob page with buffers"
    expected = 1 if layout.flavor is Flavor.V1_FLAT else 2  # (v2: the rows and their repetition index)
    if len(page.buffer_offsets) != expected:
        return f"{layout.flavor} page with {len(page.buffer_offsets)} buffers (expected {expected})"
    return layout


@functools.lru_cache(maxsize=1024)
def descriptor_layout(encoding: bytes, version: FileVersion) -> DescriptorLayout | str:
    """Recognise a blob page encoding (a serialized ``Any``); a string says why it is refused.

    Only the exact shapes pylance 14 writes are accepted: anything compressed, nested,
    repeated, carrying unknown fields or simply different could place the fields we rewrite
    elsewhere, so it is refused rather than guessed at.
    """
    wrapped = any_pb2.Any()
    try:
        wrapped.ParseFromString(encoding)
    except Exception:
        return "blob page encoding does not parse"
    if version is FileVersion.V2_0:
        if wrapped.type_url != ARRAY_ENCODING_URL:
            return f"unexpected blob page encoding {wrapped.type_url!r} in a 2.0 file"
        return _layout_20(wrapped.value)
    if version in (FileVersion.V2_1, FileVersion.V2_2):
        if wrapped.type_url != _URL_LAYOUT_21:
            return f"unexpected blob page encoding {wrapped.type_url!r} in a {version} file"
        return _layout_21(wrapped.value, version)
    if wrapped.type_url != _URL_PLANAR_23:
        return f"unexpected blob page encoding {wrapped.type_url!r} in a 2.3 file"
    return _layout_23(wrapped.value)


def _column_encoding_problem(encoding: bytes, version: FileVersion) -> str | None:
    wrapped = any_pb2.Any()
    column = enc20.ColumnEncoding()
    try:
        wrapped.ParseFromString(encoding)
        column.ParseFromString(wrapped.value)
    except Exception:
        return "blob column encoding does not parse"
    if wrapped.type_url != _URL_COLUMN or has_unknown_fields(column):
        return f"unknown blob column encoding {wrapped.type_url!r}"
    # 2.0 marks blob columns in the column encoding (around plain values); 2.1+ in the page layout.
    wanted = "blob" if version is FileVersion.V2_0 else "values"
    kind = column.WhichOneof("column_encoding")
    if kind != wanted or (kind == "blob" and column.blob.inner.WhichOneof("column_encoding") != "values"):
        return f"blob column with a {kind or 'unknown'} column encoding (expected {wanted}) in a {version} file"
    return None


def _flat_u64_20() -> enc20.ArrayEncoding:
    flat = enc20.ArrayEncoding(flat=enc20.Flat(bits_per_value=64, buffer=enc20.Buffer()))
    return enc20.ArrayEncoding(nullable=enc20.Nullable(no_nulls=enc20.Nullable.NoNull(values=flat)))


#: 2.0 blob pages: a packed struct of two non-null u64 children in page buffer 0.
_V1_FLAT_20 = enc20.ArrayEncoding(
    packed_struct=enc20.PackedStruct(inner=[_flat_u64_20(), _flat_u64_20()], buffer=enc20.Buffer())
).SerializeToString(deterministic=True)


def _layout_20(value: bytes) -> DescriptorLayout | str:
    array = enc20.ArrayEncoding()
    try:
        array.ParseFromString(value)
    except Exception:
        return "2.0 blob page encoding does not parse"
    if array.SerializeToString(deterministic=True) != _V1_FLAT_20 or has_unknown_fields(array):
        return f"2.0 blob page layout {array.WhichOneof('array_encoding')!r} is not the packed (position, size) layout"
    return DescriptorLayout(Flavor.V1_FLAT, buffer=0)


def _flat(bits: int) -> enc21.CompressiveEncoding:
    return enc21.CompressiveEncoding(flat=enc21.Flat(bits_per_value=bits))


#: The inner mini-block value compression of 2.1 blob pages: (u64, u64) rows as flat 128-bit values.
_V1_MINIBLOCK_VALUES = enc21.CompressiveEncoding(
    packed_struct=enc21.PackedStruct(bits_per_value=[64, 64], values=_flat(128))
).SerializeToString(deterministic=True)

#: Field widths of a blob v2 descriptor row: kind u8, position u64, size u64, blob id u32, then the URI.
_V2_FIXED = struct.Struct("<BQQI")
_V2_FIELD_BITS = (8, 64, 64, 32)
_FLATS = tuple(_flat(bits).SerializeToString(deterministic=True) for bits in _V2_FIELD_BITS)


def _layout_21(value: bytes, version: FileVersion) -> DescriptorLayout | str:
    layout = enc21.PageLayout()
    try:
        layout.ParseFromString(value)
    except Exception:
        return "blob page layout does not parse"
    kind = layout.WhichOneof("layout")
    if kind == "all_null_layout":
        return DescriptorLayout(Flavor.ALL_NULL)
    if kind == "blob_layout" and version is FileVersion.V2_1:
        return _layout_blob_21(layout.blob_layout)
    if kind == "full_zip_layout" and version is FileVersion.V2_2:
        zipped = layout.full_zip_layout
        if has_unknown_fields(zipped):
            return "blob v2 full-zip layout with fields we do not know"
        if zipped.WhichOneof("details") != "bits_per_offset":
            return "blob v2 full-zip layout without row lengths"
        return _zipped(
            bits_rep=zipped.bits_rep,
            bits_def=zipped.bits_def,
            bits_per_offset=zipped.bits_per_offset,
            layers=tuple(zipped.layers),
            values=zipped.value_compression,
            items=(zipped.num_items, zipped.num_visible_items),
        )
    return f"{kind or 'unknown'} blob page layout in a {version} file"


def _layout_blob_21(blob: enc21.BlobLayout) -> DescriptorLayout | str:
    if has_unknown_fields(blob) or tuple(blob.layers) not in _TOP_LEVEL_LAYERS:
        return "2.1 blob layout that is not a top-level item (nested or unknown layers)"
    inner = blob.inner_layout
    if inner.WhichOneof("layout") != "mini_block_layout":
        return f"2.1 blob layout over a {inner.WhichOneof('layout') or 'unknown'} page"
    mini = inner.mini_block_layout
    plain = (
        not mini.HasField("rep_compression")
        and not mini.HasField("def_compression")
        and not mini.HasField("dictionary")
        and mini.num_dictionary_items == 0
        and mini.repetition_index_depth == 0
        and mini.num_buffers == 1
        and tuple(mini.layers) == (enc21.REPDEF_ALL_VALID_ITEM,)
    )
    if not plain or mini.value_compression.SerializeToString(deterministic=True) != _V1_MINIBLOCK_VALUES:
        return "2.1 blob mini-blocks that are not plain (position, size) pairs"
    return DescriptorLayout(Flavor.V1_MINIBLOCK, buffer=1)


#: Layers of a top-level blob column: one item layer, all valid or nullable.
_TOP_LEVEL_LAYERS = ((enc21.REPDEF_ALL_VALID_ITEM,), (enc21.REPDEF_NULLABLE_ITEM,))


def _zipped(
    *,
    bits_rep: int,
    bits_def: int,
    bits_per_offset: int,
    layers: tuple[int, ...],
    values: enc21.CompressiveEncoding,
    items: tuple[int, int],
) -> DescriptorLayout | str:
    """The zipped-row layout of blob v2 descriptors (2.2 full-zip, 2.3 zipped plane)."""
    if layers not in _TOP_LEVEL_LAYERS or bits_rep:
        return "blob v2 descriptors that are not a top-level item (nested or unknown layers)"
    nullable = layers == (enc21.REPDEF_NULLABLE_ITEM,)
    if bits_def != (1 if nullable else 0):
        return f"blob v2 descriptors with {bits_def} definition bits for layers {list(layers)}"
    if bits_per_offset not in (8, 16, 32, 64):
        return f"blob v2 descriptors with {bits_per_offset}-bit row lengths"
    if items[0] != items[1]:
        return "blob v2 descriptors with invisible items"
    if values.WhichOneof("compression") != "variable_packed_struct":
        return f"blob v2 descriptors compressed as {values.WhichOneof('compression') or 'unknown'}"
    fields = values.variable_packed_struct.fields
    if len(fields) != 5:
        return f"blob v2 descriptors with {len(fields)} fields (expected kind, position, size, blob id, uri)"
    for field, bits, flat in zip(fields[:4], _V2_FIELD_BITS, _FLATS, strict=True):
        fixed = field.WhichOneof("layout") == "bits_per_value" and field.bits_per_value == bits
        if not fixed or field.value.SerializeToString(deterministic=True) != flat or has_unknown_fields(field):
            return "blob v2 descriptor fields that are not plain fixed-width values"
    uri = fields[4]
    # The URI is never rewritten, only skipped: any per-value compression of it is fine, as long
    # as each row stores it behind a length prefix.
    if uri.WhichOneof("layout") != "bits_per_length" or uri.bits_per_length not in (32, 64):
        return "blob v2 descriptor URI without a 32- or 64-bit length prefix"
    return DescriptorLayout(
        Flavor.V2_ZIPPED,
        buffer=0,
        control_bytes=1 if nullable else 0,
        length_bytes=bits_per_offset // 8,
        uri_length_bytes=uri.bits_per_length // 8,
    )


def _layout_23(value: bytes) -> DescriptorLayout | str:
    """A 2.3 ``PlanarLayout`` (no published proto; fields as described in docs/format.md)."""
    top = _messages(value)
    if top is None or sorted(top) != [1, 2]:
        return "unknown 2.3 blob page shape"
    kinds = _messages(top[2])
    if kinds is None or len(kinds) != 1:
        return "unknown 2.3 blob value plane"
    ((number, body),) = kinds.items()
    if number == 4:
        return DescriptorLayout(Flavor.ALL_NULL)
    if number != 2:
        return f"2.3 blob value plane of kind {number} (expected zipped rows)"
    layers = _compact_layers(top[1])
    if layers is None:
        return "2.3 blob page structure that is not one compact item layer"
    zipped = wire_fields(body)
    if zipped is None:
        return "malformed 2.3 zipped plane"
    found: dict[int, bytes | int] = {}
    for n, wire, v in zipped:
        if n in found or (n, wire) not in _ZIPPED_23_FIELDS:
            return f"2.3 zipped plane with an unexpected field {n}"
        found[n] = v
    values_bytes, control_bytes = found.get(1), found.get(2, b"")
    row_bits = found.get(4)
    if not isinstance(values_bytes, bytes) or not isinstance(control_bytes, bytes) or not isinstance(row_bits, int):
        return "2.3 zipped plane without values or row lengths"
    control = wire_fields(control_bytes)
    if control is None or any(n != 2 or w != 0 for n, w, _ in control):
        return "2.3 zipped plane with repetition levels or unknown control fields"
    values = enc21.CompressiveEncoding()
    try:
        values.ParseFromString(values_bytes)
    except Exception:
        return "2.3 zipped plane values do not parse"
    bits_def = next((v for _, _, v in control if isinstance(v, int)), 0)
    items = found.get(5, 0), found.get(6, 0)
    return _zipped(
        bits_rep=0,
        bits_def=bits_def,
        bits_per_offset=row_bits,
        layers=layers,
        values=values,
        items=(items[0] if isinstance(items[0], int) else -1, items[1] if isinstance(items[1], int) else -2),
    )


def _messages(data: bytes) -> dict[int, bytes] | None:
    """A message's fields when each is a distinct length-delimited field, else None."""
    fields = wire_fields(data)
    if fields is None:
        return None
    out = {n: v for n, w, v in fields if w == 2 and isinstance(v, bytes)}
    return out if len(out) == len(fields) else None


#: Fields of a 2.3 zipped plane (number, wire type): 1 value compression, 2 control word
#: (its field 2: definition bits), 4 bits per row length, 5 items, 6 visible items.
_ZIPPED_23_FIELDS = {(1, 2), (2, 2), (4, 0), (5, 0), (6, 0)}


def _compact_layers(structure: bytes) -> tuple[int, ...] | None:
    """The layer kinds of a 2.3 structure in the compact form (one byte per layer), else None."""
    outer = _messages(structure)
    inner = _messages(outer[1]) if outer is not None and list(outer) == [1] else None
    return tuple(inner[1]) if inner is not None and list(inner) == [1] else None


# --- reading and rewriting descriptors ----------------------------------------------------------
_PAIR = struct.Struct("<QQ")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
#: Mini-block chunks start, and their buffers are padded to, 8-byte boundaries.
_MINIBLOCK_ALIGN = 8


def read_refs(layout: DescriptorLayout, buffers: Sequence[bytes], rows: int, *, path: str | None = None) -> list[BlobRef]:
    """The non-null descriptors of a page of ``rows`` rows whose buffers are ``buffers``.

    Blob v1 descriptors of empty values (size 0) are left out: they point nowhere. Framing that
    does not add up raises CorruptFileError; a v2 kind we do not know, CompactionRefusedError.
    """
    if layout.flavor is Flavor.ALL_NULL:
        return []
    if layout.flavor is Flavor.V1_FLAT:
        return _pairs(buffers[0], 0, rows, path)
    if layout.flavor is Flavor.V1_MINIBLOCK:
        return _miniblock_refs(buffers[0], buffers[1], rows, path)
    return _zipped_refs(layout, buffers[0], rows, path)


def _pairs(buf: bytes, start: int, count: int, path: str | None) -> list[BlobRef]:
    if start + count * _PAIR.size > len(buf):
        raise CorruptFileError(f"blob descriptor buffer of {len(buf)} bytes is too short for {count} values", path=path)
    out = []
    for i, (position, size) in enumerate(_PAIR.iter_unpack(buf[start : start + count * _PAIR.size])):
        if size:  # null and empty values have size 0 (their position is a marker, not a place)
            out.append(BlobRef(BlobKind.INLINE, position, size, 0, start + i * _PAIR.size))
    return out


def _miniblock_refs(meta: bytes, data: bytes, rows: int, path: str | None) -> list[BlobRef]:
    """2.1 mini-blocks: a u16 word per chunk (low 4 bits: log2 of its values, all but the last
    chunk; high 12: its size in 8-byte units minus one); each chunk a u16 level count (0: no
    levels), a u16 buffer size, padding to 8, then the (position, size) pairs."""
    if len(meta) % 2:
        raise CorruptFileError("blob mini-block metadata has an odd length", path=path)
    words = [w for (w,) in _U16.iter_unpack(meta)]
    out: list[BlobRef] = []
    offset = seen = 0
    for k, word in enumerate(words):
        size = ((word >> 4) + 1) * _MINIBLOCK_ALIGN
        count = rows - seen if k == len(words) - 1 else 1 << (word & 0x0F)
        if count < 0 or offset + size > len(data):
            raise CorruptFileError("blob mini-block chunks do not fit the page", path=path)
        levels, nbytes = struct.unpack_from("<HH", data, offset)
        if levels or nbytes != count * _PAIR.size or size != _MINIBLOCK_ALIGN + nbytes:
            raise CorruptFileError(f"blob mini-block chunk {k} does not hold {count} (position, size) pairs", path=path)
        out += _pairs(data, offset + _MINIBLOCK_ALIGN, count, path)
        offset += size
        seen += count
    if seen != rows or offset != len(data):
        raise CorruptFileError(
            f"blob mini-blocks hold {seen} values in {offset} bytes, expected {rows} in {len(data)}", path=path
        )
    return out


def _zipped_refs(layout: DescriptorLayout, buf: bytes, rows: int, path: str | None) -> list[BlobRef]:
    """Rows of [validity word][row length][kind u8, position u64, size u64, blob id u32,
    uri length, uri]; a null row is its validity word alone."""
    control, length_bytes, uri_bytes = layout.control_bytes, layout.length_bytes, layout.uri_length_bytes
    fixed = _V2_FIXED.size
    out: list[BlobRef] = []
    i, end = 0, len(buf)

    def short() -> CorruptFileError:
        return CorruptFileError(f"blob descriptors do not fill their buffer of {end} bytes with {rows} rows", path=path)

    for _ in range(rows):
        if control:
            if i + control > end:
                raise short()
            word = int.from_bytes(buf[i : i + control], "little")
            i += control
            if word == 1:
                continue  # a null row
            if word:
                raise CorruptFileError(f"blob descriptor validity word {word} (expected 0 or 1)", path=path)
        if i + length_bytes > end:
            raise short()
        length = int.from_bytes(buf[i : i + length_bytes], "little")
        start = i + length_bytes
        i = start + length
        if i > end or length < fixed + uri_bytes:
            raise CorruptFileError(f"blob descriptor row of {length} bytes at {start} does not fit", path=path)
        kind, position, size, blob_id = _V2_FIXED.unpack_from(buf, start)
        uri_length = int.from_bytes(buf[start + fixed : start + fixed + uri_bytes], "little")
        if fixed + uri_bytes + uri_length != length:
            raise CorruptFileError(f"blob descriptor row at {start}: URI of {uri_length} bytes in a {length}-byte row", path=path)
        if kind not in _KINDS:
            raise CompactionRefusedError(f"blob descriptor of unknown kind {kind} (a newer Lance?)", path=path)
        out.append(BlobRef(_KINDS[kind], position, size, blob_id, start + 1, start + 17))
    if i != end:
        raise short()
    return out


_KINDS = {k.value: k for k in BlobKind}


def rewrite(buf: bytes, refs: Iterable[BlobRef], shift: int, new_ids: Mapping[int, int]) -> bytes:
    """``buf`` with every inline position moved by ``shift`` and every sidecar id mapped by
    ``new_ids`` (packed and dedicated blobs); everything else byte for byte."""
    out = bytearray(buf)
    for ref in refs:
        if ref.kind is BlobKind.INLINE:
            _U64.pack_into(out, ref.at, ref.position + shift)
        elif ref.kind is BlobKind.PACKED or ref.kind is BlobKind.DEDICATED:
            _U32.pack_into(out, ref.id_at, new_ids[ref.blob_id])
    return bytes(out)


def sidecar_ids(refs: Iterable[BlobRef]) -> list[int]:
    """The sidecar ids the descriptors use, ascending."""
    return sorted({r.blob_id for r in refs if r.kind is BlobKind.PACKED or r.kind is BlobKind.DEDICATED})
