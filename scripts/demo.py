"""The main job on an embedded default: sensor-driven compaction through Dagster.

1. Builds two demo datasets under ``demo-data/datasets`` with pylance through
   many small appends (the shape streaming writers leave behind).
2. Uses a local Dagster instance (SQLite under ``.dagster_home``) and the
   example definitions in ``examples/definitions.py``: the discovery sensor
   adds a partition per dataset, the small-fragment sensor records the
   fragments, the compacted asset's automation condition requests compaction
   (what ``demo_automation_sensor`` does under ``dagster dev``), and each
   requested run materializes the compaction asset with its checks — except one
   dataset, left for ``dagster dev``'s automation sensor to compact in front of the user.
3. Prints the datasets before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo-data" / "datasets"
DAGSTER_HOME = ROOT / ".dagster_home"
#: The dataset the headless loop leaves fragmented, so that within a minute of `dagster dev`
#: the automation sensor compacts it where the user can watch.
LEFT_FOR_UI = "clicks"
DAGSTER_YAML = """\
# Local demo instance: SQLite storage under this folder.
# One run per dataset at a time: every run of a partition carries dagster/partition (the
# dataset), however it was launched (UI, backfill, sensor, schedule); runs of unpartitioned
# families carry lance_assets/dataset.
concurrency:
  pools:
    default_limit: 2
  runs:
    tag_concurrency_limits:
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: lance_assets/dataset
        value:
          applyLimitPerUniqueValue: true
        limit: 1
telemetry:
  enabled: false
"""


def build_demo_dataset(path: Path, appends: int, rows_per_append: int) -> None:
    """``appends`` small fragments of a mixed schema, as a streaming writer would leave them."""
    import lance

    if path.exists():
        shutil.rmtree(path)
    for i in range(appends):
        start = i * rows_per_append
        ids = range(start, start + rows_per_append)
        batch = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "ts": pa.array([1_700_000_000_000_000 + j for j in ids], pa.timestamp("us", tz="UTC")),
                "user": pa.array([f"user-{j % 97}" for j in ids]),
                "score": pa.array([(j * 7919 % 1000) / 10 for j in ids], pa.float64()),
                "tags": pa.array([[f"t{j % 5}", f"t{j % 3}"] for j in ids], pa.list_(pa.string())),
            }
        )
        lance.write_dataset(batch, str(path), mode="append" if i else "create")


def _load_defs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("demo_definitions", ROOT / "examples" / "definitions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


def _summary(label: str, uri: Path) -> None:
    from lance_assets.engine.maintenance.inspect import inspect_dataset

    r = inspect_dataset(str(uri))
    s = r.summary
    print(
        f"  {label:<7} {uri.name:<14} version {r.version:>4}  fragments {s.fragments:>4}  small {s.small_fragments:>4}  rows {s.rows:>8,}  bytes {s.bytes:>10,}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=200, help="small appends for the larger dataset")
    parser.add_argument("--rows-per-append", type=int, default=500)
    args = parser.parse_args()

    DATA.mkdir(parents=True, exist_ok=True)
    datasets = {"events": (args.appends, args.rows_per_append), "clicks": (max(20, args.appends // 4), args.rows_per_append)}
    for name, (appends, rows) in datasets.items():
        print(f"building {name}.lance: {appends} appends of {rows} rows")
        build_demo_dataset(DATA / f"{name}.lance", appends, rows)

    # A fresh instance for fresh datasets: runs, records and cool-downs of an earlier demo
    # describe datasets that no longer exist.
    if DAGSTER_HOME.exists():
        shutil.rmtree(DAGSTER_HOME)
    DAGSTER_HOME.mkdir()
    (DAGSTER_HOME / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(DAGSTER_HOME)
    os.environ["LANCE_ASSETS_ROOT"] = str(DATA)

    import dagster as dg

    defs = _load_defs()
    instance = dg.DagsterInstance.get()
    print(f"\nDagster instance at {DAGSTER_HOME} (SQLite)")
    print("before:")
    for name in datasets:
        _summary("before", DATA / f"{name}.lance")

    discovery = defs.resolve_sensor_def("demo_dataset_discovery_sensor")
    result = discovery.evaluate_tick(
        dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources, sensor_name=discovery.name)
    )
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    print(f"\ndiscovery sensor: partitions {instance.get_dynamic_partitions('demo_datasets')}")

    sensor = defs.resolve_sensor_def("demo_small_fragments_sensor")
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources, sensor_name=sensor.name)
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        result = sensor.evaluate_tick(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    print(f"small-fragment sensor: {len(result.asset_events)} fragment records")

    # What demo_automation_sensor does on each tick: evaluate the compacted asset's automation
    # condition over those records, then launch a run per requested dataset.
    compacted = dg.AssetSelection.assets(dg.AssetKey(["demo", "compacted"]))
    automation = dg.evaluate_automation_conditions(defs, instance, asset_selection=compacted)
    requested = sorted(automation.get_requested_partitions(dg.AssetKey(["demo", "compacted"])))
    print(f"automation condition: {automation.total_requested} run requests {requested}")
    job = defs.resolve_job_def("demo_compaction")
    for partition_key in requested:
        if partition_key == LEFT_FOR_UI:
            print(f"  {partition_key}: left for demo_automation_sensor to compact under dagster dev")
            continue
        run = job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False)
        checks = [e.asset_check_evaluation_data for e in run.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        print(
            f"  run {run.run_id[:8]} for {partition_key}: {'success' if run.success else 'FAILED'}; checks: "
            + ", ".join(f"{c.check_name}={'pass' if c.passed else 'FAIL'}" for c in checks)
        )
        if not run.success:
            return 1

    print("after:")
    for name in datasets:
        _summary("after", DATA / f"{name}.lance")
    handled = dg.evaluate_automation_conditions(defs, instance, asset_selection=compacted, cursor=automation.cursor)
    again = dg.evaluate_automation_conditions(defs, instance, asset_selection=compacted, cursor=handled.cursor)
    print(f"\nautomation condition again: {again.total_requested} run requests (handled; nothing new)")
    print(
        f"\nOpen the UI with: DAGSTER_HOME={DAGSTER_HOME} .venv/bin/dagster dev -w workspace.yaml  (then http://127.0.0.1:3000)"
    )
    print(
        f"Within about a minute demo_automation_sensor compacts {LEFT_FOR_UI} (Runs; the demo/compacted asset's Automation tab says why)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
