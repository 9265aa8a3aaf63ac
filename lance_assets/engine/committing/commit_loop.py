"""The one optimistic-commit loop every kind of commit goes through.

Lance has no lock: a writer reads the latest version, writes the files the next version needs
(deletion files, index files, the transaction), then creates the next manifest only if it does
not exist yet. Losing that race means someone else committed: read again, rebuild, retry.

What makes this subtle is the outcome nobody reported. An S3 conditional PUT can land and still
time out, and the client's own retry of it then answers "already exists"; an interrupt can
arrive right after a local link. Treating such an attempt as lost would delete the transaction
and side files of a version that *did* land — a manifest pointing at missing files — or commit
the same change twice. So before anything is cleaned up, the loop looks at the version it tried
to create and asks whether it holds our transaction (by uuid). Compaction and index changes
share this loop so that check can never again be missing from one of them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from lance_assets._proto import transaction_pb2
from lance_assets.engine.dataset import HINT_FILE, TRANSACTIONS_DIR, Dataset, VersionLocation
from lance_assets.errors import AlreadyExistsError, CommitConflictError, LanceAssetsError, StorageError
from lance_assets.format import manifest as mf
from lance_assets.format.blobs import SIDECAR_SUFFIX
from lance_assets.format.protobuf import parse
from lance_assets.io import Storage

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 20

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """One try at the version after the one it was built on.

    ``side_writes`` are the files the manifest refers to (deletion files, index files, the
    transaction file last), written before the manifest; ``result`` is what the caller wants
    back when this attempt (or an identical earlier one) is the one that landed.
    """

    manifest_file: bytes
    side_writes: Sequence[tuple[str, bytes]]
    result: T


@dataclass(frozen=True)
class Landed:
    """An earlier attempt of ours did land, at ``version``, although it looked lost."""

    version: int


@dataclass(frozen=True)
class Committed(Generic[T]):
    """The version created, the races lost on the way, and the landed attempt's result."""

    version: int
    retries: int
    result: T


def load_transaction(storage: Storage, ds: Dataset) -> transaction_pb2.Transaction | None:
    """The transaction that produced ``ds``: inline in the manifest, else its .txn file."""
    if ds.file.transaction is not None:
        return ds.file.transaction
    name = ds.manifest.transaction_file
    if not name:
        return None
    rel = f"{TRANSACTIONS_DIR}/{name}"
    return parse(transaction_pb2.Transaction, storage.read(rel), path=storage.url(rel), what="transaction")


def holds_transaction(storage: Storage, target: VersionLocation, txn_uuid: str) -> bool | None:
    """Whether ``target`` exists and holds our transaction: True, False, or None when that
    cannot be told (the store does not answer, the manifest cannot be read)."""
    try:
        if not storage.file_exists(target.rel_path):
            return False
        ds = Dataset.open(storage, target.version)
        txn = load_transaction(storage, ds)
    except LanceAssetsError:
        return None
    return txn is not None and txn.uuid == txn_uuid


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


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))


def commit_loop(
    storage: Storage,
    txn_uuid: str,
    prepare: Callable[[Dataset, float], Attempt[T] | Landed | None],
    *,
    owned: Sequence[str] = (),
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Committed[T] | None:
    """Commit what ``prepare`` builds as the next version, retrying races; None when ``prepare``
    finds nothing to do.

    ``prepare(latest, now)`` is asked again on every attempt, on the version we would commit
    on top of, so another writer's commit is never overwritten: the change is rebuilt from what
    that writer left (or refused by raising). It returns :class:`Landed` when it finds that an
    earlier attempt of ours is already in the history. ``owned`` are files written before the
    loop (a compaction's data files): like the side files, they are removed when nothing lands
    and kept when something may still land (``lance-assets cleanup`` removes them if not).
    """
    storage.check_commit_support()  # refuse stores without conditional writes before writing anything
    written: set[str] = set()
    keep_files = False
    last: Attempt[T] | None = None
    retries = 0
    landed: int | None = None
    try:
        while landed is None:
            latest = Dataset.open(storage)
            mf.check_feature_flags(latest.manifest, path=storage.uri, for_write=True)
            planned = prepare(latest, time.time())
            if isinstance(planned, Landed):
                logger.warning("%s: an earlier attempt of ours landed as version %d after all", storage.uri, planned.version)
                landed = planned.version
                break
            if planned is None:
                logger.debug("%s: nothing to commit on version %d", storage.uri, latest.version)
                remove_files(storage, [*written, *owned])
                return None
            # Names can change between attempts (fragment ids, the read version in a
            # transaction file name): files of the previous attempt that this one does not
            # rewrite go first.
            current = {rel for rel, _ in planned.side_writes}
            remove_files(storage, written - current)
            written = current
            for rel, payload in planned.side_writes:
                storage.write(rel, payload)
            last = planned
            target = VersionLocation(latest.version + 1, latest.location.scheme)
            try:
                storage.create(target.rel_path, planned.manifest_file)
                landed = target.version
            except AlreadyExistsError:
                outcome = holds_transaction(storage, target, txn_uuid)
                if outcome:
                    logger.warning("%s: version %d is ours although the store answered 'exists'", storage.uri, target.version)
                    landed = target.version  # our own PUT landed; its retry was told "exists"
                    break
                if outcome is None:
                    logger.warning("%s: version %d exists but cannot be read; keeping our files", storage.uri, target.version)
                    keep_files = True
                    raise StorageError(
                        f"version {target.version} exists but cannot be read to tell whether it is ours; "
                        "files kept (`lance-assets cleanup` removes them if nothing refers to them)",
                        path=storage.uri,
                    ) from None
                retries += 1
                if retries > max_retries:
                    logger.warning("%s: giving up after %d commit conflicts", storage.uri, max_retries)
                    raise CommitConflictError(
                        f"gave up after {max_retries} attempts: other writers keep committing", path=storage.uri
                    ) from None
                logger.info(
                    "%s: version %d was committed by another writer; rebuilding on it (commit retry %d of %d)",
                    storage.uri,
                    target.version,
                    retries,
                    max_retries,
                )
                _backoff(retries)
            except BaseException as exc:
                # The outcome is unknown (network error, interrupt): look before cleaning up.
                verdict = _outcome_after(storage, target, txn_uuid, exc)
                if verdict != "landed":
                    keep_files = verdict == "may_land"
                    raise
                landed = target.version
    except BaseException:
        if not keep_files:
            remove_files(storage, [*owned, *sorted(written)])
        raise
    try:
        storage.write(HINT_FILE, f'{{"version":{landed}}}'.encode())
    except LanceAssetsError:
        pass  # the hint is advisory; readers fall back to listing
    # When an earlier attempt is the one that landed, ``last`` is an attempt with the same
    # content (the history only grew by our own commit after it), so its result stands.
    assert last is not None, "an attempt of ours landed, so one was built"
    logger.debug("%s: committed version %d after %d retries", storage.uri, landed, retries)
    return Committed(landed, retries, last.result)


def _outcome_after(storage: Storage, target: VersionLocation, txn_uuid: str, exc: BaseException) -> str:
    """After our commit of ``target`` raised ``exc``: whether our version landed anyway
    ("landed"), surely did not ("gone") or may still land ("may_land")."""
    outcome = holds_transaction(storage, target, txn_uuid)
    if outcome and isinstance(exc, Exception):
        logger.warning("%s: version %d landed although its commit raised %s", storage.uri, target.version, type(exc).__name__)
        return "landed"
    if outcome is False and (storage.is_local or "memory" in storage.protocols):
        return "gone"  # a local link (or in-memory write) happened or not: nothing can land later
    # Landed (and interrupted), or a remote PUT that may still land: the files stay;
    # `lance-assets cleanup` removes them if nothing references them.
    logger.warning(
        "%s: commit of version %d interrupted (%s) with an unknown outcome; keeping our files",
        storage.uri,
        target.version,
        type(exc).__name__,
    )
    return "may_land"


def transaction_write(m_transaction_file: str, txn: transaction_pb2.Transaction) -> list[tuple[str, bytes]]:
    """The side write of a transaction file (none when the dataset disables them)."""
    if not m_transaction_file:
        return []
    return [(f"{TRANSACTIONS_DIR}/{m_transaction_file}", txn.SerializeToString())]
