"""A compaction job whose tasks run as dynamic outputs, so the executor spreads the copy work.

plan (one step) -> copy task (one step per task, in parallel) -> commit (one step).
Plans and results cross step boundaries as JSON, which works with every IO
manager and every executor that runs dynamic steps (multiprocess, celery, k8s);
dagster-dask does not (dagster-io/dagster#9785): it runs the plan step only.
"""

import json
from collections.abc import Iterator

import dagster as dg

from lance_assets.dagster.assets import AssetKeys, dataset_run_tagging, dry_run_observation
from lance_assets.dagster.config import CompactionConfig
from lance_assets.dagster.fragments import LANCE_RETENTION, RetentionSettings, content_version, fragments_record, lineage_tags
from lance_assets.dagster.resources import LanceDatasets
from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.compaction import restore_index_coverage
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.copying.parts import tune_allocator
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.planning.plan import CompactionPlan, plan_compaction
from lance_assets.engine.report import CompactionReport, RewriteResult
from lance_assets.io import Storage


def build_fanout_job(
    name: str,
    keys: AssetKeys,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    resource_key: str,
    pool: str | None = None,
    executor_def: dg.ExecutorDefinition | None = None,
    retention: RetentionSettings = LANCE_RETENTION,
) -> dg.JobDefinition:
    """``<name>_fanout_compaction``: plan, copy tasks as dynamic steps, one commit; the fresh
    fragments record it makes carries what ``retention`` would free (see ``fragments_record``)."""

    def _key(context: dg.OpExecutionContext) -> str | None:
        return context.partition_key if partitions_def is not None else None

    @dg.op(
        name=f"{name}_plan",
        out={"plan": dg.Out(str), "tasks": dg.DynamicOut(str)},
        required_resource_keys={resource_key},
    )
    def plan_op(
        context: dg.OpExecutionContext,
        config: CompactionConfig,
    ) -> Iterator[dg.Output[str] | dg.DynamicOutput[str] | dg.AssetObservation]:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        options = config.options()
        plan = plan_compaction(Dataset.open(lance.uri(_key(context)), storage_options=lance.options()), options)
        context.log.info(f"{len(plan.tasks)} tasks over {plan.fragments_to_compact} fragments at version {plan.read_version}")
        yield dg.Output(plan.to_json(), "plan")
        if options.dry_run:  # report the plan, start no copy task (so nothing is written or committed)
            yield dry_run_observation(keys, _key(context), plan)
            return
        for task in plan.tasks:
            yield dg.DynamicOutput(
                json.dumps({"plan": plan.to_dict(), "task_id": task.task_id}),
                output_name="tasks",
                mapping_key=f"task_{task.task_id}",
            )

    @dg.op(name=f"{name}_copy_task", required_resource_keys={resource_key}, pool=pool)
    def copy_op(context: dg.OpExecutionContext, task_json: str) -> str:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        payload = json.loads(task_json)
        plan = CompactionPlan.from_dict(payload["plan"], storage_options=lance.options())
        task = next(t for t in plan.tasks if t.task_id == payload["task_id"])
        tune_allocator()  # a step's process exists to run it (Dagster's default executor)
        result = execute_task(lance.uri(_key(context)), plan, task)
        context.log.info(
            f"task {task.task_id}: {len(task.fragment_ids)} fragments, {result.bytes_read} bytes in "
            f"{result.seconds:.2f}s {result.skipped_reason}"
        )
        return json.dumps(result.to_dict())

    @dg.op(name=f"{name}_commit", required_resource_keys={resource_key})
    def commit_op(
        context: dg.OpExecutionContext, plan_json: str, results: list[str]
    ) -> Iterator[dg.AssetMaterialization | dg.Output[str]]:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        plan = CompactionPlan.from_dict(json.loads(plan_json), storage_options=lance.options())
        storage = Storage(lance.uri(_key(context)), plan.storage_options)
        report = commit_compaction(storage, plan, [RewriteResult.from_dict(json.loads(r)) for r in results])
        report = restore_index_coverage(report, plan.options, storage)
        if report.version is not None:
            yield from _committed_events(context, keys, lance, _key(context), plan, report, report.version, retention)
        yield dg.Output(json.dumps(report.to_dict()))

    @dg.job(
        name=f"{name}_fanout_compaction",
        partitions_def=partitions_def,
        executor_def=executor_def,
        **dataset_run_tagging(name, partitions_def),
        description=(
            "Binary-copy compaction with one step per task (use a multiprocess, celery or k8s executor; "
            "dagster-dask does not run dynamic steps)."
        ),
    )
    def _job() -> None:
        plan, tasks = plan_op()
        commit_op(plan, tasks.map(copy_op).collect())

    return _job


def _committed_events(
    context: dg.OpExecutionContext,
    keys: AssetKeys,
    lance: LanceDatasets,
    key: str | None,
    plan: CompactionPlan,
    report: CompactionReport,
    version: int,
    retention: RetentionSettings,
) -> Iterator[dg.AssetMaterialization]:
    """A fan-out commit recorded as the compaction asset's step records it: the fragments'
    fresh record, then the compacted asset's materialization with the run's lineage."""
    # lineage taken before the fresh record below
    tags = lineage_tags(
        context.instance, keys.fragments, key, context.run_id, content_version(lance, key, plan.read_version), version
    )
    after = lance.inspect(key, plan.options.target_rows_per_fragment)
    yield fragments_record(keys.fragments, lance, after, key, retention=retention)
    yield dg.AssetMaterialization(
        asset_key=keys.compacted,
        partition=key,
        metadata={
            "read_version": report.read_version,
            "lance_version": report.version,
            "fragments_removed": report.fragments_removed,
            "fragments_added": report.fragments_added,
            "bytes_copied": report.bytes_read,
            "tasks": report.tasks,
        },
        tags=tags,
    )
