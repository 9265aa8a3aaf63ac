"""Lance v2.x data files (file versions 2.0-2.3): read the tail, judge copy safety, write a tail.

A binary-copy compactor moves encoded pages between files without decoding them. That is only
sound when everything that names a file position lives in the metadata we rewrite: the page and
column buffer offsets in ``ColumnMetadata``, the CMO/GBO tables and the footer. This module
reads that metadata, says per column whether the encodings are position independent, and
builds the metadata that follows the copied data region of a new file.

Layout (all little-endian; see the format notes, section 1)::

    [data buffers][GB0 = FileDescriptor][column metadatas][CMO table][GBO table][40-byte footer]

Pure functions over bytes and messages: the caller does the I/O. ``parse_tail`` tells the
caller which bytes it still needs instead of reading them itself.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from google.protobuf import any_pb2

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2, file_pb2
from lance_assets.errors import (
    CompactionRefusedError,
    CorruptFileError,
    UnsupportedVersionError,
)
from lance_assets.format.protobuf import parse

ColumnMetadata = file2_pb2.ColumnMetadata
Page = file2_pb2.ColumnMetadata.Page

MAGIC = b"LANC"
FOOTER_SIZE = 40
ALIGNMENT = 64
#: A tail read of this size holds the whole metadata of typical files in one request.
DEFAULT_TAIL_BYTES = 64 * 1024

_FOOTER = struct.Struct("<QQQIIHH4s")
_ENTRY = struct.Struct("<QQ")  # (position, size) in the CMO and GBO tables

ARRAY_ENCODING_URL = "/lance.encodings.ArrayEncoding"  # 2.0 page encodings (an Any)


class FileVersion(StrEnum):
    """A v2 data-file version. The footer spells 2.0 as (0, 3); the manifest as (2, 0)."""

    V2_0 = "2.0"
    V2_1 = "2.1"
    V2_2 = "2.2"
    V2_3 = "2.3"

    @property
    def footer_pair(self) -> tuple[int, int]:
        """(major, minor) written in the 40-byte footer."""
        return (0, 3) if self._value_ == "2.0" else self.manifest_pair

    @property
    def manifest_pair(self) -> tuple[int, int]:
        """(major, minor) written in the manifest's ``DataFile``."""
        major, minor = self.value.split(".")
        return int(major), int(minor)

    @property
    def aligned(self) -> bool:
        """Whether readers require 64-byte aligned page buffers and global buffers (2.1+)."""
        # Compares the value: looking a member up on the class is slow, and this is per page.
        return self._value_ != "2.0"

    @classmethod
    def from_footer_pair(cls, major: int, minor: int, *, path: str | None = None) -> FileVersion:
        """Map a footer version pair; legacy (0.x) and unknown pairs raise UnsupportedVersionError."""
        found = _FOOTER_VERSIONS.get((major, minor))
        if found is not None:
            return found
        return cls._from_v2_pair(major, minor, path=path, where="footer")

    @classmethod
    def from_manifest_pair(cls, major: int, minor: int, *, path: str | None = None) -> FileVersion:
        """Map a manifest ``DataFile`` version pair (2.0 is (2, 0) there)."""
        return cls._from_v2_pair(major, minor, path=path, where="manifest")

    @classmethod
    def _from_v2_pair(cls, major: int, minor: int, *, path: str | None, where: str) -> FileVersion:
        if major == 0 and minor <= 2:
            raise UnsupportedVersionError(
                f"legacy (v1) Lance data file (version {major}.{minor} in the {where}); the v2 file parser cannot read it",
                path=path,
            )
        for version in cls:
            if version.manifest_pair == (major, minor):
                return version
        raise UnsupportedVersionError(f"unknown Lance file version {major}.{minor} in the {where}", path=path)


_FOOTER_VERSIONS = {v.footer_pair: v for v in FileVersion}


@dataclass(frozen=True)
class Footer:
    """The 40 bytes at the end of every v2 file, validated against the file size."""

    column_meta_start: int
    cmo_table_position: int
    gbo_table_position: int
    num_global_buffers: int
    num_columns: int
    version: FileVersion
    file_size: int


@dataclass(frozen=True)
class NeedMore:
    """``parse_tail`` needs the bytes ``[offset, file_size)``; ``offset`` < the tail it was given."""

    offset: int


@dataclass(frozen=True)
class V2FileMetadata:
    """Everything after the data region of a v2 file, parsed and checked for consistency.

    ``columns`` are the protobuf messages (unknown fields kept) so a copier can re-emit them;
    ``data_end`` is where GB0 starts, i.e. the end of the region holding all data buffers.
    """

    path: str | None
    file_size: int
    footer: Footer
    descriptor: file_pb2.FileDescriptor
    columns: tuple[file2_pb2.ColumnMetadata, ...]
    column_ranges: tuple[tuple[int, int], ...]
    global_buffers: tuple[tuple[int, int], ...]
    data_end: int
    #: The schema's bytes: inputs of one dataset share a schema, so what is worked out from it
    #: is cached by these instead of being redone per file.
    schema_key: bytes = b""

    @property
    def version(self) -> FileVersion:
        return self.footer.version

    @property
    def num_rows(self) -> int:
        return int(self.descriptor.length)

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    @property
    def fields(self) -> tuple[file_pb2.Field, ...]:
        """Schema fields as stored in GB0: pre-order, parents included, with ids."""
        return tuple(self.descriptor.schema.fields)


def padding_for(position: int, alignment: int = ALIGNMENT) -> int:
    """Bytes to add after ``position`` so the next write starts ``alignment``-aligned."""
    return -position % alignment


def parse_footer(data: bytes, file_size: int, *, path: str | None = None) -> Footer:
    """Parse and validate the footer from the last bytes of a file (``data`` ends at EOF).

    The tables must sit exactly where the native writer puts them (CMO table, then GBO table,
    then footer), which also bounds every count by the file size.
    """
    if file_size < FOOTER_SIZE or len(data) < FOOTER_SIZE:
        raise CorruptFileError(f"file of {file_size} bytes is too small for a Lance v2 footer", path=path)
    cm_start, cmo, gbo, n_gb, n_col, major, minor, magic = _FOOTER.unpack(bytes(data[-FOOTER_SIZE:]))
    if magic != MAGIC:
        raise CorruptFileError(f"not a Lance file (magic {magic!r}, expected {MAGIC!r})", path=path)
    version = FileVersion.from_footer_pair(major, minor, path=path)
    footer_pos = file_size - FOOTER_SIZE
    if not cm_start <= cmo <= gbo <= footer_pos:
        raise CorruptFileError(
            f"footer positions out of order (column metadata {cm_start}, CMO table {cmo}, GBO table {gbo}, footer {footer_pos})",
            path=path,
        )
    if gbo - cmo != _ENTRY.size * n_col:
        raise CorruptFileError(f"CMO table of {gbo - cmo} bytes does not hold {n_col} columns", path=path)
    if footer_pos - gbo != _ENTRY.size * n_gb or n_gb < 1:
        raise CorruptFileError(
            f"GBO table of {footer_pos - gbo} bytes does not hold {n_gb} global buffers (at least the schema buffer is required)",
            path=path,
        )
    return Footer(cm_start, cmo, gbo, n_gb, n_col, version, file_size)


def parse_tail(tail: bytes, tail_offset: int, file_size: int, *, path: str | None = None) -> V2FileMetadata | NeedMore:
    """Parse a file's metadata from its last bytes, or say which earlier bytes are missing.

    ``tail`` must be the bytes ``[tail_offset, file_size)``. Read e.g. the last
    ``DEFAULT_TAIL_BYTES``; on ``NeedMore(offset)`` prepend ``[offset, tail_offset)`` and call
    again. Offsets strictly decrease, so the loop ends (normally after at most one extra read).
    """
    if tail_offset < 0 or tail_offset + len(tail) != file_size:
        raise ValueError("tail must hold exactly the bytes [tail_offset, file_size)")
    if len(tail) < FOOTER_SIZE and tail_offset > 0:
        return NeedMore(max(0, file_size - FOOTER_SIZE))
    footer = parse_footer(tail, file_size, path=path)
    if footer.gbo_table_position < tail_offset:
        return NeedMore(footer.column_meta_start)

    # Runs once per input file (10,000 times for a dataset of tiny fragments): tables are read
    # with unpack_from and the column loop stays flat.
    unpack = _ENTRY.unpack_from
    gbo_at = footer.gbo_table_position - tail_offset
    global_buffers = tuple(unpack(tail, gbo_at + i * _ENTRY.size) for i in range(footer.num_global_buffers))
    for i, (pos, size) in enumerate(global_buffers):
        if pos + size > footer.column_meta_start:
            raise CorruptFileError(f"global buffer {i} ({pos}+{size}) overlaps the column metadata", path=path)
        if footer.version.aligned and pos % ALIGNMENT:
            raise CorruptFileError(f"global buffer {i} at {pos} is not 64-byte aligned", path=path)
    gb0_pos, gb0_size = global_buffers[0]
    if gb0_pos < tail_offset:
        return NeedMore(gb0_pos)

    at = gb0_pos - tail_offset
    descriptor = parse(file_pb2.FileDescriptor, tail[at : at + gb0_size], path=path, what="file descriptor (GB0)")
    if not descriptor.HasField("schema"):
        raise CorruptFileError("file descriptor (GB0) has no schema", path=path)
    cmo_at = footer.cmo_table_position - tail_offset
    column_ranges = tuple(unpack(tail, cmo_at + i * _ENTRY.size) for i in range(footer.num_columns))
    region_start, region_end = footer.column_meta_start, footer.cmo_table_position
    version, num_rows = footer.version, descriptor.length
    schema_key = descriptor.schema.SerializeToString(deterministic=True)
    per_row = _values_per_row_of(schema_key, footer.num_columns) if version.aligned else ()
    columns: list[file2_pb2.ColumnMetadata] = []
    for i, (pos, size) in enumerate(column_ranges):
        if pos < region_start or pos + size > region_end:
            raise CorruptFileError(
                f"column {i} metadata ({pos}+{size}) lies outside the column metadata region",
                path=path,
            )
        column = ColumnMetadata()
        at = pos - tail_offset
        try:
            column.ParseFromString(tail[at : at + size])
        except Exception:
            parse(ColumnMetadata, tail[at : at + size], path=path, what=f"column {i} metadata")
            raise
        _check_column(i, column, version, gb0_pos, num_rows, per_row[i] if i < len(per_row) else (1,), path)
        columns.append(column)
    return V2FileMetadata(
        path=path,
        file_size=file_size,
        footer=footer,
        descriptor=descriptor,
        columns=tuple(columns),
        column_ranges=column_ranges,
        global_buffers=global_buffers,
        data_end=gb0_pos,
        schema_key=schema_key,
    )


def _check_buffers(offsets: Sequence[int], sizes: Sequence[int], aligned: bool, data_end: int) -> str | None:
    if len(offsets) != len(sizes):
        return f"{len(offsets)} buffer offsets but {len(sizes)} sizes"
    for pos, size in zip(offsets, sizes, strict=True):
        if pos + size > data_end:
            return f"buffer {pos}+{size} extends past the data region (ends at {data_end})"
        if aligned and pos % ALIGNMENT:
            return f"buffer offset {pos} is not 64-byte aligned"
    return None


def _rows_if_valid(pages: Sequence[Page], data_end: int, mask: int) -> int | None:
    """The values the pages hold when every buffer lies before ``data_end`` with no offset bits
    in ``mask`` set (63 for 64-byte alignment, 0 for none); None when any does not.

    Runs for every page of every input and output file, so it stays flat and builds nothing;
    ``_check_buffers`` names the problem once this says there is one.
    """
    covered = 0
    for page in pages:
        offsets = page.buffer_offsets
        sizes = page.buffer_sizes
        if len(offsets) != len(sizes):
            return None
        for pos, size in zip(offsets, sizes):
            if pos + size > data_end or pos & mask:
                return None
        covered += page.length
    return covered


def _first_page_problem(pages: Sequence[Page], aligned: bool, data_end: int) -> tuple[int, str] | None:
    """The first page ``_rows_if_valid`` rejects, and what is wrong with it (None: none is)."""
    for p, page in enumerate(pages):
        problem = _check_buffers(page.buffer_offsets, page.buffer_sizes, aligned, data_end)
        if problem:
            return p, problem
    return None


def _check_column(
    index: int,
    column: file2_pb2.ColumnMetadata,
    version: FileVersion,
    data_end: int,
    num_rows: int,
    per_row: tuple[int, ...],
    path: str | None,
) -> None:
    """Reject buffers outside the data region, misalignment Lance would reject, and (2.1+) pages
    that do not cover exactly the file's rows: a copier trusts all of these.

    ``per_row`` holds the values one row may count for in this column's page lengths (one
    value, or the candidates when the schema does not say which field owns the column): below a
    fixed-size list of structs each row counts once per list item (``values_per_row``).
    """
    if column.buffer_offsets or column.buffer_sizes:
        problem = _check_buffers(column.buffer_offsets, column.buffer_sizes, False, data_end)
        if problem:
            raise CorruptFileError(f"column {index}: {problem}", path=path)
    mask = ALIGNMENT - 1 if version.aligned else 0
    covered = _rows_if_valid(column.pages, data_end, mask)
    if covered is None:
        found = _first_page_problem(column.pages, bool(mask), data_end)
        if found is None:
            raise AssertionError("unreachable: _rows_if_valid and _check_buffers disagree")
        raise CorruptFileError(f"column {index} page {found[0]}: {found[1]}", path=path)
    if mask and all(covered != num_rows * m for m in per_row):
        if per_row == (1,):
            raise CorruptFileError(f"column {index} pages hold {covered} rows but the file has {num_rows}", path=path)
        counts = " or ".join(f"{num_rows * m}" for m in per_row)
        raise CorruptFileError(
            f"column {index} pages hold {covered} values but the file's {num_rows} rows make {counts} "
            "(fixed-size lists of structs count each item)",
            path=path,
        )


#: Logical types of fixed-size lists: ``fixed_size_list:<item type>:<size>``.
_FIXED_SIZE_LIST = "fixed_size_list:"


def values_per_row(fields: Sequence[file_pb2.Field]) -> tuple[int, ...]:
    """Per column of a 2.1+ file, in column order: how many values one row counts for in its
    page lengths and priorities' units (docs/format.md, "Page lengths").

    Only leaf fields own columns (a packed struct owns one for itself and its children), in
    schema pre-order. A fixed-size list of primitives is one leaf (its items are folded into
    the value), but a fixed-size list of structs keeps child fields, and each column below it
    counts one value per list item: a row counts the product of the sizes of every such list
    above the leaf.
    """
    children: dict[int, list[file_pb2.Field]] = {}
    for f in fields:
        children.setdefault(f.parent_id, []).append(f)
    out: list[int] = []
    seen: set[int] = set()
    stack: list[tuple[file_pb2.Field, int]] = [(f, 1) for f in reversed(children.get(-1, []))]
    while stack:
        f, per = stack.pop()
        if f.id in seen:  # hostile schemas: a field reached twice names no column of its own
            continue
        seen.add(f.id)
        kids = children.get(f.id, []) if f.id != -1 else []
        if not kids or _is_packed(f):
            out.append(per)
            continue
        if f.logical_type.startswith(_FIXED_SIZE_LIST):
            size = f.logical_type.rsplit(":", 1)[-1]
            # (a size Lance could write: hostile digit strings must not reach int())
            per *= int(size) if size.isascii() and size.isdigit() and len(size) <= 9 and int(size) > 0 else 1
        stack.extend((k, per) for k in reversed(kids))
    return tuple(out)


def _is_packed(field: file_pb2.Field) -> bool:
    value = field.metadata.get("packed", field.metadata.get("lance-encoding:packed", b""))
    return bytes(value).lower() == b"true"


@lru_cache(maxsize=256)
def _values_per_row_of(schema: bytes, num_columns: int) -> tuple[tuple[int, ...], ...]:
    """``_values_per_row`` of a serialized schema: the inputs of one compaction share a schema,
    so it is worked out once, not once per file."""
    return _values_per_row(file_pb2.Schema.FromString(schema).fields, num_columns)


def _values_per_row(fields: Sequence[file_pb2.Field], num_columns: int) -> tuple[tuple[int, ...], ...]:
    """``values_per_row`` as candidates per column: exact when the leaves match the columns;
    otherwise (a layout we do not map, e.g. blob fields) any count the schema allows."""
    per_row = values_per_row(fields)
    if len(per_row) == num_columns:
        return tuple((m,) for m in per_row)
    anywhere = tuple(sorted({1, *per_row}))
    return tuple(anywhere for _ in range(num_columns))


# --------------------------------------------------------------------------------------------
# Writing


# --- blob columns ---------------------------------------------------------------------------
#: Field metadata marking a blob v1 column; the extension name of blob v2 columns.
BLOB_METADATA_KEY = "lance-encoding:blob"
BLOB_V2_EXTENSION = "lance.blob.v2"


def is_blob_field(field: file_pb2.Field) -> bool:
    """A blob column: its pages hold positions of blob bytes (or sidecar ids), not values."""
    return field.metadata.get(BLOB_METADATA_KEY, b"").lower() == b"true" or field.extension_name == BLOB_V2_EXTENSION


# --- all-null pages: rows of a file that lacks a column another input has -------------------
#: Logical types whose 2.0 all-null pages still carry buffers (offsets): not synthesised.
_VARIABLE_WIDTH = ("string", "binary", "large_string", "large_binary")


def _any(url: str, value: bytes) -> bytes:
    return any_pb2.Any(type_url=url, value=value).SerializeToString(deterministic=True)


#: The page encoding of an all-null page of a top-level, childless column, as Lance writes it:
#: no buffers, the page's ``length`` says how many rows. It does not depend on the data type.
ALL_NULL_PAGE_ENCODING: dict[FileVersion, bytes] = {
    # 2.0: ArrayEncoding { nullable { all_nulls {} } }
    FileVersion.V2_0: _any(
        ARRAY_ENCODING_URL, enc20.ArrayEncoding(nullable=enc20.Nullable(all_nulls=enc20.Nullable.AllNull())).SerializeToString()
    ),
    # 2.1 and 2.2: PageLayout { all_null_layout { layers: [NULLABLE_ITEM] } }
    **{
        v: _any(
            "/lance.encodings21.PageLayout",
            enc21.PageLayout(all_null_layout=enc21.AllNullLayout(layers=[enc21.REPDEF_NULLABLE_ITEM])).SerializeToString(),
        )
        for v in (FileVersion.V2_1, FileVersion.V2_2)
    },
    # 2.3 (no published proto): PlanarLayout whose structure (field 1) is the explicit form
    # (field 2) with one nullable item (validity kind 2) and no value encoding, then an empty
    # field 4 -- the bytes pylance 14 writes for such a page.
    FileVersion.V2_3: _any("/lance.encodings23.PlanarLayout", b'\n\x0c\x12\n\n\x08\n\x06\x08\x02\x12\x02\x1a\x00\x12\x02"\x00'),
}


def null_fillable_fields(fields: Sequence[file_pb2.Field], version: FileVersion) -> frozenset[int]:
    """Field ids whose rows a file may lack in a merged output: each such input contributes one
    all-null page (``ColumnMerger.add_all_null``). Only top-level fields with no child fields
    qualify (a struct or list needs validity or offsets buffers), not dictionaries or blobs, and
    in 2.0 not variable-width types (their all-null pages still hold offsets)."""
    parents = {f.parent_id for f in fields}
    out = set()
    for f in fields:
        if f.parent_id != -1 or f.id in parents or f.logical_type.startswith("dict:") or is_blob_field(f):
            continue
        if version is FileVersion.V2_0 and f.logical_type in _VARIABLE_WIDTH:
            continue
        out.add(f.id)
    return frozenset(out)


def all_null_page(version: FileVersion, rows: int, row_offset: int) -> Page:
    """One all-null page of ``rows`` rows starting at ``row_offset`` (no buffers)."""
    page = Page(length=rows, priority=row_offset)
    page.encoding.direct.encoding = ALL_NULL_PAGE_ENCODING[version]
    return page


def is_struct_header_column(column: file2_pb2.ColumnMetadata) -> bool:
    """A 2.0 struct column: every page is ``ArrayEncoding.struct`` with no buffers.

    2.0 readers accept exactly one page for such a column, so merged files must collapse them.
    """
    if not column.pages or column.buffer_offsets:
        return False
    for page in column.pages:
        if page.buffer_offsets or page.encoding.WhichOneof("location") != "direct":
            return False
        if not _is_struct_encoding(page.encoding.direct.encoding):
            return False
    return True


@functools.lru_cache(maxsize=1024)
def _is_struct_encoding(blob: bytes) -> bool:
    wrapped = any_pb2.Any()
    array = enc20.ArrayEncoding()
    try:
        wrapped.ParseFromString(blob)
        array.ParseFromString(wrapped.value)
    except Exception:
        return False
    return wrapped.type_url == ARRAY_ENCODING_URL and array.WhichOneof("array_encoding") == "struct"


def merge_column(
    parts: Sequence[file2_pb2.ColumnMetadata],
    relocations: Sequence[int | Callable[[int], int]],
    row_offsets: Sequence[int],
    version: FileVersion,
    *,
    path: str | None = None,
) -> file2_pb2.ColumnMetadata:
    """The output ColumnMetadata for one column whose input files were copied in order.

    ``relocations[k]`` says where file k's bytes went: an int is a constant shift (output
    position - input position), a function maps each input buffer offset to its output offset
    (when only some of a file's extents were copied). ``row_offsets[k]`` is the rows written
    before file k. Refuses (CompactionRefusedError) column encodings that differ between files
    and column-level buffers; 2.0 struct headers collapse into one page.
    """
    if not parts or not len(parts) == len(relocations) == len(row_offsets):
        raise ValueError("parts, relocations and row_offsets must be non-empty and equally long")
    merger = ColumnMerger(version, path=path)
    for part, relocation, rows in zip(parts, relocations, row_offsets, strict=True):
        merger.add(part, relocation, rows)
    return merger.finish()


class ColumnMerger:
    """``merge_column`` one input at a time, so a copier holds only the merged metadata.

    ``add`` each input's ColumnMetadata in file order (with its relocation and row offset,
    as for ``merge_column``), then ``finish``. The checks and the result are those of
    ``merge_column``; an input is refused as soon as it is added.
    """

    def __init__(self, version: FileVersion, *, path: str | None = None) -> None:
        self._version = version
        self._path = path
        self._merged: file2_pb2.ColumnMetadata | None = None
        self._encoding = b""
        self._count = 0
        # 2.0 struct headers collapse into one page: the first page and the summed length.
        self._all_struct = version is FileVersion.V2_0
        self._struct_page: Page | None = None
        self._struct_length = 0
        self._pending_nulls: list[Page] = []  # all-null pages before the first real input

    def add_all_null(self, rows: int, row_offset: int) -> None:
        """Rows of an input that lacks this column: one all-null page (see ``null_fillable_fields``).
        The column-level encoding comes from the inputs that hold the column."""
        if self._version not in ALL_NULL_PAGE_ENCODING:
            raise CompactionRefusedError(f"no all-null page encoding for file version {self._version}", path=self._path)
        page = all_null_page(self._version, rows, row_offset)
        if self._merged is None:
            self._pending_nulls.append(page)
        else:
            self._merged.pages.append(page)
        self._all_struct = False

    def add(self, part: file2_pb2.ColumnMetadata, relocation: int | Callable[[int], int], row_offset: int) -> None:
        k = self._count
        if part.buffer_offsets:
            raise CompactionRefusedError(f"input {k} has column-level buffers", path=self._path)
        encoding = part.encoding.SerializeToString(deterministic=True)
        if self._merged is None:
            self._encoding = encoding
            self._merged = file2_pb2.ColumnMetadata()
            self._merged.CopyFrom(part)
            del self._merged.pages[:]
            self._merged.pages.extend(self._pending_nulls)
        elif encoding != self._encoding:
            raise CompactionRefusedError(f"input {k} has a different column encoding than input 0", path=self._path)
        self._count += 1
        if self._all_struct and is_struct_header_column(part):
            if self._struct_page is None:
                self._struct_page = Page()
                self._struct_page.CopyFrom(part.pages[0])
            self._struct_length += sum(page.length for page in part.pages)
        else:
            self._all_struct = False
        # The pages are copied in C, then only their offsets and priorities change (a message
        # per page built from Python costs several times more on wide files).
        pages = self._merged.pages
        start = len(pages)
        pages.extend(part.pages)
        move, shift = (relocation, 0) if callable(relocation) else (None, relocation)
        for i in range(start, len(pages)):
            page = pages[i]
            if page.encoding.HasField("indirect"):
                del pages[start:]
                raise ValueError("page has a deferred encoding at an absolute position; refuse the file")
            if move is not None:
                # an empty buffer holds no bytes to have been copied: any aligned offset will do
                page.buffer_offsets[:] = [move(o) if n else 0 for o, n in zip(page.buffer_offsets, page.buffer_sizes)]
            elif shift:
                page.buffer_offsets[:] = [o + shift for o in page.buffer_offsets]
            if row_offset:
                page.priority += row_offset

    def finish(self) -> file2_pb2.ColumnMetadata:
        """The merged ColumnMetadata (call once, after the last ``add``)."""
        if self._merged is None:
            raise ValueError("no inputs to merge")
        if self._all_struct and self._struct_page is not None:
            del self._merged.pages[:]
            self._struct_page.length = self._struct_length
            self._struct_page.priority = 0
            self._merged.pages.append(self._struct_page)
        return self._merged


def with_num_rows(descriptor: file_pb2.FileDescriptor, num_rows: int) -> file_pb2.FileDescriptor:
    """Copy of a FileDescriptor with ``length`` set: a merged file must carry the summed count."""
    out = file_pb2.FileDescriptor()
    out.CopyFrom(descriptor)
    out.length = num_rows
    return out


def build_tail(
    data_end: int,
    columns: Sequence[file2_pb2.ColumnMetadata],
    descriptor: file_pb2.FileDescriptor,
    version: FileVersion,
) -> bytes:
    """Bytes to append after ``data_end`` bytes of data to finish a v2 file.

    Zero padding so GB0 starts 64-aligned (required by 2.1+ readers, harmless for 2.0), GB0,
    the column metadatas, the CMO and GBO tables and the footer with ``version.footer_pair``.
    Raises ValueError when a page points past ``data_end`` or is misaligned for ``version``:
    that would be a copier bug producing a file Lance cannot read.
    """
    if not descriptor.HasField("schema"):
        raise ValueError("file descriptor has no schema")
    mask = ALIGNMENT - 1 if version.aligned else 0
    for i, column in enumerate(columns):
        problem = _check_buffers(column.buffer_offsets, column.buffer_sizes, False, data_end)
        if not problem and _rows_if_valid(column.pages, data_end, mask) is None:
            found = _first_page_problem(column.pages, bool(mask), data_end)
            problem = found[1] if found else None
        if problem:
            raise ValueError(f"column {i}: {problem}")
    pad = padding_for(data_end)
    gb0_pos = data_end + pad
    gb0 = descriptor.SerializeToString(deterministic=True)
    out = bytearray(pad)
    out += gb0
    column_meta_start = gb0_pos + len(gb0)
    entries = []
    position = column_meta_start
    for column in columns:
        blob = column.SerializeToString(deterministic=True)
        entries.append((position, len(blob)))
        out += blob
        position += len(blob)
    cmo_position = position
    for entry in entries:
        out += _ENTRY.pack(*entry)
    gbo_position = cmo_position + _ENTRY.size * len(entries)
    out += _ENTRY.pack(gb0_pos, len(gb0))
    major, minor = version.footer_pair
    out += _FOOTER.pack(column_meta_start, cmo_position, gbo_position, 1, len(columns), major, minor, MAGIC)
    return bytes(out)
