"""Commit finished rewrite tasks as one new dataset version, safely against other writers.

The protocol (fact sheet §6): re-read the latest version, check every commit
that landed after our read version for conflicts, write the transaction file,
then create the next manifest only if absent. Losing that race means someone
else committed: re-check and retry. A real conflict removes the files we wrote
and raises, leaving the dataset exactly as the other writer left it.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from lance_assets import __version__
from lance_assets._proto import table_pb2, transaction_pb2
from lance_assets.engine.dataset import (
    DELETIONS_DIR,
    HINT_FILE,
    TRANSACTIONS_DIR,
    Dataset,
    DatasetRef,
    VersionLocation,
    storage_of,
)
from lance_assets.engine.indices import (
    INDEX_REMAP_DEFER,
    REUSE_INDEX_NAME,
    Details,
    index_type,
    index_views,
    is_system_index,
    load_reuse_versions,
    reuse_group,
    reuse_index_meta,
    reuse_index_metadata,
)
from lance_assets.engine.plan import CompactionPlan, fragment_file_count
from lance_assets.engine.report import CompactionReport, Reason, RewriteResult, SkippedFragment
from lance_assets.engine.rows import deleted_offsets
from lance_assets.errors import (
    AlreadyExistsError,
    CommitConflictError,
    LanceAssetsError,
    MissingFileError,
    NotADatasetError,
    VersionNotFoundError,
)
from lance_assets.format import manifest as mf
from lance_assets.format.blobs import SIDECAR_SUFFIX
from lance_assets.format.deletion import DeletionFileType, deletion_file_name
from lance_assets.format.protobuf import parse
from lance_assets.format.roaring import decode_bitmap, encode_bitmap
from lance_assets.io import Storage

WRITER_LIBRARY = "lance_assets"
DEFAULT_MAX_RETRIES = 20


@dataclass(frozen=True)
class _Group:
    old_ids: tuple[int, ...]
    new: tuple[table_pb2.DataFragment, ...]
    reencoded: bool = False


def _load_transaction(storage: Storage, ds: Dataset) -> transaction_pb2.Transaction | None:
    """The transaction that produced ``ds``: inline in the manifest, else its .txn file."""
    if ds.file.transaction is not None:
        return ds.file.transaction
    name = ds.manifest.transaction_file
    if not name:
        return None
    rel = f"{TRANSACTIONS_DIR}/{name}"
    return parse(transaction_pb2.Transaction, storage.read(rel), path=storage.url(rel), what="transaction")


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
            txn = _load_transaction(storage, ds)
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


def _landed(storage: Storage, target: VersionLocation, txn_uuid: str) -> bool | None:
    """Whether ``target`` holds our transaction: True, False, or None when that cannot be told."""
    try:
        if not storage.exists(target.rel_path):
            return False
        ds = Dataset.open(storage, target.version)
        txn = _load_transaction(storage, ds)
    except LanceAssetsError:
        return None
    return txn is not None and txn.uuid == txn_uuid


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


def _indices_after(
    latest: Dataset,
    groups: Sequence[_Group],
    mode: str,
    now: float,
) -> tuple[table_pb2.IndexSection | None, list[tuple[str, bytes]], list[dict[str, Any]]]:
    """The index section of the new version, the files it needs, and the ``indices`` report.

    With ``defer`` (not possible on stable-row-id datasets, which pylance 14 refuses to read
    with a reuse index) the moves are appended to ``__lance_frag_reuse`` and every index keeps
    covering the merged rows; with ``drop`` the rewritten fragments leave the bitmaps.
    """
    section = latest.file.index_section
    if section is None or not len(section.indices):
        return section, [], []
    rewritten = {i for g in groups for i in g.old_ids}
    views = index_views(latest)
    affected = {v.name for v in views if not is_system_index(v.meta) and v.fragments is not None and v.fragments & rewritten}
    out = table_pb2.IndexSection()
    out.CopyFrom(section)
    writes: list[tuple[str, bytes]] = []
    defer = mode == INDEX_REMAP_DEFER and not latest.stable_row_ids
    if affected and defer:
        old_by_id = {f.id: f for f in latest.manifest.fragments}
        version = Details.Version(dataset_version=latest.version)
        for g in groups:
            old = [old_by_id[i] for i in g.old_ids]
            version.groups.append(reuse_group(old, g.new, [_kept_rows(latest, f, g.reencoded) for f in old]))
        previous = reuse_index_meta(latest)
        versions = load_reuse_versions(latest, previous) if previous is not None else []
        new_ids = {f.id for g in groups for f in g.new}
        meta, writes = reuse_index_metadata(latest, previous, [*versions, version], new_ids, now)
        kept = [m for m in out.indices if m.name != REUSE_INDEX_NAME]
        del out.indices[:]
        out.indices.extend([*kept, meta])
    elif affected:
        _drop_coverage(out, rewritten)
    report: dict[str, dict[str, Any]] = {}
    for v in views:
        if is_system_index(v.meta) or v.name in report:
            continue
        hit = v.name in affected
        report[v.name] = {
            "name": v.name,
            "type": index_type(v.meta),
            "remap": ("reuse_index" if defer else "dropped") if hit else "unaffected",
            "covers_output": defer if hit else None,
        }
    return out, writes, list(report.values())


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
    index_section, index_writes, indices = _indices_after(latest, groups, plan.options.index_remap, now)
    return _Built(mf.build_manifest_file(m, txn, index_section), txn, m.transaction_file, deletions + index_writes, indices)


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
    removed when nothing lands.
    """
    txn_uuid = str(uuid.uuid4())
    written: set[str] = set()
    storage.check_commit_support()
    try:
        for attempt in range(max_retries + 1):
            latest = Dataset.open(storage)
            mf.check_feature_flags(latest.manifest, path=storage.uri, for_write=True)
            now = time.time()
            planned = change(latest, now)
            if planned is None:
                remove_files(storage, written)
                return None
            new, removed, side_writes = planned
            current = {rel for rel, _ in side_writes}
            remove_files(storage, written - current)
            for rel, payload in side_writes:
                storage.write(rel, payload)
            written = current
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
            if m.transaction_file:
                rel = f"{TRANSACTIONS_DIR}/{m.transaction_file}"
                storage.write(rel, txn.SerializeToString())
                written.add(rel)
            target = VersionLocation(latest.version + 1, latest.location.scheme)
            try:
                storage.create(target.rel_path, mf.build_manifest_file(m, txn, section))
            except AlreadyExistsError:
                if m.transaction_file:
                    remove_files(storage, [f"{TRANSACTIONS_DIR}/{m.transaction_file}"])
                    written.discard(f"{TRANSACTIONS_DIR}/{m.transaction_file}")
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** (attempt + 1))))
                continue
            try:
                storage.write(HINT_FILE, f'{{"version":{target.version}}}'.encode())
            except LanceAssetsError:
                pass
            return target.version
    except BaseException:
        remove_files(storage, written)
        raise
    remove_files(storage, written)
    raise CommitConflictError(f"gave up after {max_retries} attempts: other writers keep committing", path=storage.uri)


def remove_files(storage: Storage, paths: Iterable[str]) -> None:
    """Delete what we wrote, best effort; blob sidecar folders left empty go too."""
    folders = set()
    for rel in paths:
        if rel.endswith(SIDECAR_SUFFIX):
            folders.add(rel.rsplit("/", 1)[0])
        try:
            storage.delete(rel, missing_ok=True)
        except LanceAssetsError:
            pass  # best effort: an orphan is harmless and `lance-assets cleanup` finds it
    storage.remove_empty_dirs(folders)


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
            :func:`~lance_assets.engine.copy.execute_task`; the files of skipped ones are
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
    storage = storage_of(uri, plan.options.storage_options)
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
    txn_rel = None
    side_rels: set[str] = set()
    txn: transaction_pb2.Transaction | None = None
    built: _Built | None = None
    attempt = 0
    cleared: set[int] = set()
    landed: int | None = None
    keep_files = False
    try:
        storage.check_commit_support()  # refuse stores without conditional writes before anything else
        gone = [rel for rel in written if not storage.exists(rel)]
        if gone:
            # e.g. a cleanup with too short a grace period ran during a long compaction
            raise MissingFileError(
                f"{len(gone)} data files written by this compaction vanished before the commit ({gone[0]}); nothing committed",
                path=storage.uri,
            )
        while landed is None:
            latest = Dataset.open(storage)
            mf.check_feature_flags(latest.manifest, path=storage.uri, for_write=True)
            landed = _check_concurrent(storage, plan, latest, ours, txn_uuid, cleared)
            if landed is not None:
                break  # an earlier attempt did commit
            built = _build(latest, plan, done, txn_uuid, time.time())
            txn = built.txn
            # Fragment ids (hence deletion file names) and the reuse index's folder change
            # when other writers commit meanwhile.
            current = {rel for rel, _ in built.side_writes}
            remove_files(storage, side_rels - current)
            for rel, payload in built.side_writes:
                storage.write(rel, payload)
            side_rels = current
            if built.txn_name:
                txn_rel = f"{TRANSACTIONS_DIR}/{built.txn_name}"
                storage.write(txn_rel, txn.SerializeToString())
            target = VersionLocation(latest.version + 1, latest.location.scheme)
            try:
                storage.create(target.rel_path, built.manifest_file)
                landed = target.version
            except AlreadyExistsError:
                attempt += 1
                if attempt > max_retries:
                    raise CommitConflictError(
                        f"gave up after {max_retries} attempts: other writers keep committing", path=storage.uri
                    ) from None
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
            except BaseException as exc:
                # The outcome is unknown (network error, interrupt): look before cleaning up.
                outcome = _landed(storage, target, txn_uuid)
                if outcome and isinstance(exc, Exception):
                    landed = target.version
                elif outcome is False and (storage.is_local or "memory" in storage.protocols):
                    raise  # a local link (or in-memory write) happened or not: nothing can land later
                else:
                    # Committed (and interrupted), or a remote PUT that may still land: the
                    # files stay; `lance-assets cleanup` removes them if nothing references them.
                    keep_files = True
                    raise
    except BaseException:
        if not keep_files:
            remove_files(storage, written + sorted(side_rels) + ([txn_rel] if txn_rel else []))
        raise
    try:
        storage.write(HINT_FILE, f'{{"version":{landed}}}'.encode())
    except LanceAssetsError:
        pass  # the hint is advisory; readers fall back to listing
    assert txn is not None and built is not None  # built by this attempt or (same groups, same counts) by the one that landed
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
        retries=attempt,
        indices=built.indices,
        **base,
    )
