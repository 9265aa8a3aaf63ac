"""Every index still answers after our compaction (issue 26).

Built with pylance exactly as the issue describes, compacted by ``lance-assets``, judged by
pylance: indexed queries against brute-force answers (exact indices) or the same index's
recall before (vector indices), ``index_statistics``, and the versions a compaction adds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets.cli import main
from lance_assets.engine.compaction import compact
from lance_assets.engine.options import CompactionOptions
from tests.support import factory

DIM = 8
QUERIES = [np.random.default_rng(100 + k).standard_normal(DIM).astype(np.float32) for k in range(5)]


def vectors(start: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * DIM).astype(np.float32)), DIM),
        }
    )


def knn(ds: lance.LanceDataset, k: int = 10) -> list[list[int]]:
    """Indexed nearest neighbours, as id sets (sorted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            sorted(
                ds.to_table(nearest={"column": "vec", "q": q, "k": k, "nprobes": 2}, columns=["id", "_distance"])[
                    "id"
                ].to_pylist()
            )
            for q in QUERIES
        ]


def brute_knn(ds: lance.LanceDataset, k: int = 10) -> list[set[int]]:
    """The exact nearest neighbours of the live rows, computed here."""
    t = ds.to_table(columns=["id", "vec"])
    ids = np.asarray(t["id"])
    vecs = np.asarray(t["vec"].combine_chunks().flatten()).reshape(-1, DIM)
    return [set(ids[np.argsort(((vecs - q) ** 2).sum(1), kind="stable")[:k]].tolist()) for q in QUERIES]


def recall(ds: lance.LanceDataset) -> float:
    truth = brute_knn(ds)
    return sum(len(set(got) & want) for got, want in zip(knn(ds), truth)) / sum(len(w) for w in truth)


def unindexed(ds: lance.LanceDataset) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            i["name"]: ds.stats.index_stats(i["name"])["num_unindexed_rows"]
            for i in ds.list_indices()
            if not i["name"].startswith("__")
        }


def test_hnsw_survives_heavily_deleted_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26 A: IVF_HNSW_SQ, deletions over the threshold, `lance-assets compact` with
    defaults. pylance cannot map deleted rows out of an HNSW graph through the reuse index, so
    the deleted rows stay as a deletion file (noted) and every query keeps answering."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.2", [100] * 6, make=vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_HNSW_SQ", num_partitions=2)
    ds = lance.dataset(str(path))
    ds.delete("id % 5 = 1")
    ds = lance.dataset(str(path))
    before, recall_before, version = knn(ds), recall(ds), ds.version
    assert main(["compact", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["committed_versions"] == [version + 1]
    assert {n["reason"] for n in out["notes"]} == {"deletions_kept"} and "HNSW" in out["notes"][0]["detail"]
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1
    assert knn(ds) == before and recall(ds) >= recall_before
    assert unindexed(ds) == {"vec_idx": 0}
    assert ds.count_rows() == 480


def test_only_graph_covered_fragments_keep_their_deleted_rows(tmp_path: Path) -> None:
    """Only fragments the graph index covers keep their deleted rows: fragments appended
    after the index (unindexed) are still materialized, and queries stay exact."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100] * 4, make=vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_HNSW_FLAT", num_partitions=2)
    for start in (400, 500, 600):
        factory.write(vectors(start, 100), path, "2.1")
    ds = lance.dataset(str(path))
    ds.delete("id % 4 = 1")
    ds = lance.dataset(str(path))
    before = knn(ds)
    report = compact(str(path), CompactionOptions())
    kept = {n.fragment_id for n in report.notes if n.reason == "deletions_kept"}
    assert kept == {0, 1, 2, 3}
    ds = lance.dataset(str(path))
    assert knn(ds) == before and ds.count_rows() == 525
    assert sum(f.metadata.deletion_file is not None for f in ds.get_fragments()) == 1  # the indexed group only


def _scalar_table(start: int, rows: int) -> pa.Table:
    base = vectors(start, rows)
    ids = np.arange(start, start + rows)
    return base.append_column("z", pa.array(ids * 3, pa.int64()))


def test_reuse_group_partly_covered_after_our_compaction(tmp_path: Path) -> None:
    """Issue 26 item 4: our compaction, then pylance update + optimize_indices + deferred
    compaction leave a reuse group only partly covered by an index. pylance reads it; so do we:
    compaction and cleanup go on, and queries stay exact."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.2", [100] * 4, make=_scalar_table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_scalar_index("id", "BTREE", name="id_idx")
        ds.create_scalar_index("z", "BITMAP", name="z_idx")
    assert main(["compact", str(path)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).update({"z": "z + 1"}, where="id % 9 = 0")
        lance.dataset(str(path)).optimize.optimize_indices()
        lance.dataset(str(path)).optimize.compact_files(defer_index_remap=True)
    _compact_and_clean_like_pylance(path)


def test_reuse_group_partly_covered_pylance_only(tmp_path: Path) -> None:
    """Issue 26 item 4 from a pylance-only history (2.1): deferred compaction, append,
    optimize_indices, delete, deferred compaction again; then ours must neither refuse to
    clean (even orphans only) nor to compact."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100] * 4, make=_scalar_table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_scalar_index("id", "BTREE", name="id_idx")
        lance.dataset(str(path)).optimize.compact_files(defer_index_remap=True)
        factory.write(_scalar_table(400, 100), path, "2.1")
        lance.dataset(str(path)).optimize.optimize_indices()
        lance.dataset(str(path)).delete("id = 5")
        lance.dataset(str(path)).optimize.compact_files(defer_index_remap=True)
    assert main(["cleanup", str(path), "--orphans-only"]) == 0
    _compact_and_clean_like_pylance(path)


def _compact_and_clean_like_pylance(path: Path) -> None:
    ds = lance.dataset(str(path))
    flt = ["id = 5", "id >= 250 AND id < 420", "z > 1000"]
    expect = {f: sorted(ds.to_table(filter=f, columns=["id"])["id"].to_pylist()) for f in flt}
    rows = ds.to_table().sort_by("id")
    for args in (
        ["compact", str(path)],
        ["cleanup", str(path)],
        ["compact", str(path)],
        ["cleanup", str(path), "--older-than", "0s"],
    ):
        assert main(args) == 0, args
        ds = lance.dataset(str(path))
        assert {f: sorted(ds.to_table(filter=f, columns=["id"])["id"].to_pylist()) for f in flt} == expect
        assert ds.to_table().sort_by("id").equals(rows)
        unindexed(ds)  # answers, no error


def _nested(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows)
    return pa.table({"id": pa.array(ids, pa.int64()), "s": pa.array([{"k": int(i % 17), "v": f"v{i}"} for i in ids])})


def test_stable_row_ids_and_a_btree_on_a_nested_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26 B and item 3: stable row ids, ``create_scalar_index("s.k", "BTREE")`` beside
    ``id_idx`` (2.2, four appends). One Rewrite keeps both BTrees covering (their segments
    rewritten on the new addresses, as pylance's own compaction does), so nothing is left for
    ``optimize_indices`` to fail on; it still works afterwards."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.2", [100] * 4, make=_nested, enable_stable_row_ids=True)
    ds.create_scalar_index("id", "BTREE", name="id_idx")
    ds.create_scalar_index("s.k", "BTREE")
    ds = lance.dataset(str(path))
    filters = ["s.k = 3", "id = 7", "id >= 150 AND id < 260", "s.k > 14"]
    expect = {f: sorted(ds.to_table(filter=f, columns=["id"])["id"].to_pylist()) for f in filters}
    ids_before = ds.to_table(columns=["id"], with_row_id=True).sort_by("id")
    version = ds.version
    assert main(["compact", str(path)]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out
    ds = lance.dataset(str(path))
    assert ds.version == version + 1 and len(ds.get_fragments()) == 1
    assert {f: sorted(ds.to_table(filter=f, columns=["id"])["id"].to_pylist()) for f in filters} == expect
    assert all("ScalarIndexQuery" in ds.scanner(filter=f).explain_plan() for f in filters)
    assert unindexed(ds) == {"id_idx": 0, "s.k_idx": 0}
    assert ds.to_table(columns=["id"], with_row_id=True).sort_by("id").equals(ids_before)
    factory.write(_nested(400, 50), path, "2.2")
    lance.dataset(str(path)).optimize.optimize_indices()
    ds = lance.dataset(str(path))
    assert unindexed(ds) == {"id_idx": 0, "s.k_idx": 0}
    assert sorted(ds.to_table(filter="s.k = 3", columns=["id"])["id"].to_pylist()) == sorted(
        expect["s.k = 3"] + [i for i in range(400, 450) if i % 17 == 3]
    )


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.3"])
def test_stable_row_id_btree_one_version_like_pylance(tmp_path: Path, version: str) -> None:
    """Item 3: a BTree-indexed stable-row-id dataset with deletions (one group re-encoded,
    one binary-copied with its deletions carried) gains one version, as with pylance's own
    compaction, and the index covers every row as there."""
    ours, theirs = tmp_path / "ours.lance", tmp_path / "theirs.lance"
    for path in (ours, theirs):
        ds = factory.appends(path, version, [100] * 6, make=_scalar_table, enable_stable_row_ids=True)
        ds.delete("id < 300 AND id % 4 = 1")  # 25%: materialized
        ds = lance.dataset(str(path))
        ds.delete("id >= 300 AND id % 50 = 7")  # 2%: carried
        lance.dataset(str(path)).create_scalar_index("id", "BTREE", name="id_idx")
    start = lance.dataset(str(ours)).version
    report = compact(str(ours), CompactionOptions(target_rows_per_fragment=300))
    lance.dataset(str(theirs)).optimize.compact_files(target_rows_per_fragment=300)
    a, b = lance.dataset(str(ours)), lance.dataset(str(theirs))
    assert report.committed_versions == [start + 1] == [a.version]  # pylance: ReserveFragments + Rewrite
    assert [i["remap"] for i in report.indices] == ["rewritten"]
    assert unindexed(a) == unindexed(b) == {"id_idx": 0}
    for flt in ["id = 5", "id = 9", "id >= 280 AND id < 320", "id > 590", "id % 4 = 1"]:
        assert sorted(a.to_table(filter=flt, columns=["id"])["id"].to_pylist()) == sorted(
            b.to_table(filter=flt, columns=["id"])["id"].to_pylist()
        ), flt
        if "%" not in flt:  # (a modulo is not an index query)
            assert "ScalarIndexQuery" in a.scanner(filter=flt).explain_plan()


def test_cli_text_says_what_only_json_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Notes (kept deletions, index upkeep) and indices that no longer cover the merged rows are
    printed by the text output too, not only in ``--json``."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.2", [100] * 4, make=vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_HNSW_SQ", name="vec_idx", num_partitions=2)
        ds.create_scalar_index("id", "BTREE", name="id_idx")
    lance.dataset(str(path)).delete("id % 5 = 1")
    assert main(["compact", str(path), "--index-remap", "drop"]) == 0
    out = capsys.readouterr().out
    assert "index vec_idx does not cover the merged rows (dropped)" in out.replace("\n", " ")
    assert "index id_idx does not cover the merged rows (dropped)" in out.replace("\n", " ")
    path2 = tmp_path / "ds2.lance"
    ds = factory.appends(path2, "2.2", [100] * 4, make=vectors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_HNSW_SQ", name="vec_idx", num_partitions=2)
    lance.dataset(str(path2)).delete("id % 5 = 1")
    assert main(["compact", str(path2)]) == 0
    assert "note: deletions_kept: 4 fragments" in capsys.readouterr().out


def _nullable(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows)
    v = [None if i % 10 == 0 else int((i * 7) % 50) for i in ids]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "v": pa.array(v, pa.int64()),
            "s": pa.array([None if x is None else f"s{x}" for x in v]),
        }
    )


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_rewritten_btree_pages_with_nulls_and_dropped_rows(tmp_path: Path, version: str) -> None:
    """A rewritten BTree segment of several pages (nulls first, then values) loses the entries
    of re-encoded deleted rows: its pages and lookup are cut anew and every query -- nulls,
    equality, ranges across page boundaries -- answers what a scan without the index does."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, version, [3000, 3000, 3000], make=_nullable, enable_stable_row_ids=True)
    ds.delete("id < 3000 AND id % 5 = 2")  # 20% of the first fragment: re-encoded
    ds = lance.dataset(str(path))
    ds.delete("id >= 3000 AND id % 97 = 0")
    ds = lance.dataset(str(path))
    ds.create_scalar_index("v", "BTREE", name="v_idx")
    ds.create_scalar_index("s", "BTREE", name="s_idx")
    ds = lance.dataset(str(path))
    filters = ["v IS NULL", "v = 3", "v > 40", "v >= 17 AND v <= 18", "s = 's7'", "s > 's45'", "s IS NULL", "v IN (1, 2, 49)"]

    def answers(ds: lance.LanceDataset, indexed: bool) -> dict[str, list[int]]:
        return {f: sorted(ds.to_table(filter=f, columns=["id"], use_scalar_index=indexed)["id"].to_pylist()) for f in filters}

    truth = answers(ds, False)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=10_000))
    assert report.reencoded_fragments == 3 and [i["remap"] for i in report.indices] == ["rewritten", "rewritten"]
    ds = lance.dataset(str(path))
    assert answers(ds, True) == truth
    assert unindexed(ds) == {"v_idx": 0, "s_idx": 0}
    assert all("ScalarIndexQuery" in ds.scanner(filter=f).explain_plan() for f in filters)


@pytest.mark.parametrize(
    ("stable", "kind", "why"), [(False, "IVF_HNSW_FLAT", "changed fragments"), (True, "IVF_PQ", "plan again")]
)
def test_index_created_after_planning_refuses_the_row_drop(tmp_path: Path, stable: bool, kind: str, why: str) -> None:
    """A heavily deleted group planned for a re-encode, then an index that must keep those
    rows (HNSW; any vector index with stable row ids, where an index build does not conflict
    with a rewrite) created over it before the commit: the commit refuses and the dataset
    stays exactly as it was; planned again, the rows are kept."""
    from lance_assets.engine import commit_compaction, execute_task, plan_compaction
    from lance_assets.errors import CommitConflictError
    from tests.support.assertions import tree_digest

    path = tmp_path / "ds.lance"
    factory.appends(path, "2.2", [100] * 4, make=vectors, enable_stable_row_ids=stable)
    lance.dataset(str(path)).delete("id % 5 = 1")
    plan = plan_compaction(str(path))
    assert plan.tasks and all(t.reencode for t in plan.tasks)
    results = [execute_task(plan.uri, plan, t) for t in plan.tasks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).create_index("vec", kind, num_partitions=2, **({"num_sub_vectors": 2} if "PQ" in kind else {}))
    before = tree_digest(path)
    with pytest.raises(CommitConflictError, match=why):
        commit_compaction(plan.uri, plan, results)
    ours = {p for r in results for p in r.files_written}
    assert ours and tree_digest(path) == {k: v for k, v in before.items() if k not in ours}  # only our files went
    ds = lance.dataset(str(path))
    assert knn(ds) and ds.count_rows() == 320
    assert compact(str(path)).version == ds.version + 1  # planned again: the rows are kept
    assert len(knn(lance.dataset(str(path)))) == len(QUERIES)
