"""The engine tells operators through ``logging`` what the JSON report says, and nothing by default.

Checked on real pylance datasets: the planner's one-line summary at INFO (per-fragment detail
at DEBUG), a commit race lost to a real other writer (pylance appending at the moment our
manifest is created) logged as a retry, and cleanup's summary.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import lance
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.maintenance.cleanup import cleanup
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.io import local
from tests.support import factory

# four small fragments (one group), one at the target size, one small one with no small neighbour
SIZES = [100, 100, 100, 100, 5000, 100]
OPTIONS = CompactionOptions(target_rows_per_fragment=1000)


def _messages(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


def test_compaction_logs_the_plan_summary_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", SIZES)
    plan = plan_compaction(str(path), OPTIONS)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lance_assets"):
        report = compact(str(path), OPTIONS)
    (summary,) = _messages(caplog, "lance_assets.engine.planning.plan", logging.INFO)
    assert f"at version {plan.read_version}:" in summary
    assert "6 fragments considered, 1 groups formed from 4 fragments" in summary
    assert f"{plan.bytes_to_read} bytes to read" in summary
    assert "2 left alone (at_target_size: 1, no_neighbour: 1)" in summary
    assert not [r for r in caplog.records if r.levelno < logging.INFO]  # per-fragment detail only at DEBUG
    done = _messages(caplog, "lance_assets.engine.compaction", logging.INFO)[-1]
    assert f"committed version(s) [{report.version}]" in done
    assert f"{report.fragments_removed} fragments removed, {report.fragments_added} added" in done
    assert report.fragments_removed == 4 and lance.dataset(str(path)).count_rows() == sum(SIZES)


def test_plan_detail_at_debug_names_every_fragment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", SIZES)
    with caplog.at_level(logging.DEBUG, logger="lance_assets.engine.planning.plan"):
        plan = plan_compaction(str(path), OPTIONS)
    debug = _messages(caplog, "lance_assets.engine.planning.plan", logging.DEBUG)
    (task,) = plan.tasks
    assert f"group 0: fragments {list(task.fragment_ids)} -> {len(task.outputs)} file(s)" in debug[0]
    assert debug[0].endswith("by binary copy")
    skipped = {s.fragment_id: s.reason.value for s in plan.skipped}
    assert skipped == {4: "at_target_size", 5: "no_neighbour"}
    for fid, reason in skipped.items():
        assert any(m.startswith(f"fragment {fid} left alone: {reason}") for m in debug), (fid, debug)


def test_a_lost_commit_race_is_logged_as_a_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pylance appends a version the moment our manifest is about to be created: a real race."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", SIZES)
    real = local.create_exclusive
    raced: list[int] = []

    def create_after_another_writer(target: str, data: bytes) -> None:
        if target.endswith(".manifest") and not raced:
            other = factory.write(factory.simple_table(sum(SIZES), 50), path, "2.1", mode="append")
            raced.append(other.version)
        real(target, data)

    monkeypatch.setattr(local, "create_exclusive", create_after_another_writer)
    with caplog.at_level(logging.INFO, logger="lance_assets"):
        report = compact(str(path), OPTIONS)
    assert raced and report.retries == 1
    (retry,) = _messages(caplog, "lance_assets.engine.committing.commit_loop", logging.INFO)
    assert re.search(rf"version {raced[0]} was committed by another writer; .*commit retry 1 of \d+", retry), retry
    assert report.version == raced[0] + 1
    ds = lance.dataset(str(path))
    assert sorted(ds.to_table()["id"].to_pylist()) == list(range(sum(SIZES) + 50))
    assert ds.validate() is None


def test_cleanup_logs_its_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", SIZES)
    compact(str(path), OPTIONS)
    with caplog.at_level(logging.DEBUG, logger="lance_assets.engine.maintenance.cleanup"):
        report = cleanup(str(path), older_than=timedelta(seconds=0))
    (summary,) = _messages(caplog, "lance_assets.engine.maintenance.cleanup", logging.INFO)
    removed = f"{len(report.removed_versions)} version(s) and {len(report.files)} file(s) ({report.bytes} bytes) removed"
    assert removed in summary and report.files
    per_file = _messages(caplog, "lance_assets.engine.maintenance.cleanup", logging.DEBUG)
    assert sorted(per_file) == sorted(
        f"cleanup {report.uri}: {f.kind} {f.path} ({f.bytes} bytes, {f.age_seconds:.0f} s old) removed" for f in report.files
    )
    assert lance.dataset(str(path)).count_rows() == sum(SIZES)


def test_nothing_is_printed_unless_the_application_configures_logging(tmp_path: Path) -> None:
    """A library adds no handler of its own (only a NullHandler at the package root): even a
    warning stays silent where the application set nothing up."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", SIZES)
    code = (
        "import logging, sys\n"
        "from lance_assets import CompactionOptions, compact\n"
        f"compact({str(path)!r}, CompactionOptions(target_rows_per_fragment=1000))\n"
        "logging.getLogger('lance_assets.engine.committing.commit_loop').warning('a warning nobody asked to see')\n"
        "logging.getLogger('elsewhere').warning('shown')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stderr.strip() == "shown"  # Python's last-resort handler prints other loggers' warnings
