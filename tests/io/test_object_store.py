"""Object stores through fsspec, against a real S3 API on loopback (moto's server mode).

pylance writes the datasets into the moto bucket and is the judge of what they
contain after we compacted them through s3fs. memory:// and custom fsspec
stores go through the same Storage code path as local disks.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import lance
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.cleanup import cleanup
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import CommitConflictError, StorageError
from lance_assets.io import Storage
from lance_assets.io.s3 import POOL_CONNECTIONS
from lance_assets.io.storage import UNSAFE_COMMIT_OPTION, AlreadyExistsError, fsspec_options
from tests.support import factory

pytestmark = pytest.mark.timeout(120)


def _ids(uri: str, options: dict | None = None, version: int | None = None) -> list[int]:
    ds = lance.dataset(uri, version=version, storage_options=options)
    return sorted(ds.to_table(columns=["id"])["id"].to_pylist())


@pytest.fixture
def s3_dataset(s3_endpoint):  # type: ignore[no-untyped-def]
    """A 2.1 dataset of five small fragments written by pylance into a fresh moto bucket."""
    bucket = s3_endpoint.new_bucket()
    uri = f"s3://{bucket}/events.lance"
    factory.appends(uri, "2.1", [40, 30, 20, 10, 5], storage_options=s3_endpoint.pylance_options)
    return uri


def test_moto_honours_if_none_match(s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """The server refuses a second ``If-None-Match: *`` PUT: the precondition our commits rest on."""
    bucket = s3_endpoint.new_bucket()
    client = s3_endpoint.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError) as info:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"

    storage = Storage(f"s3://{bucket}/ds", s3_endpoint.pylance_options)
    storage.check_commit_support()  # the probe: create twice, the second must be refused
    assert storage.list("_versions") == []  # the probe object is gone again
    storage.create("_versions/1.manifest", b"first")
    with pytest.raises(AlreadyExistsError):
        storage.create("_versions/1.manifest", b"second")
    assert storage.read("_versions/1.manifest") == b"first"


def test_pylance_writes_we_compact_pylance_reads(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    opts = s3_endpoint.pylance_options
    before = lance.dataset(s3_dataset, storage_options=opts)
    rows = before.to_table().sort_by("id")
    report = compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    assert report.version == before.version + 1 and report.fragments_removed == 5 and report.fragments_added == 1
    after = lance.dataset(s3_dataset, storage_options=opts)
    assert after.version == report.version and len(after.get_fragments()) == 1
    assert after.to_table().sort_by("id").equals(rows)
    # pylance keeps writing on top of our version, and reads our version back by number
    factory.write(factory.simple_table(1000, 7), s3_dataset, "2.1", storage_options=opts)
    assert _ids(s3_dataset, opts) == list(range(105)) + list(range(1000, 1007))
    assert _ids(s3_dataset, opts, version=report.version) == list(range(105))
    # s3fs-spelled options reach the same data
    assert Dataset.open(s3_dataset, storage_options=s3_endpoint.fsspec_options).version == report.version + 1


def test_cli_passes_storage_options_through(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    flags = [arg for key, value in s3_endpoint.pylance_options.items() for arg in ("--storage-option", f"{key}={value}")]

    def cli(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "lance_assets.cli", *args, "--json", *flags], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert cli("inspect", s3_dataset)["summary"]["fragments"] == 5
    report = cli("compact", s3_dataset, "--target-rows-per-fragment", "1000")
    assert report["fragments_removed"] == 5 and report["version"] == 6
    assert cli("cleanup", s3_dataset, "--older-than", "0s", "--dry-run", "--orphans-only")["files_removed"] == 0
    assert _ids(s3_dataset, s3_endpoint.pylance_options) == list(range(105))


def test_rebase_over_a_pylance_append_on_s3(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    opts = s3_endpoint.pylance_options
    storage = Storage(s3_dataset, opts)
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    results = [execute_task(storage, plan, t) for t in plan.tasks]
    factory.write(factory.simple_table(500, 9), s3_dataset, "2.1", storage_options=opts)  # lands first
    report = commit_compaction(storage, plan, results)
    assert report.version == plan.read_version + 2
    ds = lance.dataset(s3_dataset, storage_options=opts)
    assert _ids(s3_dataset, opts) == list(range(105)) + list(range(500, 509))
    ids = [f.fragment_id for f in ds.get_fragments()]
    assert len(ids) == len(set(ids)) == 2


def test_listings_are_not_served_from_a_stale_cache(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """s3fs caches listings per (cached) filesystem instance forever; other writers' versions must still be seen."""
    opts = s3_endpoint.pylance_options
    first = Storage(s3_dataset, opts)
    seen = Dataset.open(first).version
    first.list("_versions")  # fill s3fs's listing cache
    factory.write(factory.simple_table(900, 3), s3_dataset, "2.1", storage_options=opts)
    second = Storage(s3_dataset, opts)
    assert second.fs is first.fs  # fsspec hands out the same cached instance
    assert Dataset.open(second).version == seen + 1
    assert len([e for e in second.list("_versions") if e.name.endswith(".manifest")]) == seen + 1


def test_an_ambiguous_put_that_landed_is_a_commit(s3_dataset: str, s3_endpoint, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The PUT reached the store but its answer was lost: our files must stay, the commit counts."""
    opts = s3_endpoint.pylance_options
    real = Storage._put_if_absent

    def put_then_fail(self, rel, data):  # type: ignore[no-untyped-def]
        real(self, rel, data)
        if rel.endswith(".manifest"):
            raise StorageError("connection reset after upload", path=self.url(rel))

    monkeypatch.setattr(Storage, "_put_if_absent", put_then_fail)
    report = compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    monkeypatch.undo()
    assert report.version == 6
    assert _ids(s3_dataset, opts) == list(range(105))


def test_an_ambiguous_put_that_did_not_land_keeps_files_for_cleanup(
    s3_dataset: str, s3_endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A remote PUT that failed may still land later, so its data files are not deleted; cleanup removes them."""
    opts = s3_endpoint.pylance_options
    real = Storage._put_if_absent

    def fail(self, rel, data):  # type: ignore[no-untyped-def]
        if not rel.endswith(".manifest"):
            return real(self, rel, data)  # the conditional-write probe still works
        raise StorageError("timeout", path=self.url(rel))

    monkeypatch.setattr(Storage, "_put_if_absent", fail)
    with pytest.raises(StorageError, match="timeout"):
        compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    monkeypatch.undo()
    assert lance.dataset(s3_dataset, storage_options=opts).version == 5
    report = cleanup(s3_dataset, older_than=timedelta(seconds=0), retain_versions=None, storage_options=opts)
    assert sorted(f.kind for f in report.files) == ["data", "transaction"]
    assert _ids(s3_dataset, opts) == list(range(105))
    assert compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts).version == 6


def test_a_server_ignoring_if_none_match_is_refused(s3_dataset: str, s3_endpoint, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Simulates an S3-compatible server that ignores the header: the probe notices, nothing is committed."""
    opts = s3_endpoint.pylance_options
    fs = Storage(s3_dataset, opts).fs  # fsspec caches instances: compact() below gets this one
    real_pipe = fs.pipe_file

    def ignore_condition(path, value, mode="overwrite", **kwargs):  # type: ignore[no-untyped-def]
        return real_pipe(path, value, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", ignore_condition)
    keys = lambda: sorted(o["Key"] for o in s3_endpoint.client().list_objects_v2(Bucket=s3_dataset.split("/")[2])["Contents"])  # noqa: E731
    before = keys()
    with pytest.raises(StorageError, match="does not support conditional writes"):
        compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    monkeypatch.undo()
    assert keys() == before  # our data files and the probe object were removed
    assert lance.dataset(s3_dataset, storage_options=opts).version == 5


def test_cleanup_on_s3_removes_only_orphans(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    opts = s3_endpoint.pylance_options
    storage = Storage(s3_dataset, opts)
    storage.write("data/orphan.lance", b"x" * 10)
    storage.write("_transactions/9-orphan.txn", b"t")
    storage.write("data/orphan/0001.blob", b"bb")  # a blob sidecar folder of the orphan data file
    assert cleanup(s3_dataset, older_than=timedelta(seconds=3600), storage_options=opts).files == []  # too young
    report = cleanup(s3_dataset, older_than=timedelta(seconds=0), retain_versions=None, storage_options=opts)
    assert sorted(f.path for f in report.files) == ["_transactions/9-orphan.txn", "data/orphan.lance", "data/orphan/0001.blob"]
    assert report.bytes == 13
    assert not storage.exists("data/orphan/0001.blob")
    for v in range(1, 6):
        assert _ids(s3_dataset, opts, version=v) == list(range([0, 40, 70, 90, 100, 105][v]))


# --- stores other than S3 and local disks ------------------------------------------------
class NoConditionalFS(MemoryFileSystem):
    """An fsspec store without atomic create-if-absent (fsspec's generic pipe_file(mode="create") is racy)."""

    protocol = "nocond"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    @classmethod
    def _strip_protocol(cls, path):  # type: ignore[no-untyped-def]
        return super()._strip_protocol(path.removeprefix("nocond://"))


fsspec.register_implementation("nocond", NoConditionalFS, clobber=True)


def _upload(fs: fsspec.AbstractFileSystem, local: Path, root: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(local)}", path.read_bytes())


def _download(fs: fsspec.AbstractFileSystem, root: str, local: Path) -> None:
    for name in fs.find(root):
        dst = local / name[len(root) :].lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(fs.cat_file(name))


@pytest.mark.parametrize("protocol", ["memory", "nocond"])
def test_non_s3_stores(protocol: str, dataset_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """memory:// commits (in-process lock); a store without conditional writes is refused unless opted in."""
    src = dataset_cache("appends", "2.1")
    fs = fsspec.filesystem(protocol)
    root = f"/{protocol}-{tmp_path.name}/ds.lance"
    _upload(fs, src, root)
    uri = f"{protocol}://{root}"
    options = CompactionOptions(target_rows_per_fragment=1000)
    storage_options: dict[str, str] = {}
    if protocol == "nocond":
        with pytest.raises(StorageError, match="cannot create objects only-if-absent"):
            compact(uri, options)
        assert Dataset.open(uri).version == lance.dataset(str(src)).version
        assert not [
            p
            for p in fs.find(root)
            if "/data/" in p and p.rsplit("/", 1)[-1] not in {f.path for frag in Dataset.open(uri).fragments for f in frag.files}
        ]
        storage_options = {UNSAFE_COMMIT_OPTION: "true"}
    report = compact(uri, options, storage_options=storage_options)
    assert report.version == lance.dataset(str(src)).version + 1
    out = tmp_path / "out.lance"
    _download(fs, root, out)
    assert _ids(str(out)) == _ids(str(src))
    assert len(lance.dataset(str(out)).get_fragments()) == 1
    assert cleanup(uri, older_than=timedelta(seconds=0), retain_versions=None).files == []
    fs.rm(root, recursive=True)


def test_commit_lock_serialises_exists_then_write(dataset_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = dataset_cache("appends", "2.1")
    fs = fsspec.filesystem("nocond")
    root = f"/lock-{tmp_path.name}/ds.lance"
    _upload(fs, src, root)
    lock = threading.Lock()
    held = []

    @contextlib.contextmanager
    def commit_lock():  # type: ignore[no-untyped-def]
        with lock:
            held.append(True)
            yield

    storage = Storage(f"nocond://{root}", commit_lock=commit_lock)
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=1000))
    report = commit_compaction(storage, plan, [execute_task(storage, plan, t) for t in plan.tasks])
    assert report.version == plan.read_version + 1 and held == [True]
    with pytest.raises(AlreadyExistsError):
        storage.create(Dataset.open(storage).location.rel_path, b"x")
    fs.rm(root, recursive=True)


def test_option_translation() -> None:
    out = fsspec_options(
        "s3",
        {
            "aws_access_key_id": "a",
            "aws_secret_access_key": "b",
            "aws_endpoint": "http://h",
            "aws_region": "r",
            "allow_http": "true",
            UNSAFE_COMMIT_OPTION: "1",
        },
    )
    assert out == {
        "key": "a",
        "secret": "b",
        "client_kwargs": {"endpoint_url": "http://h", "region_name": "r"},
        # botocore's pool of 10 connections would cap the requests in flight
        "config_kwargs": {"max_pool_connections": POOL_CONNECTIONS},
    }
    # a pool size of the caller's own is kept
    assert fsspec_options("s3", {"config_kwargs": {"max_pool_connections": 7}})["config_kwargs"] == {"max_pool_connections": 7}
    # s3fs spellings win; non-S3 protocols only lose our own key
    assert fsspec_options("s3", {"key": "x", "aws_access_key_id": "a"})["key"] == "x"
    assert fsspec_options("file", {"auto_mkdir": True, UNSAFE_COMMIT_OPTION: True}) == {"auto_mkdir": True}


def _s3_appender(uri: str, options: dict, worker: int, count: int) -> int:
    import warnings

    import lance

    warnings.simplefilter("ignore")
    failures = 0
    for i in range(count):
        start = 1_000_000 * (worker + 1) + i * 10
        while True:
            try:
                lance.write_dataset(factory.simple_table(start, 10), uri, mode="append", storage_options=options)
                break
            except Exception:
                failures += 1
                assert failures < 50
    return failures


def test_pylance_appenders_race_our_compactions_on_s3(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """Separate processes append through pylance while this one compacts, all against the moto server."""
    from tests.support import writers

    opts = s3_endpoint.pylance_options
    queue = writers.SPAWN.Queue()
    procs = [writers.SPAWN.Process(target=writers._run, args=(_s3_appender, (s3_dataset, opts, w, 8), queue)) for w in range(2)]
    for p in procs:
        p.start()
    commits = 0
    while any(p.is_alive() for p in procs):
        try:
            commits += (
                compact(s3_dataset, CompactionOptions(target_rows_per_fragment=10_000), storage_options=opts).version is not None
            )
        except CommitConflictError:
            pass
    outcomes = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(o[0] == "ok" for o in outcomes), outcomes
    expected = set(range(105)) | {1_000_000 * (w + 1) + i for w in range(2) for i in range(80)}
    ids = lance.dataset(s3_dataset, storage_options=opts).to_table(columns=["id"])["id"].to_pylist()
    assert len(ids) == len(expected) and set(ids) == expected
    assert commits >= 1


def test_version_retention_on_s3(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """Old versions and the files only they referenced go; the latest version reads as before."""
    opts = s3_endpoint.pylance_options
    compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    latest = lance.dataset(s3_dataset, storage_options=opts)
    rows = _ids(s3_dataset, opts)
    storage = Storage(s3_dataset, opts)
    before = {e.name for e in storage.list("data")}
    dry = cleanup(s3_dataset, older_than=timedelta(seconds=0), retain_versions=1, dry_run=True, storage_options=opts)
    assert {e.name for e in storage.list("data")} == before
    report = cleanup(s3_dataset, older_than=timedelta(seconds=0), retain_versions=1, storage_options=opts)
    assert report.removed_versions == dry.removed_versions == list(range(1, latest.version))
    assert _ids(s3_dataset, opts) == rows
    assert [v["version"] for v in lance.dataset(s3_dataset, storage_options=opts).versions()] == [latest.version]
    live = {df.path for f in Dataset.open(storage).fragments for df in f.files}
    assert {e.name for e in storage.list("data")} == live


def test_cleanup_reads_the_manifests_ahead_on_s3(s3_dataset: str, s3_endpoint) -> None:  # type: ignore[no-untyped-def]
    """On an object store the manifests are read together (a request each); what cleanup decides
    is the same as when they are read in turn."""
    from tests.support.s3_proxy import S3Proxy

    opts = s3_endpoint.pylance_options
    compact(s3_dataset, CompactionOptions(target_rows_per_fragment=1000), storage_options=opts)
    reports, overlap = [], []
    for in_flight in (1, 8):
        with S3Proxy(s3_endpoint.url, delay=0.01) as proxy:
            storage = Storage(s3_dataset, {**opts, "aws_endpoint": proxy.url}, max_in_flight=in_flight)
            reports.append(cleanup(storage, older_than=timedelta(seconds=0), retain_versions=1, dry_run=True))
            overlap.append(proxy.max_in_flight["GET"])
    in_turn, ahead = reports
    assert overlap[0] == 1 and overlap[1] > 1
    assert ahead.removed_versions == in_turn.removed_versions == list(range(1, ahead.versions))
    assert [(f.path, f.bytes, f.kind) for f in ahead.files] == [(f.path, f.bytes, f.kind) for f in in_turn.files]
    assert ahead.bytes > 0
