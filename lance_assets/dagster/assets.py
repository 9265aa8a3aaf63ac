"""Fragment assets, the compaction asset and its checks.

A dataset's fragments are one asset (recorded by the sensor, never one
partition per fragment: they come and go by the thousand; see ``fragments``); the compacted
dataset is a second asset downstream of it, materialized per partition by
running the engine.
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg

from lance_assets.dagster.config import CompactionConfig, duration
from lance_assets.dagster.fragments import RetentionSettings, fragments_record, small_fragment_counts
from lance_assets.dagster.resources import LanceDatasets
from lance_assets.engine.copying.parts import tune_allocator
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.inspect import Inspection
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.engine.planning.tasks import CompactionPlan
from lance_assets.engine.report import CompactionReport, RewriteResult, SkippedFragment
from lance_assets.engine.runners import RUNNER_RAY, TaskRunner, make_runner

DATASET_TAG = "lance_assets/dataset"
ROWS_CHECK = "rows_preserved"
SMALL_CHECK = "small_fragments_under_threshold"
READ_BACK_CHECK = "new_version_reads_back"


def dataset_run_tagging(name: str, partitions_def: dg.PartitionsDefinition | None) -> dict[str, Any]:
    """Job arguments that tag *every* run with its dataset (``name`` or ``name/<partition key>``).

    Not only the runs the sensor and schedule request: also those launched from
    the UI, backfills and the fan-out job, so the sensor sees them as active and a
    tag concurrency limit on ``lance_assets/dataset`` serializes them per dataset.
    """
    if partitions_def is None:
        return {"tags": {DATASET_TAG: name}}
    return {
        "config": dg.PartitionedConfig(
            partitions_def=partitions_def,
            run_config_for_partition_key_fn=lambda _key: {},
            tags_for_partition_key_fn=lambda key: {DATASET_TAG: f"{name}/{key}"},
        )
    }


def dataset_tag(name: str, partition_key: str | None) -> str:
    """The ``lance_assets/dataset`` tag value of one dataset: ``name`` or ``name/<partition key>``."""
    return f"{name}/{partition_key}" if partition_key else name


def partition_keys(partitions_def: dg.PartitionsDefinition | None, instance: dg.DagsterInstance) -> Sequence[str | None]:
    """Every dataset's partition key now (``[None]`` for one unpartitioned dataset)."""
    if partitions_def is None:
        return [None]
    return partitions_def.get_partition_keys(dynamic_partitions_store=instance)


@dataclass(frozen=True)
class AssetKeys:
    """The two asset keys of one configured dataset family."""

    fragments: dg.AssetKey
    compacted: dg.AssetKey

    @classmethod
    def for_name(cls, name: str, key_prefix: Sequence[str] = ()) -> "AssetKeys":
        return cls(dg.AssetKey([*key_prefix, name, "fragments"]), dg.AssetKey([*key_prefix, name, "compacted"]))


def _skipped_markdown(skipped: Sequence[SkippedFragment]) -> str:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    lines = ["| reason | fragments |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(counts.items())]
    return "\n".join(lines) if counts else "nothing skipped"


def compaction_metadata(before: Inspection, after: Inspection | None, report: CompactionReport) -> dict[str, Any]:
    seconds = max(report.seconds, 1e-9)
    meta: dict[str, Any] = {
        "read_version": dg.MetadataValue.int(report.read_version),
        "lance_version": dg.MetadataValue.int(report.version if report.version is not None else report.read_version),
        "fragments_before": dg.MetadataValue.int(before.summary.fragments),
        "files_before": dg.MetadataValue.int(before.summary.data_files),
        "rows_before": dg.MetadataValue.int(before.summary.rows),
        "bytes_before": dg.MetadataValue.int(before.summary.bytes),
        "fragments_removed": dg.MetadataValue.int(report.fragments_removed),
        "fragments_added": dg.MetadataValue.int(report.fragments_added),
        "bytes_copied": dg.MetadataValue.int(report.bytes_read),
        "bytes_written": dg.MetadataValue.int(report.bytes_written),
        "seconds": dg.MetadataValue.float(round(report.seconds, 4)),
        "mb_per_s": dg.MetadataValue.float(round(report.bytes_read / seconds / 1e6, 2)),
        "tasks": dg.MetadataValue.int(report.tasks),
        "skipped": dg.MetadataValue.md(_skipped_markdown(report.skipped)),
        "target_rows_per_fragment": dg.MetadataValue.int(before.summary.target_rows_per_fragment),
        "reencoded_fragments": dg.MetadataValue.int(report.reencoded_fragments),
        "runner": dg.MetadataValue.text(report.runner),
        "workers": dg.MetadataValue.int(report.workers),
        "task_retries": dg.MetadataValue.int(report.task_retries),
    }
    if report.pages_before is not None and report.pages_after is not None:
        # page health of the compacted columns (docs/how-it-works.md, Small pages)
        meta["pages_before"] = dg.MetadataValue.int(report.pages_before)
        meta["pages_after"] = dg.MetadataValue.int(report.pages_after)
        for key in ("columns_coalesced_native", "columns_coalesced_pylance", "columns_left_small"):
            meta[key] = dg.MetadataValue.text(", ".join(getattr(report, key)))
    if report.notes:
        meta["notes"] = dg.MetadataValue.md(_skipped_markdown(report.notes))
    if after is not None:
        meta.update(
            {
                "fragments_after": dg.MetadataValue.int(after.summary.fragments),
                "files_after": dg.MetadataValue.int(after.summary.data_files),
                "rows_after": dg.MetadataValue.int(after.summary.rows),
                "bytes_after": dg.MetadataValue.int(after.summary.bytes),
                "small_fragments_after": dg.MetadataValue.int(
                    small_fragment_counts([f.physical_rows for f in after.fragments], after.summary.target_rows_per_fragment)[0]
                ),
            }
        )
    if report.plan is not None:
        meta["plan"] = dg.MetadataValue.json(report.plan)
    return meta


def build_compaction_asset(
    keys: AssetKeys,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    resource_key: str = "lance",
    pool: str | None = None,
    group_name: str | None = None,
    cleanup_older_than: timedelta | None = None,
    retain_versions: int = 1,
    runner: str = "local",
    max_workers: int = 1,
    ray_resource_key: str | None = None,
    automation_condition: dg.AutomationCondition[dg.AssetKey] | None = None,
) -> dg.AssetsDefinition:
    """The compaction asset: binary-copy compaction of the partition's dataset, then (with
    ``cleanup_older_than``) version retention, so the small files' space comes back; it records
    a fresh record of the fragments itself, so the UI never shows the pre-compaction dataset."""
    settings = RetentionSettings.configured(cleanup_older_than, retain_versions)  # the record's bytes_reclaimable

    @dg.asset(
        key=keys.compacted,
        deps=[keys.fragments],
        partitions_def=partitions_def,
        pool=pool,
        group_name=group_name,
        kinds={"lance"},
        output_required=False,
        automation_condition=automation_condition,
        required_resource_keys={resource_key} | ({ray_resource_key} if runner == RUNNER_RAY and ray_resource_key else set()),
        description="The dataset after binary-copy compaction of its small fragments (lance_assets).",
    )
    def _compacted(context: dg.AssetExecutionContext, config: CompactionConfig) -> Iterator[Any]:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        key = context.partition_key if partitions_def is not None else None
        options = config.options()
        # a typo in the run config's cutoff fails here, before anything is written
        cutoff = duration(config.cleanup_older_than) if config.cleanup_older_than else cleanup_older_than
        before = lance.inspect(key, options.target_rows_per_fragment)
        if options.dry_run:
            yield _dry_run(context, keys, lance, key, options)
            return
        unindexed_before, _, indexed = lance.index_status(key)
        if runner == RUNNER_RAY and ray_resource_key:
            task_runner: TaskRunner = getattr(context.resources, ray_resource_key).runner()
        else:
            task_runner = make_runner(runner, max_workers=max_workers)

        def task_done(result: RewriteResult) -> None:
            state = (
                f"skipped ({result.skipped_reason}: {result.skipped_detail})"
                if result.skipped_reason
                else f"{result.bytes_read} bytes in {result.seconds:.2f}s"
            )
            context.log.info(f"task {result.task_id}: fragments {list(result.old_fragment_ids)} {state}")

        tune_allocator()  # a step's process exists to run it (Dagster's default executor)
        report = lance.compact(key, options, runner=task_runner, on_task_done=task_done)
        # Index upkeep after a compaction that committed, and also when only rows are unindexed
        # (automation's ``min_unindexed_rows`` requests a run for exactly that).
        wanted = indexed and config.optimize_indices and (report.version is not None or unindexed_before > 0)
        upkept = _index_upkeep(context, lance, key) if wanted else False
        changed = report.version is not None or upkept
        after = lance.inspect(key, options.target_rows_per_fragment) if changed else before
        context.log.info(
            f"version {report.read_version} -> {report.version}: {report.fragments_removed} fragments -> "
            f"{report.fragments_added}, "
            f"{report.bytes_read} bytes copied in {report.seconds:.2f}s"
        )
        metadata = compaction_metadata(before, after, report)
        if indexed:
            unindexed_after, reuse_versions, _ = lance.index_status(key)
            metadata.update(
                {
                    "unindexed_rows_before": dg.MetadataValue.int(unindexed_before),
                    "unindexed_rows_after": dg.MetadataValue.int(unindexed_after),
                    "reuse_versions": dg.MetadataValue.int(reuse_versions),
                    "indices": dg.MetadataValue.json(report.indices),
                }
            )
        if cutoff is not None and report.version is not None:
            metadata.update(_retention(context, lance, key, cutoff, config.retain_versions or retain_versions))
        if changed:
            # The dataset's fresh state, recorded before the compacted materialization: the same
            # content version as before (a rewrite keeps every row), so this run's result stays in sync.
            yield fragments_record(keys.fragments, lance, after, key, retention=settings)
        yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(str(after.version)))

    return _compacted


def _dry_run(
    context: dg.AssetExecutionContext, keys: AssetKeys, lance: LanceDatasets, key: str | None, options: CompactionOptions
) -> dg.AssetObservation:
    """A dry run's plan, recorded on the fragments asset (nothing is written)."""
    started = time.monotonic()
    plan = plan_compaction(Dataset.open(lance.uri(key), storage_options=lance.options()), options)
    context.log.info(f"dry run: {len(plan.tasks)} tasks over {plan.fragments_to_compact} fragments, {plan.bytes_to_read} bytes")
    return dry_run_observation(keys, key, plan, planning_seconds=time.monotonic() - started)


def dry_run_observation(
    keys: AssetKeys, key: str | None, plan: CompactionPlan, *, planning_seconds: float | None = None
) -> dg.AssetObservation:
    """What a dry run would do, recorded on the fragments asset (the asset and fan-out alike)."""
    metadata: dict[str, Any] = {
        "dry_run_plan": dg.MetadataValue.json(plan.to_dict()),
        "tasks": dg.MetadataValue.int(len(plan.tasks)),
        "fragments_to_compact": dg.MetadataValue.int(plan.fragments_to_compact),
        "bytes_to_copy": dg.MetadataValue.int(plan.bytes_to_read),
        "skipped": dg.MetadataValue.md(_skipped_markdown(plan.skipped)),
        "lance_version": dg.MetadataValue.int(plan.read_version),
    }
    if planning_seconds is not None:
        metadata["planning_seconds"] = dg.MetadataValue.float(round(planning_seconds, 4))
    return dg.AssetObservation(asset_key=keys.fragments, partition=key, metadata=metadata)


def _index_upkeep(context: dg.AssetExecutionContext, lance: LanceDatasets, key: str | None) -> bool:
    """Rebuild indices over unindexed rows and trim the reuse index; whether a version landed."""
    upkeep = lance.maintain_indices(key)
    context.log.info(
        f"index upkeep: unindexed rows {upkeep.unindexed_rows_before} -> {upkeep.unindexed_rows_after}, "
        f"reuse versions {upkeep.reuse_versions_before} -> {upkeep.reuse_versions_after} "
        f"(optimize_indices ran: {upkeep.optimized})"
    )
    return bool(upkeep.committed_versions)


def _retention(
    context: dg.AssetExecutionContext, lance: LanceDatasets, key: str | None, cutoff: timedelta, keep: int
) -> dict[str, Any]:
    """Version retention after a compaction that committed; its metadata (the space given back)."""
    disk_before = lance.bytes_on_disk(key)
    retention = lance.cleanup(key, cutoff, keep)
    disk_after = lance.bytes_on_disk(key)
    context.log.info(
        f"retention: {len(retention.removed_versions)} versions and {len(retention.files)} files removed "
        f"({retention.bytes} bytes)"
    )
    return {
        "versions_removed": dg.MetadataValue.int(len(retention.removed_versions)),
        "bytes_reclaimed": dg.MetadataValue.int(retention.bytes),
        "bytes_on_disk_before": dg.MetadataValue.int(disk_before),
        "bytes_on_disk_after": dg.MetadataValue.int(disk_after),
    }
