"""Reads after compaction: does the compacted table read as fast as a freshly written one?

    .venv/bin/python benchmarks/bench_read_after.py            # every case, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_read_after.py --quick    # smaller datasets
    .venv/bin/python benchmarks/bench_read_after.py --only stream-100-2.1 --repeat 5
    .venv/bin/python benchmarks/bench_read_after.py --only s3-stream-200-2.2   # the S3 case alone (--no-s3: none)

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

The S3 case (issue 23's: 200 appends of 200 rows of the streaming shape, 2.2) is written by
pylance into a moto S3 server (benchmarks/s3_common.py); each compaction starts from the same
pristine objects, runs in a process of its own and, like the reads, goes through a loopback
proxy that waits ``--latency-ms`` (20) before each request and counts them
(tests/support/s3_proxy.py). It runs without the ``lance-assets 1 process`` way (helper
processes start only for 1,024 or more local files) and writes its own results file,
``benchmarks/results-read-after-s3.md`` (``--s3-out``), with the requests per compaction and per
read; about two minutes.
"""

from __future__ import annotations

import argparse
import os
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
from s3_common import client as s3_client
from s3_common import objects, restore, run_compaction, start_moto, storage_options

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
    # 2.0 (re-cut by the copy since pages20): the streaming shape of many small appends
    out.append(Case("stream-100-2.0", stream_table, "2.0", 3000 // k, 100, ("id", "f64"), "f64 > 1.5"))
    out.append(Case("vector-200-2.1", vector_table, "2.1", 100 // k, 200, ("id", "doc"), "id % 10 = 3"))
    out.append(Case("wide-1000-2.1", wide_table, "2.1", 100 // k, 1000, ("id", "c001"), "c001 > 1.5"))
    return out


def build(case: Case, uri: str, storage_options: dict[str, str] | None = None) -> None:
    """One pylance write cut into ``case.fragments`` files: the layout of as many appends."""
    table = case.make(case.rows, version=case.version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            table,
            uri,
            data_storage_version=case.version,
            max_rows_per_file=case.rows_per_fragment,
            max_rows_per_group=case.rows_per_fragment,
            storage_options=storage_options,
        )
    assert len(lance.dataset(uri, storage_options=storage_options).get_fragments()) == case.fragments


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


@dataclass(frozen=True)
class Original:
    """The uncompacted table and what each read returns on it (sorted by id), to check results against."""

    whole: pa.Table
    checks: dict[str, pa.Table]
    take_ids: np.ndarray

    @classmethod
    def of(cls, case: Case, ds: lance.LanceDataset) -> Original:
        take_ids = np.sort(np.random.default_rng(1).choice(case.rows, 1000, replace=False))
        checks = {name: _sorted(fn(ds)) for name, fn in reads(case, take_ids).items() if name != "full scan"}
        return cls(ds.to_table(), checks, take_ids)


def read_row(case: Case, way: str, ds: lance.LanceDataset, original: Original, repeat: int, proxy: Any = None) -> dict[str, Any]:
    """Check the compacted ``ds`` against the original, then time each read on it (best of
    ``repeat`` after a warm-up). With a ``proxy`` (tests/support/s3_proxy.py), also the requests
    one more run of each read sends through it, under ``"<read> requests"``."""
    if not ds.to_table().equals(original.whole):
        raise AssertionError(f"{case.name}/{way}: rows differ after compaction")
    row: dict[str, Any] = {"case": case.name, "way": way, "fragments": len(ds.get_fragments())}
    for name, fn in reads(case, original.take_ids).items():
        if name in original.checks and not _sorted(fn(ds)).equals(original.checks[name]):
            raise AssertionError(f"{case.name}/{way}: {name} differs")
        row[name] = best_of(lambda fn=fn, ds=ds: fn(ds), repeat)
        if proxy is not None:
            proxy.reset()
            fn(ds)
            row[f"{name} requests"] = proxy.total
    return row


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"  {row['case']:18} {row['way']:22} compact {row['compact']:7.3f}s  "
        + "  ".join(f"{k} {row[k] * 1000:8.1f}ms" for k in READS)
    )


def run_case(case: Case, root: Path, repeat: int, runs: int) -> list[dict[str, Any]]:
    base = root / f"{case.name}-base.lance"
    build(case, str(base))
    original = Original.of(case, lance.dataset(str(base)))
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
        row = read_row(case, way, lance.dataset(str(path)), original, repeat)
        row["compact"] = statistics.median(seconds[way])
        health = inspect_dataset(str(path), pages=True)
        row["pages/column"] = max(c.pages for c in health.columns) if health.columns else 0
        rows.append(row)
        shutil.rmtree(path)
        _print_row(row)
    shutil.rmtree(base)
    return rows


#: The ways on S3, each run by s3_common.run_compaction in a process of its own (its variant names).
S3_WAYS = {
    "lance-assets": "ours",
    "lance-assets copy": "ours_copy",
    "pylance binary": "pylance_binary_copy",
    "pylance reencode": "pylance_reencode",
}


def s3_cases(quick: bool) -> list[Case]:
    """Issue 23's S3 measurement: 200 appends of 200 rows of the streaming shape, 2.2."""
    k = 5 if quick else 1
    return [Case("s3-stream-200-2.2", stream_table, "2.2", 200 // k, 200, ("id", "f64"), "f64 > 1.5")]


def run_s3_case(case: Case, repeat: int, runs: int, latency_ms: float) -> list[dict[str, Any]]:
    """The case on a moto S3 server of its own, compacted and read through a proxy that waits
    ``latency_ms`` before each request and counts them."""
    from tests.support.s3_proxy import S3Proxy  # the repository root is on sys.path through s3_common

    server, endpoint = start_moto()
    try:
        with S3Proxy(endpoint, delay=latency_ms / 1000) as proxy:
            return _s3_case(case, repeat, runs, endpoint, proxy)
    finally:
        server.kill()
        server.wait()


def _s3_case(case: Case, repeat: int, runs: int, endpoint: str, proxy: Any) -> list[dict[str, Any]]:
    """pylance writes the case under ``pristine/`` straight into moto; each compaction starts from a
    copy of those objects under the way's own prefix and goes through the proxy, as do the reads."""
    client = s3_client(endpoint)
    bucket = "read-after"
    client.create_bucket(Bucket=bucket)
    direct, through_proxy = storage_options(endpoint), storage_options(proxy.url)
    build(case, f"s3://{bucket}/pristine", direct)
    pristine = [o["Key"] for o in objects(client, bucket, "pristine/")]
    original = Original.of(case, lance.dataset(f"s3://{bucket}/pristine", storage_options=direct))
    ways = list(S3_WAYS)
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    requests: dict[str, list[int]] = {way: [] for way in ways}
    cpu: dict[str, list[float]] = {way: [] for way in ways}
    for run in range(runs):  # the ways take turns, each run starting with the next one
        for way in ways[run % len(ways) :] + ways[: run % len(ways)]:
            prefix = way.replace(" ", "-")
            restore(client, bucket, pristine, dest=prefix + "/")
            proxy.reset()
            info = run_compaction(S3_WAYS[way], f"s3://{bucket}/{prefix}", proxy.url)
            seconds[way].append(info["seconds"])
            requests[way].append(proxy.total)
            cpu[way].append(info["cpu_seconds"])
    rows = []
    for way in ways:
        uri = f"s3://{bucket}/{way.replace(' ', '-')}"
        row = read_row(case, way, lance.dataset(uri, storage_options=through_proxy), original, repeat, proxy)
        row["compact"] = statistics.median(seconds[way])
        row["compact requests"] = statistics.median(requests[way])
        row["compact runs"] = seconds[way]
        row["compact cpu"] = statistics.median(cpu[way])
        health = inspect_dataset(uri, pages=True, storage_options=direct)
        row["pages/column"] = max(c.pages for c in health.columns) if health.columns else 0
        rows.append(row)
        _print_row(row)
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


def requests_md(rows: list[dict[str, Any]]) -> str:
    """Requests each way sent through the proxy, per compaction (median) and per read (one run
    after the timed ones); the CPU seconds of the compacting process (median) and the seconds of
    each compaction run in the order they ran."""
    out = [
        "| case | compacted by | compaction | full scan | 2-column scan | take(1000) | filter | compaction CPU s | compaction runs s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [f"{r['compact requests']:.0f}", *(f"{r[f'{k} requests']}" for k in READS), f"{r['compact cpu']:.2f}"]
        cells.append(", ".join(f"{x:.2f}" for x in r["compact runs"]))
        out.append(f"| {r['case']} | {r['way']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the fragments per case")
    parser.add_argument("--only", action="append", default=[], metavar="CASE", help="run only these cases (repeatable)")
    parser.add_argument(
        "--s3", action=argparse.BooleanOptionalAction, default=True, help="run the S3 case too (moto behind a latency proxy)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per read (best is kept)")
    parser.add_argument("--runs", type=int, default=3, help="compactions per way, on fresh copies (the median is kept)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the S3 proxy's wait before each request")
    parser.add_argument("--out", type=Path, default=HERE / "results-read-after.md", help="results of the local cases")
    parser.add_argument("--s3-out", type=Path, default=HERE / "results-read-after-s3.md", help="results of the S3 case")
    parser.add_argument("--note", default="", help="a line added to the results (e.g. machine load)")
    args = parser.parse_args()
    unknown = set(args.only) - {c.name for c in cases(args.quick) + s3_cases(args.quick)}
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    return args


def _write(path: Path, title: str, method: str, body: str, args: argparse.Namespace, load_start: float) -> None:
    """One results file: the command line, the machine and its load, the method, then the tables."""
    command = "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    text = (
        f"# {title}\n\n"
        f"Command: `{command}` on {platform.machine()}, Python {platform.python_version()}, pylance {lance.__version__}; "
        f"load average (1 min) {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs. "
        f"{method} Reads: best of {args.repeat} after a warm-up; in brackets the ratio to the table pylance's "
        "`compact_files()` (re-encode) left (reads), or to its wall time (compaction). Every result read back equal to "
        "the original.\n\n" + (f"{args.note}\n\n" if args.note else "") + body + "\n"
    )
    path.write_text(text)
    print(text)


def main() -> None:
    args = _parse()
    load_start = os.getloadavg()[0]
    local = [c for c in cases(args.quick) if c.name in args.only or not args.only]
    remote = [c for c in s3_cases(args.quick) if c.name in args.only or (args.s3 and not args.only)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-read-after-") as tmp:
        for case in local:
            print(f"{case.name}: {case.fragments} fragments of {case.rows_per_fragment} rows ({case.version})", flush=True)
            rows += run_case(case, Path(tmp), args.repeat, args.runs)
    if rows:
        method = f"Compaction: median of {args.runs} runs per way on fresh copies, the ways taking turns."
        _write(args.out, "Reads after compaction", method, table_md(rows), args, load_start)
    rows = []
    for case in remote:
        print(f"{case.name}: {case.fragments} fragments of {case.rows_per_fragment} rows ({case.version}) on S3", flush=True)
        rows += run_s3_case(case, args.repeat, args.runs, args.latency_ms)
    if rows:
        method = (
            f"pylance writes each case straight into a moto S3 server (threaded, in a process of its own). Every "
            "compaction starts from a copy of those pristine objects made inside the store, runs in a process of its "
            f"own and goes through a loopback proxy (tests/support/s3_proxy.py, in the benchmark's process) that waits "
            f"{args.latency_ms:g} ms before forwarding each request, as a real store's round trip does; its seconds "
            f"cover opening the dataset and compacting it (imports excluded), median of {args.runs} runs per way, the "
            "ways taking turns. The reads run in the benchmark's process through the same proxy, on one opened dataset "
            "per way (metadata cached by pylance after the warm-up, as in a reader that stays up)."
        )
        body = (
            table_md(rows)
            + "\n\nRequests sent through the proxy, per compaction (median) and per read (one more run after the timed "
            "ones); CPU seconds of the compacting process over the timed span, all its threads (median); the seconds of "
            "every compaction run, in the order they ran:\n\n" + requests_md(rows)
        )
        _write(
            args.s3_out,
            f"Reads after compaction on S3 (moto, {args.latency_ms:g} ms per request)",
            method,
            body,
            args,
            load_start,
        )


if __name__ == "__main__":
    main()
