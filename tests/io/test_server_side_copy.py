"""Large extents are copied inside S3 (UploadPartCopy), against moto's server on loopback.

moto enforces S3's multipart rules (every part but the last at least 5 MiB), so a composer that
breaks them fails here as it would on AWS; pylance reads the compacted datasets back.
"""

from __future__ import annotations

import os
from datetime import timedelta

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import MissingFileError
from lance_assets.io import Storage
from lance_assets.io.multipart import MIN_PART_BYTES, MultipartComposer
from lance_assets.io.storage import SERVER_SIDE_COPY_OPTION

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024


def _put(storage: Storage, rel: str, data: bytes) -> None:
    storage.write(rel, data)


def _uploads(s3_endpoint, bucket: str) -> list:  # type: ignore[no-untyped-def]
    return s3_endpoint.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.parametrize(
    "pieces",
    [
        # (kind, size): "w" writes new bytes, "c" copies a range of the source object
        [("c", 12 * MIB), ("w", 40), ("c", 11 * MIB), ("w", 3000)],  # pad then top-up then copy
        [("w", 100), ("c", 10 * MIB + 7), ("w", 1)],  # top-up leaves exactly enough to copy
        [("c", 3 * MIB), ("w", 10), ("c", 9 * MIB)],  # ranges under two parts are read
        [("w", 6 * MIB), ("c", 10 * MIB), ("w", 0)],  # a full buffer is a part of its own
        [("w", 17)],  # a small object is one PUT
    ],
    ids=["pad-topup", "exact", "small-ranges", "full-buffer", "tiny"],
)
def test_composed_object_has_the_exact_bytes(s3_endpoint, pieces) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_endpoint.new_bucket()
    storage = Storage(f"s3://{bucket}/root", s3_endpoint.fsspec_options)
    assert storage.server_side_copy
    source = np.random.default_rng(1).integers(0, 256, 24 * MIB, dtype=np.uint8).tobytes()
    _put(storage, "src.bin", source)
    expected = bytearray()
    cursor = 5  # copy from an unaligned offset
    with storage.open_write("out.bin") as out:
        assert isinstance(out, MultipartComposer)
        for kind, size in pieces:
            if kind == "w":
                data = os.urandom(size)
                out.write(data)
                expected += data
            else:
                storage.copy_range("src.bin", cursor, cursor + size, out, batch_bytes=MIB)
                expected += source[cursor : cursor + size]
                cursor = (cursor + size) % (12 * MIB)
        copied_in_store = out.server_side_bytes
    assert storage.read("out.bin") == bytes(expected)
    assert _uploads(s3_endpoint, bucket) == []
    big = [size for kind, size in pieces if kind == "c" and size >= 2 * MIN_PART_BYTES]
    if big:
        # All but at most one part's worth of top-up per range stayed inside the store.
        assert copied_in_store >= sum(big) - len(big) * MIN_PART_BYTES
    else:
        assert copied_in_store == 0


def test_a_failed_write_leaves_no_object_and_no_upload(s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_endpoint.new_bucket()
    storage = Storage(f"s3://{bucket}/root", s3_endpoint.fsspec_options)
    _put(storage, "src.bin", os.urandom(12 * MIB))
    with pytest.raises(MissingFileError), storage.open_write("out.bin") as out:
        storage.copy_range("src.bin", 0, 12 * MIB, out, batch_bytes=MIB)
        assert _uploads(s3_endpoint, bucket)  # parts are in flight, nothing visible yet
        assert not storage.exists("out.bin")
        storage.copy_range("src.bin", 0, 30 * MIB, out, batch_bytes=MIB)  # past the end: fails
    assert not storage.exists("out.bin")
    assert _uploads(s3_endpoint, bucket) == []


def test_option_turns_server_side_copy_off(s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_endpoint.new_bucket()
    options = {**s3_endpoint.fsspec_options, SERVER_SIDE_COPY_OPTION: "false"}
    storage = Storage(f"s3://{bucket}/root", options)
    assert not storage.server_side_copy
    source = os.urandom(12 * MIB)
    storage.write("src.bin", source)
    with storage.open_write("out.bin") as out:
        out.write(b"plain")
        assert storage.copy_range("src.bin", 0, 12 * MIB, out, batch_bytes=4 * MIB) is None
        assert out.server_side_bytes == 0  # every byte was read and uploaded from here
    assert storage.read("out.bin") == b"plain" + source
    assert _uploads(s3_endpoint, bucket) == []


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
def test_compaction_of_large_fragments_copies_inside_the_store(
    s3_endpoint, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Fragments of ~12 MiB: most bytes never leave moto, and pylance reads the result unchanged."""
    bucket = s3_endpoint.new_bucket()
    uri = f"s3://{bucket}/vectors.lance"
    rows, dim = 36_000, 256
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * dim, dtype=np.float32)), dim),
        }
    )
    lance.write_dataset(
        table, uri, data_storage_version=version, max_rows_per_file=rows // 3, storage_options=s3_endpoint.pylance_options
    )
    before = lance.dataset(uri, storage_options=s3_endpoint.pylance_options).to_table()
    storage = Storage(uri, s3_endpoint.pylance_options)
    plan = plan_compaction(Dataset.open(storage))
    assert len(plan.tasks) == 1 and len(plan.tasks[0].fragment_ids) == 3
    copied = []
    original = MultipartComposer.copy_range

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        n = original(self, *args, **kwargs)
        copied.append(n)
        return n

    monkeypatch.setattr(MultipartComposer, "copy_range", counting)  # counts, then does the real copy
    result = execute_task(storage, plan, plan.tasks[0])
    commit_compaction(storage, plan, [result])
    after = lance.dataset(uri, storage_options=s3_endpoint.pylance_options)
    assert len(after.get_fragments()) == 1
    assert after.to_table().equals(before)
    assert sum(copied) >= 0.5 * result.bytes_read
    assert _uploads(s3_endpoint, bucket) == []


_ABANDON = """
import os, sys
from lance_assets.io import Storage
storage = Storage(sys.argv[1], {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": sys.argv[2], "region_name": "us-east-1"}})
cm = storage.open_write("data/half-written.lance")
out = cm.__enter__()
storage.copy_range("data/big.bin", 0, 12 * 1024 * 1024, out, batch_bytes=1 << 20)
os._exit(9)  # killed mid-file: no abort, no completion
"""


def test_cleanup_aborts_a_killed_writers_upload(s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from lance_assets.engine.maintenance.cleanup import cleanup
    from tests.support import factory

    bucket = s3_endpoint.new_bucket()
    uri = f"s3://{bucket}/events.lance"
    factory.appends(uri, "2.1", [10, 10], storage_options=s3_endpoint.pylance_options)
    storage = Storage(uri, s3_endpoint.fsspec_options)
    storage.write("data/big.bin", os.urandom(12 * MIB))
    done = subprocess.run([sys.executable, "-c", _ABANDON, uri, s3_endpoint.url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    pending = storage.pending_uploads("data")
    assert [u.rel for u in pending] == ["data/half-written.lance"]
    assert not storage.exists("data/half-written.lance")

    # moto reports every upload as begun on one fixed date, so "young" is judged from that date.
    young = pending[0].initiated + 10  # type: ignore[operator]
    assert (
        cleanup(
            uri, older_than=timedelta(seconds=3600), retain_versions=None, now=young, storage_options=s3_endpoint.pylance_options
        ).aborted_uploads
        == 0
    )
    assert len(storage.pending_uploads("data")) == 1
    assert (
        cleanup(
            uri, older_than=timedelta(seconds=0), retain_versions=None, dry_run=True, storage_options=s3_endpoint.pylance_options
        ).aborted_uploads
        == 1
    )
    assert len(storage.pending_uploads("data")) == 1
    report = cleanup(uri, older_than=timedelta(seconds=0), retain_versions=None, storage_options=s3_endpoint.pylance_options)
    assert report.aborted_uploads == 1 and report.to_dict()["aborted_uploads"] == 1
    assert storage.pending_uploads("data") == []
    assert _ids_sorted(uri, s3_endpoint.pylance_options) == list(range(20))


def _ids_sorted(uri: str, options: dict) -> list[int]:
    return sorted(lance.dataset(uri, storage_options=options).to_table(columns=["id"])["id"].to_pylist())


@pytest.mark.parametrize("server_side", [True, False], ids=["server-side", "streamed"])
@pytest.mark.parametrize("version", ["legacy", "2.0", "2.1", "2.2", "2.3"])
def test_every_storage_version_compacts_through_the_multipart_writer(s3_endpoint, version: str, server_side: bool) -> None:  # type: ignore[no-untyped-def]
    from lance_assets.engine.compaction import compact
    from lance_assets.engine.options import CompactionOptions
    from tests.support import factory

    bucket = s3_endpoint.new_bucket()
    uri = f"s3://{bucket}/events.lance"
    opts = s3_endpoint.pylance_options
    factory.appends(uri, version, [40, 40, 40, 40], storage_options=opts)
    before = lance.dataset(uri, storage_options=opts).to_table()
    ours = {**opts, SERVER_SIDE_COPY_OPTION: str(server_side).lower()}
    report = compact(uri, CompactionOptions(target_rows_per_fragment=1000), storage_options=ours)
    assert (report.fragments_removed, report.fragments_added) == (4, 1)
    after = lance.dataset(uri, storage_options=opts)
    assert len(after.get_fragments()) == 1
    assert after.to_table().equals(before)
    assert _uploads(s3_endpoint, bucket) == []
