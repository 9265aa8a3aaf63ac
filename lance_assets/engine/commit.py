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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from lance_assets import __version__
from lance_assets._proto import table_pb2, transaction_pb2
from lance_assets.engine.dataset import DELETIONS_DIR, HINT_FILE, TRANSACTIONS_DIR, Dataset, VersionLocation
from lance_assets.engine.plan import CompactionPlan, fragment_file_count
from lance_assets.engine.report import CompactionReport, RewriteResult
from lance_assets.errors import CommitConflictError, LanceAssetsError, MissingFileError, NotADatasetError, VersionNotFoundError
from lance_assets.format import manifest as mf
from lance_assets.format.deletion import DeletionFileType, deletion_file_name
from lance_assets.format.protobuf import parse
from lance_assets.format.roaring import decode_bitmap, encode_bitmap
from lance_assets.io import Storage
from lance_assets.io.storage import AlreadyExistsError

WRITER_LIBRARY = "lance_assets"
DEFAULT_MAX_RETRIES = 20


@dataclass(frozen=True)
class _Group:
    old_ids: tuple[int, ...]
    new: tuple[table_pb2.DataFragment, ...]


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
            raise CommitConflictError(f"version {version} cannot be checked for conflicts ({exc.reason})", path=storage.uri) from None
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


def _remap_index_bitmaps(index_section: table_pb2.IndexSection | None, groups: Sequence[_Group]) -> table_pb2.IndexSection | None:
    """Remove the rewritten fragments from every index's fragment bitmap.

    Only reached for stable-row-id datasets (elsewhere indexed fragments are
    not compacted). pylance 14's indices store row *addresses* even on
    stable-row-id datasets (observed: a BTree maps id 150 to 1<<32 | 50), so
    the entries of the old fragments do not find the rows in the new ones.
    Naming the new ids in the bitmap made pylance trust those stale entries
    and silently return no rows; leaving the new fragments uncovered makes
    pylance scan them until the index is optimized (``optimize_indices``).
    """
    if index_section is None:
        return None
    out = table_pb2.IndexSection()
    out.CopyFrom(index_section)
    rewritten = {i for g in groups for i in g.old_ids}
    for idx in out.indices:
        if not idx.fragment_bitmap:
            continue  # the planner never rewrites fragments of an index without a bitmap
        ids = set(decode_bitmap(idx.fragment_bitmap))
        if ids & rewritten:
            idx.fragment_bitmap = encode_bitmap(sorted(ids - rewritten))
    return out


def _build(
    latest: Dataset, plan: CompactionPlan, results: Sequence[RewriteResult], txn_uuid: str, now: float
) -> tuple[bytes, transaction_pb2.Transaction, str, list[tuple[str, bytes]]]:
    """The next manifest file, its transaction, the transaction file name ("" when disabled)
    and the deletion files the new fragments need, as (path, bytes).

    Deletion files carried forward by the tasks are named here because their
    names hold the new fragment ids, which are only known now.
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
        group = _Group(tuple(result.old_fragment_ids), tuple(new))
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
    m.version = latest.version + 1
    ts = Timestamp()
    ts.FromNanoseconds(int(now * 1e9))
    m.timestamp.CopyFrom(ts)
    m.ClearField("tag")
    m.writer_version.Clear()
    m.writer_version.library = WRITER_LIBRARY
    m.writer_version.version = __version__
    writes_txn_file = not (m.writer_feature_flags & mf.FLAG_DISABLE_TRANSACTION_FILE)
    m.transaction_file = mf.transaction_file_name(plan.read_version, txn_uuid) if writes_txn_file else ""
    m.reader_feature_flags, m.writer_feature_flags = mf.compute_feature_flags(m)
    index_section = _remap_index_bitmaps(latest.file.index_section, groups)
    return mf.build_manifest_file(m, txn, index_section), txn, m.transaction_file, deletions


def remove_files(storage: Storage, paths: Iterable[str]) -> None:
    for rel in paths:
        try:
            storage.delete(rel, missing_ok=True)
        except LanceAssetsError:
            pass  # best effort: an orphan is harmless and `lance-assets cleanup` finds it


def commit_compaction(
    uri: str | Storage,
    plan: CompactionPlan,
    results: Sequence[RewriteResult],
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> CompactionReport:
    """Commit every successful task as one Rewrite; skipped tasks only clean up after themselves."""
    started = time.monotonic()
    storage = uri if isinstance(uri, Storage) else Storage(uri, plan.options.storage_options)
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    remove_files(storage, (p for r in failed for p in r.files_written))
    skipped = [{"fragment_id": s.fragment_id, "reason": s.reason, "detail": s.detail} for s in plan.skipped]
    skipped += [{"fragment_id": i, "reason": r.skipped_reason, "detail": r.skipped_detail} for r in failed for i in r.old_fragment_ids]
    base = dict(
        uri=storage.uri,
        read_version=plan.read_version,
        rows=sum(r.rows for r in done),
        bytes_read=sum(r.bytes_read for r in results),
        bytes_written=sum(r.bytes_written for r in done),
        tasks=len(done),
        tasks_skipped=len(failed),
        skipped=skipped,
        notes=[{"fragment_id": s.fragment_id, "reason": s.reason, "detail": s.detail} for s in plan.notes],
        reencoded_fragments=sum(len(r.old_fragment_ids) for r in done if r.reencoded),
    )
    if not done:
        return CompactionReport(version=None, seconds=time.monotonic() - started, **base)

    written = [p for r in done for p in r.files_written]
    ours = {i for r in done for i in r.old_fragment_ids}
    txn_uuid = str(uuid.uuid4())
    txn_rel = None
    deletion_rels: set[str] = set()
    txn: transaction_pb2.Transaction | None = None
    attempt = 0
    cleared: set[int] = set()
    landed: int | None = None
    keep_files = False
    try:
        storage.check_commit_support()  # refuse stores without conditional writes before anything else
        gone = [rel for rel in written if not storage.exists(rel)]
        if gone:
            # e.g. a cleanup with too short a grace period ran during a long compaction
            raise MissingFileError(f"{len(gone)} data files written by this compaction vanished before the commit ({gone[0]}); nothing committed", path=storage.uri)
        while landed is None:
            latest = Dataset.open(storage)
            mf.check_feature_flags(latest.manifest, path=storage.uri, for_write=True)
            landed = _check_concurrent(storage, plan, latest, ours, txn_uuid, cleared)
            if landed is not None:
                break  # an earlier attempt did commit
            data, txn, txn_name, deletion_writes = _build(latest, plan, done, txn_uuid, time.time())
            # Fragment ids (hence deletion file names) shift when other writers commit meanwhile.
            current = {rel for rel, _ in deletion_writes}
            remove_files(storage, deletion_rels - current)
            for rel, payload in deletion_writes:
                storage.write(rel, payload)
            deletion_rels = current
            if txn_name:
                txn_rel = f"{TRANSACTIONS_DIR}/{txn_name}"
                storage.write(txn_rel, txn.SerializeToString())
            target = VersionLocation(latest.version + 1, latest.location.scheme)
            try:
                storage.create(target.rel_path, data)
                landed = target.version
            except AlreadyExistsError:
                attempt += 1
                if attempt > max_retries:
                    raise CommitConflictError(f"gave up after {max_retries} attempts: other writers keep committing", path=storage.uri) from None
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
            remove_files(storage, written + sorted(deletion_rels) + ([txn_rel] if txn_rel else []))
        raise
    try:
        storage.write(HINT_FILE, f'{{"version":{landed}}}'.encode())
    except LanceAssetsError:
        pass  # the hint is advisory; readers fall back to listing
    assert txn is not None  # built by this attempt or (same groups, same counts) by the one that landed
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
        **base,
    )

