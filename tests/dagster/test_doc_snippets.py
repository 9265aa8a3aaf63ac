"""Every Dagster snippet in README.md and docs/ loads the way a user loads it.

The README's own example once failed in `dagster definitions validate` (a retention op and job
sharing a name) while the suite passed, because nothing loaded the snippets with Dagster's
tools. Here each Python snippet that builds definitions is written to a file and validated with
the `dagster` CLI, and each `defs.yaml` snippet is loaded as a Component in a sandboxed defs
folder, once as written and once with each optional feature it could enable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

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
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{where}:\n{code}\n{out[-3000:]}"
    assert "passed validation" in out


# Options a user adds to the documented YAML; each must load too.
VARIANTS: list[dict[str, object]] = [
    {},
    {"cleanup_older_than": "7d", "retain_versions": 2},
    {"runner": "processes", "max_workers": 2},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=["as_written", "retention", "runner"])
@pytest.mark.parametrize(("where", "text"), YAML, ids=[w for w, _ in YAML])
def test_yaml_snippet_loads_as_a_component(where: str, text: str, variant: dict[str, object]) -> None:
    doc = yaml.safe_load(text)
    doc["attributes"] = {**doc.get("attributes", {}), **variant}
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "lance"
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(yaml.safe_dump(doc))
        with sandbox.load_component_and_build_defs(defs_path=folder) as (_, defs):
            dg.Definitions.validate_loadable(defs)
            if "cleanup_older_than" in variant:
                assert defs.resolve_job_def(f"{doc['attributes']['name']}_retention")
