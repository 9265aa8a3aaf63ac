"""Partial progress: committing groups as they finish, and resuming after a kill."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import lance

from lance_assets.engine.compaction import compact
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from tests.support import factory


def _rows(path: Path) -> list[dict]:
    return sorted(lance.dataset(str(path)).to_table().to_pylist(), key=lambda r: r["id"])


def _dataset(path: Path, groups: int) -> list[int]:
    """``groups`` runs of small fragments separated by large ones: one task per run."""
    sizes = []
    for _ in range(groups):
        sizes += [50, 50, 50, 300]
    factory.appends(path, "2.1", sizes)
    return sizes


def test_commit_every_commits_each_group(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    _dataset(path, 4)
    before = _rows(path)
    start = lance.dataset(str(path)).version
    options = CompactionOptions(target_rows_per_fragment=200, commit_every=1)
    assert len(plan_compaction(str(path), options).tasks) == 4
    report = compact(str(path), options)
    assert report.committed_versions == [start + 1, start + 2, start + 3, start + 4]
    assert report.version == start + 4 and report.tasks == 4
    assert report.fragments_removed == 12 and report.fragments_added == 4
    assert _rows(path) == before
    # every intermediate version is a valid dataset holding the same rows
    for v in report.committed_versions:
        assert sorted(lance.dataset(str(path), version=v).to_table().to_pylist(), key=lambda r: r["id"]) == before


def test_commit_every_two_matches_one_commit(tmp_path: Path) -> None:
    a, b = tmp_path / "a.lance", tmp_path / "b.lance"
    _dataset(a, 3)
    _dataset(b, 3)
    ra = compact(str(a), CompactionOptions(target_rows_per_fragment=200, commit_every=2))
    rb = compact(str(b), CompactionOptions(target_rows_per_fragment=200))
    assert len(ra.committed_versions) == 2 and len(rb.committed_versions) == 1
    assert (ra.fragments_removed, ra.fragments_added, ra.rows) == (rb.fragments_removed, rb.fragments_added, rb.rows)
    assert [r["id"] for r in lance.dataset(str(a)).to_table().to_pylist()] == [
        r["id"] for r in lance.dataset(str(b)).to_table().to_pylist()
    ]


def _compact_and_die_after_first_commit(path: str) -> None:
    """Commit the first group, then die (SIGKILL) while the second is being committed."""
    import lance_assets.engine.committing.commit as commit_mod

    original = commit_mod.commit_compaction
    calls = {"n": 0}

    def commit_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    import lance_assets.engine.compaction as compaction_mod

    compaction_mod.commit_compaction = commit_then_die
    compaction_mod.compact(path, CompactionOptions(target_rows_per_fragment=200, commit_every=1))


def test_killed_run_keeps_finished_groups_and_next_run_finishes(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    _dataset(path, 3)
    before = _rows(path)
    start = lance.dataset(str(path)).version
    proc = multiprocessing.get_context("spawn").Process(target=_compact_and_die_after_first_commit, args=(str(path),))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    ds = lance.dataset(str(path))
    assert ds.version == start + 1  # the first group landed, the rest did not
    assert _rows(path) == before
    remaining = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=200))
    assert len(remaining.tasks) == 2  # only the unfinished groups are planned again
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=200, commit_every=1))
    assert report.tasks == 2
    assert _rows(path) == before
    assert len(lance.dataset(str(path)).get_fragments()) == 6  # 3 merged + 3 large


def test_a_failure_after_a_landed_commit_is_reported_not_raised(tmp_path: Path) -> None:
    """The second group's commit loses to a concurrent delete of one of its fragments: the first
    group's version landed, so the run returns its report (the CLI exits 0 with it) and lists
    what was left uncommitted instead of raising."""
    path = tmp_path / "ds.lance"
    _dataset(path, 3)
    start = lance.dataset(str(path)).version
    options = CompactionOptions(target_rows_per_fragment=200, commit_every=1)
    plan = plan_compaction(str(path), options)
    second = plan.tasks[1].fragment_ids

    def on_task_done(result) -> None:  # type: ignore[no-untyped-def]
        if result.task_id == 1:  # group 0 committed, group 1 copied, not yet committed
            lance.dataset(str(path)).delete(f"id = {sum(_dataset_sizes(3)[: second[0]])}")

    report = compact(str(path), options, on_task_done=on_task_done)
    assert report.committed_versions == [start + 1] and report.version == start + 1
    left = {s.fragment_id: s for s in report.skipped if s.reason == "not_committed"}
    assert sorted(left) == sorted(second + plan.tasks[2].fragment_ids)
    assert "CommitConflictError" in left[second[0]].detail
    assert lance.dataset(str(path)).version == start + 2  # ours, then the concurrent delete


def _dataset_sizes(groups: int) -> list[int]:
    return [50, 50, 50, 300] * groups
