"""Indices after our compaction: as useful to pylance as after its own (``defer_index_remap``).

Every test builds a real indexed dataset with pylance, compacts it with lance_assets and asks
pylance what a user would: index statistics, query plans, and the answers of each kind of
query, compared with the answers before and with pylance's own compaction of a copy.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets._proto import table_pb2
from lance_assets.cli import main
from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.indices import (
    REUSE_INDEX_NAME,
    index_coverage,
    load_reuse_versions,
    reuse_index_meta,
)
from lance_assets.engine.maintenance.index_upkeep import maintain_indices, trim_reuse_index
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import CorruptFileError, UnsupportedFeatureError
from lance_assets.format import manifest as mf
from lance_assets.format.roaring import decode_treemap
from tests.support import factory
from tests.support.assertions import tree_digest

SCALAR = {"id_idx": "BTREE", "cat_idx": "BITMAP", "tags_idx": "LABEL_LIST", "txt_idx": "INVERTED", "txt2_idx": "NGRAM"}
VECTOR = {"vec_idx": "IVF_PQ"}
DIM = 8


def table(start: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(start)
    ids = np.arange(start, start + rows, dtype=np.int64)
    return pa.table(
        {
            "id": pa.array(ids),
            "cat": pa.array([f"c{i % 5}" for i in ids]),
            "tags": pa.array([[f"t{i % 7}", f"t{i % 3}"] for i in ids], pa.list_(pa.string())),
            "txt": pa.array([f"w{i % 11} x{i}" for i in ids]),
            "txt2": pa.array([f"ab{i % 13}cd" for i in ids]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * DIM).astype(np.float32)), DIM),
        }
    )


def indexed(
    path: Path, version: str, sizes: list[int], *, vector: bool = True, unindexed: list[int] = (), **kwargs: Any
) -> lance.LanceDataset:
    """Small appends, some deleted rows, every index kind, then appends no index covers yet."""
    ds = factory.appends(path, version, sizes, make=table, **kwargs)
    ds.delete("id % 17 = 3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kind in SCALAR.items():
            ds.create_scalar_index(name.removesuffix("_idx"), kind, name=name)
        if vector:
            ds.create_index("vec", "IVF_PQ", name="vec_idx", num_partitions=2, num_sub_vectors=2)
    start = sum(sizes)
    for n in unindexed:
        factory.write(table(start, n), path, version)
        start += n
    return lance.dataset(str(path))


QUERY_VECTORS = [np.random.default_rng(k).standard_normal(DIM).astype(np.float32) for k in range(4)]
FILTERS = [
    "id = 5",
    "id >= 290 AND id < 320",
    "cat = 'c3'",
    "array_has_any(tags, ['t4'])",
    "contains(txt2, 'ab12c')",
    "id > 100000",
]


def answers(ds: lance.LanceDataset, vector: bool = True) -> dict[str, Any]:
    """What a user's queries return (scalar and full-text exactly, as id sets)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out: dict[str, Any] = {f: sorted(ds.to_table(filter=f, columns=["id"])["id"].to_pylist()) for f in FILTERS}
        out["fts"] = sorted(ds.to_table(full_text_query="x77", columns=["id"])["id"].to_pylist())
        out["fts_word"] = sorted(ds.to_table(full_text_query="w3", columns=["id"])["id"].to_pylist())
        if vector:
            out["flat"] = [
                sorted(
                    ds.to_table(nearest={"column": "vec", "q": q, "k": 10, "use_index": False}, columns=["id"])["id"].to_pylist()
                )
                for q in QUERY_VECTORS
            ]
    return out


def knn(ds: lance.LanceDataset) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            ds.to_table(nearest={"column": "vec", "q": q, "k": 10, "nprobes": 2}, columns=["id"])["id"].to_pylist()
            for q in QUERY_VECTORS
        ]


def unindexed_rows(ds: lance.LanceDataset, names: list[str]) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {n: ds.stats.index_stats(n)["num_unindexed_rows"] for n in names}


def plan_text(ds: lance.LanceDataset, flt: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.scanner(filter=flt).explain_plan()


def index_nodes(ds: lance.LanceDataset, flt: str) -> list[str]:
    """The plan's index operators (``ScalarIndexQuery``, ``MaterializeIndex`` ...), e.g.
    ``ScalarIndexQuery: query=[id = 5]@id_idx(BTree)``."""
    return [line.strip() for line in plan_text(ds, flt).splitlines() if "Index" in line.split(":")[0]]


def every_version_reads(path: Path) -> None:
    ds = lance.dataset(str(path))
    for v in ds.versions():
        old = lance.dataset(str(path), version=v["version"])
        old.to_table()


@pytest.mark.parametrize("version", ["legacy", "2.0", "2.1", "2.2"])
def test_indices_keep_covering_merged_rows(tmp_path: Path, version: str) -> None:
    """Unindexed rows, index plans and every query's answer are as before, and the vector
    top-k equals pylance's own deferred-remap compaction of a copy."""
    path = tmp_path / "ds.lance"
    names = [*SCALAR, *VECTOR]
    ds = indexed(path, version, [100] * 8, unindexed=[60, 60])
    theirs = tmp_path / "theirs.lance"
    shutil.copytree(path, theirs)
    before, stats_before = answers(ds), unindexed_rows(ds, names)
    plans = {f: index_nodes(ds, f) for f in FILTERS}
    assert all(v == 120 for v in stats_before.values())
    assert any("@id_idx" in node for node in plans["id = 5"])

    report = compact(str(path), CompactionOptions(target_rows_per_fragment=2000, reencode_fallback=False))
    assert report.fragments_removed == 10 and report.fragments_added == 2
    assert {i["name"]: (i["remap"], i["covers_output"]) for i in report.indices} == {
        n: ("rewritten" if n == "id_idx" else "reuse_index", True) for n in names
    }
    ds = lance.dataset(str(path))
    assert unindexed_rows(ds, names) == stats_before
    assert {f: index_nodes(ds, f) for f in FILTERS} == plans  # the same index operators as before
    assert answers(ds) == before
    assert ds.validate() is None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(theirs)).optimize.compact_files(
            target_rows_per_fragment=2000, defer_index_remap=True, materialize_deletions=False
        )
    assert knn(ds) == knn(lance.dataset(str(theirs)))

    # The reuse record maps exactly the rows the merged fragments hold.
    d = Dataset.open(str(path))
    (reuse,) = load_reuse_versions(d, reuse_index_meta(d))
    assert reuse.dataset_version == d.version - 1
    for group in reuse.groups:
        assert len(decode_treemap(group.changed_row_addrs)) == sum(f.physical_rows for f in group.new_fragments)
        assert sum(f.physical_rows for f in group.old_fragments) == sum(f.physical_rows for f in group.new_fragments)


@pytest.mark.parametrize("version", ["2.1"])
def test_reencoded_groups_map_deleted_rows_away(tmp_path: Path, version: str) -> None:
    """A group re-encoded by pylance drops its deleted rows; the record maps only the live ones."""
    path = tmp_path / "ds.lance"
    ds = indexed(path, version, [100] * 6, vector=False)
    ds.delete("id >= 100 AND id < 130")  # 30 % of fragment 1: over the threshold
    ds = lance.dataset(str(path))
    before, stats = answers(ds, vector=False), unindexed_rows(ds, list(SCALAR))
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=2000))
    assert report.reencoded_fragments == 6
    ds = lance.dataset(str(path))
    assert answers(ds, vector=False) == before
    assert unindexed_rows(ds, list(SCALAR)) == stats
    d = Dataset.open(str(path))
    (group,) = load_reuse_versions(d, reuse_index_meta(d))[0].groups
    live = sum(f.physical_rows - f.num_deleted_rows for f in group.old_fragments)
    assert len(decode_treemap(group.changed_row_addrs)) == live == group.new_fragments[0].physical_rows


def _append_and_index(path: Path, starts: tuple[int, ...]) -> lance.LanceDataset:
    """pylance appends 100 rows per start, then indexes them (``optimize_indices``)."""
    for start in starts:
        factory.write(table(start, 100), path, "2.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.optimize_indices()
    return lance.dataset(str(path))


def test_pylance_keeps_working_after_two_compactions(tmp_path: Path) -> None:
    """Ours, then pylance's own deferred compaction, then ours again: three reuse versions;
    pylance appends, deletes, optimizes and cleans up, and every version still reads."""
    path = tmp_path / "ds.lance"
    indexed(path, "2.1", [100] * 6, vector=False)
    names = list(SCALAR)
    compact(str(path), CompactionOptions(target_rows_per_fragment=350))
    ds = _append_and_index(path, (5000, 5100, 5200))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.optimize.compact_files(target_rows_per_fragment=350, defer_index_remap=True)
    ds = _append_and_index(path, (6000, 6100, 6200, 6300))
    before, stats = answers(ds, vector=False), unindexed_rows(ds, names)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=350))
    assert report.version is not None and any(i["remap"] == "reuse_index" for i in report.indices)
    d = Dataset.open(str(path))
    assert len(load_reuse_versions(d, reuse_index_meta(d))) >= 3
    ds = lance.dataset(str(path))
    assert answers(ds, vector=False) == before and unindexed_rows(ds, names) == stats
    ds.delete("id = 5")
    factory.write(table(9000, 10), path, "2.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = lance.dataset(str(path))
        ds.optimize.optimize_indices()
        ds.optimize.compact_files(target_rows_per_fragment=100000)
    ds = lance.dataset(str(path))
    before.update({"id = 5": []})
    after = answers(ds, vector=False)
    assert {k: [i for i in v if i < 9000] for k, v in after.items()} == before
    ds.cleanup_old_versions(older_than=__import__("datetime").timedelta(seconds=0))
    every_version_reads(path)


def test_external_reuse_content(tmp_path: Path) -> None:
    """A mapping over Lance's inline limit goes to _indices/<uuid>/details.binpb, read by pylance."""
    path = tmp_path / "ds.lance"
    ids = np.arange(300_000, dtype=np.int64)
    factory.write(pa.table({"id": pa.array(ids), "v": pa.array(ids % 97)}), path, "2.1", mode="create", max_rows_per_file=1000)
    ds = lance.dataset(str(path))
    ds.delete("id % 2 = 0")  # re-encoded groups keep every other row: no runs, large treemaps
    ds.create_scalar_index("id", "BTREE")  # rewritten on the new addresses: needs no reuse version
    ds.create_scalar_index("v", "BITMAP")  # keeps covering through the reuse index
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 300
    queries = ("id = 5", "id = 299999", "id > 150000 AND id < 150010", "v = 5", "v = 96 AND id < 20000")
    before = {q: ds.to_table(filter=q)["id"].to_pylist() for q in queries}
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=1_000_000))
    assert report.reencoded_fragments == 300
    d = Dataset.open(str(path))
    meta = reuse_index_meta(d)
    details = table_pb2.FragmentReuseIndexDetails()
    details.ParseFromString(meta.index_details.value)
    assert details.WhichOneof("content") == "external"
    assert (
        path / "_indices" / str(__import__("uuid").UUID(bytes=meta.uuid.uuid)) / "details.binpb"
    ).stat().st_size == details.external.size
    ds = lance.dataset(str(path))
    assert {q: ds.to_table(filter=q)["id"].to_pylist() for q in before} == before
    assert unindexed_rows(ds, ["id_idx", "v_idx"]) == {"id_idx": 0, "v_idx": 0}
    assert any("@id_idx" in node for node in index_nodes(ds, "id = 5"))
    assert any("@v_idx" in node for node in index_nodes(ds, "v = 5"))
    assert {i["name"]: i["remap"] for i in report.indices} == {"id_idx": "rewritten", "v_idx": "reuse_index"}


def test_stable_row_ids_keep_coverage_in_one_commit(tmp_path: Path) -> None:
    """pylance refuses a reuse index with stable row ids. As in Lance's own compaction there,
    the row-id keyed indices keep their files and cover the new fragments, and the BTree
    (keyed by row address) is rewritten on the new addresses -- all in our one commit."""
    path = tmp_path / "ds.lance"
    ds = indexed(path, "2.2", [100] * 5, vector=False, enable_stable_row_ids=True)
    before, ids_before = answers(ds, vector=False), ds.to_table(columns=["id"], with_row_id=True)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=1000))
    assert {i["name"]: i["remap"] for i in report.indices} == {
        n: "rewritten" if k == "BTREE" else "moved" for n, k in SCALAR.items()
    }
    assert all(i["covers_output"] for i in report.indices)
    assert len(report.committed_versions) == 1 and report.version == ds.version + 1
    ds = lance.dataset(str(path))
    assert answers(ds, vector=False) == before
    assert unindexed_rows(ds, list(SCALAR)) == {n: 0 for n in SCALAR}
    assert ds.to_table(columns=["id"], with_row_id=True).sort_by("id").equals(ids_before.sort_by("id"))
    assert reuse_index_meta(Dataset.open(str(path))) is None


def test_index_remap_drop_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--index-remap drop`` keeps the old behaviour: rewritten fragments become unindexed."""
    path = tmp_path / "ds.lance"
    indexed(path, "2.1", [100] * 4, vector=False)
    assert main(["compact", str(path), "--json", "--index-remap", "drop"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {i["remap"] for i in out["indices"]} == {"dropped"}
    ds = lance.dataset(str(path))
    assert unindexed_rows(ds, ["id_idx"]) == {"id_idx": 400 - len([i for i in range(400) if i % 17 == 3])}
    assert reuse_index_meta(Dataset.open(str(path))) is None


def _rewrite_reuse_details(path: Path, mutate: Any) -> None:
    """Change the latest manifest's reuse index in place (a damaged or newer dataset)."""
    d = Dataset.open(str(path))
    section = table_pb2.IndexSection()
    section.CopyFrom(d.file.index_section)
    for meta in section.indices:
        if meta.name == REUSE_INDEX_NAME:
            mutate(meta)
    data = mf.build_manifest_file(d.manifest, d.file.transaction, section)
    (path / d.location.rel_path).write_bytes(data)


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda m: setattr(m.index_details, "value", b"\x0a\x05\x0a\x03\xff\xff"), CorruptFileError),
        (lambda m: setattr(m.index_details, "value", m.index_details.value + b"\xa0\x06\x01"), UnsupportedFeatureError),
        (lambda m: setattr(m.index_details, "value", b"\x1a\x00"), UnsupportedFeatureError),
    ],
    ids=["corrupt", "newer-field", "unknown-content"],
)
def test_damaged_reuse_index_refuses(tmp_path: Path, damage: Any, error: type[Exception]) -> None:
    path = tmp_path / "ds.lance"
    indexed(path, "2.1", [100] * 4, vector=False)
    compact(str(path), CompactionOptions(target_rows_per_fragment=250))
    factory.write(table(1000, 50), path, "2.1")
    factory.write(table(1050, 50), path, "2.1")
    _rewrite_reuse_details(path, damage)
    digest = tree_digest(path)
    with pytest.raises(error):
        compact(str(path), CompactionOptions(target_rows_per_fragment=1000))
    with pytest.raises(error):
        plan_compaction(str(path))
    assert tree_digest(path) == digest


def test_commit_every_writes_one_reuse_version_per_commit(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    ds = indexed(path, "2.1", [100] * 6, vector=False)
    before = answers(ds, vector=False)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=200, commit_every=1))
    assert len(report.committed_versions) == 3
    d = Dataset.open(str(path))
    versions = load_reuse_versions(d, reuse_index_meta(d))
    assert [v.dataset_version for v in versions] == [v - 1 for v in report.committed_versions]
    ds = lance.dataset(str(path))
    assert answers(ds, vector=False) == before
    assert unindexed_rows(ds, ["id_idx", "txt_idx"]) == {"id_idx": 0, "txt_idx": 0}


def test_trim_follows_lances_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reuse version goes only once every index was built at or after it and names none of
    its old fragments. pylance's optimize_indices merges keep an index's original
    ``dataset_version``, so (as with Lance's own trim) only rebuilt indices release it."""
    path = tmp_path / "ds.lance"
    ds = indexed(path, "2.1", [100] * 4, vector=False)
    before = answers(ds, vector=False)
    compact(str(path), CompactionOptions(target_rows_per_fragment=1000))
    assert trim_reuse_index(str(path)).reuse_versions_after == 1  # indices still hold old addresses
    factory.write(table(400, 50), path, "2.1")
    before = answers(lance.dataset(str(path)), vector=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.optimize_indices(num_indices_to_merge=1)
    assert trim_reuse_index(str(path)).committed_versions == []
    ds = lance.dataset(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kind in SCALAR.items():
            ds.create_scalar_index(name.removesuffix("_idx"), kind, name=name, replace=True)
    dry = trim_reuse_index(str(path), dry_run=True)
    assert (dry.reuse_versions_before, dry.reuse_versions_after, dry.committed_versions) == (1, 0, [])
    assert main(["cleanup", str(path), "--json", "--older-than", "0s", "--orphans-only"]) == 0
    assert json.loads(capsys.readouterr().out)["reuse_versions_trimmed"] == 1
    d = Dataset.open(str(path))
    assert load_reuse_versions(d, reuse_index_meta(d)) == []
    ds = lance.dataset(str(path))
    assert answers(ds, vector=False) == before
    assert all(c.unindexed_rows == 0 for c in index_coverage(d))
    every_version_reads(path)


def test_maintain_indices_reports_coverage(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    indexed(path, "2.1", [100] * 4, vector=False, unindexed=[50])
    compact(str(path), CompactionOptions(target_rows_per_fragment=1000, index_remap="drop"))
    report = maintain_indices(str(path))
    assert report.optimized and report.unindexed_rows_before > 0 and report.unindexed_rows_after == 0
    ds = lance.dataset(str(path))
    assert unindexed_rows(ds, list(SCALAR)) == {n: 0 for n in SCALAR}


def test_concurrent_deferred_compaction_is_rebased(tmp_path: Path) -> None:
    """pylance commits its own reuse version between our plan and our commit, on other
    fragments: ours is appended to its reuse index (neither lost nor overwriting it)."""
    from lance_assets.engine.committing.commit import commit_compaction
    from lance_assets.engine.copying.copy import execute_task

    path = tmp_path / "ds.lance"
    ds = indexed(path, "2.1", [300, 300, 300, 1000, 100, 100, 100], vector=False)
    before = answers(ds, vector=False)
    their_ids = [4, 5, 6]  # the only fragments under pylance's smaller target
    plan = plan_compaction(
        str(path), CompactionOptions(target_rows_per_fragment=1000, excluded_fragment_ids=frozenset(their_ids))
    )
    assert [list(t.fragment_ids) for t in plan.tasks] == [[0, 1, 2]]
    ours = [execute_task(str(path), plan, t) for t in plan.tasks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = ds.optimize.compact_files(target_rows_per_fragment=250, defer_index_remap=True)
    assert metrics.fragments_removed == 3
    report = commit_compaction(str(path), plan, ours)
    assert report.version is not None
    d = Dataset.open(str(path))
    groups = [[f.id for f in g.old_fragments] for v in load_reuse_versions(d, reuse_index_meta(d)) for g in v.groups]
    assert sorted(groups) == sorted([their_ids, *(list(t.fragment_ids) for t in plan.tasks)])
    ds = lance.dataset(str(path))
    assert answers(ds, vector=False) == before
    assert unindexed_rows(ds, ["id_idx", "txt_idx"]) == {"id_idx": 0, "txt_idx": 0}


def test_hnsw_index_and_multi_file_fragments(tmp_path: Path) -> None:
    """An IVF_HNSW_SQ index over fragments that gained a column file (``add_columns``): the
    reuse record maps rows, not files, so both keep answering as before."""
    path = tmp_path / "ds.lance"
    ds = factory.appends(path, "2.1", [100] * 5, make=table)
    ds.add_columns({"twice": "id * 2"})
    ds = lance.dataset(str(path))
    assert all(len(f.data_files()) == 2 for f in ds.get_fragments())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_HNSW_SQ", name="vec_idx", num_partitions=2)
        ds.create_scalar_index("twice", "BTREE", name="twice_idx")
    ds = lance.dataset(str(path))
    before = knn(ds), sorted(ds.to_table(filter="twice = 84", columns=["id"])["id"].to_pylist())
    stats = unindexed_rows(ds, ["vec_idx", "twice_idx"])
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=1000))
    assert {i["name"]: i["remap"] for i in report.indices} == {"vec_idx": "reuse_index", "twice_idx": "rewritten"}
    ds = lance.dataset(str(path))
    assert len(ds.get_fragments()) == 1 and unindexed_rows(ds, ["vec_idx", "twice_idx"]) == stats
    assert (knn(ds), sorted(ds.to_table(filter="twice = 84", columns=["id"])["id"].to_pylist())) == before
