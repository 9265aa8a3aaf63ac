"""The compaction's asset checks: they pass on a good run and fail, for real, on bad ones."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import dagster as dg
import lance
import pytest

from lance_assets.dagster import build_lance_compaction_defs
from lance_assets.dagster.assets import READ_BACK_CHECK, ROWS_CHECK, SMALL_CHECK
from tests.support import factory
from tests.support.assertions import tree_digest
from tests.support.dagster import TARGET, check_evaluations, compaction_config, fragment_rows, make_dataset, table_of

COMPACTED = dg.AssetKey(["t", "compacted"])
PARTITIONS = dg.StaticPartitionsDefinition(["a"])


def defs_for(root: Path, min_small_fragments: int = 4, extra_jobs: list | None = None) -> dg.Definitions:
    base = build_lance_compaction_defs(
        "t", root=str(root), partitioning=PARTITIONS, target_rows_per_fragment=TARGET, min_small_fragments=min_small_fragments
    )
    return dg.Definitions.merge(base, dg.Definitions(jobs=extra_jobs or []))


def test_checks_pass_in_the_same_run(root: Path, instance: dg.DagsterInstance) -> None:
    path = root / "a.lance"
    make_dataset(path, 9)
    result = (
        defs_for(root)
        .resolve_job_def("t_compaction")
        .execute_in_process(run_config=compaction_config(), instance=instance, partition_key="a")
    )
    checks = check_evaluations(result)
    assert set(checks) == {ROWS_CHECK, SMALL_CHECK, READ_BACK_CHECK}
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items()}
    assert all(c.asset_key == COMPACTED for c in checks.values())
    assert (
        checks[ROWS_CHECK].metadata["rows_in_rewritten_fragments"].value
        == checks[ROWS_CHECK].metadata["rows_in_new_fragments"].value
        == 90
    )
    # the one merged fragment is under the target but has nothing to merge with: not work left behind (#25.6)
    assert checks[SMALL_CHECK].metadata["small_fragments"].value == 0
    assert checks[SMALL_CHECK].metadata["lone_small_fragments"].value == 1
    # each result belongs to the dataset (partition) it checked (#25.4)
    assert {c.partition for c in checks.values()} == {"a"}
    assert checks[SMALL_CHECK].severity == dg.AssetCheckSeverity.WARN
    assert checks[READ_BACK_CHECK].metadata["version"].value == lance.dataset(str(path)).version
    assert checks[READ_BACK_CHECK].metadata["problems"].value == "none"
    # the checks refer to this run's materialization
    record = instance.fetch_materializations(COMPACTED, limit=1).records[0]
    assert {c.target_materialization_data.run_id for c in checks.values()} == {record.run_id}  # type: ignore[union-attr]


def test_small_fragment_check_fails_when_fragments_remain(root: Path, instance: dg.DagsterInstance) -> None:
    """A row cap far under the target leaves every output small: the check must say so."""
    path = root / "a.lance"
    make_dataset(path, 8)
    result = (
        defs_for(root, min_small_fragments=3)
        .resolve_job_def("t_compaction")
        .execute_in_process(run_config=compaction_config(max_rows_per_file=20), instance=instance, partition_key="a")
    )
    assert result.success  # a WARN check does not fail the run
    assert fragment_rows(path) == [20, 20, 20, 20]
    checks = check_evaluations(result)
    small = checks[SMALL_CHECK]
    assert not small.passed
    assert small.severity == dg.AssetCheckSeverity.WARN
    assert small.metadata["small_fragments"].value == 4
    assert small.metadata["threshold"].value == 3
    # the compaction itself was sound
    assert checks[ROWS_CHECK].passed and checks[READ_BACK_CHECK].passed


def test_checks_cover_every_commit_of_a_compaction(root: Path, instance: dg.DagsterInstance) -> None:
    """Fragments with many deletions may be left alone or re-encoded in a second commit;
    either way the checks account for every rewritten group, not just the last commit's."""
    path = root / "a.lance"
    make_dataset(path, 8)
    lance.dataset(str(path)).delete("(id >= 20 AND id < 25) OR (id >= 50 AND id < 55)")
    old_max_id = max(f.fragment_id for f in lance.dataset(str(path)).get_fragments())
    expected = table_of(path)
    result = (
        defs_for(root, min_small_fragments=100)
        .resolve_job_def("t_compaction")
        .execute_in_process(run_config=compaction_config(), instance=instance, partition_key="a")
    )
    checks = check_evaluations(result)
    assert all(c.passed for c in checks.values()), {k: dict(c.metadata) for k, c in checks.items()}
    assert table_of(path).equals(expected)
    new_fragments = [f for f in lance.dataset(str(path)).get_fragments() if f.fragment_id > old_max_id]
    assert checks[ROWS_CHECK].metadata["rows_in_new_fragments"].value == sum(f.count_rows() for f in new_fragments) >= 60
    # small fragments in runs of two or more (a lone one has nothing to merge with)
    runs = [len(list(g)) for is_small, g in itertools.groupby(rows < TARGET for rows in fragment_rows(path)) if is_small]
    assert checks[SMALL_CHECK].metadata["small_fragments"].value == sum(n for n in runs if n > 1)
    assert checks[SMALL_CHECK].metadata["lone_small_fragments"].value == sum(1 for n in runs if n == 1)


def test_checks_cover_partial_progress_commits(root: Path, instance: dg.DagsterInstance) -> None:
    """``commit_every=1``: three tasks, three versions; all three groups are checked."""
    from lance_assets.dagster import CompactionConfig

    if "commit_every" not in CompactionConfig.model_fields:
        pytest.skip("this build has no commit_every option")
    path = root / "a.lance"
    make_dataset(path, 12)
    read_version = lance.dataset(str(path)).version
    result = (
        defs_for(root)
        .resolve_job_def("t_compaction")
        .execute_in_process(
            run_config=compaction_config(target_rows_per_fragment=40, commit_every=1), instance=instance, partition_key="a"
        )
    )
    assert lance.dataset(str(path)).version == read_version + 3
    checks = check_evaluations(result)
    assert all(c.passed for c in checks.values()), {k: dict(c.metadata) for k, c in checks.items()}
    assert checks[ROWS_CHECK].metadata["groups"].value == 3
    assert checks[ROWS_CHECK].metadata["rows_in_new_fragments"].value == 120


@pytest.mark.parametrize("version", factory.STORAGE_VERSIONS)
def test_checks_pass_for_every_storage_version(root: Path, instance: dg.DagsterInstance, version: str) -> None:
    path = root / "a.lance"
    make_dataset(path, 5, version=version)
    expected = table_of(path)
    result = (
        defs_for(root)
        .resolve_job_def("t_compaction")
        .execute_in_process(run_config=compaction_config(), instance=instance, partition_key="a")
    )
    checks = check_evaluations(result)
    assert all(c.passed for c in checks.values()), {k: dict(c.metadata) for k, c in checks.items()}
    assert checks[ROWS_CHECK].metadata["groups"].value == 1
    assert fragment_rows(path) == [50]
    assert table_of(path).equals(expected)


def _corrupting_hook(path: Path, original: set[str], how: str) -> dg.HookDefinition:
    """A success hook on the compaction step: damages the data files it just wrote, before the checks run."""

    @dg.success_hook(name=f"corrupt_{how}")
    def corrupt(context: dg.HookContext) -> None:
        if context.op.name != COMPACTED.to_python_identifier():
            return
        new_files = [rel for rel in tree_digest(path) if rel.startswith("data/") and rel not in original]
        assert new_files
        for rel in new_files:
            data = bytearray((path / rel).read_bytes())
            if how == "footer":
                data[-20:] = bytes(20)  # the footer (and its magic) zeroed
            else:
                for i in range(200):  # the first pages' bytes flipped, footer intact
                    data[i] ^= 0xFF
            (path / rel).write_bytes(bytes(data))
        context.log.info(f"corrupted {new_files}")

    return corrupt


def _run_with_corruption(root: Path, instance: dg.DagsterInstance, how: str) -> dict:
    path = root / "a.lance"
    make_dataset(path, 6)
    hook = _corrupting_hook(path, set(tree_digest(path)), how)
    job = dg.define_asset_job("corrupting_compaction", selection=dg.AssetSelection.assets(COMPACTED), hooks={hook})
    result = (
        defs_for(root, extra_jobs=[job])
        .resolve_job_def("corrupting_compaction")
        .execute_in_process(run_config=compaction_config(), instance=instance, partition_key="a", raise_on_error=False)
    )
    # the checks ran to completion and reported: no step crashed
    assert not [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return check_evaluations(result)


def test_read_back_fails_on_a_damaged_footer(root: Path, instance: dg.DagsterInstance) -> None:
    checks = _run_with_corruption(root, instance, "footer")
    read_back = checks[READ_BACK_CHECK]
    assert not read_back.passed
    assert read_back.severity == dg.AssetCheckSeverity.ERROR
    assert "not a Lance file" in read_back.metadata["problems"].value
    assert "pylance cannot read" in read_back.metadata["sample"].value
    assert checks[ROWS_CHECK].passed  # the manifest itself is fine


def test_read_back_fails_on_damaged_pages(root: Path, instance: dg.DagsterInstance) -> None:
    checks = _run_with_corruption(root, instance, "pages")
    read_back = checks[READ_BACK_CHECK]
    assert not read_back.passed
    assert read_back.metadata["problems"].value == "none"  # our footer parse cannot see it...
    assert "pylance cannot read" in read_back.metadata["sample"].value  # ...the pylance sample does


def test_check_only_run_needs_a_materialization_in_the_same_run(root: Path, instance: dg.DagsterInstance) -> None:
    """By design the checks judge the materialization of *their* run.

    So "materialize, corrupt, then run only the checks in a new run" cannot
    detect the corruption: the check-only run fails every check with a clear
    message instead (the corruption tests above damage the files between the
    two steps of one run instead).
    """
    path = root / "a.lance"
    make_dataset(path, 6)
    # the checks are partitioned like the asset: a check-only run (the UI's "Execute") is for one dataset
    defs = defs_for(root)
    defs.resolve_job_def("t_compaction").execute_in_process(run_config=compaction_config(), instance=instance, partition_key="a")
    expected = table_of(path)
    checks_only = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(),
        asset_check_selection={dg.AssetCheckKey(COMPACTED, n) for n in (ROWS_CHECK, SMALL_CHECK, READ_BACK_CHECK)},
    )
    result = checks_only.execute_in_process(instance=instance, partition_key="a")
    assert not any(e.event_type_value == "ASSET_MATERIALIZATION" for e in result.all_events)
    checks = check_evaluations(result)
    assert set(checks) == {ROWS_CHECK, SMALL_CHECK, READ_BACK_CHECK}
    assert all(not c.passed and c.metadata["error"].value == "no materialization in this run" for c in checks.values())
    assert table_of(path).equals(expected)
    assert os.path.isdir(path / "_versions")
