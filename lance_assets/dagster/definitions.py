"""One call (or one YAML component) that wires the whole Dagster layer for a dataset family.

``LanceCompactionComponent`` declares the attributes, each with its type, default and
description (the option it shares with the engine, ``target_rows_per_fragment``, from the
option's own declaration); ``build_lance_compaction_defs`` takes the same names as keyword
arguments in Python, where ``partitioning`` may also be a PartitionsDefinition and durations are
``timedelta``. A test holds the two equal.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Annotated, Literal

import dagster as dg

from lance_assets.dagster.assets import AssetKeys, build_compaction_asset, dataset_run_tagging
from lance_assets.dagster.checks import build_compaction_checks
from lance_assets.dagster.config import duration, option_help, python_duration
from lance_assets.dagster.fanout import build_fanout_job
from lance_assets.dagster.fragments import RetentionSettings, build_fragments_asset
from lance_assets.dagster.resources import LanceDatasets, LanceRay
from lance_assets.dagster.retention import build_retention_job
from lance_assets.dagster.schedules import build_nightly_schedule, build_retention_schedule
from lance_assets.dagster.sensors import build_automation_sensor, build_discovery_sensor, build_small_fragment_sensor
from lance_assets.dagster.triggers import CompactionTrigger, compaction_condition
from lance_assets.engine.options import DEFAULT_TARGET_ROWS_PER_FRAGMENT

Partitioning = Literal["dynamic", "none"]
Runner = Literal["local", "processes", "ray"]
Trigger = Literal["condition", "sensor"]
DEFAULT_COOLDOWN = timedelta(minutes=10)


def build_lance_compaction_defs(
    name: str = "lance",
    *,
    root: str,
    partitioning: Partitioning | dg.PartitionsDefinition = "dynamic",
    uri_template: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    key_prefix: Sequence[str] = (),
    group_name: str | None = None,
    resource_key: str = "lance",
    min_small_fragments: int = 16,
    min_small_bytes: int | None = None,
    min_small_pages: int | None = None,
    min_deleted_ratio: float | None = None,
    min_unindexed_rows: int | None = None,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    cooldown_minutes: float | None = None,
    trigger: Trigger = "condition",
    target_rows_per_fragment: int = DEFAULT_TARGET_ROWS_PER_FRAGMENT,
    sensor_interval_seconds: int = 60,
    cron_schedule: str = "0 2 * * *",
    pool: str | None = "lance_compaction",
    cleanup_older_than: timedelta | str | None = None,
    retain_versions: int = 1,
    retention_cron_schedule: str = "0 3 * * *",
    runner: Runner = "local",
    max_workers: int = 1,
    ray_address: str | None = None,
    start_automation: bool = False,
) -> dg.Definitions:
    """Definitions for compacting the Lance datasets under ``root``: resource, fragment and
    compaction assets with checks, the compacted asset's automation condition and its sensor,
    the recording (and optionally requesting) sensor, schedules, the fan-out job and (with a
    cutoff) the retention job.

    Every parameter is an attribute of :class:`LanceCompactionComponent` of the same name and
    default, described there. In Python ``partitioning`` may also be any PartitionsDefinition
    whose keys fill ``uri_template``, and ``cooldown`` and ``cleanup_older_than`` are
    ``timedelta`` (a string such as ``7d`` for ``cleanup_older_than``, and ``cooldown_minutes``,
    are still read for one release, with a DeprecationWarning).

    Example:
        >>> build_lance_compaction_defs("events", root="s3://lake/events", cleanup_older_than=timedelta(days=7))  # doctest: +SKIP
    """
    cooldown, cutoff = _durations(cooldown, cooldown_minutes, cleanup_older_than)
    partitions_def, template = _partitions(name, partitioning, uri_template)
    resource = LanceDatasets(root=root, uri_template=template, storage_options=dict(storage_options or {}))
    keys = AssetKeys.for_name(name, key_prefix)
    group = group_name or name
    reckoned = RetentionSettings.configured(cutoff, retain_versions)  # the records' bytes_reclaimable

    fragments = build_fragments_asset(
        keys.fragments,
        partitions_def,
        resource_key=resource_key,
        group_name=group,
        target_rows_per_fragment=target_rows_per_fragment,
        retention=reckoned,
    )
    thresholds = CompactionTrigger(
        min_small_fragments, min_small_bytes, min_small_pages, min_deleted_ratio, min_unindexed_rows, cooldown
    )
    job_name = f"{name}_compaction"
    jobs_it_runs = frozenset({job_name, f"{name}_fanout_compaction"})
    condition = compaction_condition(keys.fragments, keys.compacted, thresholds, jobs_it_runs) if trigger == "condition" else None
    sensor_status = dg.DefaultSensorStatus.RUNNING if start_automation else dg.DefaultSensorStatus.STOPPED
    schedule_status = dg.DefaultScheduleStatus.RUNNING if start_automation else dg.DefaultScheduleStatus.STOPPED
    ray_key = f"{resource_key}_ray"
    resources: dict[str, LanceDatasets | LanceRay] = {resource_key: resource}
    resources.update({ray_key: LanceRay(address=ray_address)} if runner == "ray" else {})
    compacted = build_compaction_asset(
        keys,
        partitions_def,
        resource_key=resource_key,
        pool=pool,
        group_name=group,
        cleanup_older_than=cutoff,
        retain_versions=retain_versions,
        runner=runner,
        max_workers=max_workers,
        ray_resource_key=ray_key,
        automation_condition=condition,
    )
    job = dg.define_asset_job(
        job_name,
        selection=dg.AssetSelection.assets(keys.compacted),
        description="Binary-copy compaction of one dataset (partition) with its asset checks.",
        **dataset_run_tagging(name, partitions_def),
    )
    sensors = _sensors(
        name,
        keys,
        job,
        partitions_def,
        thresholds,
        resource_key=resource_key,
        request_runs=trigger == "sensor",
        evaluate_condition=condition is not None,
        target_rows_per_fragment=target_rows_per_fragment,
        interval=sensor_interval_seconds,
        status=sensor_status,
        retention=reckoned,
    )
    fanout = build_fanout_job(name, keys, partitions_def, resource_key=resource_key, pool=pool, retention=reckoned)
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [job, fanout]
    schedules = [build_nightly_schedule(name, job, partitions_def, cron_schedule=cron_schedule, default_status=schedule_status)]
    if cutoff is not None:
        retention = (cutoff, retain_versions, retention_cron_schedule, schedule_status)
        retention_job, retention_schedule = _retention(
            name, keys, partitions_def, resource_key, target_rows_per_fragment, *retention
        )
        jobs.append(retention_job)
        schedules.append(retention_schedule)
    return dg.Definitions(
        assets=[fragments, compacted],
        asset_checks=[
            build_compaction_checks(
                keys, resource_key=resource_key, max_small_fragments=min_small_fragments, partitions_def=partitions_def
            )
        ],
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources,
    )


def _retention(
    name: str,
    keys: AssetKeys,
    partitions_def: dg.PartitionsDefinition | None,
    resource_key: str,
    target_rows_per_fragment: int,
    cleanup_older_than: timedelta,
    retain_versions: int,
    cron_schedule: str,
    status: dg.DefaultScheduleStatus,
) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    """The retention job and its schedule (when a cutoff is set)."""
    job = build_retention_job(
        name,
        keys,
        partitions_def,
        resource_key=resource_key,
        cleanup_older_than=cleanup_older_than,
        retain_versions=retain_versions,
        target_rows_per_fragment=target_rows_per_fragment,
    )
    return job, build_retention_schedule(name, job, partitions_def, cron_schedule=cron_schedule, default_status=status)


def _durations(
    cooldown: timedelta, cooldown_minutes: float | None, cleanup_older_than: timedelta | str | None
) -> tuple[timedelta, timedelta | None]:
    """The cool-down and the retention cutoff as timedeltas (the deprecated spellings read, with a warning)."""
    if cooldown_minutes is not None:
        warnings.warn(
            "cooldown_minutes is deprecated: use cooldown (a timedelta in Python, e.g. 30m in YAML)",
            DeprecationWarning,
            stacklevel=3,
        )
        cooldown = timedelta(minutes=cooldown_minutes)
    cutoff = None if cleanup_older_than is None else python_duration(cleanup_older_than, "cleanup_older_than", stacklevel=4)
    return python_duration(cooldown, "cooldown", stacklevel=4), cutoff


def _partitions(
    name: str, partitioning: Partitioning | dg.PartitionsDefinition, uri_template: str | None
) -> tuple[dg.PartitionsDefinition | None, str]:
    """The partitions (one per dataset, or none) and the URI template that finds a partition's dataset."""
    if partitioning == "none":
        return None, uri_template or "{root}"
    if partitioning == "dynamic":
        return dg.DynamicPartitionsDefinition(name=f"{name}_datasets"), uri_template or "{root}/{partition_key}.lance"
    return partitioning, uri_template or "{root}/{partition_key}.lance"


def _sensors(
    name: str,
    keys: AssetKeys,
    job: dg.UnresolvedAssetJobDefinition,
    partitions_def: dg.PartitionsDefinition | None,
    thresholds: CompactionTrigger,
    *,
    resource_key: str,
    request_runs: bool,
    evaluate_condition: bool,
    target_rows_per_fragment: int,
    interval: int,
    status: dg.DefaultSensorStatus,
    retention: RetentionSettings,
) -> list[dg.SensorDefinition]:
    """The recording (and, with ``request_runs``, requesting) sensor, the condition's sensor and,
    for dynamic partitions, the discovery sensor."""
    sensors = [
        build_small_fragment_sensor(
            name,
            keys,
            job,
            partitions_def,
            resource_key=resource_key,
            trigger=thresholds,
            target_rows_per_fragment=target_rows_per_fragment,
            minimum_interval_seconds=interval,
            request_runs=request_runs,
            default_status=status,
            retention=retention,
        )
    ]
    if evaluate_condition:
        sensors.append(build_automation_sensor(name, keys, minimum_interval_seconds=interval, default_status=status))
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        sensors.append(
            build_discovery_sensor(
                name, partitions_def, resource_key=resource_key, minimum_interval_seconds=interval, default_status=status
            )
        )
    return sensors


def _resolve_duration(context: dg.ResolutionContext, value: str | int | None) -> timedelta | None:
    """A YAML duration (``30m``, ``2h``, ``7d``; a bare number is seconds) as a ``timedelta``."""
    return None if value is None else duration(value)


def _about(description: str) -> dg.Resolver:
    """An attribute's description, shown by ``dg`` and in the YAML schema."""
    resolver: dg.Resolver = dg.Resolver.default(description=description)  # (Dagster leaves it unannotated)
    return resolver


def _duration(description: str, *, optional: bool = False) -> dg.Resolver:
    """A ``timedelta`` attribute spelled ``30m``, ``2h``, ``7d`` in YAML."""
    return dg.Resolver(_resolve_duration, model_field_type=str | int | None if optional else str | int, description=description)


class LanceCompactionComponent(dg.Component, dg.Model, dg.Resolvable):
    """Compaction of Lance datasets, configured in a ``dg`` project's ``defs.yaml``.

    Its attributes are ``build_lance_compaction_defs``'s parameters (a test holds the two equal).

    ```yaml
    type: lance_assets.dagster.LanceCompactionComponent
    attributes:
      name: events
      root: s3://bucket/lance
      storage_options:
        key: "{{ env.AWS_ACCESS_KEY_ID }}"
      min_small_fragments: 32
      cleanup_older_than: 7d
    ```
    """

    name: Annotated[
        str, _about("Prefix of every definition's name and of the asset keys (<name>/fragments, <name>/compacted).")
    ] = "lance"
    root: Annotated[
        str, _about("Local path or URL (s3://, gs://, az://, memory://) holding the datasets (or, unpartitioned, the dataset).")
    ]
    partitioning: Annotated[
        Partitioning,
        _about(
            "dynamic: one partition per dataset found under root, kept in sync by a discovery sensor; none: root is the dataset."
        ),
    ] = "dynamic"
    uri_template: Annotated[
        str | None,
        _about("Dataset URI for a partition key (default {root}/{partition_key}.lance, or {root} unpartitioned)."),
    ] = None
    storage_options: Annotated[
        dict[str, str] | None,
        _about("fsspec storage options (credentials, endpoint); template secrets from the environment."),
    ] = None
    key_prefix: Annotated[tuple[str, ...], _about("Asset key prefix.")] = ()
    group_name: Annotated[str | None, _about("Asset group (default: name).")] = None
    resource_key: Annotated[str, _about("Key of the LanceDatasets resource; give each family in a project its own.")] = "lance"
    min_small_fragments: Annotated[
        int, _about("A compaction is requested once a dataset has this many small fragments compaction can merge.")
    ] = 16
    min_small_bytes: Annotated[int | None, _about("... and they hold at least this many bytes (None: count only).")] = None
    min_small_pages: Annotated[
        int | None,
        _about(
            "Also request one once the dataset's columns hold this many small pages (None: not checked; "
            "set, the fragments record reads every data file's page layout once per Lance version)."
        ),
    ] = None
    min_deleted_ratio: Annotated[
        float | None, _about("Also request one once deleted rows are this share of the stored rows (None: not checked).")
    ] = None
    min_unindexed_rows: Annotated[
        int | None,
        _about(
            "Also request one (its index upkeep indexes them) once this many rows are not covered by the "
            "dataset's indices (None: not checked)."
        ),
    ] = None
    cooldown: Annotated[
        timedelta,
        _duration(
            "Automation requests no compaction of a dataset within this long (e.g. 10m) of the last one "
            "requested or started (by automation, the UI, a sensor or a schedule)."
        ),
    ] = DEFAULT_COOLDOWN
    cooldown_minutes: Annotated[float | None, _about("Deprecated (read for one release): use cooldown, e.g. 30m.")] = None
    trigger: Annotated[
        Trigger,
        _about(
            "What starts compactions: condition (default): the compacted asset's AutomationCondition over "
            "the latest fragments record, evaluated by <name>_automation_sensor; sensor: the small-fragment sensor "
            "requests runs itself (once per Lance version). Either way the sensor keeps the fragments record current."
        ),
    ] = "condition"
    target_rows_per_fragment: Annotated[int, _about(option_help("target_rows_per_fragment"))] = DEFAULT_TARGET_ROWS_PER_FRAGMENT
    sensor_interval_seconds: Annotated[int, _about("Minimum seconds between sensor evaluations.")] = 60
    cron_schedule: Annotated[str, _about("When the nightly compaction schedule runs (stopped until turned on).")] = "0 2 * * *"
    pool: Annotated[str | None, _about("Dagster concurrency pool of the compaction steps (None: no pool).")] = "lance_compaction"
    cleanup_older_than: Annotated[
        timedelta | None,
        _duration(
            "After each compaction that committed, remove versions older than this (e.g. 7d) and the files "
            "only they reference; also adds the <name>_retention job and schedule. None: no retention.",
            optional=True,
        ),
    ] = None
    retain_versions: Annotated[int, _about("Versions that retention always keeps (besides the latest and tagged ones).")] = 1
    retention_cron_schedule: Annotated[str, _about("When the retention schedule runs (stopped until turned on).")] = "0 3 * * *"
    runner: Annotated[
        Runner,
        _about(
            "Where the compaction's copy tasks run: local (the run's process, max_workers threads), "
            "processes (max_workers local processes) or ray (a LanceRay resource, key <resource_key>_ray, on "
            "ray_address); planning and the one commit stay in the run."
        ),
    ] = "local"
    max_workers: Annotated[int, _about("Tasks at once for the local and processes runners.")] = 1
    ray_address: Annotated[
        str | None, _about("Ray cluster address for runner: ray (None: the connected cluster, else a local one per run).")
    ] = None
    start_automation: Annotated[
        bool,
        _about(
            "Start the sensors (the automation sensor too) and schedules as soon as the daemon runs (default: "
            "stopped until turned on in the UI, so a deployment never compacts before someone decides it should)."
        ),
    ] = False

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_lance_compaction_defs(**{name: getattr(self, name) for name in type(self).model_fields})
