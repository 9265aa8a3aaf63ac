"""Version retention as a job of its own (its schedule is in ``schedules``).

The compaction asset already runs retention after each compaction that committed; this job is
for the rest of the time: appends, deletes and pylance's own writers keep adding versions, and
their space only comes back when old versions go. It records the fragments (same content version: no row changed) with what
was reclaimed, so the UI plots storage over time.
"""

from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
from pydantic import Field

from lance_assets.dagster.assets import AssetKeys, dataset_run_tagging
from lance_assets.dagster.config import duration
from lance_assets.dagster.fragments import RetentionSettings, fragments_record
from lance_assets.dagster.resources import LanceDatasets
from lance_assets.engine.options import DEFAULT_TARGET_ROWS_PER_FRAGMENT


def build_retention_job(
    name: str,
    keys: AssetKeys,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    resource_key: str,
    cleanup_older_than: timedelta,
    retain_versions: int,
    target_rows_per_fragment: int = DEFAULT_TARGET_ROWS_PER_FRAGMENT,
) -> dg.JobDefinition:
    """``<name>_retention``: remove versions older than ``cleanup_older_than`` (run config may
    override both values) from the partition's dataset."""
    default_keep = retain_versions  # class bodies do not see same-named locals
    # the record's bytes_reclaimable is reckoned with the definitions' settings, whatever a run overrides
    settings = RetentionSettings(cleanup_older_than, retain_versions)

    class RetentionConfig(dg.Config):
        older_than: str | None = Field(
            default=None,
            description="Remove versions committed before this long ago (e.g. 7d; unset: the definitions' "
            f"cutoff, {cleanup_older_than}).",
        )
        retain_versions: int = Field(default=default_keep, description="Always keep this many newest versions (and tagged ones).")

    @dg.op(name=f"{name}_cleanup", out={}, required_resource_keys={resource_key})
    def retention_op(context: dg.OpExecutionContext, config: RetentionConfig) -> Iterator[dg.AssetMaterialization]:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        key = context.partition_key if partitions_def is not None else None
        disk_before = lance.bytes_on_disk(key)
        cutoff = duration(config.older_than) if config.older_than else cleanup_older_than
        report = lance.cleanup(key, cutoff, config.retain_versions)
        disk_after = lance.bytes_on_disk(key)
        context.log.info(
            f"retention: {len(report.removed_versions)} versions and {len(report.files)} files removed ({report.bytes} bytes)"
        )
        after = lance.inspect(key, target_rows_per_fragment)
        yield fragments_record(
            keys.fragments,
            lance,
            after,
            key,
            {
                "versions_removed": dg.MetadataValue.int(len(report.removed_versions)),
                "bytes_reclaimed": dg.MetadataValue.int(report.bytes),
                "bytes_on_disk_before": dg.MetadataValue.int(disk_before),
                "bytes_on_disk_after": dg.MetadataValue.int(disk_after),
            },
            retention=settings,
        )

    @dg.job(
        name=f"{name}_retention",
        partitions_def=partitions_def,
        **dataset_run_tagging(name, partitions_def),
        description="Version retention: old versions and the files only they reference go (lance_assets cleanup).",
    )
    def _job() -> None:
        retention_op()

    return _job
