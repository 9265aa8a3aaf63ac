"""The small-fragment sensor and the discovery sensor, ticked as the daemon ticks them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import lance
import pytest

from lance_assets.dagster import build_lance_compaction_defs
from lance_assets.dagster.assets import DATASET_TAG
from tests.support.dagster import TARGET, append, apply_partition_requests, create_run_record, evaluate_sensor, make_dataset

SENSOR = "t_small_fragments_sensor"
DISCOVERY = "t_dataset_discovery_sensor"
FRAGMENT_KEYS = {
    "lance_version",
    "storage_version",
    "fragments",
    "small_fragments",
    "target_rows_per_fragment",
    "rows",
    "deleted_rows",
    "bytes",
    "data_files",
    "size_histogram",
    "fragment_table",
    "uri",
    "lone_small_fragments",
    "content_version",
    "small_fragment_bytes",
    "deleted_row_ratio",
    "unindexed_rows",
    "versions",
    "bytes_reclaimable",
}


def static_defs(root: Path, keys: list[str], **kwargs: object) -> dg.Definitions:
    kwargs.setdefault("min_small_fragments", 4)
    kwargs.setdefault("trigger", "sensor")  # these tests are about the sensor requesting runs itself
    return build_lance_compaction_defs(
        "t",
        root=str(root),
        partitioning=dg.StaticPartitionsDefinition(keys),
        target_rows_per_fragment=TARGET,
        **kwargs,  # type: ignore[arg-type]
    )


def test_sensor_defaults_are_stopped_and_interval_is_configurable(root: Path) -> None:
    defs = static_defs(root, ["a"], sensor_interval_seconds=17)
    sensor = defs.resolve_sensor_def(SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.minimum_interval_seconds == 17
    assert sensor.job_name == "t_compaction"
    dynamic = build_lance_compaction_defs("t", root=str(root), sensor_interval_seconds=45)
    discovery = dynamic.resolve_sensor_def(DISCOVERY)
    assert discovery.default_status == dg.DefaultSensorStatus.STOPPED
    assert discovery.minimum_interval_seconds == 45


def test_lifecycle_skip_request_dedupe_new_version(root: Path, instance: dg.DagsterInstance) -> None:
    path = root / "a.lance"
    make_dataset(path, 3)
    defs = static_defs(root, ["a"])

    # under the threshold: a SkipReason saying why, no request
    first = evaluate_sensor(defs, instance, SENSOR)
    assert not first.run_requests
    assert first.skip_message == "a: 3 small fragments < 4"

    # crossing it: exactly one request for this partition, keyed by dataset and Lance version
    append(path)
    version = lance.dataset(str(path)).version
    second = evaluate_sensor(defs, instance, SENSOR, first.cursor)
    assert len(second.run_requests) == 1
    request = second.run_requests[0]
    assert request.run_key == f"t/a@{version}"
    assert request.partition_key == "a"
    assert request.tags[DATASET_TAG] == "t/a"
    cursor = json.loads(second.cursor)
    assert cursor["requested"] == {"a": version}
    assert cursor["observed"] == {"a": version}

    # same version again: the cursor remembers it, so no duplicate request
    third = evaluate_sensor(defs, instance, SENSOR, second.cursor)
    assert not third.run_requests
    assert third.skip_message == f"a: version {version} already requested"
    assert not third.asset_events

    # more appends make a new version, which is requested once more under a new run key
    append(path, 2)
    new_version = lance.dataset(str(path)).version
    fourth = evaluate_sensor(defs, instance, SENSOR, third.cursor)
    assert [r.run_key for r in fourth.run_requests] == [f"t/a@{new_version}"]
    assert new_version > version


def test_run_key_is_unique_per_version_without_a_cursor(root: Path, instance: dg.DagsterInstance) -> None:
    """Even with the cursor lost, the run key (dataset@version) lets Dagster drop a repeat."""
    make_dataset(root / "a.lance", 5)
    defs = static_defs(root, ["a"])
    one = evaluate_sensor(defs, instance, SENSOR)
    two = evaluate_sensor(defs, instance, SENSOR)  # fresh cursor
    assert (
        [r.run_key for r in one.run_requests]
        == [r.run_key for r in two.run_requests]
        == [f"t/a@{lance.dataset(str(root / 'a.lance')).version}"]
    )


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED])
def test_no_request_while_a_compaction_of_the_dataset_is_active(
    root: Path, instance: dg.DagsterInstance, status: dg.DagsterRunStatus
) -> None:
    make_dataset(root / "a.lance", 5)
    make_dataset(root / "b.lance", 5)
    defs = static_defs(root, ["a", "b"])
    job = defs.resolve_job_def("t_compaction")
    run = create_run_record(instance, job, status, {DATASET_TAG: "t/a", "dagster/partition": "a"})
    assert instance.get_run_by_id(run.run_id).status == status

    busy = evaluate_sensor(defs, instance, SENSOR)
    # dataset b is free and still gets its request; a is held back
    assert [r.partition_key for r in busy.run_requests] == ["b"]
    held = json.loads(busy.cursor)["requested"]
    assert "a" not in held

    only_a = static_defs(root, ["a"])
    blocked = evaluate_sensor(only_a, instance, SENSOR)
    assert not blocked.run_requests
    assert blocked.skip_message == "a: a compaction run is already queued or running"

    # once that run is over, the same version is requested
    instance.report_run_failed(instance.get_run_by_id(run.run_id))
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    freed = evaluate_sensor(only_a, instance, SENSOR, blocked.cursor)
    assert [r.partition_key for r in freed.run_requests] == ["a"]


def test_finished_runs_of_the_dataset_do_not_block(root: Path, instance: dg.DagsterInstance) -> None:
    make_dataset(root / "a.lance", 5)
    defs = static_defs(root, ["a"])
    job = defs.resolve_job_def("t_compaction")
    for status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        create_run_record(instance, job, status, {DATASET_TAG: "t/a"})
    # an active run of *another* dataset does not block either
    create_run_record(instance, job, dg.DagsterRunStatus.STARTED, {DATASET_TAG: "t/other"})
    assert len(evaluate_sensor(defs, instance, SENSOR).run_requests) == 1


def test_bytes_threshold(root: Path, instance: dg.DagsterInstance) -> None:
    path = root / "a.lance"
    make_dataset(path, 5)
    small_bytes = sum(f.metadata.files[0].file_size_bytes for f in lance.dataset(str(path)).get_fragments())
    high = evaluate_sensor(static_defs(root, ["a"], min_small_bytes=small_bytes + 1), instance, SENSOR)
    assert not high.run_requests
    assert high.skip_message == f"a: small fragments hold {small_bytes} bytes < {small_bytes + 1}"
    exact = evaluate_sensor(static_defs(root, ["a"], min_small_bytes=small_bytes), instance, SENSOR)
    assert len(exact.run_requests) == 1


def test_observations_once_per_version(root: Path, instance: dg.DagsterInstance) -> None:
    path = root / "a.lance"
    make_dataset(path, 2)
    make_dataset(root / "b.lance", 6)
    defs = static_defs(root, ["a", "b"])
    first = evaluate_sensor(defs, instance, SENSOR)
    by_partition = {e.partition: e for e in first.asset_events}
    assert set(by_partition) == {"a", "b"}
    for key, event in by_partition.items():
        ds = lance.dataset(str(root / f"{key}.lance"))
        assert isinstance(event, dg.AssetMaterialization)  # a record of the fragments (#25.3)
        assert event.asset_key == dg.AssetKey(["t", "fragments"])
        assert set(event.metadata) == FRAGMENT_KEYS
        assert event.tags["dagster/data_version"] == str(ds.version)
        assert event.metadata["lance_version"].value == ds.version
        assert event.metadata["fragments"].value == len(ds.get_fragments())
        assert event.metadata["small_fragments"].value == len(ds.get_fragments())
        assert event.metadata["rows"].value == ds.count_rows()
        assert event.metadata["deleted_rows"].value == 0
        assert event.metadata["bytes"].value == sum(df.file_size_bytes for f in ds.get_fragments() for df in f.metadata.files)
        assert [r.data["id"] for r in event.metadata["fragment_table"].value.records] == [
            f.fragment_id for f in ds.get_fragments()
        ]
        assert "| size | fragments |" in event.metadata["size_histogram"].value
        assert event.metadata["storage_version"].value == "2.1"

    # same versions: nothing new to observe
    second = evaluate_sensor(defs, instance, SENSOR, first.cursor)
    assert not second.asset_events

    # one dataset changes (here: deleted rows): exactly one new observation, for it
    lance.dataset(str(path)).delete("id < 3")
    third = evaluate_sensor(defs, instance, SENSOR, second.cursor)
    assert [e.partition for e in third.asset_events] == ["a"]
    assert third.asset_events[0].metadata["deleted_rows"].value == 3
    assert third.asset_events[0].tags["dagster/data_version"] == str(lance.dataset(str(path)).version)

    # reported the way the daemon does, they become the asset's history
    for event in first.asset_events + third.asset_events:
        instance.report_runless_asset_event(event)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["t", "fragments"]), asset_partitions=["a"]), limit=10
    ).records
    assert [r.asset_materialization.tags["dagster/data_version"] for r in records] == [str(lance.dataset(str(path)).version), "2"]  # type: ignore[union-attr]


def test_unreadable_dataset_is_a_skip_reason_not_a_crash(root: Path, instance: dg.DagsterInstance) -> None:
    make_dataset(root / "a.lance", 5)
    defs = static_defs(root, ["a", "missing"])
    result = evaluate_sensor(defs, instance, SENSOR)
    assert [r.partition_key for r in result.run_requests] == ["a"]
    only_missing = evaluate_sensor(static_defs(root, ["missing"]), instance, SENSOR)
    assert not only_missing.run_requests
    assert only_missing.skip_message.startswith("missing: ")


def test_unpartitioned_sensor(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    path = tmp_path / "single.lance"
    make_dataset(path, 4)
    defs = build_lance_compaction_defs(
        "t", root=str(path), partitioning="none", min_small_fragments=4, target_rows_per_fragment=TARGET, trigger="sensor"
    )
    result = evaluate_sensor(defs, instance, SENSOR)
    [request] = result.run_requests
    assert request.partition_key is None
    assert request.run_key == f"t@{lance.dataset(str(path)).version}"
    assert request.tags[DATASET_TAG] == "t"
    [event] = result.asset_events
    assert event.partition is None


def test_dynamic_partitions_follow_the_datasets(root: Path, instance: dg.DagsterInstance) -> None:
    defs = build_lance_compaction_defs(
        "t", root=str(root), min_small_fragments=4, target_rows_per_fragment=TARGET, trigger="sensor"
    )
    empty = evaluate_sensor(defs, instance, DISCOVERY)
    assert empty.skip_message == "0 datasets, no change"

    make_dataset(root / "a.lance", 5)
    make_dataset(root / "b.lance", 2)
    (root / "not_a_dataset.lance").mkdir()  # no _versions/: ignored
    (root / "c.txt").write_text("not a dataset")
    (root / "other").mkdir()
    added = evaluate_sensor(defs, instance, DISCOVERY)
    [request] = added.dynamic_partitions_requests
    assert isinstance(request, dg.AddDynamicPartitionsRequest)
    assert (request.partitions_def_name, list(request.partition_keys)) == ("t_datasets", ["a", "b"])
    apply_partition_requests(instance, added)
    assert sorted(instance.get_dynamic_partitions("t_datasets")) == ["a", "b"]
    assert evaluate_sensor(defs, instance, DISCOVERY).skip_message == "2 datasets, no change"

    # the small-fragment sensor now sees the discovered partitions
    small = evaluate_sensor(defs, instance, SENSOR)
    assert [r.partition_key for r in small.run_requests] == ["a"]
    assert sorted(e.partition for e in small.asset_events) == ["a", "b"]

    # a dataset vanishes and another appears: one delete and one add request
    shutil.rmtree(root / "b.lance")
    make_dataset(root / "c.lance", 1)
    changed = evaluate_sensor(defs, instance, DISCOVERY)
    kinds = {type(r).__name__: list(r.partition_keys) for r in changed.dynamic_partitions_requests}
    assert kinds == {"AddDynamicPartitionsRequest": ["c"], "DeleteDynamicPartitionsRequest": ["b"]}
    apply_partition_requests(instance, changed)
    assert sorted(instance.get_dynamic_partitions("t_datasets")) == ["a", "c"]


@pytest.mark.parametrize("job_name", ["t_compaction", "t_fanout_compaction"])
def test_every_compaction_run_carries_its_dataset_tag(root: Path, instance: dg.DagsterInstance, job_name: str) -> None:
    """Runs launched by hand (UI, backfill) or of the fan-out job are tagged per dataset too.

    Otherwise the sensor would not see them as active compactions, and a tag
    concurrency limit on ``lance_assets/dataset`` would not serialize them.
    """
    make_dataset(root / "a.lance", 5)
    make_dataset(root / "b.lance", 5)
    defs = static_defs(root, ["a", "b"])
    config_op = "t__compacted" if job_name == "t_compaction" else "t_plan"
    result = defs.resolve_job_def(job_name).execute_in_process(
        run_config={"ops": {config_op: {"config": {"target_rows_per_fragment": TARGET, "dry_run": True}}}},
        instance=instance,
        partition_key="b",
    )
    assert result.dagster_run.tags[DATASET_TAG] == "t/b"

    # a run launched for partition a gets the tags Dagster derives for that partition (as a UI launch
    # or a backfill does); while it is going, the sensor holds back dataset a only
    job = defs.resolve_job_def(job_name)
    tags = {**job.run_tags, **job.get_tags_for_partition_key("a", None)}
    assert tags[DATASET_TAG] == "t/a"
    create_run_record(instance, job, dg.DagsterRunStatus.STARTED, tags)
    tick = evaluate_sensor(defs, instance, SENSOR)
    assert [r.partition_key for r in tick.run_requests] == ["b"]

    single = build_lance_compaction_defs("solo", root=str(root / "a.lance"), partitioning="none", target_rows_per_fragment=TARGET)
    solo_job = "solo_compaction" if job_name == "t_compaction" else "solo_fanout_compaction"
    solo_op = "solo__compacted" if job_name == "t_compaction" else "solo_plan"
    solo = single.resolve_job_def(solo_job).execute_in_process(
        run_config={"ops": {solo_op: {"config": {"dry_run": True}}}}, instance=instance
    )
    assert solo.dagster_run.tags[DATASET_TAG] == "solo"
