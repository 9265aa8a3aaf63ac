"""Pages of 2.0 files: decoded into values and validity, re-cut into large pages.

A 2.0 file written by many small appends holds one small page per column and append, like
later versions (``format.pages``). This module coalesces such pages without pylance and without
changing a value, for the page encodings pylance writes for small appends in 2.0 (the layouts
are described in docs/format.md, "2.0 pages"):

* fixed-width values (``Nullable`` over ``Flat``, or over a ``FixedSizeList`` of flat values
  whose items may be null), with no nulls, some (a 1-bit validity bitmap) or only nulls (no
  buffers);
* strings and binaries (``Binary``: u64 end offsets with nulls shifted up by an adjustment, then
  the bytes), and strings as ``Dictionary`` pages (u8 indices into a ``Binary`` of the page's
  distinct values), which are written back as plain ``Binary``;
* a list's offsets column (``List``: u64 end offsets into its items column, nulls shifted).

It implements the protocol ``engine.copying.coalesce.NativeColumn`` drives (as
``format.miniblock`` does for 2.1 and 2.2): ``page_codec``, ``defer_page``, ``combine``,
``materialize``, ``encode_page``. Anything else (compressed or bit-packed values, packed
structs, struct headers, blob descriptions) is not decoded here: the caller copies those pages
as they are or has pylance re-encode them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import file2_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.miniblock import EncodedPage, NotNative, Undecoded
from lance_assets.format.v2file import ARRAY_ENCODING_URL, FileVersion

__all__ = ["EncodedPage", "NotNative", "Shape", "combine", "defer_page", "encode_page", "materialize", "page_codec"]

#: The kinds of page this module decodes.
FIXED = "fixed"  # fixed-width values (bits per row: 1, or a multiple of 8)
BINARY = "binary"  # variable-width values: offsets and bytes
LIST = "list"  # a list's offsets: end positions in the items column

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Shape:
    """What a 2.0 page holds, as far as concatenating pages needs: pages of one shape share a
    page. An all-null fixed-width page (no buffers) says nothing of its width: ``bits`` is 0
    and it shares a page with any fixed-width page."""

    kind: str
    bits: int = 0  # FIXED: bits per item (0 on an all-null page)
    dimension: int = 0  # FIXED: items per row of a fixed-size list (0: flat values)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's values (0 for 1-bit values, which are packed)."""
        return self.bits // 8 * max(1, self.dimension)


def combine(a: Shape, b: Shape) -> Shape | None:
    """The shape a page holding pages of shapes ``a`` and ``b`` takes, or None when they cannot
    share a page (another kind, or fixed-width values of another width)."""
    if a.kind != b.kind:
        return None
    if a.kind == FIXED and a.bits and b.bits and a != b:
        return None
    return a if a.bits or not b.bits else b


@dataclass(frozen=True)
class _Codec:
    """How one page encoding reads: its shape, its buffers and what they mean."""

    shape: Shape
    buffers: int  # page buffers the encoding refers to
    nulls: str = "none"  # FIXED: "none", "some" (a validity bitmap first) or "all" (no buffers)
    item_nulls: bool = False  # FIXED: a fixed-size list's items have a validity bitmap (after the rows')
    null_adjustment: int = 0  # BINARY, LIST: offsets at or above this are nulls, shifted up by it
    items: int = 0  # LIST: items the page's rows hold; dictionary: distinct values
    items_adjustment: int = 0  # dictionary: the values' Binary null adjustment
    dictionary: bool = False


def page_codec(page: file2_pb2.ColumnMetadata.Page, version: FileVersion, logical_type: str = "") -> _Codec | None:
    """How this page decodes when this module decodes it (else None): a 2.0 page of an encoding
    named in the module's docstring, with the buffers that encoding refers to. ``logical_type``
    is the column's (the manifest's name for it): an Arrow dictionary column (``dict:...``) is
    stored with its own keys in pages shaped like pylance's dictionary-encoded strings (whose
    index 0 means null), and must stay a dictionary, so only ``string`` columns' dictionary
    pages are decoded and no page of a dictionary column is."""
    if version is not FileVersion.V2_0 or page.encoding.WhichOneof("location") != "direct":
        return None
    if logical_type.startswith("dict:"):
        return None
    codec = _codec(page.encoding.direct.encoding)
    if codec is None or len(page.buffer_sizes) != codec.buffers:
        return None
    if codec.dictionary and logical_type != "string":
        return None
    return codec


@lru_cache(maxsize=4096)
def _codec(encoding: bytes) -> _Codec | None:
    try:
        wrapper = any_pb2.Any.FromString(encoding)
        if wrapper.type_url != ARRAY_ENCODING_URL:
            return None
        array = enc20.ArrayEncoding.FromString(wrapper.value)
    except DecodeError:
        return None
    kind = array.WhichOneof("array_encoding")
    if kind == "nullable":
        return _nullable_codec(array.nullable)
    if kind == "binary":
        return _binary_codec(array.binary, 0)
    if kind == "dictionary":
        dictionary = array.dictionary
        items = _binary_codec(dictionary.items.binary, 1) if dictionary.items.WhichOneof("array_encoding") == "binary" else None
        if items is None or _flat_bits(dictionary.indices, 0, nullable=True) != 8:
            return None
        return _Codec(
            Shape(BINARY),
            3,
            items=dictionary.num_dictionary_items,
            items_adjustment=items.null_adjustment,
            dictionary=True,
        )
    if kind == "list":
        lst = array.list
        if _flat_bits(lst.offsets, 0, nullable=True) != 64:
            return None
        return _Codec(Shape(LIST), 1, null_adjustment=lst.null_offset_adjustment, items=lst.num_items)
    return None


def _nullable_codec(nullable: enc20.Nullable) -> _Codec | None:
    which = nullable.WhichOneof("nullability")
    if which == "all_nulls":
        return _Codec(Shape(FIXED), 0, nulls="all")
    if which == "no_nulls":
        values, index, nulls = nullable.no_nulls.values, 0, "none"
    elif which == "some_nulls":
        if _flat_bits(nullable.some_nulls.validity, 0) != 1:
            return None
        values, index, nulls = nullable.some_nulls.values, 1, "some"
    else:
        return None
    found = _fixed(values, index)
    if found is None:
        return None
    bits, dimension, item_nulls = found
    return _Codec(Shape(FIXED, bits, dimension), index + 1 + item_nulls, nulls=nulls, item_nulls=item_nulls)


def _binary_codec(binary: enc20.Binary, first: int) -> _Codec | None:
    """A ``Binary`` whose offsets are page buffer ``first`` and bytes the next one."""
    if _flat_bits(binary.indices, first, nullable=True) != 64 or _flat_bits(binary.bytes, first + 1) != 8:
        return None
    return _Codec(Shape(BINARY), 2, null_adjustment=binary.null_adjustment)


def _flat_bits(array: enc20.ArrayEncoding, index: int, *, nullable: bool = False) -> int | None:
    """Bits per value of an uncompressed ``Flat`` in page buffer ``index`` (with ``nullable``,
    wrapped in a ``Nullable`` without nulls, as offsets and indices are); None for others."""
    if nullable:
        if array.WhichOneof("array_encoding") != "nullable" or array.nullable.WhichOneof("nullability") != "no_nulls":
            return None
        array = array.nullable.no_nulls.values
    if array.WhichOneof("array_encoding") != "flat":
        return None
    flat = array.flat
    if flat.HasField("compression") or flat.buffer.buffer_type != enc20.Buffer.page or flat.buffer.buffer_index != index:
        return None
    return int(flat.bits_per_value)


def _fixed(values: enc20.ArrayEncoding, index: int) -> tuple[int, int, bool] | None:
    """Bits per item, items per row (0: flat) and whether items have their own validity bitmap,
    of fixed-width values starting at page buffer ``index``: flat (1 bit, or whole bytes), or a
    fixed-size list of flat values of whole bytes (their validity bitmap first, when some are
    null: pylance marks the items of a null row null)."""
    if values.WhichOneof("array_encoding") != "fixed_size_list":
        bits = _flat_bits(values, index)
        return (bits, 0, False) if bits is not None and (bits == 1 or (bits and bits % 8 == 0)) else None
    fsl = values.fixed_size_list
    if fsl.has_validity or fsl.dimension < 1:
        return None
    items, item_nulls = fsl.items, False
    if items.WhichOneof("array_encoding") == "nullable" and items.nullable.WhichOneof("nullability") == "some_nulls":
        if _flat_bits(items.nullable.some_nulls.validity, index) != 1:
            return None
        bits, item_nulls = _flat_bits(items.nullable.some_nulls.values, index + 1), True
    else:
        bits = _flat_bits(items, index, nullable=True)
    return (bits, int(fsl.dimension), item_nulls) if bits and bits % 8 == 0 else None


# --- decoding ---------------------------------------------------------------------------------
def defer_page(
    page: file2_pb2.ColumnMetadata.Page,
    buffers: Sequence[bytes | memoryview],
    version: FileVersion,
    logical_type: str = "",
    codec: _Codec | None = None,
) -> Undecoded[_Codec]:
    """A page ``page_codec`` takes, kept to be decoded by ``materialize``."""
    if codec is None:
        codec = page_codec(page, version, logical_type)
        if codec is None:
            raise NotNative("a 2.0 page of an encoding this copier does not decode")
    kept = tuple(bytes(b) for b in buffers)
    rows = page.length
    nbytes = sum(map(len, kept))
    if codec.dictionary:  # every row a copy of its value: about the values' mean length each
        nbytes = 8 * rows + len(kept[2]) * rows // max(1, codec.items)
    elif codec.shape.kind == FIXED:
        nbytes = max(nbytes, rows * codec.shape.row_bytes)
    return Undecoded(page.encoding.direct.encoding, codec, rows, kept, nbytes)


@dataclass
class Run:
    """Consecutive pages' rows, decoded: what ``encode_page`` writes as one page."""

    shape: Shape
    rows: int
    valid: Mask  # per row: not null
    values: U8  # FIXED: the rows' bytes (one 0/1 byte per row when 1-bit); BINARY: the values' bytes
    lengths: I64  # BINARY, LIST: per row, bytes or items it holds (0 when null)
    item_valid: Mask  # FIXED fixed-size lists: per item, not null (empty otherwise)


def materialize(parts: Sequence[Undecoded[_Codec]]) -> Run:
    """One Run of ``parts`` in order (their shapes must ``combine``). Raises CorruptFileError
    when a page's buffers do not hold what its encoding says."""
    if not parts:
        raise NotNative("no pages")
    shape = parts[0].shape
    for part in parts[1:]:
        found = combine(shape, part.shape)
        if found is None:
            raise NotNative("pages of different encodings")
        shape = found
    pieces = [_decode(part, shape) for part in parts]
    return Run(
        shape,
        sum(p.rows for p in parts),
        np.concatenate([p.valid for p in pieces]),
        np.concatenate([p.values for p in pieces]),
        np.concatenate([p.lengths for p in pieces]),
        np.concatenate([p.item_valid for p in pieces]),
    )


def _decode(part: Undecoded[_Codec], shape: Shape) -> Run:
    codec, rows, buffers = part.codec, part.rows, part.buffers
    try:
        if codec.shape.kind == FIXED:
            return _decode_fixed(codec, rows, buffers, shape)
        if codec.dictionary:
            return _decode_dictionary(codec, rows, buffers)
        total = len(buffers[1]) if codec.shape.kind == BINARY else codec.items
        valid, ends = _offsets(buffers[0], rows, codec.null_adjustment, total)
        end = int(ends[-1]) if rows else 0
        if codec.shape.kind == LIST and end != total:
            # a reader finds the next page's items after this page's num_items: they must agree
            raise CorruptFileError(f"2.0 list offsets end at item {end} of a page of {total} items")
        data = np.frombuffer(buffers[1], np.uint8, end) if codec.shape.kind == BINARY else _NONE
        return Run(shape, rows, valid, data, np.diff(ends, prepend=0), _NO_MASK)
    except (ValueError, IndexError) as exc:  # numpy reading past a buffer's end
        raise CorruptFileError(f"2.0 page does not decode: {exc}") from exc


_NONE: U8 = np.zeros(0, np.uint8)
_NO_MASK: Mask = np.zeros(0, np.bool_)


def _decode_fixed(codec: _Codec, rows: int, buffers: Sequence[bytes], shape: Shape) -> Run:
    """A fixed-width page's rows: an all-null page's as zeros of the run's width (null items)."""
    items = rows * shape.dimension
    if codec.nulls == "all":
        width = 1 if shape.bits == 1 else shape.row_bytes
        return Run(
            shape, rows, np.zeros(rows, np.bool_), np.zeros(rows * width, np.uint8), _NO_LENGTHS, np.zeros(items, np.bool_)
        )
    valid = _bits(buffers[0], rows) if codec.nulls == "some" else np.ones(rows, np.bool_)
    item_valid = _bits(buffers[-2], items) if codec.item_nulls else np.ones(items, np.bool_)
    raw = buffers[-1]
    if shape.bits == 1:
        values = _bits(raw, rows).view(np.uint8)
    else:
        size = rows * shape.row_bytes
        if len(raw) < size:
            raise CorruptFileError(f"2.0 page of {rows} rows of {shape.row_bytes} bytes holds {len(raw)} bytes")
        values = np.frombuffer(raw, np.uint8, size)
    return Run(shape, rows, valid, values, _NO_LENGTHS, item_valid)


_NO_LENGTHS: I64 = np.zeros(0, np.int64)


def _bits(raw: bytes, rows: int) -> Mask:
    """The first ``rows`` bits of a bitmap (least significant bit first)."""
    if len(raw) * 8 < rows:
        raise CorruptFileError(f"2.0 bitmap of {len(raw)} bytes for {rows} rows")
    return np.unpackbits(np.frombuffer(raw, np.uint8), count=rows, bitorder="little").astype(np.bool_)


def _offsets(raw: bytes, rows: int, null_adjustment: int, total: int) -> tuple[Mask, I64]:
    """Which rows are valid and where each row ends, from u64 end offsets whose nulls are
    shifted up by ``null_adjustment``; every end within ``total`` (bytes or items)."""
    if len(raw) != 8 * rows:
        raise CorruptFileError(f"2.0 offsets of {len(raw)} bytes for {rows} rows")
    stored = np.frombuffer(raw, "<u8")
    valid = stored < np.uint64(null_adjustment)
    ends = np.where(valid, stored, stored - np.uint64(null_adjustment))
    if rows and (int(ends.max()) > total or bool((np.diff(ends.astype(np.int64), prepend=0) < 0).any())):
        raise CorruptFileError(f"2.0 offsets past their {total} values or out of order")
    return valid, ends.astype(np.int64)


def _decode_dictionary(codec: _Codec, rows: int, buffers: Sequence[bytes]) -> Run:
    """A dictionary page's rows, each its value's bytes (index 0: null; k: value k - 1)."""
    if len(buffers[0]) != rows:
        raise CorruptFileError(f"2.0 dictionary indices of {len(buffers[0])} bytes for {rows} rows")
    indices = np.frombuffer(buffers[0], np.uint8).astype(np.int64)
    item_valid, item_ends = _offsets(buffers[1], codec.items, codec.items_adjustment, len(buffers[2]))
    if rows and int(indices.max()) > codec.items:
        raise CorruptFileError(f"2.0 dictionary index past its {codec.items} values")
    item_lengths = np.diff(item_ends, prepend=0)
    item_valid = np.concatenate(([False], item_valid))
    item_lengths = np.concatenate(([0], np.where(item_valid[1:], item_lengths, 0)))
    starts = np.concatenate(([0], item_ends - np.diff(item_ends, prepend=0)))
    valid = item_valid[indices]
    lengths = item_lengths[indices]
    data = buffers[2]
    joined = b"".join([data[s : s + n] for s, n in zip(starts[indices].tolist(), lengths.tolist()) if n])
    return Run(Shape(BINARY), rows, valid, np.frombuffer(joined, np.uint8), lengths, _NO_MASK)


# --- encoding ---------------------------------------------------------------------------------
def _any(array: enc20.ArrayEncoding) -> bytes:
    return any_pb2.Any(type_url=ARRAY_ENCODING_URL, value=array.SerializeToString(deterministic=True)).SerializeToString(
        deterministic=True
    )


def _flat(bits: int, index: int) -> enc20.ArrayEncoding:
    return enc20.ArrayEncoding(flat=enc20.Flat(bits_per_value=bits, buffer=enc20.Buffer(buffer_index=index)))


def _no_nulls(values: enc20.ArrayEncoding) -> enc20.ArrayEncoding:
    return enc20.ArrayEncoding(nullable=enc20.Nullable(no_nulls=enc20.Nullable.NoNull(values=values)))


def encode_page(run: Run) -> EncodedPage:
    """One page holding all of ``run``, in the layouts pylance writes for 2.0: fixed-width
    values flat (a validity bitmap first when some rows are null; no buffers when all are),
    variable-width values and list offsets as u64 end offsets with nulls shifted up."""
    shape, rows = run.shape, run.rows
    if rows == 0:
        raise NotNative("pages without rows")
    if shape.kind == FIXED:
        return _encode_fixed(run)
    ends = np.cumsum(run.lengths).astype(np.uint64)
    total = int(ends[-1])
    adjustment = total + 1
    stored = np.where(run.valid, ends, ends + np.uint64(adjustment)).astype("<u8").tobytes()
    offsets = _no_nulls(_flat(64, 0))
    if shape.kind == LIST:
        array = enc20.ArrayEncoding(list=enc20.List(offsets=offsets, null_offset_adjustment=adjustment, num_items=total))
        return EncodedPage((stored,), _any(array), rows)
    array = enc20.ArrayEncoding(binary=enc20.Binary(indices=offsets, bytes=_flat(8, 1), null_adjustment=adjustment))
    return EncodedPage((stored, run.values.tobytes()), _any(array), rows)


def _encode_fixed(run: Run) -> EncodedPage:
    """Fixed-width rows: [row validity,] [item validity,] values; the encoding names them."""
    shape, rows, valid = run.shape, run.rows, run.valid
    if not shape.bits or not valid.any():
        all_nulls = enc20.Nullable(all_nulls=enc20.Nullable.AllNull())
        return EncodedPage((), _any(enc20.ArrayEncoding(nullable=all_nulls)), rows)
    buffers: list[bytes] = []
    if not valid.all():
        buffers.append(np.packbits(valid, bitorder="little").tobytes())
    values = _flat(shape.bits, len(buffers))
    if shape.dimension:
        items = _no_nulls(values)
        if not run.item_valid.all():
            buffers.append(np.packbits(run.item_valid, bitorder="little").tobytes())
            some_items = enc20.Nullable.SomeNull(validity=_flat(1, len(buffers) - 1), values=_flat(shape.bits, len(buffers)))
            items = enc20.ArrayEncoding(nullable=enc20.Nullable(some_nulls=some_items))
        values = enc20.ArrayEncoding(fixed_size_list=enc20.FixedSizeList(dimension=shape.dimension, items=items))
    buffers.append(np.packbits(run.values, bitorder="little").tobytes() if shape.bits == 1 else run.values.tobytes())
    if valid.all():
        return EncodedPage(tuple(buffers), _any(_no_nulls(values)), rows)
    some = enc20.Nullable.SomeNull(validity=_flat(1, 0), values=values)
    return EncodedPage(tuple(buffers), _any(enc20.ArrayEncoding(nullable=enc20.Nullable(some_nulls=some))), rows)
