"""The sensors: they record datasets and (optionally) decide when one gets compacted.

The small-fragment sensor reads only manifests (one small read per dataset),
records the fragments (a materialization of ``<name>/fragments``) whenever a
dataset's Lance version changes. By default that is all it does: the compacted
asset's automation condition (``triggers``) decides from the record. With
``trigger="sensor"`` it also requests a compaction run once a dataset crosses the
thresholds — at most once per Lance version (the run key) and never while a
compaction of that dataset is already queued or running, however that run was launched.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # the asset-job type is not exported publicly
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lance_assets.dagster.assets import DATASET_TAG, AssetKeys, dataset_tag, partition_keys
from lance_assets.dagster.fragments import LANCE_RETENTION, RetentionSettings, fragments_record, health_values
from lance_assets.dagster.resources import LanceDatasets
from lance_assets.dagster.triggers import PARTITION_TAG, CompactionTrigger
from lance_assets.errors import LanceAssetsError

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


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
    job: UnresolvedAssetJobDefinition,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    resource_key: str,
    trigger: CompactionTrigger,
    target_rows_per_fragment: int,
    minimum_interval_seconds: int,
    request_runs: bool = True,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    retention: RetentionSettings = LANCE_RETENTION,
) -> dg.SensorDefinition:
    """``<name>_small_fragments_sensor``: records each dataset's fragments once per Lance version
    and, with ``request_runs``, requests a compaction when the dataset crosses ``trigger``.
    Each record carries what ``retention`` would free then (a dry run of it).

    Without ``request_runs`` (the default ``trigger="condition"``), it only keeps the fragments
    record current; the compacted asset's automation condition decides from that record.
    """
    if request_runs:
        description = f"Records each dataset's fragments and requests compaction when {trigger.describe()}."
    else:
        description = (
            "Records each dataset's fragments once per Lance version (manifest reads only); the compacted "
            f"asset's automation condition requests compaction when {trigger.describe()}."
        )

    @dg.sensor(
        name=f"{name}_small_fragments_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={resource_key},
        description=description,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        cursor = json.loads(context.cursor) if context.cursor else {}
        observed: dict[str, int] = cursor.get("observed", {})
        requested: dict[str, int] = cursor.get("requested", {})
        events, requests, reasons = [], [], []
        for key in partition_keys(partitions_def, context.instance):
            ck = key or ""
            label = key or name
            try:
                report = lance.inspect(key, target_rows_per_fragment)
                changed = observed.get(ck) != report.version
                if changed and trigger.needs_pages:  # page health only once per version: it reads every data file
                    report = lance.inspect(key, target_rows_per_fragment, pages=True)
                unindexed = lance.index_status(key)[0] if trigger.min_unindexed_rows is not None else None
            except LanceAssetsError as exc:
                reasons.append(f"{label}: {exc}")
                continue
            if changed:
                events.append(fragments_record(keys.fragments, lance, report, key, retention=retention))
                observed[ck] = report.version
            if not request_runs:
                reasons.append(f"{label}: version {report.version} {'recorded' if changed else 'unchanged'}")
                continue
            crossed, why = trigger.check(health_values(report, unindexed))
            if not crossed:
                reasons.append(f"{label}: {why}")
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


def build_automation_sensor(
    name: str,
    keys: AssetKeys,
    *,
    minimum_interval_seconds: int,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.AutomationConditionSensorDefinition:
    """``<name>_automation_sensor``: evaluates the compacted asset's automation condition.

    The condition has custom parts (``triggers``), which only the code location's own process
    can evaluate, hence ``use_user_code_server``; Dagster marks that parameter beta and warns
    when it is used. The choice is deliberate, so the warning is silenced here and only here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.AutomationConditionSensorDefinition(
            f"{name}_automation_sensor",
            target=dg.AssetSelection.assets(keys.compacted),
            use_user_code_server=True,
            minimum_interval_seconds=minimum_interval_seconds,
            default_status=default_status,
            description="Evaluates the compacted asset's automation condition (compaction when the latest fragments "
            "record crosses its thresholds, with a cool-down) and launches the runs it requests.",
        )
