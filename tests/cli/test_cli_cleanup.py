"""``lance-assets cleanup`` through the console script: one name per JSON count (the earlier
names still written, deprecated, for one release), and a text listing capped like ``inspect``'s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lance
import pytest

from lance_assets.engine.maintenance.cleanup import DEPRECATED_JSON_KEYS
from tests.support import factory
from tests.support.assertions import tree_digest
from tests.support.cli import run_cli as cli


def cleanup_json(*argv: str) -> dict[str, Any]:
    proc = cli("cleanup", *argv, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    out = json.loads(proc.stdout)
    assert isinstance(out, dict)
    return out


def _bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_json_counts_and_their_deprecated_names(tmp_path: Path) -> None:
    """Pins the keys: the counts under their names, the deprecated names equal to them, and the
    version numbers under ``removed_versions`` -- all measured against the dataset on disk."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [10, 20, 30])
    want = lance.dataset(str(path)).to_table().to_pylist()
    assert cli("compact", str(path), "--json").returncode == 0  # version 4 no longer needs 1-3's files
    before = _bytes_on_disk(path)
    out = cleanup_json(str(path), "--older-than", "0s")
    assert out["versions_removed"] == 3 and out["removed_versions"] == [1, 2, 3] and out["versions_kept"] == 1
    assert out["files_removed"] == len(out["files"]) > 0
    assert out["bytes_removed"] == sum(f["bytes"] for f in out["files"]) == before - _bytes_on_disk(path)
    assert DEPRECATED_JSON_KEYS == {"removed": "files_removed", "bytes": "bytes_removed"}
    for old, new in DEPRECATED_JSON_KEYS.items():
        assert out[old] == out[new]
    assert lance.dataset(str(path)).to_table().to_pylist() == want


def test_help_names_the_deprecated_keys() -> None:
    proc = cli("cleanup", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Deprecated:" in text
    for old, new in DEPRECATED_JSON_KEYS.items():
        assert f"'{old}' (read {new})" in text


@pytest.fixture(scope="module")
def long_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 appends compacted into one fragment: retention has 59 old versions' files to list."""
    path = tmp_path_factory.mktemp("history") / "ds.lance"
    factory.appends(path, "2.1", [2] * 60)
    assert cli("compact", str(path), "--json").returncode == 0
    return path


def _listed(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("  ") and not line.startswith("  …")]


@pytest.mark.parametrize("limit", [None, "0", "7", "1000"])
def test_text_lists_a_capped_number_of_files(long_history: Path, limit: str | None) -> None:
    digest = tree_digest(long_history)
    files = [f["path"] for f in cleanup_json(str(long_history), "--older-than", "0s", "--dry-run")["files"]]
    assert len(files) > 100
    proc = cli("cleanup", str(long_history), "--older-than", "0s", "--dry-run", *(["--max-files", limit] if limit else []))
    assert proc.returncode == 0, proc.stderr
    shown = min(len(files), 50 if limit is None else int(limit))
    listed = _listed(proc.stdout)
    assert [line.split()[0] for line in listed] == files[:shown]
    more = [line for line in proc.stdout.splitlines() if line.startswith("  …")]
    if shown < len(files):
        assert more == [f"  … {len(files) - shown:,} more files (--max-files N lists more, --json lists all)"]
    else:
        assert more == []
    assert len(proc.stdout.splitlines()) <= shown + 4
    assert tree_digest(long_history) == digest


def test_negative_max_files_is_a_usage_error(long_history: Path) -> None:
    digest = tree_digest(long_history)
    proc = cli("cleanup", str(long_history), "--older-than", "0s", "--max-files", "-1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == "lance-assets cleanup: error: --max-files must not be negative, not -1"
    assert tree_digest(long_history) == digest
