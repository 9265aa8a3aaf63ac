"""Which fragments to merge, into how many files, and why the others are left alone.

Planning reads the manifest only, so it is fast on datasets with 100,000 fragments and
safe to run from a sensor -- except where the schema nests a list below a struct in a 2.1+
dataset, or has a blob column: there the candidates' file metadata is read too (rep/def
layers: see ``_FileSplitter``; blob descriptor layouts: ``_blob_refusals``), because the plan
must say what the copy will do. It follows
Lance's own candidate selection and binning (docs/how-it-works.md), and additionally
simulates the output files so that a task which would not reduce the number
of fragments is never run.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.blob_copy import blob_columns, blob_field_ids
from lance_assets.engine.coalesce import coalescible_fields, natively_coalescible, why_not_coalesce
from lance_assets.engine.dataset import Dataset, DatasetRef, open_dataset
from lance_assets.engine.indices import INDEX_REMAP_DROP, REUSE_INDEX_NAME, has_graph, index_views, is_system_index, is_vector
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.page_health import fragments_pages, read_each
from lance_assets.engine.reencode import blob_reencode_refusal, pylance_available
from lance_assets.engine.report import Reason, SkippedFragment
from lance_assets.engine.rows import live_rows
from lance_assets.engine.tail import read_v2_metadata
from lance_assets.errors import CompactionRefusedError, CorruptFileError, UnsupportedFeatureError, UnsupportedVersionError
from lance_assets.format import manifest as mf
from lance_assets.format import repdef
from lance_assets.format.blobs import column_refusals
from lance_assets.format.protobuf import has_unknown_fields, unknown_field_numbers
from lance_assets.format.v2file import FileVersion, null_fillable_fields

logger = logging.getLogger(__name__)

# Legacy (0.x) files count rows per batch in int32 (Metadata.batch_offsets).
LEGACY_MAX_ROWS_PER_FILE = 2**31 - 1
#: The v2 data-file versions whose pages we know how to copy.
_KNOWN_FILE_VERSIONS = frozenset(v.value for v in FileVersion)


@dataclass(frozen=True)
class OutputFile:
    """One data file a task will write: the fragments copied into it, in order."""

    fragment_ids: tuple[int, ...]
    rows: int
    bytes: int
    deletions: bool = False  # carries a deletion file (an input has deleted rows; binary copy keeps them)


@dataclass(frozen=True)
class CompactionTask:
    """Adjacent fragments merged as one Rewrite group."""

    task_id: int
    fragment_ids: tuple[int, ...]
    rows: int
    bytes: int
    outputs: tuple[OutputFile, ...]
    files: int = 0  # data and deletion files the task's fragments hold (what a commit removes)
    reencode: bool = False  # written by pylance's re-encode (deleted rows dropped), not binary copy


@dataclass(frozen=True)
class PlanSplit:
    """Two adjacent fragments that would have shared a bin but may not share a file, and why."""

    left_fragment_id: int
    right_fragment_id: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class CompactionPlan:
    """Everything ``execute_task`` and ``commit_compaction`` need, small enough to ship anywhere."""

    uri: str
    read_version: int
    storage_version: str
    tasks: tuple[CompactionTask, ...]
    skipped: tuple[SkippedFragment, ...]
    options: CompactionOptions
    splits: tuple[PlanSplit, ...] = ()
    #: Fragments merged with a caveat (e.g. deleted rows kept because nothing can re-encode them).
    notes: tuple[SkippedFragment, ...] = ()

    @property
    def bytes_to_read(self) -> int:
        return sum(t.bytes for t in self.tasks)

    @property
    def fragments_to_compact(self) -> int:
        return sum(len(t.fragment_ids) for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["options"] = self.options.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], storage_options: dict[str, Any] | None = None) -> CompactionPlan:
        options = CompactionOptions.from_dict({**data["options"], "storage_options": storage_options or {}})
        tasks = tuple(
            CompactionTask(
                task_id=t["task_id"],
                fragment_ids=tuple(t["fragment_ids"]),
                rows=t["rows"],
                bytes=t["bytes"],
                outputs=tuple(
                    OutputFile(tuple(o["fragment_ids"]), o["rows"], o["bytes"], o.get("deletions", False)) for o in t["outputs"]
                ),
                files=t.get("files", 0),
                reencode=t.get("reencode", False),
            )
            for t in data["tasks"]
        )
        skipped = tuple(SkippedFragment.from_dict(s) for s in data["skipped"])
        splits = tuple(PlanSplit(**s) for s in data.get("splits", ()))
        notes = tuple(SkippedFragment.from_dict(s) for s in data.get("notes", ()))
        return cls(data["uri"], data["read_version"], data["storage_version"], tasks, skipped, options, splits, notes)


# --- fragment properties ---------------------------------------------------------
def field_layout(fragment: table_pb2.DataFragment, live_ids: set[int]) -> tuple[tuple[int, bool], ...] | str:
    """(field id, owns a column) for every live field the fragment stores, in id order.

    Fragments can only share an output file when their layouts are equal. A
    string return is the reason the mapping cannot be trusted.
    """
    seen: dict[int, bool] = {}
    for df in fragment.files:
        if not len(df.column_indices) and mf.data_file_version(df) == mf.LEGACY:
            # Legacy files have no column mapping: they list every stored field id (parents too).
            for fid in df.fields:
                if fid in seen:
                    return f"field {fid} is stored twice"
                if fid in live_ids:
                    seen[fid] = True
            continue
        if len(df.fields) != len(df.column_indices):
            return f"data file {df.path} has {len(df.fields)} fields but {len(df.column_indices)} column indices"
        columns = [c for c in df.column_indices if c >= 0]
        if sorted(columns) != list(range(len(columns))):
            return f"data file {df.path} column indices {list(df.column_indices)} are not a permutation"
        for fid, col in zip(df.fields, df.column_indices):
            if fid not in live_ids:
                continue  # dropped (or tombstoned) field: its column is not copied
            if fid in seen:
                return f"field {fid} is stored in two data files"
            seen[fid] = col >= 0
    return tuple(sorted(seen.items()))


def _index_sets(ds: Dataset, index_remap: str) -> tuple[dict[int, frozenset[str]] | None, dict[int, str], dict[int, str]]:
    """Fragment id -> uuids of the indices covering it as readers see them (None: an index
    covers everything), fragment id -> name of a system index that pins it, and fragment id
    -> name of a graph (HNSW) index that covers it through the reuse index.

    Coverage is what pylance sees: each index's bitmap with the fragment-reuse versions
    applied. A group must be covered by the same indices throughout -- pylance cannot map a
    group only part of which an index covered -- so this is part of every bin's key (the
    reuse index included, as Lance's planner does). With ``index_remap="drop"`` the
    fragments the reuse index names are pinned: dropping them from a bitmap that names their
    predecessors is not possible. Other system indices hold mappings of their own.

    The third map names the fragments whose deleted rows must stay (kept as a deletion file,
    never dropped by a re-encode) and why: under a graph (HNSW) index while the moves go
    through the reuse index (``indices.has_graph``: pylance would fail every query), and on
    stable-row-id datasets under any vector index, which keeps returning the ids of rows a
    re-encode dropped (pylance then answers fewer than k neighbours; measured).
    """
    cover: dict[int, set[str]] = {}
    pinned: dict[int, str] = {}
    graphs: dict[int, str] = {}
    keeps = index_remap != INDEX_REMAP_DROP
    everything = False
    for view in index_views(ds):
        if view.fragments is None:
            everything = True
            continue
        is_reuse = view.name == REUSE_INDEX_NAME
        graph = keeps and (is_vector(view.meta) if ds.stable_row_ids else has_graph(view.meta))
        for fid in view.fragments:
            cover.setdefault(fid, set()).add(view.uuid)
            if is_system_index(view.meta) and (not is_reuse or index_remap == INDEX_REMAP_DROP):
                pinned[fid] = view.name
            if graph:
                graphs.setdefault(fid, view.name)
    return (None if everything else {k: frozenset(v) for k, v in cover.items()}), pinned, graphs


def fragment_file_count(fragment: table_pb2.DataFragment) -> int:
    """Data and deletion files of a fragment: what a Rewrite removes or adds (Lance's metrics count both)."""
    return len(fragment.files) + (1 if fragment.HasField("deletion_file") else 0)


# --- planning ----------------------------------------------------------------------
def plan_compaction(uri: DatasetRef, options: CompactionOptions | None = None) -> CompactionPlan:
    """Plan a compaction of the latest version (or of the given open Dataset).

    Planning writes nothing and reads little (the manifest; file metadata only for legacy,
    nested-list and blob datasets), so it can run from a sensor or a dry run, and the plan is small
    enough to ship to other machines: :func:`~lance_assets.engine.copy.execute_task` runs its
    tasks anywhere, :func:`~lance_assets.engine.commit.commit_compaction` commits them.

    Args:
        uri: The dataset: a URI, an open Dataset (planned at its version) or a Storage.
        options: What to merge and how; default ``CompactionOptions()``. Its storage options
            open a URI.

    Returns:
        The tasks (groups of neighbouring fragments and the files each becomes) and every
        fragment left alone with its reason (``skipped``). A dataset that cannot be compacted
        by copy at all (e.g. blob columns of a legacy dataset) gives a plan without tasks, not an error.

    Raises:
        NotADatasetError: ``uri`` holds no Lance dataset.
        UnknownFeatureFlagError: The manifest sets a reader or writer flag we do not
            implement (writing a version there could corrupt it).
        LanceAssetsError: Storage or corruption errors while reading (a typed subclass).

    Examples:
        >>> from lance_assets.engine import CompactionOptions, plan_compaction
        >>> plan = plan_compaction("/data/events.lance", CompactionOptions(target_rows_per_fragment=500_000))
        >>> len(plan.tasks), plan.fragments_to_compact, plan.bytes_to_read
        >>> [(s.fragment_id, s.reason) for s in plan.skipped][:3]
    """
    options = options or CompactionOptions()
    ds = open_dataset(uri, options.storage_options)
    ds.storage.max_in_flight = options.max_concurrent_requests
    mf.check_feature_flags(ds.manifest, path=ds.uri, for_write=True)
    fragments = ds.fragments
    skipped: list[SkippedFragment] = []

    def skip_all(reason: Reason, detail: str) -> CompactionPlan:
        skipped = tuple(SkippedFragment(f.id, reason, detail) for f in fragments)
        return _logged(
            CompactionPlan(ds.uri, ds.version, mf.storage_version_name(ds.storage_version), (), skipped, options), len(fragments)
        )

    if ds.storage_version == mf.LEGACY:
        # The inputs' rows go into one file whose batch offsets are int32.
        options_for_outputs = replace(options, max_rows_per_file=min(options.row_cap, LEGACY_MAX_ROWS_PER_FILE))
    else:
        options_for_outputs = options
    blob_ids = blob_field_ids(ds.manifest.fields)
    blob_names = [f.name for f in ds.manifest.fields if f.id in blob_ids]
    if blob_ids and ds.storage_version == mf.LEGACY:
        return skip_all(
            Reason.BLOB_COLUMN, f"legacy (0.x) blob columns ({', '.join(blob_names)}): pylance 14 cannot read them back"
        )
    nested_blobs = [f.name for f in ds.manifest.fields if f.id in blob_ids and f.parent_id != -1]
    if nested_blobs:
        return skip_all(Reason.BLOB_COLUMN, f"blob columns inside structs or lists ({', '.join(nested_blobs)}) are not rewritten")

    live_ids = {f.id for f in ds.manifest.fields}
    # Index entries hold row addresses (pylance 14 also with stable row ids), which a rewrite
    # moves; the commit records the moves (or drops coverage), see engine.indices. An index
    # without a bitmap (covering "everything") can do neither: it blocks.
    index_sets, pinned, graphs = _index_sets(ds, options.index_remap)

    # Each candidate carries the key that must match for it to share a bin with its neighbour.
    candidates: list[tuple[table_pb2.DataFragment, Any] | None] = []
    # Per-fragment work dominates on 100,000 fragments: fields unknown to us are looked for
    # per fragment only when the manifest has any at all, and layouts repeat, so each
    # distinct one is worked out once.
    check_unknown = has_unknown_fields(ds.manifest)
    layouts: dict[Any, tuple[tuple[int, bool], ...]] = {}
    # Lance's "compact itself" candidates: fragments whose deleted share is over the threshold.
    over: set[int] = set()
    held_heavy: dict[int, str] = {}  # over the threshold, but its deleted rows must stay: why
    deletions = {f.id for f in fragments if f.HasField("deletion_file")}
    fillable = functools.cache(lambda v: null_fillable_fields(ds.manifest.fields, FileVersion(mf.storage_version_name(v))))
    # Fragments whose deleted rows must stay (a graph index maps them through the reuse index).
    keep_deleted = {fid: name for fid, name in graphs.items() if fid in deletions}
    for frag in fragments:
        if _over_threshold(frag, options):
            if frag.id in keep_deleted:
                held_heavy[frag.id] = _graph_detail(frag, options, keep_deleted[frag.id], ds.stable_row_ids)
            else:
                over.add(frag.id)
    # Fragments at target size whose columns are cut into many small pages are rewritten too
    # (coalesced), when the copy can coalesce them; otherwise they are skipped saying so.
    heal, unhealable = _small_page_fragments(ds, fragments, options, live_ids, over)
    for frag in fragments:
        if frag.id in unhealable:
            skipped.append(SkippedFragment(frag.id, Reason.SMALL_PAGES, unhealable[frag.id]))
            candidates.append(None)
            continue
        reason = _candidate_reason(
            ds, frag, options, live_ids, index_sets, pinned, check_unknown, layouts, frag.id in over or frag.id in heal, fillable
        )
        if isinstance(reason, SkippedFragment):
            if reason.reason is Reason.AT_TARGET_SIZE and frag.id in held_heavy:
                reason = SkippedFragment(frag.id, Reason.MATERIALIZE_DELETIONS, held_heavy[frag.id])
            skipped.append(reason)
            candidates.append(None)
            continue
        candidates.append((frag, reason))
    if blob_ids:
        # Blob descriptor pages are rewritten by the copy; their layouts live in the data files.
        found = _blob_refusals(ds, [c[0] for c in candidates if c is not None], blob_ids)
        for i, item in enumerate(candidates):
            if item is not None and item[0].id in found:
                skipped.append(SkippedFragment(item[0].id, Reason.BLOB_COLUMN, found[item[0].id]))
                candidates[i] = None

    tasks: list[CompactionTask] = []
    splits: list[PlanSplit] = []
    notes: list[SkippedFragment] = []
    # Why nothing can be re-encoded ("" when pylance may): importing pylance only when asked.
    why_not = functools.cache(lambda: blob_reencode_refusal(ds.manifest.fields) or _why_not_reencode(options))
    why_not_reencode = "" if not over else why_not()
    layers = _FileSplitter(ds, why_not, frozenset(keep_deleted))
    source_budget = options.max_source_fragments
    capped = options.max_rows_per_file is not None or options.max_bytes_per_file is not None
    packed_alone: set[int] = set()
    data_bytes: dict[int, int] = {}  # fragment id -> bytes (may need a size request each: ask once)

    def sizes_of(frags: Sequence[table_pb2.DataFragment]) -> dict[int, int]:
        for f in frags:
            if f.id not in data_bytes:
                data_bytes[f.id] = ds.data_bytes(f.files, exact=options.max_bytes_per_file is not None)
        return {f.id: data_bytes[f.id] for f in frags}

    def groups(piece: list[table_pb2.DataFragment]) -> Iterable[list[table_pb2.DataFragment]]:
        """Lance's split by target; under a row or byte cap, next-fit packing of the whole piece
        instead (one group per output file), so a cap never leaves a full and a remainder file
        where whole inputs fit in fewer."""
        forced = layers.forced_reencode([f.id for f in piece])
        if not capped or forced or (not why_not_reencode and any(f.id in over for f in piece)):
            yield from _split_by_target(piece, options.target_rows_per_fragment)
            return
        by_id = {f.id: f for f in piece}
        for output in _outputs(piece, sizes_of(piece), options_for_outputs):
            if len(output.fragment_ids) == 1:
                packed_alone.add(output.fragment_ids[0])
            yield [by_id[i] for i in output.fragment_ids]

    for bin_ in _bins(candidates):
        pieces = layers.split(bin_, skipped, splits)
        for group in (g for piece in pieces for g in groups(piece)):
            ids = [f.id for f in group]
            heavy = [i for i in ids if i in over]
            forced = layers.forced_reencode(ids)
            reencode = bool(forced) or (bool(heavy) and not why_not_reencode)
            # Why the deleted rows stay ("" when they go, or nothing is heavy): re-encoding only to
            # drop deleted rows may not leave more fragments than it reads (a row cap can cut
            # the live rows into more files than there were inputs).
            why_kept = why_not_reencode
            per_file: int | None = None
            if reencode and not forced:
                per_file, more = _rows_per_file_for_deletions(group, options)
                if per_file is None:
                    reencode, why_kept = False, more
            healing = [i for i in ids if i in heal]
            if len(group) < 2 and not reencode and not healing:
                alone = layers.alone.get(ids[0]) if ids else None
                if ids[0] in packed_alone and len(bin_) > 1:
                    skipped.append(
                        SkippedFragment(ids[0], Reason.NO_REDUCTION, "the size limits leave this input in a file of its own")
                    )
                elif heavy or ids[0] in held_heavy:
                    detail = held_heavy.get(ids[0]) or _heavy_detail(group[0], options, why_kept)
                    skipped.append(SkippedFragment(ids[0], Reason.MATERIALIZE_DELETIONS, detail))
                elif alone is not None:
                    skipped.append(SkippedFragment(ids[0], layers.reason, alone))
                else:
                    skipped.extend(
                        SkippedFragment(i, Reason.NO_NEIGHBOUR, "no adjacent small fragment with the same layout and indices")
                        for i in ids
                    )
                continue
            sizes = sizes_of(group)
            if reencode:
                outputs = _reencode_outputs(group, sizes, options, per_file)
            else:
                outputs = _outputs(group, sizes, options_for_outputs)
            if not reencode and not healing and len(outputs) >= len(group):
                skipped.extend(
                    SkippedFragment(i, Reason.NO_REDUCTION, "the size limits leave every input in a file of its own") for i in ids
                )
                continue
            if source_budget is not None and len(group) > source_budget:
                skipped.extend(
                    SkippedFragment(
                        i, Reason.MAX_SOURCE_FRAGMENTS, f"limit of {options.max_source_fragments} source fragments reached"
                    )
                    for i in ids
                )
                source_budget = 0
                continue
            if source_budget is not None:
                source_budget -= len(group)
            tasks.append(
                CompactionTask(
                    task_id=len(tasks),
                    fragment_ids=tuple(ids),
                    rows=sum(f.physical_rows for f in group),
                    bytes=sum(sizes.values()),
                    outputs=outputs,
                    files=sum(fragment_file_count(f) for f in group),
                    reencode=reencode,
                )
            )
            if heavy and not reencode:
                notes.extend(
                    SkippedFragment(f.id, Reason.DELETIONS_KEPT, _heavy_detail(f, options, why_kept))
                    for f in group
                    if f.id in over
                )
            notes.extend(SkippedFragment(i, Reason.DELETIONS_KEPT, held_heavy[i]) for i in ids if i in held_heavy)
            notes.extend(
                SkippedFragment(fid, Reason.REENCODED, f"re-encoded with the fragment before it: {why}") for fid, why in forced
            )
            if not reencode:
                notes.extend(SkippedFragment(i, Reason.SMALL_PAGES, heal[i]) for i in healing)
    skipped.sort(key=lambda s: -1 if s.fragment_id is None else s.fragment_id)
    plan = CompactionPlan(
        ds.uri,
        ds.version,
        mf.storage_version_name(ds.storage_version),
        tuple(tasks),
        tuple(skipped),
        options,
        tuple(splits),
        tuple(notes),
    )
    return _logged(plan, len(fragments))


def _logged(plan: CompactionPlan, considered: int) -> CompactionPlan:
    """Say what ``plan`` decided, for operators who read logs rather than the JSON report: one
    INFO line (groups formed, fragments left alone by reason), each group, split and fragment
    left alone at DEBUG -- the same facts as the plan's ``tasks``, ``splits``, ``skipped`` and
    ``notes``."""
    reasons = Counter(s.reason.value for s in plan.skipped)
    logger.info(
        "plan %s at version %d: %d fragments considered, %d groups formed from %d fragments "
        "(%d re-encoded, %d bytes to read), %d left alone%s",
        plan.uri,
        plan.read_version,
        considered,
        len(plan.tasks),
        plan.fragments_to_compact,
        sum(len(t.fragment_ids) for t in plan.tasks if t.reencode),
        plan.bytes_to_read,
        len(plan.skipped),
        f" ({', '.join(f'{reason}: {n}' for reason, n in sorted(reasons.items()))})" if reasons else "",
    )
    if not logger.isEnabledFor(logging.DEBUG):
        return plan  # 100,000 fragments: no per-fragment strings unless someone reads them
    for task in plan.tasks:
        logger.debug(
            "group %d: fragments %s -> %d file(s), %d rows, %d bytes, by %s",
            task.task_id,
            list(task.fragment_ids),
            len(task.outputs),
            task.rows,
            task.bytes,
            "re-encode" if task.reencode else "binary copy",
        )
    for split in plan.splits:
        logger.debug(
            "fragments %d and %d kept apart: %s%s",
            split.left_fragment_id,
            split.right_fragment_id,
            split.reason,
            f" ({split.detail})" if split.detail else "",
        )
    for entry, what in [*((s, "left alone") for s in plan.skipped), *((n, "merged with a caveat") for n in plan.notes)]:
        who = "the run" if entry.fragment_id is None else f"fragment {entry.fragment_id}"
        logger.debug("%s %s: %s%s", who, what, entry.reason.value, f" ({entry.detail})" if entry.detail else "")
    return plan


def _small_page_fragments(
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
        and mf.storage_version_name(mf.data_file_version(f.files[0])) in _KNOWN_FILE_VERSIONS
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


def _over_threshold(frag: table_pb2.DataFragment, options: CompactionOptions) -> bool:
    """Whether Lance would rewrite ``frag`` to drop its deleted rows (its deleted share is over the threshold)."""
    if not options.materialize_deletions or not frag.HasField("deletion_file"):
        return False
    return frag.deletion_file.num_deleted_rows > options.materialize_deletions_threshold * frag.physical_rows


def _why_not_reencode(options: CompactionOptions) -> str:
    """Why groups over the deletion threshold cannot be re-encoded ("" when they can)."""
    if not options.reencode_fallback:
        return "re-encoding is turned off (reencode_fallback)"
    if not pylance_available():
        return "re-encoding needs pylance: pip install 'lance_assets[reencode]'"
    return ""


def _heavy_detail(frag: table_pb2.DataFragment, options: CompactionOptions, why: str) -> str:
    deleted = frag.deletion_file.num_deleted_rows
    return (
        f"{deleted} of {frag.physical_rows} rows deleted (over {options.materialize_deletions_threshold:.0%}); "
        f"binary copy keeps them as a deletion file: {why}"
    )


def _graph_detail(frag: table_pb2.DataFragment, options: CompactionOptions, index: str, stable_row_ids: bool) -> str:
    deleted = frag.deletion_file.num_deleted_rows
    why = (
        "a vector index keeps returning the ids of dropped rows on stable-row-id datasets (fewer than k answers)"
        if stable_row_ids
        else "pylance cannot map deleted rows out of an HNSW graph through the fragment-reuse index (every query would fail)"
    )
    return (
        f"{deleted} of {frag.physical_rows} rows deleted (over {options.materialize_deletions_threshold:.0%}); "
        f"kept as a deletion file: the index {index!r} covers them and {why}"
    )


def _rows_per_file_for_deletions(group: list[table_pb2.DataFragment], options: CompactionOptions) -> tuple[int | None, str]:
    """Rows per file for re-encoding ``group`` only to drop its deleted rows, and why not (None).

    Such a rewrite may not leave more fragments than it reads: where the target would cut the
    live rows into more files than inputs, fewer and larger files are written (the target is
    what makes a fragment small, not a cap); where only the row cap does, the group is left as
    it is, with its deletion files.
    """
    live = live_rows(group)
    per = options.rows_per_reencoded_file(live)
    inputs = len(group)
    if live <= per * inputs:
        return per, ""
    fewer = -(-live // inputs)
    if fewer <= options.row_cap:
        return fewer, ""
    files = -(-live // options.row_cap)
    return None, (
        f"re-encoding would cut its {live:,} live rows into {files} files of at most {options.row_cap:,} rows "
        f"(max_rows_per_file), more fragments than the {inputs} it reads"
    )


def _reencode_outputs(
    group: list[table_pb2.DataFragment], sizes: dict[int, int], options: CompactionOptions, per: int | None = None
) -> tuple[OutputFile, ...]:
    """The files a re-encode of ``group`` writes: its live rows cut every ``per`` rows (by
    default ``options.rows_per_reencoded_file(live)``).

    Each output names every input (rows are re-cut, not copied file by file); bytes are estimated
    in proportion to the live rows.
    """
    ids = tuple(f.id for f in group)
    live = live_rows(group)
    physical = sum(f.physical_rows for f in group) or 1
    size = sum(sizes.values()) * live // physical
    per = per or options.rows_per_reencoded_file(live)
    counts = [per] * (live // per) + ([live % per] if live % per or not live else [])
    return tuple(OutputFile(ids, n, size * n // max(live, 1)) for n in counts)


_NO_INDICES: frozenset[str] = frozenset()


def _candidate_reason(
    ds: Dataset,
    frag: table_pb2.DataFragment,
    options: CompactionOptions,
    live_ids: set[int],
    index_sets: dict[int, frozenset[str]] | None,
    pinned: dict[int, str],
    check_unknown: bool = True,
    layouts: dict[Any, tuple[tuple[int, bool], ...]] | None = None,
    over_threshold: bool = False,
    fillable: Callable[[tuple[int, int]], frozenset[int]] | None = None,
) -> SkippedFragment | tuple[Any, ...]:
    """Why ``frag`` cannot be compacted, or its bin key when it can.

    ``check_unknown=False`` says the manifest holds no unknown fields at all;
    ``layouts`` memoizes ``field_layout`` by the files' field mappings; ``fillable`` gives, per
    file version, the fields a file may lack (``v2file.null_fillable_fields``).
    """

    # Runs for each of up to 100,000 fragments: every protobuf attribute is read once.
    fid = frag.id

    def skip(reason: Reason, detail: str = "") -> SkippedFragment:
        return SkippedFragment(fid, reason, detail)

    rows = frag.physical_rows
    files = list(frag.files)  # keeps the file wrappers alive: building them is the per-fragment cost
    if fid in options.excluded_fragment_ids:
        return skip(Reason.EXCLUDED, "listed in excluded_fragment_ids")
    if rows == 0 or not files:
        return skip(Reason.EMPTY, "fragment has no rows or no data files")
    if rows >= options.target_rows_per_fragment and not over_threshold:
        return skip(Reason.AT_TARGET_SIZE, f"{rows} rows >= target {options.target_rows_per_fragment}")
    if check_unknown:
        unknown = unknown_field_numbers(frag) + [n for df in files for n in unknown_field_numbers(df)]
        if unknown:
            return skip(
                Reason.UNKNOWN_FRAGMENT_FIELDS, f"fields {sorted(set(unknown))} written by a newer Lance (e.g. data overlays)"
            )
    storage_version = ds.storage_version
    versions = []
    base_path = False
    key = []  # what field_layout depends on, to memoize it ([:] copies a repeated field in C)
    for df in files:
        version = mf.data_file_version(df)
        versions.append(version)
        base_path = base_path or df.HasField("base_id")
        key.append((tuple(df.fields[:]), tuple(df.column_indices[:]), version))
    if len(set(versions)) != 1:
        return skip(Reason.FILE_VERSION_MISMATCH, "the fragment's data files have different versions")
    if versions[0] != mf.LEGACY and mf.storage_version_name(versions[0]) not in _KNOWN_FILE_VERSIONS:
        # A newer Lance (or a damaged manifest): we know no layout to copy it by.
        return skip(Reason.NOT_COPYABLE, f"data file version {mf.storage_version_name(versions[0])} is not one we copy")
    if (versions[0] == mf.LEGACY) != (storage_version == mf.LEGACY):
        names = mf.storage_version_name(versions[0]), mf.storage_version_name(storage_version)
        return skip(Reason.FILE_VERSION_MISMATCH, "a {} data file in a {} dataset".format(*names))
    if base_path:
        return skip(Reason.BASE_PATH, "data files under another base path")
    if (
        frag.HasField("external_row_ids")
        or frag.HasField("external_created_at_versions")
        or frag.HasField("external_last_updated_at_versions")
    ):
        return skip(Reason.EXTERNAL_ROW_IDS, "row-id or version sequences stored in external files")
    if ds.stable_row_ids and not frag.HasField("inline_row_ids"):
        return skip(Reason.EXTERNAL_ROW_IDS, "stable-row-id dataset fragment without a row-id sequence")
    layout_key = tuple(key)
    layout = layouts.get(layout_key) if layouts is not None else None
    if layout is None:
        found = field_layout(frag, live_ids)
        if isinstance(found, str):
            return skip(Reason.COLUMN_MAPPING, found)
        layout = found
        if layouts is not None:
            layouts[layout_key] = layout
    if index_sets is None:
        return skip(Reason.INDEXED, "an index without a fragment bitmap covers every fragment")
    if fid in pinned:
        return skip(
            Reason.INDEXED, f"covered by the Lance system index {pinned[fid]}, whose row mapping a rewrite would invalidate"
        )
    if versions[0] != mf.LEGACY:
        # Fields a file may lack (added to the schema after it was written) are filled with
        # all-null pages when it is merged: they do not keep fragments apart.
        dropped = fillable(versions[0]) if fillable is not None else frozenset()
        layout = tuple(fc for fc in layout if fc[0] not in dropped)
    # Files of another version (mixed-version datasets) merge only with their own version.
    return (layout, index_sets.get(fid, _NO_INDICES), versions[0])


class _FileSplitter:
    """Splits bins where neighbouring fragments' files may not share an output file.

    One fact lives in the data files, not in the manifest, so for it the planner reads the
    candidates' file metadata (its only data-file reads: the dry run then sees what the copy will):
    2.1+ nested columns, whose pages may share a column only when their repetition/definition
    layers agree (``format.repdef``) -- read only where the schema nests a list in a struct.
    (Legacy files never need a split: batches that do not line up are re-cut by the copy.)
    """

    def __init__(self, ds: Dataset, why_not_reencode: Callable[[], str], keep_deleted: frozenset[int] = frozenset()) -> None:
        self._ds = ds
        self._why_not_reencode = why_not_reencode
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
                and not self._why_not_reencode()
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


#: What reading one fragment's file metadata may raise that is about that fragment's files (a
#: layout we cannot parse or do not know): the fragment is left alone with the reason, the plan
#: goes on. Storage errors (network, permissions, a missing file) still stop the plan.
_UNJUDGED = (CorruptFileError, UnsupportedVersionError, UnsupportedFeatureError)


def _blob_refusals(ds: Dataset, frags: Sequence[table_pb2.DataFragment], blob_ids: frozenset[int]) -> dict[int, str]:
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


def _bins(candidates: Sequence[tuple[table_pb2.DataFragment, Any] | None]) -> Iterable[list[table_pb2.DataFragment]]:
    """Runs of consecutive candidates with equal bin keys."""
    current: list[table_pb2.DataFragment] = []
    key: Any = object()
    for item in candidates:
        if item is None or item[1] != key:
            if current:
                yield current
            current = []
        if item is not None:
            current.append(item[0])
            key = item[1]
    if current:
        yield current


def _split_by_target(bin_: list[table_pb2.DataFragment], target: int) -> Iterable[list[table_pb2.DataFragment]]:
    """Lance's greedy split: cut once a group reaches the target, if the rest reaches it too."""
    remaining = sum(f.physical_rows for f in bin_)
    group: list[table_pb2.DataFragment] = []
    rows = 0
    for frag in bin_:
        group.append(frag)
        rows += frag.physical_rows
        remaining -= frag.physical_rows
        if rows >= target and remaining >= target:
            yield group
            group, rows = [], 0
    if group:
        yield group


def _outputs(group: list[table_pb2.DataFragment], sizes: dict[int, int], options: CompactionOptions) -> tuple[OutputFile, ...]:
    """Split a group into output files at input boundaries (pages line up nowhere else): a file
    closes at the target when the rest of the group reaches the target too (so no small
    remainder file is left, as in Lance's bin split), and before any input that would take it
    over a row or byte cap."""
    outputs: list[OutputFile] = []
    ids: list[int] = []
    rows = size = 0
    remaining = sum(f.physical_rows for f in group)
    deletions = False
    byte_cap, row_cap, target = options.max_bytes_per_file, options.row_cap, options.target_rows_per_fragment
    for frag in group:
        fid = frag.id
        frag_rows, frag_bytes = frag.physical_rows, sizes[fid]
        over_rows = rows + frag_rows > row_cap
        over_bytes = byte_cap is not None and size + frag_bytes > byte_cap
        if ids and (over_rows or over_bytes):
            outputs.append(OutputFile(tuple(ids), rows, size, deletions))
            ids, rows, size, deletions = [], 0, 0, False
        ids.append(fid)
        rows += frag_rows
        size += frag_bytes
        deletions = deletions or (frag.HasField("deletion_file") and frag.deletion_file.num_deleted_rows > 0)
        remaining -= frag_rows
        if rows >= target and remaining >= target:
            outputs.append(OutputFile(tuple(ids), rows, size, deletions))
            ids, rows, size, deletions = [], 0, 0, False
    if ids:
        outputs.append(OutputFile(tuple(ids), rows, size, deletions))
    return tuple(outputs)
