"""The compaction asset on a Ray cluster: plan and commit in the run, copies on Ray workers."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import lance
import pytest

from lance_assets.dagster import LanceRay, build_lance_compaction_defs
from tests.support.dagster import compaction_config, make_dataset

ray = pytest.importorskip("ray")


def test_compaction_asset_runs_tasks_on_ray(root: Path, instance: dg.DagsterInstance, ray_cluster: None) -> None:
    a = root / "a.lance"
    make_dataset(a, 12)
    before = lance.dataset(str(a)).to_table()
    defs = build_lance_compaction_defs("t", root=str(root), partitioning=dg.StaticPartitionsDefinition(["a"]), runner="ray")
    assert isinstance(defs.resources["lance_ray"], LanceRay)
    config = compaction_config(max_rows_per_file=before.num_rows // 3)
    result = defs.resolve_job_def("t_compaction").execute_in_process(run_config=config, instance=instance, partition_key="a")
    assert result.success
    [mat] = [
        e.event_specific_data.materialization  # type: ignore[union-attr]
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key == dg.AssetKey(["t", "compacted"])
    ]
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["runner"] == "ray" and meta["tasks"] == 3 and meta["workers"] >= 1 and meta["task_retries"] == 0
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message and e.message.startswith("task ")]
    assert len(logs) == 3
    ds = lance.dataset(str(a))
    assert len(ds.get_fragments()) == 3 and ds.to_table().equals(before)
