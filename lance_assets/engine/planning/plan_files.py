"""What planning reads from the candidates' data files (the rest of planning reads the manifest).

Only some datasets need it: a 2.1+ schema that nests a list below a struct (the files' rep/def
layers decide which fragments may share a file: ``FileSplitter``), blob columns (descriptor
layouts: ``blob_refusals``) and fragments at target size whose columns may be made of small
pages (``small_page_fragments``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.copying.blob_copy import blob_columns
from lance_assets.engine.copying.coalesce import coalescible_fields, natively_coalescible, why_not_coalesce
from lance_assets.engine.copying.reencode import pylance_available
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.page_health import fragments_pages, read_each
from lance_assets.engine.planning.tasks import PlanSplit
from lance_assets.engine.report import Reason, SkippedFragment
from lance_assets.engine.tail import read_v2_metadata
from lance_assets.errors import CompactionRefusedError, CorruptFileError, UnsupportedFeatureError, UnsupportedVersionError
from lance_assets.format import manifest as mf
from lance_assets.format import repdef
from lance_assets.format.blobs import column_refusals
from lance_assets.format.v2file import FileVersion

#: The v2 data-file versions whose pages we know how to copy.
KNOWN_FILE_VERSIONS = frozenset(v.value for v in FileVersion)

#: What reading one fragment's file metadata may raise that is about that fragment's files (a
#: layout we cannot parse or do not know): the fragment is left alone with the reason, the plan
#: goes on. Storage errors (network, permissions, a missing file) still stop the plan.
_UNJUDGED = (CorruptFileError, UnsupportedVersionError, UnsupportedFeatureError)


def small_page_fragments(
    ds: Dataset,
    fragments: Sequence[table_pb2.DataFragment],
    options: CompactionOptions,
    live_ids: set[int],
    over: set[int],
) -> tuple[dict[int, str], dict[int, str]]:
    """Fragments at target size with columns of many small pages: (fragment id -> which columns,
    for those the copy will coalesce; fragment id -> why not, for those it cannot).

    Reads the data files' metadata of the fragments at target size only (small fragments are
    candidates anyway). Only columns the copy may coalesce count (``coalesce.coalescible_fields``;
    2.1 and 2.2 files are re-cut by the copy itself, other versions need pylance),
    and a coalesced column holds pages as large as pylance's writer makes them, so a fragment
    healed once is not picked again.
    """
    if options.pages == "copy" or ds.storage_version == mf.LEGACY:
        return {}, {}
    at_target = [
        f
        for f in fragments
        if f.physical_rows >= options.target_rows_per_fragment
        and f.id not in over
        and f.id not in options.excluded_fragment_ids
        and f.files
        and all(mf.data_file_version(df) != mf.LEGACY for df in f.files)
        and mf.storage_version_name(mf.data_file_version(f.files[0])) in KNOWN_FILE_VERSIONS
    ]
    if not at_target:
        return {}, {}
    names = repdef.field_paths(ds.manifest.fields)
    why_not = why_not_coalesce(ds.manifest.fields, options)
    coalescible = functools.cache(lambda v: coalescible_fields(ds.manifest.fields, FileVersion(mf.storage_version_name(v))))
    heal: dict[int, str] = {}
    cannot: dict[int, str] = {}
    for frag, stats in zip(at_target, fragments_pages(ds, at_target, live_ids)):
        fragmented = {fid: s for fid, s in stats.items() if s.fragmented}
        if not fragmented:
            continue
        allowed = coalescible(mf.data_file_version(frag.files[0]))
        fixable = {fid: s for fid, s in fragmented.items() if fid in allowed}
        listed = ", ".join(f"{names.get(fid, fid)} ({s.small_pages} of {s.pages})" for fid, s in sorted(fragmented.items()))
        version = FileVersion(mf.storage_version_name(mf.data_file_version(frag.files[0])))
        if fixable and (not why_not or natively_coalescible(version)):
            heal[frag.id] = f"at target size, but columns are made of small pages: {listed}; rewritten to coalesce them"
        else:
            reason = why_not or "their columns are not ones pylance may rewrite (blob or guarded nested fields)"
            cannot[frag.id] = f"columns made of small pages: {listed}; left as they are: {reason}"
    return heal, cannot


def why_not_reencode(options: CompactionOptions) -> str:
    """Why groups over the deletion threshold cannot be re-encoded ("" when they can)."""
    if not options.reencode_fallback:
        return "re-encoding is turned off (reencode_fallback)"
    if not pylance_available():
        return "re-encoding needs pylance: pip install 'lance_assets[reencode]'"
    return ""


class FileSplitter:
    """Splits bins where neighbouring fragments' files may not share an output file.

    One fact lives in the data files, not in the manifest, so for it the planner reads the
    candidates' file metadata (its only data-file reads: the dry run then sees what the copy will):
    2.1+ nested columns, whose pages may share a column only when their repetition/definition
    layers agree (``format.repdef``) -- read only where the schema nests a list in a struct.
    (Legacy files never need a split: batches that do not line up are re-cut by the copy.)
    """

    def __init__(self, ds: Dataset, why_not_reencode: Callable[[], str], keep_deleted: frozenset[int] = frozenset()) -> None:
        self._ds = ds
        self.why_not_reencode = why_not_reencode
        #: fragments whose deleted rows must stay (a re-encode would drop them): split, never re-encode
        self._keep_deleted = keep_deleted
        #: boundaries (left id, right id) merged anyway because the group will be re-encoded
        self.reencode_pairs: dict[tuple[int, int], str] = {}
        # Guarded fields per file version (empty for 2.0); the schema decides, so once per version.
        self._guarded = functools.cache(lambda version: repdef.guarded_field_ids(ds.manifest.fields, version))
        self._templates = repdef.fixed_size_templates(ds.manifest.fields)
        self._nested = ds.storage_version != mf.LEGACY and bool(self._guarded(FileVersion.V2_1))
        self._names = repdef.field_paths(ds.manifest.fields)
        self.reason = Reason.INCOMPATIBLE_LAYERS
        #: fragment id -> why it is left alone (set for fragments a split isolated)
        self.alone: dict[int, str] = {}

    def split(
        self, bin_: list[table_pb2.DataFragment], skipped: list[SkippedFragment], splits: list[PlanSplit]
    ) -> list[list[table_pb2.DataFragment]]:
        if not self._nested or len(bin_) < 2:
            return [bin_]
        pieces: list[list[table_pb2.DataFragment]] = []
        run: list[Any] = []
        for frag, info in zip(bin_, self._infos(bin_)):
            if isinstance(info, SkippedFragment):
                skipped.append(info)
                run = []
                continue
            if isinstance(info, str):
                skipped.append(SkippedFragment(frag.id, self.reason, info))
                run = []
                continue
            problem = self._refuses(run, info) if run else None
            if (
                run
                and problem is not None
                and not self.why_not_reencode()
                and not any(f.id in self._keep_deleted for f in (*pieces[-1], frag))
            ):
                # pylance can re-encode the group: merge, and say which boundary needs it
                self.reencode_pairs[(pieces[-1][-1].id, frag.id)] = problem
                pieces[-1].append(frag)
                run = [info]
                continue
            if run and problem is None:
                pieces[-1].append(frag)
                run.append(info)
                continue
            if run and problem is not None:
                left = pieces[-1][-1].id
                splits.append(PlanSplit(left, frag.id, self.reason, problem))
                self.alone.setdefault(left, problem)
                self.alone[frag.id] = problem
            pieces.append([frag])
            run = [info]
        return pieces

    def forced_reencode(self, ids: Sequence[int]) -> list[tuple[int, str]]:
        """(right fragment id, why) for each boundary inside ``ids`` that binary copy may not cross."""
        return [(b, self.reencode_pairs[(a, b)]) for a, b in itertools.pairwise(ids) if (a, b) in self.reencode_pairs]

    def _refuses(self, run: list[Any], info: Any) -> str | None:
        """Why a fragment with ``info`` may not join the run of fragments whose infos are ``run``."""
        return None if info == run[-1] else repdef.describe_difference(run[-1], info, self._names)

    def _infos(self, bin_: list[table_pb2.DataFragment]) -> list[Any]:
        """Per fragment: its layer key, or why it has none (a string: its layers; a skip: its
        files could not be judged, which leaves that fragment alone, not the whole run)."""
        ds = self._ds

        def read(frag: table_pb2.DataFragment) -> Any:
            keys: list[Any] = []
            for df in frag.files:
                version = FileVersion(mf.storage_version_name(mf.data_file_version(df)))
                guarded = self._guarded(version)
                try:
                    meta = read_v2_metadata(ds.storage, ds.data_file_path(df), df.file_size_bytes)
                except _UNJUDGED as exc:
                    return SkippedFragment(frag.id, Reason.NOT_COPYABLE, str(exc))
                owners = {fid: col for fid, col in zip(df.fields, df.column_indices) if col >= 0}
                key = repdef.file_layer_key(meta.columns, owners, guarded, version, self._templates)
                if isinstance(key, repdef.LayerConflict):
                    return f"field {self._names.get(key.field_id, key.field_id)!r}: {key.detail}"
                keys.extend(key)
            return tuple(sorted(keys))

        return read_each(ds, read, bin_)


def blob_refusals(ds: Dataset, frags: Sequence[table_pb2.DataFragment], blob_ids: frozenset[int]) -> dict[int, str]:
    """Fragment id -> why its blob descriptors cannot be rewritten, for the fragments whose
    data files hold a blob column in a page layout ``format.blobs`` does not know (judged from
    file metadata, as the copy judges it; the descriptors themselves are read only by the copy)."""

    def read(frag: table_pb2.DataFragment) -> str:
        for df in frag.files:
            rel = ds.data_file_path(df)
            try:
                meta = read_v2_metadata(ds.storage, rel, df.file_size_bytes)
            except _UNJUDGED as exc:
                return str(exc)
            columns = {fid: col for fid, col in zip(df.fields, df.column_indices) if fid in blob_ids and col >= 0}
            if not columns:
                continue
            try:
                blob_columns(meta, columns, blob_ids, ds.storage.url(rel))
            except CompactionRefusedError as exc:
                return exc.reason
            for fid, col in columns.items():
                if col >= meta.num_columns:
                    return f"data file {df.path} has no column {col}"
                refusals = column_refusals(meta.columns[col], meta.version)
                if refusals:
                    return f"blob field {fid}: " + "; ".join(refusals)
        return ""

    return {frag.id: why for frag, why in zip(frags, read_each(ds, read, frags)) if why}
