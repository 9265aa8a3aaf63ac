"""Starting the CLI: `lance-assets --help` and `inspect` of a small dataset, whole process.

Every CLI call, sensor tick and remote task pays the imports before any work, so this times
the commands as a user runs them (a fresh interpreter each time, the console script of the
venv it runs in) and reports the fastest and the median of ``--runs`` runs: the fastest is
the cost on an idle machine, the median shows how much other load moved it. A bare
``python -c pass`` is timed alongside as the floor. The dataset (10 fragments x 1,000 rows
of an int and a string, written by pylance) is made once in a temporary folder.

    python benchmarks/bench_startup.py [--runs 20] [--out benchmarks/results-startup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_SECONDS = 0.3


def _time(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "results-startup.md"))
    args = parser.parse_args()

    import lance
    import pyarrow as pa

    cli = str(Path(sys.executable).with_name("lance-assets"))
    with tempfile.TemporaryDirectory() as tmp:
        uri = os.path.join(tmp, "small.lance")
        table = pa.table({"id": range(1000), "s": [str(i) for i in range(1000)]})
        for i in range(10):
            lance.write_dataset(table, uri, mode="append" if i else "create")
        commands = {
            "`python -c pass` (floor)": [sys.executable, "-c", "pass"],
            "`lance-assets --help`": [cli, "--help"],
            "`lance-assets compact --help`": [cli, "compact", "--help"],
            "`lance-assets inspect <small>`": [cli, "inspect", uri],
            "`lance-assets inspect --json <small>`": [cli, "inspect", "--json", uri],
            "`lance-assets inspect --no-pages <small>`": [cli, "inspect", "--no-pages", uri],
        }
        _time([cli, "inspect", uri], 2)  # warm the page cache
        timings = {name: _time(cmd, args.runs) for name, cmd in commands.items()}
    load = os.getloadavg()[0]
    lines = [
        "# CLI startup",
        "",
        f"Command: `python benchmarks/bench_startup.py --runs {args.runs}` — {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.2f} at the end; the venv that "
        "`./dev setup` builds (bytecode compiled for the dependencies and the package). Whole process, a fresh "
        f"interpreter per run; target: under {TARGET_SECONDS} s.",
        "",
        "| command | fastest s | median s | target met (fastest) |",
        "|---|---:|---:|---|",
    ]
    for name, secs in timings.items():
        best = min(secs)
        met = "" if "floor" in name else ("yes" if best < TARGET_SECONDS else "no")
        lines.append(f"| {name} | {best:.3f} | {statistics.median(secs):.3f} | {met} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
