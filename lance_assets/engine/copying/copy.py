"""One compaction task: copy the pages of adjacent fragments into new data files.

No value is decoded. For every output file we read the inputs' metadata,
decide which byte extents hold the columns we keep, copy those extents in
chunks of at most ``read_batch_bytes`` (the memory bound), and write new
column metadata whose absolute offsets and row priorities point at the copies.
Anything that cannot be relocated exactly is refused with a reason, never
copied approximately.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from lance_assets._proto import file2_pb2, file_pb2, table_pb2
from lance_assets.engine.committing.commit_loop import remove_files
from lance_assets.engine.copying import blob_copy, coalesce, parts
from lance_assets.engine.copying.copy_legacy import write_legacy_output
from lance_assets.engine.copying.reencode import reencode_task
from lance_assets.engine.dataset import DATA_DIR, Dataset, DatasetRef, open_dataset
from lance_assets.engine.options import PAGES_COALESCE, CompactionOptions
from lance_assets.engine.planning.tasks import CompactionPlan, CompactionTask
from lance_assets.engine.report import ProgressCallback, Reason, RewriteResult
from lance_assets.engine.rows import carry_deletions, carry_row_sequences
from lance_assets.engine.tail import read_v2_metadata, read_v2_tail
from lance_assets.errors import CompactionRefusedError
from lance_assets.format import manifest as mf
from lance_assets.format import pages as page_health
from lance_assets.format import repdef, v2file, v2safety
from lance_assets.io import Storage
from lance_assets.io.ahead import MIN_READ_PIECE, ordered_ahead

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Source:
    """One input data file: its parsed metadata and the columns we take from it.

    ``tail`` holds the file's bytes from ``tail_offset`` to its end, as read for the
    metadata; for small files that is the whole file, so its data is copied from memory.
    """

    rel_path: str
    meta: v2file.V2FileMetadata
    columns: dict[int, int]  # field id -> column index in this file, for live fields that own a column
    tail: bytes = b""
    tail_offset: int = 0
    blob_columns: frozenset[int] = frozenset()  # columns holding blob descriptors (rewritten, not copied)


@dataclass(frozen=True)
class _Extent:
    """A byte range of a source file copied to ``dest`` in the output; with ``data``, those
    bytes are written instead (a rewritten blob descriptor buffer of the same length)."""

    start: int
    end: int
    dest: int
    data: bytes | None = None


def _schema_order(manifest: table_pb2.Manifest) -> dict[int, int]:
    return {f.id: i for i, f in enumerate(manifest.fields)}


#: One input data file to read: its fragment's first row in the output, the fragment, the file,
#: its path and the fragment's index among the inputs.
_Job = tuple[int, table_pb2.DataFragment, table_pb2.DataFile, str, int]


def _input_sources(
    ds: Dataset, inputs: Sequence[table_pb2.DataFragment], live: dict[int, int], read_batch_bytes: int, start: int = 0
) -> Iterator[tuple[int, int, _Source]]:
    """Every input data file of the fragments from ``inputs[start]`` on, in order, with its
    fragment's index and the rows of the fragments before its own.

    Local reads are fast and happen in order. On an object store a request's latency would
    dominate small files, so up to ``storage.max_in_flight`` (``max_concurrent_requests``) are
    read ahead at once (``io.ahead``), and files small enough are fetched whole (metadata and
    data in one request, the size coming from the manifest). What is read ahead stays within
    ``read_batch_bytes`` plus the input being copied.
    """
    jobs: list[_Job] = []
    rows = sum(frag.physical_rows for frag in inputs[:start])
    for index in range(start, len(inputs)):
        frag = inputs[index]
        jobs += [(rows, frag, df, ds.data_file_path(df), index) for df in frag.files]
        rows += frag.physical_rows
    storage = ds.storage
    in_flight = 1 if storage.is_local else storage.max_in_flight
    # a file of up to a request's share of the budget (at least a read piece, so many requests
    # in flight do not split small files in two) comes in one request (metadata and data): one
    # request per input is what a store's latency makes cheapest, and ordered_ahead keeps what
    # is in flight within read_batch_bytes whatever the share
    whole = max(v2file.DEFAULT_TAIL_BYTES, min(read_batch_bytes, max(MIN_READ_PIECE, read_batch_bytes // in_flight)))

    def first(job: _Job) -> int:
        size = job[2].file_size_bytes
        return size if 0 < size <= whole and in_flight > 1 else v2file.DEFAULT_TAIL_BYTES

    def fetch(job: _Job) -> tuple[v2file.V2FileMetadata, bytes, int]:
        if in_flight == 1:
            return read_v2_tail(storage, job[3], job[2].file_size_bytes)
        return read_v2_tail(storage, job[3], job[2].file_size_bytes, first(job))

    for (rows, frag, df, rel, index), read in ordered_ahead(
        jobs, fetch, max_in_flight=in_flight, max_bytes=read_batch_bytes, cost=first
    ):
        yield index, rows, _source(ds, frag, df, rel, live, read)


def _source(
    ds: Dataset,
    frag: table_pb2.DataFragment,
    df: table_pb2.DataFile,
    rel: str,
    live: dict[int, int],
    read: tuple[v2file.V2FileMetadata, bytes, int],
) -> _Source:
    """Check one input file (at ``rel``) against its fragment and the version its DataFile
    records, and judge its copy safety."""
    meta, tail, tail_offset = read
    where = ds.storage.url(rel)
    expected = mf.storage_version_name(mf.data_file_version(df))
    if meta.version.value != expected:
        raise CompactionRefusedError(
            f"file version {meta.version.value} differs from the {expected} its manifest entry records", path=where
        )
    if meta.num_rows != frag.physical_rows:
        raise CompactionRefusedError(
            f"file holds {meta.num_rows} rows but fragment {frag.id} has {frag.physical_rows}", path=where
        )
    owned = [c for c in df.column_indices if c >= 0]
    if len(owned) != meta.num_columns:
        raise CompactionRefusedError(
            f"manifest maps {len(owned)} columns but the file has {meta.num_columns}; cannot tell which field owns which column",
            path=where,
        )
    columns = {fid: col for fid, col in zip(df.fields, df.column_indices) if fid in live and col >= 0}
    blob_columns = blob_copy.blob_columns(meta, columns, blob_copy.blob_field_ids(ds.manifest.fields), where)
    problems = v2safety.copy_refusals(meta, list(columns.values()), blob_columns)
    if problems:
        raise CompactionRefusedError("; ".join(problems), path=where)
    return _Source(rel, meta, columns, tail, tail_offset, blob_columns)


#: Extents at least this long are placed for block cloning where the filesystem offers it: the
#: padding (under one block) then costs at most 0.4 % of the extent.
CLONE_MIN_EXTENT = 1 << 20


def _extents(
    meta: v2file.V2FileMetadata, columns: Sequence[int], dest: int, clone_block: int = 0, *, whole: bool = False
) -> list[_Extent]:
    """Source byte ranges holding the given columns, placed from ``dest`` on.

    When every column is kept (or ``whole`` is asked for: inline blob bytes belong to no page
    buffer) the whole data region is one extent (padding
    included), which keeps copies large and sequential. Otherwise the kept
    buffers are coalesced where they touch. 2.1+ destinations keep the
    source's offset modulo 64, so copied buffers stay aligned; with
    ``clone_block`` (a reflinking filesystem) large extents keep it modulo the
    block size, so the filesystem shares their blocks instead of copying them.
    """
    if whole or len(columns) == meta.num_columns:
        spans = [(0, meta.data_end)]
    else:
        raw = sorted(
            (o, o + s)
            for c in columns
            for page in meta.columns[c].pages
            for o, s in zip(page.buffer_offsets, page.buffer_sizes)
            if s
        )
        spans = []
        for start, end in raw:
            if spans and start <= spans[-1][1] + (v2file.ALIGNMENT - 1 if meta.version.aligned else 0):
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
    out = []
    for start, end in spans:
        if clone_block and end - start >= CLONE_MIN_EXTENT:
            dest += (start - dest) % clone_block
        elif meta.version.aligned:
            dest += (start - dest) % v2file.ALIGNMENT
        out.append(_Extent(start, end, dest))
        dest += end - start
    return out


def _patched(extents: Sequence[_Extent], patches: Sequence[blob_copy.Patch]) -> list[_Extent]:
    """``extents`` with each patch's bytes written in place of the source bytes it replaces.

    A patch must lie inside one extent (descriptor buffers are inside the copied data region).
    """
    out: list[_Extent] = []
    todo = sorted(patches, key=lambda p: p.start)
    for ext in extents:
        start = ext.start
        while todo and todo[0].start < ext.end:
            patch = todo.pop(0)
            if patch.start < start or patch.end > ext.end:
                raise CompactionRefusedError(f"blob descriptors at {patch.start} lie outside the copied bytes (copier bug)")
            if patch.start > start:
                out.append(_Extent(start, patch.start, ext.dest + start - ext.start))
            out.append(_Extent(patch.start, patch.end, ext.dest + patch.start - ext.start, patch.data))
            start = patch.end
        if start < ext.end:
            out.append(_Extent(start, ext.end, ext.dest + start - ext.start))
    if todo:
        raise CompactionRefusedError(f"blob descriptors at {todo[0].start} lie outside the copied bytes (copier bug)")
    return out


def _relocator(extents: Sequence[_Extent]) -> int | Callable[[int], int]:
    """Where a kept buffer's offset lands in the output.

    One extent (the usual case: the whole data region) is a constant shift; with several,
    each offset is looked up, which also checks it was copied.
    """
    if len(extents) == 1:
        return extents[0].dest - extents[0].start
    starts = [e.start for e in extents]

    def move(offset: int) -> int:
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or offset > extents[i].end:
            raise CompactionRefusedError(f"buffer at {offset} lies outside every copied extent (copier bug)")
        return offset - extents[i].start + extents[i].dest

    return move


def _output_schema(manifest: table_pb2.Manifest, keep: set[int]) -> list[file_pb2.Field]:
    """The dataset schema restricted to ``keep`` and their ancestors, in schema (pre-)order."""
    by_id = {f.id: f for f in manifest.fields}
    wanted = set()
    for fid in keep:
        while fid in by_id and fid not in wanted:
            wanted.add(fid)
            fid = by_id[fid].parent_id
    return [f for f in manifest.fields if f.id in wanted]


def _copy_extents(
    storage: Storage,
    src: _Source,
    extents: Sequence[_Extent],
    pos: int,
    out: IO[bytes],
    batch_bytes: int,
    progress: ProgressCallback | None,
) -> tuple[int, int]:
    """Append ``extents`` of ``src`` to ``out`` (now at ``pos``); returns the new position and bytes copied.

    Extents inside the bytes already read for the metadata (all of a small file) are
    written from memory; the rest go through ``Storage.copy_range``.
    """
    copied = 0
    for ext in extents:
        if ext.dest > pos:
            out.write(bytes(ext.dest - pos))
        if ext.data is not None:
            out.write(ext.data)
            if progress:
                progress(len(ext.data))
        elif ext.start >= src.tail_offset:
            chunk = memoryview(src.tail)[ext.start - src.tail_offset : ext.end - src.tail_offset]
            out.write(chunk)
            if progress:
                progress(len(chunk))
        else:
            storage.copy_range(src.rel_path, ext.start, ext.end, out, batch_bytes=batch_bytes, progress=progress)
        pos = ext.dest + (ext.end - ext.start)
        copied += ext.end - ext.start
    return pos, copied


def _write_output(
    ds: Dataset,
    inputs: Sequence[table_pb2.DataFragment],
    read_batch_bytes: int,
    progress: ProgressCallback | None,
    verify: bool = True,
    *,
    options: CompactionOptions | None = None,
    tally: coalesce.PageTally | None = None,
) -> tuple[table_pb2.DataFragment, tuple[str, ...], int, int]:
    """Write one merged data file; returns its fragment (id unset), the files written (the data
    file, then its blob sidecars), bytes read and written. With ``options.pages="coalesce"``
    columns made of many small pages are re-encoded into large ones (``coalesce``); ``tally``
    receives the page counts before and after.

    Nothing stays behind when it fails: the data file is removed by ``_write_data_file``, the
    blob sidecars copied so far here.
    """
    sidecars: list[str] = []
    try:
        fragment, rel, bytes_read, size = _write_data_file(
            ds, inputs, read_batch_bytes, progress, verify, sidecars, options, tally or coalesce.PageTally()
        )
    except BaseException:
        remove_files(ds.storage, sidecars)
        raise
    return fragment, (rel, *sidecars), bytes_read, size


@dataclass(frozen=True)
class _Merge:
    """One output file's inputs and how their fields line up: what every step of its copy reads."""

    ds: Dataset
    inputs: Sequence[table_pb2.DataFragment]
    version: v2file.FileVersion  # the inputs' own file version (also the output's)
    layout: list[tuple[int, bool]]  # (field id, owns a column) of the output, in schema order
    out_fields: list[int]  # the fields owning an output column, in column order
    lacking: list[list[int]]  # per input, the fields it lacks (given all-null pages)
    read_batch_bytes: int
    progress: ProgressCallback | None
    verify: bool

    @classmethod
    def of(
        cls,
        ds: Dataset,
        inputs: Sequence[table_pb2.DataFragment],
        read_batch_bytes: int,
        progress: ProgressCallback | None,
        verify: bool,
    ) -> _Merge:
        """Check that the inputs can share one file: one file version, and the same live fields
        stored the same way (the planner grouped them so), except fields an input lacks
        altogether (added later without rewriting its file) that all-null pages can fill."""
        order = _schema_order(ds.manifest)
        versions = {mf.data_file_version(df) for frag in inputs for df in frag.files}
        if len(versions) != 1:  # a mixed-version dataset merges each version separately
            raise CompactionRefusedError(f"the inputs' data files have different versions {sorted(versions)}", path=ds.uri)
        version = v2file.FileVersion(mf.storage_version_name(versions.pop()))
        fillable = v2file.null_fillable_fields(ds.manifest.fields, version)
        layouts = [
            {fid: col >= 0 for df in frag.files for fid, col in zip(df.fields, df.column_indices) if fid in order}
            for frag in inputs
        ]
        union = {fid: owns for fields in layouts for fid, owns in fields.items()}
        lacking: list[list[int]] = []
        for fields in layouts:
            missing = [fid for fid in union if fid not in fields]
            if any(fields[fid] != union[fid] for fid in fields) or not set(missing) <= fillable:
                raise CompactionRefusedError("the inputs store different sets of fields", path=ds.uri)
            lacking.append(missing)
        layout = sorted(union.items(), key=lambda fc: order[fc[0]])
        out_fields = [fid for fid, owns in layout if owns]
        return cls(ds, inputs, version, layout, out_fields, lacking, read_batch_bytes, progress, verify)


def _write_data_file(
    ds: Dataset,
    inputs: Sequence[table_pb2.DataFragment],
    read_batch_bytes: int,
    progress: ProgressCallback | None,
    verify: bool,
    sidecars: list[str],
    options: CompactionOptions | None,
    tally: coalesce.PageTally,
) -> tuple[table_pb2.DataFragment, str, int, int]:
    """Write one merged data file; returns its fragment (id unset), path, bytes read and written
    (blob sidecars included: their paths are appended to ``sidecars`` as they are copied).

    Inputs whose pages may not share columns (``repdef``) are refused before anything is
    copied past them; blob descriptor pages are rewritten and their sidecars copied
    (``blob_copy``); with ``verify`` the finished file is read back and checked
    (``verify_output``, ``blob_copy.verify``) before it is handed to the commit.
    """
    merge = _Merge.of(ds, inputs, read_batch_bytes, progress, verify)
    names = repdef.field_paths(ds.manifest.fields)
    scratch = tempfile.mkdtemp(prefix="lance-assets-coalesce-")
    try:
        native = coalesce.native_page_bytes(ds.manifest.fields, merge.version, options, len(merge.out_fields))
        lacking = {fid for missing in merge.lacking for fid in missing}
        forced: list[int] = []
        while True:
            attempt = coalesce.PageTally()
            coalesced = _coalesce_small_pages(
                ds, inputs, merge.version, merge.out_fields, lacking, options, attempt, names, scratch, bool(native), forced
            )
            try:
                written = _write_merged(
                    merge,
                    sidecars,
                    attempt,
                    coalesced,
                    native,
                    retry=not forced and options is not None,
                    sharing=(options.task_processes, scratch) if options is not None else None,
                )
            except _PylanceWanted as wanted:
                # Inputs after the first held small pages the copy cannot re-cut: once more, with
                # pylance re-encoding those columns (the file written so far is gone).
                logger.info(
                    "%s: later inputs hold small pages the copy cannot re-cut (fields %s); writing the file again "
                    "with pylance re-encoding them",
                    ds.uri,
                    wanted.fields,
                )
                forced = wanted.fields
                continue
            tally.merge(attempt)
            logger.debug(
                "%s: wrote %s from %d fragments (%d rows); pages %d -> %d; re-cut %s, by pylance %s, left small %s",
                ds.uri,
                written[1],
                len(inputs),
                written[0].physical_rows,
                attempt.pages_before,
                attempt.pages_after,
                sorted(attempt.native),
                sorted(attempt.by_pylance),
                sorted(attempt.left_small),
            )
            return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _coalesce_small_pages(
    ds: Dataset,
    inputs: Sequence[table_pb2.DataFragment],
    version: v2file.FileVersion,
    out_fields: Sequence[int],
    lacking: set[int],
    options: CompactionOptions | None,
    tally: coalesce.PageTally,
    names: dict[int, str],
    scratch: str,
    native: bool,
    forced: Sequence[int] = (),
) -> coalesce.Coalesced | None:
    """The columns of this output to take from pylance's re-encode instead of the inputs' small
    pages (None: every column is copied as it is or, with ``native``, has its small pages
    re-cut by the copy; ``tally`` then says which stay small and why).

    pylance is asked only for the top-level fields whose small pages the copy cannot re-cut
    itself, judged from the first input (``coalesce.pylance_fields``); when there are none, no
    extra metadata pass is made."""
    if options is None or options.pages != PAGES_COALESCE:
        if options is not None:
            tally.why_left.add(coalesce.why_not_coalesce(ds.manifest.fields, options))
        return None
    if forced:
        wanted = list(forced)
    else:
        wanted = coalesce.pylance_fields(ds, inputs[0], version, out_fields) if native else list(out_fields)
    if not wanted:
        return None
    why_not = coalesce.why_not_coalesce(ds.manifest.fields, options)
    if why_not:  # nothing more can coalesce: no extra metadata pass (the copy reports what stays small)
        tally.why_left.add(why_not)
        return None
    files = coalesce.read_inputs(ds, inputs, set(out_fields))
    chosen, merged = coalesce.choose_tops(ds.manifest.fields, version, wanted, files, lacking)
    small = {fid for fid in wanted if merged.get(fid, page_health.ColumnPages()).fragmented}
    if not small:
        return None
    if small - {fid for fids in chosen.values() for fid in fids}:
        tally.why_left.add("pylance does not re-encode them (blob, struct-above-list nested fields, or fields some inputs lack)")
    if not chosen:
        return None

    def write(tops: dict[int, list[int]]) -> coalesce.Coalesced:
        scan = None
        if not any(f.HasField("deletion_file") and f.deletion_file.num_deleted_rows for f in inputs):
            # every physical row is a live row: one in-order dataset scan reads them all
            top_names = {f.id: f.name for f in ds.manifest.fields if f.parent_id == -1}
            ids = tuple(f.id for f in inputs)
            scan = coalesce.DatasetScan(ds.storage.uri, ds.version, ids, tuple(top_names[t] for t in tops))
        storage_options = ds.storage.storage_options
        return coalesce.write_with_pylance(scratch, files, tops, version, options.read_batch_bytes, storage_options, scan)

    try:
        return write(chosen)
    except CompactionRefusedError as exc:
        tally.why_left.add(str(exc))
    # pylance fails on some nested values (maps, structs): the columns without them alone, then
    tops = coalesce.top_level(ds.manifest.fields)
    nested = {tops[f.id] for f in ds.manifest.fields if "struct" in f.logical_type or "map" in f.logical_type}
    flat = {top: fids for top, fids in chosen.items() if top not in nested}
    if not flat or len(flat) == len(chosen):
        return None
    try:
        return write(flat)
    except CompactionRefusedError as exc:
        tally.why_left.add(str(exc))
        return None


def _write_merged(
    merge: _Merge,
    sidecars: list[str],
    tally: coalesce.PageTally,
    coalesced: coalesce.Coalesced | None,
    native_page_bytes: int = 0,
    *,
    retry: bool = False,
    sharing: tuple[int, str] | None = None,
) -> tuple[table_pb2.DataFragment, str, int, int]:
    """Copy the inputs' pages (all but the coalesced columns') and then the coalesced columns'
    pages into one new data file, and write its metadata. With ``native_page_bytes`` the small
    pages the copy can decode are re-cut into pages of about that many bytes
    (``coalesce.NativeColumn``) instead of being copied; with ``retry``, a column where enough
    small pages could not be re-cut raises _PylanceWanted before the file is finished. With
    ``sharing`` (processes, a local scratch folder) helper processes may copy some inputs."""
    ds, version = merge.ds, merge.version
    storage = ds.storage
    name = mf.data_file_name(uuid.uuid4().bytes)
    rel = f"{DATA_DIR}/{name}"
    rows = sum(frag.physical_rows for frag in merge.inputs)
    with storage.open_write(rel) as out:
        written = _MergedFile(merge, rel, out, tally, coalesced, native_page_bytes)
        helpers = written.start_helpers(*sharing) if sharing is not None else None
        try:
            written.copy_inputs(sidecars, helpers)
        finally:
            if helpers is not None:
                helpers.close()
        columns = written.finish_columns(retry)
        tail = written.tail(columns)
        out.write(tail)
        size = written.pos + len(tail)
    if merge.verify:
        try:
            checked = {i: written.templates.get(fid) for i, fid in enumerate(merge.out_fields) if fid in written.guarded}
            verify_output(storage, rel, size, rows, columns, version, checked)
            blob_copy.verify(storage, written.blob_out, size)
        except BaseException:
            storage.delete(rel, missing_ok=True)
            raise

    column_of = {fid: i for i, fid in enumerate(merge.out_fields)}
    major, minor = version.manifest_pair
    data_file = table_pb2.DataFile(
        path=name,
        fields=[fid for fid, _ in merge.layout],
        column_indices=[column_of.get(fid, -1) for fid, _ in merge.layout],
        file_major_version=major,
        file_minor_version=minor,
        file_size_bytes=size,
    )
    fragment = table_pb2.DataFragment(physical_rows=rows)
    fragment.files.append(data_file)
    if ds.stable_row_ids:
        carry_row_sequences(ds, merge.inputs, [fragment])
    return fragment, rel, written.bytes_read, size + sum(c.size for c in written.blob_out.sidecars)


@dataclass(frozen=True)
class PartJob:
    """A helper process's share of one output's inputs (``parts``, ``part_main``): the dataset
    opened once, then the share written as a part file of the output's schema and layout."""

    ds: Dataset
    request: Mapping[str, Any]  # what ``_MergedFile.start_helpers`` sends

    @classmethod
    def open(cls, request: Mapping[str, Any]) -> PartJob:
        return cls(open_dataset(request["uri"], request["storage_options"], request["version"]), request)

    def write(self, share: Mapping[str, Any]) -> dict[str, Any]:
        """Write inputs ``[share["first"], share["stop"])`` at ``share["path"]``; what the output's
        report gains from them (``_MergedFile.part_report``)."""
        request, ds = self.request, self.ds
        first, stop = int(share["first"]), int(share["stop"])
        by_id = {frag.id: frag for frag in ds.manifest.fragments}
        inputs = [by_id[i] for i in request["fragment_ids"][first:stop]]
        version = v2file.FileVersion(request["file_version"])
        layout = [(int(fid), bool(owns)) for fid, owns in request["layout"]]
        lacking = [list(fids) for fids in request["lacking"][first:stop]]
        out_fields = list(request["out_fields"])
        merge = _Merge(ds, inputs, version, layout, out_fields, lacking, request["read_batch_bytes"], None, False)
        path = str(share["path"])
        with _cycle_collector_paused(), open(path, "wb") as out:
            written = _MergedFile(merge, path, out, coalesce.PageTally(), None, request["native_page_bytes"])
            written.copy_inputs([])
            written.flush_natives()
            written.count_natives()
            out.write(written.tail([written.mergers[fid].finish() for fid in merge.out_fields]))
        return written.part_report()


class _MergedFile:
    """The output data file while it is written: its position, every column's merged metadata
    and the natively re-cut columns' pending pages. Inputs are read, copied and merged one file
    at a time, in row order, so memory holds the merged metadata only, never every input's."""

    def __init__(
        self,
        merge: _Merge,
        rel: str,
        out: IO[bytes],
        tally: coalesce.PageTally,
        coalesced: coalesce.Coalesced | None,
        native_page_bytes: int,
    ) -> None:
        ds = merge.ds
        self.merge, self.rel, self.out, self.tally, self.coalesced = merge, rel, out, tally, coalesced
        self.native_page_bytes = native_page_bytes
        self.starts = list(itertools.accumulate((frag.physical_rows for frag in merge.inputs), initial=0))
        self.order = _schema_order(ds.manifest)
        self.pos = 0
        self.bytes_read = 0
        self.schema_metadata: dict[str, bytes] | None = None
        self.mergers = {fid: v2file.ColumnMerger(merge.version, path=ds.storage.url(rel)) for fid in merge.out_fields}
        self.clone_block = ds.storage.clone_block_size(DATA_DIR)
        self.guarded = repdef.guarded_field_ids(ds.manifest.fields, merge.version)
        self.templates = repdef.fixed_size_templates(ds.manifest.fields)
        # The guarded layers' kinds per field, as the first input holding the field has them;
        # every later input must agree (a fragment's files each hold some fields: per field).
        self.kinds: dict[int, str] = {}
        self.blob_out = blob_copy.OutputBlobs(rel)
        self.names = repdef.field_paths(ds.manifest.fields)
        self.skip = frozenset(coalesced.fields) if coalesced is not None else frozenset()
        logical_types = {f.id: f.logical_type for f in ds.manifest.fields}
        self.natives = {
            fid: coalesce.NativeColumn(merge.version, native_page_bytes, logical_types.get(fid, ""))
            for fid in merge.out_fields
            if fid not in self.skip and fid not in self.guarded and native_page_bytes
        }
        self.column_encodings: dict[int, file2_pb2.Encoding] = {}
        self.foreign: dict[int, int] = {}  # field id -> its small pages the copy could not re-cut

    def copy_inputs(self, sidecars: list[str], helpers: parts.PartHelpers | None = None) -> None:
        """Every input's pages, in row order, with all-null pages for the fields an input lacks.
        With ``helpers``, the inputs left when they are ready are shared out (``parts``) and
        their part files appended in order."""
        merge = self.merge
        # When every column is re-encoded, nothing is copied from the inputs (nor read again).
        coalesced = self.coalesced
        if coalesced is not None and set(coalesced.fields) == set(merge.out_fields):
            self.schema_metadata = dict(coalesced.schema_metadata)
            self.tally.pages_before += coalesced.pages_before
            return
        self._copy_share(0, len(merge.inputs), sidecars, helpers)
        for share in helpers.finished() if helpers is not None else ():
            if share.result is not None:
                self._append_part(share.result, share.path, share.first)
            else:
                self._copy_share(share.first, share.stop, sidecars, None)

    def start_helpers(self, processes: int, scratch: str) -> parts.PartHelpers | None:
        """Helper processes for this output (``parts``), when it merges enough files to pay for
        them: a v2 file on a local disk that does not share blocks, no blob columns, no columns
        re-encoded by pylance. None when it is written by this process alone."""
        merge, ds = self.merge, self.merge.ds
        count = parts.usable_processes(processes) - 1
        blobs = blob_copy.blob_field_ids(ds.manifest.fields)
        if (
            count < 1
            or not parts.worth_helpers(len(merge.inputs), len(merge.out_fields))
            or self.coalesced is not None
            or not ds.storage.is_local
            or self.clone_block
            or any(fid in blobs for fid, _ in merge.layout)
        ):
            return None
        request = {
            "uri": ds.storage.uri,
            "storage_options": ds.storage.storage_options,
            "version": ds.version,
            "file_version": merge.version.value,
            "layout": merge.layout,
            "out_fields": merge.out_fields,
            "fragment_ids": [frag.id for frag in merge.inputs],
            "lacking": merge.lacking,
            "read_batch_bytes": merge.read_batch_bytes,
            "native_page_bytes": self.native_page_bytes,
        }
        helpers = parts.PartHelpers(request, count, scratch)
        return helpers if helpers else None

    def _copy_share(self, start: int, stop: int, sidecars: list[str], helpers: parts.PartHelpers | None) -> None:
        """Inputs ``[start, stop)`` (fewer once ``helpers`` are ready and take a share of them)."""
        merge = self.merge
        inputs, starts = merge.inputs, self.starts
        filled = start  # inputs whose all-null pages are in: they go in row order with the copied ones
        for index, row_offset, src in _input_sources(merge.ds, inputs, self.order, merge.read_batch_bytes, start):
            if index >= filled and helpers is not None and helpers.ready():  # between two fragments
                stop, helpers = helpers.share_out(index, stop), None
            if index >= stop:
                break
            while filled <= index:
                for fid in merge.lacking[filled]:
                    self.mergers[fid].add_all_null(inputs[filled].physical_rows, starts[filled])
                filled += 1
            self._check_layers(src)
            if self.schema_metadata is None:
                self.schema_metadata = dict(src.meta.descriptor.schema.metadata)
            self.tally.pages_before += sum(len(src.meta.columns[col].pages) for col in src.columns.values())
            self._add_input(row_offset, src, sidecars)

    def _append_part(self, result: Mapping[str, Any], path: str, first: int) -> None:
        """A helper's part file (its inputs from ``first`` on), after every row before it: its
        data region copied, its pages added to the columns, its report to this file's."""
        merge, tally = self.merge, self.tally
        self.flush_natives()  # the pending re-cut rows come before the part's
        self._agree(((int(key), found) for key, found in result["kinds"].items()), merge.ds.storage.url(self.rel))
        storage = Storage(os.path.dirname(path))
        rel = os.path.basename(path)
        meta, tail, tail_offset = read_v2_tail(storage, rel)
        self._append_file(storage, _Source(rel, meta, {}, tail, tail_offset), merge.out_fields, self.starts[first])
        self.bytes_read += result["bytes_read"]
        tally.pages_before += result["pages_before"]
        tally.native.update(result["native"])
        tally.why_left.update(result["why_left"])
        for key, small in result["foreign"].items():
            self.foreign[int(key)] = self.foreign.get(int(key), 0) + small
        if merge.progress:
            merge.progress(result["bytes_read"])

    def _append_file(self, storage: Storage, source: _Source, fields: Sequence[int], row_offset: int) -> None:
        """Every column of a file this copy had written aside (a helper's part, pylance's
        re-encode): its data region copied here whole, its columns' pages added to ``fields``'
        columns, their rows from ``row_offset`` on."""
        meta = source.meta
        extents = _extents(meta, range(meta.num_columns), self.pos, whole=True)
        move = _relocator(extents)
        self.pos, _ = _copy_extents(storage, source, extents, self.pos, self.out, self.merge.read_batch_bytes, None)
        for fid, column in zip(fields, meta.columns, strict=True):
            self.mergers[fid].add(column, move, row_offset)

    def tail(self, columns: Sequence[file2_pb2.ColumnMetadata]) -> bytes:
        """The file's metadata after its data: the columns, the output schema (with the inputs'
        schema metadata) and the rows of every input."""
        merge = self.merge
        descriptor = file_pb2.FileDescriptor(length=self.starts[-1])
        descriptor.schema.fields.extend(_output_schema(merge.ds.manifest, {fid for fid, _ in merge.layout}))
        for meta_key, value in (self.schema_metadata or {}).items():
            descriptor.schema.metadata[meta_key] = value
        return v2file.build_tail(self.pos, columns, descriptor, merge.version)

    def part_report(self) -> dict[str, Any]:
        """What a helper's part adds to the output's report (``_append_part`` reads it)."""
        return {
            "kinds": {str(fid): kind for fid, kind in self.kinds.items()},
            "bytes_read": self.bytes_read,
            "pages_before": self.tally.pages_before,
            "native": sorted(self.tally.native),
            "why_left": sorted(self.tally.why_left),
            "foreign": {str(fid): small for fid, small in self.foreign.items()},
        }

    def _check_layers(self, src: _Source) -> None:
        """Refuse an input whose guarded fields' layers may not share pages with earlier ones."""
        key = repdef.file_layer_key(src.meta.columns, src.columns, self.guarded, self.merge.version, self.templates)
        where = self.merge.ds.storage.url(src.rel_path)
        if isinstance(key, repdef.LayerConflict):
            raise CompactionRefusedError(f"field {self.names.get(key.field_id, key.field_id)!r}: {key.detail}", path=where)
        self._agree(key, where)

    def _agree(self, kinds: Iterable[tuple[int, str]], where: str) -> None:
        """Record the guarded layers' kinds of an input (or a helper's part); refuse it when a
        field's kind differs from the first one seen."""
        for fid, found in kinds:
            first = self.kinds.setdefault(fid, found)
            if first != found:
                raise CompactionRefusedError(repdef.describe_difference(((fid, first),), ((fid, found),), self.names), path=where)

    def _add_input(self, row_offset: int, src: _Source, sidecars: list[str]) -> None:
        """One input: its small pages re-cut natively where they can be, the rest copied."""
        merge, storage = self.merge, self.merge.ds.storage
        kept = {fid: col for fid, col in src.columns.items() if fid not in self.skip}
        decoded = self._take_small_pages(src, kept)
        kept = {fid: col for fid, col in kept.items() if fid not in decoded}
        extents = _extents(src.meta, sorted(kept.values()), self.pos, self.clone_block, whole=bool(src.blob_columns))
        move = _relocator(extents)
        copies: tuple[blob_copy.SidecarCopy, ...] = ()
        if src.blob_columns:
            shift = extents[0].dest - extents[0].start  # one extent: the whole data region
            read = (src.tail, src.tail_offset)
            rewrite = blob_copy.prepare(storage, src.rel_path, src.meta, read, src.blob_columns, shift, self.blob_out)
            extents = _patched(extents, rewrite.patches)
            copies = rewrite.sidecars
        self.pos, n = _copy_extents(storage, src, extents, self.pos, self.out, merge.read_batch_bytes, merge.progress)
        self.bytes_read += n
        for copy in copies:
            sidecars.append(copy.target)
            storage.copy_object(copy.source, copy.target, copy.size, batch_bytes=merge.read_batch_bytes, progress=merge.progress)
            self.bytes_read += copy.size
        for fid, col in kept.items():
            self.mergers[fid].add(src.meta.columns[col], move, row_offset)
        taken = 0
        for fid, (col, undecoded) in decoded.items():
            for page, part in zip(src.meta.columns[col].pages, undecoded):
                taken += sum(page.buffer_sizes)
                self._write_encoded(fid, self.natives[fid].add(part, row_offset + page.priority))
        self.bytes_read += taken
        if taken and merge.progress:
            merge.progress(taken)  # the re-cut pages' input bytes, as a copy of them would count

    def _take_small_pages(self, src: _Source, kept: dict[int, int]) -> dict[int, tuple[int, list[Any]]]:
        """The kept columns whose pages in ``src`` are re-cut natively (field id -> column and
        its pages from ``NativeColumn.decode``). A column that cannot be has its pending rows
        written first (they precede this input's copied pages) and its small pages counted."""
        natives, columns = self.natives, src.meta.columns
        takes: dict[int, tuple[int, list[Any]]] = {}
        for fid, col in kept.items():
            native = natives.get(fid)
            codecs = native.takes(columns[col].pages) if native is not None else None
            if codecs is not None:
                takes[fid] = (col, codecs)
        data = _InputBytes(self.merge.ds.storage, src, [columns[col] for col, _ in takes.values()])
        buffer = data.buffer
        decoded = {fid: (col, natives[fid].decode(columns[col].pages, codecs, buffer)) for fid, (col, codecs) in takes.items()}
        for fid, col in kept.items():
            self.column_encodings.setdefault(fid, src.meta.columns[col].encoding)
            if fid in natives and fid not in decoded:
                self._write_encoded(fid, natives[fid].flush())
                small = page_health.column_pages(src.meta.columns[col].pages).small_pages
                self.foreign[fid] = self.foreign.get(fid, 0) + small
        return decoded

    def _write_encoded(self, fid: int, pages: Sequence[tuple[int, Any]]) -> None:
        self.pos = _write_encoded(self.out, self.pos, pages, self.mergers[fid], self.column_encodings.get(fid))

    def flush_natives(self) -> None:
        """Write every re-cut column's pending rows."""
        for fid, native in self.natives.items():
            self._write_encoded(fid, native.flush())

    def count_natives(self) -> None:
        """What the re-cut columns became, into the tally (after the last ``flush_natives``)."""
        names = self.names
        for fid, native in self.natives.items():
            if native.coalesced:
                self.tally.native.add(names.get(fid, str(fid)))
            if native.left_small:
                self.foreign[fid] = self.foreign.get(fid, 0) + native.left_small
                self.tally.why_left.add(f"{names.get(fid, str(fid))}: {native.why_left}")

    def finish_columns(self, retry: bool) -> list[file2_pb2.ColumnMetadata]:
        """The pending re-cut pages and the re-encoded columns written; every column's metadata.
        With ``retry``, raises _PylanceWanted when a column is left made of small pages because
        some of them could not be re-cut."""
        merge, tally, names = self.merge, self.tally, self.names
        self.flush_natives()
        self.count_natives()
        finished: dict[int, file2_pb2.ColumnMetadata] = {}
        if retry and self.foreign and coalesce.pylance_writer_available():
            # (the re-cut columns take nothing more: finished now, they are not finished again below)
            finished = {fid: self.mergers[fid].finish() for fid, small in self.foreign.items() if small}
            stuck = [fid for fid, column in finished.items() if page_health.column_pages(column.pages).fragmented]
            if stuck:
                tops = coalesce.top_level(merge.ds.manifest.fields)
                raise _PylanceWanted([fid for fid in merge.out_fields if tops.get(fid) in {tops[f] for f in stuck}])
        coalesced = self.coalesced
        if coalesced is not None:
            # The re-encoded columns' pages, after every input's: one source, rows from 0.
            temp = _Source(coalesced.rel, coalesced.meta, {}, b"", coalesced.meta.file_size)
            self._append_file(coalesced.storage, temp, coalesced.fields, 0)
            self.bytes_read += coalesced.bytes_read
            tally.by_pylance.update(names.get(fid, str(fid)) for fid in coalesced.fields)
        columns = [finished[fid] if fid in finished else self.mergers[fid].finish() for fid in merge.out_fields]
        tally.pages_after += sum(len(c.pages) for c in columns)
        tally.left_small.update(
            names.get(fid, str(fid)) for fid, c in zip(merge.out_fields, columns) if page_health.column_pages(c.pages).fragmented
        )
        return columns


class _InputBytes:
    """The page buffers of some columns of one input: from the bytes read with its metadata
    where they hold them (all of a small file), the rest read in one request from the first
    such buffer on (one input's bytes at most, within the memory bound)."""

    def __init__(self, storage: Storage, src: _Source, columns: Sequence[file2_pb2.ColumnMetadata]) -> None:
        self._src = src
        # (a small file was read whole with its metadata: nothing lies before its tail)
        spans = [
            (o, o + n)
            for c in (columns if src.tail_offset else ())
            for p in c.pages
            for o, n in zip(p.buffer_offsets, p.buffer_sizes)
            if n and o < src.tail_offset
        ]
        self._start = min(o for o, _ in spans) if spans else src.tail_offset
        self._head = storage.read(src.rel_path, self._start, max(e for _, e in spans)) if spans else b""

    def buffer(self, offset: int, size: int) -> memoryview:
        if offset < self._src.tail_offset:  # a buffer starting before the tail is all in the head read
            at = offset - self._start
            return memoryview(self._head)[at : at + size]
        at = offset - self._src.tail_offset
        return memoryview(self._src.tail)[at : at + size]


def _write_encoded(
    out: IO[bytes],
    pos: int,
    pages: Sequence[tuple[int, Any]],
    merger: v2file.ColumnMerger,
    encoding: file2_pb2.Encoding | None,
) -> int:
    """Append natively coalesced pages (``(first row, miniblock.EncodedPage)``) to ``out``, now
    at ``pos``, each buffer 64-byte aligned, and add them to the column's merger; returns the
    new position."""
    for first_row, encoded in pages:
        page = file2_pb2.ColumnMetadata.Page(length=encoded.rows, priority=first_row)
        page.encoding.direct.encoding = encoded.encoding
        for buffer in encoded.buffers:
            pad = -pos % v2file.ALIGNMENT
            out.write(bytes(pad))
            pos += pad
            page.buffer_offsets.append(pos)
            page.buffer_sizes.append(len(buffer))
            out.write(buffer)
            pos += len(buffer)
        part = file2_pb2.ColumnMetadata(pages=[page])
        if encoding is not None:
            part.encoding.CopyFrom(encoding)
        merger.add(part, 0, 0)
    return pos


def verify_output(
    storage: Storage,
    rel: str,
    size: int,
    rows: int,
    columns: Sequence[file2_pb2.ColumnMetadata],
    version: v2file.FileVersion,
    guarded_columns: Sequence[int] | Mapping[int, str | None],
) -> None:
    """Read a finished output file back from storage and refuse it unless it is what we meant.

    The metadata on storage must parse as a ``version`` file of ``rows`` rows whose columns are
    exactly ``columns`` (byte offsets, sizes, encodings, priorities); in 2.1+ every column's
    pages must cover the rows in order without gaps; and every column with a guarded layer must
    obey the layer rule across all its pages, i.e. across every boundary between two inputs
    (``guarded_columns`` may map each such column to its ``repdef.fixed_size_templates`` entry).
    We have no value decoder, so these checks are on what tells a reader how to decode the
    pages (the page bytes themselves are copied, never rewritten); a page whose layers we cannot
    read makes the file refused.
    """
    where = storage.url(rel)
    meta = read_v2_metadata(storage, rel, size)
    if meta.file_size != size or meta.version is not version or meta.num_rows != rows:
        raise CompactionRefusedError(
            f"self-check: the written file reads back as {meta.version} with {meta.num_rows} rows in "
            f"{meta.file_size} bytes, expected {version} with {rows} rows in {size}",
            path=where,
        )
    if len(meta.columns) != len(columns) or any(a != b for a, b in zip(meta.columns, columns)):
        raise CompactionRefusedError("self-check: the column metadata read back differs from what was written", path=where)
    for index, column in enumerate(meta.columns):
        if version is v2file.FileVersion.V2_0:
            break  # 2.0 page lengths count values, not rows
        # Page lengths count values, priorities rows: below a fixed-size list of structs a row
        # is several values (the parser has checked that the lengths add up to a whole number).
        per_row = max(1, sum(page.length for page in column.pages) // rows) if rows else 1
        expected = 0
        for page in column.pages:
            if page.priority != expected or page.length % per_row:
                raise CompactionRefusedError(
                    f"self-check: column {index} has a page of {page.length} values starting at row {page.priority}, "
                    f"expected whole rows of {per_row} values from row {expected}",
                    path=where,
                )
            expected += page.length // per_row
    templates = guarded_columns if isinstance(guarded_columns, Mapping) else dict.fromkeys(guarded_columns)
    for index, template in templates.items():
        if repdef.column_kinds(meta.columns[index].pages, version, template) is None:
            raise CompactionRefusedError(
                f"self-check: column {index} mixes pages whose repetition/definition layers pylance would misread "
                "(or whose layers cannot be read)",
                path=where,
            )


class _PylanceWanted(Exception):
    """Small pages the copy cannot re-cut itself turned up after the first input: these fields'
    columns are to be re-encoded by pylance instead."""

    def __init__(self, fields: list[int]) -> None:
        super().__init__(fields)
        self.fields = fields


_collector_lock = threading.Lock()
_collector_pauses = [0, False]  # tasks copying now; whether the collector was on before the first


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a task copies (back as it was when the last task of
    the process ends). Keeping thousands of small pages allocates objects fast enough to set it
    off every few milliseconds, and each full pass walks every object of the process (pylance's,
    Dagster's): measured at about 10 % of merging 3,000 small files. The copy makes no cycles
    of its own that would wait for it; what others make is collected afterwards."""
    with _collector_lock:
        if _collector_pauses[0] == 0:
            _collector_pauses[1] = gc.isenabled()
            gc.disable()
        _collector_pauses[0] += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pauses[0] -= 1
            if _collector_pauses[0] == 0 and _collector_pauses[1]:
                gc.enable()


class _NothingCoalesced(CompactionRefusedError):
    """A task of fragments rewritten alone to coalesce their pages, none of which could be."""


def execute_task(
    uri: DatasetRef,
    plan: CompactionPlan,
    task: CompactionTask,
    *,
    progress: ProgressCallback | None = None,
) -> RewriteResult:
    """Write the task's new data files; commits nothing.

    The unit of work a runner ships to a worker (a thread, a process, a Ray or Dask task):
    it needs only the dataset's location, the plan and one of its tasks, all JSON-serialisable,
    and leaves the commit to the caller so that a crashed or duplicated task never changes
    the dataset; what it wrote is an orphan until committed.

    A task that turns out not to be copyable (an encoding that embeds file
    positions, inputs whose encodings differ, …) removes what it wrote and
    returns a skipped result with the reason; I/O and corruption errors raise.

    Args:
        uri: The dataset: a URI (opened with the plan's storage options), an open Dataset
            or a Storage. The task reads the plan's version, whatever the latest is.
        plan: The plan the task belongs to (its version and options).
        task: One of ``plan.tasks``.
        progress: Called with the number of bytes copied, as they are copied.

    Returns:
        The new fragments and the files written, to pass to
        :func:`~lance_assets.engine.committing.commit.commit_compaction`; or a skipped result
        (``skipped_reason``) that wrote nothing.

    Raises:
        CompactionRefusedError: A fragment of the task is not in the plan's version.
        MissingFileError: An input data file is absent.
        CorruptFileError: An input file does not parse as what the manifest says it is.
        StorageError: Reading or writing failed (permissions, full disk, network); what the
            task wrote is removed.

    Examples:
        >>> from lance_assets.engine import commit_compaction, execute_task, plan_compaction
        >>> plan = plan_compaction("s3://bucket/events.lance")
        >>> results = [execute_task(plan.uri, plan, task) for task in plan.tasks]  # anywhere
        >>> commit_compaction(plan.uri, plan, results).version
    """
    started = time.monotonic()
    ds = open_dataset(uri, plan.storage_options, plan.read_version)
    storage = ds.storage
    storage.max_in_flight = plan.options.max_concurrent_requests
    by_id = {f.id: f for f in ds.manifest.fragments}
    missing = [i for i in task.fragment_ids if i not in by_id]
    if missing:
        raise CompactionRefusedError(f"fragments {missing} are not in version {plan.read_version}", path=storage.uri)
    if task.reencode:
        return reencode_task(ds, plan, task, started)
    legacy = ds.storage_version == mf.LEGACY
    tally = coalesce.PageTally()
    written: list[str] = []
    fragments: list[str] = []
    deletions: list[str] = []
    bytes_read = bytes_written = 0
    try:
        with _cycle_collector_paused():
            for output in task.outputs:
                inputs = [by_id[i] for i in output.fragment_ids]
                if legacy:
                    frag, files, n_read, n_written = write_legacy_output(
                        ds, inputs, plan.options.read_batch_bytes, progress, plan.options.verify_output
                    )
                else:
                    frag, files, n_read, n_written = _write_output(
                        ds,
                        inputs,
                        plan.options.read_batch_bytes,
                        progress,
                        plan.options.verify_output,
                        options=plan.options,
                        tally=tally,
                    )
                written.extend(files)
                deletions.append(carry_deletions(ds, inputs, frag))
                fragments.append(RewriteResult.encode_fragment(frag))
                bytes_read += n_read
                bytes_written += n_written
            if all(len(o.fragment_ids) == 1 for o in task.outputs) and tally.pages_after >= tally.pages_before:
                # Only fragments healed alone, and their pages could not be coalesced: committing
                # the same pages again would change nothing but the version.
                why = "; ".join(sorted(tally.why_left)) or "no column was coalesced"
                raise _NothingCoalesced(f"small pages left as they were: {why}")
    except CompactionRefusedError as exc:
        remove_files(storage, written)
        return RewriteResult(
            task_id=task.task_id,
            old_fragment_ids=task.fragment_ids,
            bytes_read=bytes_read,
            seconds=time.monotonic() - started,
            skipped_reason=Reason.SMALL_PAGES if isinstance(exc, _NothingCoalesced) else Reason.NOT_COPYABLE,
            skipped_detail=str(exc),
        )
    except BaseException:
        remove_files(storage, written)
        raise
    return RewriteResult(
        task_id=task.task_id,
        old_fragment_ids=task.fragment_ids,
        new_fragments=tuple(fragments),
        deletion_files=tuple(deletions) if any(deletions) else (),
        files_written=tuple(written),
        rows=task.rows,
        bytes_read=bytes_read,
        bytes_written=bytes_written,
        seconds=time.monotonic() - started,
        pages_before=tally.pages_before,
        pages_after=tally.pages_after,
        columns_coalesced_native=tuple(sorted(tally.native)),
        columns_coalesced_pylance=tuple(sorted(tally.by_pylance)),
        columns_left_small=tuple(sorted(tally.left_small)),
        pages_notes=tuple(sorted(tally.why_left)),
    )
