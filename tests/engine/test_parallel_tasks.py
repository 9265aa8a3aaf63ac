"""``max_workers``: tasks copied on a thread pool commit exactly what a sequential run commits.

Results come back in plan order (so new fragment ids are assigned as in a sequential
run), and a failing task removes every file the finished tasks wrote before the error
propagates: nothing is committed. pylance judges the data.
"""

from __future__ import annotations

import gc
import shutil
import threading
from pathlib import Path

import lance
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.engine.report import RewriteResult
from lance_assets.errors import MissingFileError
from tests.support import factory

SIZES = [100] * 12
OPTIONS = CompactionOptions(target_rows_per_fragment=300)  # four tasks of three fragments


@pytest.fixture(scope="module", params=["2.0", "2.1"])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / f"ds-{request.param}.lance"
    factory.appends(path, request.param, SIZES, make=lambda s, n: factory.mixed_table(s, n, request.param))
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rows(path: Path) -> list[dict]:
    """Every row as Python values, in scan order (dictionary columns compare by value)."""
    return lance.dataset(str(path)).to_table().to_pylist()


def _fragments(path: Path) -> list[tuple[int, int]]:
    return [(f.fragment_id, f.count_rows()) for f in lance.dataset(str(path)).get_fragments()]


def test_parallel_run_commits_what_a_sequential_run_commits(source: Path, tmp_path: Path) -> None:
    sequential = _copy(source, tmp_path / "sequential.lance")
    parallel = _copy(source, tmp_path / "parallel.lance")
    threads: set[str] = set()
    done: list[int] = []

    def on_done(result: RewriteResult) -> None:
        threads.add(threading.current_thread().name)
        done.append(result.task_id)

    seq_report = compact(str(sequential), OPTIONS)
    par_report = compact(str(parallel), OPTIONS, max_workers=3, on_task_done=on_done)

    assert par_report.tasks == seq_report.tasks == 4
    assert done == [0, 1, 2, 3]  # reported in plan order
    assert _fragments(parallel) == _fragments(sequential)
    assert len(_fragments(parallel)) == 4
    expected = _rows(source)
    assert _rows(parallel) == expected
    assert _rows(sequential) == expected


def test_a_failing_task_leaves_nothing_behind(source: Path, tmp_path: Path) -> None:
    """Task 2's input file is gone: it fails, the others finish, and what they wrote is removed."""
    work = _copy(source, tmp_path / "work.lance")
    before_version = lance.dataset(str(work)).version
    plan = plan_compaction(str(work), OPTIONS)
    ds = Dataset.open(str(work))
    victim = next(f for f in ds.manifest.fragments if f.id == plan.tasks[2].fragment_ids[1])
    (work / ds.data_file_path(victim.files[0])).unlink()
    before_files = sorted(p.name for p in (work / "data").iterdir())
    with pytest.raises(MissingFileError):
        compact(str(work), OPTIONS, max_workers=2)
    assert sorted(p.name for p in (work / "data").iterdir()) == before_files
    assert lance.dataset(str(work)).version == before_version


def test_max_workers_must_be_positive(source: Path, tmp_path: Path) -> None:
    work = _copy(source, tmp_path / "work.lance")
    with pytest.raises(ValueError, match="max_workers"):
        compact(str(work), OPTIONS, max_workers=0)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_cycle_collector_pauses_while_tasks_copy_and_comes_back_as_it_was(
    source: Path, tmp_path: Path, enabled: bool
) -> None:
    """Copying pauses Python's cycle collector (a full pass walks every object of the process)
    and leaves it as it found it, also when tasks overlap on threads."""
    seen: list[bool] = []
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        compact(str(_copy(source, tmp_path / "ds")), OPTIONS, max_workers=3, progress=lambda n: seen.append(gc.isenabled()))
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert seen and not any(seen)
