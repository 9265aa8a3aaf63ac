"""A compacting process SIGKILLed at any instant leaves a readable dataset equal to the old or the new version.

Named kill points (while copying, after the data files, after the transaction
file, with the manifest staged but not linked, right after the link, halfway
through the hint file) are hit exactly by wrapping the storage primitive that
marks them; random kill points SIGKILL the process from outside at a random
time during the compaction. After each kill pylance reads the dataset, a new
compaction and a pylance append succeed, and ``cleanup`` removes exactly the
orphans the killed process left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.cleanup import cleanup
from lance_assets.engine.options import CompactionOptions
from tests.support import factory, writers

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]  # on PYTHONPATH: children import tests.support.writers
SIZES = [3000] * 8  # ~0.5 MB per data file: larger than the metadata tail read, so pages go through copy_range


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "ds.lance"
    factory.appends(path, "2.1", SIZES, make=lambda s, n: factory.mixed_table(s, n, "2.1"))
    return path


def _child(uri: Path, point: str, throttle: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = f"from tests.support import writers; writers.compact_and_die({str(uri)!r}, {point!r}, 100_000, 1 << 20, {throttle})"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _sorted(t: pa.Table) -> list[dict]:
    return t.sort_by("id").to_pylist()  # by value: dictionary columns may differ in their dictionaries


def check_legal(uri: Path, old_version: int, expected: list[dict]) -> int:
    """The dataset is the old version or exactly one compaction later, with the same rows; returns which."""
    ds = lance.dataset(str(uri))
    assert ds.version in (old_version, old_version + 1), ds.version
    assert _sorted(ds.to_table()) == expected
    ours = Dataset.open(str(uri))
    assert ours.version == ds.version
    if ds.version == old_version + 1:
        assert ours.file.transaction is not None and ours.file.transaction.WhichOneof("operation") == "rewrite"
        assert len(ds.get_fragments()) == 1
    for v in range(1, ds.version + 1):  # the history stays readable
        assert lance.dataset(str(uri), version=v).count_rows() == sum(SIZES[:v])
    return ds.version


def recover(uri: Path, expected: list[dict]) -> None:
    """After a crash: cleanup removes only orphans; compaction and pylance appends work again."""
    report = cleanup(str(uri), older_than=timedelta(seconds=0), retain_versions=None)
    assert all(f.kind in ("data", "transaction", "staging") for f in report.files)
    on_disk = {f"data/{p.name}" for p in (uri / "data").iterdir()}
    assert on_disk == writers.referenced_files(str(uri))
    assert not [p for p in (uri / "_versions").iterdir() if ".tmp-" in p.name]
    compact(str(uri), CompactionOptions(target_rows_per_fragment=100_000))
    assert _sorted(lance.dataset(str(uri)).to_table()) == expected
    factory.write(factory.mixed_table(30_000, 5, "2.1"), uri, "2.1")
    assert lance.dataset(str(uri)).count_rows() == len(expected) + 5


@pytest.mark.parametrize("point", writers.KILL_POINTS)
def test_kill_at_a_named_point(pristine: Path, tmp_path: Path, point: str) -> None:
    import shutil

    uri = tmp_path / "ds.lance"
    shutil.copytree(pristine, uri)
    old = lance.dataset(str(uri))
    expected = _sorted(old.to_table())
    proc = _child(uri, point)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    version = check_legal(uri, old.version, expected)
    committed = point in ("manifest_committed", "hint_half_written")
    assert version == old.version + committed
    if point == "manifest_staged":
        assert [p for p in (uri / "_versions").iterdir() if ".tmp-" in p.name]  # the leftover cleanup must remove
    recover(uri, expected)


THROTTLE = 0.01  # seconds slept before each storage call: every phase lasts long enough to be hit at random


def _random_kills(pristine: Path, tmp_path: Path, kills: int, seed: int) -> dict[str, int]:
    import shutil

    rnd = random.Random(seed)
    # how long does an undisturbed compaction take (from the child's "ready" to its "done")?
    probe = tmp_path / "probe.lance"
    shutil.copytree(pristine, probe)
    proc = _child(probe, "none", throttle=THROTTLE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    assert proc.stdout.readline().strip() == "done"
    duration = time.monotonic() - t0
    proc.communicate(timeout=120)
    outcomes = {"old": 0, "new": 0, "finished": 0}
    expected = _sorted(lance.dataset(str(pristine)).to_table())
    old_version = lance.dataset(str(pristine)).version
    for i in range(kills):
        uri = tmp_path / f"kill-{i}.lance"
        shutil.copytree(pristine, uri)
        proc = _child(uri, "none", throttle=THROTTLE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0, duration * 1.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            outcomes["finished"] += 1
        version = check_legal(uri, old_version, expected)
        outcomes["new" if version > old_version else "old"] += 1
        cleanup(str(uri), older_than=timedelta(seconds=0), retain_versions=None)
        assert {f"data/{p.name}" for p in (uri / "data").iterdir()} == writers.referenced_files(str(uri))
        shutil.rmtree(uri)
    print(f"random kills over a {duration:.2f}s compaction: {outcomes}")
    return outcomes


def test_random_kills(pristine: Path, tmp_path: Path) -> None:
    outcomes = _random_kills(pristine, tmp_path, kills=6, seed=1)
    assert sum(outcomes.values()) - outcomes["finished"] == 6


@pytest.mark.slow
def test_many_random_kills(pristine: Path, tmp_path: Path) -> None:
    outcomes = _random_kills(pristine, tmp_path, kills=60, seed=2)
    assert outcomes["old"] and outcomes["new"]  # both sides of the commit instant were hit
