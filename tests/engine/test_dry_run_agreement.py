"""The dry run tells the truth: on every dataset shape of the suite, in every storage version,
a real run does exactly what its dry run said (same groups, same skips with the same reasons,
same counts), and no planned task is refused at copy time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.options import CompactionOptions
from tests.support import factory

# Legacy shapes whose appends end in partial batches (e.g. 100, 1, 250, 30 rows): merging them
# re-cuts the batches, and the dry run must say so as the run does it.
UNEVEN_LEGACY = {"appends", "deletes_bitmap", "stable_row_ids", "mixed"}
CASES = [
    (shape, version)
    for shape in factory.SHAPES
    for version in factory.STORAGE_VERSIONS
    if (shape, version) not in factory.UNSUPPORTED
]


@pytest.mark.parametrize("target", [1_000_000, 120], ids=["default_target", "small_target"])
@pytest.mark.parametrize("shape,version", CASES)
def test_dry_run_equals_the_run(dataset_copy: Callable[[str, str], Path], shape: str, version: str, target: int) -> None:
    path = dataset_copy(shape, version)
    options = CompactionOptions(target_rows_per_fragment=target)
    dry = compact(str(path), CompactionOptions(target_rows_per_fragment=target, dry_run=True))
    run = compact(str(path), options)
    assert run.tasks_skipped == 0, f"a planned task was refused at copy time: {run.skipped}"
    assert run.skipped == dry.skipped
    assert run.notes == dry.notes
    assert (run.tasks, run.fragments_removed, run.files_removed, run.reencoded_fragments) == (
        dry.tasks,
        dry.fragments_removed,
        dry.files_removed,
        dry.reencoded_fragments,
    )
    assert (run.fragments_added, run.files_added) == (dry.fragments_added, dry.files_added)
    assert (run.version is None) == (dry.tasks == 0)
    if version == "legacy" and shape in UNEVEN_LEGACY:
        assert dry.tasks, "legacy appends of uneven sizes are merged (their batches re-cut), not left alone"
