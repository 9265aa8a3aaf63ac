"""One call (or one YAML component) that wires the whole Dagster layer for a dataset family."""

from __future__ import annotations

import functools
import inspect
import operator
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field, create_model

from lance_assets.dagster.assets import AssetKeys, build_compaction_asset, dataset_run_tagging
from lance_assets.dagster.automation import (
    build_automation_sensor,
    build_discovery_sensor,
    build_nightly_schedule,
    build_small_fragment_sensor,
)
from lance_assets.dagster.checks import build_compaction_checks
from lance_assets.dagster.fanout import build_fanout_job
from lance_assets.dagster.fragments import build_fragments_asset
from lance_assets.dagster.resources import LanceDatasets, LanceRay
from lance_assets.dagster.retention import build_retention_job, build_retention_schedule
from lance_assets.dagster.triggers import CompactionTrigger, compaction_condition
from lance_assets.engine.options import DEFAULT_TARGET_ROWS_PER_FRAGMENT

Partitioning = Literal["dynamic", "none"]
Runner = Literal["local", "processes", "ray"]
Trigger = Literal["condition", "sensor"]


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
    cooldown_minutes: float = 10.0,
    trigger: Trigger = "condition",
    target_rows_per_fragment: int = DEFAULT_TARGET_ROWS_PER_FRAGMENT,
    sensor_interval_seconds: int = 60,
    cron_schedule: str = "0 2 * * *",
    pool: str | None = "lance_compaction",
    cleanup_older_than: str | None = None,
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

    The parameters below are also the ``LanceCompactionComponent``'s YAML attributes: the
    Component is derived from this signature and these descriptions.

    Args:
        name: Prefix of every definition's name and of the asset keys (``<name>/fragments``, ``<name>/compacted``).
        root: Local path or URL (s3://, gs://, az://, memory://) holding the datasets (or, unpartitioned, the dataset).
        partitioning: ``dynamic``: one partition per dataset found under ``root``, kept in sync by a discovery sensor;
            ``none``: ``root`` is the dataset; in Python also any PartitionsDefinition whose keys fill ``uri_template``.
        uri_template: Dataset URI for a partition key (default ``{root}/{partition_key}.lance``, or ``{root}`` unpartitioned).
        storage_options: fsspec storage options (credentials, endpoint); template secrets from the environment.
        key_prefix: Asset key prefix.
        group_name: Asset group (default: ``name``).
        resource_key: Key of the LanceDatasets resource; give each family in a project its own.
        min_small_fragments: A compaction is requested once a dataset has this many small fragments compaction can merge.
        min_small_bytes: ... and they hold at least this many bytes (None: count only).
        min_small_pages: Also request one once the dataset's columns hold this many small pages (None: not checked;
            set, the fragments record reads every data file's page layout once per Lance version).
        min_deleted_ratio: Also request one once deleted rows are this share of the stored rows (None: not checked).
        min_unindexed_rows: Also request one (its index upkeep indexes them) once this many rows are not covered
            by the dataset's indices (None: not checked).
        cooldown_minutes: Automation requests no compaction of a dataset within this many minutes of the last one
            requested or started (by automation, the UI, a sensor or a schedule).
        trigger: What starts compactions: ``condition`` (default): the compacted asset's AutomationCondition over the
            latest fragments record, evaluated by ``<name>_automation_sensor``; ``sensor``: the small-fragment sensor
            requests runs itself (once per Lance version). Either way the sensor keeps the fragments record current.
        target_rows_per_fragment: Fragments under this row count are small (for the sensor, checks and the default run config).
        sensor_interval_seconds: Minimum seconds between sensor evaluations.
        cron_schedule: When the nightly compaction schedule runs (stopped until turned on).
        pool: Dagster concurrency pool of the compaction steps (None: no pool).
        cleanup_older_than: After each compaction that committed, remove versions older than this (e.g. ``7d``) and the files
            only they reference; also adds the ``<name>_retention`` job and schedule. None: no retention.
        retain_versions: Versions that retention always keeps (besides the latest and tagged ones).
        retention_cron_schedule: When the retention schedule runs (stopped until turned on).
        runner: Where the compaction's copy tasks run: ``local`` (the run's process, ``max_workers`` threads),
            ``processes`` (``max_workers`` local processes) or ``ray`` (a ``LanceRay`` resource, key
            ``<resource_key>_ray``, on ``ray_address``); planning and the one commit stay in the run.
        max_workers: Tasks at once for the local and processes runners.
        ray_address: Ray cluster address for ``runner="ray"`` (None: the connected cluster, else a local one per run).
        start_automation: Start the sensors (the automation sensor too) and schedules as soon as the daemon runs
            (default: stopped until turned on in the UI, so a deployment never compacts before someone decides it should).

    Returns:
        Definitions ready to merge into a code location.

    Example:
        >>> defs = build_lance_compaction_defs("events", root="s3://lake/events", cleanup_older_than="7d")  # doctest: +SKIP
    """
    if partitioning == "none":
        partitions_def: dg.PartitionsDefinition | None = None
        template = uri_template or "{root}"
    elif partitioning == "dynamic":
        partitions_def = dg.DynamicPartitionsDefinition(name=f"{name}_datasets")
        template = uri_template or "{root}/{partition_key}.lance"
    else:
        partitions_def = partitioning
        template = uri_template or "{root}/{partition_key}.lance"
    resource = LanceDatasets(root=root, uri_template=template, storage_options=dict(storage_options or {}))
    keys = AssetKeys.for_name(name, key_prefix)
    group = group_name or name

    fragments = build_fragments_asset(
        keys.fragments,
        partitions_def,
        resource_key=resource_key,
        group_name=group,
        target_rows_per_fragment=target_rows_per_fragment,
    )
    thresholds = CompactionTrigger(
        min_small_fragments=min_small_fragments,
        min_small_bytes=min_small_bytes,
        min_small_pages=min_small_pages,
        min_deleted_ratio=min_deleted_ratio,
        min_unindexed_rows=min_unindexed_rows,
        cooldown_minutes=cooldown_minutes,
    )
    job_name, fanout_name = f"{name}_compaction", f"{name}_fanout_compaction"
    condition = (
        compaction_condition(keys.fragments, keys.compacted, thresholds, frozenset({job_name, fanout_name}))
        if trigger == "condition"
        else None
    )
    sensor_status = dg.DefaultSensorStatus.RUNNING if start_automation else dg.DefaultSensorStatus.STOPPED
    schedule_status = dg.DefaultScheduleStatus.RUNNING if start_automation else dg.DefaultScheduleStatus.STOPPED
    resources: dict[str, LanceDatasets | LanceRay] = {resource_key: resource}
    ray_key = f"{resource_key}_ray"
    if runner == "ray":
        resources[ray_key] = LanceRay(address=ray_address)
    compacted = build_compaction_asset(
        keys,
        partitions_def,
        resource_key=resource_key,
        pool=pool,
        group_name=group,
        cleanup_older_than=cleanup_older_than,
        retain_versions=retain_versions,
        runner=runner,
        max_workers=max_workers,
        ray_resource_key=ray_key,
        automation_condition=condition,
    )
    checks = build_compaction_checks(
        keys, resource_key=resource_key, max_small_fragments=min_small_fragments, partitions_def=partitions_def
    )
    job = dg.define_asset_job(
        job_name,
        selection=dg.AssetSelection.assets(keys.compacted),
        description="Binary-copy compaction of one dataset (partition) with its asset checks.",
        **dataset_run_tagging(name, partitions_def),
    )
    sensors = [
        build_small_fragment_sensor(
            name,
            keys,
            job,
            partitions_def,
            resource_key=resource_key,
            trigger=thresholds,
            target_rows_per_fragment=target_rows_per_fragment,
            minimum_interval_seconds=sensor_interval_seconds,
            request_runs=trigger == "sensor",
            default_status=sensor_status,
        )
    ]
    if condition is not None:
        sensors.append(
            build_automation_sensor(name, keys, minimum_interval_seconds=sensor_interval_seconds, default_status=sensor_status)
        )
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        sensors.append(
            build_discovery_sensor(
                name,
                partitions_def,
                resource_key=resource_key,
                minimum_interval_seconds=sensor_interval_seconds,
                default_status=sensor_status,
            )
        )
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [
        job,
        build_fanout_job(name, keys, partitions_def, resource_key=resource_key, pool=pool),
    ]
    schedules = [build_nightly_schedule(name, job, partitions_def, cron_schedule=cron_schedule, default_status=schedule_status)]
    if cleanup_older_than is not None:
        retention = build_retention_job(
            name,
            keys,
            partitions_def,
            resource_key=resource_key,
            cleanup_older_than=cleanup_older_than,
            retain_versions=retain_versions,
            target_rows_per_fragment=target_rows_per_fragment,
        )
        jobs.append(retention)
        schedules.append(
            build_retention_schedule(
                name, retention, partitions_def, cron_schedule=retention_cron_schedule, default_status=schedule_status
            )
        )
    return dg.Definitions(
        assets=[fragments, compacted],
        asset_checks=[checks],
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources,
    )


def _yaml_type(hint: Any) -> Any:
    """The YAML-able form of a builder parameter's type (abstract collections become concrete,
    Python-only alternatives such as a PartitionsDefinition object are dropped)."""
    if hint == Mapping[str, str] | None:
        return dict[str, str] | None
    if hint == Sequence[str]:
        return list[str]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        kept = [
            a
            for a in typing.get_args(hint)
            if a is type(None) or not (isinstance(a, type) and issubclass(a, dg.PartitionsDefinition))
        ]
        return functools.reduce(operator.or_, kept)
    return hint


def _param_docs(doc: str) -> dict[str, str]:
    """``{parameter: description}`` from a Google-style ``Args:`` section."""
    out: dict[str, str] = {}
    section = doc.split("Args:", 1)[1].split("Returns:", 1)[0] if "Args:" in doc else ""
    current = None
    for line in section.splitlines():
        match = re.match(r"\s{8}(\w+): (.*)", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def _component_fields() -> dict[str, Any]:
    """The builder's parameters as Component fields: same names, types, defaults, descriptions."""
    hints = typing.get_type_hints(build_lance_compaction_defs)
    docs = _param_docs(build_lance_compaction_defs.__doc__ or "")
    out: dict[str, Any] = {}
    for name, param in inspect.signature(build_lance_compaction_defs).parameters.items():
        default = ... if param.default is inspect.Parameter.empty else param.default
        if isinstance(default, tuple):
            default = list(default)
        out[name] = (_yaml_type(hints[name]), Field(default=default, description=docs.get(name)))
    return out


if TYPE_CHECKING:
    # Type checkers cannot follow fields made at run time: to them the fields are the plain model
    # (``build_defs`` reads them by name).
    _ComponentFields = dg.Model
else:
    _ComponentFields = create_model("_ComponentFields", __base__=dg.Model, __module__=__name__, **_component_fields())


class LanceCompactionComponent(dg.Component, _ComponentFields, dg.Resolvable):
    """Compaction of Lance datasets, configured in a ``dg`` project's ``defs.yaml``.

    Its attributes are exactly ``build_lance_compaction_defs``'s parameters (derived from its
    signature and docstring), so the YAML and the Python API cannot drift apart.

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

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_lance_compaction_defs(**{name: getattr(self, name) for name in _ComponentFields.model_fields})
