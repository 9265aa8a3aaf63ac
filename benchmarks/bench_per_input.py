"""CPU per input, and whole-process time, on 1,000 small files (issue 24, item 4).

    python benchmarks/bench_per_input.py                 # 1,000 files x 1,000 rows, 5 runs per way
    python benchmarks/bench_per_input.py --files 200 --runs 2

The dataset: one pylance write of the mixed schema (``datasets.mixed_table``: ints, floats,
strings, booleans, timestamps, a list and a struct, ~10 % nulls) at file version 2.2, cut into
``--files`` files of ``--rows`` rows, as that many appends leave them. Each run compacts a fresh
copy (data files hard-linked, metadata copied) and the ways take turns, so load that comes and
goes hits them alike; medians are reported.

Two measurements per way:

- **whole process**: the command a user runs, timed from its start to its exit (interpreter,
  imports, opening, planning, copying, committing): ``lance-assets compact`` (the CLI) and a
  ``python -c`` of pylance's ``compact_files()`` in ``force_binary_copy`` and ``reencode`` modes;
- **in-process CPU** (lance_assets only, in a child with ``task_processes=1`` so that one
  process does all the work): the CPU time of the ``compact()`` call alone, divided by the input
  column chunks (a file's pages of one column; files x columns), the figure issue 24 bounds at
  40 us; the child compacts a small dataset first, untimed, so that imports and first calls
  (counted in the whole-process times) are not counted per input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_CPU_US = 40.0  # issue 24: CPU per input column chunk, in-process
TARGET_VS_BINARY = 2.5  # issue 24: whole process, times faster than pylance's force_binary_copy
VERSION = "2.2"


def build(path: Path, files: int, rows: int) -> None:
    import lance

    sys.path.insert(0, str(HERE))
    from datasets import mixed_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            mixed_table(files * rows, version=VERSION),
            str(path),
            data_storage_version=VERSION,
            max_rows_per_file=rows,
            max_rows_per_group=rows,
        )


def column_chunks(path: Path) -> int:
    """Input column chunks: for every data file, the columns it holds."""
    from lance_assets.engine.dataset import Dataset, storage_of

    ds = Dataset.open(storage_of(str(path), None))
    return sum(sum(1 for c in df.column_indices if c >= 0) for frag in ds.manifest.fragments for df in frag.files)


def fresh_copy(base: Path, path: Path) -> None:
    """``base`` at ``path``: data files hard-linked (no compaction rewrites one), the rest copied
    (manifests and hints are replaced in place by some writers)."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base, path, ignore=shutil.ignore_patterns("data"))
    shutil.copytree(base / "data", path / "data", copy_function=os.link)


def _pylance_code(mode: str, path: Path) -> str:
    return (
        "import warnings; warnings.simplefilter('ignore'); import lance; "
        f"lance.dataset({str(path)!r}).optimize.compact_files(compaction_mode={mode!r})"
    )


def whole_process_command(way: str, path: Path) -> list[str]:
    cli = str(Path(sys.executable).with_name("lance-assets"))
    if way == "lance-assets":
        return [cli, "compact", str(path), "--json"]
    if way == "lance-assets copy":
        return [cli, "compact", str(path), "--json", "--pages", "copy"]
    mode = {"pylance binary": "force_binary_copy", "pylance reencode": "reencode"}[way]
    return [sys.executable, "-c", _pylance_code(mode, path)]


WAYS = ("lance-assets", "lance-assets copy", "pylance binary", "pylance reencode")
CPU_WAYS = {"lance-assets 1 process": "coalesce", "lance-assets copy": "copy"}


def child(pages: str, path: str, warm: str) -> None:
    """In-process: one ``compact()`` call in this process alone (no helper), its wall and CPU.
    A small dataset (``warm``) is compacted first, untimed, so that what a process does once
    (imports, numpy's included, first calls) is counted in the whole-process times, not per
    input."""
    from lance_assets import CompactionOptions, compact
    from lance_assets.engine.copying.parts import tune_allocator

    tune_allocator()  # as the CLI does in its process
    options = CompactionOptions(pages=pages, task_processes=1)  # type: ignore[arg-type]
    compact(warm, options)
    wall, cpu = time.perf_counter(), time.process_time()
    compact(path, options)
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(base: Path, warm: Path, work: Path, runs: int) -> tuple[dict[str, list[float]], dict[str, list[dict[str, float]]]]:
    import lance

    expected = lance.dataset(str(base)).to_table()
    whole: dict[str, list[float]] = {way: [] for way in WAYS}
    inproc: dict[str, list[dict[str, float]]] = {way: [] for way in CPU_WAYS}
    for run in range(runs):
        for way in WAYS:
            fresh_copy(base, work)
            whole[way].append(_timed(whole_process_command(way, work)))
            if run == 0 and not lance.dataset(str(work)).to_table().equals(expected):
                raise AssertionError(f"{way}: rows differ after compaction")
        for way, pages in CPU_WAYS.items():
            fresh_copy(base, work)
            fresh_copy(warm, work.with_name("warm-work.lance"))
            out = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    pages,
                    str(work),
                    str(work.with_name("warm-work.lance")),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            inproc[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"run {run + 1}: " + ", ".join(f"{w} {whole[w][-1]:.2f}s" for w in WAYS), flush=True)
    return whole, inproc


def report(
    args: argparse.Namespace, chunks: int, whole: dict[str, list[float]], inproc: dict[str, list[dict[str, float]]]
) -> str:
    med = {way: statistics.median(times) for way, times in whole.items()}
    binary = med["pylance binary"]
    lines = [
        "| way | whole process s (median) | fastest s | pylance force_binary_copy ÷ this |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {w} | {med[w]:.2f} | {min(whole[w]):.2f} | {binary / med[w]:.2f}x |" for w in WAYS]
    lines += [
        "",
        f"In-process, one process (`task_processes=1`), the `compact()` call alone, {chunks:,} input column chunks:",
        "",
        "| way | wall s (median) | CPU s (median) | CPU us per input column chunk |",
        "|---|---:|---:|---:|",
    ]
    for way, results in inproc.items():
        wall = statistics.median(r["wall"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        lines.append(f"| {way} | {wall:.3f} | {cpu:.3f} | {cpu / chunks * 1e6:.0f} |")
    command = "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    load = os.getloadavg()[0]
    return (
        "# CPU per input and whole-process time (issue 24, item 4)\n\n"
        f"Command: `{command}` on {platform.machine()} ({os.cpu_count()} CPUs), Python {platform.python_version()}, "
        f"pylance {__import__('lance').__version__}; load average {load:.1f} at the end. Dataset: {args.files:,} files x "
        f"{args.rows:,} rows of the mixed schema at file version {VERSION}; {args.runs} runs per way on fresh copies, "
        "the ways taking turns. Whole process: the command a user runs, from start to exit (the `lance-assets` CLI; "
        "pylance's `compact_files()` in a `python -c`). Targets: at most "
        f"{TARGET_CPU_US:.0f} us of CPU per input column chunk in-process, and {TARGET_VS_BINARY}x faster than "
        "pylance's force_binary_copy whole-process.\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results-per-input.md")
    parser.add_argument("--child", nargs=3, metavar=("PAGES", "PATH", "WARM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-per-input-") as tmp:
        base, warm, work = Path(tmp) / "base.lance", Path(tmp) / "warm.lance", Path(tmp) / "work.lance"
        build(base, args.files, args.rows)
        build(warm, 20, 100)
        chunks = column_chunks(base)
        whole, inproc = measure(base, warm, work, args.runs)
    text = report(args, chunks, whole, inproc)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
