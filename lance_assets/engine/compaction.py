"""``compact``: plan, run every task, commit once. The one-call form of the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.copying import parts
from lance_assets.engine.copying.reencode import pylance_available
from lance_assets.engine.dataset import Dataset, DatasetRef, storage_of
from lance_assets.engine.indices import INDEX_REMAP_DEFER, index_views
from lance_assets.engine.maintenance.index_upkeep import maintain_indices
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import CompactionPlan, plan_compaction
from lance_assets.engine.report import CompactionReport, ProgressCallback, Reason, RewriteResult, SkippedFragment
from lance_assets.engine.runners import LocalRunner, TaskRunner
from lance_assets.io import Storage

logger = logging.getLogger(__name__)


def dry_run_report(plan: CompactionPlan, seconds: float = 0.0) -> CompactionReport:
    """What a compaction would do: the plan's bytes, nothing written or committed."""
    return CompactionReport(
        uri=plan.uri,
        read_version=plan.read_version,
        version=None,
        fragments_removed=plan.fragments_to_compact,
        fragments_added=sum(len(t.outputs) for t in plan.tasks),
        files_removed=sum(t.files for t in plan.tasks),
        files_added=sum(1 + o.deletions for t in plan.tasks for o in t.outputs),
        rows=sum(t.rows for t in plan.tasks),
        bytes_read=plan.bytes_to_read,
        bytes_written=plan.bytes_to_read,
        seconds=seconds,
        tasks=len(plan.tasks),
        skipped=list(plan.skipped),
        notes=list(plan.notes),
        reencoded_fragments=sum(len(t.fragment_ids) for t in plan.tasks if t.reencode),
        dry_run=True,
        plan=plan.to_dict(),
    )


def run_plan(
    plan: CompactionPlan,
    *,
    storage: Storage | None = None,
    progress: ProgressCallback | None = None,
    on_task_done: Callable[[RewriteResult], None] | None = None,
    max_workers: int = 1,
    runner: TaskRunner | None = None,
) -> CompactionReport:
    """Copy every task of ``plan`` through ``runner`` and commit them here.

    The second half of :func:`compact`, for callers that plan first: to look at (or store) the
    plan before anything is written, or to reuse an open ``Storage`` (its filesystem, lock and
    credentials). The copies may go anywhere, but the commit is always made by the caller,
    once, because the commit is the only step that must see every task's result.

    All tasks are committed together, or with ``plan.options.commit_every`` each N tasks as
    their own version as soon as they are copied (partial progress: a long run that fails late
    keeps what it committed, and its report lists the rest as ``not_committed``).

    Args:
        plan: What to copy, from :func:`~lance_assets.engine.planning.plan.plan_compaction`.
        storage: An open Storage of the dataset to copy and commit through; default: one
            opened from ``plan.uri`` with the plan's storage options.
        progress: Called with the number of bytes copied, as they are copied (default runner).
        on_task_done: Called with each task's result as it arrives.
        max_workers: Tasks the default runner copies at once, in threads. Each task holds at
            most ``read_batch_bytes`` of data, so memory is bounded by ``max_workers *
            read_batch_bytes`` (plus the parsed metadata of the files being merged).
        runner: Where the copies run instead (``engine.runners``: processes, Ray, Dask).

    Returns:
        The report of every version committed (``version`` is None when nothing was).

    Raises:
        ValueError: ``max_workers`` is below 1.
        CommitConflictError: Another writer committed a change incompatible with ours (or
            kept winning the race past the retries); the files we wrote were removed.
        LanceAssetsError: Storage, corruption and refusal errors of the copy or commit (a
            typed subclass); raised only while nothing has been committed, otherwise the
            report lists what was left uncommitted.

    Examples:
        >>> from lance_assets.engine import CompactionOptions, plan_compaction, run_plan
        >>> plan = plan_compaction("/data/events.lance", CompactionOptions(commit_every=8))
        >>> print(f"{plan.fragments_to_compact} fragments, {plan.bytes_to_read} bytes to copy")
        >>> report = run_plan(plan, max_workers=4)
        >>> report.committed_versions
    """
    if max_workers < 1:
        raise ValueError("max_workers must be positive")
    started = time.monotonic()
    storage = storage or Storage(plan.uri, plan.storage_options)
    runner = runner or LocalRunner(max_workers, progress, storage)
    step = plan.options.commit_every or max(1, len(plan.tasks))
    reports: list[CompactionReport] = []
    worker_ids: set[str] = set()
    retries = 0
    if plan.tasks:
        logger.info(
            "%s: copying %d groups (%d bytes) on the %s runner", plan.uri, len(plan.tasks), plan.bytes_to_read, runner.name
        )
        storage.start_commit_check()  # the commit's one-off store probe overlaps the copies
    try:
        for first in range(0, max(1, len(plan.tasks)), step):
            tasks = plan.tasks[first : first + step]
            try:
                outcome = runner.run(plan, tasks, on_task_done)
                worker_ids.update(outcome.worker_ids)
                retries += outcome.task_retries
                _log_skipped_groups(plan.uri, outcome.results)
                reports.append(commit_compaction(storage, plan, outcome.results))
            except Exception as exc:
                if not any(r.committed_versions for r in reports):
                    raise  # nothing landed: the dataset is as it was, so this run failed
                logger.warning(
                    "%s: stopped after committing version(s) %s: %s: %s; %d group(s) left uncommitted",
                    plan.uri,
                    [v for r in reports for v in r.committed_versions],
                    type(exc).__name__,
                    exc,
                    len(plan.tasks) - first,
                )
                # Earlier partial commits landed: report them (a caller must not retry them as
                # failed) and list what this and later chunks left uncommitted.
                left = plan.tasks[first:]
                failed = [
                    SkippedFragment(i, Reason.NOT_COMMITTED, f"{type(exc).__name__}: {exc}") for t in left for i in t.fragment_ids
                ]
                reports[-1] = replace(
                    reports[-1], skipped=reports[-1].skipped + failed, tasks_skipped=reports[-1].tasks_skipped + len(left)
                )
                break
    finally:
        storage.settle_commit_check()  # a failed run leaves no probe object behind
    report = restore_index_coverage(_combine(plan, reports), plan.options, storage)
    report = replace(
        report, seconds=time.monotonic() - started, runner=runner.name, workers=len(worker_ids), task_retries=retries
    )
    logger.info(
        "%s: %s; %d fragments removed, %d added, %d bytes written in %.1f s (%d commit retries, %d task retries)",
        plan.uri,
        f"committed version(s) {report.committed_versions}" if report.committed_versions else "nothing committed",
        report.fragments_removed,
        report.fragments_added,
        report.bytes_written,
        report.seconds,
        report.retries,
        retries,
    )
    return report


def _log_skipped_groups(uri: str, results: Sequence[RewriteResult]) -> None:
    """Groups the plan formed that the copy refused (their fragments stay as they were)."""
    for result in results:
        if not result.ok:
            logger.warning(
                "%s: group %d (fragments %s) skipped: %s%s",
                uri,
                result.task_id,
                list(result.old_fragment_ids),
                result.skipped_reason,
                f" ({result.skipped_detail})" if result.skipped_detail else "",
            )


def restore_index_coverage(report: CompactionReport, options: CompactionOptions, storage: Storage) -> CompactionReport:
    """Re-index what a commit had to leave unindexed, when pylance is there to do it.

    The commit keeps indices covering wherever that is exact (the fragment-reuse index; on
    stable-row-id datasets moved coverage and rewritten BTree, zone map and bloom filter
    segments); what it had to drop on stable-row-id datasets -- index kinds we do not know,
    segments in a layout we do not rewrite -- is re-indexed here, with ``index_remap="defer"``
    (the default) and pylance installed: its ``optimize_indices`` on those indices only, in a
    version of its own, and the report says ``"remap": "reindexed"``. A failure here never turns the landed
    compaction into a failure: it is listed in ``notes`` (per index), and that index's merged
    rows stay unindexed (scanned, exact).
    """
    dropped = {i["name"] for i in report.indices if i["remap"] == "dropped"}
    if not dropped or options.index_remap != INDEX_REMAP_DEFER or not report.committed_versions or not pylance_available():
        return report
    landed = Dataset.open(storage)
    uncovered = {
        v.name: {f.id for f in landed.manifest.fragments} - (v.fragments or set())
        for v in index_views(landed)
        if v.name in dropped
    }
    logger.info("%s: re-indexing %s with pylance (the commit could not keep their coverage)", storage.uri, sorted(dropped))
    try:
        upkeep = maintain_indices(storage, index_names=sorted(dropped))
    except Exception as exc:  # the compaction landed; say what is left undone
        logger.warning("%s: re-indexing failed (%s: %s); the merged rows stay unindexed", storage.uri, type(exc).__name__, exc)
        note = SkippedFragment(None, Reason.INDEX_UPKEEP_FAILED, f"{type(exc).__name__}: {exc}; run optimize_indices")
        return replace(report, notes=[*report.notes, note])
    failed = [
        SkippedFragment(None, Reason.INDEX_UPKEEP_FAILED, f"index {name!r}: {why}; its merged rows are scanned (exact)")
        for name, why in sorted(upkeep.failed.items())
    ]
    covered: dict[str, set[int]] = {}
    for view in index_views(Dataset.open(storage)):
        covered.setdefault(view.name, set()).update(view.fragments or ())
    indices = [
        {**i, "remap": "reindexed", "covers_output": uncovered.get(i["name"], set()) <= covered.get(i["name"], set())}
        if i["name"] in dropped
        else i
        for i in report.indices
    ]
    versions = report.committed_versions + upkeep.committed_versions
    return replace(report, indices=indices, committed_versions=versions, version=versions[-1], notes=[*report.notes, *failed])


def _combine(plan: CompactionPlan, reports: list[CompactionReport]) -> CompactionReport:
    """One report for several partial commits of the same plan."""
    if len(reports) == 1:
        return reports[0]
    planned = len(plan.skipped)  # every report lists the plan's skips first, then its failed tasks
    versions = [v for r in reports for v in r.committed_versions]
    return CompactionReport(
        uri=plan.uri,
        read_version=plan.read_version,
        version=versions[-1] if versions else None,
        fragments_removed=sum(r.fragments_removed for r in reports),
        fragments_added=sum(r.fragments_added for r in reports),
        files_removed=sum(r.files_removed for r in reports),
        files_added=sum(r.files_added for r in reports),
        rows=sum(r.rows for r in reports),
        bytes_read=sum(r.bytes_read for r in reports),
        bytes_written=sum(r.bytes_written for r in reports),
        tasks=sum(r.tasks for r in reports),
        tasks_skipped=sum(r.tasks_skipped for r in reports),
        skipped=reports[0].skipped[:planned] + [s for r in reports for s in r.skipped[planned:]],
        retries=sum(r.retries for r in reports),
        committed_versions=versions,
        reencoded_fragments=sum(r.reencoded_fragments for r in reports),
        notes=reports[0].notes,
        pages_before=sum(r.pages_before or 0 for r in reports),
        pages_after=sum(r.pages_after or 0 for r in reports),
        columns_coalesced_native=sorted({c for r in reports for c in r.columns_coalesced_native}),
        columns_coalesced_pylance=sorted({c for r in reports for c in r.columns_coalesced_pylance}),
        columns_left_small=sorted({c for r in reports for c in r.columns_left_small}),
    )


def compact(
    uri: DatasetRef,
    options: CompactionOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_task_done: Callable[[RewriteResult], None] | None = None,
    max_workers: int = 1,
    runner: TaskRunner | None = None,
    on_plan: Callable[[CompactionPlan], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CompactionReport:
    """Compact the latest version of ``uri``: plan, copy every task, commit all groups atomically.

    The one call most callers need: it merges small fragments by copying their encoded pages
    into larger files (no decoding, so it is fast and bit-exact) and commits one Rewrite that
    Lance readers and indices understand. Fragments that cannot be copied safely are skipped
    with a reason in the report, never guessed at.

    Args:
        uri: The dataset: a URI, an open :class:`~lance_assets.engine.dataset.Dataset` or a
            :class:`~lance_assets.io.Storage` (see ``DatasetRef``).
        options: What to merge and how (target size, batch bytes, partial commits, storage
            options for a URI …); default ``CompactionOptions()``. With ``options.dry_run``
            only the plan is made and reported: nothing is written.
        progress: Called with the number of bytes copied, as they are copied.
        on_task_done: Called with each task's result as it arrives.
        max_workers: Tasks copied at once (see :func:`run_plan`; memory grows to about
            ``max_workers * options.read_batch_bytes``).
        runner: Puts the copies on local processes or a cluster instead (``engine.runners``).
        on_plan: Called with the plan once it is made, before anything is copied (also on a
            dry run): what a progress display needs to size itself -- the tasks and their bytes.

    Returns:
        What was removed, added, copied and skipped, and the versions committed.

    Raises:
        NotADatasetError: ``uri`` holds no Lance dataset.
        UnsupportedFeatureError: The dataset uses a feature flag or construct we do not
            implement (nothing is written).
        CommitConflictError: Another writer committed an incompatible change meanwhile; our
            files were removed and the dataset is as that writer left it.
        StorageError: The store failed, or cannot create objects only-if-absent (see
            :class:`~lance_assets.io.Storage`).

    Examples:
        >>> from lance_assets.engine import CompactionOptions, compact
        >>> report = compact(
        ...     "s3://bucket/events.lance",
        ...     CompactionOptions(target_rows_per_fragment=1_000_000),
        ...     storage_options={"aws_region": "eu-west-1"},
        ... )
        >>> report.fragments_removed, report.fragments_added, report.version
    """
    options = options or CompactionOptions()
    started = time.monotonic()
    storage = storage_of(uri, storage_options)  # one Storage for the whole run
    ds = Dataset.open(storage)
    if _helpers_may_pay(ds, options, runner):
        parts.start_early(parts.usable_processes(options.task_processes) - 1)  # they start while we plan
    try:
        plan = plan_compaction(ds, options)
        if on_plan:
            on_plan(plan)
        if options.dry_run:
            return dry_run_report(plan, time.monotonic() - started)
        report = run_plan(
            plan, storage=storage, progress=progress, on_task_done=on_task_done, max_workers=max_workers, runner=runner
        )
    finally:
        parts.stop_early()
    return replace(report, seconds=time.monotonic() - started)


def _helpers_may_pay(ds: Dataset, options: CompactionOptions, runner: TaskRunner | None) -> bool:
    """Whether an output of this run may merge enough local files for helper processes
    (``copying.parts``) to pay: then they are started before planning, which they overlap."""
    return (
        not options.dry_run
        and options.task_processes > 1
        and ds.storage.is_local
        and (runner is None or isinstance(runner, LocalRunner))
        and parts.worth_helpers(len(ds.manifest.fragments), len(ds.manifest.fields))
    )
