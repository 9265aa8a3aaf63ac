"""Sensors and the schedule that decide when a dataset gets compacted.

The small-fragment sensor reads only manifests (one small read per dataset),
records the fragments (a materialization of ``<name>/fragments``) whenever a
dataset's Lance version changes, and requests a compaction run once a dataset
has enough small fragments that compaction can merge — at most once per Lance
version (the run key) and never while a compaction of that dataset is already
queued or running, however that run was launched.
"""

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the asset-job type is not exported publicly
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lance_assets.dagster.assets import DATASET_TAG, AssetKeys
from lance_assets.dagster.fragments import fragments_record, mergeable_small_bytes, small_fragment_counts
from lance_assets.dagster.resources import LanceDatasets
from lance_assets.errors import LanceAssetsError

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def dataset_tag(name: str, partition_key: str | None) -> str:
    return f"{name}/{partition_key}" if partition_key else name


def partition_keys(partitions_def: dg.PartitionsDefinition | None, instance: dg.DagsterInstance) -> Sequence[str | None]:
    if partitions_def is None:
        return [None]
    return partitions_def.get_partition_keys(dynamic_partitions_store=instance)


PARTITION_TAG = "dagster/partition"


def _compaction_active(instance: dg.DagsterInstance, compacted: dg.AssetKey, tag: str, partition_key: str | None) -> bool:
    """Whether a run that compacts this dataset is queued or running.

    Runs of our jobs carry ``lance_assets/dataset``; a run launched from the UI's Materialize
    button (Dagster's own asset job) carries only ``dagster/partition``, so those are found by
    partition and asset selection.
    """
    if instance.get_runs(filters=dg.RunsFilter(tags={DATASET_TAG: tag}, statuses=ACTIVE_STATUSES), limit=1):
        return True
    if partition_key is None:
        return False
    runs = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: partition_key}, statuses=ACTIVE_STATUSES))
    return any(compacted in (run.asset_selection or ()) for run in runs)


def build_small_fragment_sensor(
    name: str,
    keys: AssetKeys,
    job: "UnresolvedAssetJobDefinition",
    partitions_def: dg.PartitionsDefinition | None,
    *,
    resource_key: str,
    min_small_fragments: int,
    min_small_bytes: int | None,
    target_rows_per_fragment: int,
    minimum_interval_seconds: int,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{name}_small_fragments_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={resource_key},
        description=(
            f"Requests compaction when a dataset has >= {min_small_fragments} fragments under {target_rows_per_fragment} rows."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        cursor = json.loads(context.cursor) if context.cursor else {}
        observed: dict[str, int] = cursor.get("observed", {})
        requested: dict[str, int] = cursor.get("requested", {})
        events, requests, reasons = [], [], []
        for key in partition_keys(partitions_def, context.instance):
            ck = key or ""
            try:
                report = lance.inspect(key, target_rows_per_fragment)
            except LanceAssetsError as exc:
                reasons.append(f"{key or name}: {exc}")
                continue
            if observed.get(ck) != report.version:
                events.append(fragments_record(keys.fragments, lance, report, key))
                observed[ck] = report.version
            small, _ = small_fragment_counts([f.physical_rows for f in report.fragments], target_rows_per_fragment)
            small_bytes = mergeable_small_bytes(report)
            label = key or name
            if small < min_small_fragments:
                reasons.append(f"{label}: {small} small fragments < {min_small_fragments}")
            elif min_small_bytes is not None and small_bytes < min_small_bytes:
                reasons.append(f"{label}: small fragments hold {small_bytes} bytes < {min_small_bytes}")
            elif requested.get(ck) == report.version:
                reasons.append(f"{label}: version {report.version} already requested")
            elif _compaction_active(context.instance, keys.compacted, dataset_tag(name, key), key):
                reasons.append(f"{label}: a compaction run is already queued or running")
            else:
                requests.append(
                    dg.RunRequest(
                        run_key=f"{dataset_tag(name, key)}@{report.version}",
                        partition_key=key,
                        tags={DATASET_TAG: dataset_tag(name, key)},
                    )
                )
                requested[ck] = report.version
        new_cursor = json.dumps({"observed": observed, "requested": requested}, sort_keys=True)
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            cursor=new_cursor,
            skip_reason=None if requests else dg.SkipReason("; ".join(reasons) or "no datasets"),
        )

    return _sensor


def build_discovery_sensor(
    name: str,
    partitions_def: dg.DynamicPartitionsDefinition,
    *,
    resource_key: str,
    minimum_interval_seconds: int,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """Keeps the dynamic partitions equal to the datasets found under the resource's root."""

    @dg.sensor(
        name=f"{name}_dataset_discovery_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={resource_key},
        description="Adds a partition for every Lance dataset under the root and removes vanished ones.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        assert partitions_def.name is not None
        found = set(lance.discover())
        known = set(context.instance.get_dynamic_partitions(partitions_def.name))
        added, removed = sorted(found - known), sorted(known - found)
        requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
        if added:
            requests.append(partitions_def.build_add_request(added))
        if removed:
            requests.append(partitions_def.build_delete_request(removed))
        return dg.SensorResult(
            dynamic_partitions_requests=requests,
            skip_reason=None if requests else dg.SkipReason(f"{len(found)} datasets, no change"),
        )

    return _sensor


def build_nightly_schedule(
    name: str,
    job: "dg.JobDefinition | UnresolvedAssetJobDefinition",
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
