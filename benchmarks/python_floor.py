"""How fast can a pure-Python binary copy of many tiny files be? The floor, measured step by step.

On a dataset of 10,000 fragments of 10 rows (written by pylance, as in the main benchmark) this
times, per input file, the least work any binary copier written in Python must do, one step
added at a time, and compares it with ``cat`` of the same files and with lance_assets' own
``compact``:

1. open, read and close the file (``os.open`` + ``os.pread`` + ``os.close``);
2. plus unpack the footer and parse the schema buffer and every column's metadata (protobuf, C);
3. plus, for every page, read its buffer offsets and sizes, relocate them and append the page
   to the merged column (what any copier must write into the new footer).

Nothing is validated in these steps and nothing is written, so they are lower bounds: a copier
that also checks what it copies, plans, writes and commits cannot be faster.

    python benchmarks/python_floor.py [--fragments 10000] [--version 2.2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_FOOTER = struct.Struct("<QQQIIHH4s")
_ENTRY = struct.Struct("<QQ")


def _best(fn, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fragments", type=int, default=10_000)
    parser.add_argument("--version", default="2.2")
    parser.add_argument("--workdir", help="where the dataset is built (default: a temp dir)")
    args = parser.parse_args()

    from datasets import Size, build

    from lance_assets._proto import file2_pb2, file_pb2
    from lance_assets.engine.compaction import compact

    root = Path(args.workdir or tempfile.mkdtemp(prefix="python-floor-"))
    src = root / f"tiny-{args.version}-{args.fragments}.lance"
    if not (src / ".complete").exists():
        print(f"building {src} with pylance ...", flush=True)
        build("tiny", args.version, Size(args.fragments, 10), src)
        (src / ".complete").write_text("ok")
    files = sorted(str(p) for p in (src / "data").iterdir())
    sizes = [os.stat(f).st_size for f in files]
    n = len(files)
    out = root / "cat.out"

    def cat() -> None:
        with open(out, "wb") as dst:
            subprocess.run(["xargs", "-0", "cat"], input="\0".join(files).encode(), stdout=dst, check=True)

    def steps(parse: bool, relocate: bool) -> None:
        """One pass over the files, streaming as a copier must (nothing kept but the merge)."""
        merged: list[file2_pb2.ColumnMetadata] = []
        shift = rows = 0
        for f, size in zip(files, sizes, strict=True):
            fd = os.open(f, os.O_RDONLY)
            b = os.pread(fd, size, 0)
            os.close(fd)
            if not parse:
                continue
            _, cmo, gbo, _, ncol, _, _, _ = _FOOTER.unpack_from(b, len(b) - _FOOTER.size)
            gb0_pos, gb0_size = _ENTRY.unpack_from(b, gbo)
            file_pb2.FileDescriptor().ParseFromString(b[gb0_pos : gb0_pos + gb0_size])
            if not merged:
                merged = [file2_pb2.ColumnMetadata() for _ in range(ncol)]
            for i in range(ncol):
                pos, size = _ENTRY.unpack_from(b, cmo + i * _ENTRY.size)
                column = file2_pb2.ColumnMetadata()
                column.ParseFromString(b[pos : pos + size])
                if not relocate:
                    continue
                target = merged[i].pages
                start = len(target)
                target.extend(column.pages)
                for k in range(start, len(target)):
                    page = target[k]
                    page.buffer_offsets[:] = [o + shift for o in page.buffer_offsets]
                    page.priority += rows
            shift += gb0_pos
            rows += 10

    t_cat = _best(cat)
    t_read = _best(lambda: steps(False, False))
    t_parse = _best(lambda: steps(True, False))
    floor = _best(lambda: steps(True, True))

    def ours() -> float:
        work = root / "work.lance"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        started = time.perf_counter()
        compact(str(work))
        return time.perf_counter() - started

    t_ours = min(ours() for _ in range(3))

    rows = [
        ("cat of the same files (xargs -0 cat)", t_cat),
        ("1. open + pread + close", t_read),
        ("2. + parse footer, schema and column metadata", t_parse),
        ("3. + relocate and merge every page (the floor)", floor),
        ("lance_assets compact (validate, judge, copy, plan, write, commit)", t_ours),
    ]
    print(f"\n{n:,} files of storage version {args.version}, fastest of 5 runs (compact: of 3)\n")
    print("| step | seconds | µs per file | throughput ÷ cat |")
    print("|---|---:|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {seconds / n * 1e6:.1f} | {t_cat / seconds:.2f}× |")
    print(
        f"\nEven the floor, which checks nothing and writes nothing, runs at {t_cat / floor:.2f}× cat; "
        f"0.8× cat would leave {t_cat / 0.8 / n * 1e6:.1f} µs per file for all of the work."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
