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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf import any_pb2
from google.protobuf.message import Message

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2, file_pb2
from lance_assets.errors import CompactionRefusedError, CorruptFileError, UnsupportedVersionError
from lance_assets.format.protobuf import parse, unknown_field_numbers

ColumnMetadata = file2_pb2.ColumnMetadata
Page = file2_pb2.ColumnMetadata.Page

MAGIC = b"LANC"
FOOTER_SIZE = 40
ALIGNMENT = 64
#: A tail read of this size holds the whole metadata of typical files in one request.
DEFAULT_TAIL_BYTES = 64 * 1024

_FOOTER = struct.Struct("<QQQIIHH4s")
_ENTRY = struct.Struct("<QQ")  # (position, size) in the CMO and GBO tables

_URL_ARRAY_20 = "/lance.encodings.ArrayEncoding"
_URL_COLUMN = "/lance.encodings.ColumnEncoding"
_URL_LAYOUT_21 = "/lance.encodings21.PageLayout"
_URL_PLANAR_23 = "/lance.encodings23.PlanarLayout"

# Oneofs that select "which encoding": unset means a variant our protos do not know.
_SELECTORS = {
    "lance.encodings.ArrayEncoding": "array_encoding",
    "lance.encodings.Nullable": "nullability",
    "lance.encodings.ColumnEncoding": "column_encoding",
    "lance.encodings21.PageLayout": "layout",
    "lance.encodings21.CompressiveEncoding": "compression",
}
# Fields pylance 14 writes in 2.2 page layouts that the snapshot protos lack (observed: a varint
# on mini-block layouts; rep/def descriptions on all-null layouts). They describe page-local
# bytes; any other unknown field is refused.
_KNOWN_EXTENSIONS_22 = {
    "lance.encodings21.MiniBlockLayout": {10},
    "lance.encodings21.AllNullLayout": {6, 7, 8, 9, 10},
}
# 2.3 PlanarLayout (no proto available): top-level fields {1: structure, 2: value plane}; the
# value plane holds one of 1 chunked, 2 zipped, 3 constant, 4 all-null (observed with pylance 14).
_PLANAR_TOP_FIELDS = {1, 2}
_PLANAR_VALUE_KINDS = {1: "chunked", 2: "zipped", 3: "constant", 4: "all-null"}

_BLOB_METADATA_KEY = "lance-encoding:blob"
_BLOB_V2_EXTENSION = "lance.blob.v2"


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
                f"legacy (v1) Lance data file (version {major}.{minor} in the {where}); "
                "the v2 file parser cannot read it",
                path=path,
            )
        for version in cls:
            if version.manifest_pair == (major, minor):
                return version
        raise UnsupportedVersionError(
            f"unknown Lance file version {major}.{minor} in the {where}", path=path
        )


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
        raise CorruptFileError(
            f"file of {file_size} bytes is too small for a Lance v2 footer", path=path
        )
    cm_start, cmo, gbo, n_gb, n_col, major, minor, magic = _FOOTER.unpack(
        bytes(data[-FOOTER_SIZE:])
    )
    if magic != MAGIC:
        raise CorruptFileError(f"not a Lance file (magic {magic!r}, expected {MAGIC!r})", path=path)
    version = FileVersion.from_footer_pair(major, minor, path=path)
    footer_pos = file_size - FOOTER_SIZE
    if not cm_start <= cmo <= gbo <= footer_pos:
        raise CorruptFileError(
            f"footer positions out of order (column metadata {cm_start}, CMO table {cmo}, "
            f"GBO table {gbo}, footer {footer_pos})",
            path=path,
        )
    if gbo - cmo != _ENTRY.size * n_col:
        raise CorruptFileError(
            f"CMO table of {gbo - cmo} bytes does not hold {n_col} columns", path=path
        )
    if footer_pos - gbo != _ENTRY.size * n_gb or n_gb < 1:
        raise CorruptFileError(
            f"GBO table of {footer_pos - gbo} bytes does not hold {n_gb} global buffers "
            "(at least the schema buffer is required)",
            path=path,
        )
    return Footer(cm_start, cmo, gbo, n_gb, n_col, version, file_size)


def parse_tail(
    tail: bytes, tail_offset: int, file_size: int, *, path: str | None = None
) -> V2FileMetadata | NeedMore:
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
            raise CorruptFileError(
                f"global buffer {i} ({pos}+{size}) overlaps the column metadata", path=path
            )
        if footer.version.aligned and pos % ALIGNMENT:
            raise CorruptFileError(f"global buffer {i} at {pos} is not 64-byte aligned", path=path)
    gb0_pos, gb0_size = global_buffers[0]
    if gb0_pos < tail_offset:
        return NeedMore(gb0_pos)

    at = gb0_pos - tail_offset
    descriptor = parse(
        file_pb2.FileDescriptor, tail[at : at + gb0_size], path=path, what="file descriptor (GB0)"
    )
    if not descriptor.HasField("schema"):
        raise CorruptFileError("file descriptor (GB0) has no schema", path=path)
    cmo_at = footer.cmo_table_position - tail_offset
    column_ranges = tuple(unpack(tail, cmo_at + i * _ENTRY.size) for i in range(footer.num_columns))
    region_start, region_end = footer.column_meta_start, footer.cmo_table_position
    version, num_rows = footer.version, descriptor.length
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
        except Exception:  # noqa: BLE001 - parse() names the decode error
            parse(ColumnMetadata, tail[at : at + size], path=path, what=f"column {i} metadata")
            raise
        _check_column(i, column, version, gb0_pos, num_rows, path)
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
    )


def _check_buffers(
    offsets: Sequence[int], sizes: Sequence[int], aligned: bool, data_end: int
) -> str | None:
    if len(offsets) != len(sizes):
        return f"{len(offsets)} buffer offsets but {len(sizes)} sizes"
    for pos, size in zip(offsets, sizes, strict=True):
        if pos + size > data_end:
            return f"buffer {pos}+{size} extends past the data region (ends at {data_end})"
        if aligned and pos % ALIGNMENT:
            return f"buffer offset {pos} is not 64-byte aligned"
    return None


def _check_column(
    index: int,
    column: file2_pb2.ColumnMetadata,
    version: FileVersion,
    data_end: int,
    num_rows: int,
    path: str | None,
) -> None:
    """Reject buffers outside the data region, misalignment Lance would reject, and (2.1+) pages
    that do not cover exactly the file's rows: a copier trusts all of these."""
    if column.buffer_offsets or column.buffer_sizes:
        problem = _check_buffers(column.buffer_offsets, column.buffer_sizes, False, data_end)
        if problem:
            raise CorruptFileError(f"column {index}: {problem}", path=path)
    # This loop runs for every page of every input file, so it stays flat: the common case
    # (every buffer in bounds and aligned) builds nothing; _check_buffers names the problem.
    mask = ALIGNMENT - 1 if version.aligned else 0
    covered = 0
    for page in column.pages:
        offsets = page.buffer_offsets
        sizes = page.buffer_sizes
        if len(offsets) != len(sizes):
            break
        for pos, size in zip(offsets, sizes):
            if pos + size > data_end or pos & mask:
                break
        else:
            covered += page.length
            continue
        break
    else:
        if mask and covered != num_rows:
            raise CorruptFileError(
                f"column {index} pages hold {covered} rows but the file has {num_rows}", path=path
            )
        return
    for p, page in enumerate(column.pages):
        problem = _check_buffers(page.buffer_offsets, page.buffer_sizes, bool(mask), data_end)
        if problem:
            raise CorruptFileError(f"column {index} page {p}: {problem}", path=path)
    raise AssertionError("unreachable: the fast check and _check_buffers disagree")


# --------------------------------------------------------------------------------------------
# Copy safety


@dataclass(frozen=True)
class ColumnSafety:
    """Whether one column can be relocated by rewriting its ColumnMetadata offsets alone.

    ``struct_header`` marks a 2.0 struct column (no buffers) whose pages must be collapsed into
    one when merging. ``deferred_encodings`` and ``column_buffers`` are absolute (position,
    size) pairs that a copier would have to relocate; both currently make a column refused.
    """

    index: int
    reasons: tuple[str, ...]
    struct_header: bool
    deferred_encodings: tuple[tuple[int, int], ...]
    column_buffers: tuple[tuple[int, int], ...]

    @property
    def copyable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None


@dataclass(frozen=True)
class FileSafety:
    """Copy-safety verdict for one file: file-wide reasons plus one entry per column."""

    path: str | None
    version: FileVersion
    file_reasons: tuple[str, ...]
    columns: tuple[ColumnSafety, ...]

    @property
    def copyable(self) -> bool:
        return not self.file_reasons and all(c.copyable for c in self.columns)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every reason, column reasons prefixed with the column index."""
        per_column = (f"column {c.index}: {r}" for c in self.columns for r in c.reasons)
        return (*self.file_reasons, *per_column)


def blob_fields(descriptor: file_pb2.FileDescriptor) -> tuple[file_pb2.Field, ...]:
    """Schema fields that are blob columns (legacy blob metadata or the blob v2 extension).

    Blob pages hold absolute positions of the blob bytes (or point at sidecar files), and in
    2.2+ they are ordinary packed structs, so the schema is the only reliable signal.
    """
    found = []
    for field in descriptor.schema.fields:
        if field.extension_name == _BLOB_V2_EXTENSION:
            found.append(field)
            continue
        metadata = field.metadata
        if metadata and (
            bytes(metadata.get(_BLOB_METADATA_KEY, b"")).lower() == b"true"
            or bytes(metadata.get("ARROW:extension:name", b"")) == _BLOB_V2_EXTENSION.encode()
        ):
            found.append(field)
    return tuple(found)


def inspect_copy_safety(meta: V2FileMetadata) -> FileSafety:
    """Judge every column of a parsed file; undecodable encoding bytes raise CorruptFileError."""
    file_reasons = []
    if len(meta.global_buffers) > 1:
        file_reasons.append(
            f"{len(meta.global_buffers)} global buffers: only the schema buffer (GB0) is rebuilt"
        )
    for field in blob_fields(meta.descriptor):
        file_reasons.append(
            f"blob field {field.name!r} (id {field.id}): blob pages hold absolute positions"
        )
    columns = tuple(_column_safety(i, col, meta) for i, col in enumerate(meta.columns))
    return FileSafety(meta.path, meta.version, tuple(file_reasons), columns)


def copy_refusals(meta: V2FileMetadata, columns: Sequence[int]) -> tuple[str, ...]:
    """Why the given columns of a file cannot be binary copied; empty when they can.

    The copier asks this of every input file, so the common answer (every encoding already
    judged safe, one global buffer, no blob field) costs one dict lookup per page; the full
    ``inspect_copy_safety`` report is built only when something may be wrong.
    """
    pages_ok = _verdicts(meta.version)
    columns_ok = _verdicts("column")
    fast = len(meta.global_buffers) == 1
    for c in columns if fast else ():
        column = meta.columns[c]
        if column.buffer_offsets or columns_ok.get(column.encoding.direct.encoding) != ():
            fast = False
            break
        for page in column.pages:
            if pages_ok.get(page.encoding.direct.encoding) != ():
                fast = False
                break
        if not fast:
            break
    if fast and not blob_fields(meta.descriptor):
        return ()
    safety = inspect_copy_safety(meta)
    wanted = set(columns)
    per_column = (f"column {c.index}: {c.reason}" for c in safety.columns if c.index in wanted and not c.copyable)
    return (*safety.file_reasons, *per_column)


def _column_safety(index: int, column: file2_pb2.ColumnMetadata, meta: V2FileMetadata) -> ColumnSafety:
    reasons: dict[str, None] = {}  # ordered set: one line per distinct problem
    deferred: list[tuple[int, int]] = []
    path = meta.path
    version = meta.version
    col_buffers: tuple[tuple[int, int], ...] = ()
    if column.buffer_offsets or column.buffer_sizes:
        col_buffers = tuple(zip(column.buffer_offsets, column.buffer_sizes, strict=True))
        reasons["column-level buffers (per-file data the column encoding describes)"] = None
    blob = _encoding_bytes(column.encoding, deferred, reasons, "column encoding")
    if blob is not None:
        for r in _verdict(_verdicts("column"), blob, lambda: _column_encoding_reasons(blob, path, index)):
            reasons[r] = None
    # Per page of every input file: one dict lookup when the encoding bytes were judged before.
    table = _verdicts(version)
    for p, page in enumerate(column.pages):
        found = table.get(page.encoding.direct.encoding)
        if found is None:
            encoding = page.encoding
            if encoding.HasField("direct"):
                blob = encoding.direct.encoding
                found = _verdict(table, blob, lambda: _page_encoding_reasons(blob, version, path, f"column {index} page {p}"))
            else:
                _encoding_bytes(encoding, deferred, reasons, "page encoding")
                continue
        for r in found:
            reasons[r] = None
    struct_header = version is FileVersion.V2_0 and is_struct_header_column(column)
    return ColumnSafety(index, tuple(reasons), struct_header, tuple(deferred), col_buffers)


# Verdicts on encoding bytes, which repeat across files (a few distinct values per column):
# judging each distinct value once keeps copy-safety checks off the per-file cost. The verdict
# depends on the bytes and the table (column encodings, or page encodings of one file version)
# only; bytes that do not parse raise and are not kept. Empty bytes are never kept: they are
# also what an absent direct encoding reads as.
_VERDICTS: dict[object, dict[bytes, tuple[str, ...]]] = {}
_VERDICTS_LIMIT = 8192


def _verdicts(kind: object) -> dict[bytes, tuple[str, ...]]:
    table = _VERDICTS.get(kind)
    if table is None:
        table = _VERDICTS[kind] = {}
    return table


def _verdict(table: dict[bytes, tuple[str, ...]], blob: bytes, judge: Callable[[], Sequence[str]]) -> tuple[str, ...]:
    found = table.get(blob) if blob else None
    if found is None:
        found = tuple(judge())
        if blob:
            if len(table) >= _VERDICTS_LIMIT:
                table.clear()
            table[blob] = found
    return found


def _encoding_bytes(
    encoding: file2_pb2.Encoding,
    deferred: list[tuple[int, int]],
    reasons: dict[str, None],
    what: str,
) -> bytes | None:
    kind = encoding.WhichOneof("location")
    if kind == "direct":
        return encoding.direct.encoding
    if kind == "indirect":
        loc = (encoding.indirect.buffer_location, encoding.indirect.buffer_length)
        deferred.append(loc)
        reasons[f"deferred {what} (absolute location; Lance readers do not support it)"] = None
    else:
        reasons[f"missing {what}"] = None
    return None


def _unpack_any(blob: bytes, path: str | None, what: str) -> any_pb2.Any:
    return parse(any_pb2.Any, blob, path=path, what=what)


def _column_encoding_reasons(blob: bytes, path: str | None, index: int) -> list[str]:
    wrapped = _unpack_any(blob, path, f"column {index} encoding")
    if wrapped.type_url != _URL_COLUMN:
        return [f"unknown column encoding type {wrapped.type_url!r}"]
    enc = parse(enc20.ColumnEncoding, wrapped.value, path=path, what=f"column {index} encoding")
    reasons = list(_tree_reasons(enc, {}))
    kind = enc.WhichOneof("column_encoding")
    if kind == "blob":
        reasons.append("blob column encoding (pages hold absolute blob positions)")
    elif kind == "zone_index":
        reasons.append("column statistics (zone index) describe one file only")
    return reasons


def _page_encoding_reasons(blob: bytes, version: FileVersion, path: str | None, what: str) -> list[str]:
    wrapped = _unpack_any(blob, path, f"{what} encoding")
    expected = {
        FileVersion.V2_0: _URL_ARRAY_20,
        FileVersion.V2_1: _URL_LAYOUT_21,
        FileVersion.V2_2: _URL_LAYOUT_21,
        FileVersion.V2_3: _URL_PLANAR_23,
    }[version]
    if wrapped.type_url != expected:
        return [f"unexpected page encoding type {wrapped.type_url!r} in a {version} file"]
    if version is FileVersion.V2_0:
        return list(_tree_reasons(parse(enc20.ArrayEncoding, wrapped.value, path=path, what=what), {}))
    if version is FileVersion.V2_3:
        return _planar_reasons(wrapped.value)
    layout = parse(enc21.PageLayout, wrapped.value, path=path, what=what)
    allowed = _KNOWN_EXTENSIONS_22 if version is FileVersion.V2_2 else {}
    reasons = list(_tree_reasons(layout, allowed))
    if layout.WhichOneof("layout") == "blob_layout":
        reasons.append("blob page layout (page holds absolute blob positions)")
    return reasons


def _tree_reasons(msg: Message, allowed_unknown: dict[str, set[int]]) -> Iterator[str]:
    """Walk a decoded encoding tree for anything that is not provably page-local."""
    name = msg.DESCRIPTOR.full_name
    unknown = set(unknown_field_numbers(msg)) - allowed_unknown.get(name, set())
    if unknown:
        yield f"unknown encoding: {name} has unknown field(s) {sorted(unknown)}"
    selector = _SELECTORS.get(name)
    if selector and msg.WhichOneof(selector) is None:
        yield f"unknown encoding: {name} selects no known variant"
    if isinstance(msg, enc20.Buffer) and msg.buffer_type != enc20.Buffer.page:
        kind = {enc20.Buffer.column: "column", enc20.Buffer.file: "file"}.get(msg.buffer_type)
        yield f"encoding references a {kind or msg.buffer_type} buffer, not a page buffer"
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        children = value if field.is_repeated else [value]
        for child in children:
            yield from _tree_reasons(child, allowed_unknown)


def _wire_fields(data: bytes) -> list[tuple[int, int, bytes | int]] | None:
    """Top-level (field, wire type, value) of a protobuf message; None when malformed."""
    fields: list[tuple[int, int, bytes | int]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        result = shift = 0
        while True:
            if i >= len(data) or shift > 63:
                raise ValueError
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    try:
        while i < len(data):
            key = varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == 0:
                fields.append((number, wire, varint()))
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if i + width > len(data):
                    return None
                fields.append((number, wire, data[i : i + width]))
                i += width
            elif wire == 2:
                size = varint()
                if i + size > len(data):
                    return None
                fields.append((number, wire, data[i : i + size]))
                i += size
            else:
                return None
    except ValueError:
        return None
    return fields


def _planar_reasons(value: bytes) -> list[str]:
    """Conservative shape check of a 2.3 PlanarLayout (we have no proto for it).

    Accept only the shapes pylance 14 was observed to write, all of which proved position
    independent (identical encodings and page bytes when the same data is written at other
    file offsets, and merged files read back correctly). Anything else is refused.
    """
    top = _wire_fields(value)
    if top is None:
        return ["malformed 2.3 PlanarLayout"]
    numbers = [number for number, _, _ in top]
    if not set(numbers) <= _PLANAR_TOP_FIELDS or numbers.count(2) != 1:
        return [f"unknown 2.3 PlanarLayout shape (fields {numbers})"]
    _, wire, plane_value = next(f for f in top if f[0] == 2)
    plane = _wire_fields(plane_value) if wire == 2 and isinstance(plane_value, bytes) else None
    if plane is None or len(plane) != 1 or plane[0][1] != 2 or plane[0][0] not in _PLANAR_VALUE_KINDS:
        kinds = [n for n, _, _ in plane or []]
        return [f"unknown 2.3 PlanarLayout value plane (fields {kinds})"]
    return []


# --------------------------------------------------------------------------------------------
# Writing


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
    except Exception:  # noqa: BLE001 - undecodable means "not a struct header"
        return False
    return wrapped.type_url == _URL_ARRAY_20 and array.WhichOneof("array_encoding") == "struct"


def merge_struct_header_pages(pages: Sequence[file2_pb2.ColumnMetadata.Page]) -> Page:
    """One struct page spanning all input pages: length = sum of lengths, priority 0.

    The sum (not the row count) is right also for a struct nested in a list, whose length is
    an item count.
    """
    if not pages:
        raise ValueError("no struct pages to merge")
    merged = Page()
    merged.CopyFrom(pages[0])
    merged.length = sum(page.length for page in pages)
    merged.priority = 0
    return merged


def relocate_page(
    page: file2_pb2.ColumnMetadata.Page, new_offsets: Sequence[int], row_offset: int
) -> Page:
    """Copy of ``page`` with new absolute buffer offsets and ``priority += row_offset``.

    Everything else (sizes, length, encoding bytes, unknown fields) stays byte-identical.
    """
    if len(new_offsets) != len(page.buffer_offsets):
        raise ValueError(f"{len(new_offsets)} offsets for {len(page.buffer_offsets)} buffers")
    if page.encoding.WhichOneof("location") == "indirect":
        raise ValueError("page has a deferred encoding at an absolute position; refuse the file")
    moved = Page()
    moved.CopyFrom(page)
    moved.buffer_offsets[:] = [int(o) for o in new_offsets]
    moved.priority = page.priority + row_offset
    return moved


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
        move = relocation if callable(relocation) else None
        for i in range(start, len(pages)):
            page = pages[i]
            if page.encoding.HasField("indirect"):
                del pages[start:]
                raise ValueError("page has a deferred encoding at an absolute position; refuse the file")
            if move is not None:
                page.buffer_offsets[:] = [move(o) for o in page.buffer_offsets]
            elif relocation:
                page.buffer_offsets[:] = [o + relocation for o in page.buffer_offsets]
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
        for page in column.pages:  # flat: one pass over every output page
            offsets = page.buffer_offsets
            sizes = page.buffer_sizes
            bad = len(offsets) != len(sizes)
            for pos, size in zip(offsets, sizes):
                if pos + size > data_end or pos & mask:
                    bad = True
            if bad:
                problem = problem or _check_buffers(offsets, sizes, bool(mask), data_end)
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
    out += _FOOTER.pack(
        column_meta_start, cmo_position, gbo_position, 1, len(columns), major, minor, MAGIC
    )
    return bytes(out)
