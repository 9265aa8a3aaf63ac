"""Commit finished rewrite tasks (and index changes) as one new dataset version each.

This module decides *what* the next version holds: the Rewrite transaction and its groups,
new fragment ids, carried deletion files, the fragment-reuse record and every index's
coverage, and which commits that landed since our read version we may rebase over. *How* it
lands — writing side files, create-if-absent, retrying lost races, telling a lost response
from a lost race — is :mod:`lance_assets.engine.committing.commit_loop`, shared by every kind of commit.
A real conflict removes the files we wrote and raises, leaving the dataset exactly as the
other writer left it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from lance_assets import __version__
from lance_assets._proto import table_pb2, transaction_pb2
from lance_assets.engine.committing.btree_remap import BTREE_DETAILS_TYPE_URL, RowMoves, remap_btree, reuse_moves, row_moves
from lance_assets.engine.committing.commit_loop import (
    DEFAULT_MAX_RETRIES,
    Attempt,
    Landed,
    commit_loop,
    load_transaction,
    remove_files,
    transaction_write,
)
from lance_assets.engine.committing.zone_remap import ZONED_KINDS, remap_zones
from lance_assets.engine.copying.reencode import pylance_available
from lance_assets.engine.dataset import DELETIONS_DIR, Dataset, DatasetRef, storage_of
from lance_assets.engine.indices import (
    INDEX_REMAP_DEFER,
    REUSE_INDEX_NAME,
    VECTOR_DETAILS_TYPE_URL,
    Details,
    IndexView,
    has_graph,
    index_type,
    index_views,
    is_system_index,
    is_vector,
    load_reuse_versions,
    reuse_group,
    reuse_index_meta,
    reuse_index_metadata,
    reuse_versions,
)
from lance_assets.engine.planning.tasks import CompactionPlan, fragment_file_count
from lance_assets.engine.report import CompactionReport, Reason, RewriteResult, SkippedFragment
from lance_assets.engine.rows import deleted_offsets
from lance_assets.errors import (
    CommitConflictError,
    MissingFileError,
    NotADatasetError,
    VersionNotFoundError,
)
from lance_assets.format import manifest as mf
from lance_assets.format.deletion import DeletionFileType, deletion_file_name
from lance_assets.format.roaring import decode_bitmap, encode_bitmap
from lance_assets.io import Storage

WRITER_LIBRARY = "lance_assets"


@dataclass(frozen=True)
class _Group:
    old_ids: tuple[int, ...]
    new: tuple[table_pb2.DataFragment, ...]
    reencoded: bool = False


def _conflict(txn: transaction_pb2.Transaction | None, version: int, ours: set[int], stable_row_ids: bool) -> str | None:
    """Why a commit that landed after our read version is incompatible with our rewrite, if it is."""
    if txn is None:
        return f"version {version} has no transaction record, so it cannot be checked"
    op = txn.WhichOneof("operation")
    if op in ("append", "reserve_fragments", "project", "update_config", "clone", "update_bases", "update_mem_wal_state"):
        return None
    if op == "delete":
        touched = {f.id for f in txn.delete.updated_fragments} | set(txn.delete.deleted_fragment_ids)
    elif op == "update":
        touched = {f.id for f in txn.update.updated_fragments} | set(txn.update.removed_fragment_ids)
    elif op == "rewrite":
        groups = list(txn.rewrite.groups)
        touched = {f.id for g in groups for f in g.old_fragments} | {f.id for f in txn.rewrite.old_fragments}
    elif op == "data_replacement":
        touched = {r.fragment_id for r in txn.data_replacement.replacements}
    elif op == "create_index":
        if stable_row_ids:
            return None
        touched = set()
        for idx in txn.create_index.new_indices:
            if not idx.fragment_bitmap:
                return f"version {version} created index {idx.name!r} without a fragment bitmap"
            touched |= set(decode_bitmap(idx.fragment_bitmap))
    else:
        # merge (new columns), overwrite, restore and anything newer than us
        return f"version {version} is a {op or 'unknown'} operation, which a compaction cannot be rebased over"
    hit = sorted(touched & ours)
    if hit:
        return f"version {version} ({op}) changed fragments {hit[:10]} that this compaction rewrote"
    return None


def _check_concurrent(
    storage: Storage,
    plan: CompactionPlan,
    latest: Dataset,
    ours: set[int],
    txn_uuid: str,
    cleared: set[int],
) -> int | None:
    """Check every version committed after our read version; None when we may commit on top of ``latest``.

    Returns the version that holds *our own* transaction if an earlier attempt
    did land although it looked failed (an S3 PUT retried after a timeout
    answers 412, an interrupt right after the link): committing again, or
    cleaning up, would then corrupt the dataset. ``cleared`` remembers the
    versions already found compatible, so a retry only reads what is new.
    """
    for version in range(plan.read_version + 1, latest.version + 1):
        if version in cleared:
            continue
        try:
            ds = latest if version == latest.version else Dataset.open(storage, version)
            txn = load_transaction(storage, ds)
        except (VersionNotFoundError, MissingFileError, NotADatasetError) as exc:
            raise CommitConflictError(
                f"version {version} cannot be checked for conflicts ({exc.reason})", path=storage.uri
            ) from None
        if txn is not None and txn.uuid == txn_uuid:
            return version
        reason = _conflict(txn, version, ours, latest.stable_row_ids)
        if reason:
            raise CommitConflictError(reason, path=storage.uri)
        cleared.add(version)
    present = {f.id for f in latest.manifest.fragments}
    missing = sorted(ours - present)
    if missing:
        raise CommitConflictError(f"fragments {missing[:10]} no longer exist in version {latest.version}", path=storage.uri)
    return None


def _next_fragment_id(manifest: table_pb2.Manifest) -> int:
    highest = manifest.max_fragment_id if manifest.HasField("max_fragment_id") else -1
    if len(manifest.fragments):
        highest = max(highest, max(f.id for f in manifest.fragments))
    return highest + 1


def _drop_coverage(section: table_pb2.IndexSection, rewritten: set[int]) -> None:
    """Remove the rewritten fragments from every index's own bitmap (``index_remap="drop"``).

    The merged rows become unindexed -- pylance scans them until ``optimize_indices`` -- but
    stay exact: an index never names a fragment whose rows it would look up at stale
    addresses. (pylance 14's entries are row addresses even with stable row ids.)
    """
    for idx in section.indices:
        if idx.fragment_bitmap:  # the planner never rewrites fragments of an index without a bitmap
            ids = set(decode_bitmap(idx.fragment_bitmap))
            if ids & rewritten:
                idx.fragment_bitmap = encode_bitmap(sorted(ids - rewritten))


def _kept_rows(latest: Dataset, old: table_pb2.DataFragment, reencoded: bool) -> list[tuple[int, int]]:
    """Offset ranges of ``old``'s rows that its replacement holds: all of them, or the live
    ones when pylance re-encoded the group (deleted rows dropped)."""
    if not reencoded or not old.HasField("deletion_file"):
        return [(0, old.physical_rows)]
    spans, start = [], 0
    for gone in deleted_offsets(latest, old):
        if gone > start:
            spans.append((start, gone))
        start = gone + 1
    if start < old.physical_rows:
        spans.append((start, old.physical_rows))
    return spans


def _refuse_graph_row_drops(latest: Dataset, groups: Sequence[_Group], views: Sequence[IndexView]) -> None:
    """Refuse to drop rows under an index that cannot lose them: a graph (HNSW) index mapped
    through the reuse index (``indices.has_graph``: pylance would fail every query through it),
    or any vector index on a stable-row-id dataset (it would keep returning the dropped ids).
    The planner keeps such fragments' deleted rows, so this only happens when the index was
    created after the plan; planning again avoids it."""
    old_by_id = {f.id: f for f in latest.manifest.fragments}
    keeps_rows = is_vector if latest.stable_row_ids else has_graph  # as the planner's candidates._index_sets
    for view in views:
        if view.fragments is None or not keeps_rows(view.meta):
            continue
        for g in groups:
            if g.reencoded and any(i in view.fragments and old_by_id[i].HasField("deletion_file") for i in g.old_ids):
                raise CommitConflictError(
                    f"index {view.name!r} (which must keep every row it covers) now covers fragments "
                    f"{list(g.old_ids)}, whose deleted rows this compaction dropped; plan again",
                    path=latest.uri,
                )


@dataclass
class _IndexChanges:
    """What a rewrite does to the index section: the section, the files it needs, the
    ``indices`` report and the Rewrite's ``rewritten_indices``."""

    section: table_pb2.IndexSection | None
    writes: list[tuple[str, bytes]]
    report: list[dict[str, Any]]
    rewritten: list[transaction_pb2.Transaction.Rewrite.RewrittenIndex]


#: ``remap`` values of the ``indices`` report (public JSON).
REMAP_REUSE = "reuse_index"  # the moves are recorded in the fragment-reuse index
REMAP_DROPPED = "dropped"  # the rewritten fragments left the index (scanned until re-indexed)
REMAP_MOVED = "moved"  # stable row ids: the index keys rows by id, its coverage moved to the new fragments
REMAP_REWRITTEN = "rewritten"  # a BTree, zone map or bloom filter segment written anew on the new rows
REMAP_UNAFFECTED = "unaffected"

#: Index kinds whose entries pylance 14 keys by stable row id (their files stay valid across a
#: rewrite of a stable-row-id dataset; measured: queries answer as before). BTree keys by row
#: address (rewritten, ``btree_remap``); zone maps and bloom filters describe runs of rows of
#: fragments (rewritten, ``zone_remap``; Lance's own compaction drops them there); anything
#: else is dropped, never guessed.
_ROW_ID_KEYED = {
    "/lance.table.BitmapIndexDetails",
    "/lance.table.LabelListIndexDetails",
    "/lance.table.InvertedIndexDetails",
    "/lance.table.NGramIndexDetails",
    VECTOR_DETAILS_TYPE_URL,
}


def _indices_after(latest: Dataset, groups: Sequence[_Group], mode: str, now: float) -> _IndexChanges:
    """The index section of the new version, the files it needs, and the ``indices`` report.

    With ``defer`` every index keeps covering the merged rows where that is exact:

    - BTree segments (entries keyed by row address) are written anew on the new addresses,
      when pylance is installed (``btree_remap``), as Lance's own remapping compaction does.
      They must not depend on the reuse index: pylance's own later (remapping) compaction
      maps a BTree's entries without the reuse versions and loses every row they moved
      (measured: a deferred compaction, a delete, a default compaction -- the BTree then
      finds nothing in the merged rows).
    - Without stable row ids the other indices keep covering through one new version of
      ``__lance_frag_reuse`` (written only when some index needs it).
    - With stable row ids (where pylance 14 refuses a reuse index) row-id keyed indices keep
      their files and their coverage moves to the new fragments; zone maps and bloom filters
      are written anew with their zones on the new rows (``zone_remap``, pylance installed);
      kinds we do not know, and segments we could not rewrite, drop the rewritten fragments
      (re-indexed afterwards, ``restore_index_coverage``).

    ``drop`` always removes the rewritten fragments from the bitmaps.
    """
    section = latest.file.index_section
    if section is None or not len(section.indices):
        return _IndexChanges(section, [], [], [])
    rewritten = {i for g in groups for i in g.old_ids}
    views = index_views(latest)
    affected = {v.name for v in views if not is_system_index(v.meta) and v.fragments is not None and v.fragments & rewritten}
    out = table_pb2.IndexSection()
    out.CopyFrom(section)
    changes = _IndexChanges(out, [], [], [])
    how: dict[str, str] = {}
    if affected and mode == INDEX_REMAP_DEFER:
        _refuse_graph_row_drops(latest, groups, views)
        how, pending = _rewrite_address_keyed(latest, groups, views, changes)
        if latest.stable_row_ids:
            how.update(_keep_stable_row_id_coverage(groups, out, pending, how))
        elif pending:
            _append_reuse_version(latest, groups, changes, now)
            for v in views:
                if v.uuid in pending:
                    _weakest(how, v.name, REMAP_REUSE)
    elif affected:
        _drop_coverage(out, rewritten)
        how = dict.fromkeys(affected, REMAP_DROPPED)
    report: dict[str, dict[str, Any]] = {}
    for v in views:
        if is_system_index(v.meta) or v.name in report:
            continue
        remap = how.get(v.name, REMAP_DROPPED) if v.name in affected else REMAP_UNAFFECTED
        report[v.name] = {
            "name": v.name,
            "type": index_type(v.meta),
            "remap": remap,
            "covers_output": None if remap == REMAP_UNAFFECTED else remap != REMAP_DROPPED,
        }
    changes.report = list(report.values())
    return changes


def _append_reuse_version(latest: Dataset, groups: Sequence[_Group], changes: _IndexChanges, now: float) -> None:
    """Record this rewrite's row moves as a new version of ``__lance_frag_reuse`` in ``changes``."""
    assert changes.section is not None
    old_by_id = {f.id: f for f in latest.manifest.fragments}
    version = Details.Version(dataset_version=latest.version)
    for g in groups:
        old = [old_by_id[i] for i in g.old_ids]
        version.groups.append(reuse_group(old, g.new, [_kept_rows(latest, f, g.reencoded) for f in old]))
    previous = reuse_index_meta(latest)
    versions = load_reuse_versions(latest, previous) if previous is not None else []
    new_ids = {f.id for g in groups for f in g.new}
    meta, writes = reuse_index_metadata(latest, previous, [*versions, version], new_ids, now)
    changes.writes.extend(writes)
    kept = [m for m in changes.section.indices if m.name != REUSE_INDEX_NAME]
    del changes.section.indices[:]
    changes.section.indices.extend([*kept, meta])


#: How one index name fared when its segments differ: the weakest outcome is reported.
_RANK = [REMAP_DROPPED, REMAP_REUSE, REMAP_REWRITTEN, REMAP_MOVED]


def _weakest(how: dict[str, str], name: str, outcome: str) -> None:
    if name not in how or _RANK.index(outcome) < _RANK.index(how[name]):
        how[name] = outcome


def _rewrite_address_keyed(
    latest: Dataset, groups: Sequence[_Group], views: Sequence[IndexView], changes: _IndexChanges
) -> tuple[dict[str, str], set[str]]:
    """Write every BTree segment the rewrite touches anew on the new row addresses, and on
    stable-row-id datasets every zone map and bloom filter segment (see :func:`_indices_after`);
    the ``remap`` per index name of those rewritten, and the uuids of the touched segments
    still to be handled (other kinds, and segments that could not be rewritten: without
    pylance, or a layout we do not know)."""
    assert changes.section is not None
    rewritten_ids = {i for g in groups for i in g.old_ids}
    pending = {v.uuid for v in views if not is_system_index(v.meta) and v.fragments is not None and v.fragments & rewritten_ids}
    how: dict[str, str] = {}
    if not pending or not pylance_available():
        return how, pending
    # Zone maps and bloom filters are rewritten only where nothing else keeps them covering.
    remappers = {BTREE_DETAILS_TYPE_URL: remap_btree}
    if latest.stable_row_ids:
        remappers.update(dict.fromkeys(ZONED_KINDS, remap_zones))
    by_uuid = {v.uuid: v for v in views}
    old_by_id = {f.id: f for f in latest.manifest.fragments}
    moves: list[RowMoves] | None = None
    for idx in changes.section.indices:
        view = by_uuid.get(str(uuid.UUID(bytes=bytes(idx.uuid.uuid))))
        remap = remappers.get(idx.index_details.type_url)
        if view is None or view.uuid not in pending or remap is None or view.fragments is None:
            continue
        if moves is None:
            # Entries may still name rows older reuse versions moved: map through those first.
            moves = [reuse_moves(v) for v in reuse_versions(latest)] if not latest.stable_row_ids else []
            old = [[old_by_id[i] for i in g.old_ids] for g in groups]
            moves.append(row_moves((o, [_kept_rows(latest, f, g.reencoded) for f in o], g.new) for o, g in zip(old, groups)))
        done = remap(latest, idx, moves)
        if isinstance(done, str):
            continue
        new_uuid, files = done
        entry = transaction_pb2.Transaction.Rewrite.RewrittenIndex()
        entry.old_id.uuid = bytes(idx.uuid.uuid)
        idx.uuid.uuid = uuid.UUID(new_uuid).bytes
        entry.new_id.uuid = bytes(idx.uuid.uuid)
        entry.new_index_details.CopyFrom(idx.index_details)
        entry.new_index_version = idx.index_version
        if len(idx.files):  # sizes readers trust when they open the files
            del idx.files[:]
            idx.files.extend(table_pb2.IndexFile(path=rel.rsplit("/", 1)[-1], size_bytes=len(data)) for rel, data in files)
        covered = set(view.fragments)  # as readers see it: the entries now name current rows
        for g in groups:
            if covered & set(g.old_ids):
                full = set(g.old_ids) <= covered
                covered.difference_update(g.old_ids)
                if full:
                    covered.update(f.id for f in g.new)
        idx.fragment_bitmap = encode_bitmap(sorted(covered))
        if not latest.stable_row_ids:
            # Built on this version's addresses: no older reuse version applies to it any more.
            idx.dataset_version = latest.version
        changes.rewritten.append(entry)
        changes.writes.extend(files)
        pending.discard(view.uuid)
        _weakest(how, view.name, REMAP_REWRITTEN)
    return how, pending


def _keep_stable_row_id_coverage(
    groups: Sequence[_Group], out: table_pb2.IndexSection, pending: set[str], how: dict[str, str]
) -> dict[str, str]:
    """On a stable-row-id dataset: move the coverage of row-id keyed segments in ``pending`` to
    the new fragments, drop it from the others (see :func:`_indices_after`); the ``remap``
    of each index name, merged into ``how``."""
    out_how = dict(how)
    for idx in out.indices:
        if is_system_index(idx) or not idx.fragment_bitmap or str(uuid.UUID(bytes=bytes(idx.uuid.uuid))) not in pending:
            continue
        covered = set(decode_bitmap(idx.fragment_bitmap))
        outcome = REMAP_MOVED if idx.index_details.type_url in _ROW_ID_KEYED else REMAP_DROPPED
        for g in groups:
            if covered & set(g.old_ids):
                full = set(g.old_ids) <= covered
                covered.difference_update(g.old_ids)
                if outcome == REMAP_MOVED and full:
                    covered.update(f.id for f in g.new)
        idx.fragment_bitmap = encode_bitmap(sorted(covered))
        _weakest(out_how, idx.name, outcome)
    return out_how


@dataclass(frozen=True)
class _Built:
    """One attempt's next manifest file, its transaction, the transaction file name ("" when
    disabled), the side files the manifest needs (path, bytes) and the ``indices`` report."""

    manifest_file: bytes
    txn: transaction_pb2.Transaction
    txn_name: str
    side_writes: list[tuple[str, bytes]]
    indices: list[dict[str, Any]]


def _build(latest: Dataset, plan: CompactionPlan, results: Sequence[RewriteResult], txn_uuid: str, now: float) -> _Built:
    """The next version on top of ``latest``.

    Deletion files carried forward by the tasks are named here because their names hold the
    new fragment ids, which are only known now; so is the fragment-reuse record, which names them.
    """
    m = table_pb2.Manifest()
    m.CopyFrom(latest.manifest)
    next_id = _next_fragment_id(m)
    old_by_id = {f.id: f for f in m.fragments}
    groups: list[_Group] = []
    txn = transaction_pb2.Transaction(read_version=plan.read_version, uuid=txn_uuid)
    txn.rewrite.SetInParent()
    deletions: list[tuple[str, bytes]] = []
    for result in results:
        new = []
        for frag, deleted in zip(result.fragments(), result.pending_deletions()):
            frag.id = next_id
            next_id += 1
            if deleted:
                d = frag.deletion_file
                d.read_version = plan.read_version
                d.id = int.from_bytes(hashlib.blake2b(f"{txn_uuid}/{frag.id}".encode(), digest_size=8).digest(), "little")
                name = deletion_file_name(frag.id, d.read_version, d.id, DeletionFileType(d.file_type))
                deletions.append((f"{DELETIONS_DIR}/{name}", deleted))
            new.append(frag)
        group = _Group(tuple(result.old_fragment_ids), tuple(new), result.reencoded)
        groups.append(group)
        g = txn.rewrite.groups.add()
        g.old_fragments.extend(old_by_id[i] for i in group.old_ids)
        g.new_fragments.extend(new)
    removed = {i for g in groups for i in g.old_ids}
    fragments = [f for f in m.fragments if f.id not in removed] + [f for g in groups for f in g.new]
    fragments.sort(key=lambda f: f.id)
    del m.fragments[:]
    m.fragments.extend(fragments)
    m.max_fragment_id = next_id - 1
    _stamp(m, latest, plan.read_version, txn_uuid, now)
    changes = _indices_after(latest, groups, plan.options.index_remap, now)
    txn.rewrite.rewritten_indices.extend(changes.rewritten)
    return _Built(
        mf.build_manifest_file(m, txn, changes.section, latest.file.dictionaries),
        txn,
        m.transaction_file,
        deletions + changes.writes,
        changes.report,
    )


def _stamp(m: table_pb2.Manifest, latest: Dataset, read_version: int, txn_uuid: str, now: float) -> None:
    """Make ``m`` (a changed copy of ``latest``'s manifest) the next version, written by us."""
    m.version = latest.version + 1
    ts = Timestamp()
    ts.FromNanoseconds(int(now * 1e9))
    m.timestamp.CopyFrom(ts)
    m.ClearField("tag")
    m.writer_version.Clear()
    m.writer_version.library = WRITER_LIBRARY
    m.writer_version.version = __version__
    writes_txn_file = not (m.writer_feature_flags & mf.FLAG_DISABLE_TRANSACTION_FILE)
    m.transaction_file = mf.transaction_file_name(read_version, txn_uuid) if writes_txn_file else ""
    m.reader_feature_flags, m.writer_feature_flags = mf.compute_feature_flags(m)


IndexChange = tuple[list[table_pb2.IndexMetadata], list[table_pb2.IndexMetadata], list[tuple[str, bytes]]]


def commit_index_change(
    storage: Storage,
    change: Callable[[Dataset, float], IndexChange | None],
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> int | None:
    """Commit a CreateIndex that adds ``new`` and removes ``removed`` indices; the version, or
    None when ``change`` finds nothing to do.

    ``change(latest, now)`` is asked again on every attempt, on the version we would commit
    on top of, so a writer that committed meanwhile is never overwritten: the change is
    re-derived from what that writer left. Side files it asks for are written first and
    removed when nothing lands (and kept when our manifest may have landed unseen).
    """
    txn_uuid = str(uuid.uuid4())

    def prepare(latest: Dataset, now: float) -> Attempt[None] | None:
        planned = change(latest, now)
        if planned is None:
            return None
        new, removed, side_writes = planned
        txn = transaction_pb2.Transaction(read_version=latest.version, uuid=txn_uuid)
        txn.create_index.new_indices.extend(new)
        txn.create_index.removed_indices.extend(removed)
        section = table_pb2.IndexSection()
        if latest.file.index_section is not None:
            section.CopyFrom(latest.file.index_section)
        gone = {bytes(m.uuid.uuid) for m in removed}
        names = {m.name for m in new}
        kept = [m for m in section.indices if bytes(m.uuid.uuid) not in gone and m.name not in names]
        del section.indices[:]
        section.indices.extend([*kept, *new])
        m = table_pb2.Manifest()
        m.CopyFrom(latest.manifest)
        _stamp(m, latest, latest.version, txn_uuid, now)
        writes = [*side_writes, *transaction_write(m.transaction_file, txn)]
        return Attempt(mf.build_manifest_file(m, txn, section, latest.file.dictionaries), writes, None)

    committed = commit_loop(storage, txn_uuid, prepare, max_retries=max_retries)
    return None if committed is None else committed.version


def commit_compaction(
    uri: DatasetRef,
    plan: CompactionPlan,
    results: Sequence[RewriteResult],
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> CompactionReport:
    """Commit every successful task as one Rewrite; skipped tasks only clean up after themselves.

    The one step that changes the dataset, so it runs once, in the caller, after the tasks
    (wherever they ran) are done. It re-reads the latest version, checks every commit made
    since the plan's version for conflicts with ours (rebasing onto harmless ones: appends,
    index builds, deletions in other fragments), writes the transaction and creates the next
    manifest only if absent; losing that race to another writer means checking again and
    retrying. A real conflict removes the files we wrote and raises, leaving the dataset
    exactly as the other writer left it.

    Args:
        uri: The dataset: a URI (opened with the plan's storage options), an open Dataset
            or a Storage (e.g. one with a commit lock).
        plan: The plan the results belong to.
        results: One result per task, from
            :func:`~lance_assets.engine.copying.copy.execute_task`; the files of skipped ones are
            removed.
        max_retries: Races lost to other writers before giving up.

    Returns:
        The report of the version committed (``version`` is None when no task succeeded).

    Raises:
        CommitConflictError: Another writer changed or removed fragments we rewrote, or won
            the race more than ``max_retries`` times; our files were removed.
        MissingFileError: Files written by the tasks vanished before the commit (e.g. a
            cleanup with too short a grace period); nothing was committed.
        StorageError: The store cannot create objects only-if-absent, or failed. Where a
            remote write's outcome is unknown, its files are kept for ``cleanup``.

    Examples:
        >>> from lance_assets.engine import commit_compaction, execute_task, plan_compaction
        >>> plan = plan_compaction("/data/events.lance")
        >>> results = [execute_task(plan.uri, plan, task) for task in plan.tasks]
        >>> report = commit_compaction(plan.uri, plan, results)
        >>> report.version, report.retries
    """
    started = time.monotonic()
    storage = storage_of(uri, plan.storage_options)
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    remove_files(storage, (p for r in failed for p in r.files_written))
    skipped = list(plan.skipped)
    skipped += [SkippedFragment(i, Reason(r.skipped_reason), r.skipped_detail) for r in failed for i in r.old_fragment_ids]
    base: dict[str, Any] = dict(
        uri=storage.uri,
        read_version=plan.read_version,
        rows=sum(r.rows for r in done),
        bytes_read=sum(r.bytes_read for r in results),
        bytes_written=sum(r.bytes_written for r in done),
        tasks=len(done),
        tasks_skipped=len(failed),
        skipped=skipped,
        notes=list(plan.notes) + CompactionReport.page_notes(done),
        reencoded_fragments=sum(len(r.old_fragment_ids) for r in done if r.reencoded),
        **CompactionReport.page_fields(done),
    )
    if not done:
        return CompactionReport(version=None, seconds=time.monotonic() - started, **base)

    written = [p for r in done for p in r.files_written]
    ours = {i for r in done for i in r.old_fragment_ids}
    txn_uuid = str(uuid.uuid4())
    cleared: set[int] = set()
    try:
        storage.check_commit_support()  # refuse stores without conditional writes before anything else
        gone = [rel for rel in written if not storage.file_exists(rel)]
    except BaseException:
        remove_files(storage, written)
        raise
    if gone:
        # e.g. a cleanup with too short a grace period ran during a long compaction
        remove_files(storage, written)
        raise MissingFileError(
            f"{len(gone)} data files written by this compaction vanished before the commit ({gone[0]}); nothing committed",
            path=storage.uri,
        )

    def prepare(latest: Dataset, now: float) -> Attempt[_Built] | Landed:
        landed = _check_concurrent(storage, plan, latest, ours, txn_uuid, cleared)
        if landed is not None:
            return Landed(landed)  # an earlier attempt did commit
        built = _build(latest, plan, done, txn_uuid, now)
        # Fragment ids (hence deletion file names) and the reuse index's folder change when
        # other writers commit meanwhile: the loop replaces the previous attempt's side files.
        return Attempt(built.manifest_file, [*built.side_writes, *transaction_write(built.txn_name, built.txn)], built)

    committed = commit_loop(storage, txn_uuid, prepare, owned=written, max_retries=max_retries)
    assert committed is not None  # prepare never says "nothing to do"
    landed, built = committed.version, committed.result
    txn = built.txn
    old_frags = [f for g in txn.rewrite.groups for f in g.old_fragments]
    new_frags = [f for g in txn.rewrite.groups for f in g.new_fragments]
    return CompactionReport(
        version=landed,
        committed_versions=[landed],
        fragments_removed=len(old_frags),
        fragments_added=len(new_frags),
        files_removed=sum(fragment_file_count(f) for f in old_frags),
        files_added=sum(fragment_file_count(f) for f in new_frags),
        seconds=time.monotonic() - started,
        retries=committed.retries,
        indices=built.indices,
        **base,
    )
