"""Helper processes sharing one output's inputs (``engine/copying/parts.py``): the output is the
file one process writes (same rows in the same order, pages re-cut, row ids and deletions kept),
and a helper that fails or dies costs time only — its share is copied by the task itself, or a
real problem with an input raises the same typed error, leaving the dataset as it was.

The helpers are real processes (``python -m lance_assets.engine.copying.part_main``); the
thresholds that make them worth starting are lowered in most tests to keep datasets small.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets import CompactionOptions, compact
from lance_assets.engine.copying import parts
from lance_assets.errors import CorruptFileError
from tests.engine.test_coalesce_pages import stream
from tests.support import factory
from tests.support.assertions import assert_reads_every_way

SHARED = "shared out among"


def write_fragments(path: Path, version: str, fragments: int, per: int = 20, **kwargs: object) -> pa.Table:
    """``fragments`` files of ``per`` rows, as that many small appends leave them."""
    table = stream(0, fragments * per)
    factory.write(table, path, version, mode="create", max_rows_per_file=per, max_rows_per_group=per, **kwargs)
    assert len(lance.dataset(str(path)).get_fragments()) == fragments
    return table


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers for outputs of a few files, and the task waits for them (a fast task would
    otherwise finish before they are ready, and nothing would be shared)."""
    monkeypatch.setattr(parts, "MIN_INPUTS", 8)
    monkeypatch.setattr(parts, "MIN_SHARE", 2)
    monkeypatch.setattr(parts, "READY_TIMEOUT", 60.0)
    monkeypatch.setattr(parts, "LOAD_AWARE", False)


def shared(caplog: pytest.LogCaptureFixture) -> bool:
    return any(SHARED in r.getMessage() for r in caplog.records)


def helper_processes() -> list[int]:
    """This process's children that run the part helper (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), -1)
        if ppid == os.getpid() and parts.HELPER_MODULE.encode() in cmdline:
            found.append(int(entry.name))
    return found


def assert_same_order(path: Path, expected: pa.Table) -> None:
    assert lance.dataset(str(path)).to_table() == expected
    assert_reads_every_way(path, expected, key="i")


# 2.3 small pages are re-encoded by pylance's writer, which writes the whole output: no helpers
# then; with pages copied as they are, they share the copy like the others
@pytest.mark.parametrize(
    ("version", "pages"), [("2.0", "copy"), ("2.0", "coalesce"), ("2.1", "coalesce"), ("2.2", "coalesce"), ("2.3", "copy")]
)
def test_a_shared_output_reads_as_one_process_writes_it(
    tmp_path: Path, version: str, pages: str, small_thresholds: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=parts.__name__)
    alone, together = tmp_path / "alone.lance", tmp_path / "together.lance"
    expected = write_fragments(alone, version, 400)
    write_fragments(together, version, 400)
    one = compact(str(alone), CompactionOptions(task_processes=1, pages=pages))  # type: ignore[arg-type]
    assert not shared(caplog)
    two = compact(str(together), CompactionOptions(task_processes=2, pages=pages))  # type: ignore[arg-type]
    assert shared(caplog), "the helper was never ready: nothing was shared"
    assert (two.fragments_removed, two.fragments_added) == (one.fragments_removed, one.fragments_added) == (400, 1)
    assert two.pages_before == one.pages_before
    assert set(two.columns_coalesced_native) == set(one.columns_coalesced_native)
    assert set(two.columns_left_small) == set(one.columns_left_small)
    assert two.pages_after is not None and one.pages_after is not None
    assert two.pages_after <= one.pages_after + 2 * 5  # at most a page per column more at the share's border
    assert_same_order(together, expected)
    assert_same_order(alone, expected)


def test_default_thresholds_share_a_real_streaming_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default thresholds and options: 1,200 files of 20 rows are enough to share."""
    caplog.set_level(logging.DEBUG, logger=parts.__name__)
    monkeypatch.setattr(parts, "READY_TIMEOUT", 60.0)
    monkeypatch.setattr(parts, "LOAD_AWARE", False)
    path = tmp_path / "ds.lance"
    expected = write_fragments(path, "2.2", 1200)
    report = compact(str(path))
    assert shared(caplog) == (parts.usable_processes(2) > 1)
    assert helper_processes() == [], "a helper outlived the compaction"
    assert report.fragments_added == 1 and report.columns_left_small == []
    assert_same_order(path, expected)


def test_deletions_stable_row_ids_and_an_added_column(
    tmp_path: Path, small_thresholds: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=parts.__name__)
    path = tmp_path / "ds.lance"
    first = stream(0, 60 * 10)
    factory.write(first, path, "2.1", mode="create", max_rows_per_file=10, enable_stable_row_ids=True)
    ds = lance.dataset(str(path))
    ds.add_columns(pa.field("extra", pa.int64()))
    later = stream(600, 60 * 10).append_column("extra", pa.array(np.arange(600, 1200, dtype=np.int64)))
    factory.write(later, path, "2.1", mode="append", max_rows_per_file=10)
    lance.dataset(str(path)).delete("i % 17 = 3")
    before = lance.dataset(str(path)).to_table(with_row_id=True)
    report = compact(str(path), CompactionOptions(task_processes=2, materialize_deletions=False))
    assert shared(caplog)
    assert report.fragments_added == 1
    after = lance.dataset(str(path)).to_table(with_row_id=True)
    assert after == before
    assert_reads_every_way(path, before.drop_columns(["_rowid"]), key="i")


@pytest.mark.parametrize(
    ("module", "trace"),
    [
        ("lance_assets.no_such_module", "the helper ended"),  # never ready: nothing is shared
        ("tests.support.dying_helper", "copied here after all"),  # dies on its share: the task copies it
    ],
)
def test_a_failing_helper_costs_nothing_but_time(
    tmp_path: Path,
    module: str,
    trace: str,
    small_thresholds: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=parts.__name__)
    monkeypatch.setattr(parts, "HELPER_MODULE", module)
    path = tmp_path / "ds.lance"
    expected = write_fragments(path, "2.1", 300)
    report = compact(str(path), CompactionOptions(task_processes=2))
    assert report.fragments_added == 1
    assert any(trace in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_same_order(path, expected)


def test_a_damaged_input_in_a_helpers_share_raises_and_changes_nothing(tmp_path: Path, small_thresholds: None) -> None:
    path = tmp_path / "ds.lance"
    write_fragments(path, "2.2", 300)
    ds = lance.dataset(str(path))
    damaged = path / "data" / ds.get_fragments()[-1].data_files()[0].path  # in the last share
    raw = bytearray(damaged.read_bytes())
    raw[-40:-8] = bytes(32)  # the footer's table positions: the file no longer parses
    damaged.write_bytes(bytes(raw))
    files = sorted(p.name for p in (path / "data").iterdir())
    with pytest.raises(CorruptFileError):
        compact(str(path), CompactionOptions(task_processes=2))
    assert lance.dataset(str(path)).version == ds.version
    assert sorted(p.name for p in (path / "data").iterdir()) == files


def test_usable_processes_follow_the_cpus_and_their_load(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(parts, "LOAD_AWARE", False)
    assert [parts.usable_processes(n) for n in (1, 2, 64)] == [1, min(2, cpus), cpus]
    monkeypatch.setattr(parts, "LOAD_AWARE", True)
    others = max(0.0, os.getloadavg()[0] - 1.0)
    assert parts.usable_processes(64) in range(max(1, int(cpus - others + 0.5) - 1), cpus + 1)
    assert parts.usable_processes(1) == 1


def test_default_thresholds_share_a_wide_output_of_few_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """64 files of 100 columns (6,400 column chunks) are work enough to share, though far
    fewer than 1,024 files."""
    caplog.set_level(logging.DEBUG, logger=parts.__name__)
    monkeypatch.setattr(parts, "READY_TIMEOUT", 60.0)
    monkeypatch.setattr(parts, "LOAD_AWARE", False)
    rng = np.random.default_rng(7)
    rows = 64 * 20
    table = pa.table(
        {"i": pa.array(np.arange(rows, dtype=np.int64))} | {f"c{k:03}": rng.standard_normal(rows) for k in range(99)}
    )
    path = tmp_path / "wide.lance"
    factory.write(table, path, "2.2", mode="create", max_rows_per_file=20, max_rows_per_group=20)
    assert parts.worth_helpers(64, 100) and not parts.worth_helpers(64, 50) and not parts.worth_helpers(40, 200)
    report = compact(str(path))
    assert shared(caplog) == (parts.usable_processes(2) > 1)
    assert helper_processes() == [], "a helper outlived the compaction"
    assert report.fragments_added == 1 and report.columns_left_small == []
    assert_same_order(path, table)


_ALLOCATIONS = """
import resource, sys
import numpy as np
from lance_assets.engine.copying import parts
tuned = parts.tune_allocator() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(60):  # arrays of 1-48 MiB, filled and freed, as re-cut columns come and go
    a = np.ones(((i * 7) % 48 + 1) << 17, dtype=np.int64)
    del a
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_tuned_allocator_keeps_freed_memory_for_the_next_array() -> None:
    """``tune_allocator`` (the CLI's compaction, helpers, worker processes): arrays allocated and
    freed one after another reuse memory instead of faulting in fresh pages each time."""
    faults = {}
    for mode in ("plain", "tuned"):
        out = subprocess.run([sys.executable, "-c", _ALLOCATIONS, mode], capture_output=True, text=True, check=True)
        took, count = out.stdout.split()
        if mode == "tuned" and took != "True":
            pytest.skip("not glibc: the allocator has no thresholds to set")
        faults[mode] = int(count)
    assert faults["tuned"] * 2 < faults["plain"], faults
