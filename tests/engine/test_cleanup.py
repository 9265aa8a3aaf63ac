"""``cleanup`` removes exactly the files no manifest references, and only once they are old enough."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import lance
import pytest

from lance_assets.cli import main
from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.cleanup import cleanup, parse_duration
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import CorruptFileError, MissingFileError, UnknownFeatureFlagError, UnsupportedFeatureError
from lance_assets.format import manifest as mf
from lance_assets.io import Storage
from tests.support import factory, writers

pytestmark = pytest.mark.timeout(120)

HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _all_versions_read(uri: Path) -> list[int]:
    ds = lance.dataset(str(uri))
    return [lance.dataset(str(uri), version=v["version"]).count_rows() for v in ds.versions()]


def _orphans(root: Path, age: float) -> dict[str, str]:
    """Plant one orphan of every kind the crash/conflict tests produce."""
    staged = next((root / "_versions").glob("*.manifest")).name + ".tmp-0123abcd"
    files = {
        "data/000000000000000000000000deadbeefdeadbeefdeadbeefde.lance": "data",
        "_transactions/3-11111111-2222-3333-4444-555555555555.txn": "transaction",
        "_deletions/0-3-123456789.arrow": "deletion",
        f"_versions/{staged}": "staging",
        "_versions/18446744073709551600.manifest#1": "staging",
        "_versions/.lance-assets-probe-0123abcd": "staging",
    }
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"orphan")
        _age(p, age)
    return files


def test_removes_old_orphans_and_nothing_else(dataset_copy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = dataset_copy("deletes_arrow", "2.1")  # deletion files referenced by older versions only
    for p in root.rglob("*"):
        if p.is_file():
            _age(p, 10 * HOUR)  # everything old: only references protect real files
    before_rows = _all_versions_read(root)
    planted = _orphans(root, 2 * HOUR)
    keep = {k: v for k, v in _tree(root).items() if k not in planted}
    report = cleanup(str(root), older_than=timedelta(seconds=HOUR), retain_versions=None)  # orphans only
    assert {f.path: f.kind for f in report.files} == planted
    assert report.bytes == 6 * len(planted)
    assert _tree(root) == keep
    assert _all_versions_read(root) == before_rows


def test_young_files_are_kept(dataset_copy) -> None:  # type: ignore[no-untyped-def]
    root = dataset_copy("appends", "2.1")
    planted = _orphans(root, 30 * 60)  # 30 minutes old
    report = cleanup(str(root), older_than=timedelta(seconds=HOUR), retain_versions=None)
    assert report.files == [] and report.kept_too_young == len(planted)
    assert len(cleanup(str(root), older_than=timedelta(seconds=parse_duration("20m")), retain_versions=None).files) == len(
        planted
    )


def test_dry_run_removes_nothing(dataset_copy) -> None:  # type: ignore[no-untyped-def]
    root = dataset_copy("appends", "2.1")
    planted = _orphans(root, 2 * HOUR)
    before = _tree(root)
    report = cleanup(str(root), older_than=timedelta(seconds=HOUR), dry_run=True)
    assert report.dry_run and sorted(f.path for f in report.files) == sorted(planted)
    assert _tree(root) == before


def test_manifests_and_files_of_unknown_purpose_are_never_touched(dataset_copy) -> None:  # type: ignore[no-untyped-def]
    root = dataset_copy("scalar_index", "2.1")
    extra = [
        root / "_indices" / "not-referenced" / "page_data.lance",  # not an index folder (no uuid)
        root / "data" / "sub" / "nested.blob.bak",  # not a blob sidecar
        root / "_versions" / "d18446744073709551614.manifest.bak",  # unknown name in _versions
        root / "data" / "sub" / "nested.lance",  # not directly in data/
        root / "README.txt",
        root / "_refs" / "tags" / "t.json",
    ]
    for p in extra:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    for p in root.rglob("*"):
        if p.is_file():
            _age(p, 100 * HOUR)
    before = _tree(root)
    assert cleanup(str(root), older_than=timedelta(seconds=0), retain_versions=None).files == []
    assert _tree(root) == before
    assert lance.dataset(str(root)).describe_indices()


def test_orphans_of_a_conflicting_compaction_are_collected(tmp_path: Path) -> None:
    """Our compaction loses to pylance's; if its own cleanup could not run (kill), cleanup finds the files."""
    uri = tmp_path / "ds.lance"
    writers.build(uri, [10] * 5)
    storage = Storage(str(uri))
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=1000))
    results = [execute_task(storage, plan, t) for t in plan.tasks]
    ours = {p for r in results for p in r.files_written}
    lance.dataset(str(uri)).optimize.compact_files(target_rows_per_fragment=1000)
    report = cleanup(str(uri), older_than=timedelta(seconds=0), retain_versions=None)
    assert {f.path for f in report.files} == ours  # pylance's own rewrite is referenced by its version
    assert lance.dataset(str(uri)).to_table().num_rows == 50
    assert _all_versions_read(uri)[-1] == 50


def test_a_compaction_whose_files_were_cleaned_up_commits_nothing(tmp_path: Path) -> None:
    """A grace period shorter than a compaction: the commit notices its files are gone and refuses."""
    uri = tmp_path / "ds.lance"
    writers.build(uri, [10] * 5)
    storage = Storage(str(uri))
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=1000))
    results = [execute_task(storage, plan, t) for t in plan.tasks]
    assert cleanup(str(uri), older_than=timedelta(seconds=0), retain_versions=None).files
    before = _tree(uri)
    with pytest.raises(MissingFileError, match="vanished before the commit"):
        commit_compaction(storage, plan, results)
    assert _tree(uri) == before
    assert lance.dataset(str(uri)).version == 5


def test_default_grace_protects_a_running_compaction(tmp_path: Path) -> None:
    """cleanup (default grace) runs over and over while a slowed compaction runs in another process."""
    uri = tmp_path / "ds.lance"
    factory.appends(uri, "2.1", [3000] * 6, make=lambda s, n: factory.mixed_table(s, n, "2.1"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    code = f"from tests.support import writers; writers.compact_and_die({str(uri)!r}, 'none', 100_000, 1 << 20, 0.02)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    removed = 0
    while proc.poll() is None:
        removed += len(cleanup(str(uri)).files)
    _out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert removed == 0
    assert lance.dataset(str(uri)).version == 7 and len(lance.dataset(str(uri)).get_fragments()) == 1


@pytest.mark.parametrize("damage", ["corrupt_manifest", "unknown_flag", "branch"])
def test_refuses_when_references_are_uncertain(tmp_path: Path, damage: str) -> None:
    uri = tmp_path / "ds.lance"
    writers.build(uri, [10] * 3)
    _orphans(uri, 2 * HOUR)
    manifest = sorted((uri / "_versions").glob("*.manifest"))[-1]  # V2 names: the oldest version sorts last
    if damage == "corrupt_manifest":
        manifest.write_bytes(manifest.read_bytes()[:-7])
        error = CorruptFileError
    elif damage == "unknown_flag":
        parsed = mf.parse_manifest_file(manifest.read_bytes())
        parsed.manifest.writer_feature_flags |= 4096
        manifest.write_bytes(mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section))
        error = UnknownFeatureFlagError
    else:
        lance.dataset(str(uri)).create_branch("feature")
        error = UnsupportedFeatureError
    before = _tree(uri)
    with pytest.raises(error):
        cleanup(str(uri), older_than=timedelta(seconds=0))
    assert _tree(uri) == before


def test_after_pylance_removed_old_versions(tmp_path: Path) -> None:
    uri = tmp_path / "ds.lance"
    writers.build(uri, [10] * 4)
    ds = lance.dataset(str(uri))
    ds.optimize.compact_files(target_rows_per_fragment=1000)
    lance.dataset(str(uri)).cleanup_old_versions(older_than=__import__("datetime").timedelta(0), delete_unverified=True)
    planted = _orphans(uri, 2 * HOUR)
    assert {f.path for f in cleanup(str(uri), older_than=timedelta(seconds=HOUR)).files} == set(planted)
    assert lance.dataset(str(uri)).count_rows() == 40


def test_cli(dataset_copy, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    root = dataset_copy("appends", "2.1")
    planted = _orphans(root, 2 * HOUR)
    assert main(["cleanup", str(root), "--dry-run", "--json"]) == 0  # default cutoff: two weeks
    assert json.loads(capsys.readouterr().out)["files_removed"] == 0
    assert main(["cleanup", str(root), "--older-than", "1h", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and dry["files_removed"] == len(planted) and dry["bytes_removed"] == 6 * len(planted)
    assert main(["cleanup", str(root), "--older-than", "3h", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files_removed"] == 0
    assert main(["cleanup", str(root), "--older-than", "90m", "--orphans-only"]) == 0
    text = capsys.readouterr().out
    assert f"removed {len(planted)} unreferenced files" in text
    with pytest.raises(SystemExit) as exc:
        main(["cleanup", str(root), "--older-than", "soon"])
    assert exc.value.code == 2
    assert main(["cleanup", str(root / "nope")]) == 2  # not a dataset: one error line


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("7d", 604800), ("45", 45), ("1.5h", 5400), ("0s", 0), ("2w", 1209600)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1y", "1 hour", "1e3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_memory_store(dataset_cache) -> None:  # type: ignore[no-untyped-def]
    import fsspec

    src = dataset_cache("appends", "2.1")
    fs = fsspec.filesystem("memory")
    root = "/cleanup-test/ds.lance"
    for p in src.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"{root}/{p.relative_to(src)}", p.read_bytes())
    fs.pipe_file(f"{root}/data/orphan.lance", b"abc")
    assert cleanup(f"memory://{root}").files == []  # just created: too young
    report = cleanup(f"memory://{root}", older_than=timedelta(seconds=0), retain_versions=None)
    assert [f.path for f in report.files] == ["data/orphan.lance"]
    fs.rm(root, recursive=True)


# --- version retention ---------------------------------------------------------------------------
def _history(path: Path, version: str = "2.1", stable: bool = False) -> None:
    """Appends, a delete, an update, our compaction, a scalar index (v2), more appends,
    pylance's compaction."""
    factory.appends(path, version, [100, 100, 100, 100], enable_stable_row_ids=stable)
    lance.dataset(str(path)).delete("id < 10")
    lance.dataset(str(path)).update({"name": "'changed'"}, where="id = 150")
    from lance_assets.engine.compaction import compact

    compact(str(path), CompactionOptions())
    if version != "legacy":
        lance.dataset(str(path)).create_scalar_index("id", "BTREE")
    factory.write(factory.simple_table(400, 50), path, version)
    factory.write(factory.simple_table(450, 50), path, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(path)).optimize.compact_files()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "latest_version_hint.json"}


@pytest.mark.parametrize("version,stable", [("2.1", False), ("2.0", False), ("2.2", True), ("legacy", False)])
def test_retention_matches_pylance_cleanup_old_versions(tmp_path: Path, version: str, stable: bool) -> None:
    """The same files remain as after pylance's own cleanup with the same cutoff (everything old)."""
    import shutil
    from datetime import timedelta

    ours, theirs = tmp_path / "ours.lance", tmp_path / "theirs.lance"
    _history(ours, version, stable)
    shutil.copytree(ours, theirs)
    rows = lance.dataset(str(ours)).to_table().to_pylist()
    before_bytes = sum((ours / f).stat().st_size for f in _files(ours))
    dry = cleanup(str(ours), older_than=timedelta(seconds=0), retain_versions=1, dry_run=True)
    assert _files(ours) == _files(theirs)  # a dry run removes nothing
    report = cleanup(str(ours), older_than=timedelta(seconds=0), retain_versions=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(theirs)).cleanup_old_versions(older_than=timedelta(seconds=0), delete_unverified=True)
    assert _files(ours) == _files(theirs)
    ds = lance.dataset(str(ours))
    assert [v["version"] for v in ds.versions()] == [ds.version]
    assert ds.to_table().to_pylist() == rows
    assert ds.to_table(filter="id = 420").num_rows == 1  # the index (v2) still answers
    assert report.removed_versions == dry.removed_versions == list(range(1, ds.version))
    out = report.to_dict()
    assert (out["versions_removed"], out["versions_kept"]) == (ds.version - 1, 1)
    assert out["files_removed"] == len(report.files) and out["bytes_removed"] == before_bytes - sum(
        (ours / f).stat().st_size for f in _files(ours)
    )
    assert {f.kind for f in report.files} >= {"manifest", "data", "deletion", "transaction"}
    factory.write(factory.simple_table(500, 5), ours, version)  # pylance keeps writing
    assert lance.dataset(str(ours)).count_rows() == len(rows) + 5


def test_retention_keeps_recent_newest_and_tagged_versions(tmp_path: Path) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [10] * 6)  # versions 1..6
    lance.dataset(str(path)).tags.create("keep", 2)
    report = cleanup(str(path), older_than=timedelta(seconds=0), retain_versions=2)
    assert report.removed_versions == [1, 3, 4]
    for v, rows in ((2, 20), (5, 50), (6, 60)):
        assert lance.dataset(str(path), version=v).count_rows() == rows
    with pytest.raises(ValueError):
        lance.dataset(str(path), version=3)
    # nothing is old enough with a one-hour cutoff
    assert cleanup(str(path), older_than=timedelta(seconds=HOUR), retain_versions=1).removed_versions == []


@pytest.mark.parametrize("damage", ["corrupt_old_manifest", "tag_to_missing_version"])
def test_retention_refuses_uncertain_references(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [10] * 3)
    if damage == "corrupt_old_manifest":
        first = sorted((path / "_versions").glob("*.manifest"))[-1]  # V2 names: the oldest sorts last
        first.write_bytes(first.read_bytes()[:-20])
        expected: type[Exception] = CorruptFileError
    else:
        (path / "_refs" / "tags").mkdir(parents=True)
        (path / "_refs" / "tags" / "t.json").write_text(json.dumps({"branch": None, "version": 99, "manifestSize": 1}))
        from lance_assets.errors import VersionNotFoundError

        expected = VersionNotFoundError
    before = _tree(path)
    with pytest.raises(expected):
        cleanup(str(path), older_than=timedelta(seconds=0), retain_versions=1)
    assert _tree(path) == before


def test_retention_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [10] * 3)
    assert main(["cleanup", str(path), "--older-than", "0s", "--retain-versions", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["versions_removed"], out["versions_kept"], out["dry_run"]) == (2, 1, False)
    assert out["files_removed"] >= 4 and out["bytes_removed"] > 0 and out["aborted_uploads"] == 0
    assert lance.dataset(str(path)).count_rows() == 30


def test_a_kill_at_any_deletion_leaves_the_kept_version_readable(tmp_path: Path) -> None:
    """Killed (SIGKILL) after each of its deletions in turn, retention leaves the latest version
    reading the same rows, and a second run removes exactly what an uninterrupted run would."""
    import shutil

    pristine = tmp_path / "pristine.lance"
    _history(pristine)
    reference = tmp_path / "reference.lance"
    shutil.copytree(pristine, reference)
    total = len(cleanup(str(reference), older_than=timedelta(seconds=0), retain_versions=1).files)
    rows = lance.dataset(str(reference)).to_table().to_pylist()
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])
    )
    for k in range(1, total, max(1, total // 8)):
        path = tmp_path / f"killed-{k}.lance"
        shutil.copytree(pristine, path)
        code = f"from tests.support import writers; writers.cleanup_and_die({str(path)!r}, {k})"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == -9, proc.stderr
        assert lance.dataset(str(path)).to_table().to_pylist() == rows, f"killed after {k} deletions"
        cleanup(str(path), older_than=timedelta(seconds=0), retain_versions=1)
        assert _files(path) == _files(reference), f"killed after {k} deletions"


def test_compaction_then_retention_gives_the_space_back(tmp_path: Path) -> None:
    """1,000 small fragments compacted, then one version retained: the bytes on disk come within
    a few percent of the live table's data files."""
    from lance_assets.engine.compaction import compact
    from lance_assets.engine.maintenance.cleanup import bytes_on_disk

    path = tmp_path / "ds.lance"
    factory.write(factory.simple_table(0, 200_000), path, "2.2", mode="create", max_rows_per_file=200)
    assert len(lance.dataset(str(path)).get_fragments()) == 1000
    compact(str(path), CompactionOptions())
    before = bytes_on_disk(str(path))
    cleanup(str(path), older_than=timedelta(seconds=0), retain_versions=1)
    after = bytes_on_disk(str(path))
    live = sum(df.file_size_bytes for f in Dataset.open(str(path)).fragments for df in f.files)
    assert after < before / 2
    assert after <= live * 1.05, (after, live)


def test_a_compaction_running_during_retention_commits(tmp_path: Path) -> None:
    """Versions and files three hours old go; the files a compaction is writing right now are
    younger than the cutoff and its read version is the latest, so it commits and reads back."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [50] * 6)
    rows = sorted(lance.dataset(str(path)).to_table().to_pylist(), key=lambda r: r["id"])
    three_hours_ago = time.time() - 3 * HOUR
    for manifest in (path / "_versions").glob("*.manifest"):  # commit times in the past
        parsed = mf.parse_manifest_file(manifest.read_bytes())
        m = mf.Manifest()
        m.CopyFrom(parsed.manifest)
        m.timestamp.seconds = int(three_hours_ago)
        manifest.write_bytes(mf.build_manifest_file(m, parsed.transaction, parsed.index_section))
    for f in path.rglob("*"):
        if f.is_file():
            _age(f, 3 * HOUR)
    plan = plan_compaction(str(path), CompactionOptions())
    results = [execute_task(str(path), plan, t) for t in plan.tasks]  # written, not committed
    report = cleanup(str(path), older_than=timedelta(seconds=HOUR), retain_versions=1)
    assert report.removed_versions == [1, 2, 3, 4, 5]
    assert all(p not in {f.path for f in report.files} for r in results for p in r.files_written)
    committed = commit_compaction(str(path), plan, results)
    assert committed.version == 7
    assert sorted(lance.dataset(str(path)).to_table().to_pylist(), key=lambda r: r["id"]) == rows


def test_retention_with_a_tag_matches_pylance(tmp_path: Path) -> None:
    """A tagged old version survives with its files, in ours and in pylance's cleanup alike."""
    import shutil
    from datetime import timedelta

    ours, theirs = tmp_path / "ours.lance", tmp_path / "theirs.lance"
    _history(ours)
    lance.dataset(str(ours)).tags.create("audit", 2)
    shutil.copytree(ours, theirs)
    report = cleanup(str(ours), older_than=timedelta(seconds=0), retain_versions=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(theirs)).cleanup_old_versions(
            older_than=timedelta(seconds=0), delete_unverified=True, error_if_tagged_old_versions=False
        )
    assert 2 not in report.removed_versions
    assert _files(ours) == _files(theirs)
    assert (
        lance.dataset(str(ours), version="audit").count_rows() == lance.dataset(str(theirs), version="audit").count_rows() == 200
    )


# --- blob sidecars and index folders ------------------------------------------------------------
def _blob_history(path: Path) -> None:
    """Blob v2 appends (inline, packed and dedicated sidecars under data/<stem>/), a delete, an
    overwrite: the old versions alone reference data files with sidecar folders."""
    import pyarrow as pa
    from lance.blob import blob_array, blob_field

    schema = pa.schema([pa.field("id", pa.int64()), blob_field("b")])
    for i in range(3):
        values = [bytes([i]) * n for n in (10, 70_000, 6_000_000)]
        table = pa.table({"id": pa.array([3 * i, 3 * i + 1, 3 * i + 2], pa.int64()), "b": blob_array(values)}, schema=schema)
        lance.write_dataset(table, str(path), schema=schema, mode="append", data_storage_version="2.2")
    lance.dataset(str(path)).delete("id = 4")
    table = pa.table({"id": pa.array([100], pa.int64()), "b": blob_array([b"x" * 6_000_000])}, schema=schema)
    lance.write_dataset(table, str(path), schema=schema, mode="overwrite", data_storage_version="2.2")


def test_retention_removes_blob_sidecars_like_pylance(tmp_path: Path) -> None:
    import shutil
    from datetime import timedelta

    ours, theirs = tmp_path / "ours.lance", tmp_path / "theirs.lance"
    _blob_history(ours)
    sidecars = {f for f in _files(ours) if f.endswith(".blob")}
    assert len({f.rsplit("/", 1)[0] for f in sidecars}) == 4  # three appends and the overwrite
    shutil.copytree(ours, theirs)
    report = cleanup(str(ours), older_than=timedelta(seconds=0), retain_versions=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.dataset(str(theirs)).cleanup_old_versions(older_than=timedelta(seconds=0), delete_unverified=True)
    assert _files(ours) == _files(theirs)
    assert len({f.path.rsplit("/", 1)[0] for f in report.files if f.kind == "blob"}) == 3
    assert len([f for f in _files(ours) if f.endswith(".blob")]) == 1  # the live file's sidecar stays
    ds = lance.dataset(str(ours))
    assert ds.to_table(columns=["id"]).to_pylist() == [{"id": 100}]
    assert ds.take_blobs("b", indices=[0])[0].read() == b"x" * 6_000_000


def test_orphan_blob_sidecars_and_index_folders_go_when_old(dataset_copy) -> None:  # type: ignore[no-untyped-def]
    import uuid

    root = dataset_copy("scalar_index", "2.1")
    live_index = next((root / "_indices").iterdir())
    old = {
        f"data/{'0' * 24}deadbeef{'0' * 18}/{'1' * 32}.blob": "blob",  # sidecar of no data file
        f"_indices/{uuid.uuid4()}/index.idx": "index",  # an index build that never committed
        f"_indices/{uuid.uuid4()}/part_0/page_data.lance": "index",
    }
    young = [f"_indices/{uuid.uuid4()}/index.idx", f"data/{'1' * 50}/{'0' * 32}.blob"]
    for rel in [*old, *young]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"stale")
    for p in root.rglob("*"):
        if p.is_file() and str(p.relative_to(root)) not in young:
            _age(p, 3 * HOUR)
    before = _tree(root)
    dry = cleanup(str(root), older_than=timedelta(seconds=HOUR), retain_versions=None, dry_run=True)
    assert {f.path: f.kind for f in dry.files} == old and _tree(root) == before
    report = cleanup(str(root), older_than=timedelta(seconds=HOUR), retain_versions=None)
    assert {f.path: f.kind for f in report.files} == old
    assert report.kept_too_young == len(young)
    assert all((root / rel).exists() for rel in young) and not any((root / rel).exists() for rel in old)
    assert any(live_index.iterdir())  # the committed index is referenced: kept, however old
    ds = lance.dataset(str(root))
    assert ds.describe_indices() and ds.to_table(filter="id = 5").num_rows == 1


def test_cli_retains_one_version_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like Lance's cleanup_old_versions: versions past the cutoff go unless --orphans-only."""
    path = tmp_path / "ds.lance"
    factory.appends(path, "2.1", [10] * 3)
    assert main(["cleanup", str(path), "--older-than", "0s", "--orphans-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions_removed"] == 0
    assert main(["cleanup", str(path), "--json"]) == 0  # default cutoff: two weeks
    assert json.loads(capsys.readouterr().out)["versions_removed"] == 0
    assert main(["cleanup", str(path), "--older-than", "0s", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["versions_removed"], out["versions_kept"]) == (2, 1)
    assert [v["version"] for v in lance.dataset(str(path)).versions()] == [3]
    with pytest.raises(SystemExit):
        main(["cleanup", str(path), "--orphans-only", "--retain-versions", "2"])


def test_a_cutoff_in_seconds_is_still_read_with_a_deprecation_warning(dataset_copy) -> None:  # type: ignore[no-untyped-def]
    root = dataset_copy("appends", "2.1")
    planted = _orphans(root, 2 * HOUR)
    with pytest.warns(DeprecationWarning, match="pass a datetime.timedelta"):
        report = cleanup(str(root), older_than=HOUR, retain_versions=None, dry_run=True)  # type: ignore[arg-type]
    assert sorted(f.path for f in report.files) == sorted(planted)
    with pytest.raises(ValueError, match="negative"):
        cleanup(str(root), older_than=timedelta(seconds=-1))
