"""Broken storage and hostile datasets: a clear typed error, and the dataset byte-identical afterwards.

Real failures where this machine allows them: a read-only tmpfs, a 1 MiB
tmpfs that fills up, a process that dropped root privileges reading a file
with mode 000 (root itself bypasses permissions). Skipped cleanly when
``mount`` or ``setuid`` is not permitted. Each failure is also checked to
leave no partial output behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lance
import pytest

from lance_assets.engine.committing import commit as commit_mod
from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import (
    CorruptFileError,
    MissingFileError,
    StorageError,
    UnknownFeatureFlagError,
    UnsupportedVersionError,
    VersionNotFoundError,
)
from lance_assets.format import manifest as mf
from lance_assets.io import Storage
from tests.support import writers

pytestmark = pytest.mark.timeout(120)
OPTIONS = CompactionOptions(target_rows_per_fragment=100_000)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    uri = tmp_path / "ds.lance"
    writers.build(uri, [2000] * 5)
    return uri


def _latest_manifest(uri: Path) -> Path:
    return Path(Storage(str(uri)).path(Dataset.open(str(uri)).location.rel_path))


def _rewrite_manifest(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    parsed = mf.parse_manifest_file(path.read_bytes())
    change(parsed.manifest)
    path.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))


# --- a tiny tmpfs -----------------------------------------------------------------------------
@pytest.fixture
def tmpfs() -> Iterator:  # type: ignore[type-arg]
    """``mount(size, dataset) -> path``: a private tmpfs of ``size`` holding a copy of ``dataset``."""
    mounts: list[str] = []

    def mount(size: str, dataset: Path, readonly: bool = False) -> Path:
        where = tempfile.mkdtemp(prefix="lance-assets-tmpfs-")
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where], capture_output=True, text=True)
        if out.returncode != 0:
            os.rmdir(where)
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        mounts.append(where)
        dst = Path(where) / dataset.name
        shutil.copytree(dataset, dst)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", where], check=True)
        return dst

    yield mount
    for where in mounts:
        subprocess.run(["umount", where], check=False)
        os.rmdir(where)


def test_read_only_filesystem(ds: Path, tmpfs) -> None:  # type: ignore[no-untyped-def]
    uri = tmpfs("8m", ds, readonly=True)
    before = tree(uri)
    with pytest.raises(StorageError, match="read-only file system"):
        compact(str(uri), OPTIONS)
    assert tree(uri) == before
    assert lance.dataset(str(uri)).count_rows() == 10_000


def _fill(directory: Path) -> Path:
    """Use up every free byte of the filesystem holding ``directory``."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_while_copying(ds: Path, tmpfs) -> None:  # type: ignore[no-untyped-def]
    size = sum(len(b) for b in tree(ds).values())
    uri = tmpfs(f"{size + 64 * 1024}", ds)  # room for the dataset, not for a second copy of its data
    before = tree(uri)
    with pytest.raises(StorageError, match="no space left"):
        compact(str(uri), OPTIONS)
    assert tree(uri) == before  # the partial output file is gone
    assert lance.dataset(str(uri)).count_rows() == 10_000


@pytest.mark.parametrize("when", ["transaction", "manifest"])
def test_disk_full_while_committing(ds: Path, tmpfs, monkeypatch: pytest.MonkeyPatch, when: str) -> None:  # type: ignore[no-untyped-def]
    """The data files fit; the disk fills up just before the transaction file / the manifest is written."""
    uri = tmpfs("4m", ds)
    before = tree(uri)
    filler: list[Path] = []
    real_write, real_create = Storage.write, Storage.create

    def write(self, rel, data):  # type: ignore[no-untyped-def]
        if when == "transaction" and rel.startswith("_transactions/") and not filler:
            filler.append(_fill(uri.parent))
        return real_write(self, rel, data)

    def create(self, rel, data):  # type: ignore[no-untyped-def]
        if when == "manifest" and not filler:
            filler.append(_fill(uri.parent))
        return real_create(self, rel, data)

    monkeypatch.setattr(Storage, "write", write)
    monkeypatch.setattr(Storage, "create", create)
    with pytest.raises(StorageError, match="no space left"):
        compact(str(uri), OPTIONS)
    monkeypatch.undo()
    filler[0].unlink()
    assert tree(uri) == before  # data files, transaction file and staging manifest all removed
    assert lance.dataset(str(uri)).count_rows() == 10_000
    assert compact(str(uri), OPTIONS).version == 6  # room again: it works


def test_permission_denied_as_an_unprivileged_process(tmp_path: Path) -> None:
    """root ignores file modes, so the compaction runs in a child that dropped to uid/gid 65534."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges in a child")
    shared = Path(tempfile.mkdtemp(prefix="lance-assets-perm-"))
    try:
        os.chmod(shared, 0o755)
        uri = shared / "ds.lance"
        writers.build(uri, [100] * 4)
        for p in [uri, *uri.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        victim = next((uri / "data").iterdir())
        os.chmod(victim, 0o000)
        os.chmod(uri / "data", 0o777)  # the unprivileged child may write outputs, but not read the victim
        before = tree(uri)
        code = f"""
import os, sys
from lance_assets.engine.compaction import compact
from lance_assets.engine.options import CompactionOptions
from lance_assets.errors import StorageError
import fsspec.implementations.local, google.protobuf, lance_assets.engine.copying.copy  # everything imported before dropping root
os.setgid(65534); os.setuid(65534)
try:
    compact({str(uri)!r}, CompactionOptions(target_rows_per_fragment=100_000))
except StorageError as exc:
    print("StorageError:", exc); sys.exit(3)
print("no error"); sys.exit(0)
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        if "Operation not permitted" in out.stderr:
            pytest.skip("setuid not permitted here")
        assert out.returncode == 3, (out.stdout, out.stderr[-1500:])
        assert "permission denied" in out.stdout
        assert tree(uri) == before
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --- the dataset changes between plan and copy / commit ------------------------------------------
def test_data_file_deleted_between_plan_and_copy(ds: Path) -> None:
    storage = Storage(str(ds))
    plan = plan_compaction(Dataset.open(storage), OPTIONS)
    victim = ds / "data" / Dataset.open(storage).fragments[2].files[0].path
    victim.unlink()
    before = tree(ds)
    with pytest.raises(MissingFileError):
        for task in plan.tasks:
            execute_task(storage, plan, task)
    assert tree(ds) == before


def test_data_file_truncated_between_plan_and_copy(ds: Path) -> None:
    storage = Storage(str(ds))
    plan = plan_compaction(Dataset.open(storage), OPTIONS)
    victim = ds / "data" / Dataset.open(storage).fragments[1].files[0].path
    victim.write_bytes(victim.read_bytes()[:-100])
    before = tree(ds)
    with pytest.raises(CorruptFileError):
        for task in plan.tasks:
            execute_task(storage, plan, task)
    assert tree(ds) == before


def test_read_version_cleaned_up_between_plan_and_copy(ds: Path) -> None:
    storage = Storage(str(ds))
    plan = plan_compaction(Dataset.open(storage), OPTIONS)
    writers.build(ds, [5], start=50_000)
    _latest_manifest(ds)  # the new version exists
    Path(storage.path(Dataset.open(storage, plan.read_version).location.rel_path)).unlink()
    with pytest.raises(VersionNotFoundError):
        execute_task(storage, plan, plan.tasks[0])


def test_unknown_writer_flag_appears_before_our_commit(ds: Path) -> None:
    storage = Storage(str(ds))
    plan = plan_compaction(Dataset.open(storage), OPTIONS)
    results = [execute_task(storage, plan, t) for t in plan.tasks]
    writers.build(ds, [5], start=50_000)  # another writer commits ...
    _rewrite_manifest(
        _latest_manifest(ds), lambda m: setattr(m, "writer_feature_flags", m.writer_feature_flags | 4096)
    )  # ... a newer Lance
    ours = {p for r in results for p in r.files_written}
    before = {k: v for k, v in tree(ds).items() if k not in ours}
    with pytest.raises(UnknownFeatureFlagError):
        commit_compaction(storage, plan, results)
    assert tree(ds) == before


@pytest.mark.parametrize("word", ["reader", "writer"])
def test_unknown_feature_flags_refuse_before_writing(ds: Path, word: str) -> None:
    _rewrite_manifest(
        _latest_manifest(ds), lambda m: setattr(m, f"{word}_feature_flags", getattr(m, f"{word}_feature_flags") | 8192)
    )
    before = tree(ds)
    with pytest.raises(UnknownFeatureFlagError, match=word):
        compact(str(ds), OPTIONS)
    assert tree(ds) == before


@pytest.mark.parametrize("change", ["storage_version", "trailer", "data_file_footer"])
def test_future_format_versions(ds: Path, change: str) -> None:
    if change == "storage_version":
        _rewrite_manifest(_latest_manifest(ds), lambda m: setattr(m.data_format, "version", "2.9"))
    elif change == "trailer":
        path = _latest_manifest(ds)
        data = bytearray(path.read_bytes())
        data[-8:-4] = (0).to_bytes(2, "little") + (3).to_bytes(2, "little")
        path.write_bytes(bytes(data))
    else:
        victim = ds / "data" / Dataset.open(str(ds)).fragments[3].files[0].path
        data = bytearray(victim.read_bytes())
        data[-8:-4] = (3).to_bytes(2, "little") + (0).to_bytes(2, "little")  # file format 3.0
        victim.write_bytes(bytes(data))
    before = tree(ds)
    with pytest.raises(UnsupportedVersionError):
        compact(str(ds), OPTIONS)
    assert tree(ds) == before


# --- the outcome of the final create is unknown ---------------------------------------------------
def test_interrupt_right_after_the_manifest_landed_keeps_the_files(ds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting our data files here would leave a committed manifest pointing at nothing."""
    real_link = os.link

    def link_then_interrupt(src, dst):  # type: ignore[no-untyped-def]
        real_link(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", link_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        compact(str(ds), OPTIONS)
    monkeypatch.undo()
    ds_now = lance.dataset(str(ds))
    assert ds_now.version == 6 and len(ds_now.get_fragments()) == 1
    assert sorted(ds_now.to_table(columns=["id"])["id"].to_pylist()) == list(range(10_000))


def test_failed_link_removes_everything(ds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree(ds)

    def broken_link(src, dst):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(StorageError, match="Input/output error"):
        compact(str(ds), OPTIONS)
    monkeypatch.undo()
    assert tree(ds) == before


def test_commit_that_landed_in_an_earlier_attempt_is_recognised(ds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 PUT retried after a timeout answers 412 although the first try succeeded: that is our commit."""
    real_create = Storage.create

    def create_then_report_conflict(self, rel, data):  # type: ignore[no-untyped-def]
        real_create(self, rel, data)
        raise commit_mod.AlreadyExistsError("already exists", path=self.url(rel))

    monkeypatch.setattr(Storage, "create", create_then_report_conflict)
    report = compact(str(ds), OPTIONS)
    monkeypatch.undo()
    assert report.version == 6 and report.retries == 0  # recognised as ours at once: no race was lost
    assert lance.dataset(str(ds)).version == 6  # committed once, not twice
    assert sorted(lance.dataset(str(ds)).to_table(columns=["id"])["id"].to_pylist()) == list(range(10_000))


def test_a_file_renamed_away_during_a_listing_leaves_the_rest_listed(tmp_path: Path) -> None:
    """Concurrent committers rename temporary files into ``_versions/`` while another one lists
    it: a name that vanishes between the listing and its stat is left out, and the other files
    are still there (once, a vanished temporary file made the whole folder list as empty, and
    a committer then called the dataset "not a Lance dataset")."""
    from lance_assets.io import local

    for i in range(20):
        (tmp_path / f"{i}.manifest").write_bytes(b"x" * i)
    seen: list[str] = []

    def entry(name: str, size: int, mtime: float) -> str:
        if not seen:  # the first stat'ed file makes every other one vanish
            for other in tmp_path.iterdir():
                if other.name != name:
                    other.rename(tmp_path.parent / f"moved-{other.name}")
        seen.append(name)
        return name

    listed = local.list_files(str(tmp_path), entry)
    assert listed == seen and len(listed) >= 1
    storage = Storage(str(tmp_path))
    assert [e.name for e in storage.list("")] == listed
