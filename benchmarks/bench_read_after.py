"""Reads after compaction: does the compacted table read as fast as a freshly written one?

    .venv/bin/python benchmarks/bench_read_after.py            # every case, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_read_after.py --quick    # smaller datasets
    .venv/bin/python benchmarks/bench_read_after.py --only stream-100-2.1 --repeat 5

Each case is a dataset of many small fragments written by pylance (the shapes streaming writers
leave: 100 or 1,000 rows per append, on 2.1 and 2.2; a 768-dim vector table; a 200-column
table). It is copied once per way of compacting it and compacted:

- ``lance-assets``: ``compact()`` with the defaults (``pages="coalesce"``: small 2.1/2.2 pages
  decoded and re-cut into large ones by the copy itself, pylance's file writer for what it
  cannot decode, the rest copied byte for byte);
- ``lance-assets copy``: ``compact(pages="copy")``, every page copied as it is (the old behaviour);
- ``pylance binary``: ``compact_files(compaction_mode="force_binary_copy")``;
- ``pylance reencode``: ``compact_files()``, pylance's default, which decodes and re-encodes.

On each result the same reads run (best of ``--repeat`` after a warm-up): a full scan, a
2-column scan, ``take`` of 1,000 random rows and a filter, each checked against the original
rows. The table gives seconds and, in brackets, the ratio to the re-encoded table (reads) or to
pylance's re-encode (compaction wall time), plus pages per column after compaction. Writes
``benchmarks/results-read-after.md`` (``--out``) with the exact command line.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import _strings, vector_table, wide_table

from lance_assets import CompactionOptions, compact, inspect_dataset

HERE = Path(__file__).resolve().parent


def stream_table(rows: int, seed: int = 0, version: str = "2.1") -> pa.Table:
    """The streaming shape of issue 23: int64 id, float64, string, bool, list<int32>."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, rows)
    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "f64": pa.array(rng.standard_normal(rows)),
            "name": _strings(rng, rows, 4, 24),
            "flag": pa.array(rng.random(rows) < 0.5),
            "tags": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(rng.integers(0, 1000, int(offsets[-1]), dtype=np.int32))
            ),
        }
    )


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[..., pa.Table]
    version: str
    fragments: int
    rows_per_fragment: int
    two_columns: tuple[str, str]
    filter: str

    @property
    def rows(self) -> int:
        return self.fragments * self.rows_per_fragment


def cases(quick: bool) -> list[Case]:
    k = 5 if quick else 1
    out = []
    for version in ("2.1", "2.2"):
        out.append(Case(f"stream-100-{version}", stream_table, version, 3000 // k, 100, ("id", "f64"), "f64 > 1.5"))
        out.append(Case(f"stream-1000-{version}", stream_table, version, 300 // k, 1000, ("id", "f64"), "f64 > 1.5"))
    out.append(Case("vector-200-2.1", vector_table, "2.1", 100 // k, 200, ("id", "doc"), "id % 10 = 3"))
    out.append(Case("wide-1000-2.1", wide_table, "2.1", 100 // k, 1000, ("id", "c001"), "c001 > 1.5"))
    return out


def build(case: Case, path: Path) -> None:
    """One pylance write cut into ``case.fragments`` files: the layout of as many appends."""
    table = case.make(case.rows, version=case.version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            table,
            str(path),
            data_storage_version=case.version,
            max_rows_per_file=case.rows_per_fragment,
            max_rows_per_group=case.rows_per_fragment,
        )
    assert len(lance.dataset(str(path)).get_fragments()) == case.fragments


def _ours(pages: str, processes: int = CompactionOptions().task_processes) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        compact(str(path), CompactionOptions(pages=pages, task_processes=processes))  # type: ignore[arg-type]

    return run


def _pylance(mode: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lance.dataset(str(path)).optimize.compact_files(compaction_mode=mode)

    return run


WAYS: dict[str, Callable[[Path], None]] = {
    "lance-assets": _ours("coalesce"),
    "lance-assets 1 process": _ours("coalesce", processes=1),  # no helper process (task_processes=1)
    "lance-assets copy": _ours("copy"),
    "pylance binary": _pylance("force_binary_copy"),
    "pylance reencode": _pylance("reencode"),
}


def reads(case: Case, take_ids: np.ndarray) -> dict[str, Callable[[lance.LanceDataset], Any]]:
    return {
        "full scan": lambda ds: ds.to_table(),
        "2-column scan": lambda ds: ds.to_table(columns=list(case.two_columns)),
        "take 1000": lambda ds: ds.take(take_ids),
        "filter": lambda ds: ds.to_table(filter=case.filter),
    }


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("id") if "id" in table.column_names else table


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def run_case(case: Case, root: Path, repeat: int, runs: int) -> list[dict[str, Any]]:
    base = root / f"{case.name}-base.lance"
    build(case, base)
    original = lance.dataset(str(base))
    take_ids = np.sort(np.random.default_rng(1).choice(case.rows, 1000, replace=False))
    checks = {name: _sorted(fn(original)) for name, fn in reads(case, take_ids).items() if name != "full scan"}
    whole = original.to_table()
    rows = []
    # Each way compacts ``runs`` fresh copies, the ways taking turns (load that comes and goes
    # hits them alike); the median is reported and the last copy is read.
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    for _run in range(runs):
        for way, compact_fn in WAYS.items():
            path = root / f"{case.name}-{way.replace(' ', '-')}.lance"
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(base, path)
            started = time.perf_counter()
            compact_fn(path)
            seconds[way].append(time.perf_counter() - started)
    for way in WAYS:
        path = root / f"{case.name}-{way.replace(' ', '-')}.lance"
        ds = lance.dataset(str(path))
        if not ds.to_table().equals(whole):
            raise AssertionError(f"{case.name}/{way}: rows differ after compaction")
        compacted = statistics.median(seconds[way])
        row: dict[str, Any] = {"case": case.name, "way": way, "compact": compacted, "fragments": len(ds.get_fragments())}
        for name, fn in reads(case, take_ids).items():
            if name in checks and not _sorted(fn(ds)).equals(checks[name]):
                raise AssertionError(f"{case.name}/{way}: {name} differs")
            row[name] = best_of(lambda fn=fn, ds=ds: fn(ds), repeat)
        health = inspect_dataset(str(path), pages=True)
        row["pages/column"] = max(c.pages for c in health.columns) if health.columns else 0
        rows.append(row)
        shutil.rmtree(path)
        print(f"  {case.name:16} {way:18} compact {compacted:7.3f}s  " + "  ".join(f"{k} {row[k] * 1000:8.1f}ms" for k in READS))
    shutil.rmtree(base)
    return rows


READS = ("full scan", "2-column scan", "take 1000", "filter")


def table_md(rows: list[dict[str, Any]]) -> str:
    out = [
        "| case | compacted by | compaction s | full scan ms | 2-column scan ms | take(1000) ms | filter ms | max pages per column | fragments |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        group = [r for r in rows if r["case"] == case]
        ref = next(r for r in group if r["way"] == "pylance reencode")
        for r in group:
            cells = [f"{r['compact']:.2f} ({r['compact'] / ref['compact']:.2f}x)"]
            cells += [f"{r[k] * 1000:.1f} ({r[k] / ref[k]:.2f}x)" for k in READS]
            out.append(f"| {case} | {r['way']} | " + " | ".join(cells) + f" | {r['pages/column']:,} | {r['fragments']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the fragments per case")
    parser.add_argument("--only", action="append", default=[], metavar="CASE", help="run only these cases (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per read (best is kept)")
    parser.add_argument("--runs", type=int, default=3, help="compactions per way, on fresh copies (the median is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results-read-after.md")
    parser.add_argument("--note", default="", help="a line added to the results (e.g. machine load)")
    args = parser.parse_args()
    chosen = [c for c in cases(args.quick) if not args.only or c.name in args.only]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-read-after-") as tmp:
        for case in chosen:
            print(f"{case.name}: {case.fragments} fragments of {case.rows_per_fragment} rows ({case.version})", flush=True)
            rows += run_case(case, Path(tmp), args.repeat, args.runs)
    command = "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    text = (
        "# Reads after compaction\n\n"
        f"Command: `{command}` on {platform.machine()}, Python {platform.python_version()}, pylance {lance.__version__}. "
        f"Compaction: median of {args.runs} runs per way on fresh copies, the ways taking turns. "
        f"Reads: best of {args.repeat} after a warm-up; in brackets the ratio to the table pylance's `compact_files()` "
        "(re-encode) left (reads), or to its wall time (compaction). Every result read back equal to the original.\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + table_md(rows)
        + "\n"
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
