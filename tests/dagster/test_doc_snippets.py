"""Every Dagster snippet in README.md and docs/ loads the way a user loads it.

The README's own example once failed in `dagster definitions validate` (a retention op and job
sharing a name) while the suite passed, because nothing loaded the snippets with Dagster's
tools. Here each Python snippet that builds definitions is written to a file and validated with
the `dagster` CLI, and each `defs.yaml` snippet becomes a component of a real `dg` project
(pyproject with `[tool.dg]`), once as written and once per option a user may add or leave out,
checked with `dg check defs` and listed with `dg list defs`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(python|yaml)\n(.*?)```", re.S)


def _snippets(kind: str, marker: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, m in enumerate(_BLOCK.finditer(doc.read_text())):
            if m.group(1) == kind and marker in m.group(2):
                found.append((f"{doc.name}#{i}", m.group(2)))
    return found


PYTHON = _snippets("python", "build_lance_compaction_defs(")
YAML = _snippets("yaml", "LanceCompactionComponent")


def test_the_docs_have_dagster_snippets() -> None:
    assert PYTHON and YAML  # the README shows both forms


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_python_snippet_passes_dagster_definitions_validate(where: str, code: str, tmp_path: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "defs.py").write_text(code)
    env = dict(os.environ, DAGSTER_HOME=str(home))
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-f", "defs.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{where}:\n{code}\n{out[-3000:]}"
    assert "passed validation" in out


# Options a user adds to the documented YAML (or leaves out); each must load too.
VARIANTS: dict[str, dict[str, object]] = {
    "without_retention": {"cleanup_older_than": None},
    "retention": {"cleanup_older_than": "7d", "retain_versions": 2, "retention_cron_schedule": "0 4 * * *"},
    "runner": {"runner": "processes", "max_workers": 2},
    "ray": {"runner": "ray", "ray_address": "ray://head:10001"},
    "index_upkeep": {"min_unindexed_rows": 10_000, "min_deleted_ratio": 0.2, "min_small_pages": 64, "cooldown": "5m"},
    "sensor_trigger": {"trigger": "sensor", "min_small_bytes": 1_048_576},
}

DEFINITIONS_PY = """\
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""


def _dg_project(tmp_path: Path, components: dict[str, dict[str, object]]) -> Path:
    """A `dg` project as `create-dagster project` lays it out: pyproject with `[tool.dg]`,
    src/<module>/definitions.py loading the defs folder, one folder per component."""
    project = tmp_path / "lance_project"
    package = project / "src" / "lance_project"
    (package / "defs").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "lance-project"\nversion = "0.0.1"\nrequires-python = ">=3.11"\n\n'
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "lance_project"\n'
    )
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(DEFINITIONS_PY)
    for folder, doc in components.items():
        (package / "defs" / folder).mkdir()
        (package / "defs" / folder / "defs.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return project


def _dg(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("dg")
    home = project.parent / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONPATH=str(project / "src"))
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"  # dg runs `dagster` from this environment
    return subprocess.run([str(exe), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("where", "text"), YAML, ids=[w for w, _ in YAML])
def test_yaml_snippet_passes_dg_check_defs_and_dg_list_defs(where: str, text: str, tmp_path: Path) -> None:
    """The snippet as written, and once per variant, as components of a real `dg` project:
    `dg check defs` validates it, `dg list defs` shows what each one defines."""
    if not Path(sys.executable).with_name("dg").exists():
        pytest.skip("dg (dagster-dg-cli, the ui/test extra) is not installed next to this interpreter")
    doc = yaml.safe_load(text)
    name = doc["attributes"].get("name", "lance")
    components = {"as_written": doc}
    for variant, changes in VARIANTS.items():
        attributes = {**doc["attributes"], **changes, "name": f"{name}_{variant}", "resource_key": f"lance_{variant}"}
        components[variant] = {**doc, "attributes": {k: v for k, v in attributes.items() if v is not None}}
    project = _dg_project(tmp_path, components)

    checked = _dg(project, "check", "defs")
    out = checked.stdout + checked.stderr
    assert checked.returncode == 0, f"{where}:\n{text}\n{out[-3000:]}"
    assert "All definitions loaded successfully" in out

    listed = _dg(project, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    jobs = {j["name"] for j in found["jobs"]}
    sensors = {s["name"] for s in found["sensors"]}
    assets = {a["asset_key"]: a for a in found["assets"]}
    for folder, component in components.items():
        attributes = component["attributes"]
        family = attributes.get("name", "lance")
        compacted = assets[f"{family}/compacted"]
        assert compacted["dependency_keys"] == [f"{family}/fragments"]
        assert {f"{family}_compaction", f"{family}_fanout_compaction"} <= jobs
        assert (f"{family}_retention" in jobs) == ("cleanup_older_than" in attributes), folder
        assert f"{family}_small_fragments_sensor" in sensors
        by_condition = attributes.get("trigger", "condition") == "condition"
        assert (f"{family}_automation_sensor" in sensors) == by_condition, folder
        assert (compacted.get("automation_condition") is not None) == by_condition, folder
    resources = {r["name"] for r in found["resources"]}
    assert "lance_ray_ray" in resources  # runner: ray adds the cluster resource
