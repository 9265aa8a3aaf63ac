"""Every index kind pylance 14 builds, after every way our compaction changes rows (issue 26).

One dataset per case holds every scalar kind and one vector kind, and one compaction changes
its rows all three ways at once: a heavily deleted group is re-encoded (deleted rows dropped,
unless an index needs them kept), a lightly deleted group is binary-copied with its deletions
carried, an untouched group is binary-copied. pylance then answers every indexed query: exact
kinds exactly as a scan without indices does, the vector index with at least the recall it
had before, and ``index_statistics`` counts no unindexed row. Default run: every vector kind,
with and without stable row ids, file versions rotated, and legacy (0.x) files; ``-m slow``
runs every version.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.options import CompactionOptions
from tests.engine.test_indices import index_nodes
from tests.support import factory
from tests.support.assertions import assert_reads_every_way

DIM = 8
ROWS = 60  # per append; 9 appends, three groups of three
SCALAR = {
    "id": "BTREE",
    "z": "ZONEMAP",
    "cat": "BITMAP",
    "tags": "LABEL_LIST",
    "txt": "INVERTED",
    "txt2": "NGRAM",
    "b": "BLOOMFILTER",
}
VECTOR_KINDS = ["IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_HNSW_FLAT"]
VERSIONS = ["2.0", "2.1", "2.2", "2.3"]
FILTERS = [
    "id = 5",
    "id >= 150 AND id < 400",
    "z >= 300 AND z < 900",
    "z IS NULL",
    "z IS NOT NULL AND z < 200",
    "b IN (7, 700, 2107, 3395)",
    "cat = 'c3'",
    "array_has_any(tags, ['t4'])",
    "contains(txt2, 'ab12c')",
    "id > 100000",
]
QUERIES = [np.random.default_rng(100 + k).standard_normal(DIM).astype(np.float32) for k in range(5)]


def table(start: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(start)
    ids = np.arange(start, start + rows, dtype=np.int64)
    return pa.table(
        {
            "id": pa.array(ids),
            "z": pa.array([None if i % 17 == 5 else 3 * i for i in ids], pa.int64()),  # null rows: kept by address
            "b": pa.array(ids * 7),
            "cat": pa.array([f"c{i % 5}" for i in ids]),
            "tags": pa.array([[f"t{i % 7}", f"t{i % 3}"] for i in ids], pa.list_(pa.string())),
            "txt": pa.array([f"w{i % 11} x{i}" for i in ids]),
            "txt2": pa.array([f"ab{i % 13}cd" for i in ids]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * DIM).astype(np.float32)), DIM),
        }
    )


def build(path: Path, version: str, vector: str, stable: bool) -> lance.LanceDataset:
    ds = factory.appends(path, version, [ROWS] * 9, make=table, enable_stable_row_ids=stable)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for column, kind in SCALAR.items():
            ds.create_scalar_index(column, kind, name=f"{column}_idx")
        params = {"num_sub_vectors": 2} if "PQ" in vector else {}
        ds.create_index("vec", vector, name="vec_idx", num_partitions=2, **params)
    ds = lance.dataset(str(path))
    ds.delete(f"id < {3 * ROWS} AND id % 4 = 1")  # 25%: over the threshold
    ds = lance.dataset(str(path))
    ds.delete(f"id >= {3 * ROWS} AND id < {6 * ROWS} AND id % 30 = 7")  # ~3%: carried
    return lance.dataset(str(path))


def exact_answers(ds: lance.LanceDataset, *, indexed: bool) -> dict[str, list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {f: sorted(ds.to_table(filter=f, columns=["id"], use_scalar_index=indexed)["id"].to_pylist()) for f in FILTERS}
        if indexed:
            out["fts x77"] = sorted(ds.to_table(full_text_query="x77", columns=["id"])["id"].to_pylist())
            out["fts w3"] = sorted(ds.to_table(full_text_query="w3", columns=["id"])["id"].to_pylist())
        else:  # the words the full-text index answers, found here
            ids = ds.to_table(columns=["id"])["id"].to_pylist()
            out["fts x77"] = sorted(i for i in ids if i == 77)
            out["fts w3"] = sorted(i for i in ids if i % 11 == 3)
    return out


def recall(ds: lance.LanceDataset) -> float:
    t = ds.to_table(columns=["id", "vec"])
    ids = np.asarray(t["id"])
    vecs = np.asarray(t["vec"].combine_chunks().flatten()).reshape(-1, DIM)
    hits = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for q in QUERIES:
            truth = set(ids[np.argsort(((vecs - q) ** 2).sum(1), kind="stable")[:10]].tolist())
            got = ds.to_table(nearest={"column": "vec", "q": q, "k": 10, "nprobes": 2}, columns=["id", "_distance"])
            assert got.num_rows == 10
            hits += len(set(got["id"].to_pylist()) & truth)
    return hits / (10 * len(QUERIES))


def unindexed(ds: lance.LanceDataset) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            i["name"]: ds.stats.index_stats(i["name"])["num_unindexed_rows"]
            for i in ds.list_indices()
            if not i["name"].startswith("__")
        }


def check(path: Path, version: str, vector: str, stable: bool) -> None:
    ds = build(path, version, vector, stable)
    truth = exact_answers(ds, indexed=False)
    assert exact_answers(ds, indexed=True) == truth  # the judge agrees with itself before
    plans = {f: index_nodes(ds, f) for f in FILTERS}
    assert all(plans.values())  # every kind is used
    recall_before, rows, start = recall(ds), ds.to_table(), ds.version
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=3 * ROWS))
    assert report.tasks == 3
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 3
    assert_reads_every_way(path, rows)
    assert exact_answers(ds, indexed=True) == truth
    assert {f: index_nodes(ds, f) for f in FILTERS} == plans  # answered through the same indices
    assert recall(ds) >= recall_before
    assert unindexed(ds) == {n: 0 for n in [*(f"{c}_idx" for c in SCALAR), "vec_idx"]}
    # one version, every index kind included (zone maps and bloom filters too, issue 26 item 3)
    assert report.committed_versions == [start + 1] and ds.version == start + 1
    if stable:  # zone maps and bloom filters are relocated onto the new fragments, as BTrees are
        assert {i["name"]: i["remap"] for i in report.indices} == {
            **{f"{c}_idx": "rewritten" for c in ("id", "z", "b")},
            **{f"{c}_idx": "moved" for c in ("cat", "tags", "txt", "txt2", "vec")},
        }
    else:
        assert {i["name"]: i["remap"] for i in report.indices} == {
            f"{c}_idx": "rewritten" if k == "BTREE" else "reuse_index" for c, k in {**SCALAR, "vec": "VECTOR"}.items()
        }


DEFAULT = [
    (VERSIONS[i % len(VERSIONS)], vector, stable)
    for i, (vector, stable) in enumerate(itertools.product(VECTOR_KINDS, [False, True]))
] + [("legacy", "IVF_HNSW_SQ", False), ("legacy", "IVF_PQ", False)]  # legacy (0.x) files: no stable row ids


@pytest.mark.parametrize(("version", "vector", "stable"), DEFAULT)
def test_every_index_kind_answers_after_compaction(tmp_path: Path, version: str, vector: str, stable: bool) -> None:
    check(tmp_path / "ds.lance", version, vector, stable)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("version", "vector", "stable"),
    [
        c
        for c in [*itertools.product(VERSIONS, VECTOR_KINDS, [False, True]), *(("legacy", v, False) for v in VECTOR_KINDS)]
        if c not in DEFAULT
    ],
)
def test_every_index_kind_answers_after_compaction_all_versions(tmp_path: Path, version: str, vector: str, stable: bool) -> None:
    check(tmp_path / "ds.lance", version, vector, stable)


@pytest.mark.parametrize(("version", "stable"), [("2.1", False), ("2.2", True), ("2.3", False)])
def test_indices_over_blob_columns(tmp_path: Path, version: str, stable: bool) -> None:
    """Blob datasets (v1 in 2.1, v2 in 2.2+): their groups are always binary-copied, deleted
    rows carried; the BTree is rewritten, the bitmap index keeps covering, answers exact."""
    from tests.support import blobs

    path = tmp_path / "ds.lance"
    if version == "2.1":
        ds = blobs.v1_appends(path, version, [40] * 6, enable_stable_row_ids=stable)
    else:
        ds = blobs.v2_appends(path, version, [40] * 6, enable_stable_row_ids=stable)
    ds.create_scalar_index("id", "BTREE", name="id_idx")
    ds.create_scalar_index("tag", "BITMAP", name="tag_idx")
    ds = lance.dataset(str(path))
    ds.delete("id % 4 = 1")  # over the threshold: kept as deletion files (blob groups are never re-encoded)
    ds = lance.dataset(str(path))
    filters = ["id = 6", "id >= 50 AND id < 170", "tag = 't3'", "tag = 't1' AND id > 100"]

    def answers(ds: lance.LanceDataset, indexed: bool) -> dict[str, list[int]]:
        return {f: sorted(ds.to_table(filter=f, columns=["id"], use_scalar_index=indexed)["id"].to_pylist()) for f in filters}

    truth = answers(ds, False)
    report = compact(str(path), CompactionOptions())
    assert report.committed_versions == [ds.version + 1]
    assert {i["name"]: i["remap"] for i in report.indices} == {
        "id_idx": "rewritten",
        "tag_idx": "moved" if stable else "reuse_index",
    }
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1
    assert answers(ds, True) == truth
    assert unindexed(ds) == {"id_idx": 0, "tag_idx": 0}
    assert blobs.blobs_by_take(ds, "blob", indices=[0, 5, 100]) == blobs.blobs_by_take(
        lance.dataset(str(path), version=ds.version - 1), "blob", indices=[0, 5, 100]
    )
