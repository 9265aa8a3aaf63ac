"""The nightly schedule: one run request per partition, tagged for tag concurrency limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from lance_assets.dagster import build_lance_compaction_defs
from lance_assets.dagster.assets import DATASET_TAG
from tests.support.dagster import TARGET, apply_partition_requests, evaluate_sensor, make_dataset

SCHEDULE = "t_compaction_schedule"


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, when: dt.datetime) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def(SCHEDULE)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, resources=defs.resources, repository_def=defs.get_repository_def()
    )
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        data = schedule.evaluate_tick(context)
    assert (data.skip_message is None) == bool(data.run_requests)
    return list(data.run_requests or [])


def test_cron_is_configurable_and_default_is_stopped(root: Path) -> None:
    default = build_lance_compaction_defs("t", root=str(root)).resolve_schedule_def(SCHEDULE)
    assert default.cron_schedule == "0 2 * * *"
    assert default.default_status == dg.DefaultScheduleStatus.STOPPED
    custom = build_lance_compaction_defs("t", root=str(root), cron_schedule="*/15 * * * *").resolve_schedule_def(SCHEDULE)
    assert custom.cron_schedule == "*/15 * * * *"
    assert custom.job_name == "t_compaction"


def test_one_request_per_static_partition(root: Path, instance: dg.DagsterInstance) -> None:
    defs = build_lance_compaction_defs("t", root=str(root), partitioning=dg.StaticPartitionsDefinition(["a", "b", "c"]))
    when = dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC)
    requests = tick(defs, instance, when)
    assert [r.partition_key for r in requests] == ["a", "b", "c"]
    assert [r.tags[DATASET_TAG] for r in requests] == ["t/a", "t/b", "t/c"]
    assert len({r.run_key for r in requests}) == 3
    assert all(when.isoformat() in r.run_key for r in requests)
    # the next night's requests get new run keys (so Dagster does not drop them as repeats)
    later = tick(defs, instance, when + dt.timedelta(days=1))
    assert not {r.run_key for r in requests} & {r.run_key for r in later}


def test_dynamic_partitions_and_unpartitioned(root: Path, instance: dg.DagsterInstance) -> None:
    when = dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC)
    defs = build_lance_compaction_defs("t", root=str(root), target_rows_per_fragment=TARGET)
    assert tick(defs, instance, when) == []  # no datasets discovered yet
    for key in ("x", "y"):
        make_dataset(root / f"{key}.lance", 2)
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    assert [(r.partition_key, r.tags[DATASET_TAG]) for r in tick(defs, instance, when)] == [("x", "t/x"), ("y", "t/y")]

    single = build_lance_compaction_defs("solo", root=str(root / "x.lance"), partitioning="none")
    schedule = single.resolve_schedule_def("solo_compaction_schedule")
    data = schedule.evaluate_tick(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=single.get_repository_def())
    )
    [request] = data.run_requests
    assert request.partition_key is None
    assert request.tags[DATASET_TAG] == "solo"


def test_scheduled_run_executes(root: Path, instance: dg.DagsterInstance) -> None:
    """A request from the schedule is a complete run description for the compaction job."""
    make_dataset(root / "a.lance", 5)
    defs = build_lance_compaction_defs(
        "t", root=str(root), partitioning=dg.StaticPartitionsDefinition(["a"]), target_rows_per_fragment=TARGET
    )
    [request] = tick(defs, instance, dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC))
    job = defs.resolve_job_def(request.job_name or "t_compaction")
    run_config = {"ops": {"t__compacted": {"config": {"target_rows_per_fragment": TARGET}}}}
    result = job.execute_in_process(
        run_config=run_config, instance=instance, partition_key=request.partition_key, tags=request.tags
    )
    assert result.success
    assert result.dagster_run.tags[DATASET_TAG] == "t/a"
