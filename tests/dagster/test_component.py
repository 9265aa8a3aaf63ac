"""The factory and the YAML Component, loaded the way Dagster tooling loads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from lance_assets.dagster import LanceCompactionComponent, LanceDatasets, build_lance_compaction_defs
from lance_assets.dagster.triggers import CompactionCoolingDown
from tests.support.dagster import TARGET, apply_partition_requests, evaluate_sensor, make_dataset

REPO = Path(__file__).resolve().parents[2]
COMPONENT_TYPE = "lance_assets.dagster.LanceCompactionComponent"


def write_component(folder: Path, attributes: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "defs.yaml").write_text(yaml.safe_dump({"type": COMPONENT_TYPE, "attributes": attributes}))
    return folder


def test_component_from_yaml(root: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANCE_TEST_ANON", "false")
    make_dataset(root / "events.lance", 5)
    make_dataset(root / "clicks.lance", 2)
    attributes = {
        "name": "events",
        "root": str(root),
        "key_prefix": ["lake"],
        "group_name": "maintenance",
        "min_small_fragments": 4,
        "target_rows_per_fragment": TARGET,
        "sensor_interval_seconds": 90,
        "cron_schedule": "30 4 * * *",
        "pool": "lance_pool",
        "storage_options": {"anon": "{{ env.LANCE_TEST_ANON }}"},
    }
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox.defs_folder_path / "lance_events", attributes)
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, LanceCompactionComponent)
            assert component.storage_options == {"anon": "false"}  # templated from the environment at load time
            dg.Definitions.validate_loadable(defs)

            compacted = dg.AssetKey(["lake", "events", "compacted"])
            fragments = dg.AssetKey(["lake", "events", "fragments"])
            assert {s.key for s in defs.resolve_all_asset_specs()} == {compacted, fragments}
            assert all(s.group_name == "maintenance" for s in defs.resolve_all_asset_specs())
            assert defs.resolve_assets_def(compacted).op.pool == "lance_pool"
            assert isinstance(defs.resolve_assets_def(compacted).partitions_def, dg.DynamicPartitionsDefinition)
            assert {c.name for c in defs.resolve_asset_graph().asset_check_keys} == {
                "rows_preserved",
                "small_fragments_under_threshold",
                "new_version_reads_back",
            }
            assert {s.name for s in defs.sensors or []} == {
                "events_small_fragments_sensor",
                "events_dataset_discovery_sensor",
                "events_automation_sensor",
            }
            assert defs.resolve_sensor_def("events_small_fragments_sensor").minimum_interval_seconds == 90
            assert defs.resolve_schedule_def("events_compaction_schedule").cron_schedule == "30 4 * * *"
            assert {j.name for j in defs.jobs or []} >= {"events_compaction", "events_fanout_compaction"}
            resource = defs.resources["lance"]
            assert isinstance(resource, LanceDatasets)
            assert (resource.root, resource.uri_template) == (str(root), "{root}/{partition_key}.lance")
            assert resource.options() == {"anon": False}

            # the component's definitions work end to end: discovery, the record, then the
            # automation condition with the threshold from YAML
            apply_partition_requests(instance, evaluate_sensor(defs, instance, "events_dataset_discovery_sensor"))
            assert sorted(instance.get_dynamic_partitions("events_datasets")) == ["clicks", "events"]
            result = evaluate_sensor(defs, instance, "events_small_fragments_sensor")
            assert not result.run_requests  # the default trigger is the automation condition
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
            automation = dg.evaluate_automation_conditions(defs, instance)
            assert automation.get_requested_partitions(compacted) == {"events"}
            run = defs.resolve_job_def("events_compaction").execute_in_process(
                run_config={"ops": {"lake__events__compacted": {"config": {"target_rows_per_fragment": TARGET}}}},
                instance=instance,
                partition_key="events",
            )
            assert run.success


def test_two_components_in_one_project(tmp_path: Path) -> None:
    """Two dataset families side by side: distinct ops, jobs, sensors, partitions and resources."""
    with create_defs_folder_sandbox() as sandbox:
        write_component(sandbox.defs_folder_path / "hot", {"name": "hot", "root": str(tmp_path / "hot")})
        write_component(
            sandbox.defs_folder_path / "cold",
            {"name": "cold", "root": str(tmp_path / "cold.lance"), "partitioning": "none", "resource_key": "cold_lance"},
        )
        with sandbox.build_all_defs() as defs:
            dg.Definitions.validate_loadable(defs)
            assert {s.key.path[0] for s in defs.resolve_all_asset_specs()} == {"hot", "cold"}
            assert set(defs.resources) >= {"lance", "cold_lance"}
            assert defs.resources["cold_lance"].partitioned is False
            assert {j.name for j in defs.jobs or []} >= {
                "hot_compaction",
                "cold_compaction",
                "hot_fanout_compaction",
                "cold_fanout_compaction",
            }
            assert defs.resolve_implicit_global_asset_job_def() is not None


def test_component_rejects_bad_attributes() -> None:
    with pytest.raises(Exception, match="partitioning"):
        LanceCompactionComponent.model_validate({"root": "/tmp/x", "partitioning": "weekly"})
    with pytest.raises(Exception, match="root"):
        LanceCompactionComponent.model_validate({"name": "x"})
    ok = LanceCompactionComponent.model_validate({"root": "/tmp/x"})
    assert (ok.name, ok.partitioning, ok.min_small_fragments, ok.pool) == ("lance", "dynamic", 16, "lance_compaction")


def _cooldowns(condition: dg.AutomationCondition) -> list[timedelta]:
    """The cool-downs in a condition tree."""
    own = [condition.cooldown] if isinstance(condition, CompactionCoolingDown) else []
    return own + [c for child in condition.children for c in _cooldowns(child)]


def _compacted_cooldowns(defs: dg.Definitions, name: str) -> list[timedelta]:
    condition = defs.resolve_assets_def(dg.AssetKey([name, "compacted"])).automation_conditions_by_key[
        dg.AssetKey([name, "compacted"])
    ]
    return _cooldowns(condition)


def test_yaml_durations_become_timedeltas(tmp_path: Path) -> None:
    """YAML spells durations 30m, 7d; the Component holds timedeltas and the definitions use them."""
    attributes = {"name": "events", "root": str(tmp_path), "cooldown": "30m", "cleanup_older_than": "7d"}
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox.defs_folder_path / "lance_events", attributes)
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, LanceCompactionComponent)
            assert (component.cooldown, component.cleanup_older_than) == (timedelta(minutes=30), timedelta(days=7))
            assert _compacted_cooldowns(defs, "events") == [timedelta(minutes=30)]
            assert {"events_retention"} <= {j.name for j in defs.jobs or []}
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox.defs_folder_path / "typo", {**attributes, "cleanup_older_than": "seven days"})
        with pytest.raises(Exception) as failure, sandbox.load_component_and_build_defs(defs_path=path):
            pass
    causes, error = [], failure.value
    while error is not None:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("not a duration: 'seven days'" in c for c in causes), causes


def test_cooldown_from_python_and_its_deprecated_spelling(tmp_path: Path) -> None:
    assert _compacted_cooldowns(build_lance_compaction_defs("a", root=str(tmp_path)), "a") == [timedelta(minutes=10)]
    defs = build_lance_compaction_defs("b", root=str(tmp_path), cooldown=timedelta(seconds=90))
    assert _compacted_cooldowns(defs, "b") == [timedelta(seconds=90)]
    with pytest.warns(DeprecationWarning, match="cooldown_minutes is deprecated"):
        old = build_lance_compaction_defs("c", root=str(tmp_path), cooldown_minutes=30)
    assert _compacted_cooldowns(old, "c") == [timedelta(minutes=30)]


def test_factory_partitioning_variants(tmp_path: Path) -> None:
    dynamic = build_lance_compaction_defs("d", root=str(tmp_path))
    assert {s.name for s in dynamic.sensors or []} == {
        "d_small_fragments_sensor",
        "d_dataset_discovery_sensor",
        "d_automation_sensor",
    }
    none = build_lance_compaction_defs("n", root=str(tmp_path / "x.lance"), partitioning="none")
    assert none.resolve_assets_def(dg.AssetKey(["n", "compacted"])).partitions_def is None
    assert {s.name for s in none.sensors or []} == {"n_small_fragments_sensor", "n_automation_sensor"}
    static = build_lance_compaction_defs(
        "s",
        root=str(tmp_path),
        partitioning=dg.StaticPartitionsDefinition(["p", "q"]),
        uri_template="{root}/{partition_key}/t.lance",
    )
    assert static.resources["lance"].uri("p") == f"{tmp_path}/p/t.lance"
    assert {s.name for s in static.sensors or []} == {"s_small_fragments_sensor", "s_automation_sensor"}
    by_sensor = build_lance_compaction_defs("b", root=str(tmp_path), trigger="sensor")
    assert {s.name for s in by_sensor.sensors or []} == {"b_small_fragments_sensor", "b_dataset_discovery_sensor"}
    assert by_sensor.resolve_assets_def(dg.AssetKey(["b", "compacted"])).automation_conditions_by_key == {}
    merged = dg.Definitions.merge(dynamic, build_lance_compaction_defs("e", root=str(tmp_path), resource_key="other"))
    dg.Definitions.validate_loadable(merged)


def dagster_env(tmp_path: Path, root: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(home), LANCE_ASSETS_ROOT=str(root))
    return env


def test_workspace_validates_with_the_cli(tmp_path: Path, root: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    if not dagster.exists():
        pytest.skip("the dagster CLI is not installed next to this interpreter")
    make_dataset(root / "events.lance", 3)
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=dagster_env(tmp_path, root),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


IMPORT_AND_BUILD = """
import dagster as dg
import lance_assets.dagster as lad
from lance_assets.dagster import LanceCompactionComponent, LanceDatasets, build_lance_compaction_defs
from lance_assets.dagster.triggers import CompactionCoolingDown
root = {root!r}
for partitioning in ("dynamic", "none", dg.StaticPartitionsDefinition(["a"])):
    defs = build_lance_compaction_defs("w", root=root, partitioning=partitioning, storage_options={{"key": dg.EnvVar("W_KEY")}})
    dg.Definitions.validate_loadable(defs)
    defs.resolve_job_def("w_compaction"); defs.resolve_job_def("w_fanout_compaction")
    defs.resolve_implicit_global_asset_job_def()
component = LanceCompactionComponent.model_validate({{"root": root}})
import importlib.util
spec = importlib.util.spec_from_file_location("example_defs", {example!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
dg.Definitions.validate_loadable(module.defs)
print("clean")
"""


def test_import_and_build_raise_no_warnings(tmp_path: Path) -> None:
    code = IMPORT_AND_BUILD.format(root=str(tmp_path), example=str(REPO / "examples" / "definitions.py"))
    env = dict(os.environ, LANCE_ASSETS_ROOT=str(tmp_path), W_KEY="secret")
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"
    assert "Warning" not in proc.stderr


def test_dg_lists_the_component_through_the_entry_point(tmp_path: Path) -> None:
    """`dg list components` finds the Component by the package's dagster_dg_cli.registry_modules entry point (#25.7)."""
    exe = Path(sys.executable).with_name("dg")
    if not exe.exists():
        pytest.skip("dg (dagster-dg-cli, the ui/test extra) is not installed next to this interpreter")
    listed = subprocess.run([str(exe), "list", "components", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    keys = {item["key"] for item in json.loads(listed.stdout)["items"]}
    assert "lance_assets.dagster.LanceCompactionComponent" in keys
