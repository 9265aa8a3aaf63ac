"""S3 reads as presigned GETs (``io/s3_direct.py``) on a real moto server behind the proxy: the
same bytes as s3fs for every range, one request per read, the same typed errors, and s3fs
taking over when the direct path fails or the store is configured beyond what it reproduces.
The proxy's log tells the two paths apart: a presigned GET carries its SigV4 signature in the
query string, s3fs's in a header."""

from __future__ import annotations

import os
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets import CompactionOptions, compact
from lance_assets.errors import MissingFileError
from lance_assets.io import Storage
from lance_assets.io.s3_direct import MAX_FAILURES
from tests.support.assertions import assert_reads_every_way
from tests.support.s3_proxy import S3Proxy


def _presigned(proxy: S3Proxy) -> int:
    return sum(1 for method, path in proxy.log if method == "GET" and "X-Amz-Signature=" in path)


def _storage(s3_endpoint: Any, proxy: S3Proxy, bucket: str, **extra: Any) -> Storage:
    return Storage(f"s3://{bucket}/d", {**s3_endpoint.pylance_options, "aws_endpoint": proxy.url, **extra})


@pytest.fixture
def bucket_with_object(s3_endpoint: Any) -> tuple[str, bytes]:
    bucket = s3_endpoint.new_bucket()
    data = os.urandom(70_000)
    Storage(f"s3://{bucket}/d", s3_endpoint.pylance_options).write("obj", data)
    return bucket, data


@pytest.mark.parametrize(("start", "end"), [(None, None), (0, 10), (5, 70_000), (69_990, 70_000), (69_990, 80_000), (0, 1)])
def test_direct_reads_answer_what_s3fs_answers(
    s3_endpoint: Any, bucket_with_object: tuple[str, bytes], start: int | None, end: int | None
) -> None:
    bucket, data = bucket_with_object
    with S3Proxy(s3_endpoint.url) as proxy:
        storage = _storage(s3_endpoint, proxy, bucket)
        got = storage.read("obj", start, end)
        reads = proxy.requests["GET"]
        expected = storage.fs.cat_file(storage.path("obj"), start=start, end=end) if start is not None else data
    assert got == expected == data[start:end]
    assert _presigned(proxy) == reads == 1, proxy.log  # one request, the presigned one


def test_an_empty_range_is_empty_without_a_request(s3_endpoint: Any, bucket_with_object: tuple[str, bytes]) -> None:
    """(s3fs answers ``cat_file(start=100, end=100)`` with the whole object.)"""
    bucket, _ = bucket_with_object
    with S3Proxy(s3_endpoint.url) as proxy:
        assert _storage(s3_endpoint, proxy, bucket).read("obj", 100, 100) == b""
    assert proxy.requests["GET"] == 0


def test_a_missing_object_is_still_named_missing(s3_endpoint: Any, bucket_with_object: tuple[str, bytes]) -> None:
    bucket, _ = bucket_with_object
    with S3Proxy(s3_endpoint.url) as proxy:
        storage = _storage(s3_endpoint, proxy, bucket)
        with pytest.raises(MissingFileError):
            storage.read("absent", 0, 10)
        assert storage.read("obj", 0, 3)  # a missing object is no failure of the direct path
        assert _presigned(proxy) == proxy.requests["GET"] == 2  # named missing without asking s3fs again


def test_server_errors_fall_back_to_s3fs_and_then_turn_the_direct_path_off(
    s3_endpoint: Any, bucket_with_object: tuple[str, bytes]
) -> None:
    """Presigned GETs answered 503: every read still returns the right bytes (through s3fs);
    after MAX_FAILURES in a row the store is read by s3fs alone."""
    bucket, data = bucket_with_object

    def fail(method: str, path: str, headers: dict[str, str]) -> int | None:
        return 503 if "X-Amz-Signature=" in path else None

    with S3Proxy(s3_endpoint.url, fail=fail) as proxy:
        storage = _storage(s3_endpoint, proxy, bucket)
        for k in range(MAX_FAILURES + 3):
            assert storage.read("obj", k, k + 100) == data[k : k + 100]
        assert _presigned(proxy) == proxy.failed == MAX_FAILURES


def test_stores_configured_beyond_the_plain_case_are_read_by_s3fs(
    s3_endpoint: Any, bucket_with_object: tuple[str, bytes]
) -> None:
    bucket, data = bucket_with_object
    with S3Proxy(s3_endpoint.url) as proxy:
        storage = _storage(s3_endpoint, proxy, bucket, requester_pays=True)
        assert storage.read("obj", 0, 100) == data[:100]
        assert _presigned(proxy) == 0 and proxy.requests["GET"] == 1


def test_a_compaction_reads_its_inputs_with_presigned_gets(s3_endpoint: Any) -> None:
    """Through the proxy, each input data file is read by presigned GETs; pylance reads the
    result back the same every way."""
    uri = f"s3://{s3_endpoint.new_bucket()}/ds.lance"
    rng = np.random.default_rng(5)
    tables = []
    for i in range(12):
        table = pa.table({"i": pa.array(np.arange(i * 50, (i + 1) * 50)), "x": rng.standard_normal(50)})
        lance.write_dataset(table, uri, mode="append" if i else "create", storage_options=s3_endpoint.pylance_options)
        tables.append(table)
    ds = lance.dataset(uri, storage_options=s3_endpoint.pylance_options)
    inputs = {f.path for frag in ds.get_fragments() for f in frag.data_files()}
    with S3Proxy(s3_endpoint.url) as proxy:
        options = {**s3_endpoint.pylance_options, "aws_endpoint": proxy.url}
        report = compact(uri, CompactionOptions(max_concurrent_requests=8), storage_options=options)
    reads = [path for method, path in proxy.log if method == "GET" and path.split("?")[0].rsplit("/", 1)[-1] in inputs]
    assert report.fragments_removed == 12 and report.fragments_added == 1
    # every input once (the first once more: the copy reads its metadata to choose the columns
    # pylance's writer would take), each a presigned GET
    assert {path.split("?")[0].rsplit("/", 1)[-1] for path in reads} == inputs and len(reads) <= len(inputs) + 1
    assert all("X-Amz-Signature=" in path for path in reads) and proxy.failed == 0
    assert_reads_every_way(uri, pa.concat_tables(tables), storage_options=s3_endpoint.pylance_options, key="i")
