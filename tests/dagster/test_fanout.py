"""The fan-out job (plan -> one copy step per task -> commit) on executors that leave the test process."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import lance
import pytest

from lance_assets.dagster import build_lance_compaction_defs
from tests.support import fanout_target
from tests.support.assertions import tree_digest
from tests.support.dagster import check_evaluations, events, fragment_rows, make_dataset, table_of

REPO = Path(__file__).resolve().parents[2]
TARGET = 40  # twelve 10-row fragments -> three copy tasks of four fragments


@pytest.fixture
def fan_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two identical datasets; executor subprocesses find the root through the environment."""
    root = tmp_path / "fan"
    root.mkdir()
    for key in fanout_target.PARTITIONS:
        make_dataset(root / f"{key}.lance", 12)
    monkeypatch.setenv(fanout_target.ROOT_ENV, str(root))
    return root


def recon(function_name: str) -> dg.ReconstructableJob:
    """The job rebuilt in each step process by calling ``fanout_target.<function_name>()``.

    Not ``dg.reconstructable(fanout_target.<fn>)``: in the child processes Dagster
    drops ``sys.path[0]`` (pytest's entry for the repository root) before importing
    the module, so the root is passed explicitly as the working directory.
    """
    return dg.build_reconstructable_job("tests.support.fanout_target", function_name, reconstructor_working_directory=str(REPO))


def data_file_digests(path: Path) -> list[str]:
    """sha256 of each data file of the latest version, in manifest order."""
    ds = lance.dataset(str(path))
    return [
        hashlib.sha256((path / "data" / df.path).read_bytes()).hexdigest() for f in ds.get_fragments() for df in f.metadata.files
    ]


def single_process_compaction(root: Path, instance: dg.DagsterInstance, key: str) -> None:
    """The reference: the compaction asset (and its checks) in this process."""
    defs = build_lance_compaction_defs(
        fanout_target.NAME, root=str(root), partitioning=dg.StaticPartitionsDefinition(fanout_target.PARTITIONS)
    )
    result = defs.resolve_job_def(f"{fanout_target.NAME}_compaction").execute_in_process(
        run_config={"ops": {"fan__compacted": {"config": {"target_rows_per_fragment": TARGET}}}},
        instance=instance,
        partition_key=key,
    )
    assert result.success
    assert all(c.passed for c in check_evaluations(result).values())


def assert_same_result(root: Path, expected_rows: list[int]) -> None:
    a, b = root / "a.lance", root / "b.lance"
    assert fragment_rows(a) == fragment_rows(b) == expected_rows
    assert lance.dataset(str(a)).to_table().equals(lance.dataset(str(b)).to_table())  # same rows in the same scan order
    assert table_of(a).equals(table_of(b))
    assert lance.dataset(str(a)).version == lance.dataset(str(b)).version
    # binary copy is deterministic: the new data files are byte for byte the same
    assert data_file_digests(a) == data_file_digests(b)


def test_fanout_on_the_multiprocess_executor(fan_root: Path, instance: dg.DagsterInstance) -> None:
    original = table_of(fan_root / "a.lance")
    run_config = {
        "ops": {"fan_plan": {"config": {"target_rows_per_fragment": TARGET}}},
        "execution": {
            "config": {
                "multiprocess": {
                    "max_concurrent": 3,
                    # forkserver keeps step start-up cheap; lance itself is not fork-safe, so it is not preloaded
                    "start_method": {"forkserver": {"preload_modules": ["dagster", "lance_assets.dagster"]}},
                }
            }
        },
    }
    with dg.execute_job(
        recon("multiprocess_fanout_job"), instance, run_config=run_config, tags={"dagster/partition": "a"}
    ) as result:
        assert result.success
        copy_steps = {e.step_key: e.pid for e in events(result, "STEP_SUCCESS") if e.step_key.startswith("fan_copy_task")}
        assert sorted(copy_steps) == ["fan_copy_task[task_0]", "fan_copy_task[task_1]", "fan_copy_task[task_2]"]
        # every step ran in a process of its own, none in this one
        step_pids = [e.pid for e in events(result, "STEP_SUCCESS")]
        assert os.getpid() not in step_pids
        assert len(set(step_pids)) == len(step_pids) == 5
        mats = {e.asset_key: e.event_specific_data.materialization for e in events(result, "ASSET_MATERIALIZATION")}  # type: ignore[union-attr]
        assert set(mats) == {dg.AssetKey(["fan", "fragments"]), dg.AssetKey(["fan", "compacted"])}
        assert mats[dg.AssetKey(["fan", "fragments"])].metadata["fragments"].value == 3  # the fresh record of the fragments
        mat = mats[dg.AssetKey(["fan", "compacted"])]
        assert mat.partition == "a"
        assert mat.metadata["lance_version"].value == lance.dataset(str(fan_root / "a.lance")).version
        assert mat.tags["dagster/data_version"] == str(lance.dataset(str(fan_root / "a.lance")).version)
        assert mat.metadata["tasks"].value == 3
    assert table_of(fan_root / "a.lance").equals(original)

    single_process_compaction(fan_root, instance, "b")
    assert_same_result(fan_root, [40, 40, 40])


@pytest.fixture
def dask_cluster() -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dagster_dask")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_compaction_job_on_a_dask_cluster(fan_root: Path, instance: dg.DagsterInstance, dask_cluster: str) -> None:
    """The compaction asset job, its steps on two dask worker processes reached over TCP on loopback.

    ``pool=None``: with an op pool the run carries a RunOpConcurrency record,
    which dagster-dask cannot hand to ``Client.submit`` (dask iterates named
    tuples; Dagster's records forbid iteration).
    """
    import distributed

    with distributed.Client(dask_cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2
    run_config = {
        "ops": {"fan__compacted": {"config": {"target_rows_per_fragment": TARGET}}},
        "execution": {"config": {"cluster": {"existing": {"address": dask_cluster}}}},
    }
    with dg.execute_job(recon("dask_compaction_job"), instance, run_config=run_config, tags={"dagster/partition": "a"}) as result:
        assert result.success
        step_pids = {e.step_key: e.pid for e in events(result, "STEP_SUCCESS")}
        assert set(step_pids) == {"fan__compacted", "fan__compacted_checks"}
        assert set(step_pids.values()) <= worker_pids  # both steps ran on dask workers, not here
        checks = check_evaluations(result)
        assert len(checks) == 3 and all(c.passed for c in checks.values())
    single_process_compaction(fan_root, instance, "b")
    assert_same_result(fan_root, [40, 40, 40])


def test_fanout_on_a_dask_cluster(fan_root: Path, instance: dg.DagsterInstance, dask_cluster: str) -> None:
    """The fan-out job on dagster-dask: xfails (precisely) while dagster-dask ignores dynamic steps.

    dagster-dask plans the steps once, before any dynamic output exists, so the
    copy and commit steps never run: the run reports success after the plan step
    and nothing is compacted (dagster-io/dagster#9785). Use the multiprocess (or
    celery/k8s) executor for the fan-out job; the compaction asset job runs on dask.
    """
    run_config = {
        "ops": {"fan_plan": {"config": {"target_rows_per_fragment": TARGET}}},
        "execution": {"config": {"cluster": {"existing": {"address": dask_cluster}}}},
    }
    with dg.execute_job(recon("dask_fanout_job"), instance, run_config=run_config, tags={"dagster/partition": "a"}) as result:
        assert result.success
        steps = {e.step_key for e in events(result, "STEP_SUCCESS")}
    assert "fan_plan" in steps
    if not any(step.startswith("fan_copy_task") for step in steps):
        assert fragment_rows(fan_root / "a.lance") == [10] * 12  # silently nothing done
        pytest.xfail("dagster-dask does not execute dynamic (mapped) steps: dagster-io/dagster#9785")
    assert fragment_rows(fan_root / "a.lance") == [40, 40, 40]


def test_fanout_dry_run_starts_no_copy_task(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    make_dataset(tmp_path / "a.lance", 12)
    before = tree_digest(tmp_path / "a.lance")
    defs = build_lance_compaction_defs("t", root=str(tmp_path), partitioning=dg.StaticPartitionsDefinition(["a"]))
    result = defs.resolve_job_def("t_fanout_compaction").execute_in_process(
        run_config={"ops": {"t_plan": {"config": {"target_rows_per_fragment": TARGET, "dry_run": True}}}},
        instance=instance,
        partition_key="a",
    )
    assert result.success
    assert not [e for e in events(result, "STEP_START") if e.step_key.startswith("t_copy_task")]
    assert not events(result, "ASSET_MATERIALIZATION")
    [obs] = [e.event_specific_data.asset_observation for e in events(result, "ASSET_OBSERVATION")]  # type: ignore[union-attr]
    assert obs.asset_key == dg.AssetKey(["t", "fragments"]) and obs.partition == "a"
    assert obs.metadata["tasks"].value == 3
    assert obs.metadata["dry_run_plan"].value["read_version"] == lance.dataset(str(tmp_path / "a.lance")).version
    assert tree_digest(tmp_path / "a.lance") == before


def test_fanout_reencodes_heavily_deleted_groups_in_its_one_commit(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """A heavily deleted fragment is re-encoded with its bin by a copy task (pylance writes, we
    commit), as in the asset path: one new version."""
    path = tmp_path / "a.lance"
    make_dataset(path, 12)
    lance.dataset(str(path)).delete("id < 8")  # the first 10-row fragment loses 80%
    before = table_of(path)
    start = lance.dataset(str(path)).version
    defs = build_lance_compaction_defs("t", root=str(tmp_path), partitioning=dg.StaticPartitionsDefinition(["a"]))
    result = defs.resolve_job_def("t_fanout_compaction").execute_in_process(
        run_config={"ops": {"t_plan": {"config": {"target_rows_per_fragment": TARGET}}}}, instance=instance, partition_key="a"
    )
    assert result.success
    assert table_of(path).equals(before)
    assert lance.dataset(str(path)).version == start + 1
    # fragments 0-3 (0 lost 8 of its 10 rows) re-encoded to their 32 live rows; 4-7 and 8-11 copied
    assert sorted(fragment_rows(path)) == [32, 40, 40]


def test_fanout_result_stays_in_sync_like_the_asset_run(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """The fan-out commit records the lineage the compaction asset's step records (input data
    version and record, code version), so Dagster's staleness resolver — the UI's "Unsynced" —
    sees its result in sync until a writer adds data; with and without an earlier record."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from tests.support.dagster import append, evaluate_sensor

    for key in ("a", "b", "c"):
        make_dataset(tmp_path / f"{key}.lance", 12)
    partitions = dg.StaticPartitionsDefinition(["a", "b", "c"])
    defs = build_lance_compaction_defs("t", root=str(tmp_path), partitioning=partitions, target_rows_per_fragment=TARGET)
    compacted = dg.AssetKey(["t", "compacted"])
    tick = evaluate_sensor(defs, instance, "t_small_fragments_sensor")
    for event in tick.asset_events:
        if event.partition in ("a", "b"):  # "c" has never been recorded when it is compacted
            instance.report_runless_asset_event(event)

    fanout = defs.resolve_job_def("t_fanout_compaction")
    for key in ("a", "c"):
        result = fanout.execute_in_process(
            run_config={"ops": {"t_plan": {"config": {"target_rows_per_fragment": TARGET}}}}, instance=instance, partition_key=key
        )
        assert result.success
    reference = defs.resolve_job_def("t_compaction").execute_in_process(
        run_config={"ops": {"t__compacted": {"config": {"target_rows_per_fragment": TARGET}}}},
        instance=instance,
        partition_key="b",
    )
    assert reference.success

    def status(key: str) -> tuple[StaleStatus, list[str]]:
        resolver = CachingStaleStatusResolver(instance, defs.get_repository_def().asset_graph, LoadingContextForTest(instance))
        return resolver.get_status(compacted, key), [c.reason for c in resolver.get_stale_causes(compacted, key)]

    def tags(key: str) -> dict[str, str]:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=compacted, asset_partitions=[key]), limit=1
        ).records
        return dict(record.asset_materialization.tags or {})  # type: ignore[union-attr]

    assert set(tags("a")) == set(tags("b")) == set(tags("c"))  # the same lineage keys as the asset step writes
    for key in ("a", "b", "c"):
        assert status(key) == (StaleStatus.FRESH, []), key
        assert tags(key)["dagster/data_version"] == str(lance.dataset(str(tmp_path / f"{key}.lance")).version)
    # a writer's append (recorded by the sensor) makes the fan-out result unsynced: the truth
    append(tmp_path / "a.lance", 2)
    for event in evaluate_sensor(defs, instance, "t_small_fragments_sensor", tick.cursor).asset_events:
        instance.report_runless_asset_event(event)
    assert status("a")[0] == StaleStatus.STALE
