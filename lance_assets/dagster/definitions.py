"""One call (or one YAML component) that wires the whole Dagster layer for a dataset family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import dagster as dg

from lance_assets.dagster.assets import AssetKeys, build_compaction_asset, dataset_run_tagging
from lance_assets.dagster.automation import build_discovery_sensor, build_nightly_schedule, build_small_fragment_sensor
from lance_assets.dagster.checks import build_compaction_checks
from lance_assets.dagster.fanout import build_fanout_job
from lance_assets.dagster.resources import LanceDatasets, LanceRay
from lance_assets.dagster.retention import build_retention_job, build_retention_schedule
from lance_assets.engine.options import DEFAULT_TARGET_ROWS_PER_FRAGMENT

Partitioning = Literal["dynamic", "none"]
Runner = Literal["local", "processes", "ray"]


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
) -> dg.Definitions:
    """Definitions for compacting the Lance datasets under ``root``.

    ``partitioning``: ``"dynamic"`` (one partition per dataset found under
    ``root``, kept in sync by a discovery sensor), ``"none"`` (``root`` is the
    dataset itself), or any PartitionsDefinition (static, daily, …) whose keys
    fill ``uri_template`` (default ``{root}/{partition_key}.lance``).
    ``cleanup_older_than`` (e.g. ``"7d"``) makes every compaction that committed also remove
    versions older than that, keeping the newest ``retain_versions`` (and tagged ones), and adds
    a ``<name>_retention`` job with its own schedule (``retention_cron_schedule``, stopped until
    turned on) for the versions other writers add.
    ``runner`` says where the compaction's copy tasks run: ``"local"`` (the run's process,
    ``max_workers`` threads), ``"processes"`` (``max_workers`` local processes) or ``"ray"``
    (a ``LanceRay`` resource, key ``<resource_key>_ray``, on ``ray_address``); the compaction
    step plans and commits once either way.
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

    fragments = dg.AssetSpec(
        key=keys.fragments,
        partitions_def=partitions_def,
        group_name=group,
        kinds={"lance"},
        description="Fragments of the Lance dataset as last observed by the small-fragment sensor (one observation per Lance version).",
    )
    resources: dict[str, dg.ConfigurableResource] = {resource_key: resource}
    ray_key = f"{resource_key}_ray"
    if runner == "ray":
        resources[ray_key] = LanceRay(address=ray_address)
    compacted = build_compaction_asset(
        keys, partitions_def, resource_key=resource_key, pool=pool, group_name=group,
        cleanup_older_than=cleanup_older_than, retain_versions=retain_versions,
        runner=runner, max_workers=max_workers, ray_resource_key=ray_key,
    )
    checks = build_compaction_checks(keys, resource_key=resource_key, max_small_fragments=min_small_fragments, partitioned=partitions_def is not None)
    job = dg.define_asset_job(
        f"{name}_compaction",
        selection=dg.AssetSelection.assets(keys.compacted),
        description="Binary-copy compaction of one dataset (partition) with its asset checks.",
        **dataset_run_tagging(name, partitions_def),
    )
    sensors = [
        build_small_fragment_sensor(
            name, keys, job, partitions_def,
            resource_key=resource_key,
            min_small_fragments=min_small_fragments,
            min_small_bytes=min_small_bytes,
            target_rows_per_fragment=target_rows_per_fragment,
            minimum_interval_seconds=sensor_interval_seconds,
        )
    ]
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        sensors.append(build_discovery_sensor(name, partitions_def, resource_key=resource_key, minimum_interval_seconds=sensor_interval_seconds))
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [job, build_fanout_job(name, keys, partitions_def, resource_key=resource_key, pool=pool)]
    schedules = [build_nightly_schedule(name, job, partitions_def, cron_schedule=cron_schedule)]
    if cleanup_older_than is not None:
        retention = build_retention_job(
            name, keys, partitions_def, resource_key=resource_key, cleanup_older_than=cleanup_older_than,
            retain_versions=retain_versions, target_rows_per_fragment=target_rows_per_fragment,
        )
        jobs.append(retention)
        schedules.append(build_retention_schedule(name, retention, partitions_def, cron_schedule=retention_cron_schedule))
    return dg.Definitions(
        assets=[fragments, compacted],
        asset_checks=[checks],
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources,
    )


class LanceCompactionComponent(dg.Component, dg.Model, dg.Resolvable):
    """Compaction of Lance datasets, configured in a ``dg`` project's ``defs.yaml``.

    ```yaml
    type: lance_assets.dagster.LanceCompactionComponent
    attributes:
      name: events
      root: s3://bucket/lance
      storage_options:
        key: "{{ env.AWS_ACCESS_KEY_ID }}"
      min_small_fragments: 32
    ```
    """

    name: str = "lance"
    root: str
    partitioning: Partitioning = "dynamic"
    uri_template: str | None = None
    storage_options: dict[str, str] = {}
    key_prefix: list[str] = []
    group_name: str | None = None
    resource_key: str = "lance"  # give each component in a project its own key: resources are shared by key
    min_small_fragments: int = 16
    min_small_bytes: int | None = None
    target_rows_per_fragment: int = DEFAULT_TARGET_ROWS_PER_FRAGMENT
    sensor_interval_seconds: int = 60
    cron_schedule: str = "0 2 * * *"
    pool: str | None = "lance_compaction"
    cleanup_older_than: str | None = None  # e.g. "7d": retention after each compaction, and a retention job
    retain_versions: int = 1
    retention_cron_schedule: str = "0 3 * * *"
    runner: Runner = "local"  # where copy tasks run: local (threads), processes, ray
    max_workers: int = 1
    ray_address: str | None = None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_lance_compaction_defs(
            self.name,
            root=self.root,
            partitioning=self.partitioning,
            uri_template=self.uri_template,
            storage_options=self.storage_options,
            key_prefix=self.key_prefix,
            group_name=self.group_name,
            resource_key=self.resource_key,
            min_small_fragments=self.min_small_fragments,
            min_small_bytes=self.min_small_bytes,
            target_rows_per_fragment=self.target_rows_per_fragment,
            sensor_interval_seconds=self.sensor_interval_seconds,
            cron_schedule=self.cron_schedule,
            pool=self.pool,
            cleanup_older_than=self.cleanup_older_than,
            retain_versions=self.retain_versions,
            retention_cron_schedule=self.retention_cron_schedule,
            runner=self.runner,
            max_workers=self.max_workers,
            ray_address=self.ray_address,
        )
