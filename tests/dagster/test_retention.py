"""The retention job and its schedule: old versions go on their own schedule too, and the UI
records what came back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import lance

from lance_assets.dagster import build_lance_compaction_defs
from lance_assets.dagster.assets import DATASET_TAG
from lance_assets.engine.maintenance.cleanup import DEFAULT_OLDER_THAN, cleanup
from tests.support.dagster import TARGET, evaluate_sensor, events, make_dataset

FRAGMENTS = dg.AssetKey(["t", "fragments"])
SENSOR = "t_small_fragments_sensor"


def retention_defs(root: Path, **kwargs: object) -> dg.Definitions:
    return build_lance_compaction_defs(
        "t",
        root=str(root),
        partitioning=dg.StaticPartitionsDefinition(["a"]),
        target_rows_per_fragment=TARGET,
        **kwargs,  # type: ignore[arg-type]
    )


def manifests(path: Path) -> list[str]:
    return [p.name for p in (path / "_versions").iterdir() if p.name.endswith(".manifest")]


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def compacted_by_pylance(path: Path, appends: int) -> None:
    """``appends`` small fragments merged by pylance's own compaction: old versions keep the small files."""
    make_dataset(path, appends)
    lance.dataset(str(path)).optimize.compact_files(target_rows_per_fragment=TARGET)


def sensor_record(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, dg.MetadataValue]:
    [record] = evaluate_sensor(defs, instance, SENSOR).asset_events
    assert isinstance(record, dg.AssetMaterialization) and record.asset_key == FRAGMENTS
    return dict(record.metadata)


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


def test_the_record_says_what_old_versions_cost_and_retention_gives_it_back(root: Path, instance: dg.DagsterInstance) -> None:
    """After appends and a compaction, before retention ran: the versions kept and the bytes
    retention would free (the definitions' cutoff and retain_versions); retention then frees
    exactly that, and the next record shows it gone."""
    a = root / "a.lance"
    compacted_by_pylance(a, 6)
    defs = retention_defs(root, cleanup_older_than=dt.timedelta(0))
    meta = sensor_record(defs, instance)
    assert meta["versions"].value == len(manifests(a)) == len(lance.dataset(str(a)).versions()) > 1
    preview = cleanup(str(a), older_than=dt.timedelta(0), retain_versions=1, dry_run=True)
    assert meta["bytes_reclaimable"].value == preview.bytes > 0
    # the small files only old versions name are in it
    latest = {df.path for f in lance.dataset(str(a)).get_fragments() for df in f.metadata.files}
    old_files = sum(p.stat().st_size for p in (a / "data").iterdir() if p.name not in latest)
    assert old_files > 0 and meta["bytes_reclaimable"].value >= old_files

    before = disk_bytes(a)
    result = defs.resolve_job_def("t_retention").execute_in_process(instance=instance, partition_key="a")
    assert result.success
    assert before - disk_bytes(a) == meta["bytes_reclaimable"].value  # what was announced is what came back
    [event] = events(result, "ASSET_MATERIALIZATION")
    after = event.event_specific_data.materialization.metadata  # type: ignore[union-attr]
    assert after["versions"].value == len(manifests(a)) == 1
    assert after["bytes_reclaimable"].value == cleanup(str(a), older_than=dt.timedelta(0), dry_run=True).bytes == 0


def test_bytes_reclaimable_follows_the_retention_settings(root: Path, instance: dg.DagsterInstance) -> None:
    """Without a cutoff the record reckons with Lance's defaults (two weeks, keep one): nothing
    here is that old. With one, the definitions' retain_versions counts too; the fragments asset
    materialized from the UI says the same as the sensor."""
    a = root / "a.lance"
    compacted_by_pylance(a, 6)
    settings = {
        "lance defaults": ({}, DEFAULT_OLDER_THAN, 1),
        "keep three": ({"cleanup_older_than": dt.timedelta(0), "retain_versions": 3}, dt.timedelta(0), 3),
        "keep one": ({"cleanup_older_than": dt.timedelta(0)}, dt.timedelta(0), 1),
    }
    reclaimable = {}
    kept = len(lance.dataset(str(a)).versions())
    for label, (kwargs, older_than, keep) in settings.items():
        defs = retention_defs(root, **kwargs)
        meta = sensor_record(defs, instance)
        expected = cleanup(str(a), older_than=older_than, retain_versions=keep, dry_run=True).bytes
        assert (meta["versions"].value, meta["bytes_reclaimable"].value) == (kept, expected), label
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, partition_key="a", asset_selection=[FRAGMENTS])
        [event] = events(result, "ASSET_MATERIALIZATION")
        assert event.event_specific_data.materialization.metadata["bytes_reclaimable"].value == expected, label  # type: ignore[union-attr]
        description = defs.resolve_assets_def(FRAGMENTS).descriptions_by_key[FRAGMENTS]
        assert f"retain_versions={keep}" in description and f"older_than={older_than}" in description
        reclaimable[label] = expected
    assert reclaimable["lance defaults"] == 0 < reclaimable["keep three"] < reclaimable["keep one"]
    assert len(manifests(a)) == kept  # dry runs: nothing removed


def test_a_dataset_retention_refuses_still_gets_its_record(root: Path, instance: dg.DagsterInstance) -> None:
    """Cleanup refuses a dataset with branches (their manifests may name the files); the record
    is made all the same, without the two numbers it could not reckon."""
    a = root / "a.lance"
    compacted_by_pylance(a, 3)
    lance.dataset(str(a)).create_branch("feature")
    meta = sensor_record(retention_defs(root, cleanup_older_than=dt.timedelta(0)), instance)
    assert "versions" not in meta and "bytes_reclaimable" not in meta
    assert meta["fragments"].value == 1 and meta["lance_version"].value == lance.dataset(str(a)).version
