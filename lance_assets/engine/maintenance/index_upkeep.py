"""Index upkeep after compaction: trim the fragment-reuse index, re-index with pylance.

A reuse version is needed until every index has been rebuilt on the new row addresses
(``optimize_indices``); then it only costs memory on every open, so it is trimmed with Lance's
rule (:func:`~lance_assets.engine.indices.caught_up`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.committing.commit import IndexChange, commit_index_change
from lance_assets.engine.copying.reencode import pylance_available, pylance_storage_options
from lance_assets.engine.dataset import Dataset, DatasetRef, open_dataset
from lance_assets.engine.indices import (
    Details,
    caught_up,
    is_system_index,
    load_reuse_versions,
    reuse_index_meta,
    reuse_index_metadata,
    reuse_version_count,
    total_unindexed_rows,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexUpkeepReport:
    """What :func:`trim_reuse_index` / :func:`maintain_indices` did; JSON keys are public."""

    uri: str
    unindexed_rows_before: int
    unindexed_rows_after: int
    reuse_versions_before: int
    reuse_versions_after: int
    optimized: bool = False
    committed_versions: list[int] = field(default_factory=list)
    #: index name -> why pylance could not optimize it (only when names were asked for)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trim_plan(ds: Dataset) -> tuple[table_pb2.IndexMetadata, list[Details.Version]] | None:
    """The reuse index and the versions to keep, when some can go; None when none can."""
    meta = reuse_index_meta(ds)
    if meta is None:
        return None
    versions = load_reuse_versions(ds, meta)
    kept = [v for v in versions if not all(caught_up(v, m) for m in ds.indices)]
    return None if len(kept) == len(versions) else (meta, kept)


def trim_reuse_index(
    uri: DatasetRef, storage_options: Mapping[str, Any] | None = None, *, dry_run: bool = False
) -> IndexUpkeepReport:
    """Drop the reuse versions every index has caught up with (rebuilt at or after them).

    Each compaction adds a version to the fragment-reuse index so that indices built before it
    still find their rows; once every index has been rebuilt past it, that version only costs
    memory on every open, so it goes. Needs no pylance.

    Commits one CreateIndex replacing ``__lance_frag_reuse`` (kept, possibly empty, as Lance
    keeps it); nothing is committed when no version can go. Other writers committing meanwhile
    are harmless: the decision is taken again on the version we commit on top of.

    Args:
        uri: The dataset: a URI, an open Dataset or a Storage.
        storage_options: Filesystem options (credentials, endpoint) for a URI.
        dry_run: Only count what would be trimmed; commit nothing.

    Returns:
        The reuse versions before and after (and the version committed, if any).

    Raises:
        CommitConflictError: Other writers kept winning the race to commit.
        LanceAssetsError: Storage or corruption errors (a typed subclass).

    Examples:
        >>> from lance_assets.engine import trim_reuse_index
        >>> report = trim_reuse_index("/data/events.lance", dry_run=True)
        >>> report.reuse_versions_before, report.reuse_versions_after
    """
    started = time.monotonic()
    ds = open_dataset(uri, storage_options)
    before = reuse_version_count(ds)
    unindexed = total_unindexed_rows(ds)

    def change(latest: Dataset, now: float) -> IndexChange | None:
        planned = _trim_plan(latest)
        if planned is None:
            return None
        meta, kept = planned
        new_ids = {f.id for v in kept for g in v.groups for f in g.new_fragments}
        new_meta, writes = reuse_index_metadata(latest, meta, kept, new_ids, now)
        return [new_meta], [meta], writes

    committed: list[int] = []
    after = before
    planned = _trim_plan(ds)
    if planned is None:
        # nothing to trim: no commit (also where commits are impossible, e.g. read-only stores)
        logger.debug("%s: no reuse version to trim (%d kept: some index still needs each)", ds.uri, before)
    elif dry_run:
        after = len(planned[1])
        logger.info("%s: dry run: would trim the reuse index from %d to %d versions", ds.uri, before, after)
    else:
        version = commit_index_change(ds.storage, change)
        if version is not None:
            committed.append(version)
            after = reuse_version_count(Dataset.open(ds.storage, version))
            logger.info("%s: trimmed the reuse index from %d to %d versions (version %d)", ds.uri, before, after, version)
    return IndexUpkeepReport(
        ds.uri,
        unindexed,
        unindexed,
        before,
        after,
        committed_versions=committed,
        seconds=time.monotonic() - started,
        dry_run=dry_run,
    )


def maintain_indices(
    uri: DatasetRef, storage_options: Mapping[str, Any] | None = None, *, index_names: Sequence[str] | None = None
) -> IndexUpkeepReport:
    """Rebuild indices over unindexed rows with pylance's ``optimize_indices``, then trim.

    After a compaction the merged rows are served through the fragment-reuse index; rebuilding
    lets queries use the indices directly again and lets :func:`trim_reuse_index` drop the
    versions no index needs any more. This is the one step that needs pylance (the optional
    ``reencode`` extra): building an index is Lance's own work. Without pylance (or without
    user indices) only the trim runs.

    With ``index_names`` only those indices are optimized (others, e.g. a vector index that
    already covers every row, are left exactly as they are), and one that pylance fails on
    does not hold up the rest: it is tried alone and its error is listed in ``failed``.

    Args:
        uri: The dataset: a URI, an open Dataset or a Storage.
        storage_options: Filesystem options (credentials, endpoint) for a URI; also given to
            pylance (default: the Storage's own).
        index_names: Optimize only these indices (default: all), each failure listed, not raised.

    Returns:
        Unindexed rows and reuse versions before and after, whether pylance ran, and the
        versions committed.

    Raises:
        CommitConflictError: Other writers kept winning the race to commit the trim.
        LanceAssetsError: Storage or corruption errors (a typed subclass).
        Exception: Whatever pylance's ``optimize_indices`` raises, unchanged.

    Examples:
        >>> from lance_assets.engine import maintain_indices
        >>> report = maintain_indices("s3://bucket/events.lance", {"aws_region": "eu-west-1"})
        >>> report.optimized, report.unindexed_rows_before, report.unindexed_rows_after
    """
    started = time.monotonic()
    ds = open_dataset(uri, storage_options)
    unindexed_before = total_unindexed_rows(ds)
    versions_before = reuse_version_count(ds)
    committed: list[int] = []
    optimized = False
    failed: dict[str, str] = {}
    user_indices = any(not is_system_index(m) for m in ds.indices)
    if user_indices and not pylance_available():
        logger.info("%s: pylance is not installed: only trimming (%d rows stay unindexed)", ds.uri, unindexed_before)
    elif user_indices:
        import lance

        logger.info(
            "%s: optimizing %s with pylance (%d unindexed rows)",
            ds.uri,
            f"indices {list(index_names)}" if index_names is not None else "every index",
            unindexed_before,
        )
        options = pylance_storage_options(dict(storage_options or ds.storage.storage_options or {}))
        failed = _optimize(lambda: lance.dataset(ds.uri, storage_options=options), index_names)
        optimized = True
        after_optimize = Dataset.open(ds.storage)
        committed.extend(range(ds.version + 1, after_optimize.version + 1))  # one per optimized index at most
        ds = after_optimize
        for name, why in sorted(failed.items()):
            logger.warning("%s: pylance could not optimize index %r: %s", ds.uri, name, why)
    trim = trim_reuse_index(ds)
    committed.extend(trim.committed_versions)
    final = Dataset.open(ds.storage)
    unindexed_after = total_unindexed_rows(final)
    if optimized:
        logger.info("%s: unindexed rows %d -> %d (versions %s)", ds.uri, unindexed_before, unindexed_after, committed)
    return IndexUpkeepReport(
        ds.uri,
        unindexed_before,
        unindexed_after,
        versions_before,
        reuse_version_count(final),
        optimized=optimized,
        committed_versions=committed,
        seconds=time.monotonic() - started,
        failed=failed,
    )


def _optimize(open_latest: Callable[[], Any], index_names: Sequence[str] | None) -> dict[str, str]:
    """Run pylance's ``optimize_indices`` on the dataset ``open_latest()`` opens (on
    ``index_names`` only, when given); the names it failed on, with the error. Without names
    its error is raised unchanged."""
    if index_names is None:
        open_latest().optimize.optimize_indices()
        return {}
    names = list(dict.fromkeys(index_names))
    try:
        open_latest().optimize.optimize_indices(index_names=names)
        return {}
    except Exception as exc:  # one index pylance cannot update must not hold up the others
        if len(names) == 1:
            return {names[0]: f"{type(exc).__name__}: {exc}"}
    failed: dict[str, str] = {}
    for name in names:
        try:
            open_latest().optimize.optimize_indices(index_names=[name])
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed
