"""Whether a v2 data file's pages can be moved by rewriting offsets alone (copy safety).

A page may be copied byte for byte only when nothing inside it names a file position: every
encoding must be one we can prove page-local, with no column-level or file-level buffers,
deferred encodings, blob layouts or statistics that describe one file. The one exception are
blob columns the caller names: their descriptor pages are rewritten by the copier, so they are
judged by whether ``format.blobs`` can rewrite them. This module judges the parsed metadata of
``v2file``; anything it cannot prove safe is refused with a reason.
Encoding bytes repeat across files, so each distinct value is judged once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

from google.protobuf import any_pb2
from google.protobuf.message import Message

from lance_assets._proto import encodings_v2_0_pb2 as enc20
from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2, file_pb2
from lance_assets.format import blobs
from lance_assets.format.protobuf import parse, unknown_field_numbers, wire_fields
from lance_assets.format.v2file import (
    ARRAY_ENCODING_URL,
    BLOB_V2_EXTENSION,
    FileVersion,
    V2FileMetadata,
    is_blob_field,
    is_struct_header_column,
)

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
    # A file's own schema may also carry the v2 extension as Arrow field metadata only.
    extension = BLOB_V2_EXTENSION.encode()
    return tuple(
        field
        for field in descriptor.schema.fields
        if is_blob_field(field) or bytes(field.metadata.get("ARROW:extension:name", b"")) == extension
    )


def blob_field_ids_in(meta: V2FileMetadata) -> frozenset[int]:
    """Ids of the blob fields of a file's own schema (``blob_fields``), worked out once per schema."""
    if not meta.schema_key:
        return frozenset(f.id for f in blob_fields(meta.descriptor))
    return _blob_field_ids_of(meta.schema_key)


@lru_cache(maxsize=256)
def _blob_field_ids_of(schema: bytes) -> frozenset[int]:
    descriptor = file_pb2.FileDescriptor()
    descriptor.schema.ParseFromString(schema)
    return frozenset(f.id for f in blob_fields(descriptor))


def inspect_copy_safety(meta: V2FileMetadata, blob_columns: Collection[int] | None = None) -> FileSafety:
    """Judge every column of a parsed file; undecodable encoding bytes raise CorruptFileError.

    ``blob_columns`` are the columns the caller knows (from the dataset schema) to hold blob
    descriptors: they are judged by whether ``format.blobs`` can rewrite them. Without it, a
    blob field in the file's schema refuses the whole file (which columns it owns is not known).
    """
    file_reasons = []
    if len(meta.global_buffers) > 1:
        file_reasons.append(f"{len(meta.global_buffers)} global buffers: only the schema buffer (GB0) is rebuilt")
    if blob_columns is None:
        for field in blob_fields(meta.descriptor):
            file_reasons.append(f"blob field {field.name!r} (id {field.id}): blob pages hold absolute positions")
        blob_columns = ()
    blob_set = set(blob_columns)
    columns = tuple(
        _blob_column_safety(i, col, meta.version) if i in blob_set else _column_safety(i, col, meta)
        for i, col in enumerate(meta.columns)
    )
    return FileSafety(meta.path, meta.version, tuple(file_reasons), columns)


def copy_refusals(meta: V2FileMetadata, columns: Sequence[int], blob_columns: Collection[int] = ()) -> tuple[str, ...]:
    """Why the given columns of a file cannot be binary copied; empty when they can.

    ``blob_columns`` (a subset of ``columns``) hold blob descriptors, which the copier rewrites:
    they pass when ``format.blobs`` recognises every page. The copier asks this of every input
    file, so the common answer (every encoding already judged safe, one global buffer, no blob
    field) costs one dict lookup per page; the full ``inspect_copy_safety`` report is built only
    when something may be wrong.
    """
    pages_ok = _verdicts(meta.version)
    columns_ok = _verdicts("column")
    fast = len(meta.global_buffers) == 1
    for c in columns if fast else ():
        if c in blob_columns:
            continue
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
    if fast and not any(blobs.column_refusals(meta.columns[c], meta.version) for c in blob_columns):
        return ()
    safety = inspect_copy_safety(meta, blob_columns)
    wanted = set(columns)
    per_column = (f"column {c.index}: {c.reason}" for c in safety.columns if c.index in wanted and not c.copyable)
    return (*safety.file_reasons, *per_column)


def _blob_column_safety(index: int, column: file2_pb2.ColumnMetadata, version: FileVersion) -> ColumnSafety:
    return ColumnSafety(index, blobs.column_refusals(column, version), False, (), ())


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
        for r in _verdict(_verdicts("column"), blob, partial(_column_encoding_reasons, blob, path, index)):
            reasons[r] = None
    # Per page of every input file: one dict lookup when the encoding bytes were judged before.
    table = _verdicts(version)
    for p, page in enumerate(column.pages):
        found = table.get(page.encoding.direct.encoding)
        if found is None:
            encoding = page.encoding
            if encoding.HasField("direct"):
                blob = encoding.direct.encoding
                found = _verdict(table, blob, partial(_page_encoding_reasons, blob, version, path, f"column {index} page {p}"))
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
        FileVersion.V2_0: ARRAY_ENCODING_URL,
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


def _planar_reasons(value: bytes) -> list[str]:
    """Conservative shape check of a 2.3 PlanarLayout (we have no proto for it).

    Accept only the shapes pylance 14 was observed to write, all of which proved position
    independent (identical encodings and page bytes when the same data is written at other
    file offsets, and merged files read back correctly). Anything else is refused.
    """
    top = wire_fields(value)
    if top is None:
        return ["malformed 2.3 PlanarLayout"]
    numbers = [number for number, _, _ in top]
    if not set(numbers) <= _PLANAR_TOP_FIELDS or numbers.count(2) != 1:
        return [f"unknown 2.3 PlanarLayout shape (fields {numbers})"]
    _, wire, plane_value = next(f for f in top if f[0] == 2)
    plane = wire_fields(plane_value) if wire == 2 and isinstance(plane_value, bytes) else None
    if plane is None or len(plane) != 1 or plane[0][1] != 2 or plane[0][0] not in _PLANAR_VALUE_KINDS:
        kinds = [n for n, _, _ in plane or []]
        return [f"unknown 2.3 PlanarLayout value plane (fields {kinds})"]
    return []
