"""The retention job and its schedule: old versions go on their own schedule too, and the UI
records what came back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import lance

from lance_assets.dagster import build_lance_compaction_defs
from lance_assets.dagster.assets import DATASET_TAG
from tests.support.dagster import make_dataset


def test_retention_job_removes_old_versions_and_observes(root: Path, instance: dg.DagsterInstance) -> None:
    a = root / "a.lance"
    make_dataset(a, 5)
    rows = lance.dataset(str(a)).to_table()
    defs = build_lance_compaction_defs(
        "t", root=str(root), partitioning=dg.StaticPartitionsDefinition(["a"]), cleanup_older_than=dt.timedelta(days=14)
    )
    job = defs.resolve_job_def("t_retention")
    # nothing is 14 days old
    result = job.execute_in_process(instance=instance, partition_key="a")
    assert result.success and len(lance.dataset(str(a)).versions()) == 5
    # run config overrides the definitions' cutoff
    result = job.execute_in_process(
        run_config={"ops": {"t_cleanup": {"config": {"older_than": "0s", "retain_versions": 2}}}},
        instance=instance,
        partition_key="a",
    )
    assert result.success
    ds = lance.dataset(str(a))
    assert [v["version"] for v in ds.versions()] == [4, 5] and ds.to_table().equals(rows)
    [obs] = [e.event_specific_data.materialization for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]  # type: ignore[union-attr]
    assert obs.asset_key == dg.AssetKey(["t", "fragments"]) and obs.partition == "a"
    assert obs.metadata["versions_removed"].value == 3 and obs.metadata["bytes_reclaimed"].value > 0
    assert obs.metadata["bytes_on_disk_after"].value < obs.metadata["bytes_on_disk_before"].value
    assert obs.tags["dagster/data_version"] == "5"  # retention changes no row: the content version stays
    assert result.dagster_run.tags[DATASET_TAG] == "t/a"


def test_retention_schedule_exists_only_with_a_cutoff(root: Path, instance: dg.DagsterInstance) -> None:
    plain = build_lance_compaction_defs("t", root=str(root))
    assert all(s.name != "t_retention_schedule" for s in plain.schedules or [])
    defs = build_lance_compaction_defs(
        "t",
        root=str(root),
        partitioning=dg.StaticPartitionsDefinition(["a", "b"]),
        cleanup_older_than=dt.timedelta(days=7),
        retention_cron_schedule="0 4 * * 0",
    )
    schedule = defs.resolve_schedule_def("t_retention_schedule")
    assert (schedule.cron_schedule, schedule.job_name, schedule.default_status) == (
        "0 4 * * 0",
        "t_retention",
        dg.DefaultScheduleStatus.STOPPED,
    )
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=dt.datetime(2026, 1, 4, 4, tzinfo=dt.UTC),
        resources=defs.resources,
        repository_def=defs.get_repository_def(),
    )
    requests = schedule.evaluate_tick(context).run_requests or []
    assert [r.partition_key for r in requests] == ["a", "b"]
