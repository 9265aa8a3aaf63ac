"""Compaction on an object store: lance_assets against pylance on the same S3 data.

A moto S3 server runs on loopback (the same one the tests use); pylance writes a vector dataset
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

    python benchmarks/bench_object_store.py [--cases large,small] [--runs 5] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("ours", "ours_streamed", "pylance_binary_copy", "pylance_reencode")
sys.path.insert(0, str(HERE.parent))  # tests.support.s3_proxy
KEY = SECRET = "testing"
REGION = "us-east-1"


def _options(endpoint: str) -> dict[str, str]:
    return {
        "aws_access_key_id": KEY,
        "aws_secret_access_key": SECRET,
        "aws_endpoint": endpoint,
        "aws_region": REGION,
        "allow_http": "true",
    }


def child(variant: str, uri: str, endpoint: str, read_batch_bytes: int) -> None:
    """One variant; the clock covers opening the dataset and compacting it (imports excluded)."""
    warnings.simplefilter("ignore")
    options = _options(endpoint)
    if variant.startswith("ours"):
        import s3fs  # noqa: F401 - imported before the clock starts, as pylance's client is

        from lance_assets.engine.compaction import compact
        from lance_assets.engine.options import CompactionOptions

        if variant == "ours_streamed":
            options = {**options, "lance_assets_server_side_copy": "false"}
        started = time.perf_counter()
        report = compact(uri, CompactionOptions(read_batch_bytes=read_batch_bytes), storage_options=options)
        seconds = time.perf_counter() - started
        out = {"fragments_removed": report.fragments_removed, "fragments_added": report.fragments_added}
    else:
        import lance

        started = time.perf_counter()
        ds = lance.dataset(uri, storage_options=options)
        if variant == "pylance_reencode":
            metrics = ds.optimize.compact_files()
        else:
            metrics = ds.optimize.compact_files(
                compaction_mode="force_binary_copy", binary_copy_read_batch_bytes=read_batch_bytes
            )
        seconds = time.perf_counter() - started
        out = {"fragments_removed": metrics.fragments_removed, "fragments_added": metrics.fragments_added}
    print(json.dumps({"seconds": seconds, **out}), flush=True)


def _client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION)


def _restore(client, bucket: str, pristine: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Make ``work/`` hold exactly the pristine objects again (copied inside the store)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix="work/"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    for key in pristine:
        client.copy_object(Bucket=bucket, Key="work/" + key[len("pristine/") :], CopySource={"Bucket": bucket, "Key": key})


# (fragments, rows per fragment) per case: a few large fragments (server-side copy matters) and
# many small ones (request latency and overlap matter).
CASES = {"large": (8, 8_000), "small": (200, 100)}


def measure(
    client, endpoint: str, case: str, shape: tuple[int, int], args: argparse.Namespace, proxy: Any = None
) -> tuple[int, dict[str, list[float]], dict[str, list[int]]]:  # type: ignore[no-untyped-def]
    import lance
    import numpy as np
    import pyarrow as pa

    fragments, rows_per_fragment = shape
    bucket = f"bench-{case}"
    client.create_bucket(Bucket=bucket)
    rows = fragments * rows_per_fragment
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * args.dim, dtype=np.float32)), args.dim),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            table,
            f"s3://{bucket}/pristine",
            data_storage_version=args.version,
            max_rows_per_file=rows_per_fragment,
            storage_options=_options(endpoint),
        )

    def keys(prefix: str) -> list[dict[str, Any]]:
        return [
            o
            for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])
        ]

    pristine = [o["Key"] for o in keys("pristine/")]
    data_bytes = sum(o["Size"] for o in keys("pristine/data/"))
    expected = table.sort_by("id")
    work_uri = f"s3://{bucket}/work"
    print(f"{case}: {fragments} fragments, {data_bytes / 1e6:.0f} MB of data files, storage version {args.version}", flush=True)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    requests: dict[str, list[int]] = {v: [] for v in VARIANTS}
    for run in range(args.runs):
        order = VARIANTS[run % len(VARIANTS) :] + VARIANTS[: run % len(VARIANTS)]
        for variant in order:
            _restore(client, bucket, pristine)
            if proxy is not None:
                proxy.reset()
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    work_uri,
                    proxy.url if proxy else endpoint,
                    "--read-batch-bytes",
                    str(args.read_batch_bytes),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{variant}: {proc.stderr[-2000:]}")
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            requests[variant].append(proxy.total if proxy is not None else 0)
            got = lance.dataset(work_uri, storage_options=_options(endpoint))
            if not got.to_table().sort_by("id").equals(expected) or len(got.get_fragments()) != 1:
                raise RuntimeError(f"{variant}: compacted dataset differs from the original")
            seconds[variant].append(info["seconds"])
            print(f"  run {run + 1} {variant:20s} {info['seconds']:7.3f} s {requests[variant][-1]} requests", flush=True)
    return data_bytes, seconds, requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--version", default="2.1")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--read-batch-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before each request (a proxy in front of moto)")
    parser.add_argument("--out", default=str(HERE / "results-object-store.md"))
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "URI", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.read_batch_bytes)
        return 0

    import logging

    import lance
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    started_all = time.perf_counter()
    results = {}
    proxy = None
    try:
        client = _client(endpoint)
        if args.latency_ms:
            from tests.support.s3_proxy import S3Proxy

            proxy = S3Proxy(endpoint, delay=args.latency_ms / 1000).__enter__()
        for case in args.cases.split(","):
            results[case] = measure(client, endpoint, case, CASES[case], args, proxy)
    finally:
        if proxy is not None:
            proxy.__exit__(None, None, None)
        server.stop()
    latency = f" --latency-ms {args.latency_ms:g}" if args.latency_ms else ""
    cases = "" if args.cases == ",".join(CASES) else f" --cases {args.cases}"
    lines = [
        "# Compaction on an object store (moto S3 on loopback" + (f", {args.latency_ms:g} ms per request)" if latency else ")"),
        "",
        f"Command: `python benchmarks/bench_object_store.py --runs {args.runs}{cases}{latency}` — {(time.perf_counter() - started_all) / 60:.1f} min, "
        f"{platform.python_implementation()} {platform.python_version()}, pylance {getattr(lance, '__version__', '?')}, "
        f"`read_batch_bytes` = {args.read_batch_bytes // (1024 * 1024)} MiB; load average {os.getloadavg()[0]:.1f} at the end "
        f"on {os.cpu_count()} CPUs (other jobs share the machine: compare variants within one run, not across runs).",
        "",
        f"Each case: fragments of an id and a {args.dim}-dim float32 vector, storage version {args.version}, compacted "
        f"into one fragment. Seconds cover opening the dataset and compacting it (imports excluded), median of "
        f"{args.runs} runs; every result is verified with pylance. moto is a Python server (a thread of the "
        "benchmark's parent process) that copies and concatenates parts in memory at a few hundred MB/s, "
        "for every variant alike; a real store adds network latency and bandwidth to every byte that "
        "passes through the client, which server-side copies avoid.",
        "",
        "| case | fragments | MB | lance_assets (server-side copy) s | lance_assets, `lance_assets_server_side_copy=false` s "
        "| pylance force_binary_copy s | pylance reencode s | ÷ binary copy | ÷ binary copy (streamed) | ÷ reencode |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, (data_bytes, seconds, _requests) in results.items():
        med = {v: statistics.median(s) for v, s in seconds.items()}
        lines.append(
            f"| {case} | {CASES[case][0]} | {data_bytes / 1e6:.0f} | {med['ours']:.3f} | {med['ours_streamed']:.3f} | "
            f"{med['pylance_binary_copy']:.3f} | {med['pylance_reencode']:.3f} | {med['pylance_binary_copy'] / med['ours']:.2f}× | "
            f"{med['pylance_binary_copy'] / med['ours_streamed']:.2f}× | {med['pylance_reencode'] / med['ours']:.2f}× |"
        )
    if proxy is not None:
        lines += [
            "",
            "Requests per run (median, every request the variant made through the proxy: listing, metadata, reads, writes, commit):",
            "",
            "| case | " + " | ".join(VARIANTS) + " |",
            "|---|" + "---:|" * len(VARIANTS),
        ]
        for case, (_, _, requests) in results.items():
            lines.append(f"| {case} | " + " | ".join(f"{statistics.median(requests[v]):.0f}" for v in VARIANTS) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
