"""The ``lance-assets`` console script as users run it: a subprocess of the installed script
(``python -m lance_assets.cli`` where the venv has none)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "lance-assets"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "lance_assets.cli"]
#: Wide enough that no line of text output wraps.
WIDE = {**os.environ, "COLUMNS": "200"}


def run_cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *argv], capture_output=True, text=True, timeout=timeout, env=env or WIDE)
