"""What the S3 benchmarks share: moto's server in a process of its own, the storage options that
reach it, restoring a pristine copy of a dataset inside the store, and one compaction timed in a
process of its own.

Compactions run in a subprocess so that the latency proxy (tests/support/s3_proxy.py, threaded,
in the benchmark's process) never competes for one interpreter lock with the Python work being
timed, which would slow lance_assets more than pylance's Rust.

    python benchmarks/s3_common.py VARIANT URI ENDPOINT [--read-batch-bytes N] [--max-concurrent-requests N]

runs one compaction (what ``run_compaction`` starts) and prints its JSON report.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.support.s3_proxy, for the benchmarks that import this

KEY = SECRET = "testing"
REGION = "us-east-1"
#: ``ours``: lance_assets' defaults (server-side copies, small pages coalesced); ``ours_streamed``:
#: every byte read and re-uploaded by this process; ``ours_copy``: ``pages="copy"`` (every page as
#: it is); ``pylance_binary_copy``: ``compact_files(compaction_mode="force_binary_copy")``;
#: ``pylance_reencode``: ``compact_files()``, pylance's default.
VARIANTS = ("ours", "ours_streamed", "ours_copy", "pylance_binary_copy", "pylance_reencode")
DEFAULT_READ_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_REQUESTS = 64


def storage_options(endpoint: str) -> dict[str, str]:
    """What pylance and lance_assets need to reach the moto server (or the proxy) at ``endpoint``."""
    return {
        "aws_access_key_id": KEY,
        "aws_secret_access_key": SECRET,
        "aws_endpoint": endpoint,
        "aws_region": REGION,
        "allow_http": "true",
    }


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set now (``VmRSS``) or its peak (``VmHWM``) from Linux's /proc,
    MiB. (Not ``ru_maxrss``: a process started by fork and exec inherits its parent's.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(variant: str, uri: str, endpoint: str, read_batch_bytes: int, max_requests: int) -> None:
    """One compaction; the clock covers opening the dataset and compacting it (imports excluded).
    Prints seconds, the CPU seconds of the process over the same span (all its threads: a client's
    own work per request shows there), the peak RSS of the process and its RSS when the clock
    started (after the imports), MiB."""
    warnings.simplefilter("ignore")
    options = storage_options(endpoint)
    if variant.startswith("ours"):
        import s3fs  # noqa: F401 - imported before the clock starts, as pylance's client is

        from lance_assets.engine.compaction import compact
        from lance_assets.engine.copying.parts import tune_allocator
        from lance_assets.engine.options import CompactionOptions
        from lance_assets.format import miniblock  # noqa: F401 - numpy too, as pylance's native code is loaded

        tune_allocator()  # a process of its own, as the CLI's compaction tunes it
        if variant == "ours_streamed":
            options = {**options, "lance_assets_server_side_copy": "false"}
        rss_before = rss_mib()
        started, cpu_started = time.perf_counter(), time.process_time()
        report = compact(
            uri,
            CompactionOptions(
                read_batch_bytes=read_batch_bytes,
                max_concurrent_requests=max_requests,
                pages="copy" if variant == "ours_copy" else "coalesce",
            ),
            storage_options=options,
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        out = {"fragments_removed": report.fragments_removed, "fragments_added": report.fragments_added}
    else:
        import lance

        rss_before = rss_mib()
        started, cpu_started = time.perf_counter(), time.process_time()
        ds = lance.dataset(uri, storage_options=options)
        if variant == "pylance_reencode":
            metrics = ds.optimize.compact_files()
        else:
            metrics = ds.optimize.compact_files(
                compaction_mode="force_binary_copy", binary_copy_read_batch_bytes=read_batch_bytes
            )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        out = {"fragments_removed": metrics.fragments_removed, "fragments_added": metrics.fragments_added}
    print(
        json.dumps(
            {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": rss_mib("VmHWM"), "rss_before_mib": rss_before, **out}
        ),
        flush=True,
    )


def run_compaction(
    variant: str,
    uri: str,
    endpoint: str,
    read_batch_bytes: int = DEFAULT_READ_BATCH_BYTES,
    max_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
) -> dict[str, Any]:
    """``child`` in a process of its own; its report (seconds, CPU seconds, peak RSS, fragments removed and added)."""
    command = [sys.executable, __file__, variant, uri, endpoint]
    command += ["--read-batch-bytes", str(read_batch_bytes), "--max-concurrent-requests", str(max_requests)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}: {proc.stderr[-2000:]}")
    info: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return info


def client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION)


def objects(client, bucket: str, prefix: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Every object under ``prefix`` (boto3's listing entries: Key, Size, ...)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o for p in pages for o in p.get("Contents", [])]


def restore(client, bucket: str, pristine: list[str], source: str = "pristine/", dest: str = "work/") -> None:  # type: ignore[no-untyped-def]
    """Make ``dest`` hold exactly the pristine objects (keys under ``source``) again, copied inside the store."""
    for obj in objects(client, bucket, dest):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    for key in pristine:
        client.copy_object(Bucket=bucket, Key=dest + key[len(source) :], CopySource={"Bucket": bucket, "Key": key})


_MOTO = (
    "import logging, sys, time\n"
    "from moto.server import ThreadedMotoServer\n"
    "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
    "ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False).start()\n"
    "time.sleep(1e9)\n"
)


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's threaded server in a process of its own: with the proxy in this one, the two do not
    share one interpreter lock (which made every request wait for the other's work)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _MOTO, str(port)])
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description="One compaction on S3, timed (run by run_compaction).")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("uri")
    parser.add_argument("endpoint")
    parser.add_argument("--read-batch-bytes", type=int, default=DEFAULT_READ_BATCH_BYTES)
    parser.add_argument("--max-concurrent-requests", type=int, default=DEFAULT_MAX_CONCURRENT_REQUESTS)
    args = parser.parse_args()
    child(args.variant, args.uri, args.endpoint, args.read_batch_bytes, args.max_concurrent_requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
