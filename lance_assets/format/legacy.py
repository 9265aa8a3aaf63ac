"""Legacy (0.x) Lance data files: footer, metadata block, embedded schema and page tables.

A legacy file (dataset storage version "0.1"/"legacy", file version 0.0–0.2) is laid out as::

    [page data, batch-major] [page table] [statistics pages] [statistics page table]
    [dictionary values] [u32 len + Manifest (schema only)] [u32 len + Metadata]
    [i64 metadata position][u16 major][u16 minor]["LANC"]          <- 16-byte footer

Everything from the page table on is "the tail". An I/O caller reads the last N bytes (say
:data:`DEFAULT_TAIL_SIZE`) and calls :func:`parse_tail`; it returns the parsed
:class:`LegacyFileMetadata` or :class:`NeedMore` with an offset strictly before the tail it was
given; the caller re-reads from there to the end and calls again. The offsets come from the
footer (metadata position), then from Metadata (page table position), so there are at most two
NeedMore in a row once the footer is in hand; one 64 KiB read is enough for typical files.

For merging files (engine/copying/copy_legacy.py, engine/copying/legacy_repage.py) there are writers too:
:func:`shift_positions` / :func:`shift_offsets` rebase a VAR_BINARY page's absolute positions or a
list's offsets, :class:`BitJoiner` re-cuts bit-packed pages at any value, :func:`uniform_batches`
says whether Lance's readers locate a file's batches right, and :func:`build_legacy_tail` writes
the bytes after the page data (page table, embedded schema, Metadata, footer; no statistics).
What each page holds is described in docs/format.md ("Legacy (0.x) page contents").

Pure functions over bytes (no handles, no clocks). Every position, length and count read from
the file is checked against the file size *before* anything is sized from it, so a forged file
yields CorruptFileError instead of a giant allocation or a long loop.
"""

from __future__ import annotations

import enum
import itertools
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lance_assets._proto import file_pb2, table_pb2
from lance_assets.errors import CorruptFileError, UnsupportedFeatureError, UnsupportedVersionError
from lance_assets.format.protobuf import parse

if TYPE_CHECKING:  # pyarrow (and numpy below it) loads on first use, so importing the package stays cheap
    import pyarrow as pa

MAGIC = b"LANC"
FOOTER_SIZE = 16
DEFAULT_TAIL_SIZE = 64 * 1024
#: Footer version pairs Lance maps to its legacy format (the writer emits (0, 2)).
LEGACY_VERSIONS = frozenset({(0, 0), (0, 1), (0, 2)})
_PAGE_ENTRY = struct.Struct("<qq")
# The legacy writer counts values per page in an i32; anything larger is not a Lance file.
_MAX_VALUE_COUNT = 2**31 - 1


@dataclass(frozen=True)
class NeedMore:
    """The tail given was too short: read again from ``offset`` (inclusive) to the end."""

    offset: int


@dataclass(frozen=True)
class LegacyFooter:
    metadata_position: int
    version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class LegacyPage:
    """One page-table entry. ``length`` is a number of values, not bytes."""

    position: int
    length: int


@dataclass(frozen=True)
class LegacyField:
    """A schema field as the file records it (pre-order; parents carry no pages)."""

    id: int
    parent_id: int
    name: str
    logical_type: str
    nullable: bool
    encoding: str  # the writer's hint (PLAIN, VAR_BINARY, DICTIONARY, NONE); readers go by type
    dictionary_offset: int | None = None  # absolute position of a dictionary's values
    dictionary_length: int | None = None  # number of dictionary values


@dataclass(frozen=True)
class LegacyStatistics:
    """Per-batch page statistics: a one-batch page table over its own schema's ids 0..=max."""

    fields: tuple[LegacyField, ...]  # structs named by data field id: null_count/min/max
    field_ids: tuple[int, ...]  # as recorded; includes the struct parents despite Lance's name
    page_table_position: int
    pages: tuple[LegacyPage, ...]  # index = statistics field id

    @property
    def page_table_end(self) -> int:
        return self.page_table_position + len(self.pages) * _PAGE_ENTRY.size


@dataclass(frozen=True)
class LegacyFileMetadata:
    """Everything in a legacy file's tail; ``pages`` is field-major like the file itself."""

    file_size: int
    version: tuple[int, int]
    batch_offsets: tuple[int, ...]  # cumulative rows, starting at 0
    fields: tuple[LegacyField, ...]
    schema_metadata: dict[str, bytes]
    min_field_id: int
    max_field_id: int
    pages: tuple[LegacyPage, ...]
    statistics: LegacyStatistics | None
    page_table_position: int
    manifest_position: int
    metadata_position: int
    #: The embedded Manifest message (no length prefix), kept so a rewrite preserves unknown tags.
    embedded_manifest: bytes = field(repr=False)

    @property
    def num_batches(self) -> int:
        return len(self.batch_offsets) - 1

    @property
    def num_rows(self) -> int:
        return self.batch_offsets[-1]

    @property
    def batch_rows(self) -> tuple[int, ...]:
        b = self.batch_offsets
        return tuple(b[i + 1] - b[i] for i in range(len(b) - 1))

    @property
    def data_end(self) -> int:
        """End of the page data: every data page lies in ``[0, data_end)``."""
        return self.page_table_position

    @property
    def page_table_end(self) -> int:
        return self.page_table_position + len(self.pages) * _PAGE_ENTRY.size

    @property
    def dictionaries_start(self) -> int:
        """Dictionary values (if any) sit between the statistics and the embedded manifest."""
        return self.statistics.page_table_end if self.statistics else self.page_table_end

    @property
    def footer_position(self) -> int:
        return self.file_size - FOOTER_SIZE

    def page(self, field_id: int, batch: int) -> LegacyPage:
        """Entry for (field id, batch); ids without pages (struct parents, gaps) give (0, 0)."""
        in_range = self.min_field_id <= field_id <= self.max_field_id
        if not (in_range and 0 <= batch < self.num_batches):
            raise KeyError((field_id, batch))
        return self.pages[(field_id - self.min_field_id) * self.num_batches + batch]

    @property
    def page_table(self) -> dict[tuple[int, int], tuple[int, int]]:
        """The page table as ``{(field_id, batch): (position, length)}``."""
        nb = self.num_batches
        return {(self.min_field_id + i // nb, i % nb): (p.position, p.length) for i, p in enumerate(self.pages)}


def parse_footer(tail: bytes, file_size: int, *, path: str | None = None) -> LegacyFooter:
    """Parse the 16-byte footer at the end of ``tail`` (any suffix of the file, ≥ 16 bytes).

    v2 files end in the same (major, minor, magic) bytes, so they are recognised here and
    refused with UnsupportedVersionError rather than misread as legacy.
    """
    if file_size < FOOTER_SIZE or len(tail) < FOOTER_SIZE:
        raise CorruptFileError(f"{file_size}-byte file is too short for a Lance footer", path=path)
    position, major, minor = struct.unpack_from("<qHH", tail, len(tail) - FOOTER_SIZE)
    if tail[-4:] != MAGIC:
        raise CorruptFileError(f"bad magic {tail[-4:]!r}, expected {MAGIC!r}", path=path)
    if (major, minor) == (0, 3) or major == 2:
        raise UnsupportedVersionError(f"file version {major}.{minor} is a v2 file, not a legacy (0.x) file", path=path)
    if (major, minor) not in LEGACY_VERSIONS:
        raise UnsupportedVersionError(f"unknown Lance file version {major}.{minor}", path=path)
    if not 0 <= position <= file_size - FOOTER_SIZE - 4:
        raise CorruptFileError(f"metadata position {position} outside the file", path=path)
    return LegacyFooter(metadata_position=position, version=(major, minor))


def parse_tail(tail: bytes, tail_offset: int, file_size: int, *, path: str | None = None) -> LegacyFileMetadata | NeedMore:
    """Parse a legacy file from its last bytes ``tail`` (which start at ``tail_offset``).

    Returns NeedMore(offset) when the tail does not reach back far enough; the offset is always
    smaller than ``tail_offset``, so a caller loop terminates. Raises CorruptFileError or
    UnsupportedVersionError for anything that is not a well-formed legacy file.
    """
    if tail_offset < 0 or tail_offset + len(tail) != file_size:
        raise ValueError(f"{len(tail)}-byte tail at {tail_offset} does not end at {file_size}")
    if file_size < FOOTER_SIZE:
        raise CorruptFileError(f"{file_size}-byte file is too short for a Lance footer", path=path)
    if len(tail) < FOOTER_SIZE:
        return NeedMore(file_size - FOOTER_SIZE)
    footer = parse_footer(tail, file_size, path=path)
    footer_pos = file_size - FOOTER_SIZE
    meta_pos = footer.metadata_position
    if meta_pos < tail_offset:
        return NeedMore(meta_pos)

    def at(pos: int, size: int) -> bytes:
        return tail[pos - tail_offset : pos - tail_offset + size]

    # The writer puts Metadata immediately before the footer and the manifest immediately before
    # Metadata; demanding exact adjacency catches corrupt length prefixes.
    md_bytes = _prefixed(at, meta_pos, footer_pos, "Metadata", path)
    md = parse(file_pb2.Metadata, md_bytes, path=path, what="legacy Metadata")
    offsets = tuple(md.batch_offsets)
    if not offsets or offsets[0] != 0 or any(b < a for a, b in itertools.pairwise(offsets)):
        raise CorruptFileError(f"batch offsets {offsets[:8]} are not cumulative from 0", path=path)
    pt_pos, man_pos = md.page_table_position, md.manifest_position
    stats_md = md.statistics if md.HasField("statistics") else None
    stats_pos = stats_md.page_table_position if stats_md is not None else None
    if man_pos == 0:
        raise CorruptFileError("file has no embedded schema (manifest position 0)", path=path)
    stats_ok = stats_pos is None or pt_pos <= stats_pos <= man_pos
    if not (pt_pos <= man_pos <= meta_pos - 4 and stats_ok):
        raise CorruptFileError(
            f"regions out of order: page table {pt_pos}, statistics {stats_pos}, manifest {man_pos}, metadata {meta_pos}",
            path=path,
        )
    if pt_pos < tail_offset:
        return NeedMore(pt_pos)

    man_bytes = _prefixed(at, man_pos, meta_pos, "embedded manifest", path)
    manifest = parse(table_pb2.Manifest, man_bytes, path=path, what="embedded Manifest")
    fields = tuple(_field(f) for f in manifest.fields)
    ids = [f.id for f in fields]
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise CorruptFileError(f"embedded schema has bad field ids {ids[:16]}", path=path)
    min_id, max_id = min(ids), max(ids)

    # Lance's reader sizes the table from the id range min..=max (gaps and parents hold (0, 0)).
    pt_limit = stats_pos if stats_pos is not None else man_pos
    n_entries = (max_id - min_id + 1) * (len(offsets) - 1)
    pages = _page_table(at, pt_pos, n_entries, pt_limit, pt_pos, "page table", path)

    statistics = None
    if stats_md is not None and stats_pos is not None:  # (set together)
        stat_ids = tuple(stats_md.fields)
        if not stat_ids or min(stat_ids) < 0:
            raise CorruptFileError(f"statistics field ids {stat_ids[:16]} are invalid", path=path)
        stat_pages = _page_table(at, stats_pos, max(stat_ids) + 1, man_pos, stats_pos, "statistics page table", path)
        statistics = LegacyStatistics(
            fields=tuple(_field(f) for f in stats_md.schema),
            field_ids=stat_ids,
            page_table_position=stats_pos,
            pages=stat_pages,
        )
    return LegacyFileMetadata(
        file_size=file_size,
        version=footer.version,
        batch_offsets=offsets,
        fields=fields,
        schema_metadata=dict(manifest.schema_metadata),
        min_field_id=min_id,
        max_field_id=max_id,
        pages=pages,
        statistics=statistics,
        page_table_position=pt_pos,
        manifest_position=man_pos,
        metadata_position=meta_pos,
        embedded_manifest=bytes(man_bytes),
    )


def parse_file(data: bytes, *, path: str | None = None) -> LegacyFileMetadata:
    """Parse a whole legacy file held in memory (tests, small files)."""
    result = parse_tail(data, 0, len(data), path=path)
    assert not isinstance(result, NeedMore)  # the whole file always suffices
    return result


def _prefixed(at: Callable[[int, int], bytes], pos: int, end: int, what: str, path: str | None) -> bytes:
    """The u32-length-prefixed message at ``pos`` that must end exactly at ``end``."""
    (length,) = struct.unpack("<I", at(pos, 4))
    if pos + 4 + length != end:
        raise CorruptFileError(f"{what} at {pos} claims {length} bytes but {end - pos - 4} are there", path=path)
    return at(pos + 4, length)


def _page_table(
    at: Callable[[int, int], bytes], pos: int, n: int, limit: int, data_end: int, what: str, path: str | None
) -> tuple[LegacyPage, ...]:
    """Decode ``n`` (position, length) pairs at ``pos``; the table must end by ``limit`` and
    every page must start in ``[0, data_end]``. Sizes are checked before anything is sliced."""
    if pos + n * _PAGE_ENTRY.size > limit:
        raise CorruptFileError(f"{what} of {n} entries at {pos} runs past {limit}", path=path)
    pages: list[LegacyPage] = []
    for position, length in _PAGE_ENTRY.iter_unpack(at(pos, n * _PAGE_ENTRY.size)):
        if not (0 <= position <= data_end and 0 <= length <= _MAX_VALUE_COUNT):
            raise CorruptFileError(f"{what} entry ({position}, {length}) out of range", path=path)
        pages.append(LegacyPage(position, length))
    return tuple(pages)


def _field(f: file_pb2.Field) -> LegacyField:
    has_dict = f.HasField("dictionary")
    try:
        encoding = file_pb2.Encoding.Name(f.encoding)
    except ValueError:  # a value our .proto does not name
        encoding = str(f.encoding)
    return LegacyField(
        id=f.id,
        parent_id=f.parent_id,
        name=f.name,
        logical_type=f.logical_type,
        nullable=f.nullable,
        encoding=encoding,
        dictionary_offset=f.dictionary.offset if has_dict else None,
        dictionary_length=f.dictionary.length if has_dict else None,
    )


# ---------------------------------------------------------------------------------------------
# What each field's pages contain (decided by the logical type, as Lance's legacy reader does).


class LegacyEncoding(str, enum.Enum):
    """What a field's pages hold. None of them stores validity: legacy files have no nulls
    except as empty var-binary values (Lance reads those back as null in nullable fields)."""

    PLAIN = "plain"  # fixed-width values at position (bools bit-packed, LSB first)
    VAR_BINARY = "var_binary"  # n+1 i64 *absolute* value boundaries at position; bytes before
    DICTIONARY = "dictionary"  # plain integer keys; values at Field.dictionary (absolute offset)
    LIST_OFFSETS = "list_offsets"  # n+1 i32/i64 offsets, relative to the batch's items page
    STRUCT = "struct"  # no pages; children carry the data
    NULL = "null"  # a value count only, no bytes


@dataclass(frozen=True)
class LegacyDictionary:
    offset: int
    length: int
    values_encoding: LegacyEncoding  # PLAIN or VAR_BINARY (the latter holds absolute positions)
    value_bits: int | None


@dataclass(frozen=True)
class FieldLayout:
    field_id: int
    parent_id: int
    name: str
    logical_type: str
    encoding: LegacyEncoding
    value_bits: int | None  # bits per value at the page position (PLAIN, DICTIONARY, LIST_OFFSETS)
    holds_file_positions: bool  # page bytes contain absolute file offsets (must be shifted on copy)
    dictionary: LegacyDictionary | None = None


_FIXED_BITS = {
    "bool": 1, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "halffloat": 16,
    "int32": 32, "uint32": 32, "float": 32, "date32:day": 32, "int64": 64, "uint64": 64,
    "double": 64, "date64:ms": 64, "lance.bfloat16": 16,
}  # fmt: skip
_VAR_BINARY = frozenset({"string", "binary", "large_string", "large_binary", "json"})
_LIST_TYPES = frozenset({"list", "list.struct", "large_list", "large_list.struct"})


def _fixed_bits(lt: str) -> int | None:
    """Bits per value of a fixed-stride logical type, or None if it is not one we know."""
    factor, depth = 1, 0
    while lt.startswith("fixed_size_list:"):  # nesting depth comes from the file: bound it
        depth += 1
        if depth > 32:
            return None
        inner, _, n = lt[len("fixed_size_list:") :].rpartition(":")
        if not (count := _small_int(n)) or not inner:
            return None
        factor, lt = factor * count, inner
    if lt in _FIXED_BITS:
        bits = _FIXED_BITS[lt]
    elif lt.startswith(("time32:",)):
        bits = 32
    elif lt.startswith(("time64:", "timestamp:", "duration:")):
        bits = 64
    elif lt.startswith("decimal:128:"):
        bits = 128
    elif lt.startswith("decimal:256:"):
        bits = 256
    elif lt.startswith("fixed_size_binary:") and (width := _small_int(lt[18:])):
        bits = 8 * width
    else:
        return None
    return bits * factor


def _small_int(text: str) -> int | None:
    """A positive decimal count as Lance writes it (an i32); None for anything else."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) == 0:
        return None
    return int(text)


def page_extent(layout: FieldLayout, page: LegacyPage) -> tuple[int, int]:
    """Byte range ``[start, end)`` of what is stored at ``page.position`` for this field.

    For VAR_BINARY that is the positions array only; the value bytes lie at the absolute
    offsets it lists (just before it, as written by Lance).
    """
    start = page.position
    if layout.encoding is LegacyEncoding.VAR_BINARY:
        return start, start + 8 * (page.length + 1)
    if layout.value_bits is None:  # STRUCT, NULL
        return start, start
    return start, start + (page.length * layout.value_bits + 7) // 8


def field_layouts(meta: LegacyFileMetadata, *, path: str | None = None) -> tuple[FieldLayout, ...]:
    """Classify every schema field, in schema order, and check its pages against the file.

    The copier uses this to find DICTIONARY fields (whose values it stores once per output)
    and VAR_BINARY pages, whose positions arrays hold absolute file offsets. Checks (CorruptFileError): each page's fixed
    part lies inside the data region, and outside lists each page holds one value per batch row
    (list offsets: one more). Unknown logical types raise UnsupportedFeatureError (Lance's own
    legacy reader cannot read them either).
    """
    in_list = _under_list(meta.fields, path)
    batch_rows = meta.batch_rows
    out = []
    for f in meta.fields:
        lt, dictionary = f.logical_type, None
        if lt == "struct":
            enc, bits = LegacyEncoding.STRUCT, None
        elif lt == "null":
            enc, bits = LegacyEncoding.NULL, None
        elif lt in _LIST_TYPES:
            enc, bits = LegacyEncoding.LIST_OFFSETS, 64 if lt.startswith("large") else 32
        elif lt in _VAR_BINARY:
            enc, bits = LegacyEncoding.VAR_BINARY, None
        elif lt.startswith("dict:"):
            enc, dictionary = LegacyEncoding.DICTIONARY, _dictionary(f, meta, path)
            key = lt.split(":")[2]  # dict:<values>:<keys>:<ordered>, checked by _dictionary
            bits = _fixed_bits(key) if key.startswith(("int", "uint")) else None
            if bits is None:
                raise UnsupportedFeatureError(f"field {f.name!r}: unsupported dictionary type {lt!r}", path=path)
        elif (bits := _fixed_bits(lt)) is not None:
            enc = LegacyEncoding.PLAIN
        else:
            raise UnsupportedFeatureError(f"field {f.name!r}: unsupported legacy type {lt!r}", path=path)
        layout = FieldLayout(
            field_id=f.id,
            parent_id=f.parent_id,
            name=f.name,
            logical_type=lt,
            encoding=enc,
            value_bits=bits,
            holds_file_positions=enc is LegacyEncoding.VAR_BINARY,
            dictionary=dictionary,
        )
        if enc is not LegacyEncoding.STRUCT:
            for batch, rows in enumerate(batch_rows):
                page = meta.page(f.id, batch)
                start, end = page_extent(layout, page)
                if end > meta.data_end:
                    raise CorruptFileError(
                        f"field {f.name!r} batch {batch}: page bytes {start}..{end} pass the data region end {meta.data_end}",
                        path=path,
                    )
                want = rows + (enc is LegacyEncoding.LIST_OFFSETS)
                if not in_list[f.id] and page.length != want:
                    raise CorruptFileError(
                        f"field {f.name!r} batch {batch}: page has {page.length} values, expected {want}",
                        path=path,
                    )
        out.append(layout)
    return tuple(out)


def _under_list(fields: tuple[LegacyField, ...], path: str | None) -> dict[int, bool]:
    """field id -> whether some ancestor is a list (then value counts are item counts)."""
    by_id = {f.id: f for f in fields}
    memo: dict[int, bool] = {}  # memoised so a forged deep chain stays linear
    for f in fields:
        chain: list[LegacyField] = []
        seen: set[int] = set()
        cur = f
        while cur.id not in memo:
            if cur.parent_id == -1:
                memo[cur.id] = False
                break
            parent = by_id.get(cur.parent_id)
            if parent is None or cur.id in seen:  # dangling parent or a cycle
                raise CorruptFileError(f"field {f.name!r} has a broken parent chain", path=path)
            seen.add(cur.id)
            chain.append(cur)
            cur = parent
        for node in reversed(chain):
            parent = by_id[node.parent_id]
            memo[node.id] = memo[parent.id] or parent.logical_type in _LIST_TYPES
    return memo


def dictionary_extent(logical_type: str, offset: int, length: int) -> tuple[LegacyEncoding, int | None, int] | None:
    """How the ``length`` values of a ``dict:<values>:<keys>:<ordered>`` field stored at
    ``offset`` are encoded (PLAIN or VAR_BINARY), their bit width, and where what lies at
    ``offset`` ends; None for value types the legacy format cannot hold in a dictionary."""
    parts = logical_type.split(":")
    if len(parts) != 4:
        return None
    if parts[1] in _VAR_BINARY:
        return LegacyEncoding.VAR_BINARY, None, offset + 8 * (length + 1)
    if (bits := _fixed_bits(parts[1])) is not None:
        return LegacyEncoding.PLAIN, bits, offset + (length * bits + 7) // 8
    return None


def _dictionary(f: LegacyField, meta: LegacyFileMetadata, path: str | None) -> LegacyDictionary:
    """Where a dictionary field's values live; they must lie before the embedded manifest."""
    parts = f.logical_type.split(":")
    if len(parts) != 4:
        raise UnsupportedFeatureError(f"field {f.name!r}: unsupported dictionary type {f.logical_type!r}", path=path)
    if f.dictionary_offset is None or f.dictionary_length is None:
        raise CorruptFileError(f"dictionary field {f.name!r} has no dictionary location", path=path)
    off, n = f.dictionary_offset, f.dictionary_length
    found = dictionary_extent(f.logical_type, off, n)
    if found is None:
        raise UnsupportedFeatureError(f"field {f.name!r}: unsupported dictionary values {parts[1]!r}", path=path)
    enc, bits, end = found
    if not (off >= 0 and n >= 0 and end <= meta.manifest_position):
        raise CorruptFileError(f"dictionary of field {f.name!r} at {off} (+{n} values) is out of range", path=path)
    return LegacyDictionary(offset=off, length=n, values_encoding=enc, value_bits=bits)


# ---------------------------------------------------------------------------------------------
# Writing a merged legacy file: shifted positions arrays and a rebuilt tail.

#: Legacy batch offsets are int32 (``Metadata.batch_offsets``), so a file holds at most this many rows.
MAX_ROWS = 2**31 - 1
_BIG_ENDIAN = sys.byteorder == "big"


def shift_positions(positions: bytes, delta: int, *, lo: int, hi: int, path: str | None = None) -> bytes:
    """Add ``delta`` to every little-endian i64 of a VAR_BINARY positions array (or a slice of one).

    Every value must lie in ``[lo, hi]`` (the byte range the page's values occupy in the source)
    and the values must not decrease; anything else is CorruptFileError, so a forged array never
    makes the output point outside what was copied.
    """
    return shift_offsets(positions, 8, delta, lo=lo, hi=hi, path=path, what="positions")


def shift_offsets(
    data: bytes, width: int, delta: int, *, lo: int, hi: int, path: str | None = None, what: str = "offsets"
) -> bytes:
    """Add ``delta`` to every little-endian signed integer of ``width`` bytes (4 or 8) in ``data``.

    The same checks as :func:`shift_positions`: values in ``[lo, hi]`` and non-decreasing
    (CorruptFileError otherwise), and the shifted range must fit the integer type (ValueError).
    Used for VAR_BINARY positions (i64) and list offsets (i32 for lists, i64 for large lists).
    A caller that feeds one array in several slices passes the previous slice's last value as
    ``lo``, which extends the ordering check across the slices.
    """
    if width not in (4, 8):
        raise ValueError(f"offsets of {width} bytes are not supported")
    if len(data) % width:
        raise ValueError(f"offsets array of {len(data)} bytes is not a whole number of {8 * width}-bit integers")
    n = len(data) // width
    if n == 0:
        return b""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = _int_arrow(data, width, n)
    lo_seen, hi_seen = pc.min_max(values).values()
    if lo_seen.as_py() < lo or hi_seen.as_py() > hi:
        raise CorruptFileError(
            f"{what} array holds values {lo_seen.as_py()}..{hi_seen.as_py()} outside the page's range {lo}..{hi}", path=path
        )
    if n > 1 and pc.any(pc.less(values.slice(1), values.slice(0, n - 1))).as_py():
        raise CorruptFileError(f"{what} array is not non-decreasing", path=path)
    limit = 2 ** (8 * width - 1)
    if not (lo + delta >= 0 and hi + delta < limit):
        raise ValueError(f"shift {delta} moves offsets {lo}..{hi} out of the {8 * width}-bit range")
    shifted = pc.add(values, pa.scalar(delta, values.type))
    return _int_bytes(shifted, width, n)


_INT_CODES = {4: "i", 8: "q"}


def _int_arrow(data: bytes, width: int, n: int) -> pa.Array:
    import pyarrow as pa

    arrow_type, code = (pa.int32() if width == 4 else pa.int64()), _INT_CODES[width]
    if _BIG_ENDIAN:  # pyarrow reads native byte order
        swapped = array(code, data)
        swapped.byteswap()
        data = swapped.tobytes()
    return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(data)])


def _int_bytes(values: pa.Array, width: int, n: int) -> bytes:
    buf = values.buffers()[1]
    raw: bytes = buf.to_pybytes()[values.offset * width : (values.offset + n) * width]
    if _BIG_ENDIAN:
        swapped = array(_INT_CODES[width], raw)
        swapped.byteswap()
        raw = swapped.tobytes()
    return raw


def uniform_batches(batch_rows: Sequence[int]) -> bool:
    """Whether Lance's legacy readers locate every batch right: all but the last have the first's size,
    and the last is no larger (they place batch *i* at row *i* × the first batch's size)."""
    if not batch_rows:
        return True
    size = batch_rows[0]
    return all(n == size for n in batch_rows[:-1]) and batch_rows[-1] <= size


class BitJoiner:
    """Concatenates runs of bits (LSB first, as legacy bit-packed pages store them) into bytes.

    ``add(data, offset, nbits)`` appends bits ``offset .. offset + nbits`` of ``data`` and returns
    the bytes completed so far; ``finish()`` returns the last partial byte, zero-padded. Used to
    re-cut boolean pages at row boundaries that do not fall on a byte.
    """

    def __init__(self) -> None:
        self._pending = 0  # bits not yet returned (fewer than 8 between calls)
        self._count = 0

    def add(self, data: bytes, offset: int, nbits: int) -> bytes:
        if min(offset, nbits) < 0 or offset + nbits > 8 * len(data):
            raise ValueError(f"bits {offset}..{offset + nbits} are not inside {len(data)} bytes")
        if nbits == 0:
            return b""
        if self._count == 0 and offset == 0 and nbits % 8 == 0:
            return bytes(data[: nbits // 8])
        value = (int.from_bytes(data, "little") >> offset) & ((1 << nbits) - 1)
        value = self._pending | (value << self._count)
        total = self._count + nbits
        whole = total // 8
        self._count = total - 8 * whole
        self._pending = value >> (8 * whole)
        return (value & ((1 << (8 * whole)) - 1)).to_bytes(whole, "little")

    def finish(self) -> bytes:
        out = bytes([self._pending]) if self._count else b""
        self._pending = self._count = 0
        return out


def build_legacy_tail(
    *,
    data_end: int,
    min_field_id: int,
    max_field_id: int,
    pages: list[LegacyPage] | tuple[LegacyPage, ...],
    batch_offsets: list[int] | tuple[int, ...],
    fields: list[file_pb2.Field] | tuple[file_pb2.Field, ...],
    schema_metadata: dict[str, bytes] | None = None,
    embedded_manifest: bytes | None = None,
) -> bytes:
    """Everything a legacy file holds after its page data, starting at ``data_end``.

    Written in the order Lance's legacy writer uses::

        [page table][u32 len + Manifest (schema only)][u32 len + Metadata]
        [i64 metadata position][u16 0][u16 2]["LANC"]

    ``pages`` is the field-major page table for ids ``min_field_id..=max_field_id`` × batches
    (``(0, 0)`` for struct parents and ids the file does not store); ``batch_offsets`` are the
    cumulative row counts from 0. No statistics are written: Lance's readers treat a file
    without ``Metadata.statistics`` as one without page statistics (the pushdown scan then
    evaluates the filter on every batch). ``embedded_manifest`` (an input's embedded Manifest
    message) is the template for the new one: its fields and schema metadata are replaced,
    everything else, unknown tags included, is kept; without it the manifest pylance writes is
    mirrored (version 1, data_format lance/0.1).
    """
    num_batches = len(batch_offsets) - 1
    if num_batches < 1 or batch_offsets[0] != 0:
        raise ValueError(f"batch offsets {list(batch_offsets[:4])}… must start at 0 with a batch")
    if any(b <= a for a, b in itertools.pairwise(batch_offsets)):
        raise ValueError("batch offsets must strictly increase (no empty batches)")
    if batch_offsets[-1] > MAX_ROWS:
        raise ValueError(f"{batch_offsets[-1]} rows exceed the legacy format's int32 batch offsets")
    if not 0 <= min_field_id <= max_field_id:
        raise ValueError(f"bad field id range {min_field_id}..{max_field_id}")
    if len(pages) != (max_field_id - min_field_id + 1) * num_batches:
        raise ValueError(f"page table has {len(pages)} entries, expected {(max_field_id - min_field_id + 1) * num_batches}")
    ids = [f.id for f in fields]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"schema field ids {ids[:16]} are empty or repeated")
    if min(ids) != min_field_id or max(ids) != max_field_id:
        raise ValueError(f"schema ids span {min(ids)}..{max(ids)}, page table {min_field_id}..{max_field_id}")

    out = bytearray()
    for page in pages:
        if not (0 <= page.position <= data_end and 0 <= page.length <= _MAX_VALUE_COUNT):
            raise ValueError(f"page ({page.position}, {page.length}) lies outside the data region")
        out += _PAGE_ENTRY.pack(page.position, page.length)

    manifest = table_pb2.Manifest()
    if embedded_manifest is not None:
        manifest.ParseFromString(embedded_manifest)
        manifest.ClearField("fields")
        manifest.ClearField("schema_metadata")
    else:
        manifest.version = 1
        manifest.data_format.file_format = "lance"
        manifest.data_format.version = "0.1"
    manifest.fields.extend(fields)
    for key, value in (schema_metadata or {}).items():
        manifest.schema_metadata[key] = value
    manifest_position = data_end + len(out)
    _append_prefixed(out, manifest.SerializeToString())

    metadata = file_pb2.Metadata(
        manifest_position=manifest_position,
        batch_offsets=batch_offsets,
        page_table_position=data_end,
    )
    metadata_position = data_end + len(out)
    _append_prefixed(out, metadata.SerializeToString())
    out += struct.pack("<qHH", metadata_position, 0, 2) + MAGIC
    return bytes(out)


def _append_prefixed(out: bytearray, message: bytes) -> None:
    out += struct.pack("<I", len(message)) + message
