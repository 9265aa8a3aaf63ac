"""Copy tasks on other processes and on a real Ray / Dask cluster started here on loopback;
the caller commits once, and pylance reads the result as before."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.engine.runners import DaskRunner, ProcessRunner, RayRunner
from lance_assets.errors import LanceAssetsError
from tests.support import factory

ray = pytest.importorskip("ray")


def many_fragments(path: Path, fragments: int = 24, rows: int = 50) -> pa.Table:
    factory.appends(path, "2.1", [rows] * fragments)
    return lance.dataset(str(path)).to_table()


def referenced_files_exist(path: Path) -> None:
    ds = Dataset.open(str(path))
    for frag in ds.manifest.fragments:
        for df in frag.files:
            assert (path / ds.data_file_path(df)).exists()


def test_ray_runner_compacts_in_other_processes(tmp_path: Path, ray_cluster: None) -> None:
    path = tmp_path / "ds.lance"
    before = many_fragments(path)
    options = CompactionOptions(target_rows_per_fragment=300, max_rows_per_file=300)
    plan = plan_compaction(str(path), options)
    assert len(plan.tasks) == 4
    outcome = RayRunner().run(plan, plan.tasks)
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in outcome.worker_ids)
    report = compact(str(path), options, runner=RayRunner())
    assert (report.runner, report.tasks, report.task_retries) == ("ray", 4, 0) and report.workers >= 1
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 4 and ds.to_table().equals(before)
    referenced_files_exist(path)


def _reencode_heavy(path: Path) -> pa.Table:
    """Two tasks that take a while: re-encodes of 400,000 rows each (deleted rows dropped)."""
    for i in range(4):
        ids = pa.array(range(i * 200_000, (i + 1) * 200_000), pa.int64())
        factory.write(pa.table({"id": ids, "s": pa.compute.cast(ids, pa.string())}), path, "2.1")
    ds = lance.dataset(str(path))
    ds.delete("id % 5 = 0")
    return lance.dataset(str(path)).to_table()


def test_killed_ray_worker_is_retried_and_committed_once(tmp_path: Path, ray_cluster: None) -> None:
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "ds.lance"
    before = _reencode_heavy(path)
    version = lance.dataset(str(path)).version
    killed: list[int] = []

    def kill_first_task() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "ray::run_one" in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_first_task)
    killer.start()
    report = compact(
        str(path), CompactionOptions(target_rows_per_fragment=400_000, max_rows_per_file=400_000), runner=RayRunner()
    )
    killer.join()
    assert killed and report.task_retries >= 1
    assert report.committed_versions == [version + 1]
    ds = lance.dataset(str(path))
    assert ds.version == version + 1 and ds.to_table().equals(before)
    referenced_files_exist(path)


def test_ray_runner_on_s3(ray_cluster: None, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    opts = s3_endpoint.pylance_options
    uri = f"s3://{s3_endpoint.new_bucket()}/ds.lance"
    factory.appends(uri, "2.1", [40] * 6, storage_options=opts)
    before = lance.dataset(uri, storage_options=opts).to_table()
    report = compact(
        uri, CompactionOptions(target_rows_per_fragment=100, max_rows_per_file=120), storage_options=opts, runner=RayRunner()
    )
    assert report.runner == "ray" and report.tasks == 2
    ds = lance.dataset(uri, storage_options=opts)
    assert len(ds.get_fragments()) == 2 and ds.to_table().equals(before)


def test_process_runner(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    before = many_fragments(path)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=300, max_rows_per_file=300), runner=ProcessRunner(2))
    assert report.runner == "processes" and report.tasks == 4 and 1 <= report.workers <= 2
    assert lance.dataset(str(path)).to_table().equals(before)


def test_dask_runner_on_a_local_cluster(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    path = tmp_path / "ds.lance"
    before = many_fragments(path)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        report = compact(
            str(path), CompactionOptions(target_rows_per_fragment=300, max_rows_per_file=300), runner=DaskRunner(client)
        )
    assert report.runner == "dask" and report.tasks == 4 and report.workers >= 1
    assert lance.dataset(str(path)).to_table().equals(before)


def test_task_error_on_a_worker_is_raised_and_nothing_committed(tmp_path: Path, ray_cluster: None) -> None:
    path = tmp_path / "ds.lance"
    many_fragments(path, 6)
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=1000))
    (path / Dataset.open(str(path)).data_file_path(Dataset.open(str(path)).manifest.fragments[2].files[0])).unlink()
    from lance_assets.engine.compaction import run_plan

    with pytest.raises(LanceAssetsError):
        run_plan(plan, runner=RayRunner())
    assert lance.dataset(str(path)).version == plan.read_version
    assert sorted(p.name for p in (path / "data").iterdir()) == sorted(
        Path(Dataset.open(str(path)).data_file_path(f.files[0])).name
        for f in Dataset.open(str(path)).manifest.fragments
        if f.id != 2
    )


def test_cli_runner_without_ray_names_the_extra(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    many_fragments(path, 4)
    code = "import sys; sys.modules['ray'] = None; from lance_assets.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run(
        [sys.executable, "-c", code, "compact", str(path), "--runner", "ray"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "lance_assets[ray]" in out.stderr
    assert lance.dataset(str(path)).version == 4
