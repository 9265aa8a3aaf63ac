"""Compaction holds about ``read_batch_bytes`` of data, however large the dataset.

A ~390 MB dataset (24 fragments of 1024-dim float32 vectors and 4 KiB binaries) is
compacted with ``read_batch_bytes`` = 1 MiB in a fresh subprocess, which reports its RSS
right before ``compact`` and its peak RSS (VmHWM) after it. The growth must stay within
``read_batch_bytes`` + 100 MiB (interpreter noise and metadata), i.e. far below the data
size. Every copy path is measured: local files through one reused buffer (ext4, tmpfs …),
``os.copy_file_range`` (taken on filesystems that clone blocks; forced here), and the
chunked ranged reads every other store uses (forced by telling the Storage it is not
local), and S3 through our multipart writer with every byte streamed through the process
(moto on loopback). pylance judges the result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets.io.multipart import MAX_UPLOADS_IN_FLIGHT, MIN_PART_BYTES

READ_BATCH_BYTES = 1 << 20
MARGIN = 100 << 20
FRAGMENTS = 24
ROWS_PER_FRAGMENT = 2_000
DIM = 1024
BLOB_BYTES = 4096

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("vec", pa.list_(pa.float32(), DIM)),
        pa.field("blob", pa.binary()),
    ]
)

CHILD = textwrap.dedent(
    """
    import json, sys

    from lance_assets.engine.compaction import compact, run_plan
    from lance_assets.engine.dataset import Dataset
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.engine.planning.plan import plan_compaction
    from lance_assets.io import Storage
    from lance_assets.io.storage import UNSAFE_COMMIT_OPTION


    def status_kib(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])


    path, kind, read_batch_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # 64 requests in flight on S3 (what an object store's latency wants), the default elsewhere
    options = CompactionOptions(read_batch_bytes=read_batch_bytes, max_concurrent_requests=64 if kind == "s3" else 16)
    if kind == "copy_file_range":
        # Taken on filesystems that clone blocks (btrfs, XFS …): pretend this one does.
        import os
        import lance_assets.io.local as st
        st._CLONING_FILESYSTEMS = frozenset({st._filesystem_type(os.open(path, os.O_RDONLY))})
    if kind == "s3":
        import s3fs, aiobotocore.session  # the client library's own memory is not the copy's
        s3fs.S3FileSystem  # noqa: B018
    # pylance re-encodes the small-paged id column (pages="coalesce"): its native library's own
    # memory is not the copy's either
    import lance.file  # noqa: F401
    before = status_kib("VmRSS")
    if kind == "s3":
        # Streamed through this process (server-side copy off): parts upload while the next is read.
        storage = Storage(path, json.loads(sys.argv[4]))
        report = run_plan(plan_compaction(Dataset.open(storage), options), storage=storage)
    elif kind == "chunked":
        # The path every non-local store takes: ranged reads of at most read_batch_bytes.
        storage = Storage(path, {UNSAFE_COMMIT_OPTION: "true"})
        storage.is_local = False
        report = run_plan(plan_compaction(Dataset.open(storage), options), storage=storage)
    else:
        report = compact(path, options)
    peak = status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "removed": report.fragments_removed,
                      "added": report.fragments_added, "bytes_read": report.bytes_read}))
    """
)


def _batches() -> Iterator[pa.RecordBatch]:
    """The rows, one fragment's worth at a time (the test process never holds them all)."""
    for frag in range(FRAGMENTS):
        rng = np.random.default_rng(frag)
        start = frag * ROWS_PER_FRAGMENT
        vectors = rng.standard_normal(ROWS_PER_FRAGMENT * DIM, dtype=np.float32)
        blobs = rng.integers(0, 256, ROWS_PER_FRAGMENT * BLOB_BYTES, dtype=np.uint8).tobytes()
        offsets = np.arange(0, (ROWS_PER_FRAGMENT + 1) * BLOB_BYTES, BLOB_BYTES, dtype=np.int32)
        yield pa.record_batch(
            [
                pa.array(np.arange(start, start + ROWS_PER_FRAGMENT, dtype=np.int64)),
                pa.FixedSizeListArray.from_arrays(pa.array(vectors), DIM),
                pa.BinaryArray.from_buffers(pa.binary(), ROWS_PER_FRAGMENT, [None, pa.py_buffer(offsets), pa.py_buffer(blobs)]),
            ],
            schema=SCHEMA,
        )


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("memory") / "big.lance"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            pa.RecordBatchReader.from_batches(SCHEMA, _batches()),
            str(path),
            data_storage_version="2.1",
            max_rows_per_file=ROWS_PER_FRAGMENT,
        )
    assert len(lance.dataset(str(path)).get_fragments()) == FRAGMENTS
    return path


def _data_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (path / "data").iterdir())


def _same_rows(original: Path, compacted: Path) -> None:
    """pylance reads the same rows in the same order (one column at a time, to bound memory)."""
    before, after = lance.dataset(str(original)), lance.dataset(str(compacted))
    assert after.count_rows() == before.count_rows() == FRAGMENTS * ROWS_PER_FRAGMENT
    for column in SCHEMA.names:
        assert after.to_table(columns=[column]).column(0).equals(before.to_table(columns=[column]).column(0)), column


@pytest.mark.parametrize("path_kind", ["local", "copy_file_range", "chunked"])
def test_peak_memory_is_bounded_by_read_batch_bytes(big_dataset: Path, tmp_path: Path, path_kind: str) -> None:
    work = tmp_path / "big.lance"
    shutil.copytree(big_dataset, work)
    data_bytes = _data_bytes(work)
    assert data_bytes > 300e6  # the dataset is far larger than the bound we check

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(work), path_kind, str(READ_BATCH_BYTES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["removed"], result["added"]) == (FRAGMENTS, 1)
    assert result["bytes_read"] >= data_bytes * 0.95  # every page was copied, not skipped

    growth = (result["peak_kib"] - result["before_kib"]) * 1024
    print(
        f"{path_kind}: {data_bytes / 2**20:.0f} MiB of data, RSS {result['before_kib'] / 1024:.0f} MiB before, peak {result['peak_kib'] / 1024:.0f} MiB"
    )
    assert growth <= READ_BATCH_BYTES + MARGIN, (
        f"compaction grew RSS by {growth / 2**20:.0f} MiB for {data_bytes / 2**20:.0f} MiB of data"
    )
    _same_rows(big_dataset, work)


def test_peak_memory_on_s3_is_bounded_by_read_batch_bytes(big_dataset: Path, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_endpoint.new_bucket()
    client = s3_endpoint.client()
    for file in big_dataset.rglob("*"):
        if file.is_file():
            client.upload_file(str(file), bucket, f"big.lance/{file.relative_to(big_dataset)}")
    uri = f"s3://{bucket}/big.lance"
    options = {**s3_endpoint.pylance_options, "lance_assets_server_side_copy": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, uri, "s3", str(READ_BATCH_BYTES), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    data_bytes = _data_bytes(big_dataset)
    assert (result["removed"], result["added"]) == (FRAGMENTS, 1)
    assert result["bytes_read"] >= data_bytes * 0.95
    growth = (result["peak_kib"] - result["before_kib"]) * 1024
    print(
        f"s3: {data_bytes / 2**20:.0f} MiB of data, RSS {result['before_kib'] / 1024:.0f} MiB before, peak {result['peak_kib'] / 1024:.0f} MiB"
    )
    # The multipart writer adds the part being filled and the parts uploading (5 MiB each, S3's
    # minimum) to the bound.
    parts = (MAX_UPLOADS_IN_FLIGHT + 1) * MIN_PART_BYTES
    assert growth <= READ_BATCH_BYTES + parts + MARGIN, f"compaction grew RSS by {growth / 2**20:.0f} MiB"
    after = lance.dataset(uri, storage_options=s3_endpoint.pylance_options)
    before = lance.dataset(str(big_dataset))
    assert len(after.get_fragments()) == 1
    for column in SCHEMA.names:
        assert after.to_table(columns=[column]).column(0).equals(before.to_table(columns=[column]).column(0)), column
