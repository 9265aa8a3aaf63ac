"""Page health: pages per column in ``inspect``, and the planner healing fragments at target
size whose columns a binary copy (Lance's own here) cut into many small pages."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import pytest
from lance.file import LanceFileReader

from lance_assets import CompactionOptions, compact, inspect_dataset
from lance_assets.cli import main
from lance_assets.engine import plan_compaction
from lance_assets.engine.report import Reason
from lance_assets.format.pages import MIN_SMALL_PAGES, SMALL_PAGE_BYTES
from tests.support.factory import V2_VERSIONS, appends, simple_table, write


def _binary_copied(path: Path, version: str, appends_: int = 12, rows: int = 50) -> lance.LanceDataset:
    """``appends_`` small appends merged by pylance's own binary copy: one file, one small page
    per input in every column."""
    ds = appends(path, version, [rows] * appends_)
    ds.optimize.compact_files(compaction_mode="force_binary_copy")
    return lance.dataset(str(path))


def _pylance_pages(path: Path) -> dict[str, tuple[int, int]]:
    """Per top-level column of the first data file: (pages, pages under SMALL_PAGE_BYTES), as
    pylance's own file reader reports them (the oracle for our footer parsing)."""
    ds = lance.dataset(str(path))
    out = {}
    for frag in ds.get_fragments():
        for df in frag.data_files():
            meta = LanceFileReader(f"{path}/data/{df.path}").metadata()
            for name, column in zip(ds.schema.names, meta.columns):  # flat schema: one column each
                sizes = [sum(b.size for b in page.buffers) for page in column.pages]
                pages, small = out.get(name, (0, 0))
                out[name] = (pages + len(sizes), small + sum(1 for s in sizes if 0 < s < SMALL_PAGE_BYTES))
    return out


@pytest.mark.parametrize("version", V2_VERSIONS)
def test_inspect_counts_pages_as_pylance_does(tmp_path: Path, version: str) -> None:
    path = tmp_path / "ds.lance"
    _binary_copied(path, version)
    write(simple_table(600, 30), path, version)  # two more small fragments: 1 page per column each
    write(simple_table(630, 40), path, version)
    report = inspect_dataset(str(path), pages=True)
    expected = _pylance_pages(path)
    got = {c.name: (c.pages, c.small_pages) for c in report.columns}
    assert got == expected
    assert [c.files for c in report.columns] == [3, 3, 3]
    assert all(c.rows == 12 * 50 + 70 for c in report.columns)
    assert report.summary.pages == sum(p for p, _ in expected.values())
    assert report.summary.small_pages == sum(s for _, s in expected.values())
    assert report.summary.small_page_fragments == 1  # only the binary-copied file has many
    assert [f.pages for f in report.fragments] == [36, 3, 3]
    # without the option nothing past the manifest is read, and the keys stay (None / empty)
    cheap = inspect_dataset(str(path))
    assert cheap.columns == [] and cheap.summary.pages is None and cheap.fragments[0].pages is None


def test_inspect_cli_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ds.lance"
    _binary_copied(path, "2.1")
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["small_pages"] == 36 and data["summary"]["small_page_fragments"] == 1
    assert {c["name"]: c["pages_per_file"] for c in data["columns"]} == {"id": 12.0, "value": 12.0, "name": 12.0}
    assert data["columns"][0]["rows_per_page"] == 50.0
    assert data["fragments"][0]["small_pages"] == 36
    assert main(["inspect", str(path), "--no-pages", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["columns"] == []
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pages per column" in out and "1 fragment with columns made of small pages" in out


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_planner_heals_binary_copied_fragment(tmp_path: Path, version: str) -> None:
    """A fragment at target size made by binary copy of small appends is a candidate of its
    own (note ``small_pages``); with ``pages='copy'`` it stays at target size as before."""
    path = tmp_path / "ds.lance"
    ds = _binary_copied(path, version)
    (frag,) = ds.get_fragments()
    options = CompactionOptions(target_rows_per_fragment=100)
    plan = plan_compaction(str(path), options)
    assert [t.fragment_ids for t in plan.tasks] == [(frag.fragment_id,)]
    assert [(n.fragment_id, n.reason) for n in plan.notes] == [(frag.fragment_id, Reason.SMALL_PAGES)]
    assert "id (12 of 12)" in plan.notes[0].detail
    kept = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=100, pages="copy"))
    assert kept.tasks == () and [s.reason for s in kept.skipped] == [Reason.AT_TARGET_SIZE]


def test_planner_leaves_few_small_pages_and_fresh_writes_alone(tmp_path: Path) -> None:
    """Fewer than MIN_SMALL_PAGES small pages (or pylance's own single pages) are not healed."""
    path = tmp_path / "few.lance"
    _binary_copied(path, "2.1", appends_=MIN_SMALL_PAGES - 1)
    assert plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=100)).tasks == ()
    fresh = tmp_path / "fresh.lance"
    appends(fresh, "2.1", [5000], simple_table)
    plan = plan_compaction(str(fresh), CompactionOptions(target_rows_per_fragment=100))
    assert plan.tasks == () and [s.reason for s in plan.skipped] == [Reason.AT_TARGET_SIZE]


@pytest.mark.parametrize("version", ["2.0", "2.2"])
def test_without_pylance_the_copy_heals_small_pages_itself(tmp_path: Path, version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds.lance"
    before = _binary_copied(path, version).to_table()
    monkeypatch.setattr("lance_assets.engine.copying.coalesce.pylance_available", lambda: False)
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=100))
    assert len(plan.tasks) == 1
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=100))
    assert report.columns_coalesced_native and not report.columns_left_small
    assert all(pages == 1 for pages, _ in _pylance_pages(path).values())  # one page per column, as a fresh write
    assert lance.dataset(str(path)).to_table().equals(before)


def test_planner_says_why_small_pages_stay_without_pylance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ds.lance"
    _binary_copied(path, "2.3")  # 2.3 pages are not re-cut by the copy itself
    monkeypatch.setattr("lance_assets.engine.copying.coalesce.pylance_available", lambda: False)
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=100))
    assert plan.tasks == ()
    (skip,) = plan.skipped
    assert skip.reason == Reason.SMALL_PAGES and "needs pylance" in skip.detail
