"""Bad inputs: only our typed errors come out, and nothing on disk is touched.

Every test works on a private copy of a pylance-written dataset, corrupts it,
then calls ``Dataset.open`` and ``inspect_dataset``. Anything but a
``LanceAssetsError`` escaping, or any byte of the dataset changing, fails.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import lance
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.inspect import inspect_dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.engine.report import Reason
from lance_assets.errors import (
    CorruptFileError,
    LanceAssetsError,
    MissingFileError,
    NotADatasetError,
    StorageError,
    UnknownFeatureFlagError,
    UnsupportedVersionError,
)
from lance_assets.format import manifest as mf
from tests.support.assertions import tree_digest

Copy = Callable[[str, str], Path]


def outcomes(path: Path | str, **kwargs: object) -> list[LanceAssetsError | None]:
    """Run both entry points; typed errors are returned, anything else propagates (= test failure)."""
    results: list[LanceAssetsError | None] = []
    for call in (lambda: Dataset.open(str(path), **kwargs), lambda: inspect_dataset(str(path), **kwargs)):
        try:
            call()
        except LanceAssetsError as exc:
            assert str(exc), "error without a message"
            results.append(exc)
        else:
            results.append(None)
    return results


def assert_refused(path: Path, error: type[LanceAssetsError] = LanceAssetsError, **kwargs: object) -> list[LanceAssetsError]:
    before = tree_digest(path) if path.exists() else None
    got = outcomes(path, **kwargs)
    for exc in got:
        assert isinstance(exc, error), f"expected {error.__name__}, got {exc!r}"
    if before is not None:
        assert tree_digest(path) == before, "a failed call modified the dataset"
    return got  # type: ignore[return-value]


def latest_manifest(path: Path) -> Path:
    return path / "_versions" / mf.manifest_name(lance.dataset(str(path)).version, mf.NamingScheme.V2)


def rewrite_manifest(path: Path, change: Callable[[mf.Manifest], None], version: int | None = None) -> None:
    """Rewrite one manifest (default: the latest) through our own parse/build functions."""
    target = latest_manifest(path) if version is None else path / "_versions" / mf.manifest_name(version, mf.NamingScheme.V2)
    parsed = mf.parse_manifest_file(target.read_bytes())
    m = mf.Manifest()
    m.CopyFrom(parsed.manifest)
    change(m)
    target.write_bytes(mf.build_manifest_file(m, parsed.transaction, parsed.index_section))


# --- truncated, wrong magic, wrong trailer ---------------------------------------------------
@pytest.mark.parametrize("keep", [0, 1, 4, 15, 16, 19, 20, "half", "minus16", "minus1"])
def test_truncated_manifest(dataset_copy: Copy, keep: int | str) -> None:
    path = dataset_copy("appends", "2.1")
    target = latest_manifest(path)
    data = target.read_bytes()
    n = {"half": len(data) // 2, "minus16": len(data) - 16, "minus1": len(data) - 1}.get(keep, keep)  # type: ignore[arg-type]
    target.write_bytes(data[:n])
    assert_refused(path, CorruptFileError)


def test_wrong_magic(dataset_copy: Copy) -> None:
    path = dataset_copy("deletes_arrow", "2.2")
    target = latest_manifest(path)
    data = target.read_bytes()
    target.write_bytes(data[:-4] + b"LANX")
    assert_refused(path, CorruptFileError)


def test_wrong_trailer_version(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.0")
    target = latest_manifest(path)
    data = bytearray(target.read_bytes())
    struct.pack_into("<HH", data, len(data) - 8, 0, 3)
    target.write_bytes(bytes(data))
    assert_refused(path, UnsupportedVersionError)


@pytest.mark.parametrize("shape", ["appends", "scalar_index"])
def test_every_trailer_byte_flip_is_refused_in_memory(dataset_cache: Callable[[str, str], Path], shape: str) -> None:
    """Exhaustive over the 16 trailer bytes and all 255 masks (pure parsing, no disk)."""
    data = latest_manifest(dataset_cache(shape, "2.1")).read_bytes()
    mf.parse_manifest_file(data)
    for i in range(len(data) - mf.TRAILER_SIZE, len(data)):
        for mask in range(1, 256):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(LanceAssetsError):
                mf.parse_manifest_file(bytes(bad))


# --- flips inside the manifest message ----------------------------------------------------------
def _message_range(data: bytes) -> tuple[int, int]:
    """[start, end) of the manifest message bytes (after its u32 length prefix)."""
    (pos,) = struct.unpack_from("<q", data, len(data) - mf.TRAILER_SIZE)
    return pos + 4, len(data) - mf.TRAILER_SIZE


@pytest.fixture
def flip_target(dataset_copy: Copy, request: pytest.FixtureRequest) -> tuple[Path, Path, bytes]:
    path = dataset_copy(*request.param)
    target = latest_manifest(path)
    return path, target, target.read_bytes()


@pytest.mark.parametrize(
    "flip_target",
    [("deletes_arrow", "2.1"), ("scalar_index", "2.2"), ("stable_row_ids", "2.0"), ("mixed", "legacy")],
    indirect=True,
    ids=str,
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255), section=st.sampled_from(["message", "anywhere"]))
def test_flips_inside_the_manifest(flip_target: tuple[Path, Path, bytes], where: float, mask: int, section: str) -> None:
    """A flipped byte may still parse (e.g. inside a string); either way no foreign exception escapes."""
    path, target, original = flip_target
    start, end = _message_range(original) if section == "message" else (0, len(original))
    i = start + int(where * (end - start))
    bad = bytearray(original)
    bad[i] ^= mask
    target.write_bytes(bytes(bad))
    try:
        before = tree_digest(path)
        outcomes(path)
        assert tree_digest(path) == before
    finally:
        target.write_bytes(original)


@pytest.mark.parametrize("flip_target", [("appends", "2.2"), ("vector_index", "2.1")], indirect=True, ids=str)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, mf.TRAILER_SIZE - 1), mask=st.integers(1, 255))
def test_trailer_flip_on_disk(flip_target: tuple[Path, Path, bytes], offset: int, mask: int) -> None:
    path, target, original = flip_target
    bad = bytearray(original)
    bad[len(bad) - mf.TRAILER_SIZE + offset] ^= mask
    target.write_bytes(bytes(bad))
    try:
        assert_refused(path)
    finally:
        target.write_bytes(original)


# --- not a dataset ---------------------------------------------------------------------------
def test_missing_versions_dir(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    shutil.rmtree(path / "_versions")
    assert_refused(path, NotADatasetError)
    assert_refused(path, NotADatasetError, version=1)


def test_versions_dir_without_manifests(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    for p in (path / "_versions").iterdir():
        if p.name.endswith(".manifest"):
            p.unlink()
    assert_refused(path, NotADatasetError)


def test_empty_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(empty, NotADatasetError)
    assert list(empty.iterdir()) == []


def test_non_existent_path(tmp_path: Path) -> None:
    missing = tmp_path / "does" / "not" / "exist.lance"
    assert_refused(missing, NotADatasetError)
    assert not missing.exists() and not (tmp_path / "does").exists()


def test_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file.lance"
    f.write_bytes(b"not a directory")
    assert_refused(f)
    assert f.read_bytes() == b"not a directory"


def test_manifest_is_a_directory(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    target = latest_manifest(path)
    target.unlink()
    target.mkdir()
    assert_refused(path, StorageError)


def test_manifest_claiming_another_version(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    first = path / "_versions" / mf.manifest_name(1, mf.NamingScheme.V2)
    shutil.copy(first, latest_manifest(path))
    assert_refused(path)


def test_mixed_naming_schemes(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    shutil.copy(latest_manifest(path), path / "_versions" / "4.manifest")
    (path / "_versions" / "latest_version_hint.json").unlink()
    assert_refused(path, NotADatasetError)


# --- feature flags -----------------------------------------------------------------------------
@pytest.mark.parametrize("bit", [1 << 20, 64, 4096])
def test_unknown_reader_feature_flag(dataset_copy: Copy, bit: int) -> None:
    path = dataset_copy("deletes_arrow", "2.1")

    def set_flag(m: mf.Manifest) -> None:
        m.reader_feature_flags |= bit
        m.writer_feature_flags |= bit

    rewrite_manifest(path, set_flag)
    errors = assert_refused(path, UnknownFeatureFlagError)
    assert "reader" in str(errors[0])
    with pytest.raises(Exception, match="cannot be read by this version of Lance"):  # nor can the oracle
        lance.dataset(str(path)).count_rows()


def test_unknown_writer_only_flag_still_reads(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    rewrite_manifest(path, lambda m: setattr(m, "writer_feature_flags", m.writer_feature_flags | 1 << 20))
    assert outcomes(path) == [None, None]
    assert lance.dataset(str(path)).count_rows() == 381  # pylance agrees: readers ignore writer flags


def test_unknown_flag_in_an_older_version_only_matters_there(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    rewrite_manifest(path, lambda m: setattr(m, "reader_feature_flags", 1 << 30), version=2)
    assert outcomes(path) == [None, None]
    assert_refused(path, UnknownFeatureFlagError, version=2)


# --- missing files -----------------------------------------------------------------------------
def test_missing_data_file_without_recorded_size(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.2")
    victim: list[str] = []

    def forget_size(m: mf.Manifest) -> None:
        df = m.fragments[1].files[0]
        df.file_size_bytes = 0
        victim.append(df.path)

    rewrite_manifest(path, forget_size)
    # with the file present the size is looked up on disk and agrees with the real size
    report = inspect_dataset(str(path))
    assert report.fragments[1].bytes == (path / "data" / victim[0]).stat().st_size
    (path / "data" / victim[0]).unlink()
    before = tree_digest(path)
    assert Dataset.open(str(path)).version == 4  # opening needs no data file
    with pytest.raises(MissingFileError) as info:
        inspect_dataset(str(path))
    assert victim[0] in str(info.value)
    assert tree_digest(path) == before


def test_missing_manifest_for_requested_version(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")
    (path / "_versions" / mf.manifest_name(2, mf.NamingScheme.V2)).unlink()
    assert outcomes(path, version=3) == [None, None]
    assert_refused(path, LanceAssetsError, version=2)


def test_data_file_name_with_nul_byte(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.1")

    def poison(m: mf.Manifest) -> None:
        m.fragments[0].files[0].path = "a\x00b.lance"
        m.fragments[0].files[0].file_size_bytes = 0

    rewrite_manifest(path, poison)
    before = tree_digest(path)
    opened, inspected = outcomes(path)
    assert opened is None  # the manifest itself is fine
    assert isinstance(inspected, StorageError)  # not a bare ValueError from os.stat
    assert tree_digest(path) == before


@pytest.mark.parametrize("pair", [(3, 1), (2, 9)])
def test_data_file_of_an_unknown_version_is_left_alone(dataset_copy: Copy, pair: tuple[int, int]) -> None:
    """A fragment whose data file claims a version we know no layout for (a newer Lance, or a
    damaged manifest: found by the planner fuzz test) is skipped with a reason, never copied,
    and the planner does not crash on it."""
    path = dataset_copy("appends", "2.1")

    def newer(m: mf.Manifest) -> None:
        m.fragments[1].files[0].file_major_version, m.fragments[1].files[0].file_minor_version = pair

    rewrite_manifest(path, newer)
    plan = plan_compaction(str(path), CompactionOptions(target_rows_per_fragment=10_000))
    skipped = {s.fragment_id: s for s in plan.skipped}
    assert skipped[1].reason is Reason.NOT_COPYABLE and f"{pair[0]}.{pair[1]}" in skipped[1].detail
    assert all(1 not in t.fragment_ids for t in plan.tasks)
    report = compact(str(path), CompactionOptions(target_rows_per_fragment=10_000))
    assert any(s.fragment_id == 1 and s.reason is Reason.NOT_COPYABLE for s in report.skipped)
