"""Reads overlapped on object stores: ``io.ahead`` on its own, then compaction through it on S3.

The S3 tests run against moto's server behind ``tests.support.s3_proxy`` (latency per request,
injected failures, counts of requests in flight); pylance writes the datasets and judges the
results. Large inputs make the copy read their data regions in pieces ahead of the writer
(streamed) or copy them inside the store (UploadPartCopy); small ones are fetched whole, many
at once.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any
from urllib.parse import unquote

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import DEFAULT_MAX_CONCURRENT_REQUESTS, CompactionOptions
from lance_assets.errors import StorageError
from lance_assets.io import Storage
from lance_assets.io.ahead import MIN_READ_PIECE, cut, ordered_ahead
from lance_assets.io.storage import DEFAULT_MAX_IN_FLIGHT
from tests.support.assertions import assert_reads_every_way
from tests.support.s3_proxy import S3Proxy

pytestmark = pytest.mark.timeout(300)


# --- io.ahead -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_results_come_in_order_within_both_bounds(seed: int) -> None:
    rng = random.Random(seed)
    costs = [rng.choice([1, 5, 10, 40]) for _ in range(60)]
    max_in_flight, max_bytes = rng.choice([2, 4, 8]), rng.choice([20, 50, 100])
    lock = threading.Lock()
    running = held = peak_running = peak_held = 0
    started: list[int] = []

    def fetch(i: int) -> int:
        nonlocal running, held, peak_running, peak_held
        with lock:
            running += 1
            held += costs[i]
            peak_running, peak_held = max(peak_running, running), max(peak_held, held)
            started.append(i)
        time.sleep(rng.random() / 500)
        with lock:
            running -= 1
        return i * 10

    got = []
    for i, value in ordered_ahead(range(60), fetch, max_in_flight=max_in_flight, max_bytes=max_bytes, cost=costs.__getitem__):
        got.append((i, value))
        with lock:
            held -= costs[i]  # consumed: no longer held
    assert got == [(i, i * 10) for i in range(60)]
    assert started == sorted(started), "fetches start in item order"
    assert 1 < peak_running <= max_in_flight
    # what is held (fetched or fetching, not yet consumed) stays within the budget, except
    # when one item alone is larger than it
    assert peak_held <= max(max_bytes, max(costs)) + max(costs)


def test_one_item_over_budget_still_goes_through() -> None:
    assert [v for _, v in ordered_ahead([100, 1, 100], lambda x: x, max_in_flight=4, max_bytes=10, cost=int)] == [100, 1, 100]


def test_a_failed_fetch_is_raised_in_order_and_stops_the_rest() -> None:
    fetched: list[int] = []

    def fetch(i: int) -> int:
        fetched.append(i)
        if i == 5:
            raise OSError("boom")
        time.sleep(0.001)
        return i

    seen = []
    with pytest.raises(OSError, match="boom"):
        for i, _ in ordered_ahead(range(1000), fetch, max_in_flight=4):
            seen.append(i)
    assert seen == [0, 1, 2, 3, 4]
    assert max(fetched) < 5 + 4 + 1, "no fetch starts more than the window past the failure"


def test_in_turn_without_a_pool() -> None:
    threads = set()
    list(ordered_ahead(range(5), lambda i: threads.add(threading.current_thread().name), max_in_flight=1))
    assert threads == {threading.current_thread().name}


def test_pieces_cover_the_range_exactly() -> None:
    for start, end, budget, n in [
        (0, 10 * MIN_READ_PIECE + 3, 16 * MIN_READ_PIECE, 8),
        (5, 100, 10, 4),
        (0, 3 * MIN_READ_PIECE, 4 * MIN_READ_PIECE, 16),
    ]:
        pieces = cut(start, end, budget, n)
        assert pieces[0][0] == start and pieces[-1][1] == end
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
        assert all(0 < e - s <= budget for s, e in pieces)


def test_one_default_for_the_option_and_the_storage() -> None:
    assert DEFAULT_MAX_CONCURRENT_REQUESTS == DEFAULT_MAX_IN_FLIGHT == CompactionOptions().max_concurrent_requests


# --- compaction on S3 through the proxy -------------------------------------------------------
DIM = 256
SIZES = [3000, 40, 2500, 10, 7, 2800, 25]  # ~3 MB files (data read in pieces) and small ones (read whole)


def _table(start: int, rows: int, rng: np.random.Generator) -> pa.Table:
    vectors = rng.standard_normal(rows * DIM, dtype=np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(vectors), DIM),
            "tag": pa.array([f"t{i % 97}" if i % 11 else None for i in range(start, start + rows)]),
        }
    )


@pytest.fixture
def s3_vectors(s3_endpoint):  # type: ignore[no-untyped-def]
    """A 2.1 dataset of large and small fragments written by pylance into a fresh bucket; its
    URI and the whole table."""
    rng = np.random.default_rng(7)
    uri = f"s3://{s3_endpoint.new_bucket()}/vectors.lance"
    start, parts = 0, []
    for i, rows in enumerate(SIZES):
        part = _table(start, rows, rng)
        lance.write_dataset(
            part, uri, mode="append" if i else "create", data_storage_version="2.1", storage_options=s3_endpoint.pylance_options
        )
        parts.append(part)
        start += rows
    return uri, pa.concat_tables(parts)


def _options(proxy: S3Proxy, s3_endpoint, server_side_copy: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """``compact``'s keywords: the options and the storage options through the proxy."""
    return {
        "options": CompactionOptions(
            target_rows_per_fragment=1_000_000, read_batch_bytes=4 * 1024 * 1024, max_concurrent_requests=8, pages="copy"
        ),
        "storage_options": {
            **s3_endpoint.pylance_options,
            "aws_endpoint": proxy.url,
            "lance_assets_server_side_copy": str(server_side_copy).lower(),
        },
    }


@pytest.mark.parametrize("server_side_copy", [False, True], ids=["streamed", "server-side-copy"])
def test_overlapped_reads_copy_the_same_data(s3_vectors, s3_endpoint, server_side_copy: bool) -> None:  # type: ignore[no-untyped-def]
    uri, expected = s3_vectors
    with S3Proxy(s3_endpoint.url, delay=0.01) as proxy:
        report = compact(uri, **_options(proxy, s3_endpoint, server_side_copy))
    assert report.fragments_removed == len(SIZES) and report.fragments_added == 1
    assert_reads_every_way(uri, expected, storage_options=s3_endpoint.pylance_options)
    # the reads overlapped: planning's metadata reads, small inputs fetched whole and (streamed)
    # the pieces of large inputs' data regions
    assert proxy.max_in_flight["GET"] > 1
    assert proxy.failed == 0


def _data_files(uri: str, options: dict[str, str]) -> set[str]:
    return {f.path for frag in lance.dataset(uri, storage_options=options).get_fragments() for f in frag.data_files()}


@pytest.mark.parametrize("server_side_copy", [False, True], ids=["streamed", "server-side-copy"])
def test_a_request_failing_mid_flight_leaves_nothing_and_a_retry_succeeds(
    s3_vectors, s3_endpoint, server_side_copy: bool
) -> None:  # type: ignore[no-untyped-def]
    """One read of a piece of a large input's data region fails with 403 while other requests are
    in flight (inputs under two parts are read, not copied in the store, with server-side copy
    on too): the task fails with a typed error, nothing is committed or left behind (data
    files, unfinished uploads), and the same compaction run again succeeds."""
    uri, expected = s3_vectors
    opts = s3_endpoint.pylance_options
    before = lance.dataset(uri, storage_options=opts)
    storage = Storage(uri, opts)
    files_before = {e.name for e in storage.list("data")}
    referenced_before = _data_files(uri, opts)
    largest = max(before.get_fragments(), key=lambda f: f.count_rows()).data_files()[0].path
    armed = threading.Event()
    armed.set()

    def fail(method: str, path: str, headers: dict[str, str]) -> int | None:
        if not armed.is_set():
            return None
        rng = headers.get("Range", "")
        # a piece of the data region: not the first bytes, not the tail holding the metadata
        if (
            method == "GET"
            and unquote(path.split("?")[0]).endswith(largest)
            and rng.startswith("bytes=")
            and not rng.startswith("bytes=0-")
        ):
            first = int(rng.removeprefix("bytes=").split("-")[0])
            return 403 if 0 < first < 2 * 1024 * 1024 else None
        return None

    with S3Proxy(s3_endpoint.url, delay=0.005, fail=fail) as proxy:
        with pytest.raises(StorageError):
            compact(uri, **_options(proxy, s3_endpoint, server_side_copy))
        assert proxy.failed >= 1
        after = lance.dataset(uri, storage_options=opts)
        assert after.version == before.version and _data_files(uri, opts) == referenced_before
        assert {e.name for e in storage.list("data")} == files_before, "the failed task's output was not removed"
        assert storage.pending_uploads("data") == [], "an unfinished multipart upload was left behind"
        assert_reads_every_way(uri, expected, storage_options=opts)

        armed.clear()
        report = compact(uri, **_options(proxy, s3_endpoint, server_side_copy))
    assert report.version == before.version + 1 and report.fragments_added == 1
    assert_reads_every_way(uri, expected, storage_options=opts)


@pytest.mark.parametrize("shape", ["streaming", "vectors"])
@pytest.mark.parametrize("pages", ["coalesce", "copy"])
def test_one_request_per_input_plus_a_constant(s3_endpoint, shape: str, pages: str) -> None:  # type: ignore[no-untyped-def]
    """Compacting many inputs costs one read request per input data file (metadata and data come
    in one request when the file is within a request's share of ``read_batch_bytes``; here
    small appends and ~600 KB vector files) and a constant number of other requests (listing,
    manifests, the output's upload, the commit)."""
    rng = np.random.default_rng(3)
    uri = f"s3://{s3_endpoint.new_bucket()}/ds.lance"
    inputs, parts = 24, []
    for i in range(inputs):
        if shape == "streaming":
            part = pa.table(
                {
                    "id": pa.array(np.arange(i * 100, i * 100 + 100, dtype=np.int64)),
                    "x": pa.array(rng.standard_normal(100)),
                    "s": pa.array([f"s{j}" * int(rng.integers(1, 4)) for j in range(100)]),
                    "l": pa.array([[j] * (j % 3) for j in range(100)], pa.list_(pa.int32())),
                }
            )
        else:
            vectors = rng.standard_normal(200 * 768, dtype=np.float32)
            part = pa.table(
                {
                    "id": pa.array(np.arange(i * 200, i * 200 + 200, dtype=np.int64)),
                    "vec": pa.FixedSizeListArray.from_arrays(pa.array(vectors), 768),
                }
            )
        lance.write_dataset(
            part, uri, mode="append" if i else "create", data_storage_version="2.2", storage_options=s3_endpoint.pylance_options
        )
        parts.append(part)
    with S3Proxy(s3_endpoint.url) as proxy:
        options = {**s3_endpoint.pylance_options, "aws_endpoint": proxy.url}
        report = compact(uri, CompactionOptions(pages=pages), storage_options=options)  # type: ignore[arg-type]
    assert report.fragments_removed == inputs and report.fragments_added == 1
    data_reads = [path for method, path in proxy.log if method == "GET" and "/data/" in path]
    assert len(data_reads) <= inputs + 2, sorted(data_reads)  # + the output's self-check
    assert proxy.total <= inputs + 30, proxy.log
    assert_reads_every_way(uri, pa.concat_tables(parts), storage_options=s3_endpoint.pylance_options)


def test_requests_overlap_and_metadata_is_read_once(s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """Compacting 40 inputs of ~600 KB at 64 requests in flight, 50 ms per request: one request
    per input (a file over read_batch_bytes / 64 is still fetched whole), the manifest read once
    (planning, the copy and the commit share it), no HEAD but the copy's check that the version
    still exists and the commit's that the output does, the output's parts uploaded several at once, and the commit's store probe running
    while the copy does (its requests start before the output is complete)."""
    inputs, rows = 40, 200
    rng = np.random.default_rng(11)
    table = pa.table(
        {
            "id": pa.array(np.arange(inputs * rows, dtype=np.int64)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(inputs * rows * 768, dtype=np.float32)), 768),
        }
    )
    uri = f"s3://{s3_endpoint.new_bucket()}/ds.lance"
    lance.write_dataset(
        table, uri, max_rows_per_file=rows, data_storage_version="2.1", storage_options=s3_endpoint.pylance_options
    )
    options = CompactionOptions(max_concurrent_requests=64, pages="copy")
    assert options.read_batch_bytes // 64 < 768 * 4 * rows  # the share of one request is smaller than a file
    with S3Proxy(s3_endpoint.url, delay=0.05) as proxy:
        report = compact(uri, options, storage_options={**s3_endpoint.pylance_options, "aws_endpoint": proxy.url})
    assert report.fragments_removed == inputs and report.fragments_added == 1
    timeline = sorted(proxy.timeline)

    def path(p: str) -> str:
        return unquote(p.split("?")[0])

    data_reads = [p for _, _, m, p in timeline if m == "GET" and "/data/" in p]
    assert len(data_reads) == inputs + 1, data_reads  # + the output's self-check
    # the manifest read once; the copy checks it still exists (a version cleaned up meanwhile is
    # refused); then the commit writes ours
    manifest = [(m, path(p)) for *_, m, p in timeline if path(p).endswith(".manifest")]
    assert [m for m, _ in manifest] == ["GET", "HEAD", "PUT"], manifest
    output = next(path(p) for *_, m, p in timeline if "uploadId=" in p)
    assert [path(p) for *_, m, p in timeline if m == "HEAD"] == [manifest[0][1], output]
    parts = [(s, e) for s, e, m, p in timeline if m == "PUT" and "uploadId=" in p]
    assert len(parts) >= 4
    assert any(b[0] < a[1] for a, b in itertools.pairwise(parts)), "every part waited for the one before"
    probe = [s for s, _, _, p in timeline if ".lance-assets-probe" in p]
    completion = [s for s, _, m, p in timeline if m == "POST" and "uploadId=" in p]
    assert len(probe) == 3 and len(completion) == 1 and max(probe) < completion[0]
    assert_reads_every_way(uri, table, storage_options=s3_endpoint.pylance_options)

    # Opening the dataset again finds the version from the hint our commit wrote: the hint, a
    # HEAD of the hinted manifest and one of the next (missing: no listing after it), the manifest
    with S3Proxy(s3_endpoint.url) as proxy:
        ds = Dataset.open(uri, storage_options={**s3_endpoint.pylance_options, "aws_endpoint": proxy.url})
    assert ds.version == report.version
    assert [m for m, _ in proxy.log] == ["GET", "HEAD", "HEAD", "GET"], proxy.log
