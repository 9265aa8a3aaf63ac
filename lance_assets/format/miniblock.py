"""Mini-block pages of 2.1 and 2.2 files: decoded into levels and values, re-cut into large pages.

Binary copy of many small appends leaves a column of thousands of one-chunk pages, and Lance's
reader pays per page. This module coalesces such pages without pylance and without changing a
value: it decodes each small page's chunks (the encodings pylance's writer picks for small
pages: flat, variable-width, fast-lanes bit-packed and run-length values, fixed-size lists of
fixed-width values; flat, bit-packed and run-length levels; all-null pages and pages of one
repeated value, fixed-width or a string's) and writes the concatenation as a few large pages of
plain encodings (flat values, or bit-packed ones where fixed-width values fit in fewer bits;
flat 16-bit levels), cut into chunks that obey the mini-block
rule: every chunk but a page's last holds a power of two of values, at most 4,096. The byte
layout is described in docs/format.md ("Mini-block pages"). Anything else (dictionaries, FSST,
general compression, 2.0 and 2.3 pages) is not decodable here (``decodable``): the caller
copies those pages as they are or has pylance re-encode them.

numpy does the bit work; it is imported with this module, which the copy loads on first use.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.protobuf import varint, wire_fields
from lance_assets.format.v2file import FileVersion

LAYOUT_URL = "/lance.encodings21.PageLayout"
#: Chunks start on 8-byte boundaries; their sizes are stored in units of 8 bytes.
CHUNK_ALIGNMENT = 8
#: A chunk holds at most this many values (the power-of-two rule caps it at 2**12).
MAX_CHUNK_VALUES = 4096
#: Bytes of values and levels we aim to put in one chunk: what Lance's writer aims at too
#: (a few disk sectors), so a read of a few rows decodes little.
CHUNK_TARGET_BYTES = 8 * 1024
#: The largest chunk a 16-bit size word can describe (12 bits of 8-byte units).
MAX_CHUNK_BYTES = 4096 * CHUNK_ALIGNMENT
#: A value longer than this is never coalesced: with its offsets and levels it must fit one chunk
#: (pylance stores columns of values over 256 bytes full-zip anyway).
MAX_VALUE_BYTES = 16 * 1024
#: MiniBlockLayout field 10 (a varint 1), which pylance writes on every 2.2 mini-block page:
#: chunk size words and value-buffer sizes in chunk headers are then 32-bit, not 16-bit.
WIDE_SIZES_FIELD = 10
#: AllNullLayout field 6: on 2.2 pages of one repeated fixed-width value, that value's bytes.
CONSTANT_VALUE_FIELD = 6
_WIDE_SIZES_BYTES = bytes([WIDE_SIZES_FIELD << 3, 1])
#: Offset bits of the variable-width logical types (the manifest's names) whose pages of one
#: repeated value this module decodes.
_OFFSET_BITS = {"string": 32, "binary": 32, "large_string": 64, "large_binary": 64}
#: A repeated-value buffer starts with a u32 buffer count (2) and a u32 size per buffer.
_REPEATED_HEADER = 12
#: A page of one repeated value decodes to rows x value bytes: beyond this many, it is left to
#: pylance (a small page of millions of rows of one long value would not fit the memory bound).
MAX_REPEATED_BYTES = 64 * 1024 * 1024
_LIST_LAYERS = frozenset(
    {enc21.REPDEF_ALL_VALID_LIST, enc21.REPDEF_NULLABLE_LIST, enc21.REPDEF_EMPTYABLE_LIST, enc21.REPDEF_NULL_AND_EMPTY_LIST}
)
#: What each definition level of a layer stands for, in the order the levels are numbered
#: (a list that may be both null and empty numbers "null" first).
_MEANINGS: dict[int, tuple[str, ...]] = {
    enc21.REPDEF_ALL_VALID_ITEM: (),
    enc21.REPDEF_NULLABLE_ITEM: ("null",),
    enc21.REPDEF_ALL_VALID_LIST: (),
    enc21.REPDEF_NULLABLE_LIST: ("null",),
    enc21.REPDEF_EMPTYABLE_LIST: ("empty",),
    enc21.REPDEF_NULL_AND_EMPTY_LIST: ("null", "empty"),
}
#: Definition levels each layer takes: one per meaning.
_DEF_LEVELS = {layer: len(meanings) for layer, meanings in _MEANINGS.items()}
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
I64 = npt.NDArray[np.int64]


class NotNative(ValueError):
    """A page this module does not decode (the message says why)."""


# --- what a page is ------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What a mini-block page's bytes mean, as far as coalescing needs. Pages of one shape (but
    any level or value compression) can be concatenated: the layers say how levels read."""

    layers: tuple[int, ...]
    rep: bool  # chunks hold repetition levels
    defs: bool  # chunks hold definition levels
    variable: bool  # values are variable-width (offsets then bytes) rather than fixed-width
    bits: int  # bits per fixed-width value, or per offset of a variable-width one
    wide: bool  # 32-bit chunk size words and value-buffer sizes (2.2 onwards)
    null: bool = False  # an all-null page of a flat column: no buffers, every row null
    items: int = 0  # a fixed-size list of ``items`` fixed-width values per row (0: not a list)

    @property
    def value_bytes(self) -> int:
        """Bytes of one fixed-width value (0 for 1-bit values, which are packed)."""
        return self.bits // 8 * max(1, self.items)

    @property
    def max_rep(self) -> int:
        return sum(1 for layer in self.layers if layer in _LIST_LAYERS)

    @property
    def max_visible_def(self) -> int | None:
        """Definition levels up to this one stand for a value in the values buffer; higher ones
        (null or empty lists) do not. None when there are no lists: every level has a value."""
        total = 0
        for layer in self.layers:
            if layer in _LIST_LAYERS:
                return total
            total += _DEF_LEVELS.get(layer, 0)
        return None


def combine(a: Shape, b: Shape) -> Shape | None:
    """The shape a page holding pages of shapes ``a`` and ``b`` takes, or None when they cannot
    share a page. Pages differ in layers where one append had nulls (or empty lists) and another
    had none: each layer then takes the form that has every kind of level either had (a
    nullable item; a list that may be null, empty or both), and the pages' definition levels
    are renumbered into it (``_def_mapping``). An all-null page of a flat column joins any flat
    page of it as null items."""
    if a == b:
        return a
    if a.null or b.null:
        other = b if a.null else a
        if other.layers not in ((enc21.REPDEF_ALL_VALID_ITEM,), (enc21.REPDEF_NULLABLE_ITEM,)) or other.rep:
            return None
        return replace(other, layers=(enc21.REPDEF_NULLABLE_ITEM,), defs=True)
    if (a.rep, a.variable, a.bits, a.items, a.wide, len(a.layers)) != (b.rep, b.variable, b.bits, b.items, b.wide, len(b.layers)):
        return None
    layers = []
    for x, y in zip(a.layers, b.layers):
        if (x in _LIST_LAYERS) != (y in _LIST_LAYERS):
            return None
        meanings = set(_MEANINGS[x]) | set(_MEANINGS[y])
        layers.append(
            next(layer for layer, m in _MEANINGS.items() if set(m) == meanings and (layer in _LIST_LAYERS) == (x in _LIST_LAYERS))
        )
    return replace(a, layers=tuple(layers), defs=any(_DEF_LEVELS[layer] for layer in layers))


def _def_mapping(source: Shape, target: Shape) -> I64:
    """Definition level in ``source`` -> the level of the same meaning in ``target`` (whose
    layers have every kind of level the source's have; see ``combine``)."""
    mapping = [0]
    before = 0
    for src, dst in zip(source.layers, target.layers):
        mapping += [before + _MEANINGS[dst].index(meaning) + 1 for meaning in _MEANINGS[src]]
        before += _DEF_LEVELS[dst]
    return np.array(mapping, dtype=np.int64)


@dataclass(frozen=True)
class _Codec:
    """How one page's chunks are compressed (the shape plus the per-part decoders)."""

    shape: Shape
    rep: enc21.CompressiveEncoding | None
    defs: enc21.CompressiveEncoding | None
    values: enc21.CompressiveEncoding
    num_items: int
    buffers: int = 1  # value buffers per chunk
    constant: bytes | None = None  # the one value of every row of a constant page
    repeated: bool = False  # every row holds one variable-width value, kept in the first buffer

    @cached_property
    def values_key(self) -> tuple[Shape, bytes]:
        """Pages with equal keys hold values ``_decode_batch`` decodes together (their levels may
        be compressed differently, and their value counts differ)."""
        return (self.shape, self.values.SerializeToString(deterministic=True))

    @cached_property
    def levels_key(self) -> tuple[bytes, bytes]:
        """How the page's repetition and definition levels are compressed."""
        return tuple(e.SerializeToString(deterministic=True) if e is not None else b"" for e in (self.rep, self.defs))  # type: ignore[return-value]


def page_codec(page: file2_pb2.ColumnMetadata.Page, version: FileVersion, logical_type: str = "") -> _Codec | None:
    """How this page decodes, when this module decodes it (else None): its encoding is one this
    module reads and its buffers are the ones that encoding has (none for all-null and constant
    pages: the same encoding bytes with buffers mean a page of one repeated variable-width
    value). ``logical_type`` is the column's (the manifest's name for it): pages of one value
    do not say whether it is a boolean, nor how wide a string's offsets are. The copy asks once
    per small page and hands the answer to ``defer_page``."""
    found = _page_codec(page, version, logical_type)
    return None if isinstance(found, str) else found


def decodable(page: file2_pb2.ColumnMetadata.Page, version: FileVersion, logical_type: str = "") -> bool:
    """Whether ``defer_page`` takes this page (``page_codec`` knows how it decodes)."""
    return page_codec(page, version, logical_type) is not None


def _page_codec(page: file2_pb2.ColumnMetadata.Page, version: FileVersion, logical_type: str) -> _Codec | str:
    """``page_codec``, or why this module does not decode the page."""
    if page.encoding.WhichOneof("location") != "direct":
        return "page encoding stored outside the page"
    codec = _codec(page.encoding.direct.encoding, version, logical_type)
    if isinstance(codec, str):
        return codec
    sizes = list(page.buffer_sizes)
    if codec.shape.null and sizes:  # the all-null encoding with buffers: one repeated value, with nulls
        codec = _repeated_codec(version, logical_type, nulls=True)
        if isinstance(codec, str):
            return codec
    if codec.repeated:
        fits = bool(sizes) and sizes[1:] == ([0, 2 * page.length] if codec.shape.defs else [])
        value_bytes = sizes[0] - _REPEATED_HEADER - 2 * codec.shape.bits // 8 if fits else 0
        if value_bytes > MAX_VALUE_BYTES or value_bytes * page.length > MAX_REPEATED_BYTES:
            return f"a page of {page.length} rows of one {value_bytes}-byte value"
    elif codec.constant is not None:
        fits = sizes == [0, 2 * page.length] if codec.shape.defs else not sizes
    elif codec.shape.null:
        fits = not sizes
    else:
        fits = len(sizes) == (3 if codec.shape.rep else 2)
    return codec if fits else f"{len(sizes)} buffers where its encoding has others"


@lru_cache(maxsize=4096)
def _codec(encoding: bytes, version: FileVersion, logical_type: str = "") -> _Codec | str:
    """How a page's encoding bytes read, or why this module does not decode it."""
    if version not in (FileVersion.V2_1, FileVersion.V2_2):
        return f"{version.value} pages are not mini-block pages this copier decodes"
    try:
        wrapper = any_pb2.Any.FromString(encoding)
        if wrapper.type_url != LAYOUT_URL:
            return f"page encoding {wrapper.type_url}"
        layout = enc21.PageLayout.FromString(wrapper.value)
    except DecodeError:
        return "page encoding does not parse"
    if layout.WhichOneof("layout") == "all_null_layout":
        return _all_null_codec(wrapper.value, layout, version, logical_type)
    if layout.WhichOneof("layout") != "mini_block_layout":
        return f"{layout.WhichOneof('layout')} page"
    mb = layout.mini_block_layout
    raw = wire_fields(mb.SerializeToString())
    unknown = {num for num, _, _ in raw or ()} - {f.number for f in mb.DESCRIPTOR.fields}
    if unknown - {WIDE_SIZES_FIELD}:
        return f"mini-block field(s) {sorted(unknown)} unknown"
    wide = WIDE_SIZES_FIELD in unknown
    if mb.HasField("dictionary") or mb.num_dictionary_items:
        return "dictionary-encoded page"
    if mb.num_buffers != (2 if mb.value_compression.WhichOneof("compression") == "rle" else 1):
        return f"{mb.num_buffers} value buffers per chunk"
    if any(layer not in _DEF_LEVELS for layer in mb.layers):
        return "unknown repetition/definition layer"
    rep = mb.rep_compression if mb.HasField("rep_compression") else None
    defs = mb.def_compression if mb.HasField("def_compression") else None
    for what, levels in (("repetition", rep), ("definition", defs)):
        if levels is not None and _levels_reason(levels):
            return f"{what} levels: {_levels_reason(levels)}"
    if mb.repetition_index_depth not in ((1,) if rep is not None else (0,)):
        return f"repetition index of depth {mb.repetition_index_depth}"
    kind = _values_kind(mb.value_compression)
    if isinstance(kind, str):
        return kind
    variable, bits, items = kind
    shape = Shape(tuple(mb.layers), rep is not None, defs is not None, variable, bits, wide, items=items)
    if shape.value_bytes > MAX_VALUE_BYTES:
        return f"values of {shape.value_bytes} bytes"
    return _Codec(shape, rep, defs, mb.value_compression, mb.num_items, mb.num_buffers)


def _all_null_codec(value: bytes, layout: enc21.PageLayout, version: FileVersion, logical_type: str) -> _Codec | str:
    """An all-null layout: a flat column's all-null page, or (2.2) a page of one repeated value.
    A fixed-width value is written as an all-null layout carrying the value's bytes (field 6):
    of a valid item with no buffers, or of a nullable item with two buffers (no repetition
    levels, then one little-endian u16 definition level per row). A variable-width value has no
    field 6 but buffers (``_repeated_codec``): a valid item's page is told here, a nullable
    one's only by its buffers (``_page_codec``), as its encoding is an all-null page's."""
    boolean = logical_type == "bool"
    fields = wire_fields(value)
    inner = wire_fields(fields[0][2]) if fields and len(fields) == 1 and isinstance(fields[0][2], bytes) else None
    item_layers = {bytes([enc21.REPDEF_ALL_VALID_ITEM]): False, bytes([enc21.REPDEF_NULLABLE_ITEM]): True}
    if (
        inner is not None
        and len(inner) == 2
        and inner[0][:2] == (5, 2)
        and inner[0][2] in item_layers
        and inner[1][:2] == (CONSTANT_VALUE_FIELD, 2)
        and isinstance(inner[1][2], bytes)
        and len(inner[1][2]) in (1, 2, 4, 8, 16)
        and not (boolean and len(inner[1][2]) != 1)
    ):
        constant = inner[1][2]
        bits = 1 if boolean else 8 * len(constant)
        nulls = item_layers[inner[0][2]]
        layer = enc21.REPDEF_NULLABLE_ITEM if nulls else enc21.REPDEF_ALL_VALID_ITEM
        shape = Shape((layer,), False, nulls, False, bits, version is FileVersion.V2_2)
        return _Codec(shape, None, None, enc21.CompressiveEncoding(), 0, 0, constant)
    if fields == [(2, 2, bytes([5 << 3 | 2, 1, enc21.REPDEF_ALL_VALID_ITEM]))]:
        return _repeated_codec(version, logical_type, nulls=False)
    simple = wire_fields(layout.all_null_layout.SerializeToString()) == [(5, 2, bytes([enc21.REPDEF_NULLABLE_ITEM]))]
    if not simple or fields != [(2, 2, layout.all_null_layout.SerializeToString())]:
        return "all-null page of a nested column"
    null = Shape((enc21.REPDEF_NULLABLE_ITEM,), False, True, False, 0, version is FileVersion.V2_2, null=True)
    return _Codec(null, None, None, enc21.CompressiveEncoding(), 0)


@lru_cache(maxsize=64)
def _repeated_codec(version: FileVersion, logical_type: str, *, nulls: bool) -> _Codec | str:
    """A page of one repeated variable-width value (2.2): the all-null layout of one item layer,
    no field 6, and a first buffer holding the value as a tiny array of two buffers (``_one_value``);
    with nulls (a nullable item layer) then an empty buffer and one u16 definition level per
    row. The encoding is the same for 32- and 64-bit offsets: the column's logical type tells."""
    bits = _OFFSET_BITS.get(logical_type)
    if bits is None:
        return f"a page of one repeated value of a column of type {logical_type or 'unknown'}"
    layer = enc21.REPDEF_NULLABLE_ITEM if nulls else enc21.REPDEF_ALL_VALID_ITEM
    shape = Shape((layer,), False, nulls, True, bits, version is FileVersion.V2_2)
    return _Codec(shape, None, None, enc21.CompressiveEncoding(), 0, 0, repeated=True)


def _values_kind(values: enc21.CompressiveEncoding) -> tuple[bool, int, int] | str:
    """(variable-width, bits per value or offset, items per fixed-size list) of the value
    encodings this module decodes, or why the others are not."""
    kind = values.WhichOneof("compression")
    if kind == "flat" and not values.flat.HasField("data") and values.flat.bits_per_value in (1, 8, 16, 32, 64, 128):
        return False, values.flat.bits_per_value, 0
    if kind == "inline_bitpacking" and not values.inline_bitpacking.HasField("values"):
        bits = values.inline_bitpacking.uncompressed_bits_per_value
        return (False, bits, 0) if bits in _UINT else f"bit-packed {bits}-bit values"
    if kind == "rle" and _rle_shape_ok(values.rle, (8, 16, 32, 64)):
        return False, values.rle.values.flat.bits_per_value, 0
    fsl = values.fixed_size_list
    if (
        kind == "fixed_size_list"
        and not fsl.has_validity
        and fsl.items_per_value > 0
        and fsl.values.WhichOneof("compression") == "flat"
        and fsl.values.flat.bits_per_value in (8, 16, 32, 64, 128)
        and not fsl.values.flat.HasField("data")
    ):
        return False, fsl.values.flat.bits_per_value, fsl.items_per_value
    offsets = values.variable.offsets
    if (
        kind == "variable"
        and not values.variable.HasField("values")
        and offsets.WhichOneof("compression") == "flat"
        and offsets.flat.bits_per_value in (32, 64)
        and not offsets.flat.HasField("data")
    ):
        return True, offsets.flat.bits_per_value, 0
    return f"{kind} values"


def _rle_shape_ok(rle: enc21.Rle, value_bits: Sequence[int]) -> bool:
    """Run-length encoding as pylance writes it: flat values, one byte per run length."""
    return (
        rle.values.WhichOneof("compression") == "flat"
        and rle.values.flat.bits_per_value in value_bits
        and not rle.values.flat.HasField("data")
        and rle.run_lengths.WhichOneof("compression") == "flat"
        and rle.run_lengths.flat.bits_per_value == 8
        and not rle.run_lengths.flat.HasField("data")
    )


def _levels_reason(levels: enc21.CompressiveEncoding) -> str:
    kind = levels.WhichOneof("compression")
    if kind == "flat" and levels.flat.bits_per_value == 16 and not levels.flat.HasField("data"):
        return ""
    if kind == "inline_bitpacking" and levels.inline_bitpacking.uncompressed_bits_per_value == 16:
        return "" if not levels.inline_bitpacking.HasField("values") else "compressed bit-packing"
    if kind == "out_of_line_bitpacking":
        inner = levels.out_of_line_bitpacking
        ok = inner.uncompressed_bits_per_value == 16 and inner.values.WhichOneof("compression") == "flat"
        return "" if ok else "out-of-line bit-packing of another shape"
    if kind == "rle":
        return "" if _rle_shape_ok(levels.rle, (16,)) else "run-length encoding of another shape"
    return f"{kind} compression"


@dataclass(frozen=True)
class Packed:
    """One fast-lanes block of ``bits``-bit levels or values still bit-packed, of which the
    first ``count`` are wanted: unpacked together with every other block of the run when it is
    encoded, which costs one numpy pass per bit width instead of one per small page."""

    words: npt.NDArray[np.unsignedinteger]
    width: int
    count: int
    bits: int = 16


# --- decoding ---------------------------------------------------------------------------------
@dataclass
class _Levels:
    """The levels of consecutive decoded pages of one shape (``count`` levels; for shapes
    without levels, values)."""

    shape: Shape
    rep: list[U16 | Packed] = field(default_factory=list)
    defs: list[U16 | Packed] = field(default_factory=list)
    count: int = 0


@dataclass
class Run:
    """Decoded rows of one or more consecutive pages: levels and values, ready to re-cut.

    Values are kept in the pages' order; an all-null page contributes a count of placeholder
    values (an int in ``fixed`` and ``lengths``), made once the run's value width is known."""

    shape: Shape
    rows: int = 0
    levels: list[_Levels] = field(default_factory=list)
    fixed: list[U8 | Packed | int] = field(default_factory=list)  # value bytes; for 1-bit values one byte per bit
    lengths: list[I64 | int] = field(default_factory=list)  # variable-width: value lengths
    data: list[U8] = field(default_factory=list)  # variable-width: value bytes
    num_values: int = 0
    nbytes: int = 0  # decoded bytes held (what the memory bound counts)

    def extend(self, other: Run) -> None:
        """Append ``other``'s rows (their shapes must ``combine``)."""
        shape = combine(self.shape, other.shape)
        if shape is None:
            raise NotNative("pages of shapes that cannot share a page")
        self.shape = shape
        for part in other.levels:
            last = self.levels[-1] if self.levels else None
            if last is not None and last.shape == part.shape:
                last.rep += part.rep
                last.defs += part.defs
                last.count += part.count
            else:
                self.levels.append(part)
        self.rows += other.rows
        self.fixed += other.fixed
        self.lengths += other.lengths
        self.data += other.data
        self.num_values += other.num_values
        self.nbytes += other.nbytes


def _decode_page(codec: _Codec, rows: int, buffers: Sequence[bytes | memoryview]) -> Run:
    """One mini-block page of ``rows`` rows (its buffers as read from the file) as a Run: the
    page by page way, for pages ``_decode_batch`` does not take."""
    shape = codec.shape
    if codec.constant is not None or codec.repeated:
        return _constant_page(codec, rows, buffers)
    if shape.null:
        if buffers:
            raise CorruptFileError("all-null page with buffers")
        return Run(shape, rows, [_Levels(shape, count=rows)], [rows], [rows], [], rows, 0)
    if len(buffers) < 2:
        raise CorruptFileError(f"mini-block page with {len(buffers)} buffers")
    word = "<u4" if shape.wide else "<u2"
    words = np.frombuffer(buffers[0], dtype=word)
    data = memoryview(buffers[1])
    run = Run(shape, rows=rows)
    levels = _Levels(shape)
    run.levels.append(levels)
    total = codec.num_items
    pos = seen = 0
    size_fmt = "<I" if shape.wide else "<H"
    size_len = 4 if shape.wide else 2
    for i, w in enumerate(words.tolist()):
        nbytes = ((w >> 4) + 1) * CHUNK_ALIGNMENT
        last = i == len(words) - 1
        n = total - seen if last else 1 << (w & 0xF)
        if n < 0 or pos + nbytes > len(data):
            raise CorruptFileError("mini-block chunk sizes exceed the page's data")
        chunk = data[pos : pos + nbytes]
        pos += nbytes
        seen += n
        (num_levels,) = struct.unpack_from("<H", chunk, 0)
        at = 2
        rep_size = def_size = 0
        if shape.rep:
            (rep_size,) = struct.unpack_from("<H", chunk, at)
            at += 2
        if shape.defs:
            (def_size,) = struct.unpack_from("<H", chunk, at)
            at += 2
        sizes = struct.unpack_from(size_fmt[0] + size_fmt[1] * codec.buffers, chunk, at)
        at = _aligned(at + size_len * codec.buffers)
        if shape.rep:
            levels.rep += _decode_levels(codec.rep, chunk[at : at + rep_size], num_levels)
            at = _aligned(at + rep_size)
        if shape.defs:
            levels.defs += _decode_levels(codec.defs, chunk[at : at + def_size], num_levels)
            at = _aligned(at + def_size)
        parts = []
        for size in sizes:
            if at + size > nbytes:
                raise CorruptFileError("mini-block chunk buffers exceed the chunk")
            parts.append(chunk[at : at + size])
            at = _aligned(at + size)
        _decode_values(codec, parts, n, run)
    if seen != total or pos > len(data):
        raise CorruptFileError(f"mini-block page holds {seen} values, its layout says {total}")
    run.num_values = total
    levels.count = (
        sum(p.count if isinstance(p, Packed) else len(p) for p in (levels.rep or levels.defs))
        if (shape.rep or shape.defs)
        else total
    )
    return run


def _constant_page(codec: _Codec, rows: int, buffers: Sequence[bytes | memoryview]) -> Run:
    """A page of one repeated value, with the page's definition levels. A fixed-width value is
    put in every row (a null row holds it too, as a mini-block page's null items hold a
    placeholder); a variable-width one in every valid row, null rows holding an empty value."""
    shape = codec.shape
    rest = list(buffers)
    value = codec.constant
    if codec.repeated:
        if not rest:
            raise CorruptFileError("page of one repeated value without the value's buffer")
        value = _one_value(rest.pop(0), shape.bits // 8)
    assert value is not None
    levels = _Levels(shape, count=rows)
    defs = None
    if shape.defs:
        if len(rest) != 2 or len(rest[0]) or len(rest[1]) != 2 * rows:
            raise CorruptFileError("constant page with nulls whose buffers are not one u16 level per row")
        defs = np.frombuffer(rest[1], dtype="<u2")
        if rows and int(defs.max()) > 1:
            raise CorruptFileError("constant page with a definition level above a null item's")
        levels.defs.append(defs.astype(np.uint16))
    elif rest:
        raise CorruptFileError("constant page with buffers")
    if shape.variable:
        valid = np.ones(rows, dtype=bool) if defs is None else defs == 0
        data = np.frombuffer(value * int(np.count_nonzero(valid)), dtype=np.uint8)
        return Run(shape, rows, [levels], [], [valid.astype(np.int64) * len(value)], [data], rows, len(data))
    if shape.bits == 1:
        values = np.full(rows, value[0] & 1, dtype=np.uint8)
    else:
        values = np.tile(np.frombuffer(value, dtype=np.uint8), rows)
    return Run(shape, rows, [levels], [values], [], [], rows, len(values))


def _one_value(raw: bytes | memoryview, width: int) -> bytes:
    """The value of a page of one repeated variable-width value: its first buffer holds a u32
    buffer count (2), a u32 size per buffer, then two offsets of ``width`` bytes (0 and the
    value's length) and the value's bytes."""
    head = _REPEATED_HEADER
    if len(raw) < head + 2 * width:
        raise CorruptFileError("a repeated value's buffer is shorter than its header")
    count, offsets_size, value_size = struct.unpack_from("<III", raw, 0)
    if count != 2 or offsets_size != 2 * width or len(raw) != head + offsets_size + value_size:
        raise CorruptFileError(
            f"a repeated value's buffer is not two buffers of {8 * width}-bit offsets and bytes, as the column's type says"
        )
    first, end = struct.unpack_from("<QQ" if width == 8 else "<II", raw, head)
    if first != 0 or end != value_size:
        raise CorruptFileError("a repeated value's offsets do not span its bytes")
    if value_size > MAX_VALUE_BYTES:
        raise NotNative(f"values longer than {MAX_VALUE_BYTES} bytes")
    return bytes(raw[head + offsets_size :])


def _aligned(n: int) -> int:
    return n + (-n % CHUNK_ALIGNMENT)


def _decode_levels(encoding: enc21.CompressiveEncoding | None, raw: memoryview, count: int) -> list[U16 | Packed]:
    assert encoding is not None
    kind = encoding.WhichOneof("compression")
    if kind == "flat":
        out = np.frombuffer(raw, dtype="<u2", count=count)
    elif kind == "inline_bitpacking":
        (width,) = struct.unpack_from("<H", raw, 0)
        if count > 1024 or width > 16 or len(raw) < 2 + 128 * width:
            raise CorruptFileError(f"bit-packed levels of width {width} for {count} values do not fit their chunk")
        return [Packed(np.frombuffer(raw, dtype="<u2", count=64 * width, offset=2), width, count)]
    elif kind == "out_of_line_bitpacking":
        width = encoding.out_of_line_bitpacking.values.flat.bits_per_value
        return _out_of_line(np.frombuffer(raw, dtype="<u2"), width, count)
    else:  # rle: u64 byte length of the run values, the values, then one u8 length per run
        (value_bytes,) = struct.unpack_from("<Q", raw, 0)
        values = np.frombuffer(raw, dtype="<u2", count=value_bytes // 2, offset=8)
        runs = np.frombuffer(raw, dtype=np.uint8, count=value_bytes // 2, offset=8 + value_bytes)
        out = np.repeat(values, runs)
    if len(out) != count:
        raise CorruptFileError(f"a chunk's levels decode to {len(out)} values, its header says {count}")
    return [out.astype(np.uint16, copy=False)]


def _decode_values(codec: _Codec, parts: Sequence[memoryview], n: int, run: Run) -> None:
    shape = codec.shape
    kind = codec.values.WhichOneof("compression")
    raw = parts[0]
    if kind == "rle":  # buffer 0: the runs' values, buffer 1: one u8 length per run
        width = shape.bits // 8
        runs = len(parts[1])
        values = np.frombuffer(raw, dtype=np.uint8, count=runs * width).reshape(runs, width)
        repeats = np.frombuffer(parts[1], dtype=np.uint8)
        if int(repeats.sum(dtype=np.int64)) != n:
            raise CorruptFileError(f"run lengths add up to {int(repeats.sum(dtype=np.int64))}, the chunk holds {n} values")
        run.fixed.append(np.repeat(values, repeats, axis=0).reshape(-1))
        run.nbytes += n * width
    elif shape.variable:
        width = shape.bits // 8
        offsets = np.frombuffer(raw, dtype=f"<u{width}", count=n + 1).astype(np.int64)
        lengths = np.diff(offsets)
        if n and (offsets[0] < (n + 1) * width or offsets[-1] > len(raw) or (lengths < 0).any()):
            raise CorruptFileError("variable-width chunk offsets out of range")
        if n and int(lengths.max()) > MAX_VALUE_BYTES:
            raise NotNative(f"values longer than {MAX_VALUE_BYTES} bytes")
        run.lengths.append(lengths)
        run.data.append(np.frombuffer(raw, dtype=np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0])))
        run.nbytes += len(raw)
    elif kind == "inline_bitpacking":
        bits = shape.bits
        width = int(np.frombuffer(raw, dtype=f"<u{bits // 8}", count=1)[0])
        lanes = 1024 // bits
        if n > 1024 or width > bits or len(raw) < bits // 8 * (1 + width * lanes):
            raise CorruptFileError(f"bit-packed values of width {width} for {n} values do not fit their chunk")
        run.fixed.append(
            Packed(np.frombuffer(raw, dtype=f"<u{bits // 8}", count=width * lanes, offset=bits // 8), width, n, bits)
        )
        run.nbytes += n * bits // 8
    elif shape.bits == 1:
        unpacked = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="little")
        run.fixed.append(unpacked)
        run.nbytes += n
    else:
        size = n * shape.value_bytes
        if size > len(raw):
            raise CorruptFileError("flat chunk shorter than its values")
        run.fixed.append(np.frombuffer(raw, dtype=np.uint8, count=size))
        run.nbytes += size


# --- decoding many pages at once ------------------------------------------------------------
class _Shaped(Protocol):
    """What ``Undecoded`` asks of a page's codec (each format module has its own)."""

    @property
    def shape(self) -> Any: ...


CodecT = TypeVar("CodecT", bound=_Shaped)


@dataclass(frozen=True)
class Undecoded(Generic[CodecT]):
    """A small page kept as read, decoded when its run is encoded (``materialize``), together
    with the pages of the same encoding beside it: a column of 3,000 one-chunk pages then costs
    a few numpy passes, not 3,000 rounds of Python. Its bytes stay whole, so a run that cannot
    be re-cut after all is written as these pages, unchanged. (2.0 pages, ``pages20``, are kept
    the same way with that module's codec.)"""

    encoding: bytes  # the page's encoding (Page.encoding.direct.encoding)
    codec: CodecT
    rows: int
    buffers: tuple[bytes, ...]  # copies: a view would keep the whole input file alive
    nbytes: int  # about the bytes it decodes to (the memory bound counts them before decoding)

    @property
    def shape(self) -> Any:
        return self.codec.shape

    def as_page(self) -> EncodedPage:
        """The page as it was read, to write unchanged."""
        return EncodedPage(self.buffers, self.encoding, self.rows)


def _batchable(codec: _Codec) -> bool:
    """Pages ``_decode_batch`` decodes: one value buffer per chunk; flat, bit-packed,
    fixed-size-list or variable-width values; levels of every kind ``_codec`` takes (run-length
    encoded values, rare in small pages, and all-null and single-value pages go page by page)."""
    if codec.shape.null or codec.constant is not None or codec.repeated or codec.buffers != 1:
        return False
    return bool(codec.values.WhichOneof("compression") != "rle")


def defer_page(
    page: file2_pb2.ColumnMetadata.Page,
    buffers: Sequence[bytes | memoryview],
    version: FileVersion,
    logical_type: str = "",
    codec: _Codec | None = None,
) -> Undecoded[_Codec]:
    """A page ``decodable`` says this module decodes, kept to be decoded by ``materialize``
    (``codec``: what ``page_codec`` said of it, when the caller asked already)."""
    encoding = page.encoding.direct.encoding
    if codec is None:
        found = _page_codec(page, version, logical_type)
        if isinstance(found, str):
            raise NotNative(found)
        codec = found
    kept = tuple(bytes(b) for b in buffers)
    # decoded: fixed-width values at their width, variable-width ones about their raw size (the
    # raw bytes held until then are at most that: encodings here only ever shrink values)
    nbytes = codec.num_items * codec.shape.value_bytes if not codec.shape.variable else len(kept[1]) if len(kept) > 1 else 0
    if codec.repeated and kept:  # one repeated value, copied into each row
        nbytes = page.length * max(0, len(kept[0]) - _REPEATED_HEADER - codec.shape.bits // 4)
    nbytes = max(nbytes, sum(map(len, kept)))
    return Undecoded(encoding, codec, page.length, kept, nbytes)


def materialize(parts: Sequence[Undecoded[_Codec]]) -> Run:
    """One Run of ``parts`` in order (their shapes must ``combine``): each stretch of pages of
    one encoding decoded in one batch. Raises NotNative (e.g. a value too long for a chunk) and
    CorruptFileError as ``decode_page`` does."""
    runs: list[Run] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        j = i + 1
        if _batchable(part.codec):
            key = part.codec.values_key
            while j < len(parts) and parts[j].codec.values_key == key:
                j += 1
        try:
            batch = _batchable(part.codec)
            runs.append(_decode_batch(parts[i:j]) if batch else _decode_page(part.codec, part.rows, part.buffers))
        except (NotNative, CorruptFileError):
            raise
        except (ValueError, IndexError, struct.error) as exc:  # numpy or struct reading past a buffer's end
            raise CorruptFileError(f"mini-block page does not decode: {exc}") from exc
        i = j
    if not runs:
        raise NotNative("no pages")
    first = runs[0]
    for other in runs[1:]:
        first.extend(other)
    return first


def _starts(counts: I64) -> I64:
    """Exclusive prefix sums: where each of consecutive spans of ``counts`` starts."""
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _spans(starts: I64, lengths: I64) -> I64:
    """The indices of the spans ``[starts[i], starts[i] + lengths[i])``, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - _starts(lengths), lengths) + np.arange(total, dtype=np.int64)


def _gather(data: U8, starts: I64, lengths: I64) -> U8:
    """The bytes of the spans ``[starts[i], starts[i] + lengths[i])`` of ``data``, concatenated:
    one slice per span joined in C, which beats an index per byte when spans are values."""
    view = memoryview(data.data)
    joined = b"".join([view[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist())])
    if len(joined) != int(lengths.sum()) or (len(starts) and int(starts.min()) < 0):
        raise CorruptFileError("a mini-block chunk reads past its page's data")
    return np.frombuffer(joined, dtype=np.uint8)


def _uints(data: U8, at: I64, size: int) -> I64:
    """The little-endian ``size``-byte unsigned integers at byte positions ``at`` of ``data``."""
    if len(at) and (int(at.min()) < 0 or int(at.max()) + size > len(data)):
        raise CorruptFileError("a mini-block chunk reads past its page's data")
    raw = data[at[:, None] + np.arange(size)]
    values: I64 = raw.view(f"<u{size}")[:, 0].astype(np.int64)
    return values


def _unpack_chunks(data: U8, words_at: I64, widths: I64, counts: I64, bits: int) -> npt.NDArray[np.unsignedinteger]:
    """The first ``counts[i]`` values of the fast-lanes block whose ``widths[i]``-bit words start
    at ``words_at[i]``, concatenated in chunk order (one numpy pass per distinct width)."""
    dtype = _UINT[bits]
    out = np.zeros(int(counts.sum()), dtype=dtype)
    dest = _starts(counts)
    lanes, size = 1024 // bits, bits // 8
    for width in np.unique(widths).tolist():
        if width == 0:
            continue  # all zeros
        sel = np.flatnonzero(widths == width)
        raw = _gather(data, words_at[sel], np.full(len(sel), width * lanes * size)).reshape(len(sel), -1)
        blocks = _unpack_blocks(raw.view(f"<u{size}"), width, bits)
        wanted = np.arange(1024)[None, :] < counts[sel][:, None]
        out[_spans(dest[sel], counts[sel])] = blocks[wanted]
    return out


def _decode_batch(pages: Sequence[Undecoded[_Codec]]) -> Run:
    """Pages of one encoding (``_batch_key``) decoded at once: the same checks and the same Run
    as ``decode_page`` on each and ``Run.extend``, with numpy over all their chunks."""
    codec = pages[0].codec
    shape = codec.shape
    size_len = 4 if shape.wide else 2
    words = np.frombuffer(b"".join(p.buffers[0] for p in pages), dtype="<u4" if shape.wide else "<u2").astype(np.int64)
    per_page = np.array([len(p.buffers[0]) // size_len for p in pages], dtype=np.int64)
    if (per_page == 0).any() or int(per_page.sum()) != len(words):
        raise CorruptFileError("mini-block page without whole chunk size words")
    data = np.frombuffer(b"".join(p.buffers[1] for p in pages), dtype=np.uint8)
    data_len = np.array([len(p.buffers[1]) for p in pages], dtype=np.int64)
    totals = np.array([p.codec.num_items for p in pages], dtype=np.int64)

    page_of = np.repeat(np.arange(len(pages)), per_page)
    first = _starts(per_page)
    last = first + per_page - 1
    nbytes = ((words >> 4) + 1) * CHUNK_ALIGNMENT
    counts = np.left_shift(1, words & 0xF)
    counts[last] = 0
    counts[last] = totals - np.add.reduceat(counts, first)
    if (counts[last] < 0).any():
        raise CorruptFileError("mini-block page holds more values than its layout says")
    offset_in_page = _starts(nbytes)
    offset_in_page -= offset_in_page[first][page_of]
    if (offset_in_page + nbytes > data_len[page_of]).any():
        raise CorruptFileError("mini-block chunk sizes exceed the page's data")
    start = _starts(data_len)[page_of] + offset_in_page
    end = start + nbytes

    header = 2 + 2 * (int(shape.rep) + int(shape.defs)) + size_len
    if (nbytes < header).any():
        raise CorruptFileError("mini-block chunk shorter than its header")
    num_levels = _uints(data, start, 2)
    at = 2
    sizes: dict[str, I64] = {}
    for name, present in (("rep", shape.rep), ("defs", shape.defs)):
        if present:
            sizes[name] = _uints(data, start + at, 2)
            at += 2
    value_size = _uints(data, start + at, size_len)
    cursor = start + _aligned(header)
    levels = _Levels(shape)
    for which, name, present in ((0, "rep", shape.rep), (1, "defs", shape.defs)):
        if present:
            size = sizes[name]
            if (cursor + size > end).any():
                raise CorruptFileError("mini-block chunk levels exceed the chunk")
            # appends with and without nulls compress their levels differently: one pass each
            by_kind: dict[bytes, list[int]] = {}
            for i, p in enumerate(pages):
                by_kind.setdefault(p.codec.levels_key[which], []).append(i)
            if len(by_kind) == 1:
                encoding = codec.rep if name == "rep" else codec.defs
                decoded = _decode_levels_batch(encoding, data, cursor, size, num_levels)
            else:
                decoded = np.zeros(int(num_levels.sum()), dtype=np.uint16)
                dest = _starts(num_levels)
                for members in by_kind.values():
                    chunks = np.flatnonzero(np.isin(page_of, members))
                    first_codec = pages[members[0]].codec
                    encoding = first_codec.rep if name == "rep" else first_codec.defs
                    got = _decode_levels_batch(encoding, data, cursor[chunks], size[chunks], num_levels[chunks])
                    decoded[_spans(dest[chunks], num_levels[chunks])] = got
            (levels.rep if name == "rep" else levels.defs).append(decoded)
            cursor = cursor + size + (-size % CHUNK_ALIGNMENT)
    if (cursor + value_size > end).any():
        raise CorruptFileError("mini-block chunk buffers exceed the chunk")
    run = Run(shape, rows=sum(p.rows for p in pages), levels=[levels], num_values=int(totals.sum()))
    _decode_values_batch(codec, data, cursor, value_size, counts, run)
    levels.count = int(num_levels.sum()) if (shape.rep or shape.defs) else run.num_values
    return run


def _decode_levels_batch(encoding: enc21.CompressiveEncoding | None, data: U8, at: I64, size: I64, count: I64) -> U16:
    assert encoding is not None
    kind = encoding.WhichOneof("compression")
    if kind == "flat":
        if (2 * count > size).any():
            raise CorruptFileError("a chunk's flat levels are shorter than its header says")
        return _gather(data, at, 2 * count).view("<u2").astype(np.uint16)
    if kind == "out_of_line_bitpacking":
        return _out_of_line_batch(encoding.out_of_line_bitpacking.values.flat.bits_per_value, data, at, size, count)
    if kind == "rle":
        return _rle_levels_batch(data, at, size, count)
    widths = _uints(data, at, 2)  # inline bit-packing: the width, then one block
    if (count > 1024).any() or (widths > 16).any() or (size < 2 + 128 * widths).any():
        raise CorruptFileError("bit-packed levels do not fit their chunk")
    return _unpack_chunks(data, at + 2, widths, count, 16).astype(np.uint16, copy=False)


def _rle_levels_batch(data: U8, at: I64, size: I64, count: I64) -> U16:
    """Run-length encoded levels of every chunk at once: a u64 byte length of the runs' 16-bit
    values, those values, then one u8 length per run."""
    if (size < 8).any():
        raise CorruptFileError("run-length encoded levels shorter than their header")
    value_bytes = _uints(data, at, 8)
    runs = value_bytes // 2
    if (value_bytes < 0).any() or (8 + value_bytes + runs > size).any():
        raise CorruptFileError("run-length encoded levels exceed their chunk")
    values = _gather(data, at + 8, 2 * runs).view("<u2")
    lengths = _gather(data, at + 8 + value_bytes, runs)
    ends = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    bounds = _starts(runs)
    if (ends[bounds + runs] - ends[bounds] != count).any():
        raise CorruptFileError("run lengths of a chunk's levels do not add up to its level count")
    return np.repeat(values, lengths).astype(np.uint16, copy=False)


def _out_of_line_batch(width: int, data: U8, at: I64, size: I64, count: I64) -> U16:
    """Levels bit-packed out of line (``_out_of_line``) in every chunk at once: whole blocks of
    1,024, then a partial block either packed and padded or stored as raw 16-bit values."""
    per_block = 1024 * width // 16  # 16-bit words of one packed block
    whole, tail = np.divmod(count, 1024)
    rest = size // 2 - whole * per_block  # words after the whole blocks
    raw_tail = (tail > 0) & (rest == tail)
    packed_tail = (tail > 0) & ~raw_tail
    if (size % 2).any() or (rest < 0).any() or (packed_tail & (rest < per_block)).any():
        raise CorruptFileError("out-of-line bit-packed levels hold fewer values than their chunk says")
    dest = _starts(count)
    blocks = whole + packed_tail
    chunk = np.repeat(np.arange(len(count)), blocks)
    k = np.arange(int(blocks.sum())) - np.repeat(_starts(blocks), blocks)
    block_count = np.where(k < whole[chunk], 1024, tail[chunk])
    out = np.zeros(int(count.sum()), dtype=np.uint16)
    packed = _unpack_chunks(data, at[chunk] + 2 * per_block * k, np.full(len(k), width), block_count, 16)
    out[_spans(dest[chunk] + 1024 * k, block_count)] = packed
    tail_at = at + 2 * per_block * whole
    raw = _gather(data, tail_at[raw_tail], 2 * tail[raw_tail])
    out[_spans((dest + 1024 * whole)[raw_tail], tail[raw_tail])] = raw.view("<u2")
    return out


def _decode_values_batch(codec: _Codec, data: U8, at: I64, size: I64, n: I64, run: Run) -> None:
    shape = codec.shape
    kind = codec.values.WhichOneof("compression")
    if shape.variable:
        width = shape.bits // 8
        if ((n + 1) * width > size).any():
            raise CorruptFileError("variable-width chunk offsets out of range")
        offsets = _gather(data, at, (n + 1) * width).view(f"<u{width}").astype(np.int64)
        bounds = _starts(n + 1)  # where each chunk's offsets start
        firsts, lasts = offsets[bounds], offsets[bounds + n]
        lengths = np.diff(offsets)
        keep = np.ones(len(lengths), dtype=bool)
        keep[(bounds + n)[:-1]] = False  # the step from one chunk's last offset to the next's first
        lengths = lengths[keep]
        if ((n > 0) & ((firsts < (n + 1) * width) | (lasts > size))).any() or (lengths < 0).any():
            raise CorruptFileError("variable-width chunk offsets out of range")
        if len(lengths) and int(lengths.max()) > MAX_VALUE_BYTES:
            raise NotNative(f"values longer than {MAX_VALUE_BYTES} bytes")
        run.lengths.append(lengths)
        run.data.append(_gather(data, at + firsts, lasts - firsts))
        run.nbytes += int(size.sum())
    elif kind == "inline_bitpacking":
        bits = shape.bits
        lanes = 1024 // bits
        widths = _uints(data, at, bits // 8)
        if (n > 1024).any() or (widths > bits).any() or (size < bits // 8 * (1 + widths * lanes)).any():
            raise CorruptFileError("bit-packed values do not fit their chunk")
        run.fixed.append(_unpack_chunks(data, at + bits // 8, widths, n, bits).view(np.uint8))
        run.nbytes += int(n.sum()) * bits // 8
    elif shape.bits == 1:
        packed = (n + 7) // 8
        if (packed > size).any():
            raise CorruptFileError("flat chunk shorter than its values")
        bits_ = np.unpackbits(_gather(data, at, packed), bitorder="little")
        run.fixed.append(bits_[_spans(_starts(packed * 8), n)])
        run.nbytes += int(n.sum())
    else:
        want = n * shape.value_bytes
        if (want > size).any():
            raise CorruptFileError("flat chunk shorter than its values")
        run.fixed.append(_gather(data, at, want))
        run.nbytes += int(want.sum())


# --- fast-lanes bit-packing (1,024 values per block, transposed in lanes) -------------------
_FL_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)


def _unpack_blocks(words: npt.NDArray[np.unsignedinteger], width: int, bits: int) -> npt.NDArray[np.unsignedinteger]:
    """Blocks of 1,024 values, one per row of ``words`` (each ``width * 1024 / bits`` words of
    ``bits`` bits), as a (blocks, 1024) array."""
    dtype = _UINT[bits]
    lanes = 1024 // bits
    k = len(words)
    if width == 0:
        return np.zeros((k, 1024), dtype=dtype)
    packed = np.ascontiguousarray(words).astype(f"<u{bits // 8}", copy=False).reshape(k, width, lanes)
    # Row r of every lane starts at bit r * width of the lane's words and may run into the next
    # word: all rows at once, as (blocks, rows, lanes).
    word, shift = np.divmod(np.arange(bits) * width, bits)
    spill = shift + width > bits
    low = packed[:, word, :] >> shift.astype(dtype)[None, :, None]
    # (a shift by the full word size is not defined: rows that do not spill shift by 0 and are masked)
    high = packed[:, np.minimum(word + 1, width - 1), :] << np.where(spill, bits - shift, 0).astype(dtype)[None, :, None]
    rows = (low | (high * spill.astype(dtype)[None, :, None])) & dtype((1 << width) - 1)
    # Row r = 8a + b of lane l goes to 128 * b + 16 * order[a] + l: for each b, the lanes of the
    # rows a in the order ``_FL_ORDER`` says (a permutation of whole runs of lanes).
    runs = bits // 8
    by_order = np.argsort(np.array(_FL_ORDER[:runs]) * bits // 64)
    by_b = rows.reshape(k, runs, 8, lanes).transpose(0, 2, 1, 3)
    out: npt.NDArray[np.unsignedinteger] = by_b[:, :, by_order, :].reshape(k, 1024)
    return out


def _pack_blocks(values: npt.NDArray[np.unsignedinteger], width: int, bits: int) -> npt.NDArray[np.unsignedinteger]:
    """The inverse of ``_unpack_blocks``: blocks of 1,024 ``bits``-bit values (one per row of
    ``values``, each below ``2**width``) as ``width * 1024 / bits`` words each, in the
    fast-lanes order."""
    dtype = _UINT[bits]
    lanes = 1024 // bits
    k = len(values)
    words = np.zeros((k, width, lanes), dtype=dtype)
    if width == 0:
        return words.reshape(k, 0)
    runs = bits // 8
    inverse = np.argsort(np.argsort(np.array(_FL_ORDER[:runs]) * bits // 64))
    rows = values.astype(dtype, copy=False).reshape(k, 8, runs, lanes)[:, :, inverse, :].transpose(0, 2, 1, 3)
    rows = rows.reshape(k, bits, lanes)
    for r in range(bits):
        word, shift = divmod(r * width, bits)
        words[:, word, :] |= rows[:, r, :] << dtype(shift)
        if shift + width > bits:
            words[:, word + 1, :] |= rows[:, r, :] >> dtype(bits - shift)
    return words.reshape(k, width * lanes)


#: The encoding of an all-null page of a flat column (AllNullLayout with one nullable item layer).
_NULL_PAGE = any_pb2.Any(
    type_url=LAYOUT_URL,
    value=enc21.PageLayout(all_null_layout=enc21.AllNullLayout(layers=[enc21.REPDEF_NULLABLE_ITEM])).SerializeToString(),
).SerializeToString(deterministic=True)


def _unpacked(parts: Sequence[Any]) -> list[Any]:
    """``parts`` with every Packed block replaced by its wanted values (blocks of one bit width
    and word size are unpacked in one numpy pass)."""
    out = list(parts)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, part in enumerate(parts):
        if isinstance(part, Packed):
            groups.setdefault((part.bits, part.width), []).append(i)
    for (bits, width), where in groups.items():
        blocks = _unpack_blocks(np.stack([parts[i].words for i in where]), width, bits)
        for row, i in enumerate(where):
            out[i] = blocks[row, : parts[i].count]
    return out


def _levels(parts: Sequence[U16 | Packed]) -> U16:
    """The levels of a run in order."""
    arrays = _unpacked(parts)
    return np.concatenate(arrays).astype(np.uint16, copy=False) if arrays else np.zeros(0, np.uint16)


def _out_of_line(words: U16, width: int, count: int) -> list[U16 | Packed]:
    """Levels bit-packed in whole blocks; a last partial block is either packed (padded) or
    stored as raw 16-bit values, told apart by the buffer's length."""
    per_block = 1024 * width // 16
    whole, tail = divmod(count, 1024)
    if len(words) < whole * per_block:
        raise CorruptFileError(f"out-of-line bit-packed levels hold fewer than {count} values")
    parts: list[U16 | Packed] = [Packed(words[i * per_block : (i + 1) * per_block], width, 1024) for i in range(whole)]
    if tail:
        rest = words[whole * per_block :]
        if len(rest) == tail:
            parts.append(rest)
        elif len(rest) >= per_block:
            parts.append(Packed(rest[:per_block], width, tail))
        else:
            raise CorruptFileError(f"out-of-line bit-packed levels hold fewer than {count} values")
    return parts


# --- encoding ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedPage:
    """A page ready to write: its buffers in order and the Page message's encoding bytes."""

    buffers: tuple[bytes, ...]
    encoding: bytes
    rows: int


def encode_page(run: Run) -> EncodedPage:
    """One page holding all of ``run``: flat values (offsets then bytes when variable-width;
    bit-packed when fixed-width values of a flat column fit in fewer bits), flat 16-bit levels,
    chunks of a power of two of values, a repetition index when there are lists. The bytes
    follow the layout pylance writes for the same file version."""
    shape = run.shape
    n = run.num_values
    if shape.null:
        return EncodedPage((), _NULL_PAGE, run.rows)
    if n == 0:
        raise NotNative("pages without values")
    rep, defs = _run_levels(run)
    levels = len(rep) if rep is not None else len(defs) if defs is not None else 0
    values = _Values.of(run)
    level_end = _level_ends(shape, defs, levels, n)
    if not shape.variable and values.per and rep is None and (levels == 0 or levels == n):
        # fixed-width values with no levels or one definition level each (flat columns)
        flat_defs = defs if levels else None
        if not shape.items and shape.bits in (8, 16, 32, 64):
            packed = _encode_bitpacked(values.fixed, n, shape, run.rows, flat_defs)
            if packed is not None:
                return packed
        return _encode_fixed(values.fixed, values.per, n, shape, run.rows, flat_defs)
    return _encode_chunked(run, rep, defs, level_end, values)


def _run_levels(run: Run) -> tuple[U16 | None, U16 | None]:
    """The run's repetition and definition levels in order, each page's definition levels
    renumbered into the run's layers (``combine``); None where the shape has none."""
    shape = run.shape
    rep = np.concatenate([_levels(part.rep) for part in run.levels]) if shape.rep else None
    if not shape.defs:
        return rep, None
    parts = []
    for part in run.levels:
        found = _levels(part.defs) if part.shape.defs else np.zeros(part.count, np.uint16)
        if part.shape.null:
            found = np.ones(part.count, np.uint16)  # a null item in its (only) nullable layer
        if part.shape.layers != shape.layers:
            found = _def_mapping(part.shape, shape).astype(np.uint16)[found]
        parts.append(found)
    return rep, np.concatenate(parts)


@dataclass(frozen=True)
class _Values:
    """A run's values laid out to be cut into chunks: ``cost[i]`` is the bytes values [0, i)
    take in a chunk (offsets included when variable-width)."""

    cost: I64
    per: int = 0  # bytes per fixed-width value (0: 1-bit values, or variable-width ones)
    fixed: U8 = field(default_factory=lambda: np.zeros(0, np.uint8))  # fixed-width values' bytes
    ends: I64 = field(default_factory=lambda: np.zeros(1, np.int64))  # variable-width: where each value ends
    data: U8 = field(default_factory=lambda: np.zeros(0, np.uint8))  # variable-width: the values' bytes

    @classmethod
    def of(cls, run: Run) -> _Values:
        shape, n = run.shape, run.num_values
        if shape.variable:
            lengths = np.concatenate([np.zeros(x, np.int64) if isinstance(x, int) else x for x in run.lengths])
            data = np.concatenate(run.data) if run.data else np.zeros(0, np.uint8)
            ends = np.concatenate(([0], np.cumsum(lengths)))
            return cls(ends + np.arange(n + 1) * (shape.bits // 8), ends=ends, data=data)
        per = shape.value_bytes
        parts = _unpacked(run.fixed)
        fixed = np.concatenate([np.zeros(x * max(per, 1), np.uint8) if isinstance(x, int) else x.view(np.uint8) for x in parts])
        return cls(np.arange(n + 1) * per if per else np.arange(n + 1) // 8, per, fixed)


def _level_ends(shape: Shape, defs: U16 | None, levels: int, n: int) -> I64:
    """``level_end[i]``: the levels that belong to the first i values (a chunk takes the levels
    up to its last value; levels of null or empty lists after it start the next chunk)."""
    visible = shape.max_visible_def
    if levels == 0:
        return np.zeros(n + 1, dtype=np.int64)
    if levels == n:
        return np.arange(n + 1)
    if visible is not None and defs is not None:
        shown = np.flatnonzero(defs <= visible)
        if len(shown) != n:
            raise CorruptFileError(f"definition levels show {len(shown)} values, the pages hold {n}")
        return np.concatenate(([0], shown + 1))
    raise CorruptFileError(f"{levels} levels for {n} values without lists")


def _encode_chunked(run: Run, rep: U16 | None, defs: U16 | None, level_end: I64, values: _Values) -> EncodedPage:
    """``encode_page`` chunk by chunk: each takes as many values as fit (``_chunk_values``)."""
    shape, n = run.shape, run.num_values
    levels = len(rep) if rep is not None else len(defs) if defs is not None else 0
    level_bytes = 2 * ((1 if shape.rep else 0) + (1 if shape.defs else 0))
    header = _aligned(2 + 2 * (int(shape.rep) + int(shape.defs)) + (4 if shape.wide else 2))
    meta: list[int] = []
    body = bytearray()
    rep_index: list[int] = []
    start = lstart = 0
    while start < n:
        count = _chunk_values(values.cost, level_end, start, n, level_bytes, header)
        end = start + count
        last = end >= n
        lend = levels if last else int(level_end[end])
        chunk = bytearray(struct.pack("<H", lend - lstart))
        if shape.rep:
            chunk += struct.pack("<H", 2 * (lend - lstart))
        if shape.defs:
            chunk += struct.pack("<H", 2 * (lend - lstart))
        value_bytes = _chunk_value_bytes(shape, values, start, end)
        chunk += struct.pack("<I" if shape.wide else "<H", len(value_bytes))
        _pad(chunk)
        for stream in (rep, defs):
            if stream is not None:
                chunk += stream[lstart:lend].astype("<u2").tobytes()
                _pad(chunk)
        chunk += value_bytes
        _pad(chunk)
        if len(chunk) > MAX_CHUNK_BYTES:
            raise NotNative(f"a chunk of {count} values needs {len(chunk)} bytes")
        log = 0 if last else count.bit_length() - 1
        meta.append(((len(chunk) // CHUNK_ALIGNMENT - 1) << 4) | log)
        if rep is not None:
            _index_chunk(rep_index, rep[lstart:lend], shape.max_rep, first=start == 0, last=last)
        body += chunk
        start, lstart = end, lend
    buffers = [np.array(meta, dtype="<u4" if shape.wide else "<u2").tobytes(), bytes(body)]
    if rep is not None:
        if sum(rep_index[0::2]) != run.rows:
            raise CorruptFileError(f"repetition levels end {sum(rep_index[0::2])} rows, the pages hold {run.rows}")
        buffers.append(np.array(rep_index, dtype="<u8").tobytes())
    return EncodedPage(tuple(buffers), _layout_bytes(shape, n), run.rows)


def _chunk_value_bytes(shape: Shape, values: _Values, start: int, end: int) -> bytes:
    """Values [start, end) as one chunk's value buffer."""
    if shape.variable:
        width = shape.bits // 8
        ends = values.ends
        offsets = ends[start : end + 1] - ends[start] + (end - start + 1) * width
        out: bytes = offsets.astype(f"<u{width}").tobytes() + values.data[int(ends[start]) : int(ends[end])].tobytes()
        return out + bytes(-len(out) % width)  # the reader wants whole offset-width units
    if shape.bits == 1:
        return bytes(np.packbits(values.fixed[start:end], bitorder="little").tobytes())
    return bytes(values.fixed[start * values.per : end * values.per].tobytes())


def _encode_fixed(fixed: U8, per: int, n: int, shape: Shape, rows: int, defs: U16 | None = None) -> EncodedPage:
    """``encode_page`` for fixed-width values of ``per`` bytes without repetition levels and
    with either no definition levels or one per value: every chunk but the last then holds the
    same power of two of values, so numpy lays the chunks out at once."""
    level_bytes = 2 if defs is not None else 0
    header = len(_flat_chunk_header(0, 0, shape, defs is not None))
    count = 1 << (max(1, min(MAX_CHUNK_VALUES, (CHUNK_TARGET_BYTES - header) // (per + level_bytes))).bit_length() - 1)
    full, rest = divmod(n, count)
    if rest == 0 and full:
        full, rest = full - 1, count  # the last chunk holds whatever remains, here a whole one

    def chunk_header(values: int) -> bytes:
        return _flat_chunk_header(values, values * per, shape, defs is not None)

    parts = []
    level_span = _aligned(count * level_bytes)
    chunk_size = header + level_span + _aligned(count * per)
    if full:
        block = np.full((full, chunk_size), 0xFE, dtype=np.uint8)
        block[:, :header] = np.frombuffer(chunk_header(count), dtype=np.uint8)
        if defs is not None:
            levels = defs[: full * count].astype("<u2").view(np.uint8)
            block[:, header : header + count * 2] = levels.reshape(full, count * 2)
        start = header + level_span
        block[:, start : start + count * per] = fixed[: full * count * per].reshape(full, count * per)
        parts.append(block.tobytes())
    tail = bytearray(chunk_header(rest))
    if defs is not None:
        tail += defs[full * count :].astype("<u2").tobytes()
        _pad(tail)
    tail += fixed[full * count * per : (full * count + rest) * per].tobytes()
    _pad(tail)
    parts.append(bytes(tail))
    if chunk_size > MAX_CHUNK_BYTES or len(tail) > MAX_CHUNK_BYTES:
        raise NotNative(f"chunks of {count} values of {per} bytes do not fit a chunk")
    words = [((chunk_size // CHUNK_ALIGNMENT - 1) << 4) | (count.bit_length() - 1)] * full
    words.append((len(tail) // CHUNK_ALIGNMENT - 1) << 4)
    meta = np.array(words, dtype="<u4" if shape.wide else "<u2").tobytes()
    return EncodedPage((meta, b"".join(parts)), _layout_bytes(shape, n), rows)


#: Bit-packing is written when it takes at most this share of the flat values' bytes (pylance
#: packs integers the same way; values near their full width gain nothing from it).
BITPACK_MAX_SHARE = 0.75


def _encode_bitpacked(fixed: U8, n: int, shape: Shape, rows: int, defs: U16 | None) -> EncodedPage | None:
    """``_encode_fixed`` with the values bit-packed as fast-lanes blocks (chunks of 1,024 values,
    each with the bit width of its largest value, read as unsigned), or None when that would not
    save enough (``BITPACK_MAX_SHARE``)."""
    bits = shape.bits
    size, lanes = bits // 8, 1024 // bits
    k = -(-n // 1024)
    values = np.zeros(k * 1024, dtype=_UINT[bits])
    values[:n] = fixed[: n * size].view(f"<u{size}")
    blocks = values.reshape(k, 1024)
    widths = [int(m).bit_length() for m in blocks.max(axis=1).tolist()]
    value_sizes = [size * (1 + w * lanes) for w in widths]
    if sum(value_sizes) > BITPACK_MAX_SHARE * n * size:
        return None
    packed: list[bytes] = [b""] * k
    for width in set(widths):
        sel = [i for i, w in enumerate(widths) if w == width]
        words = _pack_blocks(blocks[sel], width, bits).astype(f"<u{size}", copy=False)
        for i, row in zip(sel, words):
            packed[i] = int(width).to_bytes(size, "little") + row.tobytes()
    chunks, words_meta = [], []
    for i in range(k):
        count = min(1024, n - i * 1024)
        chunk = bytearray(_flat_chunk_header(count, value_sizes[i], shape, defs is not None))
        if defs is not None:
            chunk += defs[i * 1024 : i * 1024 + count].astype("<u2").tobytes()
            _pad(chunk)
        chunk += packed[i]
        _pad(chunk)
        if len(chunk) > MAX_CHUNK_BYTES:
            return None
        chunks.append(bytes(chunk))
        words_meta.append(((len(chunk) // CHUNK_ALIGNMENT - 1) << 4) | (_LOG2_BLOCK if i < k - 1 else 0))
    meta = np.array(words_meta, dtype="<u4" if shape.wide else "<u2").tobytes()
    return EncodedPage((meta, b"".join(chunks)), _layout_bytes(shape, n, bitpacked=True), rows)


#: log2 of the values in a chunk of fast-lanes blocks (1,024), as a chunk size word says it.
_LOG2_BLOCK = 10


def _flat_chunk_header(values: int, value_bytes: int, shape: Shape, defs: bool) -> bytes:
    """The header of a chunk of ``values`` values of a flat column (one definition level per
    value, or none) with one value buffer of ``value_bytes`` bytes, padded to its aligned size:
    the level count, the levels' bytes, the value buffer's size."""
    head = struct.pack("<H", values if defs else 0)
    if defs:
        head += struct.pack("<H", 2 * values)
    head += struct.pack("<I" if shape.wide else "<H", value_bytes)
    return head + b"\xfe" * (_aligned(len(head)) - len(head))


def _pad(buf: bytearray) -> None:
    buf += b"\xfe" * (-len(buf) % CHUNK_ALIGNMENT)


def _chunk_values(value_cost: I64, level_end: I64, start: int, n: int, level_bytes: int, header: int) -> int:
    """How many values the chunk starting at value ``start`` takes: all the rest when they fit
    (the last chunk may hold any count), else the largest power of two that fits."""

    def cost(count: int) -> int:
        end = start + count
        return header + int(value_cost[end] - value_cost[start]) + level_bytes * int(level_end[end] - level_end[start]) + 24

    rest = n - start
    if rest <= MAX_CHUNK_VALUES and cost(rest) <= CHUNK_TARGET_BYTES:
        return rest
    count = 1 << (min(rest, MAX_CHUNK_VALUES).bit_length() - 1)
    if count == rest:
        count //= 2  # a power of two that is not the last chunk must leave values after it
    while count > 1 and cost(count) > CHUNK_TARGET_BYTES:
        count //= 2
    return max(count, 1)


def _index_chunk(index: list[int], rep: U16, max_rep: int, *, first: bool, last: bool) -> None:
    """Append one chunk's repetition-index entry: the rows that end in it and the levels after
    its last row start that belong to a row finished by a later chunk."""
    starts = np.flatnonzero(rep == max_rep)
    ended = int(len(starts) - (1 if len(starts) and starts[0] == 0 else 0))
    if not first and len(rep) and rep[0] == max_rep and index[-1] != 0:
        index[-2] += 1  # the previous chunk's leftovers were a whole row after all
        index[-1] = 0
    if last:
        index += [ended + 1, 0]
    else:
        leftovers = len(rep) - int(starts[-1]) if len(starts) else len(rep)
        index += [ended, leftovers]


def _layout_bytes(shape: Shape, num_items: int, *, bitpacked: bool = False) -> bytes:
    flat16 = enc21.CompressiveEncoding(flat=enc21.Flat(bits_per_value=16))
    if bitpacked:
        values = enc21.CompressiveEncoding(inline_bitpacking=enc21.InlineBitpacking(uncompressed_bits_per_value=shape.bits))
    elif shape.variable:
        values = enc21.CompressiveEncoding(
            variable=enc21.Variable(offsets=enc21.CompressiveEncoding(flat=enc21.Flat(bits_per_value=shape.bits)))
        )
    else:
        values = enc21.CompressiveEncoding(flat=enc21.Flat(bits_per_value=shape.bits))
        if shape.items:
            values = enc21.CompressiveEncoding(fixed_size_list=enc21.FixedSizeList(items_per_value=shape.items, values=values))
    mb = enc21.MiniBlockLayout(
        value_compression=values,
        layers=[enc21.RepDefLayer.Name(layer) for layer in shape.layers],
        num_buffers=1,
        repetition_index_depth=1 if shape.rep else 0,
        num_items=num_items,
    )
    if shape.rep:
        mb.rep_compression.CopyFrom(flat16)
    if shape.defs:
        mb.def_compression.CopyFrom(flat16)
    inner = mb.SerializeToString(deterministic=True) + (_WIDE_SIZES_BYTES if shape.wide else b"")
    # PageLayout { mini_block_layout (field 1, length-delimited) }
    layout = b"\x0a" + varint(len(inner)) + inner
    return any_pb2.Any(type_url=LAYOUT_URL, value=layout).SerializeToString(deterministic=True)
