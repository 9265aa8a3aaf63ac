"""Compaction on an object store: lance_assets against pylance on the same S3 data.

A moto S3 server runs on loopback (the same one the tests use, in a process of its own); pylance writes a vector dataset
into it, once of a few large fragments and once of many small ones. Each run restores the
dataset's pristine objects, then times one variant in a subprocess:

* ``ours``: lance_assets with server-side copies of large extents (UploadPartCopy);
* ``ours_streamed``: lance_assets with ``lance_assets_server_side_copy=false`` (every byte read
  and re-uploaded through this process, as any client without server-side copy must);
* ``pylance_binary_copy``: ``compact_files(compaction_mode="force_binary_copy")``;
* ``pylance_reencode``: ``compact_files()`` (pylance's default, re-encoding).

Every result is read back with pylance and compared with the original. Loopback hides network
latency and bandwidth; ``--latency-ms`` puts a proxy (tests/support/s3_proxy.py) between the
variants and moto that waits that long before each request, as a real store's round trip does,
and counts the requests each variant made.

    python benchmarks/bench_object_store.py [--cases large,small,small300,many] [--runs 5] [--latency-ms 20,50]
        [--variants ours,pylance_reencode] [--max-concurrent-requests 64]

Each variant runs in a process of its own, which reports its peak RSS (``VmHWM``) and its
RSS when the clock started (after the imports).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_common import client as s3_client
from s3_common import objects, restore, run_compaction, start_moto, storage_options

HERE = Path(__file__).resolve().parent

VARIANTS = ("ours", "ours_streamed", "pylance_binary_copy", "pylance_reencode")


# (fragments, rows per fragment, vector dimension) per case: a few large fragments (server-side
# copy matters) and many small ones (request latency and overlap matter); "many" has 3,000
# fragments of 100 rows of small columns (an 8-dim vector) so that it stays affordable.
CASES = {"large": (8, 8_000, 768), "small": (200, 100, 768), "small300": (300, 100, 768), "many": (3_000, 100, 8)}
DEFAULT_CASES = ("large", "small")


def _write_case(client, endpoint: str, case: str, shape: tuple[int, int, int], version: str):  # type: ignore[no-untyped-def]
    """The case's dataset under ``pristine/`` of a new bucket; (bucket, pristine keys, data bytes, table)."""
    import lance
    import numpy as np
    import pyarrow as pa

    fragments, rows_per_fragment, dim = shape
    bucket = f"bench-{case}"
    client.create_bucket(Bucket=bucket)
    rows = fragments * rows_per_fragment
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * dim, dtype=np.float32)), dim),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            table,
            f"s3://{bucket}/pristine",
            data_storage_version=version,
            max_rows_per_file=rows_per_fragment,
            storage_options=storage_options(endpoint),
        )

    return (
        bucket,
        [o["Key"] for o in objects(client, bucket, "pristine/")],
        sum(o["Size"] for o in objects(client, bucket, "pristine/data/")),
        table,
    )


def measure(client, endpoint: str, case: str, args: argparse.Namespace, proxy: Any = None) -> dict[float, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Per latency: data bytes and, per variant, seconds, requests and RSS of each run."""
    import lance

    bucket, pristine, data_bytes, table = _write_case(client, endpoint, case, CASES[case], args.version)
    expected = table.sort_by("id")
    work_uri = f"s3://{bucket}/work"
    print(
        f"{case}: {CASES[case][0]} fragments, {data_bytes / 1e6:.0f} MB of data files, storage version {args.version}", flush=True
    )
    out: dict[float, dict[str, Any]] = {}
    for latency in args.latencies:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        for run in range(args.runs):
            order = args.variants[run % len(args.variants) :] + args.variants[: run % len(args.variants)]
            for variant in order:
                restore(client, bucket, pristine)
                if proxy is not None:
                    proxy.delay = latency / 1000
                    proxy.reset()
                info = run_compaction(
                    variant, work_uri, proxy.url if proxy else endpoint, args.read_batch_bytes, args.max_concurrent_requests
                )
                info["requests"] = proxy.total if proxy is not None else 0
                got = lance.dataset(work_uri, storage_options=storage_options(endpoint))
                if not got.to_table().sort_by("id").equals(expected) or len(got.get_fragments()) != 1:
                    raise RuntimeError(f"{variant}: compacted dataset differs from the original")
                runs[variant].append(info)
                print(
                    f"  {latency:g} ms run {run + 1} {variant:20s} {info['seconds']:7.3f} s {info['requests']} requests "
                    f"peak RSS {info['peak_rss_mib']:.0f} MiB ({info['rss_before_mib']:.0f} before)",
                    flush=True,
                )
        out[latency] = {"data_bytes": data_bytes, "runs": runs}
    return out


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _tables(results: dict[str, dict[float, dict[str, Any]]], args: argparse.Namespace) -> list[str]:
    titles = {
        "ours": "lance_assets (server-side copy) s",
        "ours_streamed": "lance_assets, `lance_assets_server_side_copy=false` s",
        "pylance_binary_copy": "pylance force_binary_copy s",
        "pylance_reencode": "pylance reencode s",
    }
    ratios = [
        (b, "ours", f"{b} ÷ ours")
        for b in ("pylance_binary_copy", "pylance_reencode")
        if b in args.variants and "ours" in args.variants
    ]
    head = ["case", "ms per request", "fragments", "MB", *(titles[v] for v in args.variants), *(r[2] for r in ratios)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for case, per_latency in results.items():
        for latency, got in per_latency.items():
            med = {v: _med(r, "seconds") for v, r in got["runs"].items()}
            cells = [case, f"{latency:g}", str(CASES[case][0]), f"{got['data_bytes'] / 1e6:.0f}"]
            cells += [f"{med[v]:.3f}" for v in args.variants] + [f"{med[b] / med[o]:.2f}×" for b, o, _ in ratios]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Requests per run and peak RSS of the variant's process (median; peak RSS: `VmHWM` of the variant's process, and in brackets the "
        "RSS when the clock started, after the imports):",
        "",
        "| case | ms per request | " + " | ".join(f"{v} requests | {v} peak RSS MiB" for v in args.variants) + " |",
        "|---|---:|" + "---:|---:|" * len(args.variants),
    ]
    for case, per_latency in results.items():
        for latency, got in per_latency.items():
            cells = [case, f"{latency:g}"]
            for v in args.variants:
                r = got["runs"][v]
                cells += [f"{_med(r, 'requests'):.0f}", f"{_med(r, 'peak_rss_mib'):.0f} ({_med(r, 'rss_before_mib'):.0f})"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--dim", type=int, default=768, help="vector dimension of the large and small cases")
    parser.add_argument("--version", default="2.1")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--read-batch-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--max-concurrent-requests", type=int, default=64, help="lance_assets' max_concurrent_requests")
    parser.add_argument(
        "--latency-ms", default="0", help="wait before each request (a proxy in front of moto); comma-separated: each in turn"
    )
    parser.add_argument("--out", default=None, help="results file (default results-object-store[-latency].md)")
    args = parser.parse_args()
    args.latencies = [float(x) for x in args.latency_ms.split(",")]
    args.variants = tuple(v for v in VARIANTS if v in args.variants.split(","))
    for case in ("large", "small", "small300"):
        CASES[case] = (*CASES[case][:2], args.dim)

    import lance

    server, endpoint = start_moto()
    started_all = time.perf_counter()
    results = {}
    proxy = None
    try:
        client = s3_client(endpoint)
        if any(args.latencies):
            from tests.support.s3_proxy import S3Proxy  # the repository root is on sys.path through s3_common

            proxy = S3Proxy(endpoint).__enter__()
        for case in args.cases.split(","):
            results[case] = measure(client, endpoint, case, args, proxy)
    finally:
        if proxy is not None:
            proxy.__exit__(None, None, None)
        server.kill()
        server.wait()
    command = " ".join(["python benchmarks/bench_object_store.py", *sys.argv[1:]])
    lines = [
        "# Compaction on an object store (moto S3 on loopback"
        + (f", {' and '.join(f'{x:g}' for x in args.latencies)} ms per request)" if proxy else ")"),
        "",
        f"Command: `{command}` — {(time.perf_counter() - started_all) / 60:.1f} min, "
        f"{platform.python_implementation()} {platform.python_version()}, pylance {getattr(lance, '__version__', '?')}, "
        f"`read_batch_bytes` = {args.read_batch_bytes // (1024 * 1024)} MiB, lance_assets' `max_concurrent_requests` = "
        f"{args.max_concurrent_requests}; load average {os.getloadavg()[0]:.1f} at the end "
        f"on {os.cpu_count()} CPUs (other jobs share the machine: compare variants within one run, not across runs).",
        "",
        f"Each case: fragments of an id and a float32 vector (dimension: large {CASES['large'][2]}, small "
        f"{CASES['small'][2]}, small300 {CASES['small300'][2]}, many {CASES['many'][2]}), storage version {args.version}, "
        f"compacted into one fragment. Seconds cover opening the dataset and compacting it (imports excluded), median "
        f"of {args.runs} runs; every result is verified with pylance. moto is a threaded Python server (in a "
        "process of its own; the latency proxy is threaded too, in the benchmark's process) that copies and concatenates parts in memory at a few "
        "hundred MB/s, for every variant alike; a real store adds network latency and bandwidth to every byte that "
        "passes through the client, which server-side copies avoid. Requests count everything the variant sent "
        "through the proxy (listing, metadata, reads, writes, commit).",
        "",
        *_tables(results, args),
    ]
    text = "\n".join(lines) + "\n"
    default = "results-object-store-latency.md" if proxy else "results-object-store.md"
    Path(args.out or HERE / default).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
