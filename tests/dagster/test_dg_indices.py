"""The compaction asset keeps indices useful and shows it: index coverage and reuse versions
are metadata, and the upkeep step (pylance's optimize_indices, then the trim) runs after it."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg
import lance

from lance_assets.dagster import build_lance_compaction_defs
from tests.support.dagster import append, compaction_config, make_dataset


def _materialization(result: dg.ExecuteInProcessResult) -> dict:
    [mat] = [
        e.event_specific_data.materialization  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key is not None and e.asset_key.path[-1] == "compacted"
    ]
    return {k: v.value for k, v in mat.metadata.items()}


def _indexed(path: Path) -> None:
    make_dataset(path, 6)
    ds = lance.dataset(str(path))
    ds.create_scalar_index("id", "BTREE")
    append(path, 2)  # rows no index covers yet


def test_compaction_keeps_index_coverage_and_upkeep_indexes_the_rest(root: Path, instance: dg.DagsterInstance) -> None:
    a = root / "a.lance"
    _indexed(a)
    defs = build_lance_compaction_defs("t", root=str(root), partitioning=dg.StaticPartitionsDefinition(["a"]))
    job = defs.resolve_job_def("t_compaction")
    result = job.execute_in_process(run_config=compaction_config(), instance=instance, partition_key="a")
    assert result.success
    meta = _materialization(result)
    assert meta["unindexed_rows_before"] > 0 and meta["unindexed_rows_after"] == 0
    assert meta["reuse_versions"] == 0  # the only index, a BTree, is rewritten on the new addresses
    assert [(i["name"], i["remap"], i["covers_output"]) for i in meta["indices"]] == [("id_idx", "rewritten", True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = lance.dataset(str(a))
        assert ds.stats.index_stats("id_idx")["num_unindexed_rows"] == 0


def test_upkeep_can_be_turned_off(root: Path, instance: dg.DagsterInstance) -> None:
    a = root / "a.lance"
    _indexed(a)
    defs = build_lance_compaction_defs("t", root=str(root), partitioning=dg.StaticPartitionsDefinition(["a"]))
    job = defs.resolve_job_def("t_compaction")
    config = compaction_config(optimize_indices=False, index_remap="drop")
    result = job.execute_in_process(run_config=config, instance=instance, partition_key="a")
    assert result.success
    meta = _materialization(result)
    assert meta["unindexed_rows_after"] > meta["unindexed_rows_before"] > 0  # dropped, not re-indexed
    assert meta["reuse_versions"] == 0
