"""Datasets whose data files have different versions (pylance's ``compact_files(
data_storage_version=...)`` on part of a dataset sets the paired mixed-versions flag)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import lance
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.format import manifest as mf
from tests.support import factory


def _mixed(path: Path) -> None:
    """2.1 dataset of six 10-row fragments; pylance rewrites 0-3 as two 2.2 fragments (6, 7)."""
    factory.appends(path, "2.1", [10] * 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.compact_files(
            target_rows_per_fragment=20, data_storage_version="2.2", excluded_fragment_ids=[4, 5]
        )
    ds = Dataset.open(str(path))
    assert [(f.id, mf.data_file_version(f.files[0])) for f in ds.fragments] == [
        (4, (2, 1)),
        (5, (2, 1)),
        (6, (2, 2)),
        (7, (2, 2)),
    ]
    assert ds.manifest.reader_feature_flags & mf.FLAG_MIXED_FILE_VERSIONS


def test_inspect_reads_a_mixed_version_dataset(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    _mixed(path)
    out = subprocess.run(
        [sys.executable, "-m", "lance_assets.cli", "inspect", str(path), "--json"], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)
    assert [f["file_version"] for f in report["fragments"]] == ["2.1", "2.1", "2.2", "2.2"]
    assert "mixed_data_file_versions" in report["reader_feature_flags"]


@pytest.mark.parametrize("dry_run", [True, False])
def test_compaction_merges_within_each_file_version(tmp_path: Path, dry_run: bool) -> None:
    path = tmp_path / "ds.lance"
    _mixed(path)
    before = lance.dataset(str(path)).to_table().to_pylist()
    report = compact(str(path), CompactionOptions(dry_run=dry_run))
    assert report.tasks == 2 and report.fragments_removed == 4 and report.fragments_added == 2
    if dry_run:
        assert [list(t["fragment_ids"]) for t in report.plan["tasks"]] == [[4, 5], [6, 7]]
        return
    ds = Dataset.open(str(path))
    assert [(f.physical_rows, mf.data_file_version(f.files[0])) for f in ds.fragments] == [(20, (2, 1)), (40, (2, 2))]
    assert ds.manifest.reader_feature_flags & ds.manifest.writer_feature_flags & mf.FLAG_MIXED_FILE_VERSIONS  # still mixed
    got = lance.dataset(str(path)).to_table().to_pylist()
    assert sorted(got, key=lambda r: r["id"]) == sorted(before, key=lambda r: r["id"])
    assert [r["id"] for r in got] == list(range(40, 60)) + list(range(0, 40))  # Lance's order: new fragments by task
    lance.dataset(str(path)).delete("id = 3")  # pylance keeps writing to it
    assert lance.dataset(str(path)).count_rows() == 59
