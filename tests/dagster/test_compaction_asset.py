"""The compaction asset, materialized per partition with typed run config."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import lance
import pydantic
import pytest

from lance_assets.dagster import CompactionConfig, build_lance_compaction_defs
from tests.support.assertions import tree_digest
from tests.support.dagster import (
    TARGET,
    compaction_config,
    events,
    fragment_rows,
    make_dataset,
    metadata_values,
    table_of,
)

COMPACTED = dg.AssetKey(["t", "compacted"])
FRAGMENTS = dg.AssetKey(["t", "fragments"])
BEFORE_AFTER_KEYS = {
    "read_version",
    "lance_version",
    "fragments_before",
    "files_before",
    "rows_before",
    "bytes_before",
    "fragments_removed",
    "fragments_added",
    "bytes_copied",
    "bytes_written",
    "seconds",
    "mb_per_s",
    "tasks",
    "skipped",
    "target_rows_per_fragment",
    "fragments_after",
    "files_after",
    "rows_after",
    "bytes_after",
    "small_fragments_after",
    "reencoded_fragments",
    "runner",
    "workers",
    "task_retries",
    "pages_before",
    "pages_after",
    "columns_coalesced_native",
    "columns_coalesced_pylance",
    "columns_left_small",
}


def defs_for(root: Path, keys: list[str], **kwargs: object) -> dg.Definitions:
    return build_lance_compaction_defs(
        "t",
        root=str(root),
        partitioning=dg.StaticPartitionsDefinition(keys),
        target_rows_per_fragment=TARGET,
        min_small_fragments=4,
        **kwargs,  # type: ignore[arg-type]
    )


def run(defs: dg.Definitions, instance: dg.DagsterInstance, partition: str | None, **config: object) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("t_compaction")
    return job.execute_in_process(run_config=compaction_config(**config), instance=instance, partition_key=partition)


def materialization(result: dg.ExecuteInProcessResult, key: dg.AssetKey = COMPACTED) -> dg.AssetMaterialization:
    """The run's one materialization of ``key`` (a compaction that commits also records the fragments)."""
    [event] = [e for e in events(result, "ASSET_MATERIALIZATION") if e.asset_key == key]
    return event.event_specific_data.materialization  # type: ignore[union-attr]


def test_config_schema_is_typed() -> None:
    fields = CompactionConfig.model_fields
    assert set(fields) >= {
        "read_batch_bytes",
        "target_rows_per_fragment",
        "max_rows_per_file",
        "max_bytes_per_file",
        "max_source_fragments",
        "dry_run",
    }
    with pytest.raises(pydantic.ValidationError):
        CompactionConfig(read_batch_bytes="lots")  # type: ignore[arg-type]


def test_materialize_one_partition_with_tiny_read_batches(root: Path, instance: dg.DagsterInstance) -> None:
    a, b = root / "a.lance", root / "b.lance"
    make_dataset(a, 12)
    make_dataset(b, 6)
    expected = table_of(a)
    b_files = tree_digest(b)
    read_version = lance.dataset(str(a)).version

    result = run(defs_for(root, ["a", "b"]), instance, "a", read_batch_bytes=64)
    assert result.success
    mat = materialization(result)
    assert mat.asset_key == COMPACTED
    assert mat.partition == "a"
    meta = metadata_values(mat.metadata)
    assert set(meta) == BEFORE_AFTER_KEYS
    # 12 small files' pages re-cut by the copy into one page per column
    assert meta["pages_after"] < meta["pages_before"] and meta["columns_coalesced_native"] and not meta["columns_left_small"]

    ds = lance.dataset(str(a))
    assert ds.version == read_version + 1
    assert table_of(a).equals(expected)
    assert meta["read_version"] == read_version
    assert meta["lance_version"] == ds.version
    assert mat.tags["dagster/data_version"] == str(ds.version)
    # an output closes at the target only when the rest reaches it too: no 20-row remainder file
    assert fragment_rows(a) == [120]
    assert (meta["fragments_before"], meta["fragments_after"]) == (12, len(ds.get_fragments()))
    assert meta["rows_before"] == meta["rows_after"] == ds.count_rows() == 120
    assert (meta["fragments_removed"], meta["fragments_added"], meta["tasks"]) == (12, 1, 1)
    assert meta["files_after"] == sum(len(f.metadata.files) for f in ds.get_fragments())
    assert meta["bytes_after"] == sum(df.file_size_bytes for f in ds.get_fragments() for df in f.metadata.files)
    assert meta["bytes_written"] == meta["bytes_after"]
    assert meta["small_fragments_after"] == sum(1 for rows in fragment_rows(a) if rows < TARGET) == 0
    # the other partition was not touched
    assert tree_digest(b) == b_files

    # the data version is what Dagster records for the asset partition
    record = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=COMPACTED, asset_partitions=["a"]), limit=1).records[
        0
    ]
    assert record.asset_materialization.tags["dagster/data_version"] == str(ds.version)  # type: ignore[union-attr]


def test_size_limits_and_source_budget(root: Path, instance: dg.DagsterInstance) -> None:
    for key in ("rows", "bytes", "budget"):
        make_dataset(root / f"{key}.lance", 12)
    expected = table_of(root / "rows.lance")
    defs = defs_for(root, ["rows", "bytes", "budget"])

    result = run(defs, instance, "rows", max_rows_per_file=30)
    assert fragment_rows(root / "rows.lance") == [30, 30, 30, 30]
    assert metadata_values(materialization(result).metadata)["fragments_after"] == 4

    one_file = lance.dataset(str(root / "bytes.lance")).get_fragments()[0].metadata.files[0].file_size_bytes
    cap = int(one_file * 3.5)
    run(defs, instance, "bytes", max_bytes_per_file=cap)
    frags = lance.dataset(str(root / "bytes.lance")).get_fragments()
    assert len(frags) > 1
    assert all(df.file_size_bytes <= cap for f in frags for df in f.metadata.files)

    # target 40 rows: three groups of four; a budget of 8 source fragments takes two of them
    result = run(defs, instance, "budget", target_rows_per_fragment=40, max_source_fragments=8)
    # (like Lance's own Rewrite, the new fragments follow the ones left alone)
    assert fragment_rows(root / "budget.lance") == [10, 10, 10, 10, 40, 40]
    meta = metadata_values(materialization(result).metadata)
    assert (meta["fragments_removed"], meta["fragments_added"]) == (8, 2)
    assert "| max_source_fragments | 4 |" in meta["skipped"]
    for key in ("rows", "bytes", "budget"):
        assert table_of(root / f"{key}.lance").equals(expected)


def test_nothing_to_compact_still_reports(root: Path, instance: dg.DagsterInstance) -> None:
    make_dataset(root / "a.lance", 1, rows=150)
    before = tree_digest(root / "a.lance")
    result = run(defs_for(root, ["a"]), instance, "a")
    meta = metadata_values(materialization(result).metadata)
    assert meta["lance_version"] == meta["read_version"] == 1
    assert meta["tasks"] == 0
    assert tree_digest(root / "a.lance") == before


def test_dry_run_materializes_nothing_and_reports_the_plan(root: Path, instance: dg.DagsterInstance) -> None:
    path = root / "a.lance"
    make_dataset(path, 8)
    before = tree_digest(path)
    result = run(defs_for(root, ["a"]), instance, "a", dry_run=True, max_rows_per_file=30)
    assert result.success
    assert not events(result, "ASSET_MATERIALIZATION")
    assert not events(result, "ASSET_CHECK_EVALUATION")
    assert [e.step_key for e in events(result, "STEP_SKIPPED")]  # the checks have nothing to check
    [obs_event] = events(result, "ASSET_OBSERVATION")
    obs = obs_event.event_specific_data.asset_observation  # type: ignore[union-attr]
    assert obs.asset_key == FRAGMENTS
    assert obs.partition == "a"
    meta = metadata_values(obs.metadata)
    assert meta["tasks"] == 3  # under a row cap: one group per output file
    assert meta["fragments_to_compact"] == 8
    assert meta["bytes_to_copy"] == sum(
        df.file_size_bytes for f in lance.dataset(str(path)).get_fragments() for df in f.metadata.files
    )
    plan = meta["dry_run_plan"]
    assert plan["read_version"] == lance.dataset(str(path)).version
    assert [o["rows"] for t in plan["tasks"] for o in t["outputs"]] == [30, 30, 20]
    assert "dagster/data_version" not in obs.tags  # a plan is no new state of the fragments
    assert meta["lance_version"] == lance.dataset(str(path)).version
    # byte-identical dataset, and Dagster holds no materialization of the asset
    assert tree_digest(path) == before
    assert not instance.fetch_materializations(COMPACTED, limit=1).records


def test_unpartitioned_and_uri_template(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    single = tmp_path / "single.lance"
    make_dataset(single, 5)
    defs = build_lance_compaction_defs("t", root=str(single), partitioning="none", target_rows_per_fragment=TARGET)
    result = defs.resolve_job_def("t_compaction").execute_in_process(run_config=compaction_config(), instance=instance)
    assert materialization(result).partition is None
    assert fragment_rows(single) == [50]

    # user-given partitions whose keys fill a URI template
    for region in ("eu", "us"):
        make_dataset(tmp_path / "tables" / region / "events.lance", 3)
    defs = build_lance_compaction_defs(
        "t",
        root=str(tmp_path / "tables"),
        partitioning=dg.StaticPartitionsDefinition(["eu", "us"]),
        uri_template="{root}/{partition_key}/events.lance",
        target_rows_per_fragment=TARGET,
    )
    result = defs.resolve_job_def("t_compaction").execute_in_process(
        run_config=compaction_config(), instance=instance, partition_key="us"
    )
    assert materialization(result).partition == "us"
    assert fragment_rows(tmp_path / "tables" / "us" / "events.lance") == [30]
    assert fragment_rows(tmp_path / "tables" / "eu" / "events.lance") == [10, 10, 10]


def test_asset_carries_pool_kind_and_dependency(root: Path) -> None:
    defs = defs_for(root, ["a"], pool="lance_pool")
    compacted = defs.resolve_assets_def(COMPACTED)
    assert compacted.op.pool == "lance_pool"
    spec = next(s for s in compacted.specs if s.key == COMPACTED)
    assert "lance" in spec.kinds
    assert [d.asset_key for d in spec.deps] == [FRAGMENTS]
    # the compaction job (what the sensor and schedule launch) carries the three checks
    job = defs.resolve_job_def("t_compaction")
    assert {c.name for c in job.asset_layer.asset_graph.asset_check_keys} == {
        "rows_preserved",
        "small_fragments_under_threshold",
        "new_version_reads_back",
    }
    assert build_lance_compaction_defs("t", root=str(root)).resolve_assets_def(COMPACTED).op.pool == "lance_compaction"


def test_concurrent_materializations_of_two_partitions(root: Path, instance: dg.DagsterInstance) -> None:
    """Two partitions compacted back to back in one instance keep separate histories."""
    make_dataset(root / "a.lance", 4)
    make_dataset(root / "b.lance", 7)
    defs = defs_for(root, ["a", "b"])
    run(defs, instance, "a")
    run(defs, instance, "b")
    for key, rows in (("a", 40), ("b", 70)):
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=COMPACTED, asset_partitions=[key]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["rows_after"].value == rows  # type: ignore[union-attr]
        assert fragment_rows(root / f"{key}.lance") == [rows]


@pytest.mark.parametrize("reencode", [True, False])
def test_heavily_deleted_fragments_show_in_the_metadata(root: Path, instance: dg.DagsterInstance, reencode: bool) -> None:
    """A group holding a fragment over the deletion threshold is re-encoded in the same commit
    (``reencoded_fragments``) or, with the fallback off, copied with a ``notes`` entry."""
    a = root / "a.lance"
    make_dataset(a, 6)
    lance.dataset(str(a)).delete("id < 8")
    expected = table_of(a)
    read_version = lance.dataset(str(a)).version
    result = run(defs_for(root, ["a"]), instance, "a", reencode_fallback=reencode)
    assert result.success
    meta = metadata_values(materialization(result).metadata)
    assert lance.dataset(str(a)).version == read_version + 1
    assert table_of(a).equals(expected)
    if reencode:
        assert meta["reencoded_fragments"] > 0 and "notes" not in meta
    else:
        assert meta["reencoded_fragments"] == 0 and "deletions_kept" in meta["notes"]


def test_retention_after_compaction_and_a_fresh_observation(root: Path, instance: dg.DagsterInstance) -> None:
    """With cleanup_older_than, the compaction also removes old versions and records what came
    back; the fragments asset is re-observed at the new version by the same run."""
    a = root / "a.lance"
    make_dataset(a, 6)
    expected = table_of(a)
    defs = defs_for(root, ["a"], cleanup_older_than=timedelta(0), retain_versions=1)
    result = run(defs, instance, "a")
    assert result.success
    ds = lance.dataset(str(a))
    assert [v["version"] for v in ds.versions()] == [ds.version]  # only the compacted version is left
    assert table_of(a).equals(expected)
    meta = metadata_values(materialization(result).metadata)
    assert set(meta) == BEFORE_AFTER_KEYS | {"versions_removed", "bytes_reclaimed", "bytes_on_disk_before", "bytes_on_disk_after"}
    assert meta["versions_removed"] == ds.version - 1 and meta["bytes_reclaimed"] > 0
    assert meta["bytes_on_disk_after"] < meta["bytes_on_disk_before"]
    record = materialization(result, FRAGMENTS)
    assert record.partition == "a"
    assert record.metadata["fragments"].value == 1 and record.metadata["lance_version"].value == ds.version
    # recorded after the retention: one version kept, nothing left for retention to free
    assert (record.metadata["versions"].value, record.metadata["bytes_reclaimable"].value) == (1, 0)


def test_retention_durations_from_python(root: Path) -> None:
    """Python passes a timedelta; a string is still read for one release, with a DeprecationWarning,
    and a typo or a negative duration fails when the definitions load, not at 2 am."""
    with pytest.warns(DeprecationWarning, match="cleanup_older_than as a string"):
        defs = defs_for(root, ["a"], cleanup_older_than="7d")
    assert "t_retention" in {j.name for j in defs.jobs or []}
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="not a duration"):
        defs_for(root, ["a"], cleanup_older_than="seven days")
    with pytest.raises(ValueError, match="cannot be negative"):
        defs_for(root, ["a"], cleanup_older_than=timedelta(hours=-1))


def test_a_bad_run_config_cutoff_fails_before_compacting(root: Path, instance: dg.DagsterInstance) -> None:
    a = root / "a.lance"
    make_dataset(a, 6)
    before = tree_digest(a)
    result = (
        defs_for(root, ["a"])
        .resolve_job_def("t_compaction")
        .execute_in_process(
            run_config=compaction_config(cleanup_older_than="seven days"),
            instance=instance,
            partition_key="a",
            raise_on_error=False,
        )
    )
    assert not result.success
    assert tree_digest(a) == before  # nothing was written
