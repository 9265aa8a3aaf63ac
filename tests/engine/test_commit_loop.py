"""Every kind of commit survives a manifest PUT that landed although its answer was lost.

On S3 the commit is a conditional PUT of the next manifest. Two ways it can land unseen:
the answer times out (we see an error), or the client retries the PUT and the retry is told
the object exists (we see "already exists", as if another writer had won). Either way the
version is ours: the loop must recognise it (by our transaction's uuid), report it as
committed exactly once, and keep every file it refers to. Checked against a real S3 API
(moto's server on loopback) for both kinds of commit lance_assets makes: a compaction's
Rewrite and an index change (the fragment-reuse trim's CreateIndex).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import lance
import pyarrow as pa
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import TRANSACTIONS_DIR, Dataset
from lance_assets.engine.indices import load_reuse_versions, reuse_index_meta
from lance_assets.engine.maintenance.index_upkeep import trim_reuse_index
from lance_assets.engine.options import CompactionOptions
from lance_assets.io import Storage, s3
from tests.support import factory

pytestmark = pytest.mark.timeout(180)


def _lost_answer(kind: str) -> Callable[..., None]:
    """A put_if_absent that lands a manifest, then fails the way ``kind`` says."""
    real = s3.put_if_absent

    def put(fs, path, data):  # type: ignore[no-untyped-def]
        real(fs, path, data)
        if path.endswith(".manifest"):
            if kind == "timeout":
                raise TimeoutError("read timeout after the upload")  # the answer never came
            raise FileExistsError(path)  # the client's retry was told the object exists

    return put


def _table(start: int, rows: int) -> pa.Table:
    ids = range(start, start + rows)
    return pa.table({"id": pa.array(ids, pa.int64()), "cat": pa.array([f"c{i % 7}" for i in ids])})


def _referenced_files_exist(uri: str, opts: dict) -> None:  # type: ignore[type-arg]
    storage = Storage(uri, opts)
    ds = Dataset.open(storage)
    if ds.manifest.transaction_file:
        assert storage.exists(f"{TRANSACTIONS_DIR}/{ds.manifest.transaction_file}")
    for frag in ds.manifest.fragments:
        for f in frag.files:
            assert storage.exists(f"data/{f.path}"), f.path
    meta = reuse_index_meta(ds)
    if meta is not None:
        load_reuse_versions(ds, meta)  # raises if its files are gone


@pytest.fixture
def indexed_s3(s3_endpoint):  # type: ignore[no-untyped-def]
    """Four small appends on moto with a BTREE and a BITMAP index (the bitmap one keeps covering
    merged rows through the fragment-reuse index, so a compaction adds a reuse version)."""
    bucket = s3_endpoint.new_bucket()
    uri, opts = f"s3://{bucket}/t.lance", s3_endpoint.pylance_options
    factory.appends(uri, "2.1", [50, 50, 50, 50], make=_table, storage_options=opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = lance.dataset(uri, storage_options=opts)
        ds.create_scalar_index("id", "BTREE", name="id_idx")
        ds.create_scalar_index("cat", "BITMAP", name="cat_idx")
    return uri, opts


@pytest.mark.parametrize("kind", ["timeout", "exists_on_retry"])
def test_compaction_whose_answer_was_lost_is_committed_once(indexed_s3, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:  # type: ignore[no-untyped-def]
    uri, opts = indexed_s3
    before = lance.dataset(uri, storage_options=opts).version
    monkeypatch.setattr(s3, "put_if_absent", _lost_answer(kind))
    report = compact(uri, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    monkeypatch.undo()
    assert report.version == before + 1 and report.committed_versions == [before + 1]
    ds = lance.dataset(uri, storage_options=opts)
    assert ds.version == before + 1  # once, not twice
    assert len(ds.get_fragments()) == 1
    assert sorted(ds.to_table(columns=["id"])["id"].to_pylist()) == list(range(200))
    assert ds.to_table(filter="id = 123", columns=["id"])["id"].to_pylist() == [123]
    ds.validate()
    _referenced_files_exist(uri, opts)


@pytest.mark.parametrize("kind", ["timeout", "exists_on_retry"])
def test_index_change_whose_answer_was_lost_is_committed_once(indexed_s3, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:  # type: ignore[no-untyped-def]
    uri, opts = indexed_s3
    compact(uri, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)  # adds a reuse version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(uri, storage_options=opts).create_scalar_index("cat", "BITMAP", name="cat_idx", replace=True)
    before = lance.dataset(uri, storage_options=opts).version
    dry = trim_reuse_index(uri, opts, dry_run=True)
    assert (dry.reuse_versions_before, dry.reuse_versions_after) == (1, 0)  # the trim has work to do

    monkeypatch.setattr(s3, "put_if_absent", _lost_answer(kind))
    report = trim_reuse_index(uri, opts)
    monkeypatch.undo()
    assert report.committed_versions == [before + 1]
    assert report.reuse_versions_after == 0
    ds = lance.dataset(uri, storage_options=opts)
    assert ds.version == before + 1
    assert sorted(ds.to_table(columns=["id"])["id"].to_pylist()) == list(range(200))
    assert ds.to_table(filter="id = 77", columns=["id"])["id"].to_pylist() == [77]
    assert ds.stats.index_stats("cat_idx")["num_unindexed_rows"] == 0
    assert sorted(ds.to_table(filter="cat = 'c3'", columns=["id"])["id"].to_pylist()) == [i for i in range(200) if i % 7 == 3]
    ds.validate()
    _referenced_files_exist(uri, opts)
