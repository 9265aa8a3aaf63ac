"""Helpers shared by the Dagster-layer tests (and importable by executor subprocesses).

Everything here drives real Dagster machinery against real Lance datasets
written by pylance; nothing is mocked.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import lance
import pyarrow as pa

from tests.support import factory

TARGET = 100  # rows: fragments under this are "small" in these tests
ROWS = 10  # rows per small append


def make_dataset(path: Path | str, fragments: int, rows: int = ROWS, version: str = "2.1") -> lance.LanceDataset:
    """``fragments`` appends of ``rows`` rows each (ids contiguous): one small fragment per append."""
    return factory.appends(path, version, [rows] * fragments)


def append(path: Path | str, count: int = 1, rows: int = ROWS, version: str = "2.1") -> lance.LanceDataset:
    """``count`` more small appends after the existing rows."""
    ds = lance.dataset(str(path))
    start = ds.count_rows()
    for _ in range(count):
        ds = factory.write(factory.simple_table(start, rows), path, version)
        start += rows
    return ds


def table_of(path: Path | str, version: int | None = None) -> pa.Table:
    """The dataset's rows, sorted by id (the oracle's view)."""
    return lance.dataset(str(path), version=version).to_table().sort_by("id")


def evaluate_sensor(defs: dg.Definitions, instance: dg.DagsterInstance, name: str, cursor: str | None = None) -> dg.SensorResult:
    """One tick the way the daemon runs it: resources from the Definitions, partitions from the instance."""
    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources, sensor_name=name, cursor=cursor
    )
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return sensor.evaluate_tick(context)


def apply_partition_requests(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """Apply a tick's dynamic-partition requests to the instance (the daemon's job)."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def create_run_record(
    instance: dg.DagsterInstance, job: dg.JobDefinition, status: dg.DagsterRunStatus, tags: Mapping[str, str]
) -> dg.DagsterRun:
    """A run record in ``status``, as the run coordinator would leave one (nothing executes).

    Dagster insists that a QUEUED run knows the code location it will be launched
    from (the queued run coordinator dequeues it from there), so the record names
    a registered location, exactly as one submitted from the UI would.
    """
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("tests"), "__repository__"), job.name)
    return instance.create_run_for_job(job, status=status, tags=tags, remote_job_origin=origin)


def op_name(asset_key: dg.AssetKey) -> str:
    return asset_key.to_python_identifier()


def compaction_config(name: str = "t", **config: Any) -> dict[str, Any]:
    """Run config for the compaction asset of family ``name`` (asset key ``[name, "compacted"]``)."""
    config.setdefault("target_rows_per_fragment", TARGET)
    return {"ops": {op_name(dg.AssetKey([name, "compacted"])): {"config": config}}}


def events(result: dg.ExecuteInProcessResult | Any, event_type: str) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type_value == event_type]


def check_evaluations(result: Any) -> dict[str, Any]:
    """check name -> AssetCheckEvaluation of a run."""
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data for e in events(result, "ASSET_CHECK_EVALUATION")
    }


def metadata_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def fragment_rows(path: Path | str) -> list[int]:
    return [f.metadata.physical_rows for f in lance.dataset(str(path)).get_fragments()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
