"""The real UI: dagster-webserver (and `dagster dev`) on workspace.yaml, its GraphQL API, and pages in Chromium.

A run is launched the way the Materialize button launches it (Dagster's asset job, the
partition's tags as the UI fetches them); then the API and the pages must tell the truth (#25).
Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import lance
import pytest

from tests.support.dagster import apply_partition_requests, evaluate_sensor, free_port, make_dataset
from tests.support.system import unavailable

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
LOCATION = "definitions.py"  # workspace.yaml loads examples/definitions.py as a python_file location


def load_example_defs() -> dg.Definitions:
    spec = importlib.util.spec_from_file_location("example_definitions_under_test", REPO / "examples" / "definitions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


class Webserver:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            payload = json.loads(exc.read())
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]


@pytest.fixture
def webserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Webserver]:
    """An instance with one observed demo dataset, served by dagster-webserver on a free loopback port."""
    exe = Path(sys.executable).with_name("dagster-webserver")
    if not exe.exists():
        pytest.skip("dagster-webserver is not installed next to this interpreter")
    home, root = tmp_path / "dagster_home", tmp_path / "datasets"
    home.mkdir()
    root.mkdir()
    # the webserver launches runs itself (no daemon here): the default run coordinator
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    make_dataset(root / "events.lance", 20)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("LANCE_ASSETS_ROOT", str(root))

    # What the daemon would have done by now: discovery, then one record of the fragments.
    defs = load_example_defs()
    with dg.DagsterInstance.get() as instance:
        apply_partition_requests(instance, evaluate_sensor(defs, instance, "demo_dataset_discovery_sensor"))
        tick = evaluate_sensor(defs, instance, "demo_small_fragments_sensor")
        assert len(tick.asset_events) == 1
        for event in tick.asset_events:
            instance.report_runless_asset_event(event)

    port = free_port()
    log = tmp_path / "webserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"webserver exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"webserver not ready in 60 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{server.url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the webserver and the code server it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message }
    ... on RepositoryLocation { repositories { name
      sensors { name defaultStatus minIntervalSeconds }
      schedules { name cronSchedule defaultStatus }
      jobs { name } } } } } } } }
"""
ASSETS = """
{ assetNodes { assetKey { path } groupName kinds isPartitioned partitionDefinition { type name }
  assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }
"""
RECORDS = """
query ($path: [String!]!) { assetOrError(assetKey: {path: $path}) { __typename
  ... on Asset { assetMaterializations(limit: 5) { partition runId tags { key value }
    metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }
"""
PARTITION_TAGS = """
query ($location: String!) { partitionSetOrError(repositorySelector: {repositoryName: "__repository__", repositoryLocationName: $location},
  partitionSetName: "__ASSET_JOB_partition_set") { __typename
  ... on PartitionSet { partition(partitionName: "events") { tagsOrError { __typename ... on PartitionTags { results { key value } } } } } } }
"""
LAUNCH = """
mutation ($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId status tags { key value } } }
  ... on PythonError { message } ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }
"""
RUN = """query ($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status startTime endTime tags { key value } } } }"""
STATE = """
{ assetNodes(assetKeys: [{path: ["demo", "compacted"]}, {path: ["demo", "fragments"]}]) { assetKey { path }
  staleStatus(partition: "events") staleCauses(partition: "events") { reason }
  assetPartitionStatuses { __typename ... on DefaultPartitionStatuses { materializedPartitions unmaterializedPartitions } } } }
"""
CHECK_RESULTS = """
query ($name: String!) { assetCheckExecutions(assetKey: {path: ["demo", "compacted"]}, checkName: $name, limit: 5) {
  status evaluation { partition success } } }
"""


def launch_like_the_materialize_button(server: Webserver, partition_tags: list[dict[str, str]]) -> dict[str, Any]:
    """The mutation the UI sends for one partition of demo/compacted and its checks."""
    params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": partition_tags},
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": ["demo", "compacted"]}],
            "assetCheckSelection": [
                {"assetKey": {"path": ["demo", "compacted"]}, "name": name}
                for name in ("rows_preserved", "small_fragments_under_threshold", "new_version_reads_back")
            ],
        },
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]


def wait_for_run(server: Webserver, run_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = server.graphql(RUN, {"id": run_id})["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        assert time.monotonic() < deadline, (
            f"run {run_id} still {run['status']} after {timeout} s:\n{server.log.read_text()[-3000:]}"
        )
        time.sleep(1)


def browser() -> tuple[str, list[str]]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        unavailable("chromium is not installed: the UI is checked in a real browser")
    chromium = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    assert chromium is not None
    return chromium, [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=15000",
        "--window-size=1400,1000",
    ]


def page(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after it rendered (and a screenshot of it, kept as a test artifact)."""
    chromium, flags = browser()
    flags = [*flags, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run([chromium, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=90)
    return subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90).stdout


def test_webserver_serves_the_lance_layer(webserver: Webserver, tmp_path: Path) -> None:
    # the code location loads without errors (it loads in the background: wait for it)
    deadline = time.monotonic() + 60
    while True:
        [entry] = webserver.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
        if entry["loadStatus"] == "LOADED" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert entry["name"] == LOCATION
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    [repo] = location["repositories"]
    sensors = {s["name"]: s for s in repo["sensors"]}
    assert set(sensors) == {"demo_small_fragments_sensor", "demo_dataset_discovery_sensor", "demo_automation_sensor"}
    # the demo's automation starts with the daemon, retention included (#25.7)
    assert all(s["defaultStatus"] == "RUNNING" and s["minIntervalSeconds"] == 30 for s in sensors.values())
    assert sorted((s["name"], s["cronSchedule"], s["defaultStatus"]) for s in repo["schedules"]) == [
        ("demo_compaction_schedule", "0 2 * * *", "RUNNING"),
        ("demo_retention_schedule", "0 3 * * *", "RUNNING"),
    ]
    assert {"demo_compaction", "demo_fanout_compaction", "demo_retention"} <= {j["name"] for j in repo["jobs"]}

    # the two assets, dynamically partitioned, with the three checks on the compacted one
    nodes = {tuple(n["assetKey"]["path"]): n for n in webserver.graphql(ASSETS)["assetNodes"]}
    assert set(nodes) == {("demo", "fragments"), ("demo", "compacted")}
    for node in nodes.values():
        assert node["isPartitioned"] and node["partitionDefinition"] == {"type": "DYNAMIC", "name": "demo_datasets"}
        assert node["kinds"] == ["lance"] and node["groupName"] == "demo"
    checks = {c["name"] for c in nodes[("demo", "compacted")]["assetChecksOrError"]["checks"]}
    assert checks == {"rows_preserved", "small_fragments_under_threshold", "new_version_reads_back"}

    # the sensor's record is what the API reports for the fragments asset
    asset = webserver.graphql(RECORDS, {"path": ["demo", "fragments"]})["assetOrError"]
    [record] = asset["assetMaterializations"]
    assert record["partition"] == "events"
    values = {e["label"]: e.get("intValue") for e in record["metadataEntries"]}
    assert values["small_fragments"] == values["fragments"] == 20
    assert {"size_histogram", "fragment_table", "uri", "lone_small_fragments"} <= set(values)
    assert {"key": "dagster/data_version", "value": "20"} in record["tags"]

    # Materialize one partition the way the button does: Dagster's asset job, the partition's tags as the UI fetches them
    tags_answer = webserver.graphql(PARTITION_TAGS, {"location": LOCATION})["partitionSetOrError"]
    tags = [{"key": t["key"], "value": t["value"]} for t in tags_answer["partition"]["tagsOrError"]["results"]]
    assert {"key": "dagster/partition", "value": "events"} in tags
    run = wait_for_run(webserver, launch_like_the_materialize_button(webserver, tags)["runId"])
    assert run["status"] == "SUCCESS", webserver.log.read_text()[-3000:]

    # afterwards: the compacted partition is in sync (#25.2), the fragments asset present, not missing (#25.3)
    state = {tuple(n["assetKey"]["path"]): n for n in webserver.graphql(STATE)["assetNodes"]}
    compacted, fragments = state[("demo", "compacted")], state[("demo", "fragments")]
    assert compacted["staleStatus"] == "FRESH" and compacted["staleCauses"] == [], compacted
    assert fragments["assetPartitionStatuses"]["materializedPartitions"] == ["events"], fragments
    assert fragments["assetPartitionStatuses"]["unmaterializedPartitions"] == []
    [latest, _] = webserver.graphql(RECORDS, {"path": ["demo", "fragments"]})["assetOrError"]["assetMaterializations"][:2]
    values = {e["label"]: e.get("intValue") for e in latest["metadataEntries"]}
    assert (values["fragments"], values["small_fragments"], values["lone_small_fragments"]) == (1, 0, 1)  # (#25.6)
    # each check's result belongs to this partition (#25.4)
    for name in ("rows_preserved", "small_fragments_under_threshold", "new_version_reads_back"):
        [execution] = webserver.graphql(CHECK_RESULTS, {"name": name})["assetCheckExecutions"]
        assert execution["status"] == "SUCCEEDED" and execution["evaluation"]["partition"] == "events", execution

    # and the pages a person opens show it
    profile = tmp_path / "chromium-profile"
    dom = page(f"{webserver.url}/assets/demo/fragments", profile, tmp_path / "fragments.png")
    assert "small_fragments" in dom, dom[-2000:]
    assert "fragment_table" in dom and "lance_version" in dom
    assert "Never materialized" not in dom and "External Asset" not in dom
    partitions = page(f"{webserver.url}/assets/demo/fragments?view=partitions", profile, tmp_path / "fragments-partitions.png")
    assert "Materialized (1)" in partitions and "Missing (0)" in partitions, partitions[-2000:]
    compacted_page = page(f"{webserver.url}/assets/demo/compacted", profile, tmp_path / "compacted.png")
    assert "Unsynced" not in compacted_page, compacted_page[-2000:]
    checks_page = page(f"{webserver.url}/assets/demo/compacted?view=checks", profile, tmp_path / "checks.png")
    assert "rows_preserved" in checks_page and "events" in checks_page, checks_page[-2000:]


RUNS = """
{ runsOrError(filter: {tags: [{key: "dagster/partition", value: "events"}]}) { __typename
  ... on Runs { results { runId status startTime endTime assetSelection { path } } } } }
"""


def load_demo_instance_yaml() -> str:
    spec = importlib.util.spec_from_file_location("demo_script_under_test", REPO / "scripts" / "demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.DAGSTER_YAML)


@contextlib.contextmanager
def dagster_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: Path, prepare: Callable[[dg.DagsterInstance], None] | None = None
) -> Iterator[Webserver]:
    """`dagster dev -w workspace.yaml` (webserver and daemon) on the demo instance's settings and
    datasets under ``root``, on a free loopback port; yields once the code location has loaded.
    ``prepare`` gets the instance before anything else runs on it."""
    exe = Path(sys.executable).with_name("dagster")
    if not exe.exists():
        pytest.skip("dagster is not installed next to this interpreter")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(load_demo_instance_yaml())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("LANCE_ASSETS_ROOT", str(root))
    if prepare is not None:
        with dg.DagsterInstance.get() as instance:
            prepare(instance)
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"dagster dev exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dagster dev not ready in 240 s:\n{log.read_text()[-3000:]}"
            try:
                [entry] = server.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
                if entry["loadStatus"] == "LOADED":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(1)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_dagster_dev_runs_one_compaction_per_dataset_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dagster dev` on the demo instance: two Materialize launches for one dataset (and whatever the
    running sensor asks for) queue behind each other; no two runs of that dataset overlap (#25.5)."""
    root = tmp_path / "datasets"
    root.mkdir()
    make_dataset(root / "events.lance", 20)

    def discover(instance: dg.DagsterInstance) -> None:
        apply_partition_requests(instance, evaluate_sensor(load_example_defs(), instance, "demo_dataset_discovery_sensor"))

    with dagster_dev(tmp_path, monkeypatch, root, discover) as server:
        tags = [{"key": "dagster/partition", "value": "events"}]
        first = launch_like_the_materialize_button(server, tags)
        second = launch_like_the_materialize_button(server, tags)
        assert first["status"] == second["status"] == "QUEUED"  # the instance's queue decides when each starts

        deadline = time.monotonic() + 480
        while True:
            runs = server.graphql(RUNS)["runsOrError"]["results"]
            mine = [r for r in runs if r["runId"] in (first["runId"], second["runId"])]
            if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in mine):
                break
            started = [r for r in runs if r["status"] == "STARTED"]
            assert len(started) <= 1, f"two runs of one dataset at once: {started}"
            assert time.monotonic() < deadline, f"runs not finished in 480 s: {runs}\n{server.log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert [r["status"] for r in mine] == ["SUCCESS", "SUCCESS"], server.log.read_text()[-3000:]
        intervals = sorted((r["startTime"], r["endTime"]) for r in runs if r["startTime"] and r["endTime"])
        assert len(intervals) >= 2
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"runs of one dataset overlapped: {intervals}"


AUTOMATION_RUNS = """
{ runsOrError(filter: {tags: [{key: "dagster/from_automation_condition", value: "true"}]}) { __typename
  ... on Runs { results { runId status creationTime tags { key value } assetSelection { path } } } } }
"""


def test_dagster_dev_demo_automation_compacts_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user's first minutes: `dagster dev` on the demo with a fragmented dataset and nothing
    else — the daemon's sensors discover and record it, demo_automation_sensor's condition requests
    its compaction (about a minute: two 30-second sensor intervals) and the run compacts it."""
    root = tmp_path / "datasets"
    root.mkdir()
    make_dataset(root / "events.lance", 20)
    with dagster_dev(tmp_path, monkeypatch, root) as server:
        loaded = time.time()
        deadline = time.monotonic() + 300
        while True:
            runs = server.graphql(AUTOMATION_RUNS)["runsOrError"]["results"]
            if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            assert time.monotonic() < deadline, f"no automation run finished in 300 s: {runs}\n{server.log.read_text()[-3000:]}"
            time.sleep(1)
        [run] = runs  # one request for the one dataset (the next ticks see it handled)
        assert run["status"] == "SUCCESS", server.log.read_text()[-3000:]
        assert {t["key"]: t["value"] for t in run["tags"]}["dagster/partition"] == "events"
        assert run["assetSelection"] == [{"path": ["demo", "compacted"]}]
        # requested within two sensor intervals of the location loading, plus slack for a busy machine
        assert run["creationTime"] - loaded < 120, run["creationTime"] - loaded
    assert len(lance.dataset(str(root / "events.lance")).get_fragments()) == 1
