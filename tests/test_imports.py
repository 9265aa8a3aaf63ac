"""Starting the CLI (and every sensor tick and remote task that imports the engine) stays cheap.

pyarrow pulls numpy and costs a few hundred milliseconds before any work; only the code paths
that decode Arrow deletion files, re-page legacy offsets or build bitmaps need it, so they import
it when they run. This guards the import set in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("pyarrow", "numpy", "pandas", "dagster", "lance")


@pytest.mark.parametrize("module", ["lance_assets", "lance_assets.cli", "lance_assets.engine"])
def test_importing_loads_no_heavy_dependency(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "", f"importing {module} loaded {proc.stdout.strip()}"
