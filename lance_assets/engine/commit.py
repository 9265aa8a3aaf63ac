"""Commit finished rewrite tasks as one new dataset version, safely against other writers.

The protocol (fact sheet §6): re-read the latest version, check every commit
that landed after our read version for conflicts, write the transaction file,
then create the next manifest only if absent. Losing that race means someone
else committed: re-check and retry. A real conflict removes the files we wrote
and raises, leaving the dataset exactly as the other writer left it.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from lance_assets import __version__
from lance_assets._proto import table_pb2, transaction_pb2
from lance_assets.engine.dataset import HINT_FILE, Dataset, VersionLocation
from lance_assets.engine.plan import CompactionPlan
from lance_assets.engine.report import CompactionReport, RewriteResult
from lance_assets.errors import CommitConflictError, LanceAssetsError
from lance_assets.format import manifest as mf
from lance_assets.format.protobuf import parse
from lance_assets.format.roaring import decode_bitmap, encode_bitmap
from lance_assets.io import Storage
from lance_assets.io.storage import AlreadyExistsError

TRANSACTIONS_DIR = "_transactions"
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


def _check_concurrent(storage: Storage, plan: CompactionPlan, latest: Dataset, ours: set[int]) -> None:
    for version in range(plan.read_version + 1, latest.version + 1):
        ds = latest if version == latest.version else Dataset.open(storage, version)
        reason = _conflict(_load_transaction(storage, ds), version, ours, latest.stable_row_ids)
        if reason:
            raise CommitConflictError(reason, path=storage.uri)
    present = {f.id for f in latest.manifest.fragments}
    missing = sorted(ours - present)
    if missing:
        raise CommitConflictError(f"fragments {missing[:10]} no longer exist in version {latest.version}", path=storage.uri)


def _next_fragment_id(manifest: table_pb2.Manifest) -> int:
    highest = manifest.max_fragment_id if manifest.HasField("max_fragment_id") else -1
    if len(manifest.fragments):
        highest = max(highest, max(f.id for f in manifest.fragments))
    return highest + 1


def _remap_index_bitmaps(index_section: table_pb2.IndexSection | None, groups: Sequence[_Group]) -> table_pb2.IndexSection | None:
    """Replace old fragment ids by the new ones in every index that covered a whole group.

    Only reached for stable-row-id datasets (elsewhere indexed fragments are
    not compacted): their index entries hold row ids, which do not move.
    """
    if index_section is None:
        return None
    out = table_pb2.IndexSection()
    out.CopyFrom(index_section)
    for idx in out.indices:
        if not idx.fragment_bitmap:
            continue
        ids = set(decode_bitmap(idx.fragment_bitmap))
        changed = False
        for g in groups:
            if ids & set(g.old_ids):
                ids -= set(g.old_ids)
                ids |= {f.id for f in g.new}
                changed = True
        if changed:
            idx.fragment_bitmap = encode_bitmap(sorted(ids))
    return out


def _build(
    latest: Dataset, plan: CompactionPlan, results: Sequence[RewriteResult], txn_uuid: str, now: float
) -> tuple[bytes, transaction_pb2.Transaction, str]:
    """The next manifest file, its transaction and the transaction file name ("" when disabled)."""
    m = table_pb2.Manifest()
    m.CopyFrom(latest.manifest)
    next_id = _next_fragment_id(m)
    old_by_id = {f.id: f for f in m.fragments}
    groups: list[_Group] = []
    txn = transaction_pb2.Transaction(read_version=plan.read_version, uuid=txn_uuid)
    txn.rewrite.SetInParent()
    for result in results:
        new = []
        for frag in result.fragments():
            frag.id = next_id
            next_id += 1
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
    index_section = latest.file.index_section
    if latest.stable_row_ids:
        index_section = _remap_index_bitmaps(index_section, groups)
    return mf.build_manifest_file(m, txn, index_section), txn, m.transaction_file


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
    )
    if not done:
        return CompactionReport(version=None, seconds=time.monotonic() - started, **base)

    written = [p for r in done for p in r.files_written]
    txn_uuid = str(uuid.uuid4())
    txn_rel = None
    attempt = 0
    try:
        while True:
            latest = Dataset.open(storage)
            mf.check_feature_flags(latest.manifest, path=storage.uri, for_write=True)
            _check_concurrent(storage, plan, latest, {i for r in done for i in r.old_fragment_ids})
            data, txn, txn_name = _build(latest, plan, done, txn_uuid, time.time())
            if txn_name:
                txn_rel = f"{TRANSACTIONS_DIR}/{txn_name}"
                storage.write(txn_rel, txn.SerializeToString())
            target = VersionLocation(latest.version + 1, latest.location.scheme)
            try:
                storage.create(target.rel_path, data)
                break
            except AlreadyExistsError:
                attempt += 1
                if attempt > max_retries:
                    raise CommitConflictError(f"gave up after {max_retries} attempts: other writers keep committing", path=storage.uri) from None
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
    except BaseException:
        remove_files(storage, written + ([txn_rel] if txn_rel else []))
        raise
    try:
        storage.write(HINT_FILE, f'{{"version":{target.version}}}'.encode())
    except LanceAssetsError:
        pass  # the hint is advisory; readers fall back to listing
    old_frags = [f for g in txn.rewrite.groups for f in g.old_fragments]
    new_frags = [f for g in txn.rewrite.groups for f in g.new_fragments]
    return CompactionReport(
        version=target.version,
        fragments_removed=len(old_frags),
        fragments_added=len(new_frags),
        files_removed=sum(len(f.files) + (1 if f.HasField("deletion_file") else 0) for f in old_frags),
        files_added=sum(len(f.files) + (1 if f.HasField("deletion_file") else 0) for f in new_frags),
        seconds=time.monotonic() - started,
        retries=attempt,
        **base,
    )

