"""Assertions shared by the test modules."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa

from lance_assets.cli import EXIT_ERROR
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.planning.plan import CompactionPlan


def tree_digest(root: Path | str) -> dict[str, str]:
    """Every file and directory under ``root`` with a content hash (directories as 'dir').

    Equal digests before and after an operation prove it wrote, removed and changed nothing.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def assert_one_error_line(code: int, out: str, err: str) -> None:
    """The CLI's contract for bad input: exit 2, one ``error:`` line on stderr, no traceback."""
    assert code == EXIT_ERROR == 2
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err and "Traceback" not in out
    assert out == ""


# --- a dataset before a compaction, and what Lance's order says it must read back as after --------
def rows(table: pa.Table) -> list[dict[str, Any]]:
    """Values only: pylance re-chunks dictionary columns, so Table.equals is too strict."""
    return table.to_pylist()


@dataclass
class Before:
    version: int
    max_fragment_id: int
    fragment_ids: list[int]
    tables: dict[int, pa.Table]
    row_ids: dict[int, list[int]]  # stable-row-id datasets only
    files: dict[int, int]  # data + deletion files per fragment
    file_bytes: dict[int, int]
    table: pa.Table
    stable: bool


def capture(path: Path) -> Before:
    """What pylance reads from ``path`` now, fragment by fragment."""
    ds = lance.dataset(str(path))
    stable = ds.has_stable_row_ids
    frags = ds.get_fragments()
    return Before(
        version=ds.version,
        max_fragment_id=Dataset.open(str(path)).manifest.max_fragment_id,
        fragment_ids=[f.fragment_id for f in frags],
        tables={f.fragment_id: f.to_table() for f in frags},
        row_ids={f.fragment_id: f.to_table(with_row_id=True)["_rowid"].to_pylist() for f in frags} if stable else {},
        files={f.fragment_id: len(f.metadata.files) + (f.metadata.deletion_file is not None) for f in frags},
        file_bytes={f.fragment_id: sum((path / "data" / df.path).stat().st_size for df in f.metadata.files) for f in frags},
        table=ds.to_table(),
        stable=stable,
    )


def expected_layout(before: Before, plan: CompactionPlan) -> tuple[list[int], list[list[int]]]:
    """(unmerged fragment ids in id order, input ids of every new fragment in commit order)."""
    merged = {i for t in plan.tasks for i in t.fragment_ids}
    unmerged = [i for i in before.fragment_ids if i not in merged]
    outputs = [list(o.fragment_ids) for t in plan.tasks for o in t.outputs]
    return unmerged, outputs


def expected_rows(before: Before, plan: CompactionPlan) -> list[dict[str, Any]]:
    """Lance's order: unmerged fragments by id, then the new fragments, each its inputs in order."""
    unmerged, outputs = expected_layout(before, plan)
    return [r for i in unmerged + [i for o in outputs for i in o] for r in rows(before.tables[i])]


def expected_row_ids(before: Before, plan: CompactionPlan) -> list[int]:
    unmerged, outputs = expected_layout(before, plan)
    return [r for i in unmerged + [i for o in outputs for i in o] for r in before.row_ids[i]]


def assert_reads_every_way(
    path: Path | str, expected: pa.Table, key: str = "id", storage_options: dict[str, str] | None = None
) -> None:
    """pylance reads ``expected`` (compared sorted by ``key``) every way a user reads a dataset:
    a whole scan, batch sizes 1, 3 and 1000, ``to_batches``, ``take`` of every row and of a few
    rows from different places at once, and filters (one of them picking rows across inputs)."""
    ds = lance.dataset(str(path), storage_options=storage_options)
    want = expected.sort_by(key).to_pylist()
    n = expected.num_rows

    def same(table: pa.Table, how: str) -> None:
        assert table.sort_by(key).to_pylist() == want, f"pylance misreads the dataset ({how})"

    same(ds.to_table(), "whole scan")
    for batch_size in (1, 3, 1000):
        same(ds.to_table(batch_size=batch_size), f"batch_size={batch_size}")
    same(pa.Table.from_batches(list(ds.to_batches()), schema=ds.schema), "to_batches")
    same(ds.take(list(range(ds.count_rows()))[::-1]), "take (every row, reversed)")
    if n:
        # rows that came from different inputs, in one take, out of order
        picks = sorted({0, n - 1, n // 2, n // 3, max(0, n // 2 - 1)}, reverse=True)
        scanned = ds.to_table().to_pylist()
        assert ds.take(picks).to_pylist() == [scanned[p] for p in picks], "pylance misreads the dataset (take)"
    middle = sorted(expected[key].to_pylist())[n // 2] if n else 0
    got = ds.to_table(filter=f"{key} >= {middle}").sort_by(key).to_pylist()
    assert got == [r for r in want if r[key] >= middle], "pylance misreads the dataset (filter)"
    spread = ds.to_table(filter=f"{key} % 3 = 1").sort_by(key).to_pylist()
    assert spread == [r for r in want if r[key] % 3 == 1], "pylance misreads the dataset (filter across inputs)"
