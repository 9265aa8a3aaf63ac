"""The compacted asset's automation condition, evaluated with Dagster's own testing API
(``dg.evaluate_automation_conditions``) on a real instance and real pylance datasets."""

from __future__ import annotations

import datetime
from pathlib import Path

import dagster as dg
import lance

from lance_assets.dagster import build_lance_compaction_defs
from tests.support.dagster import TARGET, append, apply_partition_requests, compaction_config, evaluate_sensor, make_dataset

COMPACTED = dg.AssetKey(["t", "compacted"])
COOLDOWN = 10  # minutes


def record(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> str | None:
    """One tick of the recording sensor, reported the way the daemon reports it."""
    tick = evaluate_sensor(defs, instance, "t_small_fragments_sensor", cursor)
    assert not tick.run_requests  # with the condition as trigger the sensor only records
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    return tick.cursor


def test_one_request_per_crossing_none_below_or_during_the_cooldown(root: Path, instance: dg.DagsterInstance) -> None:
    make_dataset(root / "a.lance", 2)
    make_dataset(root / "b.lance", 2)
    defs = build_lance_compaction_defs(
        "t", root=str(root), target_rows_per_fragment=TARGET, min_small_fragments=4, cooldown=datetime.timedelta(minutes=COOLDOWN)
    )
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    sensor_cursor = record(defs, instance, None)

    # below the threshold: nothing, however often it is evaluated
    below = dg.evaluate_automation_conditions(defs, instance)
    assert below.total_requested == 0
    below = dg.evaluate_automation_conditions(defs, instance, cursor=below.cursor)
    assert below.total_requested == 0

    # a writer's appends take "a" over the threshold: exactly one request, for "a"
    append(root / "a.lance", 3)
    sensor_cursor = record(defs, instance, sensor_cursor)
    crossed = dg.evaluate_automation_conditions(defs, instance, cursor=below.cursor)
    assert crossed.total_requested == 1
    assert crossed.get_requested_partitions(COMPACTED) == {"a"}
    # the next evaluation asks nothing more (the request was handled)
    again = dg.evaluate_automation_conditions(defs, instance, cursor=crossed.cursor)
    assert again.total_requested == 0

    # the requested run: what the automation sensor launches (the asset, one partition)
    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key="a", asset_selection=[COMPACTED], run_config=compaction_config()
    )
    assert run.success
    assert len(lance.dataset(str(root / "a.lance")).get_fragments()) == 1
    sensor_cursor = record(defs, instance, sensor_cursor)
    after = dg.evaluate_automation_conditions(defs, instance, cursor=again.cursor)
    assert after.total_requested == 0  # compacted: below the threshold again

    # new appends cross again within the cool-down: no request until it has passed
    append(root / "a.lance", 5)
    record(defs, instance, sensor_cursor)
    cooling = dg.evaluate_automation_conditions(defs, instance, cursor=after.cursor)
    assert cooling.total_requested == 0
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=COOLDOWN + 1)
    cooled = dg.evaluate_automation_conditions(defs, instance, cursor=cooling.cursor, evaluation_time=later)
    assert cooled.get_requested_partitions(COMPACTED) == {"a"}
    assert cooled.total_requested == 1  # "b" stayed below all along


def test_deleted_rows_and_unindexed_rows_trigger_too(root: Path, instance: dg.DagsterInstance) -> None:
    """Thresholds besides small fragments: a share of deleted rows, rows no index covers (the run's
    index upkeep then indexes them)."""
    path = root / "a.lance"
    ds = make_dataset(path, 1, rows=200)  # one fragment at target size: no small fragments
    ds.create_scalar_index("id", "BTREE")
    defs = build_lance_compaction_defs(
        "t", root=str(root), target_rows_per_fragment=TARGET, min_small_fragments=4, min_unindexed_rows=100, min_deleted_ratio=0.3
    )
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    cursor = record(defs, instance, None)
    first = dg.evaluate_automation_conditions(defs, instance)
    assert first.total_requested == 0

    append(path, 1, rows=150)  # 150 unindexed rows, still no small fragment pair
    cursor = record(defs, instance, cursor)
    unindexed = dg.evaluate_automation_conditions(defs, instance, cursor=first.cursor)
    assert unindexed.get_requested_partitions(COMPACTED) == {"a"}
    handled = dg.evaluate_automation_conditions(defs, instance, cursor=unindexed.cursor)  # the daemon's next tick
    assert handled.total_requested == 0
    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key="a", asset_selection=[COMPACTED], run_config=compaction_config()
    )
    assert run.success
    [materialized] = [e for e in run.get_asset_materialization_events() if e.asset_key == COMPACTED]
    assert materialized.materialization.metadata["unindexed_rows_after"].value == 0
    stats = lance.dataset(str(path)).stats.index_stats("id_idx")
    assert stats["num_unindexed_rows"] == 0

    lance.dataset(str(path)).delete("id < 150")  # 150 of 350 rows deleted: ratio 0.43
    record(defs, instance, cursor)
    [latest] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["t", "fragments"]), asset_partitions=["a"]), limit=1
    ).records
    meta = latest.asset_materialization.metadata  # type: ignore[union-attr]
    # only the deleted share is over its threshold now
    assert (meta["deleted_row_ratio"].value, meta["unindexed_rows"].value, meta["small_fragments"].value) == (
        round(150 / 350, 6),
        0,
        0,
    )
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=11)
    deleted = dg.evaluate_automation_conditions(defs, instance, cursor=handled.cursor, evaluation_time=later)
    assert deleted.get_requested_partitions(COMPACTED) == {"a"}
