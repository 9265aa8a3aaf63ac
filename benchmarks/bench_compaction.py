"""Compaction benchmark: lance_assets vs pylance's binary copy, pylance's re-encode and ``cat``.

    .venv/bin/python benchmarks/bench_compaction.py            # default size (~8 min on 2 cores)
    .venv/bin/python benchmarks/bench_compaction.py --quick    # CI size (~1 min)
    .venv/bin/python benchmarks/bench_compaction.py --full     # larger datasets, 2.3 too, 5 runs

Datasets are written by pylance (``benchmarks/datasets.py``): a mixed schema, 768-dim vectors,
200 columns and 10,000 tiny fragments, each in several storage versions. For every dataset
and run, each variant gets a fresh copy of the dataset (untimed: copied once, reset to the
original state after each run by removing the files the compaction added, then synced) and
runs in its own subprocess, which reports the seconds of the compaction call alone and its
peak RSS (its own ``VmHWM``; for ``cat`` the rusage of the waited-for ``cat``). The variants
of one run are interleaved so background load hits all of them alike. Every compacted dataset
is checked with pylance: the same rows as before, compared sorted by ``id``. ``cat`` of the
same data files into one file is the physical limit of copying the bytes.

Also: planning and a sensor tick (``inspect_dataset``) on a synthetic 100,000-fragment
manifest (one real data file listed under 100,000 fragment ids).

Writes ``benchmarks/results.md`` and, with matplotlib (``pip install -e '.[bench]'``),
``benchmarks/results.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MIB = 1024 * 1024
VARIANTS = ("ours", "pylance_binary_copy", "pylance_reencode", "cat")
LABELS = {
    "ours": "lance_assets",
    "pylance_binary_copy": "pylance force_binary_copy",
    "pylance_reencode": "pylance reencode",
    "cat": "cat (limit)",
}

# Per case: (fragments, rows per fragment).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "sizes": {"mixed": (20, 5_000), "vector": (16, 500), "wide": (10, 1_000), "tiny": (1_000, 10)},
        "versions": ["2.0", "2.1"],
        "runs": 3,
        "synthetic_fragments": 100_000,
    },
    "default": {
        "sizes": {"mixed": (100, 20_000), "vector": (100, 1_000), "wide": (50, 2_000), "tiny": (10_000, 10)},
        "versions": ["2.0", "2.1", "2.2"],
        "runs": 5,
        "synthetic_fragments": 100_000,
    },
    "full": {
        "sizes": {"mixed": (200, 50_000), "vector": (200, 2_000), "wide": (100, 5_000), "tiny": (10_000, 10)},
        "versions": ["2.0", "2.1", "2.2", "2.3"],
        "runs": 5,
        "synthetic_fragments": 100_000,
    },
}


# --- children: one variant, timed from inside its own process ------------------------------------
def _status_kib(key: str) -> int:
    """A /proc/self/status figure in KiB (VmRSS: now, VmHWM: peak since exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    return _status_kib("VmRSS")


def child(variant: str, path: str, read_batch_bytes: int) -> None:
    """Compact ``path`` with one variant; print one JSON line."""
    warnings.simplefilter("ignore")
    if variant == "ours":
        from lance_assets.engine.compaction import compact
        from lance_assets.engine.options import CompactionOptions

        options = CompactionOptions(read_batch_bytes=read_batch_bytes)
        rss_before = _rss_kib()
        started = time.perf_counter()
        report = compact(path, options)
        seconds = time.perf_counter() - started
        out = {"fragments_removed": report.fragments_removed, "fragments_added": report.fragments_added}
    elif variant in ("pylance_binary_copy", "pylance_reencode"):
        import lance

        mode = "force_binary_copy" if variant == "pylance_binary_copy" else "reencode"
        kwargs: dict[str, Any] = {"compaction_mode": mode}
        if mode == "force_binary_copy":
            kwargs["binary_copy_read_batch_bytes"] = read_batch_bytes
        rss_before = _rss_kib()
        started = time.perf_counter()  # opening the dataset is timed, as compact() opens it too
        metrics = lance.dataset(path).optimize.compact_files(**kwargs)
        seconds = time.perf_counter() - started
        out = {"fragments_removed": metrics.fragments_removed, "fragments_added": metrics.fragments_added}
    elif variant == "cat":
        # The paths come on stdin; cat's own peak RSS is read from rusage after waiting for it.
        import resource

        files = sys.stdin.buffer.read()
        rss_before = 0
        with open(path, "wb") as dst:  # for cat, PATH is the output file
            started = time.perf_counter()
            subprocess.run(["xargs", "-0", "cat"], input=files, stdout=dst, check=True)
            seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps({"seconds": seconds, "rss_before_kib": 0, "peak_rss_kib": peak}), flush=True)
        return
    elif variant == "plan":
        plan_child(path)
        return
    else:
        raise SystemExit(f"unknown variant {variant}")
    # VmHWM of this process: rusage of a child would include the parent's RSS at fork time.
    print(json.dumps({"seconds": seconds, "rss_before_kib": rss_before, "peak_rss_kib": _status_kib("VmHWM"), **out}), flush=True)


def plan_child(path: str) -> None:
    """Time planning and one inspection (a sensor tick) from the URI, five times each."""
    from lance_assets.engine.maintenance.inspect import inspect_dataset
    from lance_assets.engine.planning.plan import plan_compaction

    plan_s, inspect_s, plan_cpu, inspect_cpu = [], [], [], []
    tasks = fragments = 0
    for _ in range(5):
        started, cpu = time.perf_counter(), time.process_time()
        plan = plan_compaction(path)
        plan_s.append(time.perf_counter() - started)
        plan_cpu.append(time.process_time() - cpu)
        started, cpu = time.perf_counter(), time.process_time()
        inspection = inspect_dataset(path)
        inspect_s.append(time.perf_counter() - started)
        inspect_cpu.append(time.process_time() - cpu)
        tasks, fragments = len(plan.tasks), inspection.summary.fragments
    print(
        json.dumps(
            {
                "plan": plan_s,
                "inspect": inspect_s,
                "plan_cpu": plan_cpu,
                "inspect_cpu": inspect_cpu,
                "tasks": tasks,
                "fragments": fragments,
                "peak_rss_kib": _status_kib("VmHWM"),
            }
        ),
        flush=True,
    )


# --- parent ---------------------------------------------------------------------------------------
@dataclass
class Measurement:
    seconds: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)
    rss_before_kib: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


@dataclass
class CaseResult:
    case: str
    version: str
    fragments: int
    rows: int
    source_bytes: int
    variants: dict[str, Measurement]


def _spawn(argv: list[str], stdin_data: bytes | None = None) -> tuple[int, bytes]:
    """Run a child to completion; returns its exit status and stdout (stderr appended on failure)."""
    proc = subprocess.run(argv, input=stdin_data, capture_output=True)
    out = proc.stdout if proc.returncode == 0 else proc.stdout + b"\n" + proc.stderr
    return proc.returncode, out


def _data_files(path: Path) -> list[Path]:
    """The data files of the latest version, in fragment order (what a compaction reads)."""
    from lance_assets.engine.dataset import Dataset

    ds = Dataset.open(str(path))
    return [path / ds.data_file_path(df) for frag in ds.manifest.fragments for df in frag.files]


def _snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path -> size)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            out[os.path.relpath(full, root)] = os.path.getsize(full)
    return out


def _reset(work: Path, src: Path, snapshot: dict[str, int]) -> None:
    """Return a compacted copy to the source's state.

    A compaction only adds files (data files, a manifest, a transaction) and rewrites the
    version hint: remove what is new, restore the small metadata folders from the source,
    then check the listing matches the source's exactly.
    """
    for rel in set(_snapshot(work)) - set(snapshot):
        os.unlink(work / rel)
    for folder in ("_versions", "_transactions"):
        if (src / folder).exists():
            shutil.copytree(src / folder, work / folder, dirs_exist_ok=True)
    if _snapshot(work) != snapshot:
        raise RuntimeError(f"could not reset {work} to the state of {src}")


def _fresh_copy(src: Path, dst: Path, *, sync: bool = True) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)  # much faster than copytree for 10,000 files
    if sync:
        os.sync()  # the copy's dirty pages must not be written back during a timed run
    return dst


def _sorted_table(path: Path) -> Any:
    import lance

    return lance.dataset(str(path)).to_table().sort_by("id")


def _run_variant(
    variant: str, work: Path, files: list[Path], read_batch_bytes: int, cat_out: Path
) -> tuple[float, int, int, dict[str, Any]]:
    """Seconds, peak RSS (KiB), RSS before the call (KiB) and the child's report. ``files`` are relative to ``work``."""
    target = cat_out if variant == "cat" else work
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        str(target),
        "--read-batch-bytes",
        str(read_batch_bytes),
    ]
    # cat: one file holding every data file's bytes, the least any copier has to do.
    listing = b"\0".join(str(work / f).encode() for f in files) if variant == "cat" else None
    code, data = _spawn(argv, listing)
    if code != 0:
        raise RuntimeError(data.decode(errors="replace")[-2000:])
    line = [ln for ln in data.decode().splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    return result["seconds"], result["peak_rss_kib"], result["rss_before_kib"], result


def measure_case(
    case: str, version: str, shape: tuple[int, int], root: Path, runs: int, read_batch_bytes: int, rebuild: bool
) -> CaseResult:
    from datasets import Size, build  # numpy and pyarrow stay out of the measured children

    size = Size(*shape)
    src = root / "datasets" / f"{case}-{version}-{size.fragments}x{size.rows_per_fragment}.lance"
    marker = src / ".complete"
    if rebuild or not marker.exists():
        print(f"  building {src.name} with pylance ...", flush=True)
        build(case, version, size, src)
        marker.write_text("ok")
        os.sync()
    files = _data_files(src)
    source_bytes = sum(f.stat().st_size for f in files)
    files = [f.relative_to(src) for f in files]
    expected = _sorted_table(src)
    result = CaseResult(case, version, size.fragments, size.rows, source_bytes, {v: Measurement() for v in VARIANTS})
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    snapshot = _snapshot(src)
    # One copy per variant (cat only reads, so it reads the source), reset to the source's
    # state before every run: copying and deleting 10,000 files per run would dominate.
    works = {v: (src if v == "cat" else _fresh_copy(src, run_dir / f"{v}.lance", sync=False)) for v in VARIANTS}
    for run in range(runs):
        order = VARIANTS[run % len(VARIANTS) :] + VARIANTS[: run % len(VARIANTS)]
        t0 = time.perf_counter()
        for work in works.values():
            if work != src:
                _reset(work, src, snapshot)
        (run_dir / "cat.out").unlink(missing_ok=True)
        os.sync()  # no dirty pages of the copies are written back during the timed calls
        copy_s = time.perf_counter() - t0
        for variant in order:
            m = result.variants[variant]
            if m.error:
                continue
            work = works[variant]
            os.sync()  # nor are the previous variant's output (or anyone else's) during this one
            t1 = time.perf_counter()
            try:
                seconds, rss, rss_before, info = _run_variant(variant, work, files, read_batch_bytes, run_dir / "cat.out")
                t2 = time.perf_counter()
                if variant != "cat":
                    got = _sorted_table(work)
                    if not got.equals(expected):
                        raise RuntimeError("compacted dataset differs from the original (sorted by id)")
                    if info.get("fragments_added", 0) >= info.get("fragments_removed", 0) and size.fragments > 1:
                        raise RuntimeError(f"did not compact: {info}")
            except Exception as exc:
                m.error = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
                print(f"    {variant}: ERROR {m.error}", flush=True)
                continue
            m.seconds.append(seconds)
            m.peak_rss_kib.append(rss)
            m.rss_before_kib.append(rss_before)
            print(
                f"    run {run + 1} {variant:20s} {seconds:7.3f} s  peak RSS {rss / 1024:7.1f} MiB  "
                f"(untimed: copies {copy_s:.1f} s, process {t2 - t1:.1f} s, check {time.perf_counter() - t2:.1f} s)",
                flush=True,
            )
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def synthetic_manifest(src: Path, dst: Path, fragments: int) -> None:
    """A new version of ``src`` whose manifest lists one real data file under ``fragments`` ids."""
    from lance_assets._proto import table_pb2
    from lance_assets.engine.dataset import Dataset
    from lance_assets.format import manifest as mf

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    ds = Dataset.open(str(dst))
    manifest = table_pb2.Manifest()
    manifest.CopyFrom(ds.manifest)
    proto = table_pb2.DataFragment()
    proto.CopyFrom(manifest.fragments[0])
    del manifest.fragments[:]
    for i in range(fragments):
        frag = manifest.fragments.add()
        frag.CopyFrom(proto)
        frag.id = i
    manifest.max_fragment_id = fragments - 1
    manifest.version = ds.version + 1
    manifest.ClearField("transaction_file")
    data = mf.build_manifest_file(manifest, None, ds.file.index_section)
    (dst / "_versions" / mf.manifest_name(manifest.version, ds.location.scheme)).write_bytes(data)


def measure_planning(root: Path, src: Path, fragments: int) -> dict[str, Any]:
    dst = root / "run" / f"synthetic-{fragments}.lance"
    started = time.perf_counter()
    synthetic_manifest(src, dst, fragments)
    print(f"  synthetic manifest of {fragments} fragments written in {time.perf_counter() - started:.1f} s", flush=True)
    code, data = _spawn([sys.executable, str(Path(__file__).resolve()), "--child", "plan", str(dst)])
    shutil.rmtree(dst, ignore_errors=True)
    if code != 0:
        raise RuntimeError(data.decode(errors="replace")[-2000:])
    return json.loads([ln for ln in data.decode().splitlines() if ln.startswith("{")][-1])


# --- report ---------------------------------------------------------------------------------------
def _mbps(result: CaseResult, variant: str) -> float:
    return result.source_bytes / result.variants[variant].median / 1e6


def _ratio(result: CaseResult, other: str) -> float:
    """How many times faster ours is than ``other`` (> 1: faster)."""
    return result.variants[other].median / result.variants["ours"].median


def _fmt(x: float, digits: int = 2) -> str:
    return "—" if x != x else f"{x:.{digits}f}"  # NaN -> dash


def render_markdown(
    results: list[CaseResult], planning: dict[str, Any] | None, args: argparse.Namespace, command: str, elapsed: float
) -> str:
    budget_mib = args.read_batch_bytes / MIB + 100
    lines = [
        "# Compaction benchmark",
        "",
        f"Command: `{command}` — {elapsed / 60:.1f} min on {os.cpu_count()} CPUs, "
        f"{_mem_gib():.0f} GiB RAM, {platform.python_implementation()} {platform.python_version()}, "
        f"pylance {_pylance_version()}, `read_batch_bytes` = {args.read_batch_bytes // MIB} MiB "
        f"(also passed to pylance as `binary_copy_read_batch_bytes`), median of {args.runs} runs.",
        "",
        "Seconds are the compaction call alone (open + plan + copy + commit, for every variant; interpreter start and imports "
        "excluded), each run on a fresh copy of the dataset in the page cache; `cat` is "
        "`xargs -0 cat` of the same data files into one file. MB/s = source data bytes / median "
        "seconds (MB = 10^6 bytes). Ratios are throughput ratios (> 1: lance_assets faster). "
        "Peak RSS is the whole subprocess (interpreter and imports included, about 78 MiB for "
        "lance_assets before any work).",
        "",
        "| case | version | fragments | source MB | lance_assets s | pylance binary copy s | pylance reencode s | cat s "
        "| lance_assets MB/s | ÷ binary copy | ÷ reencode | ÷ cat | peak RSS MiB (ours / binary copy / reencode) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        v = r.variants

        def secs(name: str, v: dict[str, Any] = v) -> str:
            return f"error: {v[name].error}" if v[name].error else _fmt(v[name].median, 3)

        def rss(name: str, v: dict[str, Any] = v) -> str:
            return "—" if not v[name].peak_rss_kib else f"{max(v[name].peak_rss_kib) / 1024:.0f}"

        lines.append(
            f"| {r.case} | {r.version} | {r.fragments:,} | {r.source_bytes / 1e6:.0f} | {secs('ours')} | "
            f"{secs('pylance_binary_copy')} | {secs('pylance_reencode')} | {secs('cat')} | {_fmt(_mbps(r, 'ours'), 0)} | "
            f"{_fmt(_ratio(r, 'pylance_binary_copy'))}× | {_fmt(_ratio(r, 'pylance_reencode'))}× | {_fmt(_ratio(r, 'cat'))}× | "
            f"{rss('ours')} / {rss('pylance_binary_copy')} / {rss('pylance_reencode')} |"
        )
    lines += [
        "",
        f"Fastest of the {args.runs} runs (seconds), less sensitive to other processes on the machine:",
        "",
        "| case | version | lance_assets | pylance binary copy | pylance reencode | cat | ÷ binary copy | ÷ reencode | ÷ cat |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        best = {name: (min(m.seconds) if m.seconds and not m.error else float("nan")) for name, m in r.variants.items()}
        lines.append(
            f"| {r.case} | {r.version} | {_fmt(best['ours'], 3)} | {_fmt(best['pylance_binary_copy'], 3)} | "
            f"{_fmt(best['pylance_reencode'], 3)} | {_fmt(best['cat'], 3)} | {_fmt(best['pylance_binary_copy'] / best['ours'])}× | "
            f"{_fmt(best['pylance_reencode'] / best['ours'])}× | {_fmt(best['cat'] / best['ours'])}× |"
        )
    lines += ["", "## Targets (on the medians)", ""]
    checks = [
        ("throughput ≥ pylance force_binary_copy", lambda r: _ratio(r, "pylance_binary_copy") >= 1.0),
        ("throughput ≥ 0.8 × cat", lambda r: _ratio(r, "cat") >= 0.8),
        ("throughput ≥ 10 × reencode", lambda r: _ratio(r, "pylance_reencode") >= 10.0),
        (
            f"peak RSS ≤ read_batch_bytes + 100 MiB ({budget_mib:.0f} MiB)",
            lambda r: bool(r.variants["ours"].peak_rss_kib) and max(r.variants["ours"].peak_rss_kib) / 1024 <= budget_mib,
        ),
    ]
    for name, check in checks:
        failed = [f"{r.case} {r.version}" for r in results if not check(r)]
        met = len(results) - len(failed)
        lines.append(f"- {name}: met in {met} of {len(results)} cases" + (f" (missed: {', '.join(failed)})" if failed else ""))
    if planning:
        for key, what in (
            ("plan", f"planning a {planning['fragments']:,}-fragment dataset ({planning['tasks']} tasks)"),
            ("inspect", "a sensor tick (`inspect_dataset`) on it"),
        ):
            wall, cpu = statistics.median(planning[key]), statistics.median(planning[key + "_cpu"])
            lines.append(
                f"- {what}: {wall:.2f} s median wall clock, {cpu:.2f} s CPU (first call {planning[key][0]:.2f} s), "
                f"from the URI (manifest read and parsed each time) — {'met' if wall < 1 else 'missed'} (< 1 s)"
            )
    lines.append("")
    lines.append(
        f"Load average (1 min) at start / end: {args.load_start:.1f} / {os.getloadavg()[0]:.1f} "
        "(other processes on the machine slow every variant; compare within a row)."
    )
    return "\n".join(lines) + "\n"


def render_chart(results: list[CaseResult], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", flush=True)
        return False
    labels = [f"{r.case}\n{r.version}" for r in results]
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(results) + 2), 4.8))
    for i, variant in enumerate(VARIANTS):
        values = [0 if r.variants[variant].error else _mbps(r, variant) for r in results]
        ax.bar([x + (i - 1.5) * width for x in range(len(results))], values, width, label=LABELS[variant])
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    ax.set_ylabel("MB/s of source data (log)")
    ax.set_yscale("log")
    ax.set_title("Compaction throughput: median of runs, higher is better")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 1024 / 1024


def _pylance_version() -> str:
    from importlib.metadata import version

    return version("pylance")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI size: small datasets, two storage versions")
    size.add_argument("--full", action="store_true", help="larger datasets, four storage versions, five runs")
    parser.add_argument("--runs", type=int, help="runs per variant (median reported)")
    parser.add_argument("--cases", help="comma-separated subset of mixed,vector,wide,tiny")
    parser.add_argument("--versions", help="comma-separated storage versions, e.g. 2.0,2.1,2.2,2.3")
    parser.add_argument("--read-batch-bytes", type=int, default=16 * MIB)
    parser.add_argument("--workdir", help="where datasets are built (and kept for the next run); default: a temp dir")
    parser.add_argument("--rebuild", action="store_true", help="rebuild datasets even if the workdir has them")
    parser.add_argument("--out", default=str(HERE / "results.md"), help="Markdown output (the PNG goes beside it)")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.read_batch_bytes)
        return 0

    profile = PROFILES["quick" if args.quick else "full" if args.full else "default"]
    args.runs = args.runs or profile["runs"]
    cases = args.cases.split(",") if args.cases else list(profile["sizes"])
    versions = args.versions.split(",") if args.versions else profile["versions"]
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lance-assets-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_compaction.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    started = time.perf_counter()
    args.load_start = os.getloadavg()[0]
    results: list[CaseResult] = []
    try:
        for case in cases:
            for version in versions:
                print(f"{case} / {version}  ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
                results.append(
                    measure_case(case, version, profile["sizes"][case], root, args.runs, args.read_batch_bytes, args.rebuild)
                )
        planning = None
        if profile["synthetic_fragments"]:
            base_version = versions[min(1, len(versions) - 1)]
            base = root / "datasets" / f"planning-base-{base_version}.lance"
            if not (base / ".complete").exists():
                from datasets import Size, build

                build("mixed", base_version, Size(4, 1_000), base)
                (base / ".complete").write_text("ok")
            print("planning / inspection", flush=True)
            planning = measure_planning(root, base, profile["synthetic_fragments"])
            print(
                f"  plan {statistics.median(planning['plan']):.3f} s ({statistics.median(planning['plan_cpu']):.3f} s CPU), "
                f"inspect {statistics.median(planning['inspect']):.3f} s ({statistics.median(planning['inspect_cpu']):.3f} s CPU), median of 5",
                flush=True,
            )
    finally:
        shutil.rmtree(root / "run", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    markdown = render_markdown(results, planning, args, command, elapsed)
    out = Path(args.out)
    out.write_text(markdown)
    chart = out.with_suffix(".png")
    if render_chart(results, chart):
        print(f"wrote {out} and {chart}")
    else:
        print(f"wrote {out}")
    print()
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
