"""The schedules: a nightly compaction and, with a retention cutoff, a retention run per dataset.

Both are stopped until turned on (or ``start_automation=True``); each run is tagged with its
dataset, so the sensors see it as active like any other compaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the asset-job type is not exported publicly
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lance_assets.dagster.assets import DATASET_TAG, dataset_tag, partition_keys


def build_nightly_schedule(
    name: str,
    job: dg.JobDefinition | UnresolvedAssetJobDefinition,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    cron_schedule: str,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
    schedule_name: str | None = None,
) -> dg.ScheduleDefinition:
    """One run of ``job`` per dataset (partition) at ``cron_schedule``; stopped until turned on."""

    @dg.schedule(
        name=schedule_name or f"{name}_compaction_schedule", cron_schedule=cron_schedule, job=job, default_status=default_status
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        stamp = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        for key in partition_keys(partitions_def, context.instance):
            yield dg.RunRequest(
                run_key=f"{dataset_tag(name, key)}@{stamp}",
                partition_key=key,
                tags={DATASET_TAG: dataset_tag(name, key)},
            )

    return _schedule


def build_retention_schedule(
    name: str,
    job: dg.JobDefinition,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    cron_schedule: str,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """``<name>_retention_schedule``: one run of the retention job (``retention``) per dataset."""
    return build_nightly_schedule(
        name,
        job,
        partitions_def,
        cron_schedule=cron_schedule,
        schedule_name=f"{name}_retention_schedule",
        default_status=default_status,
    )
