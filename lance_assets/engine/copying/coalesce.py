"""Coalescing small pages: which columns may be re-encoded into large pages, and by what.

Binary copy turns every small input file into one small page per column of the output
(``format.pages``); Lance's reader pays per page. With ``pages="coalesce"`` (the default) the
copy decodes the small pages it can (2.1/2.2: ``format.miniblock``; 2.0: ``format.pages20``)
and writes them as large pages as it goes (``NativeColumn``); the columns made of many small
pages it cannot decode are re-encoded -- and only those -- with pylance's file writer (``lance.file.LanceFileWriter``)
into a temporary file of the same file version, whose pages are copied into the output in
place of the small ones. Every other column is still copied byte for byte. The planner uses
the same rules to pick fragments at target size whose columns are worth healing, so it never
picks what the copy would leave as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lance_assets._proto import file2_pb2, file_pb2, table_pb2
from lance_assets.engine.copying.reencode import pylance_available, pylance_storage_options
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import PAGES_COPY, CompactionOptions
from lance_assets.engine.page_health import read_each
from lance_assets.engine.tail import read_v2_metadata
from lance_assets.errors import CompactionRefusedError
from lance_assets.format import repdef, v2safety
from lance_assets.format.pages import SMALL_PAGE_BYTES, ColumnPages, column_pages
from lance_assets.format.v2file import FileVersion, V2FileMetadata, is_blob_field
from lance_assets.io import Storage

logger = logging.getLogger(__name__)


def coalescible_fields(fields: Sequence[file_pb2.Field], version: FileVersion) -> frozenset[int]:
    """Ids of the fields whose columns pylance may rewrite: every field of a top-level field's
    subtree, unless the subtree holds a blob field (its pages are descriptors, rewritten by
    ``blob_copy``) or a guarded nested field (pylance 14 misreads some such values it wrote in
    one go, see ``reencode``; their pages keep the layer rule by being copied)."""
    guarded = repdef.guarded_field_ids(fields, version)
    tops = top_level(fields)
    refused = {tops[f.id] for f in fields if f.id in guarded or is_blob_field(f)}
    return frozenset(fid for fid, t in tops.items() if t not in refused)


def why_not_coalesce(fields: Sequence[file_pb2.Field], options: CompactionOptions) -> str:
    """Why small pages of this dataset cannot be coalesced ("" when they can)."""
    if options.pages == PAGES_COPY:
        return "pages='copy' keeps every page as it is"
    if any(is_blob_field(f) for f in fields):
        return "datasets with blob columns are binary-copied page by page"
    if not pylance_available():
        return (
            "coalescing pages the copy does not re-cut itself (2.3 files; 2.1/2.2 dictionary, FSST, compressed or "
            "fixed-size-list pages; compressed 2.0 pages) needs pylance: pip install 'lance_assets[reencode]'"
        )
    return ""


def pylance_writer_available() -> bool:
    """Whether pylance's writer can take the columns the copy cannot re-cut itself."""
    return pylance_available()


# --- native coalescing: small mini-block pages decoded and re-cut as the copy goes ------------
#: Natively coalesced pages are written once their decoded values reach this many bytes (or
#: ``read_batch_bytes`` shared among the columns being coalesced, if less): large enough that
#: a reader pays the per-page cost a handful of times per file, as after pylance's writer.
NATIVE_PAGE_BYTES = 16 * 1024 * 1024


def natively_coalescible(version: FileVersion) -> bool:
    """Whether this copier can decode and re-cut small pages of files of ``version`` itself."""
    return version in (FileVersion.V2_0, FileVersion.V2_1, FileVersion.V2_2)


def native_page_bytes(
    fields: Sequence[file_pb2.Field], version: FileVersion, options: CompactionOptions | None, columns: int
) -> int:
    """The size of natively coalesced pages for one output of ``columns`` columns, or 0 when the
    copy does not re-cut pages (``pages="copy"``, a file version it does not decode, blob
    columns). Pending rows of every column stay within ``read_batch_bytes`` together."""
    if options is None or options.pages == PAGES_COPY or not natively_coalescible(version):
        return 0
    if any(is_blob_field(f) for f in fields):
        return 0
    return max(SMALL_PAGE_BYTES * 4, min(NATIVE_PAGE_BYTES, options.read_batch_bytes // max(1, columns)))


def pylance_fields(ds: Dataset, first: table_pb2.DataFragment, version: FileVersion, out_fields: Sequence[int]) -> list[int]:
    """The output fields to hand to pylance's writer: every field of each top-level field that
    holds a column whose small pages, in the first input, the copy cannot re-cut itself. Later
    inputs usually share the first one's encodings; where they hold enough small pages the copy
    cannot re-cut, it writes the output once more with those fields given to pylance."""
    logical_types = {f.id: f.logical_type for f in ds.manifest.fields}
    guarded = repdef.guarded_field_ids(ds.manifest.fields, version)
    foreign = set()
    for df in first.files:
        meta = read_v2_metadata(ds.storage, ds.data_file_path(df), df.file_size_bytes)
        for fid, col in zip(df.fields, df.column_indices):
            if fid not in out_fields or not 0 <= col < meta.num_columns:
                continue
            pages = meta.columns[col].pages
            small = [p for p in pages if 0 < sum(p.buffer_sizes) < SMALL_PAGE_BYTES]
            if small and (fid in guarded or NativeColumn(version, 0, logical_types.get(fid, "")).takes(small) is None):
                foreign.add(fid)
    tops = top_level(ds.manifest.fields)
    foreign_tops = {tops[fid] for fid in foreign}
    return [fid for fid in out_fields if tops.get(fid) in foreign_tops]


class NativeColumn:
    """One output column's small pages, decoded as the copy reaches them and written as large
    pages (``format.miniblock``, or ``format.pages20`` for 2.0 files: the same protocol), in row
    order with the pages copied as they are.

    The copy asks ``takes`` for each input file's pages of the column: when every one is a
    small page the module decodes, they are ``decode``-d and ``add``-ed instead of copied;
    otherwise the copy flushes the pending rows (``flush``) and copies the pages. Memory holds
    at most ``page_bytes`` of decoded values per column.
    """

    def __init__(self, version: FileVersion, page_bytes: int, logical_type: str = "") -> None:
        # numpy comes with these, only when compacting
        from lance_assets.format import miniblock, pages20

        # the format module that decodes and re-cuts this version's pages (same protocol)
        self._mb: Any = pages20 if version is FileVersion.V2_0 else miniblock
        self._version = version
        self._page_bytes = page_bytes
        # the column's logical type: pages of one value do not say whether it is a boolean, nor
        # how wide a string's offsets are
        self._type = logical_type
        self._pending: list[tuple[int, Any]] = []  # (first output row, miniblock.Undecoded) per page
        self._shape: Any = None  # the shape the pending pages share (miniblock.combine)
        self._nbytes = 0
        self.coalesced = False  # whether any page was written from decoded rows
        self.left_small = 0  # small pages written as they came: they could not be re-cut
        self.why_left = ""

    def takes(self, pages: Sequence[file2_pb2.ColumnMetadata.Page]) -> list[Any] | None:
        """How each of these pages decodes (``miniblock.page_codec``) when every one is small (or
        has no buffers) and decodable; None when one is not."""
        codecs = []
        page_codec, version, logical_type = self._mb.page_codec, self._version, self._type
        for page in pages:
            sizes = page.buffer_sizes
            if sizes and not 0 < sum(sizes) < SMALL_PAGE_BYTES:
                return None
            codec = page_codec(page, version, logical_type)
            if codec is None:
                return None
            codecs.append(codec)
        return codecs

    def decode(
        self,
        pages: Sequence[file2_pb2.ColumnMetadata.Page],
        codecs: Sequence[Any],
        buffer: Callable[[int, int], bytes | memoryview],
    ) -> list[Any]:
        """One input file's pages of the column (with what ``takes`` said of them), their buffers
        read through ``buffer(offset, size)``, kept to be decoded together with the pages after
        them when the run is written (``miniblock.Undecoded``)."""
        defer, version, logical_type = self._mb.defer_page, self._version, self._type
        return [
            defer(p, [buffer(o, n) for o, n in zip(p.buffer_offsets, p.buffer_sizes)], version, logical_type, codec)
            for p, codec in zip(pages, codecs, strict=True)
        ]

    def add(self, part: Any, first_row: int) -> list[tuple[int, Any]]:
        """Append one page from ``decode`` (its rows start at output row ``first_row``); returns
        the pages to write now, as ``flush`` does."""
        out: list[tuple[int, Any]] = []
        shape = self._mb.combine(self._shape, part.shape) if self._pending else part.shape
        if shape is None:
            out += self.flush()
            shape = part.shape
        self._pending.append((first_row, part))
        self._shape = shape
        self._nbytes += part.nbytes
        if self._nbytes >= self._page_bytes:
            out += self.flush()
        return out

    def flush(self) -> list[tuple[int, Any]]:
        """The pending rows as one ``miniblock.EncodedPage``, with the output row it starts at
        (nothing when no rows are pending). Rows that cannot be re-cut after all (a value too
        long for a chunk) are written as the pages they came in, unchanged (``left_small``
        counts them)."""
        if not self._pending:
            return []
        pending = self._pending
        self._pending, self._shape, self._nbytes = [], None, 0
        try:
            encoded = self._mb.encode_page(self._mb.materialize([part for _, part in pending]))
        except self._mb.NotNative as exc:
            logger.info("%d small pages written as they came: they cannot be re-cut (%s)", len(pending), exc)
            self.left_small += len(pending)
            self.why_left = str(exc)
            return [(first_row, part.as_page()) for first_row, part in pending]
        self.coalesced = True
        return [(pending[0][0], encoded)]


# --- choosing the columns of one output file ---------------------------------------------------
@dataclass
class PageTally:
    """What one output file's columns became: filled by the copy, summed into the report."""

    pages_before: int = 0  # pages of the kept columns over all inputs
    pages_after: int = 0  # pages of the output's columns
    native: set[str] = field(default_factory=set)  # column paths whose small pages were re-cut natively
    by_pylance: set[str] = field(default_factory=set)  # column paths re-encoded into large pages
    left_small: set[str] = field(default_factory=set)  # column paths still made of small pages
    why_left: set[str] = field(default_factory=set)  # why those were not coalesced

    def merge(self, other: PageTally) -> None:
        """Add another output file's counts."""
        self.pages_before += other.pages_before
        self.pages_after += other.pages_after
        self.native |= other.native
        self.by_pylance |= other.by_pylance
        self.left_small |= other.left_small
        self.why_left |= other.why_left


@dataclass(frozen=True)
class InputFile:
    """One input data file as the pre-pass read it."""

    url: str  # for pylance's reader
    rows: int
    columns: dict[int, int]  # field id -> column, for live fields that own a column
    names: dict[int, str]  # field id -> name in the file's own schema (top-level fields)
    stats: dict[int, ColumnPages]  # field id -> its column's pages
    schema_metadata: dict[str, bytes] = field(default_factory=dict)  # the file schema's metadata


def read_inputs(ds: Dataset, inputs: Sequence[table_pb2.DataFragment], live: Container[int]) -> list[list[InputFile]]:
    """Per input fragment, its data files' column metadata (the copy reads them again as it
    goes: this pass decides which columns to coalesce before anything is written)."""

    def read(frag: table_pb2.DataFragment) -> list[InputFile]:
        out = []
        for df in frag.files:
            rel = ds.data_file_path(df)
            meta = read_v2_metadata(ds.storage, rel, df.file_size_bytes)
            columns = {fid: col for fid, col in zip(df.fields, df.column_indices) if fid in live and 0 <= col < meta.num_columns}
            names = {f.id: f.name for f in meta.fields if f.parent_id == -1}
            stats = {fid: column_pages(meta.columns[col].pages) for fid, col in columns.items()}
            schema_metadata = dict(meta.descriptor.schema.metadata)
            out.append(InputFile(ds.storage.url(rel), meta.num_rows, columns, names, stats, schema_metadata))
        return out

    return read_each(ds, read, inputs)


def choose_tops(
    fields: Sequence[file_pb2.Field],
    version: FileVersion,
    out_fields: Sequence[int],
    files: Sequence[Sequence[InputFile]],
    lacking: Collection[int],
) -> tuple[dict[int, list[int]], dict[int, ColumnPages]]:
    """The top-level fields whose columns to re-encode (schema order; each with the fields
    under it that own an output column), and every output column's pages summed over the inputs.

    A top-level field is chosen when one of its columns, as binary copy would assemble it, is
    made of many small pages (``ColumnPages.fragmented``), pylance may rewrite it
    (``coalescible_fields``) and every input holds it (an input lacking it gets all-null pages)."""
    merged: dict[int, ColumnPages] = {}
    for frag_files in files:
        for f in frag_files:
            for fid, stats in f.stats.items():
                merged[fid] = merged.get(fid, ColumnPages()) + stats
    allowed = coalescible_fields(fields, version)
    tops = top_level(fields)
    owners: dict[int, list[int]] = {}
    for fid in out_fields:
        owners.setdefault(tops[fid], []).append(fid)
    order = {f.id: i for i, f in enumerate(fields)}
    chosen = {
        top: fids
        for top, fids in sorted(owners.items(), key=lambda item: order[item[0]])
        if any(merged.get(fid, ColumnPages()).fragmented for fid in fids)
        and all(fid in allowed and fid not in lacking for fid in fids)
    }
    return chosen, merged


def top_level(fields: Sequence[file_pb2.Field]) -> dict[int, int]:
    """Field id -> id of the top-level field above it (itself when top-level)."""
    by_id = {f.id: f for f in fields}
    out = {}
    for f in fields:
        node = f
        while node.parent_id != -1 and node.parent_id in by_id:
            node = by_id[node.parent_id]
        out[f.id] = node.id
    return out


# --- pylance's writer -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetScan:
    """An in-order scan of some fragments' columns at one version (every physical row when the
    fragments have no deleted rows)."""

    uri: str
    version: int
    fragment_ids: tuple[int, ...]
    columns: tuple[str, ...]  # top-level names in the dataset schema

    def batches(self, rows_per_batch: int, storage_options: dict[str, str] | None) -> Iterator[Any]:
        import lance

        ds = lance.dataset(self.uri, version=self.version, storage_options=storage_options)
        fragments = []
        for i in self.fragment_ids:
            found = ds.get_fragment(i)
            if found is None:
                raise CompactionRefusedError(f"fragment {i} is not in version {self.version}")
            fragments.append(found)
        # A few batches ahead, each of about read_batch_bytes / 8: memory near the bound.
        scanner = ds.scanner(
            columns=list(self.columns),
            fragments=fragments,
            scan_in_order=True,
            batch_size=max(1, rows_per_batch // 8),
            batch_readahead=4,
            fragment_readahead=4,
        )
        yield from scanner.to_reader()


#: Inputs pylance reads at once (its readers release the GIL; each small input costs ~1.5 ms).
_PYLANCE_READERS = 4


@dataclass(frozen=True)
class Coalesced:
    """A temporary file pylance wrote holding the chosen top-level fields of all inputs, in
    row order; its columns belong, in order, to ``fields`` (the output's column owners)."""

    storage: Storage
    rel: str
    meta: V2FileMetadata
    fields: tuple[int, ...]
    bytes_read: int = 0  # the inputs' page bytes of these columns, which pylance read
    pages_before: int = 0  # the inputs' pages of these columns
    schema_metadata: dict[str, bytes] = field(default_factory=dict)  # the first input's file schema metadata


def write_with_pylance(
    directory: str,
    inputs: Sequence[Sequence[InputFile]],
    owners_by_top: dict[int, list[int]],
    version: FileVersion,
    read_batch_bytes: int,
    storage_options: dict[str, Any],
    scan: DatasetScan | None = None,
) -> Coalesced:
    """Re-encode the columns of the top-level fields ``owners_by_top`` (schema order; each with
    the fields under it that own a column) of every input, in row order, into one file of
    ``version`` under the local ``directory`` with pylance's file writer; read its metadata back.

    The inputs are read file by file with pylance's file reader, which returns every physical
    row; or, with ``scan`` (when no input has deleted rows, so a dataset scan returns them all),
    by one in-order dataset scan of the input fragments, which reads them in parallel.

    Memory stays near ``read_batch_bytes``: inputs are read in batches of about that many bytes
    and the writer's page cache is that large (at least 256 KiB per column, so the pages it
    writes are never small ones). Raises CompactionRefusedError when pylance fails or the file
    is not one the copy can take pages from (the caller then copies the small pages as they are).
    """
    out = _PylanceFile(directory, owners_by_top, version, read_batch_bytes, storage_options)
    try:
        files = inputs
        if scan is not None:
            size = sum(s.bytes for frag_files in files for f in frag_files for fid, s in f.stats.items() if fid in out.owners)
            expected = sum(frag_files[0].rows for frag_files in files)
            for batch in scan.batches(read_batch_bytes * expected // max(size, 1), out.options):
                out.write(batch)
            if out.rows != expected:
                raise CompactionRefusedError(f"pylance's scan returned {out.rows} rows of inputs holding {expected}")
            files = ()  # read
        out.write_inputs(files)
        out.close()
    except (CompactionRefusedError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pylance failing (its panics are BaseExceptions) means: copy the pages as they are
        raise CompactionRefusedError(f"pylance could not re-encode the columns: {exc}") from exc
    finally:
        out.abandon()
    return out.coalesced(inputs)


class _PylanceFile:
    """The local file pylance's writer fills with the chosen columns of every input, in row
    order. Small inputs (the common case: thousands of them) are read several at a time, each
    whole, within the memory bound, and written together; larger ones are streamed in batches."""

    def __init__(
        self,
        directory: str,
        owners_by_top: dict[int, list[int]],
        version: FileVersion,
        read_batch_bytes: int,
        storage_options: dict[str, Any],
    ) -> None:
        self.directory, self.version, self.read_batch_bytes = directory, version, read_batch_bytes
        self.options = pylance_storage_options(storage_options)
        self.owners_by_top = owners_by_top
        self.tops = list(owners_by_top)
        self.owners = [fid for t in self.tops for fid in owners_by_top[t]]
        self.rel = f"coalesced-{uuid.uuid4().hex}.lance"  # a retry never meets an earlier attempt's file
        self.small = max(1, read_batch_bytes // (2 * _PYLANCE_READERS))
        self.writer: Any = None
        self.schema: Any = None
        self.rows = 0
        self.pending: list[Any] = []  # batches of small inputs, written together (fewer, larger writes)
        self.pending_bytes = 0

    def plan(self, frag_files: Sequence[InputFile]) -> tuple[list[tuple[InputFile, list[str]]], int]:
        """The files of one input fragment holding the chosen columns (with their names in the
        file's schema), and the bytes of those columns."""
        parts = []
        for f in frag_files:
            held = [t for t in self.tops if any(fid in f.columns for fid in self.owners_by_top[t])]
            if any(t not in f.names for t in held):
                raise CompactionRefusedError(f"{f.url}: a column's field is not top-level in the file's schema")
            if held:
                parts.append((f, [f.names[t] for t in held]))
        names = [n for _, held_names in parts for n in held_names]
        if len(names) != len(set(names)):
            raise CompactionRefusedError("a column is held by two data files of one fragment")
        return parts, sum(s.bytes for f, _ in parts for fid, s in f.stats.items() if fid in self.owners)

    def batches(self, frag_files: Sequence[InputFile]) -> Iterator[Any]:
        """The chosen columns of one input fragment, in batches of about ``read_batch_bytes``."""
        import pyarrow as pa
        from lance.file import LanceFileReader

        parts, size = self.plan(frag_files)
        frag_rows = frag_files[0].rows
        batch = max(1, min(frag_rows, self.read_batch_bytes * frag_rows // max(size, 1)))
        readers = [
            LanceFileReader(f.url, storage_options=self.options, columns=names).read_all(batch_size=batch).to_batches()
            for f, names in parts
        ]
        got = 0
        for pieces in zip(*readers, strict=True):
            if len({len(piece) for piece in pieces}) != 1:
                raise CompactionRefusedError("the data files of one fragment gave batches of different lengths")
            fields = [fld for piece in pieces for fld in piece.schema]
            yield pa.RecordBatch.from_arrays([a for piece in pieces for a in piece.columns], schema=pa.schema(fields))
            got += len(pieces[0])
        if got != frag_rows:
            raise CompactionRefusedError(f"pylance read {got} rows of an input holding {frag_rows}")

    def write_inputs(self, files: Sequence[Sequence[InputFile]]) -> None:
        """Every input fragment's chosen columns, in order, small ones read ahead by a pool."""
        with ThreadPoolExecutor(_PYLANCE_READERS, thread_name_prefix="lance-assets-coalesce") as pool:
            window: deque[tuple[Sequence[InputFile], Future[list[Any]] | None]] = deque()
            todo = iter(files)
            try:
                while True:
                    while len(window) < 2 * _PYLANCE_READERS:
                        frag_files = next(todo, None)
                        if frag_files is None:
                            break
                        whole = self.plan(frag_files)[1] <= self.small
                        window.append((frag_files, pool.submit(lambda f: list(self.batches(f)), frag_files) if whole else None))
                    if not window:
                        break
                    frag_files, future = window.popleft()
                    for batch in future.result() if future is not None else self.batches(frag_files):
                        self.write(batch)
            finally:
                for _, future in window:
                    if future is not None:
                        future.cancel()

    def write(self, batch: Any) -> None:
        import pyarrow as pa

        if self.schema is None:
            from lance.file import LanceFileWriter

            self.schema = batch.schema
            if len(self.schema) != len(self.tops):
                raise CompactionRefusedError(f"the inputs hold {len(self.schema)} of the {len(self.tops)} columns to coalesce")
            cache = max(self.read_batch_bytes, len(self.tops) * 4 * SMALL_PAGE_BYTES)
            path = os.path.join(self.directory, self.rel)
            self.writer = LanceFileWriter(path, self.schema, version=self.version.value, data_cache_bytes=cache)
        self.pending.append(pa.RecordBatch.from_arrays(batch.columns, schema=self.schema))
        self.pending_bytes += batch.nbytes
        self.rows += len(batch)
        if self.pending_bytes >= self.small:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_batch(pa.Table.from_batches(self.pending, schema=self.schema))
            self.pending.clear()
            self.pending_bytes = 0

    def close(self) -> None:
        if self.writer is None:
            raise CompactionRefusedError("no input rows to coalesce")
        self.flush()
        self.writer.close()
        self.writer = None

    def abandon(self) -> None:
        """Close a writer a failure left open (its file goes with the scratch directory)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()

    def coalesced(self, inputs: Sequence[Sequence[InputFile]]) -> Coalesced:
        """The written file's metadata, checked: the version, rows and columns asked for, and
        pages the copy may move."""
        storage = Storage(self.directory)
        meta = read_v2_metadata(storage, self.rel)
        owners, version = self.owners, self.version
        if meta.version is not version or meta.num_rows != self.rows or meta.num_columns != len(owners):
            raise CompactionRefusedError(
                f"pylance wrote {meta.num_columns} columns of {meta.num_rows} rows ({meta.version}), "
                f"expected {len(owners)} of {self.rows} ({version})"
            )
        problems = v2safety.copy_refusals(meta, list(range(meta.num_columns)))
        if problems:
            raise CompactionRefusedError("pylance's pages cannot be moved: " + "; ".join(problems))
        stats = [s for frag_files in inputs for f in frag_files for fid, s in f.stats.items() if fid in owners]
        first = inputs[0][0].schema_metadata if inputs and inputs[0] else {}
        return Coalesced(storage, self.rel, meta, tuple(owners), sum(s.bytes for s in stats), sum(s.pages for s in stats), first)
