"""``lance-assets compact``: one JSON object, dry runs that touch nothing, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import lance
import pytest

from lance_assets.cli import _storage_options, main
from tests.engine.test_compaction import REPORT_KEYS
from tests.support.assertions import assert_one_error_line, tree_digest

Copy = Callable[[str, str], Path]
SCRIPT = Path(sys.executable).parent / "lance-assets"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_json(out: str) -> dict[str, Any]:
    lines = out.splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {out!r}"
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    assert data.keys() >= REPORT_KEYS
    return data


def assert_usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """argparse-level refusals: exit 2, one ``error:`` line after the usage, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert out == ""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


# --- JSON ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.0", "2.2"])
def test_compact_json(dataset_copy: Copy, capsys: pytest.CaptureFixture[str], version: str) -> None:
    path = dataset_copy("appends", version)  # 100, 1, 250, 30 rows
    before = lance.dataset(str(path))
    want = before.to_table().to_pylist()
    code, out, err = run(capsys, "compact", str(path), "--json")
    assert code == 0 and err == ""
    report = one_json(out)
    assert report["read_version"] == before.version
    assert report["version"] == before.version + 1
    assert report["fragments_removed"] == 4 and report["fragments_added"] == 1
    assert report["files_removed"] == 4 and report["files_added"] == 1
    assert report["rows"] == 381 and report["tasks"] == 1
    assert report["skipped"] == [] and report["dry_run"] is False
    after = lance.dataset(str(path))
    assert after.version == report["version"]
    assert len(after.get_fragments()) == 1
    assert report["bytes_written"] == (path / "data" / after.get_fragments()[0].metadata.files[0].path).stat().st_size
    assert after.to_table().to_pylist() == want


def test_compact_json_subprocess(dataset_copy: Copy) -> None:
    path = dataset_copy("multi_file", "2.1")
    want = lance.dataset(str(path)).to_table().to_pylist()
    proc = subprocess.run([str(SCRIPT), "compact", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = one_json(proc.stdout)
    assert report["fragments_removed"] == 3
    assert report["files_removed"] == 6  # two data files per fragment after add_columns
    assert report["files_added"] == 1
    assert lance.dataset(str(path)).to_table().to_pylist() == want


def test_options_reach_the_plan(dataset_copy: Copy, capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_copy("appends", "2.1")
    code, out, _ = run(
        capsys,
        "compact",
        str(path),
        "--json",
        "--dry-run",
        "--target-rows-per-fragment",
        "200",
        "--max-rows-per-file",
        "1000",
        "--max-bytes-per-file",
        "1000000",
        "--read-batch-bytes",
        "4096",
        "--max-source-fragments",
        "10",
        "--exclude",
        "3",
        "--exclude",
        "7",
        "--no-materialize-deletions",
        "--materialize-deletions-threshold",
        "0.25",
        "--commit-every",
        "3",
        "--no-reencode-fallback",
        "--no-verify-output",
        "--index-remap",
        "drop",
        "--pages",
        "copy",
        "--max-concurrent-requests",
        "5",
        "--task-processes",
        "1",
    )
    assert code == 0
    report = one_json(out)
    options = report["plan"]["options"]
    assert options == {
        "target_rows_per_fragment": 200,
        "max_rows_per_file": 1000,
        "max_bytes_per_file": 1000000,
        "read_batch_bytes": 4096,
        "max_source_fragments": 10,
        "excluded_fragment_ids": [3, 7],
        "dry_run": True,
        "materialize_deletions": False,
        "materialize_deletions_threshold": 0.25,
        "commit_every": 3,
        "reencode_fallback": False,
        "verify_output": False,
        "index_remap": "drop",
        "pages": "copy",
        "max_concurrent_requests": 5,
        "task_processes": 1,
    }
    # 100, 1 merge; 250 is at the target; 30 is excluded
    assert [t["fragment_ids"] for t in report["plan"]["tasks"]] == [[0, 1]]
    assert {s["fragment_id"]: s["reason"] for s in report["skipped"]} == {2: "at_target_size", 3: "excluded"}


# --- dry run and nothing to do ---------------------------------------------------------------------------
@pytest.mark.parametrize("json_flag", [True, False])
def test_dry_run_commits_nothing(dataset_copy: Copy, capsys: pytest.CaptureFixture[str], json_flag: bool) -> None:
    path = dataset_copy("appends", "2.1")
    digest = tree_digest(path)
    code, out, err = run(capsys, "compact", str(path), "--dry-run", *(["--json"] if json_flag else []))
    assert code == 0 and err == ""
    assert tree_digest(path) == digest
    if json_flag:
        report = one_json(out)
        assert report["dry_run"] is True and report["version"] is None
        assert report["read_version"] == lance.dataset(str(path)).version
        assert report["fragments_removed"] == 4 and report["fragments_added"] == 1 and report["tasks"] == 1
        assert [t["fragment_ids"] for t in report["plan"]["tasks"]] == [[0, 1, 2, 3]]
    else:
        assert "dry run" in out and "4 fragments into 1" in " ".join(out.split())


def test_dry_run_reports_the_files_a_real_run_would_touch(dataset_copy: Copy, capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_copy("multi_file", "2.1")
    _, out, _ = run(capsys, "compact", str(path), "--dry-run", "--json")
    dry = one_json(out)
    _, out, _ = run(capsys, "compact", str(path), "--json")
    real = one_json(out)
    assert (dry["files_removed"], dry["files_added"]) == (real["files_removed"], real["files_added"]) == (6, 1)


@pytest.mark.parametrize("json_flag", [True, False])
def test_nothing_to_do_exits_zero(dataset_copy: Copy, capsys: pytest.CaptureFixture[str], json_flag: bool) -> None:
    path = dataset_copy("deletes_arrow", "2.1")  # every fragment at the target: nothing to merge
    digest = tree_digest(path)
    code, out, err = run(capsys, "compact", str(path), "--target-rows-per-fragment", "10", *(["--json"] if json_flag else []))
    assert code == 0 and err == ""
    assert tree_digest(path) == digest
    if json_flag:
        report = one_json(out)
        assert report["version"] is None and report["tasks"] == 0
        assert sorted(s["reason"] for s in report["skipped"]) == ["at_target_size"] * 3
    else:
        text = " ".join(out.split())
        assert "nothing to compact" in text
        assert "at_target_size: 3" in text


def test_table_output_of_a_real_run(dataset_copy: Copy, capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_copy("appends", "2.3")
    version = lance.dataset(str(path)).version
    code, out, err = run(capsys, "compact", str(path))
    assert code == 0 and err == ""
    text = " ".join(out.split())
    assert f"committed version {version + 1}" in text and "4 fragments -> 1" in text
    assert lance.dataset(str(path)).version == version + 1


# --- bad input ---------------------------------------------------------------------------------------------------
def test_not_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_error_line(*run(capsys, "compact", str(tmp_path / ("deep" * 20) / "missing.lance"), "--json"))


def test_missing_data_file_is_one_error_line(dataset_copy: Copy, capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_copy("appends", "2.1")
    victim = lance.dataset(str(path)).get_fragments()[2].metadata.files[0].path
    (path / "data" / victim).unlink()
    digest = tree_digest(path)
    code, out, err = run(capsys, "compact", str(path))
    assert_one_error_line(code, out, err)
    assert victim in err
    assert tree_digest(path) == digest


def test_corrupt_data_file_subprocess(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.2")
    victim = path / "data" / lance.dataset(str(path)).get_fragments()[0].metadata.files[0].path
    victim.write_bytes(victim.read_bytes()[:-4] + b"XXXX")
    digest = tree_digest(path)
    proc = subprocess.run([str(SCRIPT), "compact", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert tree_digest(path) == digest


@pytest.mark.parametrize(
    "argv",
    [
        ["--target-rows-per-fragment", "0"],
        ["--max-rows-per-file", "-5"],
        ["--max-bytes-per-file", "0"],
        ["--read-batch-bytes", "0"],
        ["--max-source-fragments", "0"],
        ["--target-rows-per-fragment", "many"],
        ["--exclude", "x"],
        ["--storage-option", "novalue"],
        ["--storage-option", "=value"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_options_are_usage_errors(dataset_copy: Copy, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    path = dataset_copy("appends", "2.1")
    digest = tree_digest(path)
    assert_usage_error(capsys, "compact", str(path), *argv)
    assert tree_digest(path) == digest


# --- storage options ---------------------------------------------------------------------------------------------
def test_storage_option_parsing() -> None:
    assert _storage_options([]) == {}
    assert _storage_options(["a=1", "b=true", "c=plain", 'd={"k": [1, 2]}', "e=x=y", "f=", "g=null", "h=1.5"]) == {
        "a": 1,
        "b": True,
        "c": "plain",
        "d": {"k": [1, 2]},
        "e": "x=y",
        "f": "",
        "g": None,
        "h": 1.5,
    }
    assert _storage_options(["k=1", "k=2"]) == {"k": 2}  # the last one wins


def test_storage_options_reach_the_filesystem(
    dataset_copy: Copy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parsed options are handed to fsspec unchanged (a spy around the real call)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    real = fsspec.core.url_to_fs

    def spy(url: str, **kwargs: Any) -> Any:
        seen.append((url, kwargs))
        return real(url, **kwargs)

    monkeypatch.setattr(fsspec.core, "url_to_fs", spy)
    path = dataset_copy("appends", "2.1")
    code, out, _ = run(
        capsys,
        "compact",
        str(path),
        "--json",
        "--storage-option",
        "auto_mkdir=true",
        "--storage-option",
        "use_listings_cache=false",
    )
    assert code == 0
    assert one_json(out)["version"] == lance.dataset(str(path)).version
    # every filesystem opened for the dataset (not the local scratch folder small pages are
    # re-encoded in) gets them
    ours = [kw for url, kw in seen if url.startswith(str(path))]
    assert ours and all(kw == {"auto_mkdir": True, "use_listings_cache": False} for kw in ours)
