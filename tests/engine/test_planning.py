"""The planner alone, on real pylance datasets: Lance's binning, skip reasons, JSON round trip.

Where Lance bins fragments by the same rule its own planner
(``lance.optimize.Compaction.plan``) is the oracle: for datasets without
deletions or indices our tasks must group exactly the fragments Lance groups.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lance
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lance.optimize import Compaction

from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import CompactionPlan, plan_compaction
from tests.support import factory

Build = Callable[[str, Callable[[Path], object]], Path]


@pytest.fixture(scope="session")
def planning_datasets(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """``build(name, make)`` -> a dataset written by ``make(path)`` once per session (read-only!)."""
    root = tmp_path_factory.mktemp("planning")
    built: dict[str, Path] = {}

    def build(name: str, make: Callable[[Path], object]) -> Path:
        if name not in built:
            path = root / f"{name}.lance"
            make(path)
            built[name] = path
        return built[name]

    return build


def sized(version: str, sizes: Sequence[int], **kwargs: object) -> Callable[[Path], object]:
    return lambda p: factory.appends(p, version, list(sizes), **kwargs)


def task_ids(plan: CompactionPlan) -> list[list[int]]:
    return [list(t.fragment_ids) for t in plan.tasks]


def skips(plan: CompactionPlan) -> dict[int, str]:
    return {s.fragment_id: s.reason for s in plan.skipped}


def lance_task_ids(path: Path, **options: Any) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = Compaction.plan(lance.dataset(str(path)), options)
    return [[f.id for f in t.fragments] for t in plan.tasks]


def assert_partition(plan: CompactionPlan, all_ids: Sequence[int]) -> None:
    """Every fragment is either in exactly one task or skipped exactly once, never both."""
    in_tasks = [i for t in plan.tasks for i in t.fragment_ids]
    skipped = [s.fragment_id for s in plan.skipped]
    assert len(in_tasks) == len(set(in_tasks))
    assert len(skipped) == len(set(skipped))
    assert sorted(in_tasks + skipped) == sorted(all_ids)
    assert skipped == sorted(skipped)


# --- Lance's binning (runs of small neighbours), Lance's planner as the oracle -------------------
BINNING_CASES = {
    # sizes, target -> expected tasks / skip reasons
    "breaks_at_large": (
        [10, 20, 500, 30, 40, 50, 600, 5],
        100,
        [[0, 1], [3, 4, 5]],
        {2: "at_target_size", 6: "at_target_size", 7: "no_neighbour"},
    ),
    "greedy_split": ([60, 60, 60, 60], 100, [[0, 1], [2, 3]], {}),
    "no_split_when_rest_too_small": ([60, 60, 60], 100, [[0, 1, 2]], {}),
    "exact_target_is_large": ([100, 99, 1, 100], 100, [[1, 2]], {0: "at_target_size", 3: "at_target_size"}),
    "all_large": ([100, 100, 100], 100, [], {0: "at_target_size", 1: "at_target_size", 2: "at_target_size"}),
    "single_small_between_large": ([200, 5, 200], 100, [], {0: "at_target_size", 1: "no_neighbour", 2: "at_target_size"}),
    "three_way_split": ([50, 50, 50, 50, 50, 50, 50], 100, [[0, 1], [2, 3], [4, 5, 6]], {}),
    "single_rows": ([1, 1, 1, 1, 1], 3, [[0, 1, 2, 3, 4]], {}),
}


@pytest.mark.parametrize("case", list(BINNING_CASES))
def test_binning_matches_lance(planning_datasets: Build, case: str) -> None:
    sizes, target, want_tasks, want_skips = BINNING_CASES[case]
    path = planning_datasets(f"bin-{case}", sized("2.1", sizes))
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=target))
    assert task_ids(plan) == want_tasks
    assert skips(plan) == want_skips
    assert task_ids(plan) == lance_task_ids(path, target_rows_per_fragment=target)
    assert_partition(plan, range(len(sizes)))
    for task in plan.tasks:
        assert task.rows == sum(sizes[i] for i in task.fragment_ids)
        assert [i for o in task.outputs for i in o.fragment_ids] == list(task.fragment_ids)
        assert sum(o.rows for o in task.outputs) == task.rows
        assert task.bytes == sum(o.bytes for o in task.outputs) > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=9),
    target=st.integers(2, 150),
    excluded=st.sets(st.integers(0, 8), max_size=2),
)
def test_binning_matches_lance_property(sizes: list[int], target: int, excluded: set[int]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="plan-prop-"))
    try:
        path = tmp / "ds.lance"
        factory.appends(path, "2.1", sizes)
        plan = plan_compaction(
            str(path), CompactionOptions(target_rows_per_fragment=target, excluded_fragment_ids=frozenset(excluded))
        )
        theirs = lance_task_ids(path, target_rows_per_fragment=target, excluded_fragment_ids=sorted(excluded))
        assert task_ids(plan) == theirs
        assert_partition(plan, range(len(sizes)))
        for i in excluded & set(range(len(sizes))):
            assert skips(plan)[i] == "excluded"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_excluded_fragments_are_bin_boundaries(planning_datasets: Build) -> None:
    path = planning_datasets("six-small", sized("2.1", [100] * 6))
    plan = plan_compaction(str(path), CompactionOptions(excluded_fragment_ids=frozenset({2})))
    assert task_ids(plan) == [[0, 1], [3, 4, 5]]
    assert plan.skipped[0].fragment_id == 2 and plan.skipped[0].reason == "excluded"
    assert task_ids(plan) == lance_task_ids(path, excluded_fragment_ids=[2])
    # excluding a fragment that leaves a neighbour alone: the neighbour becomes no_neighbour
    plan = plan_compaction(str(path), CompactionOptions(excluded_fragment_ids=frozenset({1, 3})))
    assert task_ids(plan) == [[4, 5]]
    assert skips(plan) == {0: "no_neighbour", 1: "excluded", 2: "no_neighbour", 3: "excluded"}


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 6])
def test_max_source_fragments_matches_lance(planning_datasets: Build, limit: int) -> None:
    path = planning_datasets("two-bins", sized("2.1", [10, 10, 10, 500, 10, 10]))
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=100, max_source_fragments=limit))
    assert task_ids(plan) == lance_task_ids(path, target_rows_per_fragment=100, max_source_fragments=limit)
    assert plan.fragments_to_compact <= limit
    admitted = {i for t in plan.tasks for i in t.fragment_ids}
    for i in {0, 1, 2, 4, 5} - admitted:
        assert skips(plan)[i] == "max_source_fragments"
    assert_partition(plan, range(6))


# --- skip reasons with their stable codes -------------------------------------------------------
def test_deletions_under_the_threshold_merge(dataset_cache: Callable[[str, str], Path]) -> None:
    """Fragments with a few deleted rows are candidates like any other (deletions are carried forward)."""
    plan = plan_compaction(str(dataset_cache("deletes_arrow", "2.1")))
    assert task_ids(plan) == [[0, 1, 2]] and skips(plan) == {}
    assert plan.tasks[0].files == 5  # three data files and two deletion files


def test_heavily_deleted_fragments_join_their_bin(dataset_cache: Callable[[str, str], Path]) -> None:
    """Lance's "compact itself" candidates: over the threshold, a fragment still bins with its
    neighbours; the group is re-encoded (pylance) or binary-copied with a note."""
    # fragment 0 has 3 of 300 rows deleted (1%), fragment 1 has 1 of 300
    path = str(dataset_cache("deletes_arrow", "2.1"))
    plan = plan_compaction(path, CompactionOptions(materialize_deletions_threshold=0.005))
    assert skips(plan) == {} and task_ids(plan) == [[0, 1, 2]] and plan.tasks[0].reencode
    plan = plan_compaction(path, CompactionOptions(materialize_deletions_threshold=0.005, reencode_fallback=False))
    assert task_ids(plan) == [[0, 1, 2]] and not plan.tasks[0].reencode
    assert [(n.fragment_id, n.reason) for n in plan.notes] == [(0, "deletions_kept")]
    assert "3 of 300 rows deleted" in plan.notes[0].detail
    plan = plan_compaction(path, CompactionOptions(materialize_deletions=False, materialize_deletions_threshold=0.0))
    assert task_ids(plan) == [[0, 1, 2]] and not plan.tasks[0].reencode and not plan.notes


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_indexed_fragments_are_compacted_without_stable_row_ids(dataset_cache: Callable[[str, str], Path], version: str) -> None:
    """The commit records the moves for the indices, so indexed fragments need not be skipped."""
    plan = plan_compaction(str(dataset_cache("scalar_index", version)))
    assert task_ids(plan) == [[0, 1, 2]]
    assert skips(plan) == {}


def _reuse_dataset(p: Path) -> None:
    ds = factory.appends(p, "2.1", [100, 100, 100])
    ds.create_scalar_index("id", "BTREE")
    ds.optimize.compact_files(defer_index_remap=True)
    factory.write(factory.simple_table(300, 50), p, "2.1")
    factory.write(factory.simple_table(350, 50), p, "2.1")


def test_fragment_reuse_coverage_keys_bins_like_lance(planning_datasets: Build) -> None:
    """The merged fragment of a deferred remap is indexed as readers see it (the reuse index maps
    the BTree's old entries to it), so it never shares a bin with unindexed appends -- Lance's
    own plan for the same dataset."""
    path = planning_datasets("frag-reuse", _reuse_dataset)
    ds = Dataset.open(str(path))
    assert any(i.name == "__lance_frag_reuse" for i in ds.indices)
    plan = plan_compaction(ds, CompactionOptions(target_rows_per_fragment=1000))
    assert task_ids(plan) == [[4, 5]] == lance_task_ids(path, target_rows_per_fragment=1000)
    assert skips(plan) == {3: "no_neighbour"}


def test_reason_indexed_for_fragment_reuse_index_when_dropping(planning_datasets: Build) -> None:
    """With ``index_remap="drop"`` a fragment named only through the reuse index cannot leave the
    bitmaps (they name its predecessors), so it stays."""
    path = planning_datasets("frag-reuse", _reuse_dataset)
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=1000, index_remap="drop"))
    reused = [s for s in plan.skipped if s.reason == "indexed"]
    assert [s.fragment_id for s in reused] == [3] and "__lance_frag_reuse" in reused[0].detail
    assert task_ids(plan) == [[4, 5]]


def test_index_coverage_splits_bins(planning_datasets: Build) -> None:
    def make(p: Path) -> None:
        ds = factory.appends(p, "2.1", [100, 100, 100])
        ds.create_scalar_index("id", "BTREE")
        factory.write(factory.simple_table(300, 50), p, "2.1")
        factory.write(factory.simple_table(350, 50), p, "2.1")

    path = planning_datasets("indexed-head", make)
    plan = plan_compaction(str(path))
    # covered and uncovered fragments never share a bin
    assert task_ids(plan) == [[0, 1, 2], [3, 4]]
    assert skips(plan) == {}


def test_indices_split_bins_on_stable_row_id_datasets(planning_datasets: Build) -> None:
    """With stable row ids an index does not block a rewrite, but bins follow index coverage."""

    def make(p: Path) -> None:
        ds = factory.appends(p, "2.1", [100, 100, 100, 100], enable_stable_row_ids=True)
        ds.create_scalar_index("id", "BTREE")
        factory.write(factory.simple_table(400, 50), p, "2.1")
        factory.write(factory.simple_table(450, 50), p, "2.1")

    path = planning_datasets("stable-indexed", make)
    plan = plan_compaction(str(path))
    assert task_ids(plan) == [[0, 1, 2, 3], [4, 5]]
    assert not any(s.reason == "indexed" for s in plan.skipped)
    assert task_ids(plan) == lance_task_ids(path)


def test_legacy_dataset(dataset_cache: Callable[[str, str], Path]) -> None:
    """Legacy datasets are binned like Lance bins them: fragments of 100, 1, 250 and 30 rows (one
    batch each) merge as one group, by binary copy (the copy re-cuts batches that do not line up)."""
    path = dataset_cache("appends", "legacy")
    for options in (CompactionOptions(reencode_fallback=False), CompactionOptions()):
        plan = plan_compaction(str(path), options)
        assert plan.storage_version == "legacy"
        assert task_ids(plan) == lance_task_ids(path) == [[0, 1, 2, 3]]
        assert not plan.splits and not plan.tasks[0].reencode
        assert_partition(plan, range(4))


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2", "2.3"])
def test_blob_columns_are_planned(dataset_cache: Callable[[str, str], Path], version: str) -> None:
    """Blob descriptor pages are rewritten by the copy (tests/engine/test_blob_columns.py): the
    planner merges blob fragments like any others, but never by re-encoding."""
    plan = plan_compaction(str(dataset_cache("blob", version)))
    assert task_ids(plan) == [[0, 1]] and not plan.tasks[0].reencode
    assert plan.skipped == ()


def test_reason_blob_column(dataset_cache: Callable[[str, str], Path]) -> None:
    """Legacy (0.x) blob columns stay refused: pylance 14 cannot read them back."""
    plan = plan_compaction(str(dataset_cache("blob", "legacy")))
    assert plan.tasks == ()
    assert skips(plan) == {0: "blob_column", 1: "blob_column"}
    assert "blob" in plan.skipped[0].detail


def test_reason_no_reduction(planning_datasets: Build) -> None:
    path = planning_datasets("three-100", sized("2.1", [100, 100, 100]))
    # every output would hold one input: merging gains nothing
    plan = plan_compaction(str(path), CompactionOptions(max_rows_per_file=150))
    assert plan.tasks == ()
    assert skips(plan) == {0: "no_reduction", 1: "no_reduction", 2: "no_reduction"}
    # with room for two inputs per file, 0 and 1 merge; 2 would only be copied into a file of its own
    plan = plan_compaction(str(path), CompactionOptions(max_rows_per_file=200))
    assert task_ids(plan) == [[0, 1]]
    assert [list(o.fragment_ids) for o in plan.tasks[0].outputs] == [[0, 1]]
    assert skips(plan) == {2: "no_reduction"}


def test_caps_pack_whole_inputs_into_the_fewest_files(planning_datasets: Build) -> None:
    """12 fragments of 100 rows, target 250, at most 250 rows a file: six files of 200 rows
    (next-fit over the run), not Lance's split into groups of 300 that a cap then cuts into a
    full file and a remainder (eight files)."""
    path = planning_datasets("twelve-100", sized("2.1", [100] * 12))
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=250, max_rows_per_file=250))
    assert [list(o.fragment_ids) for t in plan.tasks for o in t.outputs] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert all(o.rows == 200 for t in plan.tasks for o in t.outputs) and skips(plan) == {}


def test_reason_at_target_size_detail(planning_datasets: Build) -> None:
    path = planning_datasets("three-100", sized("2.1", [100, 100, 100]))
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=100))
    assert skips(plan) == {0: "at_target_size", 1: "at_target_size", 2: "at_target_size"}
    assert "100" in plan.skipped[0].detail


@pytest.mark.parametrize(
    "shape", ["multi_file", "reordered", "dropped_column", "metadata_only_column", "stable_row_ids", "mixed"]
)
def test_compactable_shapes_plan_like_lance(dataset_cache: Callable[[str, str], Path], shape: str) -> None:
    """Shapes Lance's binary copy refuses are still planned by binning (our copier handles them)."""
    path = dataset_cache(shape, "2.1")
    plan = plan_compaction(str(path))
    n = len(lance.dataset(str(path)).get_fragments())
    assert_partition(plan, [f.fragment_id for f in lance.dataset(str(path)).get_fragments()])
    # (stable_row_ids has a fragment with a deletion under the threshold: it merges too)
    assert task_ids(plan) == [list(range(n))]
    assert task_ids(plan) == lance_task_ids(path)


# --- outputs simulation -------------------------------------------------------------------------
def test_outputs_close_at_target_unless_the_rest_is_smaller(planning_datasets: Build) -> None:
    """Lance's bin rule applied to files: no remainder file below the target (pylance's own
    writer, rolling over between 1,024-row groups, writes the 500 rows as one file too)."""
    path = planning_datasets("five-100", sized("2.1", [100] * 5))
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=250))
    assert task_ids(plan) == [[0, 1, 2, 3, 4]]
    assert [(list(o.fragment_ids), o.rows) for o in plan.tasks[0].outputs] == [([0, 1, 2, 3, 4], 500)]
    path = planning_datasets("seven-100", sized("2.1", [100] * 7))
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=250))
    assert [(list(o.fragment_ids), o.rows) for t in plan.tasks for o in t.outputs] == [([0, 1, 2], 300), ([3, 4, 5, 6], 400)]


def test_output_byte_cap_closes_before_an_input_would_exceed_it(planning_datasets: Build) -> None:
    path = planning_datasets("five-100", sized("2.1", [100] * 5))
    sizes = {
        f.id: sum(df.file_size_bytes for df in f.files) for f in (fr.metadata for fr in lance.dataset(str(path)).get_fragments())
    }
    cap = sizes[0] + sizes[1] + sizes[2] // 2  # room for two inputs, not three
    plan = plan_compaction(str(path), CompactionOptions(max_bytes_per_file=cap))
    outputs = [o for t in plan.tasks for o in t.outputs]
    assert [list(o.fragment_ids) for o in outputs] == [[0, 1], [2, 3]]  # one group per file under a cap
    assert skips(plan) == {4: "no_reduction"}  # copying 4 alone into a new file would gain nothing
    for o in outputs:
        assert o.bytes == sum(sizes[i] for i in o.fragment_ids) <= cap


# --- plan as data --------------------------------------------------------------------------------
def test_plan_json_round_trip(planning_datasets: Build) -> None:
    path = planning_datasets("breaks", sized("2.1", [10, 20, 500, 30, 40, 50, 600, 5]))
    options = CompactionOptions(
        target_rows_per_fragment=100,
        max_rows_per_file=1000,
        max_bytes_per_file=10**9,
        read_batch_bytes=4096,
        max_source_fragments=50,
        excluded_fragment_ids=frozenset({4}),
    )
    plan = plan_compaction(str(path), options, storage_options={"secret": "do-not-serialise"})
    assert plan.storage_options == {"secret": "do-not-serialise"}
    assert plan.tasks and plan.skipped
    text = plan.to_json()
    assert "do-not-serialise" not in text
    data = json.loads(text)
    assert json.loads(json.dumps(data)) == data
    again = CompactionPlan.from_dict(data)
    assert again == plan
    assert again.to_dict() == plan.to_dict()
    assert again.options.excluded_fragment_ids == frozenset({4})
    assert again.read_version == lance.dataset(str(path)).version
    assert again.storage_version == "2.1"
    assert CompactionPlan.from_dict(data, storage_options={"k": "v"}).storage_options == {"k": "v"}


@pytest.mark.parametrize("version", factory.V2_VERSIONS)
def test_planning_opens_no_data_file(dataset_copy: Callable[[str, str], Path], version: str) -> None:
    path = dataset_copy("multi_file", version)
    before = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=250))
    assert before.tasks
    for f in (path / "data").iterdir():
        f.unlink()
    after = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=250))
    assert after == before


def test_plan_of_an_empty_dataset(tmp_path: Path) -> None:
    path = tmp_path / "empty.lance"
    factory.write(factory.simple_table(0, 0), path, "2.1", mode="create")
    plan = plan_compaction(str(path))
    assert plan.tasks == () and plan.skipped == ()


def test_index_without_fragment_bitmap_blocks_stable_row_id_datasets(planning_datasets: Build, tmp_path: Path) -> None:
    """An index with no bitmap covers "everything"; its coverage cannot be narrowed, so nothing is rewritten."""
    from lance_assets.engine.dataset import Dataset
    from lance_assets.format import manifest as mf

    def make(p: Path) -> None:
        ds = factory.appends(p, "2.1", [100, 100, 100, 100], enable_stable_row_ids=True)
        ds.create_scalar_index("id", "BTREE")
        factory.write(factory.simple_table(400, 50), p, "2.1")
        factory.write(factory.simple_table(450, 50), p, "2.1")

    path = tmp_path / "no-bitmap.lance"
    shutil.copytree(planning_datasets("stable-indexed", make), path)
    target = path / Dataset.open(str(path)).location.rel_path
    parsed = mf.parse_manifest_file(target.read_bytes())
    for idx in parsed.index_section.indices:
        idx.ClearField("fragment_bitmap")
    target.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))
    plan = plan_compaction(str(path))
    assert plan.tasks == ()
    assert skips(plan) == {i: "indexed" for i in range(6)}
