"""``lance-assets inspect``: tables, JSON that matches pylance, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lance
import pytest

from lance_assets.cli import main
from lance_assets.format import manifest as mf
from tests.support.assertions import assert_one_error_line
from tests.support.cli import COMMAND


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    """Table output may wrap at the console width; compare with whitespace collapsed."""
    return " ".join(text.split())


def pylance_fragments(path: Path | str, version: int | None = None) -> list[dict[str, Any]]:
    ds = lance.dataset(str(path), version=version)
    out = []
    for frag in ds.get_fragments():
        meta = frag.metadata
        out.append(
            {
                "id": frag.fragment_id,
                "physical_rows": meta.physical_rows,
                "deleted_rows": meta.num_deletions,
                "files": len(meta.files),
                "bytes": sum(os.path.getsize(Path(path) / "data" / df.path) for df in meta.files),
            }
        )
    return out


# --- table output ------------------------------------------------------------------------------
def test_table_output(dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_cache("appends", "2.1")  # fragments of 100, 1, 250 and 30 rows
    code, out, err = run(capsys, "inspect", str(path), "--target-rows-per-fragment", "100")
    assert code == 0 and err == ""
    text = flat(out)
    assert "version 4" in text and "storage 2.1" in text
    assert "fragments (4)" in text
    assert "in 4 fragments" in text
    assert "2 fragments under 100 rows" in text  # 1 and 30 rows; 100 is not under 100
    assert "rows 381 (+0 deleted)" in text
    for name in ("id", "value", "name"):
        assert f" {name} " in text


SMALL_COUNTS = [  # the sentence in the text output, in agreement (no "1 fragments", "1 rows")
    ("1", 0, "0 fragments under 1 row"),
    ("2", 1, "1 fragment under 2 rows"),
    ("100", 2, "2 fragments under 100 rows"),
    ("101", 3, "3 fragments under 101 rows"),
    ("251", 4, "4 fragments under 251 rows"),
]


@pytest.mark.parametrize(("target", "small", "sentence"), SMALL_COUNTS)
def test_target_rows_changes_small_count(
    dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str], target: str, small: int, sentence: str
) -> None:
    path = str(dataset_cache("appends", "2.2"))
    code, out, _ = run(capsys, "inspect", path, "--target-rows-per-fragment", target)
    assert code == 0
    assert sentence in flat(out)
    code, out, _ = run(capsys, "inspect", path, "--json", "--target-rows-per-fragment", target)
    summary = json.loads(out)["summary"]
    assert summary["small_fragments"] == small
    assert summary["target_rows_per_fragment"] == int(target)


def test_table_output_with_deletions_and_indices(
    dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "inspect", str(dataset_cache("deletes_arrow", "2.0")))
    assert code == 0
    assert "rows 896 (+4 deleted)" in flat(out)
    code, out, _ = run(capsys, "inspect", str(dataset_cache("scalar_index", "2.1")))
    assert code == 0
    assert "id_idx" in out


def test_max_fragments_truncates_the_table(dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(dataset_cache("appends", "2.1")), "--max-fragments", "1")
    assert code == 0
    assert "3 more" in flat(out)


# --- JSON output -------------------------------------------------------------------------------
SHAPES = [
    ("appends", "2.1"),
    ("deletes_arrow", "2.2"),
    ("deletes_bitmap", "legacy"),
    ("multi_file", "2.0"),
    ("stable_row_ids", "2.3"),
    ("scalar_index", "2.2"),
]


@pytest.mark.parametrize(("shape", "version"), SHAPES, ids=[f"{s}-{v}" for s, v in SHAPES])
def test_json_matches_pylance(
    dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str], shape: str, version: str
) -> None:
    path = dataset_cache(shape, version)
    code, out, err = run(capsys, "inspect", str(path), "--json")
    assert code == 0 and err == ""
    assert len(out.strip().splitlines()) == 1, "--json prints exactly one line"
    report = json.loads(out)
    assert isinstance(report, dict)
    ds = lance.dataset(str(path))
    assert report["version"] == ds.version
    assert report["storage_version"] == ("legacy" if ds.data_storage_version in ("0.1", "legacy") else ds.data_storage_version)
    assert report["stable_row_ids"] == ds.has_stable_row_ids
    got = [{k: f[k] for k in ("id", "physical_rows", "deleted_rows", "files", "bytes")} for f in report["fragments"]]
    assert got == pylance_fragments(path)
    assert [f["has_deletion_file"] for f in report["fragments"]] == [
        f.metadata.deletion_file is not None for f in ds.get_fragments()
    ]
    summary = report["summary"]
    assert summary["fragments"] == len(ds.get_fragments())
    assert summary["rows"] == ds.count_rows()
    assert summary["bytes"] == sum(f["bytes"] for f in got)
    assert sum(summary["histogram"].values()) == summary["fragments"]
    assert [i["name"] for i in report["indices"]] == [d.name for d in ds.describe_indices()]
    assert [f["name"] for f in report["schema"] if f["parent_id"] == -1] == ds.schema.names


def test_json_older_version(dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset_cache("deletes_arrow", "2.1")
    for v in (1, 2, 3, 4):
        code, out, _ = run(capsys, "inspect", str(path), "--json", "--version", str(v))
        assert code == 0
        report = json.loads(out)
        assert report["version"] == v
        got = [{k: f[k] for k in ("id", "physical_rows", "deleted_rows", "files", "bytes")} for f in report["fragments"]]
        assert got == pylance_fragments(path, v)


def test_table_older_version(dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(dataset_cache("appends", "2.0")), "--version", "2")
    assert code == 0
    assert "version 2" in flat(out) and "fragments (2)" in flat(out)


# --- errors ------------------------------------------------------------------------------------
def _corrupt(path: Path) -> Path:
    target = path / "_versions" / mf.manifest_name(lance.dataset(str(path)).version, mf.NamingScheme.V2)
    target.write_bytes(target.read_bytes()[:-7])
    return path


def _unknown_flag(path: Path) -> Path:
    target = path / "_versions" / mf.manifest_name(lance.dataset(str(path)).version, mf.NamingScheme.V2)
    parsed = mf.parse_manifest_file(target.read_bytes())
    parsed.manifest.reader_feature_flags |= 1 << 20
    target.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))
    return path


BAD: dict[str, Callable[[Path, Callable[[str, str], Path]], Path]] = {
    "not_a_dataset": lambda tmp, copy: tmp,
    "missing_path": lambda tmp, copy: tmp / "nope" / "x.lance",
    "corrupt_manifest": lambda tmp, copy: _corrupt(copy("appends", "2.1")),
    "unknown_flag": lambda tmp, copy: _unknown_flag(copy("appends", "2.1")),
    "bracket_path": lambda tmp, copy: tmp / "x[/bold]y[red]",  # rich markup in a path must not break the line
    "long_path": lambda tmp, copy: tmp / ("very-long-directory-name-" * 8),  # must not wrap at 80 columns
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_bad_input_prints_one_error_line(
    tmp_path: Path, dataset_copy: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str], kind: str, as_json: bool
) -> None:
    path = BAD[kind](tmp_path, dataset_copy)
    code, out, err = run(capsys, "inspect", str(path), *(["--json"] if as_json else []))
    assert_one_error_line(code, out, err)
    if kind == "unknown_flag":
        assert "bit_1048576" in err
    if kind in ("bracket_path", "long_path"):
        assert str(path) in err


def test_missing_version_is_an_error(dataset_cache: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", str(dataset_cache("appends", "2.1")), "--version", "77")
    assert_one_error_line(code, out, err)
    assert "77" in err


# --- the installed console script ------------------------------------------------------------
def _command() -> list[str]:
    return COMMAND


def test_console_script(dataset_cache: Callable[[str, str], Path], tmp_path: Path) -> None:
    path = dataset_cache("deletes_bitmap", "2.2")
    env = {**os.environ, "COLUMNS": "80"}
    ok = subprocess.run([*_command(), "inspect", str(path), "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    got = [{k: f[k] for k in ("id", "physical_rows", "deleted_rows", "files", "bytes")} for f in report["fragments"]]
    assert got == pylance_fragments(path)

    table = subprocess.run(
        [*_command(), "inspect", str(path), "--target-rows-per-fragment", "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert table.returncode == 0, table.stderr
    assert "2 fragments under 1,000 rows" in flat(table.stdout)

    bad = subprocess.run(
        [*_command(), "inspect", str(tmp_path / ("not-a-dataset-" * 10))], capture_output=True, text=True, timeout=120, env=env
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("error: "), bad.stderr
    assert "Traceback" not in bad.stderr
