"""The LanceDatasets resource: URIs, discovery, EnvVar secrets, and writing fragments from Dagster."""

import logging
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import lance
import pandas as pd
import pyarrow as pa
import pytest

from lance_assets.dagster import LanceDatasets, build_lance_compaction_defs
from tests.support.dagster import TARGET, check_evaluations, compaction_config, evaluate_sensor, free_port, make_dataset


def test_uris_and_partitioning(tmp_path: Path) -> None:
    default = LanceDatasets(root=f"{tmp_path}/")
    assert default.partitioned
    assert default.uri("events") == f"{tmp_path}/events.lance"
    with pytest.raises(dg.DagsterInvariantViolationError, match="partition key is required"):
        default.uri(None)
    single = LanceDatasets(root=str(tmp_path / "one.lance"), uri_template="{root}")
    assert not single.partitioned
    assert single.uri() == single.uri("ignored") == str(tmp_path / "one.lance")
    assert single.discover() == []
    nested = LanceDatasets(root="s3://bucket/lake", uri_template="{root}/{partition_key}/table.lance")
    assert nested.uri("eu") == "s3://bucket/lake/eu/table.lance"


def test_discover_with_prefix_and_suffix(tmp_path: Path) -> None:
    for name in ("tbl_a.lance", "tbl_b.lance", "other_c.lance", "tbl_d.parquet"):
        make_dataset(tmp_path / name, 1)
    (tmp_path / "tbl_empty.lance").mkdir()  # no _versions/: not a dataset
    resource = LanceDatasets(root=str(tmp_path), uri_template="{root}/tbl_{partition_key}.lance")
    assert resource.discover() == ["a", "b"]
    assert LanceDatasets(root=str(tmp_path)).discover() == ["other_c", "tbl_a", "tbl_b"]
    nested = LanceDatasets(root=str(tmp_path), uri_template="{root}/{partition_key}/t.lance")
    with pytest.raises(dg.DagsterInvariantViolationError, match="last path segment"):
        nested.discover()


def test_cleanup_takes_a_timedelta_and_still_reads_seconds(root: Path) -> None:
    """Retention by age: a timedelta; seconds (the old form) still work for one release, with a warning."""
    make_dataset(root / "a.lance", 4)
    lance_ds = LanceDatasets(root=str(root))
    assert lance_ds.cleanup("a", timedelta(days=1), 1).removed_versions == []  # nothing is a day old
    with pytest.warns(DeprecationWarning, match="pass a datetime.timedelta"):
        report = lance_ds.cleanup("a", 0, 1)
    assert report.removed_versions == [1, 2, 3]
    assert [v["version"] for v in lance.dataset(str(root / "a.lance")).versions()] == [4]


def test_storage_options_decode_json_values() -> None:
    resource = LanceDatasets(
        root="s3://b", storage_options={"client_kwargs": '{"endpoint_url": "http://127.0.0.1:9"}', "anon": "true", "key": "plain"}
    )
    assert resource.options() == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "anon": True, "key": "plain"}


def test_envvar_secrets_resolve_at_run_time_only(monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> None:
    monkeypatch.setenv("LANCE_TEST_SECRET", "s3cr3t-value")
    resource = LanceDatasets(root="/nowhere", storage_options={"secret": dg.EnvVar("LANCE_TEST_SECRET")})
    # in the definitions the option is the variable's *name*; the value never lands in config
    assert resource.storage_options["secret"] == "LANCE_TEST_SECRET"
    assert "s3cr3t-value" not in repr(resource)

    @dg.asset
    def seen(lance: LanceDatasets) -> dict:
        return lance.options()

    result = dg.materialize([seen], resources={"lance": resource}, instance=instance)
    assert result.output_for_node("seen") == {"secret": "s3cr3t-value"}
    assert "s3cr3t-value" not in str(result.dagster_run.run_config)

    monkeypatch.delenv("LANCE_TEST_SECRET")
    with pytest.raises(dg.DagsterInvalidConfigError, match='environment variable "LANCE_TEST_SECRET" which is not set'):
        dg.materialize([seen], resources={"lance": resource}, instance=instance)


def test_append_from_an_asset_then_the_sensor_sees_it(root: Path, instance: dg.DagsterInstance) -> None:
    """Writing fragments from Dagster: the resource creates the dataset, then appends."""
    partitions = dg.StaticPartitionsDefinition(["events"])
    defs = build_lance_compaction_defs(
        "t", root=str(root), partitioning=partitions, min_small_fragments=3, target_rows_per_fragment=TARGET, trigger="sensor"
    )

    @dg.asset(partitions_def=partitions)
    def ingest(context: dg.AssetExecutionContext, lance: LanceDatasets) -> dg.MaterializeResult:
        written = lance.append(context.partition_key, pd.DataFrame({"id": range(0, 10), "name": [f"n{i}" for i in range(10)]}))
        for start in (10, 20):
            written += lance.append(
                context.partition_key,
                pa.table(
                    {"id": pa.array(range(start, start + 10), pa.int64()), "name": [f"n{i}" for i in range(start, start + 10)]}
                ),
            )
        return dg.MaterializeResult(metadata={"rows_written": written})

    result = dg.materialize([ingest], resources=defs.resources, instance=instance, partition_key="events")
    assert result.success
    ds = lance.dataset(str(root / "events.lance"))
    assert ds.count_rows() == 30
    assert len(ds.get_fragments()) == 3
    assert ds.to_table().column("name").to_pylist()[:2] == ["n0", "n1"]

    tick = evaluate_sensor(defs, instance, "t_small_fragments_sensor")
    assert [r.run_key for r in tick.run_requests] == [f"t/events@{ds.version}"]
    assert tick.asset_events[0].metadata["rows"].value == 30


def test_append_lines_up_with_the_dataset_schema(root: Path) -> None:
    """A DataFrame (pandas gives large_string) appends to a dataset pylance wrote with string columns."""
    make_dataset(root / "a.lance", 1)  # id int64, value float64, name string
    resource = LanceDatasets(root=str(root))
    frame = pd.DataFrame({"name": ["x", "y"], "id": [100, 101], "value": [0.5, 1.5]})  # other column order too
    assert resource.append("a", frame) == 2
    ds = lance.dataset(str(root / "a.lance"))
    assert ds.schema.field("name").type == pa.string()
    assert ds.count_rows() == 12
    assert sorted(ds.to_table(filter="id >= 100").column("name").to_pylist()) == ["x", "y"]
    with pytest.raises(OSError, match="schema"):  # not castable: Lance's own error
        resource.append("a", pa.table({"id": ["not-a-number"], "value": [1.0], "name": ["z"]}))
    assert lance.dataset(str(root / "a.lance")).count_rows() == 12


def test_append_takes_a_pyarrow_table_without_pandas(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pandas is an optional extra (``lance_assets[pandas]``): Tables append with it unimportable."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError):
        import pandas  # noqa: F401
    make_dataset(root / "a.lance", 1)
    resource = LanceDatasets(root=str(root))
    table = pa.table({"id": pa.array([100, 101], pa.int64()), "value": [0.5, 1.5], "name": ["x", "y"]})
    assert resource.append("a", table) == 2
    assert resource.append("new", table) == 2  # the first append creates the dataset
    assert lance.dataset(str(root / "a.lance")).count_rows() == 12
    assert lance.dataset(str(root / "new.lance")).to_table() == table


# --- a real object store: moto's S3 server on loopback -----------------------------------
@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        ).create_bucket(Bucket="lake")
        yield url
    finally:
        server.stop()


def test_s3_with_envvar_secrets_end_to_end(
    s3_endpoint: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Append, observe, compact and check a dataset on S3, credentials only from the environment."""
    monkeypatch.setenv("LANCE_TEST_AWS_KEY", "testing-key")
    monkeypatch.setenv("LANCE_TEST_AWS_SECRET", "testing-secret")
    options = {
        "aws_access_key_id": dg.EnvVar("LANCE_TEST_AWS_KEY"),
        "aws_secret_access_key": dg.EnvVar("LANCE_TEST_AWS_SECRET"),
        "aws_endpoint": s3_endpoint,
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    partitions = dg.StaticPartitionsDefinition(["ev"])
    defs = build_lance_compaction_defs(
        "t",
        root="s3://lake/tables",
        partitioning=partitions,
        storage_options=options,
        min_small_fragments=4,
        target_rows_per_fragment=TARGET,
        trigger="sensor",
    )

    @dg.asset(partitions_def=partitions)
    def writer(context: dg.AssetExecutionContext, lance: LanceDatasets) -> None:
        for i in range(6):
            lance.append(context.partition_key, pa.table({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())}))

    assert dg.materialize([writer], resources=defs.resources, instance=instance, partition_key="ev").success
    tick = evaluate_sensor(defs, instance, "t_small_fragments_sensor")
    [request] = tick.run_requests
    assert tick.asset_events[0].metadata["small_fragments"].value == 6

    result = defs.resolve_job_def("t_compaction").execute_in_process(
        run_config=compaction_config(), instance=instance, partition_key="ev", tags=request.tags
    )
    assert result.success
    assert all(c.passed for c in check_evaluations(result).values()), {
        k: dict(c.metadata) for k, c in check_evaluations(result).items()
    }
    pylance_options = {
        "aws_access_key_id": "testing-key",
        "aws_secret_access_key": "testing-secret",
        "aws_endpoint": s3_endpoint,
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    ds = lance.dataset("s3://lake/tables/ev.lance", storage_options=pylance_options)
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == [60]
    assert sorted(ds.to_table().column("id").to_pylist()) == list(range(60))
