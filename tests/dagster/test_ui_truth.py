"""What the UI reads from the instance after the things users do (#25.2-6), checked in-process.

Staleness is Dagster's own resolver (the one the UI's "Unsynced" comes from), fed by a real
instance; runs go through Dagster's own asset job, as the UI's Materialize button launches them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import dagster as dg
import lance
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from hypothesis import given
from hypothesis import strategies as st

from lance_assets.dagster import build_lance_compaction_defs
from lance_assets.dagster.fragments import small_fragment_counts
from tests.support.dagster import (
    TARGET,
    append,
    apply_partition_requests,
    compaction_config,
    create_run_record,
    evaluate_sensor,
    make_dataset,
)

FRAGMENTS = dg.AssetKey(["t", "fragments"])
COMPACTED = dg.AssetKey(["t", "compacted"])


def dynamic_defs(root: Path, min_small_fragments: int = 4) -> dg.Definitions:
    return build_lance_compaction_defs(
        "t", root=str(root), target_rows_per_fragment=TARGET, min_small_fragments=min_small_fragments, trigger="sensor"
    )


def stale(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> tuple[StaleStatus, list[str]]:
    resolver = CachingStaleStatusResolver(instance, defs.get_repository_def().asset_graph, LoadingContextForTest(instance))
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return resolver.get_status(key, partition), [c.reason for c in resolver.get_stale_causes(key, partition)]


def record_sensor_tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    tick = evaluate_sensor(defs, instance, "t_small_fragments_sensor", cursor)
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    return tick


def materialize_from_ui(defs: dg.Definitions, instance: dg.DagsterInstance, partition: str) -> dg.ExecuteInProcessResult:
    """What the Materialize button launches: Dagster's asset job, this asset and its checks, one partition."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, partition_key=partition, asset_selection=[COMPACTED], run_config=compaction_config()
    )


def test_compacted_partition_stays_in_sync_and_goes_unsynced_on_new_data(root: Path, instance: dg.DagsterInstance) -> None:
    path = root / "a.lance"
    make_dataset(path, 12)
    defs = dynamic_defs(root)
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    tick = record_sensor_tick(defs, instance)

    result = materialize_from_ui(defs, instance, "a")
    assert result.success
    compacted_version = lance.dataset(str(path)).version
    assert compacted_version > 12  # it committed
    assert stale(defs, instance, COMPACTED, "a") == (StaleStatus.FRESH, [])

    # the sensor sees the new Lance version and records the fragments again: still in sync
    tick = record_sensor_tick(defs, instance, tick.cursor)
    assert len(tick.asset_events) == 1
    [latest] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FRAGMENTS, asset_partitions=["a"]), limit=1
    ).records
    meta = latest.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["lance_version"].value == compacted_version
    assert meta["content_version"].value == 12  # the last version that changed rows: the 12th append
    assert stale(defs, instance, COMPACTED, "a") == (StaleStatus.FRESH, [])

    # a writer appends: now the compacted partition is out of date, because of the fragments
    append(path, 2)
    record_sensor_tick(defs, instance, tick.cursor)
    status, causes = stale(defs, instance, COMPACTED, "a")
    assert status == StaleStatus.STALE and causes, causes


def test_fragments_partitions_are_materialized_records(root: Path, instance: dg.DagsterInstance) -> None:
    """The fragments asset shows each observed dataset as present (not "Missing"), and can be
    refreshed by materializing it."""
    make_dataset(root / "a.lance", 3)
    make_dataset(root / "b.lance", 5)
    defs = dynamic_defs(root)
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    record_sensor_tick(defs, instance)
    assert instance.get_materialized_partitions(FRAGMENTS) == {"a", "b"}

    append(root / "b.lance", 1)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, partition_key="b", asset_selection=[FRAGMENTS]).success
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FRAGMENTS, asset_partitions=["b"]), limit=1
    ).records
    meta = record.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["fragments"].value == 6 and meta["lance_version"].value == lance.dataset(str(root / "b.lance")).version
    assert record.asset_materialization.tags["dagster/data_version"] == str(meta["lance_version"].value)  # type: ignore[union-attr]


def test_checks_are_per_partition(root: Path, instance: dg.DagsterInstance) -> None:
    make_dataset(root / "a.lance", 6)
    make_dataset(root / "b.lance", 7)
    defs = dynamic_defs(root)
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    for key in ("a", "b"):
        result = materialize_from_ui(defs, instance, key)
        evaluations = [e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert len(evaluations) == 3 and {e.partition for e in evaluations} == {key}
    # the instance keeps one latest result per check and dataset
    check_key = dg.AssetCheckKey(COMPACTED, "rows_preserved")
    records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
    assert sorted(r.event.asset_check_evaluation.partition for r in records if r.event and r.event.asset_check_evaluation) == [
        "a",
        "b",
    ]  # type: ignore[union-attr]


def test_lone_small_fragment_is_not_work_left_behind(root: Path, instance: dg.DagsterInstance) -> None:
    """After compaction the one merged fragment (under the target) neither counts as small nor
    makes the sensor ask for another compaction, even at a threshold of one."""
    path = root / "a.lance"
    make_dataset(path, 5)
    defs = dynamic_defs(root, min_small_fragments=1)
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    tick = record_sensor_tick(defs, instance)
    assert [r.partition_key for r in tick.run_requests or []] == ["a"]
    result = materialize_from_ui(defs, instance, "a")
    [compacted] = [e for e in result.get_asset_materialization_events() if e.asset_key == COMPACTED]
    assert compacted.materialization.metadata["fragments_after"].value == 1
    assert compacted.materialization.metadata["small_fragments_after"].value == 0
    again = record_sensor_tick(defs, instance, tick.cursor)
    assert not again.run_requests
    assert "a: 0 small fragments < 1" in (again.skip_message or "")
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FRAGMENTS, asset_partitions=["a"]), limit=1
    ).records
    meta = record.asset_materialization.metadata  # type: ignore[union-attr]
    assert (meta["small_fragments"].value, meta["lone_small_fragments"].value) == (0, 1)


def test_sensor_waits_for_a_ui_launched_run(root: Path, instance: dg.DagsterInstance) -> None:
    """A run from the Materialize button carries no lance_assets tag, only dagster/partition."""
    make_dataset(root / "a.lance", 6)
    defs = dynamic_defs(root)
    apply_partition_requests(instance, evaluate_sensor(defs, instance, "t_dataset_discovery_sensor"))
    job = defs.resolve_implicit_global_asset_job_def()
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("tests"), "__repository__"), job.name)
    run = instance.create_run_for_job(
        job,
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "a"},
        asset_selection={COMPACTED},
        remote_job_origin=origin,
    )
    tick = record_sensor_tick(defs, instance)
    assert not tick.run_requests
    assert "a: a compaction run is already queued or running" in (tick.skip_message or "")
    # a running inspection of the same dataset (fragments only) is no compaction
    instance.report_run_canceled(run)
    create_run_record(instance, job, dg.DagsterRunStatus.STARTED, {"dagster/partition": "a"})
    assert [r.partition_key for r in record_sensor_tick(defs, instance).run_requests or []] == ["a"]


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=40), st.integers(min_value=1, max_value=300))
def test_small_fragment_counts_match_the_neighbour_rule(rows: list[int], target: int) -> None:
    """Maximal runs of adjacent small fragments: a run of one is lone, longer runs are mergeable."""
    runs = [len(list(group)) for is_small, group in itertools.groupby(r < target for r in rows) if is_small]
    assert small_fragment_counts(rows, target) == (sum(n for n in runs if n > 1), sum(1 for n in runs if n == 1))
