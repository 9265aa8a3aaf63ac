"""The S3 benchmark of reads after compaction still runs end to end (a smoke test, not a measurement).

benchmarks/bench_read_after.py's S3 case at its quick size, one compaction per way and no latency:
moto in a process of its own, the proxy, every way compacted in a subprocess (benchmarks/s3_common.py),
every result read back and checked against the original by the benchmark itself. About 15 s, so
marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_read_after_s3_case_runs(tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    out = tmp_path / "s3.md"
    local = tmp_path / "local.md"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_read_after.py"), "--only", "s3-stream-200-2.2"]
    command += ["--quick", "--runs", "1", "--repeat", "1", "--latency-ms", "0", "--s3-out", str(out), "--out", str(local)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "Command: `python benchmarks/bench_read_after.py --only s3-stream-200-2.2 --quick" in text
    for way in ("lance-assets", "lance-assets copy", "pylance binary", "pylance reencode"):
        assert text.count(f"| s3-stream-200-2.2 | {way} |") == 2  # the timings and the requests
    assert not local.exists()  # no local case chosen, so no local results written
