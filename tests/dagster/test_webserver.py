"""Smoke test of the real UI: dagster-webserver on workspace.yaml, its GraphQL API, and the asset page in Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
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
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    make_dataset(root / "events.lance", 20)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("LANCE_ASSETS_ROOT", str(root))

    # What the daemon would have done by now: discovery, then one fragment observation.
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
            cwd=REPO, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
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
OBSERVATIONS = """
query ($path: [String!]!) { assetOrError(assetKey: {path: $path}) { __typename
  ... on Asset { assetObservations(limit: 5) { partition tags { key value }
    metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }
"""


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
    assert set(sensors) == {"demo_small_fragments_sensor", "demo_dataset_discovery_sensor"}
    assert all(s["defaultStatus"] == "STOPPED" and s["minIntervalSeconds"] == 30 for s in sensors.values())
    assert [(s["name"], s["cronSchedule"], s["defaultStatus"]) for s in repo["schedules"]] == [("demo_compaction_schedule", "0 2 * * *", "STOPPED")]
    assert {"demo_compaction", "demo_fanout_compaction"} <= {j["name"] for j in repo["jobs"]}

    # the two assets, dynamically partitioned, with the three checks on the compacted one
    nodes = {tuple(n["assetKey"]["path"]): n for n in webserver.graphql(ASSETS)["assetNodes"]}
    assert set(nodes) == {("demo", "fragments"), ("demo", "compacted")}
    for node in nodes.values():
        assert node["isPartitioned"] and node["partitionDefinition"] == {"type": "DYNAMIC", "name": "demo_datasets"}
        assert node["kinds"] == ["lance"] and node["groupName"] == "demo"
    checks = {c["name"] for c in nodes[("demo", "compacted")]["assetChecksOrError"]["checks"]}
    assert checks == {"rows_preserved", "small_fragments_under_threshold", "new_version_reads_back"}

    # the sensor's observation is what the API reports for the fragments asset
    asset = webserver.graphql(OBSERVATIONS, {"path": ["demo", "fragments"]})["assetOrError"]
    [obs] = asset["assetObservations"]
    assert obs["partition"] == "events"
    values = {e["label"]: e.get("intValue") for e in obs["metadataEntries"]}
    assert values["small_fragments"] == values["fragments"] == 20
    assert {"size_histogram", "fragment_table", "uri"} <= set(values)
    assert {"key": "dagster/data_version", "value": "20"} in obs["tags"]

    # and the page a person opens shows it
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        unavailable("chromium is not installed: the UI is checked in a real browser")
    chromium = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    profile = tmp_path / "chromium-profile"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
    ]
    dom = subprocess.run(
        [str(chromium), *flags, "--dump-dom", f"{webserver.url}/assets/demo/fragments"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "small_fragments" in dom, dom[-2000:]
    assert "fragment_table" in dom and "lance_version" in dom
