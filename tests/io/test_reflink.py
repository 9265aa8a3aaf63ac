"""On a filesystem that shares blocks (XFS with reflink here), large extents are cloned, not copied.

A real XFS filesystem is made in a loop-mounted image file (needs root, ``mkfs.xfs`` from
xfsprogs and permission to mount; skipped otherwise). pylance writes the datasets there and reads
them back after our compaction; the filesystem's own block count shows the data was shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from lance_assets.engine.compaction import compact
from lance_assets.engine.copying.copy import CLONE_MIN_EXTENT, _extents
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.tail import read_v2_metadata
from lance_assets.io import Storage
from tests.support.system import unavailable

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None or shutil.which("mount") is None:
        unavailable("needs root and mkfs.xfs (xfsprogs) to make a reflink filesystem")
    root = tmp_path_factory.mktemp("xfs")
    image, mount_point = root / "fs.img", root / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(2 << 30)  # sparse
    made = subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        unavailable(f"mkfs.xfs failed: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _used_bytes(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _vectors(rows: int, dim: int = 512) -> pa.Table:
    rng = np.random.default_rng(3)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "tag": pa.array([f"t{i % 97}" for i in range(rows)]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(rows * dim, dtype=np.float32)), dim),
        }
    )


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
def test_large_extents_are_cloned(xfs: Path, version: str) -> None:
    uri = str(xfs / f"clone-{version}-{uuid.uuid4().hex[:6]}.lance")
    table = _vectors(6_000)
    lance.write_dataset(table, uri, data_storage_version=version, max_rows_per_file=1_000)
    before = lance.dataset(uri).to_table()
    data_bytes = sum(f.stat().st_size for f in Path(uri, "data").iterdir())
    assert Storage(uri).clone_block_size("data") > 0

    used = _used_bytes(xfs)
    report = compact(uri, CompactionOptions(read_batch_bytes=1 << 20))
    grown = _used_bytes(xfs) - used
    assert (report.fragments_removed, report.fragments_added) == (6, 1)
    after = lance.dataset(uri)
    assert len(after.get_fragments()) == 1
    assert after.to_table().equals(before)
    # A copy would need data_bytes more; clones need only the unshared edges and metadata.
    assert grown < 0.1 * data_bytes, f"{grown} bytes allocated for {data_bytes} bytes of data"


def test_a_column_subset_is_cloned_from_unaligned_starts(xfs: Path) -> None:
    """After a column drop only some buffers are kept: extents start anywhere in the source."""
    uri = str(xfs / f"subset-{uuid.uuid4().hex[:6]}.lance")
    lance.write_dataset(_vectors(6_000), uri, data_storage_version="2.1", max_rows_per_file=1_000)
    lance.dataset(uri).drop_columns(["tag"])
    before = lance.dataset(uri).to_table()
    report = compact(uri, CompactionOptions(read_batch_bytes=1 << 20))
    assert report.fragments_added == 1
    assert lance.dataset(uri).to_table().equals(before)


def test_extent_placement_keeps_block_congruence(xfs: Path) -> None:
    uri = str(xfs / f"place-{uuid.uuid4().hex[:6]}.lance")
    lance.write_dataset(_vectors(2_000), uri, data_storage_version="2.1", max_rows_per_file=1_000)
    ds = Dataset.open(uri)
    df = ds.manifest.fragments[0].files[0]
    meta = read_v2_metadata(ds.storage, ds.data_file_path(df))
    assert meta.data_end >= CLONE_MIN_EXTENT
    block = 4096
    for dest in (0, 64, 4096 + 64, 12_345 * 64):
        (whole,) = _extents(meta, list(range(meta.num_columns)), dest, block)
        assert whole.dest >= dest and (whole.dest - whole.start) % block == 0 and whole.dest - dest < block
        (aligned,) = _extents(meta, list(range(meta.num_columns)), dest, 0)
        assert (aligned.dest - aligned.start) % 64 == 0 and aligned.dest - dest < 64
