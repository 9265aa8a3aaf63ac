"""Planning's first stage: which fragments may be rewritten, and why the others are left alone.

A candidate carries the key its neighbour must share to join its bin (file layout, indices,
deletions); ``Candidates.find`` follows Lance's own candidate selection (docs/how-it-works.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.copying.blob_copy import blob_field_ids
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.indices import INDEX_REMAP_DROP, REUSE_INDEX_NAME, has_graph, index_views, is_system_index, is_vector
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan_files import KNOWN_FILE_VERSIONS, blob_refusals, small_page_fragments
from lance_assets.engine.planning.tasks import CompactionPlan
from lance_assets.engine.report import Reason, SkippedFragment
from lance_assets.format import manifest as mf
from lance_assets.format.protobuf import has_unknown_fields, unknown_field_numbers
from lance_assets.format.v2file import FileVersion, null_fillable_fields

_NO_INDICES: frozenset[str] = frozenset()


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


@dataclass
class Candidates:
    """Planning's first stage: which fragments may be rewritten (each with the key a neighbour
    must share to join its bin; None for one left alone, whose reason is in ``skipped``)."""

    candidates: list[tuple[table_pb2.DataFragment, Any] | None]
    skipped: list[SkippedFragment]
    over: set[int]  # Lance's "compact itself" candidates: deleted share over the threshold
    held_heavy: dict[int, str]  # over the threshold, but its deleted rows must stay: why
    heal: dict[int, str]  # at target size, but made of small pages the copy coalesces: why
    keep_deleted: dict[int, str]  # deleted rows a graph index maps through the reuse index

    @classmethod
    def find(cls, ds: Dataset, options: CompactionOptions) -> Candidates | CompactionPlan:
        """The candidates, or a plan without tasks when the whole dataset must be left alone."""
        fragments = ds.fragments
        blob_ids = blob_field_ids(ds.manifest.fields)
        refused = _refused_blobs(ds, blob_ids)
        if refused:
            skipped = tuple(SkippedFragment(f.id, Reason.BLOB_COLUMN, refused) for f in fragments)
            return CompactionPlan(ds.uri, ds.version, mf.storage_version_name(ds.storage_version), (), skipped, options)
        live_ids = {f.id for f in ds.manifest.fields}
        # Index entries hold row addresses (pylance 14 also with stable row ids), which a rewrite
        # moves; the commit records the moves (or drops coverage), see engine.indices. An index
        # without a bitmap (covering "everything") can do neither: it blocks.
        index_sets, pinned, graphs = _index_sets(ds, options.index_remap)
        deletions = {f.id for f in fragments if f.HasField("deletion_file")}
        found = cls([], [], set(), {}, {}, {fid: name for fid, name in graphs.items() if fid in deletions})
        for frag in fragments:
            if _over_threshold(frag, options):
                if frag.id in found.keep_deleted:
                    found.held_heavy[frag.id] = _graph_detail(frag, options, found.keep_deleted[frag.id], ds.stable_row_ids)
                else:
                    found.over.add(frag.id)
        # Fragments at target size whose columns are cut into many small pages are rewritten too
        # (coalesced), when the copy can coalesce them; otherwise they are skipped saying so.
        found.heal, unhealable = small_page_fragments(ds, fragments, options, live_ids, found.over)
        # Per-fragment work dominates on 100,000 fragments: fields unknown to us are looked for
        # per fragment only when the manifest has any at all, and layouts repeat, so each
        # distinct one is worked out once.
        check_unknown = has_unknown_fields(ds.manifest)
        layouts: dict[Any, tuple[tuple[int, bool], ...]] = {}
        fillable = functools.cache(lambda v: null_fillable_fields(ds.manifest.fields, FileVersion(mf.storage_version_name(v))))
        for frag in fragments:
            if frag.id in unhealable:
                found.skip(SkippedFragment(frag.id, Reason.SMALL_PAGES, unhealable[frag.id]))
                continue
            rewrite = frag.id in found.over or frag.id in found.heal
            reason = _candidate_reason(ds, frag, options, live_ids, index_sets, pinned, check_unknown, layouts, rewrite, fillable)
            if isinstance(reason, SkippedFragment):
                if reason.reason is Reason.AT_TARGET_SIZE and frag.id in found.held_heavy:
                    reason = SkippedFragment(frag.id, Reason.MATERIALIZE_DELETIONS, found.held_heavy[frag.id])
                found.skip(reason)
                continue
            found.candidates.append((frag, reason))
        if blob_ids:
            # Blob descriptor pages are rewritten by the copy; their layouts live in the data files.
            refusals = blob_refusals(ds, [c[0] for c in found.candidates if c is not None], blob_ids)
            for i, item in enumerate(found.candidates):
                if item is not None and item[0].id in refusals:
                    found.skipped.append(SkippedFragment(item[0].id, Reason.BLOB_COLUMN, refusals[item[0].id]))
                    found.candidates[i] = None
        return found

    def skip(self, why: SkippedFragment) -> None:
        self.skipped.append(why)
        self.candidates.append(None)


def _refused_blobs(ds: Dataset, blob_ids: frozenset[int]) -> str:
    """Why the dataset's blob columns keep every fragment as it is ("" when they do not)."""
    names = [f.name for f in ds.manifest.fields if f.id in blob_ids]
    if blob_ids and ds.storage_version == mf.LEGACY:
        return f"legacy (0.x) blob columns ({', '.join(names)}): pylance 14 cannot read them back"
    nested = [f.name for f in ds.manifest.fields if f.id in blob_ids and f.parent_id != -1]
    if nested:
        return f"blob columns inside structs or lists ({', '.join(nested)}) are not rewritten"
    return ""


def _over_threshold(frag: table_pb2.DataFragment, options: CompactionOptions) -> bool:
    """Whether Lance would rewrite ``frag`` to drop its deleted rows (its deleted share is over the threshold)."""
    if not options.materialize_deletions or not frag.HasField("deletion_file"):
        return False
    return frag.deletion_file.num_deleted_rows > options.materialize_deletions_threshold * frag.physical_rows


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
    if versions[0] != mf.LEGACY and mf.storage_version_name(versions[0]) not in KNOWN_FILE_VERSIONS:
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
