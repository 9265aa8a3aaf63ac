"""Never worse than Lance: on every dataset shape of the suite and in every storage version, our
compaction leaves no more fragments than pylance's own ``compact_files`` with the same options,
and the rows read back the same."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from lance_assets import CompactionOptions, compact
from tests.support import factory
from tests.support.assertions import assert_reads_every_way
from tests.support.blobs import resolved

# pylance 14 cannot read a legacy (0.x) blob column back at all (its scan panics), so there is
# nothing to compare; we leave such datasets alone.
CASES = [
    pytest.param(shape, version, marks=pytest.mark.xfail(strict=True, reason="pylance 14 cannot read legacy blob columns"))
    if (shape, version) == ("blob", "legacy")
    else (shape, version)
    for shape in factory.SHAPES
    for version in factory.STORAGE_VERSIONS
    if (shape, version) not in factory.UNSUPPORTED
]


def _rows(path: Path) -> pa.Table:
    """All rows by id, dictionary columns decoded (one file's dictionary may differ from several's),
    blob columns as their bytes (a scan returns descriptors, which a compaction rewrites)."""
    table = resolved(lance.dataset(str(path))).sort_by("id")
    return pa.table(
        {n: c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for n, c in zip(table.column_names, table.columns)}
    )


@pytest.mark.parametrize("target", [1_000_000, 120], ids=["default_target", "small_target"])
@pytest.mark.parametrize("shape,version", CASES)
def test_no_more_fragments_than_pylance(
    dataset_copy: Callable[[str, str], Path], tmp_path: Path, shape: str, version: str, target: int
) -> None:
    ours = dataset_copy(shape, version)
    theirs = tmp_path / "theirs.lance"
    shutil.copytree(ours, theirs)
    before = _rows(ours)
    compact(str(ours), CompactionOptions(target_rows_per_fragment=target))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(theirs)).optimize.compact_files(target_rows_per_fragment=target)
    ours_n = len(lance.dataset(str(ours)).get_fragments())
    theirs_n = len(lance.dataset(str(theirs)).get_fragments())
    assert ours_n <= theirs_n, f"{ours_n} fragments after our compaction, {theirs_n} after pylance's"
    assert _rows(ours).equals(before)


# --- materializing deletions under a row cap (issue 26) --------------------------------------------
def _three_fragments(tmp_path: Path, middle_deleted: str) -> Path:
    """Fragments of 1,000, 2,000 and 1,000 rows; ``middle_deleted`` deletes rows of the middle one."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", [1000, 2000, 1000])
    lance.dataset(str(path)).delete(f"id >= 1000 AND id < 3000 AND ({middle_deleted})")
    return path


def _cli_json(*argv: str) -> dict:  # type: ignore[type-arg]
    import contextlib
    import io
    import json

    from lance_assets.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--json"]) == 0
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


def test_deletions_are_not_materialized_into_more_fragments(tmp_path: Path) -> None:
    """2,000 rows with 666 deleted, target and cap 1,000: re-encoding would write two files for
    one fragment (3 fragments would become 4). The fragment keeps its deletion file instead, and
    the report says why, in the dry run as in the run."""
    path = _three_fragments(tmp_path, "id % 3 = 0")
    before = lance.dataset(str(path)).to_table()
    caps = ["--target-rows-per-fragment", "1000", "--max-rows-per-file", "1000"]
    dry = _cli_json("compact", str(path), "--dry-run", *caps)
    report = _cli_json("compact", str(path), *caps)
    assert report["skipped"] == dry["skipped"]
    kept = [s for s in report["skipped"] if s["reason"] == "materialize_deletions"]
    assert [s["fragment_id"] for s in kept] == [1]
    assert "2 files" in kept[0]["detail"] and "more fragments than the 1" in kept[0]["detail"]
    frags = lance.dataset(str(path)).get_fragments()
    assert len(frags) == 3 and frags[1].metadata.num_deletions == 666
    assert_reads_every_way(path, before)


def test_deletions_are_materialized_when_the_files_do_not_multiply(tmp_path: Path) -> None:
    """The same cap with 1,500 of the 2,000 rows deleted: 500 live rows fit one file, so the
    fragment is re-encoded without its deleted rows (3 fragments stay 3)."""
    path = _three_fragments(tmp_path, "id % 4 != 0")
    before = lance.dataset(str(path)).to_table()
    report = _cli_json("compact", str(path), "--target-rows-per-fragment", "1000", "--max-rows-per-file", "1000")
    assert report["reencoded_fragments"] == 1 and not [s for s in report["skipped"] if s["reason"] == "materialize_deletions"]
    frags = lance.dataset(str(path)).get_fragments()
    assert len(frags) == 3 and all(f.metadata.num_deletions == 0 for f in frags)
    assert sorted(f.metadata.physical_rows for f in frags) == [500, 1000, 1000]
    assert_reads_every_way(path, before)


def test_two_heavy_fragments_under_a_cap_become_no_more_than_two(tmp_path: Path) -> None:
    """Two neighbours of 900 rows with 300 deleted each, cap 1,000: their 1,200 live rows need two
    files, as many as they were -- re-encoded (deleted rows dropped), never three."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", [900, 900])
    lance.dataset(str(path)).delete("id % 3 = 0")
    before = lance.dataset(str(path)).to_table()
    report = _cli_json("compact", str(path), "--target-rows-per-fragment", "1000", "--max-rows-per-file", "1000")
    frags = lance.dataset(str(path)).get_fragments()
    assert report["reencoded_fragments"] == 2 and len(frags) == 2
    assert all(f.metadata.num_deletions == 0 for f in frags)
    assert_reads_every_way(path, before)


def test_without_a_cap_deletions_go_into_fewer_larger_files(tmp_path: Path) -> None:
    """7,000 rows with 6,000 deleted and a target of 120: the target alone would cut the 1,000 live
    rows into 8 fragments; without a row cap they go into one (the target is not a cap)."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", [7000, 300, 300])
    lance.dataset(str(path)).delete("id % 7 != 0 AND id < 7000")
    before = lance.dataset(str(path)).to_table()
    dry = _cli_json("compact", str(path), "--dry-run", "--target-rows-per-fragment", "120")
    report = _cli_json("compact", str(path), "--target-rows-per-fragment", "120")
    assert [t["fragment_ids"] for t in dry["plan"]["tasks"]] == [[0]]
    assert [o["rows"] for o in dry["plan"]["tasks"][0]["outputs"]] == [1000]
    assert report["reencoded_fragments"] == dry["reencoded_fragments"] == 1
    frags = lance.dataset(str(path)).get_fragments()
    assert sorted(f.metadata.physical_rows for f in frags) == [300, 300, 1000]
    assert all(f.metadata.num_deletions == 0 for f in frags)
    assert_reads_every_way(path, before)
